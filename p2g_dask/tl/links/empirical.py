"""Null p-values of peak-to-gene links: ArchR's empirical null (``.getNullCorrelations``).

``peak_to_gene(..., empirical_pval=True)`` adds ``emp_pval`` and ``emp_fdr``. For each chromosome
with candidate pairs, up to 1000 peaks are drawn (seeded, without replacement) from the *other*
chromosomes and correlated with every gene of that chromosome that has candidate pairs (one
``p2g-nullcorrelation`` task per chromosome and unit, over the same metacell sums as the links).
The null r are pooled (NaN dropped) and ``emp_pval = 2 * Phi(-|(r - mean) / sd|)``; ``emp_fdr`` is
their BH. Each task returns only sums (n, sum, sum of squares) and its median, so memory does not
grow with the null's size; ``links.attrs["null"]`` keeps the per-chromosome mean, sd, median and
n and the pooled mean and sd (with ``groupby``: one such record per group, each group's null
from its own metacells, BH within the group).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from dask.base import tokenize
from dask.delayed import delayed
from scipy import special

from p2g_dask.tl.engine.columns import lane_columns
from p2g_dask.tl.engine.kernels import benjamini_hochberg, standardized_features

__all__ = ["EmpiricalNull", "empirical_pvalues", "null_peaks", "NULL_PEAKS"]

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


def _null_summary(atac_sums, atac_totals, rna_sums, rna_totals, rows, genes: np.ndarray, scale_to: float) -> dict:
    """All null r of one chromosome and unit (sampled peaks x its paired genes): n, sum, sum of
    squares, median. ``rna_sums`` are the chromosome's gene columns, ``genes`` the paired ones."""
    atac_t, _ = standardized_features(atac_sums[rows], np.asarray(atac_totals)[rows], scale_to)
    rna_t, _ = standardized_features(rna_sums[rows], np.asarray(rna_totals)[rows], scale_to, columns=genes)
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


def empirical_pvalues(correlation: np.ndarray, mean: float, sd: float) -> tuple[np.ndarray, np.ndarray]:
    """``emp_pval = 2 * Phi(-|(r - mean) / sd|)`` and its Benjamini-Hochberg ``emp_fdr`` (NaN stays NaN).

    Examples
    --------
    >>> p, fdr = empirical_pvalues(np.array([0.0, 0.196]), mean=0.0, sd=0.1)
    >>> p.round(3).tolist()
    [1.0, 0.05]
    """
    z = (np.asarray(correlation, dtype=np.float64) - mean) / sd
    pval = 2.0 * special.ndtr(-np.abs(z))  # scipy.stats.norm.sf, without importing scipy.stats
    return pval, benjamini_hochberg(pval)


class EmpiricalNull:
    """The empirical-null layer (``empirical_pval=True``): ``emp_pval``, ``emp_fdr`` per unit."""

    name = "empirical"
    needs_rna_rows = False

    def graph(self, run: Any) -> list:
        """Per unit, the lazy null record (``p2g-nullcorrelation`` tasks per chromosome)."""
        plan, sums = run.plan, run.sums
        peak_chrom = plan.peaks["chrom"].to_numpy(dtype=object)
        records = [[] for _ in run.stack.groups]
        chroms = []
        # ``index`` numbers the chromosomes in plan order, where the peaks' chromosomes come first
        # (as ArchR draws per chromosome of the peaks).
        for index, (chrom, gathered) in enumerate(zip(plan.chromosomes, run.columns)):
            genes = np.unique(chrom.pairs[1])
            sampled = null_peaks(peak_chrom, chrom.name, run.params.seed, index)
            if genes.size == 0 or sampled.size == 0:
                continue
            chrom_token = tokenize(run.token, chrom.name, run.params.seed)
            null_columns = lane_columns(sums.atac, sampled, f"p2g-nullcorrelation-columns-{chrom_token}")
            chroms.append(chrom.name)
            for unit, rows in enumerate(run.stack.unit_slices()):
                records[unit].append(delayed(_null_summary, pure=True)(
                    null_columns, sums.atac_totals, gathered.right, sums.rna_totals, rows, genes, run.params.scale_to,
                    dask_key_name=f"p2g-nullcorrelation-{tokenize(chrom_token, unit)}"))
        return [delayed(_null_record, pure=True)(summaries, chroms,
                                                 dask_key_name=f"p2g-nullcorrelation-record-{tokenize(run.token, u)}")
                for u, summaries in enumerate(records)]

    def add(self, stats: pd.DataFrame, record: dict) -> pd.DataFrame:
        """``stats`` with ``emp_pval`` and ``emp_fdr`` from the unit's pooled null."""
        stats["emp_pval"], stats["emp_fdr"] = empirical_pvalues(stats["correlation"].to_numpy(), record["mean"],
                                                                record["sd"])
        return stats

    def record(self, values: list, groups: tuple) -> dict:
        """``attrs['null']``: the record, or one per group."""
        return {"null": values[0] if groups == (None,) else dict(zip(groups, values))}
