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
import scipy.sparse as sp


def column_positions(features: np.ndarray, n_vars: int) -> np.ndarray:
    """``col_pos[j]`` = position of column ``j`` in ``features`` or -1 (``features`` sorted)."""
    col_pos = np.full(n_vars, -1, dtype=np.int64)
    col_pos[features] = np.arange(features.size, dtype=np.int64)
    return col_pos


def _values(block: sp.csr_matrix, binarize: bool) -> np.ndarray:
    # ArchR binarizes with x[x > 0] <- 1; counts are never negative (checked at the entry point).
    if binarize:
        return (block.data > 0).astype(np.float64)
    return block.data.astype(np.float64, copy=False)


def feature_sums(block: sp.csr_matrix, *, binarize: bool) -> np.ndarray:
    """Column sums of one block as a ``(1, n_vars)`` float64 row (binarized or raw counts)."""
    sums = np.bincount(block.indices, weights=_values(block, binarize), minlength=block.shape[1])
    return sums[None, :]


def row_totals(block: sp.csr_matrix, col_pos: np.ndarray | None, *, binarize: bool) -> np.ndarray:
    """Per-cell sum over the selected features (all features when ``col_pos`` is None)."""
    values = _values(block, binarize)
    if col_pos is not None:
        values = values * (col_pos[block.indices] >= 0)
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    return np.bincount(rows, weights=values, minlength=block.shape[0])


@numba.njit(cache=True, nogil=True)
def _tfidf_counts(indptr, indices, data, col_pos, binarize, counts, totals):  # pragma: no cover
    for i in range(indptr.size - 1):
        for p in range(indptr[i], indptr[i + 1]):
            if col_pos[indices[p]] >= 0 and data[p] != 0:
                counts[i] += 1
                totals[i] += 1.0 if binarize else data[p]


@numba.njit(cache=True, nogil=True)
def _tfidf_fill(indptr, indices, data, col_pos, idf, scale_to, binarize, totals, out_indptr, out_indices,
                out_data):  # pragma: no cover
    for i in range(indptr.size - 1):
        q = out_indptr[i]
        for p in range(indptr[i], indptr[i + 1]):
            j = col_pos[indices[p]]
            if j >= 0 and data[p] != 0:
                value = 1.0 if binarize else float(data[p])
                out_indices[q] = j
                out_data[q] = math.log1p(value / totals[i] * idf[j] * scale_to)
                q += 1


def _csr_arrays(block: sp.csr_matrix):
    return block.indptr.astype(np.int64, copy=False), block.indices.astype(np.int64, copy=False), block.data


def tfidf_block(
    block: sp.csr_matrix, col_pos: np.ndarray, idf: np.ndarray, *, scale_to: float, binarize: bool
) -> sp.csr_matrix:
    """ArchR's log(TF-IDF) of one block, restricted to the selected features.

    ``TF = x / (cell total over the selected features)``, value ``log(TF * idf * scale_to + 1)``
    (natural log). A cell without any selected feature gets an empty row.
    """
    indptr, indices, data = _csr_arrays(block)
    n_rows = block.shape[0]
    counts = np.zeros(n_rows, dtype=np.int64)
    totals = np.zeros(n_rows, dtype=np.float64)
    _tfidf_counts(indptr, indices, data, col_pos, bool(binarize), counts, totals)
    out_indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=out_indptr[1:])
    out_indices = np.empty(out_indptr[-1], dtype=np.int64)
    out_data = np.empty(out_indptr[-1], dtype=np.float64)
    _tfidf_fill(indptr, indices, data, col_pos, np.asarray(idf, dtype=np.float64), float(scale_to), bool(binarize),
                totals, out_indptr, out_indices, out_data)
    index_dtype = np.int32 if max(out_indptr[-1], idf.size) < 2**31 else np.int64
    result = sp.csr_matrix((out_data, out_indices.astype(index_dtype), out_indptr.astype(index_dtype)),
                           shape=(n_rows, idf.size))
    if not block.has_sorted_indices:
        result.sort_indices()
    return result


@numba.njit(cache=True, nogil=True)
def _project_kernel(indptr, indices, data, col_pos, idf, loadings, scale_to, binarize, out):  # pragma: no cover
    k = loadings.shape[1]
    for i in range(indptr.size - 1):
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
) -> np.ndarray:
    """LSI coordinates of one block: ``tfidf_block(block) @ loadings`` without forming the TF-IDF.

    This is ArchR's ``.projectLSI`` (``t(TF-IDF) %*% u %*% diag(1/d)`` times ``diag(d)``). A cell
    without any selected feature gets zero coordinates.
    """
    out = np.zeros((block.shape[0], loadings.shape[1]), dtype=np.float64)
    if block.nnz:
        _project_kernel(
            *_csr_arrays(block), col_pos, np.asarray(idf, dtype=np.float64),
            np.ascontiguousarray(loadings, dtype=np.float64), float(scale_to), bool(binarize), out,
        )
    return out


def group_sums(block: sp.csr_matrix, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Raw count sums per group of cells, ``(n_groups, n_vars)``; label -1 means no group."""
    member = labels >= 0
    indicator = sp.csr_matrix(
        (np.ones(int(member.sum())), (labels[member], np.flatnonzero(member))), shape=(n_groups, block.shape[0])
    )
    return np.asarray((indicator @ block.astype(np.float64)).todense())


def take_rows(block: sp.csr_matrix, local_rows: np.ndarray) -> sp.csr_matrix:
    """Rows of one block (local indices), as CSR."""
    return sp.csr_matrix(block[local_rows])


def fix_signs(loadings: np.ndarray) -> np.ndarray:
    """Flip each component so its largest-magnitude loading is positive (deterministic signs)."""
    biggest = np.argmax(np.abs(loadings), axis=0)
    signs = np.sign(loadings[biggest, np.arange(loadings.shape[1])])
    signs[signs == 0] = 1.0
    return loadings * signs


@numba.njit(cache=True, nogil=True)
def _spmm_rows(indptr, indices, data, dense, out, start, stop):  # pragma: no cover
    k = dense.shape[1]
    for i in range(start, stop):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            v = data[p]
            for c in range(k):
                out[i, c] += v * dense[j, c]


def _threads() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(8, os.cpu_count() or 1))


def spmm(matrix: sp.csr_matrix, dense: np.ndarray, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """``matrix @ dense`` for CSR ``matrix``, split over row ranges on ``pool``'s threads."""
    dense = np.ascontiguousarray(dense, dtype=np.float64)
    out = np.zeros((matrix.shape[0], dense.shape[1]), dtype=np.float64)
    indptr, indices, data = _csr_arrays(matrix)
    data = data.astype(np.float64, copy=False)
    if pool is None:
        _spmm_rows(indptr, indices, data, dense, out, 0, matrix.shape[0])
        return out
    # Equal nonzeros per piece keeps the threads evenly busy.
    cuts = np.searchsorted(indptr, np.linspace(0, indptr[-1], 4 * pool._max_workers + 1)[1:-1])
    bounds = np.unique(np.concatenate([[0], cuts, [matrix.shape[0]]]))
    futures = [pool.submit(_spmm_rows, indptr, indices, data, dense, out, int(a), int(b))
               for a, b in zip(bounds[:-1], bounds[1:])]
    for future in futures:
        future.result()
    return out


def sparse_svd(
    tfidf: sp.csr_matrix, n_components: int, *, seed: int, n_iter: int = 5, n_oversamples: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Truncated SVD of a cells x features TF-IDF; returns ``(loadings, singular_values)``.

    Randomized SVD (Halko et al. 2011, QR-normalised power iterations) whose range finder works
    on the *feature* side: with ``Q`` an orthonormal feature basis, ``B = tfidf @ Q = W S Z^T``
    and ``loadings = Q Z``, so the fitted coordinates ``W S`` equal ``tfidf @ loadings`` exactly
    (projecting a fitted cell gives its fitted coordinates back, as ArchR's irlba model does).
    Sparse products run on a thread pool; ``seed`` fixes the result.
    """
    n_cells, n_features = tfidf.shape
    width = min(n_components + n_oversamples, n_cells, n_features)
    transposed = sp.csr_matrix(tfidf.T)
    rng = np.random.default_rng(seed)
    with ThreadPoolExecutor(_threads()) as pool:
        basis, _ = np.linalg.qr(spmm(transposed, rng.standard_normal((n_cells, width)), pool))
        for _ in range(n_iter):
            cells, _ = np.linalg.qr(spmm(tfidf, basis, pool))
            basis, _ = np.linalg.qr(spmm(transposed, cells, pool))
        small = spmm(tfidf, basis, pool)
    _, s, zt = np.linalg.svd(small, full_matrices=False)
    loadings = basis @ zt[:n_components].T
    return fix_signs(loadings), s[:n_components]


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
    n_top = int(np.floor((1.0 - filter_quantile) * min(total_features, order.size)))
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
