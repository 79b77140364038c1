"""Gene score kernels: fragments -> capped tile counts per cell -> tiles x genes product.

Pure numpy/numba plus the parquet read, no Dask: :func:`chrom_block_scores` is one task of
:func:`p2g_dask.tl.scores.gene_scores` (one chromosome x one block of cells) and
:func:`finish_block` the per-block normalisation. Both steps are linear: a counting sort of the
insertions by tile gives the capped tiles x cells counts (CSR by tile), then each gene sums its
window's tiles into a per-cell accumulator; memory is one chromosome's insertions of the block
plus the block's output, and memory access follows the genome.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from p2g_dask.io._peak_matrix_kernels import capped_counts_by_key
from p2g_dask.io.fragment_blocks import read_block_fragments


def _capped_tile_counts(start, end, cell, n_cells, tile_size, n_tiles, ceiling):
    """Tiles x cells insertion counts, capped at ``ceiling`` (<= 0: none), as CSR by tile.

    ArchR's insertions of a 0-based half-open fragment ``[start, end)`` are ``start + 1`` and
    ``end`` (1-based), each in tile ``trunc(pos / tile_size)``; tiles past ``n_tiles`` (beyond
    every gene window) are dropped. The counting is the peak matrix's, with tiles as keys
    (:func:`p2g_dask.io._peak_matrix_kernels.capped_counts_by_key`); the insertions go in
    fragment order (start, then end), so cells come out in the same order within a tile.
    """
    tiles = np.empty(2 * start.size, np.int64)
    tiles[0::2] = (start + 1) // tile_size
    tiles[1::2] = end // tile_size
    cells = np.repeat(np.asarray(cell, np.int32), 2)
    kept = tiles < n_tiles
    ptr, tile_cell, count = capped_counts_by_key(tiles[kept], cells[kept], n_tiles, n_cells, ceiling)
    return ptr, tile_cell, count.astype(np.float64)


@numba.njit(cache=True, nogil=True)
def _grow(a, size):  # pragma: no cover - numba
    out = np.empty(max(size, 2 * a.size), a.dtype)
    out[: a.size] = a
    return out


@numba.njit(cache=True, nogil=True)
def _scores_by_gene(tile_ptr, tile_cell, tile_count, w_ptr, w_tile, w_data, n_cells):  # pragma: no cover
    """Cells x genes CSR (columns sorted) of ``sum over a gene's tiles of capped count x weight``.

    Gene by gene (weights as CSC: each gene's tiles are one contiguous run of the counts), with
    a dense per-cell accumulator, so memory access follows the genome instead of jumping across
    the chromosome for every cell.
    """
    n_genes = w_ptr.size - 1
    acc = np.zeros(n_cells, np.float64)
    seen = np.zeros(n_cells, np.bool_)
    touched = np.empty(max(1, n_cells), np.int32)
    row_nnz = np.zeros(n_cells + 1, np.int64)
    coo_cell = np.empty(1024, np.int32)
    coo_gene = np.empty(1024, np.int32)
    coo_value = np.empty(1024, np.float64)
    nnz = 0
    for g in range(n_genes):
        n_touched = 0
        for p in range(w_ptr[g], w_ptr[g + 1]):
            k = w_tile[p]
            w = w_data[p]
            for j in range(tile_ptr[k], tile_ptr[k + 1]):
                c = tile_cell[j]
                if not seen[c]:
                    seen[c] = True
                    touched[n_touched] = c
                    n_touched += 1
                acc[c] += tile_count[j] * w
        if nnz + n_touched > coo_cell.size:
            coo_cell = _grow(coo_cell, nnz + n_touched)
            coo_gene = _grow(coo_gene, nnz + n_touched)
            coo_value = _grow(coo_value, nnz + n_touched)
        for j in range(n_touched):
            c = touched[j]
            if acc[c] != 0.0:
                coo_cell[nnz], coo_gene[nnz], coo_value[nnz] = c, g, acc[c]
                row_nnz[c + 1] += 1
                nnz += 1
            acc[c] = 0.0
            seen[c] = False
    for c in range(n_cells):
        row_nnz[c + 1] += row_nnz[c]
    fill = row_nnz[:-1].copy()
    indices = np.empty(nnz, np.int32)
    data = np.empty(nnz, np.float64)
    for i in range(nnz):  # genes were emitted in order, so each row's columns come out sorted
        c = coo_cell[i]
        indices[fill[c]] = coo_gene[i]
        data[fill[c]] = coo_value[i]
        fill[c] += 1
    return row_nnz, indices, data


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
    tile_ptr, tile_cell, tile_count = _capped_tile_counts(
        np.asarray(start, np.int64), np.asarray(end, np.int64), np.asarray(cell, np.int32), n_cells, tile_size,
        n_tiles, -1 if ceiling is None else int(ceiling))
    by_gene = weights.tocsc()
    indptr, indices, data = _scores_by_gene(tile_ptr, tile_cell, tile_count, by_gene.indptr.astype(np.int64),
                                            by_gene.indices.astype(np.int32), by_gene.data.astype(np.float64), n_cells)
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))


def chrom_block_scores(sources, first: int, stop: int, weights: sp.csr_matrix, tile_size: int,
                       ceiling: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task: the raw scores of cells ``first:stop`` on one chromosome as CSR arrays.

    Returns ``(data, indices, indptr)`` (plain arrays, so a checkpoint stores them as a tree).
    """
    start, end, cell = read_block_fragments(sources, first, stop)
    scores = tile_gene_scores(start, end, cell, stop - first, weights, tile_size, ceiling)
    return scores.data, scores.indices, scores.indptr


@numba.njit(cache=True, nogil=True)
def _join_scale_round(indptrs, data, indices, scale_to):  # pragma: no cover - numba
    """Rows of the parts side by side, each row scaled to ``scale_to``, rounded to 3 decimals, zeros dropped.

    ``indptrs[p]`` is part ``p``'s indptr into the concatenated ``data``/``indices`` (columns
    already offset), so a row is its parts' runs in order. Rounding is numpy's
    ``round(x, 3)``: ``rint(x * 1000) / 1000``.
    """
    n_parts, n_rows = indptrs.shape[0], indptrs.shape[1] - 1
    totals = np.zeros(n_rows, np.float64)
    for r in range(n_rows):
        for p in range(n_parts):
            for k in range(indptrs[p, r], indptrs[p, r + 1]):
                totals[r] += data[k]
    out_ptr = np.zeros(n_rows + 1, np.int64)
    out_indices = np.empty(data.size, np.int32)
    out_data = np.empty(data.size, np.float32)
    m = 0
    for r in range(n_rows):
        for p in range(n_parts):
            for k in range(indptrs[p, r], indptrs[p, r + 1]):
                v = np.rint(scale_to * data[k] / totals[r] * 1000.0) / 1000.0
                if v != 0.0:
                    out_indices[m] = indices[k]
                    out_data[m] = v
                    m += 1
        out_ptr[r + 1] = m
    return out_ptr, out_indices[:m].copy(), out_data[:m].copy()


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
    column_start = np.cumsum([0, *n_genes])
    entry_start = np.cumsum([0, *(p[0].size for p in parts)])
    data = np.concatenate([np.asarray(p[0], np.float64) for p in parts]) if parts else np.empty(0)
    indices = (np.concatenate([np.asarray(p[1], np.int32) + np.int32(c) for p, c in zip(parts, column_start)])
               if parts else np.empty(0, np.int32))
    indptrs = (np.stack([np.asarray(p[2], np.int64) + e for p, e in zip(parts, entry_start)])
               if parts else np.zeros((0, n_rows + 1), np.int64))
    indptr, indices, data = _join_scale_round(indptrs, data, indices, float(scale_to))
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, int(column_start[-1])))
