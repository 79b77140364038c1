"""Write a store K times the size of another: its cells repeated K times, each copy's latent
positions jittered, for timing ``peak_to_gene`` on 10M cells without simulating 10M cells.

Simulating 10M cells with ``make_atlas_store.py`` takes hours on 2 cores; what a scale benchmark
measures (reading, decoding and summing every chunk of a store ~10x larger than memory) needs only
that much distinct data on disk. So the source store's count arrays are read chunk by chunk
(verified), written K times into a new store (each copy's chunks compressed again: ~55 GB of
distinct files for 10M cells, so nothing is served from the page cache twice), with ``indptr``
offset per copy; ``obs`` names get a copy suffix and ``X_latent`` a small seeded jitter (SD
``--jitter``, 0.02 of the clouds' SD 0.5), so a metacell draws its neighbours from every copy.
``truth.tsv`` and ``genes.tsv`` are copied: the planted links are the same.

    python benchmarks/repeat_atlas_store.py atlas/1m/atlas.zarr --copies 10 --out atlas/10m/atlas.zarr
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

import p2g_dask
from p2g_dask._atomic import atomic_path
from p2g_dask._logging import enable_console_logging, logger
from p2g_dask.io._integrity import read_pieces
from p2g_dask.io._write import zarr_write_settings
from p2g_dask.io.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_atlas_store import GENES_FILE, TRUTH_FILE, _ModalityWriter  # noqa: E402


def repeat_store(source: str | Path, out: str | Path, *, copies: int = 10, jitter: float = 0.02, seed: int = 0,
                 overwrite: bool = False) -> p2g_dask.io.store.MultiomeStore:
    """Write ``out``: the cells of the store ``source`` repeated ``copies`` times (see the module docstring).

    Parameters
    ----------
    source
        A store made by ``make_atlas_store.py`` (with ``truth.tsv`` and ``genes.tsv`` beside it).
    out
        The new store folder; its ``truth.tsv`` and ``genes.tsv`` are copied beside it.
    copies
        How many times every cell is written.
    jitter
        SD of the noise added to each copy's ``X_latent``.
    seed
        Seed of the jitter.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    MultiomeStore
        The opened new store.

    Examples
    --------
    >>> import tempfile
    >>> from make_atlas_store import make_atlas_store
    >>> folder = tempfile.mkdtemp()
    >>> small = make_atlas_store(1_000, folder + "/a/a.zarr", n_peaks=2_000, n_genes=400, atac_nnz=100,
    ...                          rna_nnz=80, n_linked_genes=20)
    >>> big = repeat_store(small.path, folder + "/b/b.zarr", copies=3)
    >>> big.atac.X.shape, int(big.atac.nnz) == 3 * int(small.atac.nnz)
    ((3000, 2000), True)
    """
    source_store = open_store(source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    n_obs = source_store.atac.n_obs * copies
    rng = np.random.default_rng(seed)
    with atomic_path(out, overwrite=overwrite, argument="out") as tmp, zarr_write_settings():
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        attrs = dict(zarr.open_group(str(source), mode="r").attrs)
        attrs.update({"n_obs": int(n_obs), "p2g_repeated": {"source": str(source), "copies": int(copies),
                                                            "jitter": float(jitter), "seed": int(seed)}})
        root.attrs.update(attrs)
        latent = np.asarray(source_store.atac.obsm["X_latent"])
        latents = [latent + rng.normal(0.0, jitter, latent.shape).astype(latent.dtype) for _ in range(copies)]
        for modality in (source_store.atac, source_store.rna):
            writer = _ModalityWriter(root.create_group(modality.name), n_obs, modality.n_vars)
            for copy in range(copies):
                for start, stop in modality.row_chunks():
                    for _, _, (data, indices, indptr) in read_pieces(source_store.path, modality.name, start, stop,
                                                                     modality.n_vars):
                        writer.append(indices, data, np.diff(indptr))
                logger.info("%s: copy %d of %d written", modality.name, copy + 1, copies)
            obs = pd.concat([modality.obs.set_axis(modality.obs.index + f"-{copy}") for copy in range(copies)])
            writer.close(obs, modality.var, {"X_latent": np.concatenate(latents)})
    for name in (TRUTH_FILE, GENES_FILE):
        shutil.copyfile(Path(source).parent / name, out.parent / name)
    logger.info("wrote %s: %d cells (%d copies of %s) in %.0f s", out, n_obs, copies, source,
                time.perf_counter() - started)
    return open_store(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="store made by make_atlas_store.py")
    parser.add_argument("--out", required=True, help="new store folder (truth.tsv, genes.tsv go next to it)")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--jitter", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    enable_console_logging(logging.INFO)
    repeat_store(args.source, args.out, copies=args.copies, jitter=args.jitter, seed=args.seed,
                 overwrite=args.overwrite)


if __name__ == "__main__":
    main()
