"""Pure numpy/numba kernels of the peak-to-gene pipeline; the tl modules build graphs around them."""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from scipy import stats


@numba.njit(cache=True, nogil=True)
def _accumulate_csr(cell_indptr, cell_metacells, x_indptr, x_indices, x_data, out):  # pragma: no cover - jit
    n_rows = x_indptr.size - 1
    for row in range(n_rows):
        first, last = cell_indptr[row], cell_indptr[row + 1]
        if first == last:
            continue
        start, stop = x_indptr[row], x_indptr[row + 1]
        for t in range(first, last):
            metacell = cell_metacells[t]
            for p in range(start, stop):
                out[metacell, x_indices[p]] += x_data[p]


def metacell_sum_block(
    block, cell_indptr: np.ndarray, cell_metacells: np.ndarray, n_metacells: int, dtype=np.float32
) -> np.ndarray:
    """Sum a block of cell rows into metacells without densifying the block.

    Parameters
    ----------
    block
        Cells x features (scipy CSR, or dense) for the block's rows.
    cell_indptr, cell_metacells
        For the block's row ``r``, ``cell_metacells[cell_indptr[r]:cell_indptr[r+1]]`` are the
        metacells it belongs to (the CSR form of the transposed membership, sliced to the block).
    n_metacells
        Rows of the output.

    Returns
    -------
    numpy.ndarray
        ``(n_metacells, n_features)`` partial sums.
    """
    out = np.zeros((n_metacells, block.shape[1]), dtype=dtype)
    if cell_metacells.size == 0:
        return out
    if not sp.issparse(block):
        block = sp.csr_matrix(np.asarray(block))
    elif block.format != "csr":
        block = sp.csr_matrix(block)
    _accumulate_csr(
        cell_indptr.astype(np.int64), cell_metacells.astype(np.int64),
        block.indptr.astype(np.int64), block.indices.astype(np.int64), block.data, out,
    )
    return out


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
    return np.trunc(stats.rankdata(variances, method="average")) / variances.size


def column_variance(sums: np.ndarray, totals: np.ndarray, scale_to: float = 1e4, block: int = 8192) -> np.ndarray:
    """Sample variance (``ddof=1``, as R's ``rowVars``) of each normalised feature across metacells."""
    n_features = sums.shape[1]
    out = np.empty(n_features, dtype=np.float64)
    for start in range(0, n_features, block):
        stop = min(start + block, n_features)
        values = normalize_log2(sums[:, start:stop], totals, scale_to)
        out[start:stop] = values.var(axis=0, ddof=1) if values.shape[0] > 1 else np.nan
    return out


def standardize_columns(values: np.ndarray) -> np.ndarray:
    """Centre each column and scale it to unit norm; a constant column becomes NaN."""
    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean(axis=0, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=0, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, centred / np.where(norms > 0, norms, 1.0), np.nan)


def pair_correlation(
    atac_std: np.ndarray, rna_std: np.ndarray, peak_index: np.ndarray, gene_index: np.ndarray, block: int = 65536
) -> np.ndarray:
    """Pearson r of each (peak, gene) pair from column-standardised matrices (metacells x features)."""
    out = np.empty(peak_index.size, dtype=np.float64)
    for start in range(0, peak_index.size, block):
        stop = min(start + block, peak_index.size)
        out[start:stop] = np.einsum(
            "ij,ij->j", atac_std[:, peak_index[start:stop]], rna_std[:, gene_index[start:stop]]
        )
    return np.clip(out, -1.0, 1.0)


def t_and_pvalue(correlation: np.ndarray, n_metacells: int) -> tuple[np.ndarray, np.ndarray]:
    """ArchR's t statistic ``r / sqrt(max(1 - r^2, 1e-17) / (m - 2))`` and two-sided p value."""
    dof = n_metacells - 2
    with np.errstate(invalid="ignore"):
        t = correlation / np.sqrt(np.maximum(1.0 - correlation**2, 1e-17) / dof)
        pval = 2.0 * stats.t.sf(np.abs(t), dof)
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
