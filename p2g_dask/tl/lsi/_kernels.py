"""Pure numpy / numba kernels of iterative LSI (one CSR block of cells in, arrays out).

Every function here works on one in-memory block; ``lsi.py`` and ``_stream.py`` apply them
to a whole matrix or to each row chunk of a store as a Dask task. Feature subsets are given as
``col_pos``: an int64 array over *all* columns holding the position of a selected feature, or -1,
so a chunk never has to be column-sliced (slow on CSR) before a kernel reads it.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import scipy.sparse as sp


def column_positions(features: np.ndarray, n_vars: int) -> np.ndarray:
    """``col_pos[j]`` = position of column ``j`` in ``features`` or -1 (``features`` sorted)."""
    col_pos = np.full(n_vars, -1, dtype=np.int64)
    col_pos[features] = np.arange(features.size, dtype=np.int64)
    return col_pos


#: Work with fewer nonzeros runs on the calling thread (threads cost more than they save).
MIN_THREADED_NNZ = 1_000_000


def default_threads() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(8, os.cpu_count() or 1))


class Threads:
    """Runs a numba kernel (GIL released) over parts of its work on a thread pool.

    A fresh pool per use (one pass, or all the passes and products of an SVD), not a global one:
    callers may themselves run on Dask's threads. About four parts per thread even out uneven
    rows and slabs. Used as a context manager; one thread, or work of fewer than
    ``MIN_THREADED_NNZ`` nonzeros, runs on the calling thread.

    Examples
    --------
    >>> values, squares = np.arange(10.0), np.zeros(10)
    >>> def square(out, start, stop):
    ...     out[start:stop] = values[start:stop] ** 2
    >>> with Threads(2, nnz=MIN_THREADED_NNZ) as threads:  # ten items of equal work, in parts
    ...     threads.run(square, (squares,), threads.ranges(np.arange(11)))
    >>> float(squares.sum())
    285.0
    """

    def __init__(self, n_threads: int | None = None, nnz: int = MIN_THREADED_NNZ):
        n_threads = default_threads() if n_threads is None else n_threads
        self.pool = ThreadPoolExecutor(n_threads) if n_threads > 1 and nnz >= MIN_THREADED_NNZ else None
        self.n_parts = 4 * n_threads if self.pool is not None else 1

    def __enter__(self) -> Threads:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def run(self, kernel, args: tuple, parts: list[tuple[int, ...]]) -> None:
        """``kernel(*args, *part)`` for every part, on the pool's threads (kernels release the GIL)."""
        if self.pool is None or len(parts) == 1:
            for part in parts:
                kernel(*args, *part)
            return
        for future in [self.pool.submit(kernel, *args, *part) for part in parts]:
            future.result()

    def ranges(self, cumulative: np.ndarray) -> list[tuple[int, int]]:
        """``(start, stop)`` item ranges of about equal work, from the work's cumulative sum (leading 0)."""
        n_items, total = cumulative.size - 1, cumulative[-1]
        cuts = np.searchsorted(cumulative, np.linspace(0, total, self.n_parts + 1)[1:-1])
        bounds = np.unique(np.concatenate([[0], np.minimum(cuts, n_items), [n_items]]))
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _on_row_ranges(kernel, indptr: np.ndarray, n_threads: int, *args) -> None:
    """Run ``kernel(*args, start, stop)`` over row ranges of about equal nonzeros, on threads."""
    with Threads(n_threads, nnz=int(indptr[-1])) as threads:
        threads.run(kernel, args, threads.ranges(indptr))


@numba.njit(cache=True, nogil=True)
def _feature_sums_kernel(indptr, indices, data, binarize, wanted, out, start, stop):  # pragma: no cover
    for i in range(start, stop):
        if not wanted[i]:
            continue
        for p in range(indptr[i], indptr[i + 1]):
            if data[p] != 0:
                out[indices[p]] += 1.0 if binarize else data[p]


def feature_sums(block: sp.csr_matrix, *, binarize: bool, wanted: np.ndarray | None = None,
                 n_threads: int = 1) -> np.ndarray:
    """Column sums of one block as a ``(1, n_vars)`` float64 row (binarized or raw counts).

    Only rows where the boolean ``wanted`` is True count. Binarizing follows ArchR
    (``x[x > 0] <- 1``); counts are checked non-negative at the entry points. With threads,
    each row range sums into its own row, then the rows are added.
    """
    args = (block.indptr, block.indices, block.data, bool(binarize), _wanted(block, wanted))
    return _summed_over_row_ranges(_feature_sums_kernel, block, args, (block.shape[1],), n_threads)[None, :]


def _summed_over_row_ranges(kernel, block: sp.csr_matrix, args: tuple, shape: tuple, n_threads: int) -> np.ndarray:
    """``kernel(*args, out, start, stop)`` over row ranges on threads, each range adding into its own
    zeroed float64 ``shape`` array; the arrays' total (one range: its array as it is)."""
    with Threads(n_threads, nnz=block.nnz) as threads:
        ranges = threads.ranges(block.indptr)
        out = np.zeros((max(1, len(ranges)), *shape), dtype=np.float64)
        threads.run(kernel, args, [(out[part], a, b) for part, (a, b) in enumerate(ranges)])
    return out.sum(axis=0) if len(ranges) > 1 else out[0]


def _wanted(block, wanted):
    return np.ones(block.shape[0], dtype=np.bool_) if wanted is None else np.asarray(wanted, dtype=np.bool_)


@numba.njit(cache=True, nogil=True)
def _row_totals_kernel(indptr, indices, data, col_pos, binarize, wanted, counts, totals, start,
                       stop):  # pragma: no cover
    # Sums in registers and no branch per nonzero: about half of them are selected, in random
    # order (a branch there mispredicts half the time); adding 0.0 leaves the sum as it was.
    use_pos = col_pos.size > 0
    for i in range(start, stop):
        if not wanted[i]:
            continue
        count = 0
        total = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            keep = data[p] != 0
            if use_pos:
                keep = keep & (col_pos[indices[p]] >= 0)
            count += keep
            total += (1.0 if binarize else data[p]) if keep else 0.0
        counts[i] = count
        totals[i] = total


def _row_counts_totals(block, col_pos, binarize, n_threads=1, wanted=None):
    counts = np.zeros(block.shape[0], dtype=np.int64)
    totals = np.zeros(block.shape[0], dtype=np.float64)
    if block.nnz:
        col_pos = np.zeros(0, dtype=np.int64) if col_pos is None else col_pos
        _on_row_ranges(_row_totals_kernel, block.indptr, n_threads, block.indptr, block.indices, block.data,
                       col_pos, bool(binarize), _wanted(block, wanted), counts, totals)
    return counts, totals


def row_totals(block: sp.csr_matrix, col_pos: np.ndarray | None, *, binarize: bool, n_threads: int = 1) -> np.ndarray:
    """Per-cell sum over the selected features (all features when ``col_pos`` is None)."""
    return _row_counts_totals(block, col_pos, binarize, n_threads)[1]


@numba.njit(cache=True, nogil=True)
def _tfidf_kernel(indptr, indices, data, col_pos, idf, scale_to, binarize, totals, out_indptr, out_indices,
                  out_data, start, stop):  # pragma: no cover
    for i in range(start, stop):
        if totals[i] == 0.0:
            continue
        q = out_indptr[i]
        for p in range(indptr[i], indptr[i + 1]):
            j = col_pos[indices[p]]
            if j >= 0 and data[p] != 0:
                value = 1.0 if binarize else float(data[p])
                out_indices[q] = j
                out_data[q] = math.log1p(value / totals[i] * idf[j] * scale_to)
                q += 1


def tfidf_block(
    block: sp.csr_matrix, col_pos: np.ndarray, idf: np.ndarray, *, scale_to: float, binarize: bool,
    wanted: np.ndarray | None = None, n_threads: int = 1,
) -> sp.csr_matrix:
    """ArchR's log(TF-IDF) of one block, restricted to the selected features.

    ``TF = x / (cell total over the selected features)``, value ``log(TF * idf * scale_to + 1)``
    (natural log). A cell without any selected feature, or where the boolean ``wanted`` is False,
    gets an empty row. ``col_pos`` must increase over the selected columns (sorted features) for
    the output indices to be sorted.
    """
    n_rows = block.shape[0]
    counts, totals = _row_counts_totals(block, col_pos, binarize, n_threads, wanted)
    out_indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=out_indptr[1:])
    index_dtype = np.int32 if max(out_indptr[-1], idf.size) < 2**31 else np.int64
    out_indices = np.empty(out_indptr[-1], dtype=index_dtype)
    out_data = np.empty(out_indptr[-1], dtype=np.float64)
    if block.nnz:
        _on_row_ranges(_tfidf_kernel, block.indptr, n_threads, block.indptr, block.indices, block.data, col_pos,
                       np.asarray(idf, dtype=np.float64), float(scale_to), bool(binarize), totals, out_indptr,
                       out_indices, out_data)
    result = sp.csr_matrix((out_data, out_indices, out_indptr.astype(index_dtype)), shape=(n_rows, idf.size))
    if not block.has_sorted_indices:
        result.sort_indices()
    return result


@numba.njit(cache=True, nogil=True)
def _project_kernel(indptr, indices, data, col_pos, idf, loadings, scale_to, binarize, wanted, out, start,
                    stop):  # pragma: no cover
    k = loadings.shape[1]
    for i in range(start, stop):
        if not wanted[i]:
            continue
        total = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            if col_pos[indices[p]] >= 0 and data[p] != 0:
                total += 1.0 if binarize else data[p]
        if total == 0.0:
            continue
        for p in range(indptr[i], indptr[i + 1]):
            j = col_pos[indices[p]]
            if j >= 0 and data[p] != 0:
                value = 1.0 if binarize else float(data[p])
                weight = math.log1p(value / total * idf[j] * scale_to)
                for c in range(k):
                    out[i, c] += weight * loadings[j, c]


def project_block(
    block: sp.csr_matrix,
    col_pos: np.ndarray,
    idf: np.ndarray,
    loadings: np.ndarray,
    *,
    scale_to: float,
    binarize: bool,
    wanted: np.ndarray | None = None,
    n_threads: int = 1,
) -> np.ndarray:
    """LSI coordinates of one block: ``tfidf_block(block) @ loadings`` without forming the TF-IDF.

    This is ArchR's ``.projectLSI`` (``t(TF-IDF) %*% u %*% diag(1/d)`` times ``diag(d)``). A cell
    without any selected feature gets zero coordinates, and so does a row where the boolean
    ``wanted`` is False (the row is skipped).
    """
    out = np.zeros((block.shape[0], loadings.shape[1]), dtype=np.float64)
    if block.nnz:
        _on_row_ranges(_project_kernel, block.indptr, n_threads, block.indptr, block.indices, block.data, col_pos,
                       np.asarray(idf, dtype=np.float64), np.ascontiguousarray(loadings, dtype=np.float64),
                       float(scale_to), bool(binarize), _wanted(block, wanted), out)
    return out


@numba.njit(cache=True, nogil=True)
def _group_sums_kernel(indptr, indices, data, labels, out, start, stop):  # pragma: no cover
    for i in range(start, stop):
        g = labels[i]
        if g < 0:
            continue
        for p in range(indptr[i], indptr[i + 1]):
            out[g, indices[p]] += data[p]


def group_sums(block: sp.csr_matrix, labels: np.ndarray, n_groups: int, n_threads: int = 1) -> np.ndarray:
    """Raw count sums per group of cells, ``(n_groups, n_vars)`` float64; label -1 means no group.

    With threads, each row range sums into its own table, then the tables are added.
    """
    args = (block.indptr, block.indices, block.data, np.asarray(labels, dtype=np.int64))
    return _summed_over_row_ranges(_group_sums_kernel, block, args, (n_groups, block.shape[1]), n_threads)


def take_rows(block: sp.csr_matrix, local_rows: np.ndarray) -> sp.csr_matrix:
    """Rows of one block (local indices), as CSR."""
    return sp.csr_matrix(block[local_rows])


def component_signs(loadings: np.ndarray) -> np.ndarray:
    """+1/-1 per component making its largest-magnitude loading positive (deterministic signs)."""
    biggest = np.argmax(np.abs(loadings), axis=0)
    signs = np.sign(loadings[biggest, np.arange(loadings.shape[1])])
    signs[signs == 0] = 1.0
    return signs


def row_zscores(coords: np.ndarray) -> np.ndarray:
    """ArchR's ``.scaleDims``: z-score each cell's row (sample SD); an all-zero row stays zero."""
    centred = coords - coords.mean(axis=1, keepdims=True)
    sd = coords.std(axis=1, ddof=1, keepdims=True) if coords.shape[1] > 1 else np.ones((coords.shape[0], 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = centred / sd
    z[~np.isfinite(z)] = 0.0
    return z


def depth_correlation(coords: np.ndarray, log_depth: np.ndarray) -> np.ndarray:
    """|Pearson r| of each column with ``log_depth``; NaN for a constant column."""
    x = coords - coords.mean(axis=0)
    y = log_depth - log_depth.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y[:, None]).sum(axis=0) / np.sqrt((x**2).sum(axis=0) * (y**2).sum())
    return np.abs(r)


def top_accessible(totals: np.ndarray, n: int, *, filter_quantile: float, total_features: int) -> np.ndarray:
    """ArchR's first feature set: rank by total, skip the top ``1 - filter_quantile`` share, take ``n``.

    Features with a zero total are never selected. Returns sorted column indices.
    """
    order = np.argsort(-totals, kind="stable")
    order = order[totals[order] > 0]
    # Rounding first keeps e.g. (1 - 0.9) * 10 = 0.99999... from flooring to 0.
    n_top = int(np.floor(round((1.0 - filter_quantile) * min(total_features, order.size), 9)))
    return np.sort(order[n_top : n_top + n])


def candidate_features(totals: np.ndarray, total_features: int) -> np.ndarray:
    """The ``total_features`` most accessible features (sorted column indices)."""
    return np.sort(np.argsort(-totals, kind="stable")[:total_features])


def variable_features(sums: np.ndarray, candidates: np.ndarray, n: int, *, scale_to: float) -> np.ndarray:
    """ArchR's ``selectionMethod='var'``: top ``n`` by variance of log2(CP-scale+1) over clusters.

    ``sums`` is clusters x all features (raw counts); each cluster is normalised over the
    ``candidates`` columns. Returns sorted column indices.
    """
    group = sums[:, candidates]
    depth = group.sum(axis=1, keepdims=True)
    depth[depth == 0] = 1.0
    log_norm = np.log2(group / depth * scale_to + 1.0)
    var = log_norm.var(axis=0, ddof=1)
    return np.sort(candidates[np.argsort(-var, kind="stable")[:n]])


def sample_cells(
    rng: np.random.Generator, log_depth: np.ndarray, n: int, outlier_quantiles: tuple[float, float] | None
) -> np.ndarray:
    """ArchR's ``.filterSample``: ``n`` cells among those within half-width depth quantiles.

    With ``outlier_quantiles=(0.1, 0.9)`` cells are drawn among those whose log depth lies in the
    [5 %, 95 %] quantile range (all cells when fewer remain). All cells when ``n`` >= the number of
    cells. Returns sorted row indices.
    """
    n_obs = log_depth.size
    if n >= n_obs:
        return np.arange(n_obs)
    pool = np.arange(n_obs)
    if outlier_quantiles is not None:
        lo, hi = min(outlier_quantiles) / 2, 1 - (1 - max(outlier_quantiles)) / 2
        q_lo, q_hi = np.quantile(log_depth, [lo, hi])
        inside = np.flatnonzero((log_depth >= q_lo) & (log_depth <= q_hi))
        if inside.size >= n:
            pool = inside
    return np.sort(rng.choice(pool, size=n, replace=False))


def fit_cells(totals: np.ndarray, outlier_quantiles: tuple[float, float] | None) -> np.ndarray:
    """Mask of sampled cells the SVD is fit on (ArchR's ``outlierQ`` filter in ``.computeLSI``).

    Cells without any selected feature are excluded; with quantiles, so are cells whose total is
    at or beyond the lower/upper quantile of the others (they are projected instead).
    """
    ok = totals > 0
    if outlier_quantiles is None or not ok.any():
        return ok
    q_lo, q_hi = np.quantile(totals[ok], [min(outlier_quantiles), max(outlier_quantiles)])
    return ok & (totals > q_lo) & (totals < q_hi)
