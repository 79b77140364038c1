"""Pure numpy/numba kernels of the peak-to-gene pipeline; the tl modules build graphs around them."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pandas as pd
from scipy import special

from p2g_dask.io.blocks import Rows
from p2g_dask.tl.engine.standardize import (  # noqa: F401 - re-exported: callers import them here
    _standardized_features_kernel,
    standardized_features,
)


@numba.njit(cache=True, nogil=True)
def _lower_bound(values, lo, hi, target):  # pragma: no cover - jit
    # The first position p in lo..hi with values[p] >= target (values sorted there): what
    # lo + np.searchsorted(values[lo:hi], target) gives, without compiling numba's generic
    # searchsorted (0.3 s of a first run after install).
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def _accumulate_csr(member_indptr, member_cells, x_indptr, x_indices, x_data, out, first_col, sorted_rows,
                    whole, single):  # pragma: no cover - jit
    # Metacell-major: one output row stays in cache while its member cells' rows are added.
    # Only columns first_col .. first_col + out.shape[1] are summed (a column block).
    # ``single``: the output is float32, so each value is cast to float32 before the add (numpy's
    # rules would otherwise add int32 + float32 in float64 and convert back: 1.5x slower).
    last_col = first_col + out.shape[1]
    for metacell in range(member_indptr.size - 1):
        row_out = out[metacell]
        for t in range(member_indptr[metacell], member_indptr[metacell + 1]):
            cell = member_cells[t]
            start, stop = x_indptr[cell], x_indptr[cell + 1]
            if sorted_rows:
                start, stop = _lower_bound(x_indices, start, stop, first_col), _lower_bound(x_indices, start, stop, last_col)
            if whole or sorted_rows:
                if single:
                    for p in range(start, stop):
                        row_out[x_indices[p] - first_col] += np.float32(x_data[p])
                else:
                    for p in range(start, stop):
                        row_out[x_indices[p] - first_col] += x_data[p]
            else:
                for p in range(start, stop):
                    column = x_indices[p]
                    if first_col <= column < last_col:
                        row_out[column - first_col] += x_data[p]


#: The largest sum an exact-count accumulator (uint16) holds.
COUNT_MAX = 65535


@numba.njit(cache=True, nogil=True)
def _member_values_are_counts(member_cells, x_indptr, x_data, largest):  # pragma: no cover - jit
    # Only the member cells' values are ever added, so only theirs decide the accumulator's dtype
    # (a whole-block min/max cost ~8 % of a store task; members are ~5 % of an atlas's cells).
    for t in range(member_cells.size):
        cell = member_cells[t]
        bad = 0
        # No early exit inside a row: the loop vectorises (3x faster on float32 counts).
        for p in range(x_indptr[cell], x_indptr[cell + 1]):
            value = x_data[p]
            bad += (value < 0) | (value > largest) | (value != math.floor(value))
        if bad:
            return False
    return True


def metacell_sum_block(
    block, member_indptr: np.ndarray, member_cells: np.ndarray, n_metacells: int, dtype=np.float32,
    out: np.ndarray | None = None, columns: tuple[int, int] | None = None, max_members: int | None = None,
) -> np.ndarray:
    """Sum a block of cell rows into metacells without densifying the block.

    Parameters
    ----------
    block
        Cells x features for the block's rows: a :class:`p2g_dask.io.blocks.Rows` (raw CSR arrays,
        no scipy format check), or a scipy matrix / dense array (made into ``Rows``).
    member_indptr, member_cells
        The membership restricted to the block, as CSR (metacells x block cells): the block-local
        rows of metacell ``j`` are ``member_cells[member_indptr[j]:member_indptr[j+1]]``.
    n_metacells
        Rows of the output.
    dtype
        Accumulator dtype when ``out`` is None. ``uint16`` holds exact counts in half the memory
        of float32, given ``max_members``; it is promoted to float32 (exactly: it holds counts)
        before a block whose member cells have a value that is not a count of ``0..65535 // max_members``.
    out
        An accumulator to add into (in place) instead of a new zero array.
    columns
        ``(first, stop)``: sum only this column block (the output has ``stop - first`` columns).
    max_members
        The most cells any metacell has over *all* the blocks added into this accumulator. A
        uint16 accumulator only ever adds values up to ``65535 // max_members``, so no sum can
        pass 65,535 and no add needs a check. None: uint16 is promoted at once.

    Returns
    -------
    numpy.ndarray
        ``(n_metacells, n_columns)`` partial sums (``out`` itself when given, unless a uint16
        ``out`` was promoted to a new float32 array).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> X = sp.csr_matrix(np.array([[1, 0, 2], [3, 4, 0]], dtype=np.int32))
    >>> metacell_sum_block(X, np.array([0, 2]), np.array([0, 1]), 1, np.uint16, max_members=2).tolist()
    [[4, 4, 2]]
    >>> metacell_sum_block(X * 30000, np.array([0, 2]), np.array([0, 1]), 1, np.uint16, max_members=2).tolist()
    [[120000.0, 120000.0, 60000.0]]
    """
    if not isinstance(block, Rows):
        block = Rows.of(block)
    data, indices, indptr, n_features = block
    first, stop = columns if columns is not None else (0, n_features)
    if out is None:
        out = np.zeros((n_metacells, stop - first), dtype=dtype)
    if member_cells.size == 0:
        return out
    indptr = np.asarray(indptr, dtype=np.int64)
    member_indptr = np.asarray(member_indptr, dtype=np.int64)
    member_cells = np.asarray(member_cells, dtype=np.int64)
    whole = first == 0 and stop == n_features
    # Sorted column indices (the store writes them sorted) let each row find its block by bisection.
    sorted_rows = whole or _rows_sorted(indptr, indices)
    # Each member row once: a cell is in ~5 overlapping metacells of a PBMC-sized data set.
    if out.dtype == np.uint16 and not (max_members and _member_values_are_counts(
            np.unique(member_cells), indptr, data, COUNT_MAX // max(1, int(max_members)))):
        # Exact: a uint16 accumulator has only ever added (member) values below the same bound.
        out = out.astype(np.float32)
    _accumulate_csr(member_indptr, member_cells, indptr, indices, data, out, int(first), not whole and sorted_rows,
                    whole, out.dtype == np.float32)
    return out


def metacell_sums_threaded(
    block, member_indptr: np.ndarray, member_cells: np.ndarray, n_metacells: int, dtype=np.float32,
    columns: tuple[int, int] | None = None, threads: int | None = None,
) -> np.ndarray:
    """:func:`metacell_sum_block` of a whole in-memory matrix on all cores, into one buffer.

    Threads take disjoint ranges of metacells (output rows), so they write one shared
    ``n_metacells x n_columns`` buffer with no partial copies to add up afterwards; the kernel
    releases the GIL. Same arguments and result as :func:`metacell_sum_block`.
    """
    if not isinstance(block, Rows):
        block = Rows.of(block)
    first, stop = columns if columns is not None else (0, block.n_vars)
    out = np.zeros((n_metacells, stop - first), dtype=dtype)
    threads = max(1, threads or os.cpu_count() or 1)
    # A few ranges per thread even out metacells of unequal size.
    edges = np.unique(np.linspace(0, n_metacells, min(n_metacells, 4 * threads) + 1).astype(np.int64))
    member_indptr = np.asarray(member_indptr, dtype=np.int64)
    member_cells = np.asarray(member_cells, dtype=np.int64)
    data, indices, indptr, n_features = block
    indptr = np.asarray(indptr, dtype=np.int64)
    whole = first == 0 and stop == n_features
    bisect = not whole and _rows_sorted(indptr, indices)  # checked once, not per range

    def run(k: int) -> None:
        lo, hi = int(edges[k]), int(edges[k + 1])
        # The kernel reads member_indptr's absolute offsets, so a slice of it selects the range.
        _accumulate_csr(member_indptr[lo : hi + 1], member_cells, indptr, indices, data, out[lo:hi],
                        int(first), bisect, whole, out.dtype == np.float32)

    if threads == 1 or edges.size <= 2:
        for k in range(edges.size - 1):
            run(k)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, range(edges.size - 1)))
    return out


@numba.njit(cache=True, nogil=True)
def _rows_sorted_jit(indptr, indices):  # pragma: no cover - jit
    for row in range(indptr.size - 1):
        for p in range(indptr[row] + 1, indptr[row + 1]):
            if indices[p] <= indices[p - 1]:
                return False
    return True


def _rows_sorted(indptr: np.ndarray, indices: np.ndarray) -> bool:
    return bool(_rows_sorted_jit(indptr, indices))


def normalize_log2(sums: np.ndarray, totals: np.ndarray, scale_to: float = 1e4) -> np.ndarray:
    """ArchR's metacell normalisation: each metacell scaled to ``scale_to``, then ``log2(x + 1)``.

    ``totals`` are the metacells' sums over *all* features of the matrix, so a column subset
    normalises exactly as the whole matrix would.
    """
    totals = np.asarray(totals, dtype=np.float64)
    safe = np.where(totals > 0, totals, 1.0)
    return np.log2(np.asarray(sums, dtype=np.float64) / safe[:, None] * scale_to + 1.0)


def variance_quantiles(variances: np.ndarray) -> np.ndarray:
    """ArchR's ``.getQuantiles``: ``trunc(rank(v)) / length(v)`` with average ranks for ties."""
    variances = np.asarray(variances, dtype=np.float64)
    if variances.size == 0:
        return variances
    ranks = pd.Series(variances).rank(method="average").to_numpy(dtype=np.float64)
    return np.trunc(ranks) / variances.size


def standardize_columns(values: np.ndarray, *, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Centre each column and scale it to unit norm; also each column's sample variance.

    A constant column becomes NaN (variance 0). It is found by an exact test, because centring
    a constant leaves round-off rather than zeros. The variance is ``ddof=1``, as R's
    ``rowVars``. With ``overwrite`` a float64 ``values`` is reused instead of copied.
    """
    values = np.asarray(values, dtype=np.float64) if overwrite else np.array(values, dtype=np.float64)
    constant = (values == values[:1]).all(axis=0) if values.shape[0] else np.ones(values.shape[1], bool)
    values -= values.mean(axis=0, keepdims=True)
    values[:, constant] = 0.0
    sum_squares = np.einsum("ij,ij->j", values, values)
    norms = np.sqrt(sum_squares)
    with np.errstate(invalid="ignore", divide="ignore"):
        values /= np.where(norms > 0, norms, np.nan)
    return values, sum_squares / max(1, values.shape[0] - 1)


# "reassoc" lets LLVM vectorise the dot products' sums (3x here); results move by ~1e-16.
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _pair_dots(atac_t, rna_t, peak_index, gene_index, out):  # pragma: no cover - jit
    for i in range(peak_index.size):
        a = atac_t[peak_index[i]]
        r = rna_t[gene_index[i]]
        total = 0.0
        for j in range(a.size):
            total += a[j] * r[j]
        out[i] = total


def pair_correlation(
    atac_std: np.ndarray, rna_std: np.ndarray, peak_index: np.ndarray, gene_index: np.ndarray
) -> np.ndarray:
    """Pearson r of each (peak, gene) pair from column-standardised matrices (metacells x features)."""
    out = np.empty(np.asarray(peak_index).size, dtype=np.float64)
    # Feature-major copies keep each feature's metacell values contiguous for the dot products.
    _pair_dots(np.ascontiguousarray(atac_std.T), np.ascontiguousarray(rna_std.T),
               np.asarray(peak_index, dtype=np.int64), np.asarray(gene_index, dtype=np.int64), out)
    return np.clip(out, -1.0, 1.0)


def pair_correlation_t(atac_std_t: np.ndarray, rna_std_t: np.ndarray, peak_index: np.ndarray,
                       gene_index: np.ndarray) -> np.ndarray:
    """:func:`pair_correlation` from feature-major standardised rows (:func:`standardized_features`)."""
    out = np.empty(np.asarray(peak_index).size, dtype=np.float64)
    _pair_dots(atac_std_t, rna_std_t, np.asarray(peak_index, dtype=np.int64),
               np.asarray(gene_index, dtype=np.int64), out)
    return np.clip(out, -1.0, 1.0, out=out)


def t_and_pvalue(correlation: np.ndarray, n_metacells: int) -> tuple[np.ndarray, np.ndarray]:
    """ArchR's t statistic ``r / sqrt(max(1 - r^2, 1e-17) / (m - 2))`` and two-sided p value."""
    dof = n_metacells - 2
    with np.errstate(invalid="ignore"):
        t = correlation / np.sqrt(np.maximum(1.0 - correlation**2, 1e-17) / dof)
        # Two-sided Student t p value as the regularised incomplete beta (what t.sf computes),
        # from scipy.special: scipy.stats costs ~1 s of import in every fresh process.
        pval = special.betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return t, pval


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values; NaN stays NaN and is not counted (as R's p.adjust).

    Examples
    --------
    >>> benjamini_hochberg(np.array([0.01, 0.04, np.nan, 0.03]))
    array([0.03, 0.04,  nan, 0.04])
    """
    pvalues = np.asarray(pvalues, dtype=np.float64)
    out = np.full(pvalues.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(pvalues))
    n = valid.size
    if n == 0:
        return out
    order = np.argsort(pvalues[valid], kind="stable")[::-1]
    ranked = pvalues[valid][order]
    adjusted = np.minimum.accumulate(ranked * n / np.arange(n, 0, -1))
    out[valid[order]] = np.minimum(adjusted, 1.0)
    return out
