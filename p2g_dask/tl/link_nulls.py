"""Null p-values of peak-to-gene links: ArchR's empirical null (``.getNullCorrelations``).

``peak_to_gene(..., empirical_pval=True)`` adds ``emp_pval`` and ``emp_fdr``. For each chromosome
with candidate pairs, up to 1000 peaks are drawn (seeded, without replacement) from the *other*
chromosomes and correlated with every gene of that chromosome that has candidate pairs (one
``p2g-nullcorrelation`` task per chromosome, over the same metacell sums as the links). The null r
are pooled (NaN dropped) and ``emp_pval = 2 * Phi(-|(r - mean) / sd|)``; ``emp_fdr`` is their BH.
Each task returns only sums (n, sum, sum of squares) and its median, so memory does not grow
with the null's size; ``links.attrs["null"]`` keeps the per-chromosome mean, sd, median and n and
the pooled mean and sd.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pandas as pd
from dask.delayed import delayed
from scipy import stats

from p2g_dask.tl._kernels import benjamini_hochberg, standardized_features
from p2g_dask.tl.aggregate import lane_columns
from p2g_dask.tl.pairs import pairs_within

__all__ = ["empirical_null", "empirical_pvalues", "null_peaks", "NULL_PEAKS"]

#: Peaks drawn from the other chromosomes per chromosome (ArchR's n = 1000).
NULL_PEAKS = 1000


def null_peaks(peak_chrom: np.ndarray, chrom: Any, seed: int, index: int, n: int | None = None) -> np.ndarray:
    """Up to ``n`` peaks not on ``chrom``, drawn without replacement (seeded by ``seed`` and ``index``), sorted.

    Examples
    --------
    >>> null_peaks(np.array(["chr1", "chr2", "chr2", "chr3"]), "chr2", seed=1, index=0).tolist()
    [0, 3]
    """
    n = NULL_PEAKS if n is None else int(n)
    other = np.flatnonzero(np.asarray(peak_chrom) != chrom)
    if other.size <= n:
        return other
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    return np.sort(rng.choice(other, size=n, replace=False))


def _null_summary(atac_sums, atac_totals, rna_sums, rna_totals, scale_to: float) -> dict:
    """All null r of one chromosome (sampled peaks x its genes), summarised: n, sum, sum of squares, median."""
    atac_t, _ = standardized_features(atac_sums, atac_totals, scale_to)
    rna_t, _ = standardized_features(rna_sums, rna_totals, scale_to)
    # Standardised rows: r is a dot product, NaN for a constant feature (dropped, as na.omit).
    r = np.clip(atac_t @ rna_t.T, -1.0, 1.0).ravel()
    r = r[np.isfinite(r)]
    return {"n": int(r.size), "sum": float(r.sum()), "sum_squares": float(np.dot(r, r)),
            "median": float(np.median(r)) if r.size else np.nan}


def _null_record(summaries: list[dict], chroms: list[str]) -> dict:
    rows = []
    for chrom, s in zip(chroms, summaries):
        n = s["n"]
        mean = s["sum"] / n if n else np.nan
        sd = np.sqrt(max(s["sum_squares"] - n * mean**2, 0.0) / (n - 1)) if n > 1 else np.nan
        rows.append({"chrom": str(chrom), "mean": float(mean), "sd": float(sd), "median": float(s["median"]),
                     "n": int(n)})
    n = sum(s["n"] for s in summaries)
    total, squares = sum(s["sum"] for s in summaries), sum(s["sum_squares"] for s in summaries)
    mean = total / n if n else np.nan
    sd = float(np.sqrt(max(squares - n * mean**2, 0.0) / (n - 1))) if n > 1 else np.nan
    return {"kind": "empirical", "n_peaks": NULL_PEAKS, "per_chromosome": rows, "mean": float(mean), "sd": sd,
            "n": int(n)}


def empirical_null(atac_blocks, atac_totals, rna_blocks, rna_totals, *, peak_chrom: np.ndarray,
                   centres: np.ndarray, gene_chrom: np.ndarray, tss: np.ndarray, rna_columns: np.ndarray,
                   max_distance: int, scale_to: float, seed: int, token: str):
    """Lazy record of ArchR's empirical null over the metacell sums of a ``peak_to_gene`` run.

    Parameters
    ----------
    atac_blocks, atac_totals, rna_blocks, rna_totals
        The metacell sums of the run (column blocks and totals, from ``tl.aggregate``).
    peak_chrom, centres
        Chromosome and centre of every peak.
    gene_chrom, tss, rna_columns
        Chromosome, TSS and RNA column position of every annotated gene.
    max_distance, scale_to, seed
        The run's parameters (candidate pairs, normalisation, the seed of the peak draws).
    token
        The run's token (task keys ``p2g-nullcorrelation-*``).

    Returns
    -------
    dask.delayed.Delayed
        A dict: ``per_chromosome`` (chrom, mean, sd, median, n), pooled ``mean``, ``sd``, ``n``.
    """
    summaries, chroms = [], []
    for index, chrom in enumerate(pd.unique(peak_chrom)):
        g_idx = np.flatnonzero(gene_chrom == chrom)
        p_idx = np.flatnonzero(peak_chrom == chrom)
        _, local_gene = pairs_within(centres[p_idx], tss[g_idx], max_distance)
        genes = np.unique(g_idx[local_gene])
        sampled = null_peaks(peak_chrom, chrom, seed, index)
        if genes.size == 0 or sampled.size == 0:
            continue
        chrom_token = dask.base.tokenize(token, chrom, seed)
        atac_cols = lane_columns(atac_blocks, sampled,
                                 f"p2g-nullcorrelation-columns-{dask.base.tokenize(chrom_token, 1)}")
        rna_cols = lane_columns(rna_blocks, rna_columns[genes],
                                f"p2g-nullcorrelation-columns-{dask.base.tokenize(chrom_token, 2)}")
        summaries.append(delayed(_null_summary, pure=True)(atac_cols, atac_totals, rna_cols, rna_totals, scale_to,
                                                           dask_key_name=f"p2g-nullcorrelation-{chrom_token}"))
        chroms.append(chrom)
    return delayed(_null_record, pure=True)(summaries, chroms, dask_key_name=f"p2g-nullcorrelation-record-{token}")


def empirical_pvalues(correlation: np.ndarray, mean: float, sd: float) -> tuple[np.ndarray, np.ndarray]:
    """``emp_pval = 2 * Phi(-|(r - mean) / sd|)`` and its Benjamini-Hochberg ``emp_fdr`` (NaN stays NaN).

    Examples
    --------
    >>> p, fdr = empirical_pvalues(np.array([0.0, 0.196]), mean=0.0, sd=0.1)
    >>> p.round(3).tolist()
    [1.0, 0.05]
    """
    z = (np.asarray(correlation, dtype=np.float64) - mean) / sd
    pval = 2.0 * stats.norm.sf(np.abs(z))
    return pval, benjamini_hochberg(pval)


def add_empirical(links: pd.DataFrame, record: dict) -> pd.DataFrame:
    """``links`` with ``emp_pval``, ``emp_fdr`` from the pooled null, and ``attrs['null']``."""
    links = links.copy()
    links["emp_pval"], links["emp_fdr"] = empirical_pvalues(links["correlation"].to_numpy(), record["mean"],
                                                            record["sd"])
    links.attrs["null"] = record
    return links
