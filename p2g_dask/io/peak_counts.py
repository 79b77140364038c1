"""``peak_matrix``: cells x peaks counts from fragment files, out of core, as one Dask graph.

Graph (task key prefixes)::

    p2g-peak-matrix-cache   one per fragment file: the parquet fragment cache (built once, reused)
    p2g-peak-matrix-count   one per (chromosome, block of cells): that chromosome's fragments of
                            the block counted into its peaks (numba, GIL released)
    p2g-peak-matrix-block   one per block: the chromosomes side by side, a CSR block

A task holds one chromosome's fragments of one block of cells, so memory follows
``chunk_cells``, not the number of cells. The counting rules are in
:mod:`p2g_dask.io._peak_matrix_kernels` and docs/atlas.md: by default ArchR's
``addPeakMatrix`` (each fragment end is one insertion, capped at 4 per cell and peak);
``counting_strategy="paired-insertion", ceiling=None`` gives SnapATAC2's ``make_peak_matrix``.
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

from p2g_dask import _graph
from p2g_dask._atomic import TMP_MARKER, _remove
from p2g_dask._lazy import LazyModule
from p2g_dask._logging import logger, timed
from p2g_dask.io.fragment_cache import build_fragment_cache
from p2g_dask.io._peak_matrix_kernels import STRATEGIES, count_peaks
from p2g_dask.io.blocks import row_bounds
from p2g_dask.io.fragment_blocks import cell_lookups, fragment_cells, read_block_fragments, safe_name
from p2g_dask.io.fragments import fragment_files
from p2g_dask.io.peak_sets import read_peaks

ad = LazyModule("anndata")


def check_counting(ceiling: Any, counting_strategy: Any) -> None:
    """Raise a ``ValueError`` naming the argument for a bad ``ceiling`` or ``counting_strategy``."""
    if counting_strategy not in STRATEGIES:
        raise ValueError(f"counting_strategy={counting_strategy!r} is not known; use one of {list(STRATEGIES)} "
                         "('insertion' is ArchR's addPeakMatrix, 'paired-insertion' SnapATAC2's default).")
    if ceiling is not None and (isinstance(ceiling, bool) or not isinstance(ceiling, (int, np.integer)) or ceiling < 1):
        raise ValueError(f"ceiling={ceiling!r} must be a positive integer (ArchR: 4) or None (no cap).")


def chrom_peaks(peaks: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """``{chrom: (starts, ends, first column)}`` of a sorted peak table (:func:`read_peaks`)."""
    out = {}
    chroms = peaks["chrom"].to_numpy()
    bounds = np.flatnonzero(chroms[1:] != chroms[:-1]) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(peaks)]):
        if hi > lo:
            out[str(chroms[lo])] = (peaks["start"].to_numpy(np.int64)[lo:hi], peaks["end"].to_numpy(np.int64)[lo:hi],
                                    int(lo))
    return out


def count_chrom_block(sources, chrom: str, first: int, stop: int, chrom_peak_bounds: tuple[np.ndarray, np.ndarray],
                      ceiling: int | None, counting_strategy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task: cells ``first:stop`` x the peaks of ``chrom``, as CSR arrays (data, indices, indptr).

    ``sources`` holds ``(FragmentCache, lookup)`` pairs (caches without the chromosome are
    skipped); ``chrom_peak_bounds`` the chromosome's peak starts and ends.
    """
    files = [(cache.chrom_file(chrom), lookup) for cache, lookup in sources if chrom in cache.chroms]
    start, end, cell = read_block_fragments(files, first, stop)
    peak_start, peak_end = chrom_peak_bounds
    return count_peaks(start, end, cell, stop - first, peak_start, peak_end, ceiling=ceiling,
                       counting_strategy=counting_strategy)


def count_block(sources, peaks_by_chrom: dict, first: int, stop: int, ceiling: int | None,
                counting_strategy: str) -> sp.csr_matrix:
    """Cells ``first:stop`` x every peak in one task: the chromosomes one after the other.

    ``peaks_by_chrom`` is ``{chrom: (starts, ends)}`` in column order. A task holds one
    chromosome's fragments of the block at a time plus the block's counts; ``ingest_samples``
    counts each block of a sample this way, inside the task that writes it.
    """
    parts = [count_chrom_block(sources, chrom, first, stop, bounds, ceiling, counting_strategy)
             for chrom, bounds in peaks_by_chrom.items()]
    return join_chromosomes(parts, [b[0].size for b in peaks_by_chrom.values()], stop - first)


def join_chromosomes(parts, widths: list[int], n_rows: int) -> sp.csr_matrix:
    """One block's chromosome parts side by side (columns offset by ``widths``) as one CSR.

    Examples
    --------
    >>> a = (np.array([1, 2], np.int32), np.array([0, 1], np.int32), np.array([0, 2, 2]))
    >>> b = (np.array([3], np.int32), np.array([0], np.int32), np.array([0, 0, 1]))
    >>> join_chromosomes([a, b], [2, 1], 2).toarray().tolist()
    [[1, 2, 0], [0, 0, 3]]
    """
    blocks = [sp.csr_matrix((p[0], p[1], p[2]), shape=(n_rows, w)) if p is not None else sp.csr_matrix((n_rows, w),
              dtype=np.int32) for p, w in zip(parts, widths)]
    if not blocks:
        return sp.csr_matrix((n_rows, 0), dtype=np.int32)
    joined = sp.hstack(blocks, format="csr", dtype=np.int32)
    joined.sort_indices()
    return joined


def block_tasks(sources: list, peaks: pd.DataFrame, blocks: list[tuple[int, int]], *, ceiling: int | None,
                counting_strategy: str, token: str) -> list:
    """Delayed CSR blocks (cells ``first:stop`` x every peak) counted from ``sources``.

    ``sources`` holds ``(cache, lookup)`` pairs, each delayed or concrete; ``token`` names the
    data (files and cells) in the task keys.
    """
    # Each lookup enters the graph once (not once per task), as gene_scores does.
    sources = [(cache, lookup if hasattr(lookup, "key") else
                dask.delayed(lookup, name=f"p2g-peak-matrix-barcodes-{tokenize(lookup)}"))
               for cache, lookup in sources]
    by_chrom = chrom_peaks(peaks)
    widths = [s.size for s, _, _ in by_chrom.values()]
    peak_token = tokenize(peaks["chrom"].to_numpy(), peaks["start"].to_numpy(), peaks["end"].to_numpy())
    # A chromosome's peaks enter the graph once, shared by its tasks (and by every sample's).
    bounds = {chrom: dask.delayed((starts, ends), name=f"p2g-peak-matrix-peaks-{tokenize(peak_token, chrom)}")
              for chrom, (starts, ends, _) in by_chrom.items()}
    tasks = []
    for first, stop in blocks:
        parts = []
        for chrom in by_chrom:
            key = tokenize(token, peak_token, chrom, first, stop, ceiling, counting_strategy)
            parts.append(dask.delayed(count_chrom_block, pure=True)(
                sources, chrom, first, stop, bounds[chrom], ceiling, counting_strategy,
                dask_key_name=f"p2g-peak-matrix-count-{key}"))
        key = tokenize(token, peak_token, first, stop, ceiling, counting_strategy)
        tasks.append(dask.delayed(join_chromosomes, pure=True)(parts, widths, stop - first,
                                                                dask_key_name=f"p2g-peak-matrix-block-{key}"))
    return tasks


def peak_matrix(
    fragments: Any,
    peaks: Any,
    *,
    cells: Any = None,
    sample_id_col: str | None = None,
    ceiling: int | None = 4,
    counting_strategy: str = "insertion",
    chunk_cells: int = 10_000,
    cache_fragments: str | os.PathLike | None = None,
    client: Any = None,
    show_progress: bool = False,
) -> ad.AnnData:
    """Cells x peaks counts from fragment files, with ArchR's ``addPeakMatrix`` rule by default.

    Each fragment ``[start, end)`` of the 10x file has two Tn5 insertions, at ``start`` and
    ``end - 1`` (0-based); an insertion counts 1 in every peak ``[s, e)`` holding it (so a
    fragment inside one peak counts 2, one with its ends in two peaks 1 in each, and overlapping
    peaks both count an insertion they share), and a cell's count in a peak is capped at
    ``ceiling``. ``counting_strategy="paired-insertion", ceiling=None`` is SnapATAC2's
    ``make_peak_matrix`` default; ``"fragment"`` counts each fragment once in every peak it overlaps.

    Parameters
    ----------
    fragments
        A 10x fragment file, or ``{sample: fragment file}``.
    peaks
        The peak set: a BED path, a DataFrame (``chrom, start, end``) or ``chr:start-end``
        names (see :func:`p2g_dask.io.peak_sets.read_peaks`); columns come out karyotype-sorted.
    cells
        Cell names (a list), an AnnData / obs DataFrame (its ``obs_names``), or None: every
        barcode of the files (``sample#barcode`` with several files). Names are matched to each
        file's barcodes as they are or with the sample name as a prefix/suffix.
    sample_id_col
        With several files and ``cells`` a table: the column naming each cell's sample.
    ceiling
        Cap of each (cell, peak) count (ArchR's ``ceiling``, 4); None: raw counts.
    counting_strategy
        ``"insertion"`` (ArchR), ``"paired-insertion"`` (SnapATAC2's default) or ``"fragment"``.
    chunk_cells
        Cells per block (one task per chromosome and block): bounds the memory of a task.
    cache_fragments
        Folder of the parquet caches (``<folder>/<sample>/``), reused while a file is unchanged;
        None: a temporary cache, removed at the end.
    client
        A ``distributed.Client``; default: the current client, else dask's default scheduler.
    show_progress
        Show a progress bar.

    Returns
    -------
    anndata.AnnData
        ``X`` cells x peaks CSR (int32), ``var`` ``chrom, start, end`` indexed by
        ``chrom:start-end``, ``uns['peak_matrix']`` the counting parameters.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "f.tsv").write_text("chr1\\t110\\t160\\tA\\t1\\nchr1\\t150\\t350\\tB\\t1\\n")
    >>> m = peak_matrix(d / "f.tsv", ["chr1:100-200", "chr1:300-400"])
    >>> m.obs_names.tolist(), m.X.toarray().tolist()
    (['A', 'B'], [[2, 0], [1, 1]])
    """
    check_counting(ceiling, counting_strategy)
    if isinstance(chunk_cells, bool) or not isinstance(chunk_cells, (int, np.integer)) or chunk_cells < 1:
        raise ValueError(f"chunk_cells={chunk_cells!r} must be a positive integer (cells per task).")
    files = fragment_files(fragments, argument="fragments")
    table = read_peaks(peaks)
    client = _graph.current_client(client)
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_MARKER}peakmatrix-")) if cache_fragments is None else None
    root = Path(cache_fragments) if cache_fragments is not None else work
    try:
        with timed(f"peak matrix: fragment caches of {len(files)} file(s)"):
            tasks = [dask.delayed(build_fragment_cache, pure=False)(
                path, root / safe_name(sample), dask_key_name=f"p2g-peak-matrix-cache-{tokenize(sample, str(path))}")
                for sample, path in files.items()]
            caches = dict(zip(files, _graph.compute(tasks, client, show_progress)))
        obs, sample = fragment_cells(cells, caches, sample_id_col)
        lookups = cell_lookups(obs.index, sample, {s: c.barcodes() for s, c in caches.items()})
        found = sum(int((lk >= 0).sum()) for lk in lookups.values())
        if found == 0:
            raise ValueError("cells: none of the cells is in the fragment files; compare the cell names with the "
                             "files' barcodes (several files need sample_id_col).")
        n_cells = len(obs)
        blocks = row_bounds(n_cells, chunk_cells) or [(0, 0)]
        sources = [(caches[s], lookups[s]) for s in caches]
        token = tokenize([(c.manifest["source"], c.manifest["size"], c.manifest["mtime_ns"]) for c in caches.values()],
                         [lookups[s] for s in caches])
        with timed(f"peak matrix: {n_cells} cells x {len(table)} peaks, {len(blocks)} block(s)"):
            parts = _graph.compute(block_tasks(sources, table, blocks, ceiling=ceiling,
                                               counting_strategy=counting_strategy, token=token), client, show_progress)
        matrix = sp.vstack(parts, format="csr")[:n_cells] if parts else sp.csr_matrix((0, len(table)), dtype=np.int32)
        result = ad.AnnData(X=matrix, obs=obs, var=table)
        result.uns["peak_matrix"] = {"ceiling": -1 if ceiling is None else int(ceiling),
                                     "counting_strategy": counting_strategy}
        logger.info("peak matrix: %d cells x %d peaks, %d non-zeros, %d counts", matrix.shape[0], matrix.shape[1],
                    matrix.nnz, int(matrix.sum()))
        return result
    finally:
        if work is not None:
            _remove(work)
