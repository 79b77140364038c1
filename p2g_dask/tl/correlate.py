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
    pair_correlation,
    pair_correlation_t,
    standardize_columns,
    standardized_features,
    t_and_pvalue,
)
from p2g_dask.tl.pairs import pairs_within

__all__ = ["benjamini_hochberg", "correlate_pairs", "correlate_chromosome"]


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
    [0.9648]
    """
    atac_std, _ = standardize_columns(atac)
    rna_std, _ = standardize_columns(rna)
    correlation = pair_correlation(atac_std, rna_std, np.asarray(peak_index), np.asarray(gene_index))
    t, pval = t_and_pvalue(correlation, atac.shape[0])
    return pd.DataFrame({"correlation": correlation, "t": t, "pval": pval})


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
    # One fused pass per matrix (normalise, centre, scale), read from the sums as they are
    # (a column view of a block needs no copy) and written feature-major for the dot products.
    atac_std_t, atac_var = standardized_features(atac_sums, atac_totals, scale_to)
    rna_std_t, rna_var = standardized_features(rna_sums, rna_totals, scale_to)
    local_peak, local_gene = pairs_within(peak_centre, tss, max_distance)
    correlation = pair_correlation_t(atac_std_t, rna_std_t, local_peak, local_gene)
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
