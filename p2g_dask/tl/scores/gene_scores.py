"""``gene_scores``: ArchR's GeneScoreMatrix from fragment files, as one out-of-core Dask graph.

Graph (task key prefixes)::

    p2g-gene-score-cache     one per fragment file: the parquet fragment cache (built once, reused)
    p2g-gene-score-weights   one per chromosome: the tiles x genes weight matrix (ArchR's model),
                             computed in the same pass as the caches (it needs no fragments)
    p2g-gene-score-tiles     one per (chromosome, cell block): capped tile counts x weights
    p2g-gene-score-block     one per cell block: join the chromosomes, scale each cell to scale_to

(the last three are built in tl/_gene_score_graph.py).

A task holds one chromosome's fragments of one cell block (read in batches from the cache) and
that block's scores, so memory does not grow with the number of cells. The model's conventions
are in docs/gene_scores.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.base import tokenize

from p2g_dask._lazy import LazyModule
from p2g_dask import _graph
from p2g_dask._atomic import TMP_MARKER, _remove, atomic_path
from p2g_dask._checkpoint import as_checkpoint
from p2g_dask._logging import logger, timed
from p2g_dask._variables import params_record
from p2g_dask._report import reported
from p2g_dask.io.fragment_blocks import cell_lookups, fragment_cells, safe_name
from p2g_dask.io.fragment_cache import build_fragment_cache
from p2g_dask.io.fragments import fragment_files
from p2g_dask.io.genes import gene_table
from p2g_dask.io.inputs import get_obs
from p2g_dask.io.modality import Modality
from p2g_dask.io.store import MultiomeStore, add_modality, open_store
from p2g_dask.tl.scores._graph import score_graph, weight_tasks
from p2g_dask.tl.scores._model import GeneScoreParams, gene_regions

# Imported at first use, on the client: Dask workers importing this module never need them (~30 MiB each).
ad = LazyModule("anndata")

_DEFAULTS = GeneScoreParams()
UNS_KEY = "gene_scores"


@reported
def gene_scores(
    fragments: Any,
    *,
    genes: Any,
    cells: Any = None,
    store: Any = None,
    key_added: str = "X_gene_score",
    gene_model: str = _DEFAULTS.gene_model,
    extend_upstream: tuple[int, int] = _DEFAULTS.extend_upstream,
    extend_downstream: tuple[int, int] = _DEFAULTS.extend_downstream,
    gene_upstream: int = _DEFAULTS.gene_upstream,
    gene_downstream: int = _DEFAULTS.gene_downstream,
    use_gene_boundaries: bool = _DEFAULTS.use_gene_boundaries,
    use_tss: bool = _DEFAULTS.use_tss,
    extend_tss: bool = _DEFAULTS.extend_tss,
    tile_size: int = _DEFAULTS.tile_size,
    ceiling: int | None = _DEFAULTS.ceiling,
    gene_scale_factor: float = _DEFAULTS.gene_scale_factor,
    scale_to: float = _DEFAULTS.scale_to,
    exclude_chr: tuple[str, ...] = _DEFAULTS.exclude_chr,
    blacklist: Any = None,
    sample_id_col: str | None = None,
    chunk_cells: int = 10_000,
    cache_fragments: str | os.PathLike | None = None,
    mod_atac: str = "atac",
    client: Any = None,
    checkpoint: str | os.PathLike | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
    report: Any = None,
) -> Any:
    """Cells x genes gene scores from fragment files, with ArchR's ``addGeneScoreMatrix`` model.

    Each fragment gives two Tn5 insertions, counted per 500-bp tile and cell (capped at
    ``ceiling``); each tile adds ``count x gene_model(distance to the gene) x gene weight`` to
    every gene whose window it overlaps; each cell's scores are then scaled to sum to
    ``scale_to``, rounded to 3 decimals, zeros dropped. See docs/gene_scores.md for every rule.

    Parameters
    ----------
    fragments
        A 10x fragment file, or ``{sample: fragment file}`` for several samples (as
        ``pseudobulk_with_fragments``' ``path_to_fragments``).
    genes
        Gene annotation: a DataFrame ``gene_name, chrom, start, end, strand`` (0-based half-open),
        a GFF3/GTF/TSV path or a genome such as ``p2g.genome.hg38`` (see
        :func:`p2g_dask.io.read_gene_annotation`; filter gene types there, e.g. protein-coding).
    cells
        The cells (rows): an AnnData, a MuData (``mod_atac``), an obs DataFrame, an ``.h5ad`` /
        ``.h5mu`` path or a list of barcodes. Names are matched to each file's barcodes as they
        are or with the sample name as a prefix/suffix (``s1#AAAC-1``). None: the store's
        cells, or without a store every barcode of the files (``sample#barcode`` when several).
    store
        A p2g store (path or opened): the scores are written into it (see Returns) for its ATAC
        cells; ``cells`` must then be None.
    key_added
        Name of the result in the store (modality and ``atac.obsm`` key).
    gene_model, extend_upstream, extend_downstream, gene_upstream, gene_downstream
        ArchR's ``geneModel`` (an expression in ``x``, the signed distance in bp, parsed, not
        executed: numbers, ``+ - * / **``, comparisons, exp, abs, log, sqrt, minimum, maximum,
        where, pi, e), ``extendUpstream``/``extendDownstream``
        (minimum, maximum window beyond the gene), ``geneUpstream``/``geneDownstream``
        (extension of the gene body itself).
    use_gene_boundaries, use_tss, extend_tss, tile_size, ceiling, gene_scale_factor, scale_to
        ArchR's ``useGeneBoundaries``, ``useTSS``, ``extendTSS``, ``tileSize``, ``ceiling``
        (None: no cap), ``geneScaleFactor``, ``scaleTo``.
    exclude_chr
        Chromosomes left out (ArchR's ``excludeChr``).
    blacklist
        Regions whose tiles get weight 0: a BED path, a DataFrame (chrom, start, end; 0-based
        half-open) or ``(chrom, start, end)`` rows. None: no blacklist.
    sample_id_col
        ``obs`` column naming each cell's key in ``fragments``; needed with several files.
    chunk_cells
        Cells per block (one task per chromosome and block); bounds the memory of a task.
    cache_fragments
        Folder for the parquet cache of each file (``<folder>/<sample>/``), reused while the
        file is unchanged. None: a temporary cache beside the store (without one, beside the
        first fragment file; the temp folder when that is read-only), deleted at the end.
    mod_atac
        MuData modality / store modality with the ATAC cells.
    client
        A ``distributed.Client``; default: the current client, else dask's default scheduler
        (``dask.config.set(scheduler=...)`` chooses it).
    checkpoint
        Folder keeping each (chromosome, block) result; a rerun computes only missing ones.
    overwrite
        Replace an existing result ``key_added`` in the store.
    show_progress
        Show a progress bar while the graph runs (None: the dask config ``p2g.show-progress``,
        True unless set).

    report
        A path (e.g. ``"out/report.html"``): write a run report of this call there (stages,
        memory per worker over time, spilled bytes, parameters, versions) and Dask's performance
        report beside it (with a ``distributed`` client); see docs/report.md.

    Returns
    -------
    AnnData or StoreModality
        Without a store: an AnnData, ``X`` the cells x genes CSR (float32), ``var`` the genes
        (``chrom, strand, tss, region_start, region_end, weight``, genomic order), the
        parameters in ``uns['gene_scores']``. With a store: the modality ``<store>/<key_added>``
        (same layout, read lazily; ``.var.index`` are the gene names); the same CSR is also
        written to ``atac.obsm[key_added]`` (and ``atac.uns[key_added]`` names the modality) so
        that ``peak_to_gene(store, gene_obsm=key_added, gene_names=result.var.index)`` uses it.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import p2g_dask as p2g
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "f.tsv").write_text("chr1\\t10000\\t10100\\tAAAC-1\\t1\\nchr1\\t50000\\t50200\\tGGTA-1\\t1\\n")
    >>> genes = pd.DataFrame({"gene_name": ["A", "B"], "chrom": "chr1", "start": [12000, 60000],
    ...                       "end": [20000, 61000], "strand": ["+", "-"]})
    >>> scores = p2g.tl.gene_scores(d / "f.tsv", genes=genes, show_progress=False)
    >>> scores.shape, scores.X.sum(axis=1).round(1).ravel().tolist()
    ((2, 2), [10000.0, 10000.0])
    """
    params = GeneScoreParams(
        gene_model=gene_model, extend_upstream=extend_upstream, extend_downstream=extend_downstream,
        gene_upstream=gene_upstream, gene_downstream=gene_downstream, use_gene_boundaries=use_gene_boundaries,
        use_tss=use_tss, extend_tss=extend_tss, tile_size=tile_size, ceiling=ceiling,
        gene_scale_factor=gene_scale_factor, scale_to=scale_to, exclude_chr=exclude_chr, blacklist=blacklist,
    )
    if isinstance(chunk_cells, bool) or not isinstance(chunk_cells, (int, np.integer)) or chunk_cells < 1:
        raise ValueError(f"chunk_cells={chunk_cells!r} must be a positive integer (cells per task).")
    if not isinstance(key_added, str) or not key_added or "/" in key_added or key_added in ("atac", "rna"):
        raise ValueError(f"key_added={key_added!r} must be a plain name other than 'atac'/'rna', e.g. 'X_gene_score'.")
    files = fragment_files(fragments, argument="fragments")
    regions = gene_regions(gene_table(genes), params)
    if regions.empty:
        raise ValueError(f"genes: no gene left outside exclude_chr={list(params.exclude_chr)}; check the annotation.")
    store_obj = _open_store(store, cells)
    if store_obj is not None:
        _check_free(store_obj, key_added, overwrite)
    client = _graph.current_client(client)
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_MARKER}genescore-", dir=_shared_folder(store_obj, files)))
    cache_root = Path(cache_fragments) if cache_fragments is not None else work / "cache"
    try:
        with timed(f"gene scores: fragment caches of {len(files)} file(s) and tile weights"):
            # The cache folder is in the key: a call right after another must not be handed the
            # previous call's (deleted) temporary cache while the scheduler still holds its key.
            tasks = [dask.delayed(build_fragment_cache, pure=False)(
                path, cache_root / safe_name(sample),
                dask_key_name=f"p2g-gene-score-cache-{tokenize(sample, str(path), str(cache_root))}")
                for sample, path in files.items()]
            # The weights need no fragments: computed while the files are parsed (parsing runs in
            # its own GIL-free threads). On a cluster they stay there as futures.
            weights = weight_tasks(regions, params)
            done = _submit(tasks + list(weights.values()), client, show_progress)
            caches = dict(zip(files, client.gather(done[: len(tasks)]) if client is not None else done[: len(tasks)]))
            weights = dict(zip(weights, done[len(tasks) :]))
        obs, lookups = _cell_lookups(cells, store_obj, mod_atac, caches, sample_id_col)
        n_cells = len(obs)
        blocks = [(b, min(b + chunk_cells, n_cells)) for b in range(0, n_cells, chunk_cells)] or [(0, 0)]
        with timed(f"gene scores: {n_cells} cells x {len(regions)} genes, {len(blocks)} block(s)"):
            parts_dir = work / "blocks" if store_obj is not None else None
            tasks = score_graph(regions, params, weights, caches, lookups, blocks, as_checkpoint(checkpoint), parts_dir)
            results = _graph.compute(tasks, client, show_progress)
        var = regions.set_index("gene_name")
        var.index.name = None
        if store_obj is None:
            matrix = sp.vstack(results, format="csr") if results else sp.csr_matrix((0, len(var)), dtype=np.float32)
            adata = ad.AnnData(X=matrix[:n_cells], obs=obs, var=var)
            adata.uns[UNS_KEY] = params_record(params, uns=True)
            _log_summary(adata.X)
            return adata
        return _write_store(store_obj, key_added, parts_dir, blocks, obs, var, params, overwrite)
    finally:
        _remove(work)


def _shared_folder(store_obj, files: dict) -> Path | None:
    # Workers write the fragment caches into the working folder and the client reads them back:
    # on a cluster it must be a folder every node sees, never this machine's /tmp. Beside the
    # store, else beside the first fragment file (workers read it, so they see its folder); the
    # temp folder only when that folder is read-only.
    if store_obj is not None:
        return Path(store_obj.path).parent
    folder = Path(next(iter(files.values()))).resolve().parent
    return folder if os.access(folder, os.W_OK) else None


def _open_store(store: Any, cells: Any):
    if store is None:
        return None
    if cells is not None:
        raise ValueError("with store=..., leave cells=None: the scores are computed for the store's ATAC cells.")
    return store if isinstance(store, MultiomeStore) else open_store(store)


def _check_free(store_obj, key_added: str, overwrite: bool) -> None:
    taken = (Path(store_obj.path) / key_added).exists() or (Path(store_obj.path) / "atac" / "obsm" / key_added).exists()
    if taken and not overwrite:
        raise FileExistsError(f"key_added={key_added!r} already exists in the store {store_obj.path}; pass "
                              "overwrite=True (CLI: --overwrite) or another key_added.")


def _submit(tasks: list, client, show_progress: bool) -> list:
    """Futures of ``tasks`` on ``client`` (results stay on the cluster), or their results locally."""
    if client is None:
        return _graph.compute(tasks, None, show_progress)
    futures = client.compute(tasks)
    if _graph.show_progress_default(show_progress):
        import distributed

        distributed.progress(futures)
    return futures


def _cell_lookups(cells, store_obj, mod_atac, caches, sample_id_col):
    """The cells' obs and, per sample, ``lookup[barcode_id] -> cell row`` (-1: not a cell)."""
    if cells is None and store_obj is None:
        obs, _ = fragment_cells(None, caches, None)
        sizes = np.cumsum([0] + [len(caches[s].barcodes()) for s in caches])
        return obs, {s: np.arange(sizes[i], sizes[i + 1], dtype=np.int64) for i, s in enumerate(caches)}
    if store_obj is not None:
        cells = store_obj.atac.obs
    elif not isinstance(cells, (list, tuple, np.ndarray, pd.Index)):
        cells = get_obs(cells, mod_atac=mod_atac)
    obs, sample = fragment_cells(cells, caches, sample_id_col)
    lookups = cell_lookups(obs.index, sample, {s: caches[s].barcodes() for s in caches})
    found = sum(int((lk >= 0).sum()) for lk in lookups.values())
    if found == 0:
        raise ValueError("cells: none of the cells is in the fragment files (compare obs names with the files' "
                         "barcodes; several files need sample_id_col).")
    if found < len(obs):
        logger.warning("%d of %d cells are not in the fragment files; their gene scores are empty rows",
                       len(obs) - found, len(obs))
    return obs, lookups


def _log_summary(matrix) -> None:
    empty = int((np.diff(matrix.indptr) == 0).sum())
    logger.info("gene scores: %d cells x %d genes, %d non-zeros (%.1f%%); %d cells without any score",
                matrix.shape[0], matrix.shape[1], matrix.nnz, 100 * matrix.nnz / max(1, np.prod(matrix.shape)), empty)


def _write_store(store_obj, key_added, parts_dir, blocks, obs, var, params, overwrite):
    """Stream the block files into ``<store>/<key_added>`` and copy its X to ``atac.obsm[key_added]``."""
    chunk = blocks[0][1] - blocks[0][0] or 1

    def read_rows(rows):
        rows = np.asarray(rows)
        if rows.size == 0:
            return sp.csr_matrix((0, len(var)), dtype=np.float32)
        # The writer asks for one block at a time (chunk_cells = the block size), but its dtype
        # probe may span a few blocks.
        first, last = int(rows.min()) // chunk, int(rows.max()) // chunk
        span = sp.vstack([sp.load_npz(parts_dir / f"block-{b:06d}.npz") for b in range(first, last + 1)], format="csr")
        local = rows - first * chunk
        if local.size == span.shape[0] and np.array_equal(local, np.arange(local.size)):
            return span  # the usual request: exactly one whole block, no row gather
        return span[local]

    source = Modality(key_added, obs, var, reader=read_rows)
    with timed(f"gene scores: writing {key_added!r} into {store_obj.path}"):
        # Gene names live in the modality's var (read them as result.var.index); uns only points there.
        result = add_modality(store_obj, key_added, source, chunk_cells=chunk, uns={UNS_KEY: params_record(params, uns=True)},
                              record={"modality": key_added, "n_genes": len(var), "params": params_record(params, uns=True)},
                              overwrite=overwrite)
    logger.info("gene scores: %r in %s: %d cells x %d genes, %d non-zeros", key_added, store_obj.path,
                result.n_obs, result.n_vars, result.nnz)
    return result
