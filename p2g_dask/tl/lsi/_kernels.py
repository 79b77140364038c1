"""Pure numpy / numba kernels of iterative LSI (one CSR block of cells in, arrays out).

Every function here works on one in-memory block; ``lsi.py`` and ``_lsi_stream.py`` apply them
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
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits


def column_positions(features: np.ndarray, n_vars: int) -> np.ndarray:
    """``col_pos[j]`` = position of column ``j`` in ``features`` or -1 (``features`` sorted)."""
    col_pos = np.full(n_vars, -1, dtype=np.int64)
    col_pos[features] = np.arange(features.size, dtype=np.int64)
    return col_pos


def default_threads() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(8, os.cpu_count() or 1))


def _on_row_ranges(kernel, indptr: np.ndarray, n_threads: int, *args) -> None:
    """Run ``kernel(*args, start, stop)`` over row ranges of about equal nonzeros, on threads."""
    n_rows = indptr.size - 1
    if n_threads <= 1 or indptr[-1] < 1_000_000:
        kernel(*args, 0, n_rows)
        return
    cuts = np.searchsorted(indptr, np.linspace(0, indptr[-1], 4 * n_threads + 1)[1:-1])
    bounds = np.unique(np.concatenate([[0], cuts, [n_rows]]))
    # A fresh pool per call: callers may themselves run on Dask's threads.
    with ThreadPoolExecutor(n_threads) as pool:
        for future in [pool.submit(kernel, *args, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
            future.result()


@numba.njit(cache=True, nogil=True)
def _feature_sums_kernel(indptr, indices, data, binarize, wanted, out):  # pragma: no cover
    for i in range(indptr.size - 1):
        if not wanted[i]:
            continue
        for p in range(indptr[i], indptr[i + 1]):
            if data[p] != 0:
                out[indices[p]] += 1.0 if binarize else data[p]


def feature_sums(block: sp.csr_matrix, *, binarize: bool, wanted: np.ndarray | None = None) -> np.ndarray:
    """Column sums of one block as a ``(1, n_vars)`` float64 row (binarized or raw counts).

    Only rows where the boolean ``wanted`` is True count. Binarizing follows ArchR
    (``x[x > 0] <- 1``); counts are checked non-negative at the entry points.
    """
    out = np.zeros(block.shape[1], dtype=np.float64)
    if block.nnz:
        _feature_sums_kernel(block.indptr, block.indices, block.data, bool(binarize), _wanted(block, wanted), out)
    return out[None, :]


def _wanted(block, wanted):
    return np.ones(block.shape[0], dtype=np.bool_) if wanted is None else np.asarray(wanted, dtype=np.bool_)


@numba.njit(cache=True, nogil=True)
def _row_totals_kernel(indptr, indices, data, col_pos, binarize, wanted, counts, totals, start,
                       stop):  # pragma: no cover
    use_pos = col_pos.size > 0
    for i in range(start, stop):
        if not wanted[i]:
            continue
        for p in range(indptr[i], indptr[i + 1]):
            if data[p] != 0 and (not use_pos or col_pos[indices[p]] >= 0):
                counts[i] += 1
                totals[i] += 1.0 if binarize else data[p]


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
def _group_sums_kernel(indptr, indices, data, labels, out):  # pragma: no cover
    for i in range(indptr.size - 1):
        g = labels[i]
        if g < 0:
            continue
        for p in range(indptr[i], indptr[i + 1]):
            out[g, indices[p]] += data[p]


def group_sums(block: sp.csr_matrix, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Raw count sums per group of cells, ``(n_groups, n_vars)`` float64; label -1 means no group."""
    out = np.zeros((n_groups, block.shape[1]), dtype=np.float64)
    if block.nnz:
        _group_sums_kernel(block.indptr, block.indices, block.data, np.asarray(labels, dtype=np.int64), out)
    return out


def take_rows(block: sp.csr_matrix, local_rows: np.ndarray) -> sp.csr_matrix:
    """Rows of one block (local indices), as CSR."""
    return sp.csr_matrix(block[local_rows])


def component_signs(loadings: np.ndarray) -> np.ndarray:
    """+1/-1 per component making its largest-magnitude loading positive (deterministic signs)."""
    biggest = np.argmax(np.abs(loadings), axis=0)
    signs = np.sign(loadings[biggest, np.arange(loadings.shape[1])])
    signs[signs == 0] = 1.0
    return signs


def fix_signs(loadings: np.ndarray) -> np.ndarray:
    """``loadings`` with :func:`component_signs` applied."""
    return loadings * component_signs(loadings)


@numba.njit(cache=True, nogil=True)
def _spmm_kernel(indptr, indices, data, dense, out, start, stop):  # pragma: no cover
    k = dense.shape[1]
    for i in range(start, stop):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            v = data[p]
            for c in range(k):
                out[i, c] += v * dense[j, c]


def spmm(matrix: sp.csr_matrix, dense: np.ndarray, n_threads: int = 1) -> np.ndarray:
    """``matrix @ dense`` for a CSR ``matrix``, in the matrix's dtype, over row ranges on threads."""
    dense = np.ascontiguousarray(dense, dtype=matrix.dtype)
    out = np.zeros((matrix.shape[0], dense.shape[1]), dtype=matrix.dtype)
    _on_row_ranges(_spmm_kernel, matrix.indptr, n_threads, matrix.indptr, matrix.indices, matrix.data, dense, out)
    return out


#: Bytes of the dense operand one column slab of a sparse product reads: about half the L2
#: cache of a core, so the random row gathers ``dense[j, :]`` hit L2 instead of memory.
SLAB_BYTES = 256 * 1024


@numba.njit(cache=True, nogil=True)
def _slab_counts(indptr, indices, bounds, counts):  # pragma: no cover
    for i in range(indptr.size - 1):
        s = 0
        for p in range(indptr[i], indptr[i + 1]):
            while indices[p] >= bounds[s + 1]:
                s += 1
            counts[s, i + 1] += 1


@numba.njit(cache=True, nogil=True)
def _slab_fill(indptr, indices, data, bounds, offsets, out_indices, out_data):  # pragma: no cover
    for i in range(indptr.size - 1):
        s = 0
        for p in range(indptr[i], indptr[i + 1]):
            while indices[p] >= bounds[s + 1]:
                s += 1
            q = offsets[s, i]
            out_indices[q] = indices[p] - bounds[s]
            out_data[q] = data[p]
            offsets[s, i] = q + 1


def _slab_bounds(n_cols: int, row_bytes: int, slab_bytes: int) -> np.ndarray:
    """Column bounds of slabs whose rows of the dense operand take about ``slab_bytes``."""
    per_slab = max(1, int(slab_bytes // max(1, row_bytes)))
    n_slabs = max(1, -(-n_cols // per_slab))
    return np.linspace(0, n_cols, n_slabs + 1).astype(np.int64)


class ColumnSlabs:
    """A CSR matrix cut into column slabs, for cache-friendly products with a tall dense block.

    ``matrix @ dense`` gathers one row of ``dense`` per nonzero; when ``dense`` is larger than
    the L2 cache those gathers go to memory (~0.65 GFlop/s per core measured on 30 M nonzeros x
    50 columns). Multiplying slab by slab keeps the rows of ``dense`` a slab reads in L2 (2-3x
    fewer CPU seconds measured). Each output row is summed in the same column order as
    :func:`spmm` (CSR rows have sorted indices), so the result is the same to the last bit.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> m = sp.random(50, 40, density=0.2, format="csr", random_state=0)
    >>> d = np.arange(80.0).reshape(40, 2)
    >>> bool(np.array_equal(ColumnSlabs(m, width=2, slab_bytes=64).matmul(d), spmm(m, d)))
    True
    """

    def __init__(self, matrix: sp.csr_matrix, *, width: int, slab_bytes: int = SLAB_BYTES, dtype=None):
        matrix = sp.csr_matrix(matrix)
        if not matrix.has_sorted_indices:
            matrix = matrix.sorted_indices()
        self.shape, self.dtype = matrix.shape, np.dtype(dtype or matrix.dtype)
        n_rows, n_cols = matrix.shape
        self.bounds = _slab_bounds(n_cols, width * self.dtype.itemsize, slab_bytes)
        n_slabs = self.bounds.size - 1
        if n_slabs == 1:
            self.slabs = [sp.csr_matrix(matrix, dtype=self.dtype)]
            return
        counts = np.zeros((n_slabs, n_rows + 1), dtype=np.int64)
        _slab_counts(matrix.indptr, matrix.indices, self.bounds, counts)
        indptrs = np.cumsum(counts, axis=1)
        starts = np.concatenate([[0], np.cumsum(indptrs[:, -1])])
        offsets = indptrs[:, :-1] + starts[:-1, None]
        out_indices = np.empty(matrix.nnz, dtype=matrix.indices.dtype)
        out_data = np.empty(matrix.nnz, dtype=self.dtype)
        _slab_fill(matrix.indptr, matrix.indices, matrix.data, self.bounds, offsets, out_indices, out_data)
        self.slabs = [
            sp.csr_matrix((out_data[starts[s]:starts[s + 1]], out_indices[starts[s]:starts[s + 1]], indptrs[s]),
                          shape=(n_rows, int(self.bounds[s + 1] - self.bounds[s])))
            for s in range(n_slabs)
        ]

    @classmethod
    def of_transpose(cls, matrix: sp.csr_matrix, *, width: int, slab_bytes: int = SLAB_BYTES,
                     dtype=None) -> ColumnSlabs:
        """Slabs of ``matrix.T`` made from row ranges of ``matrix``, without a whole transposed copy."""
        self = cls.__new__(cls)
        self.shape, self.dtype = matrix.shape[::-1], np.dtype(dtype or matrix.dtype)
        self.bounds = _slab_bounds(matrix.shape[0], width * self.dtype.itemsize, slab_bytes)
        self.slabs = [sp.csr_matrix(matrix[a:b].T, dtype=self.dtype) for a, b in zip(self.bounds[:-1], self.bounds[1:])]
        return self

    def matmul(self, dense: np.ndarray, n_threads: int = 1) -> np.ndarray:
        """``matrix @ dense`` in the matrix's dtype, slab by slab, over row ranges on threads."""
        dense = np.ascontiguousarray(dense, dtype=self.dtype)
        out = np.zeros((self.shape[0], dense.shape[1]), dtype=self.dtype)
        for s, slab in enumerate(self.slabs):
            _on_row_ranges(_spmm_kernel, slab.indptr, n_threads, slab.indptr, slab.indices, slab.data,
                           dense[self.bounds[s]:self.bounds[s + 1]], out)
        return out


def sparse_svd(
    tfidf: sp.csr_matrix, n_components: int, *, seed: int, n_iter: int = 7, n_oversamples: int = 20,
    return_fitted: bool = False,
) -> tuple[np.ndarray, ...]:
    """Truncated SVD of a cells x features TF-IDF; returns ``(loadings, singular_values)``.

    Randomized SVD (Halko et al. 2011, LU-normalised power iterations) whose range finder works
    on the *feature* side: with ``Q`` an orthonormal feature basis, ``B = tfidf @ Q = W S Z^T``
    and ``loadings = Q Z``, so the fitted coordinates ``W S`` equal ``tfidf @ loadings`` (in
    float64): projecting a fitted cell gives its fitted coordinates back, as with ArchR's irlba
    model. The power iterations run in float32 (half the memory traffic); ``seed`` fixes the
    result. ``return_fitted`` adds the fitted coordinates ``W S``.
    """
    n_cells, n_features = tfidf.shape
    width = min(n_components + n_oversamples, n_cells, n_features)
    tfidf = sp.csr_matrix(tfidf)
    # float32 column slabs of the matrix and of its transpose, made straight from the float64
    # TF-IDF (no whole float32 or transposed copy): each product's gathers stay in cache.
    transposed = ColumnSlabs.of_transpose(tfidf, width=width, dtype=np.float32)
    single = ColumnSlabs(tfidf, width=width, dtype=np.float32)
    rng = np.random.default_rng(seed)
    threads = default_threads()
    # Multi-threaded BLAS on these thin matrices is slower than one thread on a busy machine
    # (a 20,000 x 50 QR: 0.1 s on 1 thread, ~1 s on 2); the sparse products use the threads.
    with threadpool_limits(1, user_api="blas"):
        basis = transposed.matmul(rng.standard_normal((n_cells, width)), threads)
        for _ in range(n_iter):
            basis = scipy.linalg.lu(basis, permute_l=True)[0]
            cells = scipy.linalg.lu(single.matmul(basis, threads), permute_l=True)[0]
            basis = transposed.matmul(cells, threads)
        basis = scipy.linalg.qr(basis.astype(np.float64), mode="economic")[0]
        small = spmm(sp.csr_matrix(tfidf, dtype=np.float64), basis, threads)
        w, s, zt = np.linalg.svd(small, full_matrices=False)
    loadings = basis @ zt[:n_components].T
    signs = component_signs(loadings)
    loadings = loadings * signs
    if return_fitted:
        return loadings, s[:n_components], w[:, :n_components] * s[:n_components] * signs
    return loadings, s[:n_components]


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
