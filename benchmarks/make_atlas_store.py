"""Write a simulated atlas-size multiome store directly, block by block (never the whole matrix).

The store has the exact layout of :func:`p2g_dask.io.ingest` (Zarr v3; ``atac/X`` and ``rna/X``
as anndata CSR groups), so ``p2g.io.open_store`` and ``peak_to_gene`` read it as any other store.
Next to it go ``truth.tsv`` (the planted links: ``peak, gene, distance``) and ``genes.tsv`` (the
gene annotation), so keep one store per folder.

The model (PBMC-like sparsity, mostly ones in ATAC, a heavy tail in RNA):

- cells: 8 cell types with PBMC-like proportions, each a cloud on an 8-dimensional latent
  manifold (``atac/obsm/X_latent``, so no LSI is needed before ``peak_to_gene``);
- programs: 16 topics; a cell's topic weights are a softmax of a linear map of its latent
  position, so they vary smoothly within and between cell types;
- features: each topic has a probability over peaks (and one over genes); half of the features
  respond to topics, the rest are flat. A planted link copies its gene's topic response onto
  the peak (plus noise), so across metacells the peak follows the gene;
- counts: a cell draws ``Poisson(rate x depth)`` fragments (UMIs), each picks a topic by the
  cell's weights, then a feature from that topic (alias tables, O(1) per draw). The rate is
  solved so that the mean nonzeros per cell hit ``--atac-nnz`` / ``--rna-nnz``.

Cells are generated in units of 1,000 with seeds from ``(seed, unit)``: the store depends on
the seed and sizes only, not on ``--block-cells``. ATAC and RNA of one block are drawn in two
threads (numba, no GIL) while the previous block is compressed and written.

    python benchmarks/make_atlas_store.py --cells 1000000 --out /data/atlas_1m/atlas.zarr
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import zarr

import p2g_dask
from p2g_dask._atomic import atomic_path, check_overwrite
from p2g_dask._logging import enable_console_logging, logger
from p2g_dask.io._integrity import INTEGRITY_ATTR
from p2g_dask.io.blocks import chunk_cells_for
from p2g_dask.io._write import _compressors, zarr_write_settings
from p2g_dask.io.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from p2g_atlas_model import UNIT_CELLS, AtlasModel, build_model, draw_counts, simulate_cells  # noqa: E402

#: Elements per Zarr chunk of ``data``/``indices``, as ``ingest`` writes them.
ELEMENT_CHUNK = 2**20
TRUTH_FILE, GENES_FILE = "truth.tsv", "genes.tsv"


class _ChunkAlignedAppender:
    """Append to a 1-D Zarr array writing whole chunks only (no read-modify-write of a chunk)."""

    def __init__(self, array: zarr.Array):
        self.array, self.size = array, 0
        self.tail = np.empty(0, dtype=array.dtype)

    def append(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=self.array.dtype)
        n_total = self.tail.size + values.size
        n_write = (n_total // ELEMENT_CHUNK) * ELEMENT_CHUNK
        if n_write == 0:
            self.tail = np.concatenate([self.tail, values])
            return
        self.array.resize((self.size + n_write,))
        head = n_write - self.tail.size  # values that end the chunk-aligned span
        done = 0
        if self.tail.size:  # complete the chunk the previous block left open
            done = ELEMENT_CHUNK - self.tail.size
            self.array[self.size : self.size + ELEMENT_CHUNK] = np.concatenate([self.tail, values[:done]])
        if head > done:
            self.array[self.size + self.tail.size + done : self.size + n_write] = values[done:head]
        self.size += n_write
        self.tail = values[head:].copy()

    def close(self) -> int:
        if self.tail.size:
            self.array.resize((self.size + self.tail.size,))
            self.array[self.size :] = self.tail
            self.size += self.tail.size
            self.tail = self.tail[:0]
        return self.size


class _ModalityWriter:
    """One modality's ``X`` (CSR) written block by block; ``obs``/``var``/``obsm`` at the end."""

    def __init__(self, group: zarr.Group, n_obs: int, n_vars: int):
        self.group, self.n_obs, self.n_vars = group, n_obs, n_vars
        x_group = group.create_group("X")
        x_group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_obs, n_vars]})
        self.x_group = x_group
        self.data, self.indices = (
            _ChunkAlignedAppender(x_group.create_array(name, shape=(0,), chunks=(ELEMENT_CHUNK,), dtype=np.int32,
                                                      compressors=_compressors()))
            for name in ("data", "indices")
        )
        self.indptr = np.zeros(n_obs + 1, dtype=np.int64)
        self.row = 0

    def append(self, indices: np.ndarray, data: np.ndarray, row_nnz: np.ndarray) -> None:
        stop = self.row + row_nnz.size
        self.indptr[self.row + 1 : stop + 1] = self.indptr[self.row] + np.cumsum(row_nnz)
        self.indices.append(indices)
        self.data.append(data)
        self.row = stop

    def close(self, obs: pd.DataFrame, var: pd.DataFrame, obsm: dict) -> int:
        if self.row != self.n_obs:
            raise RuntimeError(f"{self.group.name}: wrote {self.row} of {self.n_obs} rows")
        nnz = self.data.close()
        if self.indices.close() != nnz or nnz != self.indptr[-1]:
            raise RuntimeError(f"{self.group.name}: data, indices and indptr disagree on nnz")
        ptr = self.x_group.create_array("indptr", shape=self.indptr.shape, chunks=(ELEMENT_CHUNK,), dtype=np.int64,
                                         compressors=_compressors())
        ptr[:] = self.indptr
        ad.io.write_elem(self.group, "obs", obs)
        ad.io.write_elem(self.group, "var", var)
        ad.io.write_elem(self.group, "obsm", obsm)
        for empty in ("layers", "varm", "obsp", "varp"):
            ad.io.write_elem(self.group, empty, {})
        ad.io.write_elem(self.group, "uns", {})
        # The lazy X's row chunks are chosen from a bytes target, as ingest does.
        self.group.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0",
                                 "p2g_chunk_cells": chunk_cells_for(nnz / max(1, self.n_obs))})
        return nnz


def _tsv_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    table.to_csv(buffer, sep="\t", index=False)
    return buffer.getvalue().encode()


def _row_sums(data: np.ndarray, row_nnz: np.ndarray) -> np.ndarray:
    cumulative = np.concatenate([[0], np.cumsum(data, dtype=np.int64)])
    ends = np.cumsum(row_nnz)
    return cumulative[ends] - cumulative[ends - row_nnz]


def make_atlas_store(
    n_cells: int,
    out: str | Path,
    *,
    n_peaks: int = 100_000,
    n_genes: int = 20_000,
    atac_nnz: float = 2_000,
    rna_nnz: float = 1_500,
    n_linked_genes: int = 1_000,
    seed: int = 0,
    block_cells: int = 20_000,
    overwrite: bool = False,
) -> p2g_dask.io.store.MultiomeStore:
    """Simulate a multiome atlas and write it as a p2g store, one block of cells at a time.

    Parameters
    ----------
    n_cells
        Cells to simulate.
    out
        Store folder to write (``.zarr``); ``truth.tsv`` and ``genes.tsv`` go next to it.
    n_peaks, n_genes
        Features; peaks lie one per ~15 kb of a genome of up to 1.5 Gb (22 chromosomes).
    atac_nnz, rna_nnz
        Target mean nonzeros per cell (PBMC: ~2,000 of 100,000 peaks, ~1,500 of 20,000 genes).
    n_linked_genes
        Genes with planted links, two peaks each, 10-200 kb from the TSS.
    seed
        Seed of everything; the same seed and sizes give the same store.
    block_cells
        Cells generated and written at once (a multiple of 1,000); bounds the memory used.
    overwrite
        Replace an existing store and its ``truth.tsv`` / ``genes.tsv``.

    Returns
    -------
    MultiomeStore
        The opened store.

    Examples
    --------
    >>> import tempfile
    >>> store = make_atlas_store(2_000, tempfile.mkdtemp() + "/a.zarr", n_peaks=4_000, n_genes=800,
    ...                          atac_nnz=200, rna_nnz=150, n_linked_genes=50)
    >>> store.atac.X.shape, store.rna.X.shape
    ((2000, 4000), (2000, 800))
    """
    if n_cells < 1:
        raise ValueError(f"n_cells={n_cells} must be a positive number of cells.")
    if block_cells < UNIT_CELLS or block_cells % UNIT_CELLS:
        raise ValueError(f"block_cells={block_cells} must be a positive multiple of {UNIT_CELLS}, e.g. 20000.")
    out = Path(out)
    truth_path, genes_path = out.parent / TRUTH_FILE, out.parent / GENES_FILE
    for path, argument in ((out, "out"), (truth_path, "out (its truth.tsv)"), (genes_path, "out (its genes.tsv)")):
        check_overwrite(path, overwrite, argument=argument)
    started = time.perf_counter()
    model = build_model(n_peaks, n_genes, atac_nnz=atac_nnz, rna_nnz=rna_nnz, n_linked_genes=n_linked_genes, seed=seed)
    truth_bytes, genes_bytes = _tsv_bytes(model.truth), _tsv_bytes(model.genes)
    # anndata's Zarr v3 write settings (no longer set at import of p2g_dask) for every write_elem.
    with atomic_path(out, overwrite=overwrite, argument="out") as tmp, zarr_write_settings():
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update({
            "p2g_format_version": p2g_dask.STORE_FORMAT_VERSION, "p2g_dask_version": p2g_dask.__version__,
            "n_obs": int(n_cells), INTEGRITY_ATTR: "crc32c",  # every chunk carries its crc32c (_compressors)
            "p2g_simulation": {
                "generator": "benchmarks/make_atlas_store.py", "seed": int(seed), "n_cells": int(n_cells),
                "n_peaks": int(n_peaks), "n_genes": int(n_genes), "atac_nnz": float(atac_nnz),
                "rna_nnz": float(rna_nnz), "n_linked_genes": int(n_linked_genes),
                "truth": TRUTH_FILE, "truth_sha256": hashlib.sha256(truth_bytes).hexdigest(),
                "genes": GENES_FILE, "genes_sha256": hashlib.sha256(genes_bytes).hexdigest(),
            },
        })
        writers = {
            "atac": _ModalityWriter(root.create_group("atac"), n_cells, len(model.peaks)),
            "rna": _ModalityWriter(root.create_group("rna"), n_cells, len(model.genes)),
        }
        cell_type, latent, n_fragment = _write_blocks(model, writers, n_cells, block_cells, seed)
        nnz = _finish(model, writers, cell_type, latent, n_fragment)
    with atomic_path(truth_path, overwrite=overwrite, argument="out (its truth.tsv)") as tmp:
        tmp.write_bytes(truth_bytes)
    with atomic_path(genes_path, overwrite=overwrite, argument="out (its genes.tsv)") as tmp:
        tmp.write_bytes(genes_bytes)
    elapsed = time.perf_counter() - started
    logger.info(
        "wrote %s: %d cells, atac %.0f nonzeros/cell (%d), rna %.0f nonzeros/cell (%d), %d planted links "
        "in %.1f s (%.1f M nonzeros/s)", out, n_cells, nnz["atac"] / n_cells, nnz["atac"], nnz["rna"] / n_cells,
        nnz["rna"], len(model.truth), elapsed, (nnz["atac"] + nnz["rna"]) / elapsed / 1e6,
    )
    return open_store(out)


def _write_blocks(model: AtlasModel, writers: dict, n_cells: int, block_cells: int, seed: int):
    """Generate blocks in two threads (ATAC, RNA) while a third writes the previous block."""
    cell_type, latent, n_fragment = [], [], []
    writing = None
    with ThreadPoolExecutor(2) as draw_pool, ThreadPoolExecutor(1) as write_pool:
        for start in range(0, n_cells, block_cells):
            stop = min(start + block_cells, n_cells)
            cells = simulate_cells(model, start, stop, seed)
            atac, rna = (
                draw_pool.submit(draw_counts, cells.unit_seeds[:, i], draws, cells.topic_weights, table)
                for i, (draws, table) in enumerate(((cells.atac_draws, model.atac_table),
                                                    (cells.rna_draws, model.rna_table)))
            )
            atac, rna = atac.result(), rna.result()
            cell_type.append(cells.cell_type)
            latent.append(cells.latent)
            n_fragment.append(_row_sums(atac[1], atac[2]))
            if writing is not None:
                writing.result()  # at most one block is written while the next is drawn
            writing = write_pool.submit(_write_block, writers, atac, rna)
            logger.info("generated cells %d-%d of %d", start, stop, n_cells)
        if writing is not None:
            writing.result()
    return np.concatenate(cell_type), np.concatenate(latent), np.concatenate(n_fragment)


def _write_block(writers: dict, atac: tuple, rna: tuple) -> None:
    writers["atac"].append(*atac)
    writers["rna"].append(*rna)


def _finish(model: AtlasModel, writers: dict, cell_type, latent, n_fragment) -> dict:
    names = model.cell_type_names
    lineage = np.array([model.lineage_of[t] for t in names])
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_type, categories=names),
            "lineage": pd.Categorical(lineage[cell_type]),
        },
        index=pd.Index([f"cell{i:07d}-1" for i in range(cell_type.size)]),
    )
    atac_obs = obs.copy()
    atac_obs["n_fragment"] = n_fragment.astype(np.int64)
    rna_var = pd.DataFrame(index=pd.Index(model.genes["gene_name"].to_numpy(dtype=str)))
    return {
        "atac": writers["atac"].close(atac_obs, model.peaks, {"X_latent": latent}),
        "rna": writers["rna"].close(obs, rna_var, {"X_latent": latent}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, required=True, help="cells to simulate")
    parser.add_argument("--out", required=True, help="store folder (.zarr); truth.tsv, genes.tsv go next to it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peaks", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--atac-nnz", type=float, default=2_000, help="mean nonzeros per cell in ATAC")
    parser.add_argument("--rna-nnz", type=float, default=1_500, help="mean nonzeros per cell in RNA")
    parser.add_argument("--linked-genes", type=int, default=1_000, help="genes with planted links (2 peaks each)")
    parser.add_argument("--block-cells", type=int, default=20_000, help="cells generated at once (x1000)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    enable_console_logging(logging.INFO)
    make_atlas_store(
        args.cells, args.out, n_peaks=args.peaks, n_genes=args.genes, atac_nnz=args.atac_nnz,
        rna_nnz=args.rna_nnz, n_linked_genes=args.linked_genes, seed=args.seed,
        block_cells=args.block_cells, overwrite=args.overwrite,
    )


if __name__ == "__main__":
    main()
