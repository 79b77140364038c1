"""Per-chromosome statistics of candidate pairs: Pearson r, t, p value (ArchR's formulas).

Each chromosome is one task that receives only its own peak and gene columns of the metacell
sums, normalises them, finds its candidate pairs and correlates them. Benjamini-Hochberg runs
once over the p values of all chromosomes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from p2g_dask.tl._kernels import (
    benjamini_hochberg,
    normalize_log2,
    pair_correlation,
    standardize_columns,
    t_and_pvalue,
)
from p2g_dask.tl.pairs import pairs_within

__all__ = ["benjamini_hochberg", "correlate_pairs", "correlate_chromosome", "take_columns"]


def correlate_pairs(
    atac: np.ndarray, rna: np.ndarray, peak_index: np.ndarray, gene_index: np.ndarray
) -> pd.DataFrame:
    """Pearson r, t and two-sided p value of (peak, gene) pairs across metacells.

    Parameters
    ----------
    atac, rna
        Normalised metacells x peaks and metacells x genes (same metacells, same order).
    peak_index, gene_index
        Column positions of each pair.

    Returns
    -------
    pandas.DataFrame
        ``correlation, t, pval``; a constant feature gives NaN for all three.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[1.0], [2.0], [3.0], [4.0]]); r = np.array([[2.0], [4.0], [5.0], [9.0]])
    >>> correlate_pairs(a, r, np.array([0]), np.array([0]))["correlation"].round(4).tolist()
    [0.9562]
    """
    atac_std = standardize_columns(atac)
    rna_std = standardize_columns(rna)
    correlation = pair_correlation(atac_std, rna_std, np.asarray(peak_index), np.asarray(gene_index))
    t, pval = t_and_pvalue(correlation, atac.shape[0])
    return pd.DataFrame({"correlation": correlation, "t": t, "pval": pval})


def take_columns(sums: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The columns of one chromosome (a small copy that is cheap to move between workers)."""
    columns = np.asarray(columns)
    if columns.size and columns[-1] - columns[0] + 1 == columns.size and (np.diff(columns) == 1).all():
        # Peaks sorted by chromosome: a contiguous block copies far faster than a gather.
        return np.ascontiguousarray(sums[:, columns[0] : columns[-1] + 1])
    return np.ascontiguousarray(sums[:, columns])


def standardized_with_variance(
    sums: np.ndarray, totals: np.ndarray, scale_to: float = 1e4
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise metacell sums, then return unit-norm centred columns and each column's variance.

    The variance is the sample variance (``ddof=1``, R's ``rowVars``) of the normalised values;
    a constant column gives NaN in the standardised matrix and variance 0.
    """
    values = normalize_log2(sums, totals, scale_to)
    # Exact test for constant columns: centring a constant leaves round-off, not zeros.
    constant = (values == values[:1]).all(axis=0) if values.shape[0] else np.ones(values.shape[1], bool)
    values -= values.mean(axis=0, keepdims=True)
    values[:, constant] = 0.0
    sum_squares = np.einsum("ij,ij->j", values, values)
    norms = np.sqrt(sum_squares)
    with np.errstate(invalid="ignore", divide="ignore"):
        values /= np.where(norms > 0, norms, np.nan)
    variance = sum_squares / max(1, values.shape[0] - 1)
    return values, variance


def correlate_chromosome(
    atac_sums: np.ndarray,
    atac_totals: np.ndarray,
    rna_sums: np.ndarray,
    rna_totals: np.ndarray,
    peak_index: np.ndarray,
    peak_centre: np.ndarray,
    gene_index: np.ndarray,
    tss: np.ndarray,
    max_distance: int,
    scale_to: float = 1e4,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Candidate pairs and their statistics on one chromosome.

    ``atac_sums``/``rna_sums`` hold only this chromosome's columns, in the order of
    ``peak_index``/``gene_index`` (global positions, carried into the output). Returns the pair
    table and the variances of the chromosome's peaks and genes (for the variance quantiles).
    """
    atac_std, atac_var = standardized_with_variance(atac_sums, atac_totals, scale_to)
    rna_std, rna_var = standardized_with_variance(rna_sums, rna_totals, scale_to)
    local_peak, local_gene = pairs_within(peak_centre, tss, max_distance)
    correlation = pair_correlation(atac_std, rna_std, local_peak, local_gene)
    t, pval = t_and_pvalue(correlation, atac_sums.shape[0])
    stats = pd.DataFrame(
        {
            "peak_index": np.asarray(peak_index, dtype=np.int64)[local_peak],
            "gene_index": np.asarray(gene_index, dtype=np.int64)[local_gene],
            "distance": np.asarray(peak_centre)[local_peak] - np.asarray(tss)[local_gene],
            "correlation": correlation, "t": t, "pval": pval,
        }
    )
    return stats, atac_var, rna_var
