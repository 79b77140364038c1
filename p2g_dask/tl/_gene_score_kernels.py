"""Gene score kernels: fragments -> capped tile counts per cell -> tiles x genes product.

Pure numpy/numba plus the parquet read, no Dask: :func:`chrom_block_scores` is one task of
:func:`p2g_dask.tl.gene_scores` (one chromosome x one block of cells) and
:func:`finish_block` the per-block normalisation. The product never builds the tiles x cells
matrix: each cell's tiles are counted in a dense per-chromosome counter (reset after the cell),
capped, and multiplied into a dense accumulator over the chromosome's genes, so the work is
linear in the insertions and the memory is one chromosome's counters plus the block's output.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

_BATCH_ROWS = 1 << 20  # parquet rows read at a time: a cell block keeps only its own fragments


@numba.njit(cache=True, nogil=True)
def _bucket_tiles(start, end, cell, n_cells, tile_size, n_tiles):  # pragma: no cover - numba
    """Both insertions' tiles grouped by cell: ``(offsets, tiles)``; tiles past ``n_tiles`` dropped.

    ArchR's insertions of a 0-based half-open fragment ``[start, end)`` are ``start + 1`` and
    ``end`` (1-based), each in tile ``trunc(pos / tile_size)``.
    """
    offsets = np.zeros(n_cells + 1, np.int64)
    for i in range(start.size):
        c = cell[i]
        if (start[i] + 1) // tile_size < n_tiles:
            offsets[c + 1] += 1
        if end[i] // tile_size < n_tiles:
            offsets[c + 1] += 1
    for c in range(n_cells):
        offsets[c + 1] += offsets[c]
    fill = offsets[:-1].copy()
    tiles = np.empty(offsets[n_cells], np.int32)
    for i in range(start.size):
        c = cell[i]
        t = (start[i] + 1) // tile_size
        if t < n_tiles:
            tiles[fill[c]] = t
            fill[c] += 1
        t = end[i] // tile_size
        if t < n_tiles:
            tiles[fill[c]] = t
            fill[c] += 1
    return offsets, tiles


@numba.njit(cache=True, nogil=True)
def _grow(a, size):  # pragma: no cover - numba
    out = np.empty(max(size, 2 * a.size), a.dtype)
    out[: a.size] = a
    return out


@numba.njit(cache=True, nogil=True)
def _score_cells(offsets, tiles, ceiling, w_indptr, w_indices, w_data, n_tiles, n_genes):  # pragma: no cover
    """Cells x genes CSR of ``sum over tiles of min(count, ceiling) * weight`` (ceiling <= 0: none)."""
    n_cells = offsets.size - 1
    count = np.zeros(n_tiles, np.int32)
    touched = np.empty(max(1, n_tiles), np.int32)
    acc = np.zeros(n_genes, np.float64)
    seen = np.zeros(n_genes, np.bool_)
    genes = np.empty(max(1, n_genes), np.int32)
    indptr = np.zeros(n_cells + 1, np.int64)
    indices = np.empty(1024, np.int32)
    data = np.empty(1024, np.float64)
    nnz = 0
    for c in range(n_cells):
        n_touched = 0
        for j in range(offsets[c], offsets[c + 1]):
            t = tiles[j]
            if count[t] == 0:
                touched[n_touched] = t
                n_touched += 1
            count[t] += 1
        n_seen = 0
        for j in range(n_touched):
            t = touched[j]
            v = count[t]
            count[t] = 0
            if ceiling > 0 and v > ceiling:
                v = ceiling
            for p in range(w_indptr[t], w_indptr[t + 1]):
                g = w_indices[p]
                if not seen[g]:
                    seen[g] = True
                    genes[n_seen] = g
                    n_seen += 1
                acc[g] += v * w_data[p]
        # Column order within a row is left to finish_block's sort_indices (one C pass).
        if nnz + n_seen > indices.size:
            indices = _grow(indices, nnz + n_seen)
            data = _grow(data, nnz + n_seen)
        for j in range(n_seen):
            g = genes[j]
            if acc[g] != 0.0:
                indices[nnz] = g
                data[nnz] = acc[g]
                nnz += 1
            acc[g] = 0.0
            seen[g] = False
        indptr[c + 1] = nnz
    return indptr, indices[:nnz].copy(), data[:nnz].copy()


@numba.njit(cache=True, nogil=True)
def _select_cells(start, end, barcode_id, lookup, first, stop):  # pragma: no cover - numba
    """The fragments whose cell row ``lookup[barcode_id]`` is in ``[first, stop)``, rows made local."""
    n = 0
    for i in range(barcode_id.size):
        c = lookup[barcode_id[i]]
        if c >= first and c < stop:
            n += 1
    out_start, out_end, out_cell = np.empty(n, start.dtype), np.empty(n, end.dtype), np.empty(n, np.int32)
    n = 0
    for i in range(barcode_id.size):
        c = lookup[barcode_id[i]]
        if c >= first and c < stop:
            out_start[n], out_end[n], out_cell[n] = start[i], end[i], c - first
            n += 1
    return out_start, out_end, out_cell


def read_block_fragments(sources, first: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fragments of cells ``first <= cell < stop`` from one chromosome of every cache.

    ``sources`` holds ``(parquet file, lookup)`` pairs; ``lookup[barcode_id]`` is the cell's
    row (-1: not a cell). Read in batches, so only this block's fragments are ever kept.
    """
    starts, ends, cells = [], [], []
    for file, lookup in sources:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS, columns=["start", "end", "barcode_id"],
                                                        use_threads=False):
            start, end, cell = _select_cells(batch.column(0).to_numpy(), batch.column(1).to_numpy(),
                                             batch.column(2).to_numpy(), lookup, first, stop)
            starts.append(start)
            ends.append(end)
            cells.append(cell)
    if not starts:
        return np.empty(0, np.uint32), np.empty(0, np.uint32), np.empty(0, np.int32)
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(cells)


def tile_gene_scores(start, end, cell, n_cells: int, weights: sp.csr_matrix, tile_size: int,
                     ceiling: int | None) -> sp.csr_matrix:
    """Cells x genes raw scores of one chromosome: capped tile counts times ``weights`` (tiles x genes).

    Examples
    --------
    >>> w = sp.csr_matrix(np.array([[1.0], [0.5]]))  # tile 0 and tile 1 of one gene
    >>> start, end = np.array([10, 10, 10]), np.array([600, 600, 600])  # tiles 0 and 1, three times
    >>> tile_gene_scores(start, end, np.zeros(3, np.int32), 1, w, 500, 2).toarray().tolist()
    [[3.0]]
    """
    n_tiles, n_genes = weights.shape
    offsets, tiles = _bucket_tiles(np.asarray(start, np.int64), np.asarray(end, np.int64),
                                   np.asarray(cell, np.int32), n_cells, tile_size, n_tiles)
    indptr, indices, data = _score_cells(offsets, tiles, -1 if ceiling is None else int(ceiling),
                                         weights.indptr.astype(np.int64), weights.indices.astype(np.int32),
                                         weights.data.astype(np.float64), n_tiles, n_genes)
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))


def chrom_block_scores(sources, first: int, stop: int, weights: sp.csr_matrix, tile_size: int,
                       ceiling: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task: the raw scores of cells ``first:stop`` on one chromosome as CSR arrays.

    Returns ``(data, indices, indptr)`` (plain arrays, so a checkpoint stores them as a tree).
    """
    start, end, cell = read_block_fragments(sources, first, stop)
    scores = tile_gene_scores(start, end, cell, stop - first, weights, tile_size, ceiling)
    return scores.data, scores.indices, scores.indptr


def finish_block(parts, n_genes: list[int], scale_to: float) -> sp.csr_matrix:
    """Join one block's chromosome parts (genes in chromosome order), scale rows to ``scale_to``.

    Each cell's scores are divided by its total over all chromosomes (before rounding), times
    ``scale_to``, rounded to 3 decimals and zeros dropped, as ArchR; stored as float32. A cell
    without any score stays an empty row.

    Examples
    --------
    >>> a = (np.array([1.0, 3.0]), np.array([0, 0]), np.array([0, 1, 2]))
    >>> b = (np.array([1.0]), np.array([1]), np.array([0, 1, 1]))
    >>> finish_block([a, b], [1, 2], 10.0).toarray().tolist()
    [[5.0, 0.0, 5.0], [10.0, 0.0, 0.0]]
    """
    n_rows = parts[0][2].size - 1 if parts else 0
    mats = [sp.csr_matrix(p, shape=(n_rows, n)) for p, n in zip(parts, n_genes)]
    joined = sp.hstack(mats, format="csr", dtype=np.float64) if mats else sp.csr_matrix((n_rows, 0))
    totals = np.asarray(joined.sum(axis=1)).ravel()
    per_entry = np.repeat(totals, np.diff(joined.indptr))
    with np.errstate(divide="ignore", invalid="ignore"):
        joined.data = np.round(scale_to * joined.data / per_entry, 3)
    joined.eliminate_zeros()
    joined.sort_indices()
    return joined.astype(np.float32)
