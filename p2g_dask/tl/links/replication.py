"""Replication across samples (``replication=True`` with ``sample_key``): for each link, in how many
samples of its unit it holds.

Metacells are built within each sample (none mixes samples), so a sample's metacells are rows of
its unit; the correlate step runs once more over each sample's rows (same columns, same pass) and
per link gives ``n_samples`` (samples where r is defined, with more than 3 metacells),
``n_samples_sig`` (same sign as the unit's r and the sample's BH FDR < 0.05) and
``replication_pval`` (Stouffer's combination of the samples' Fisher z, ``atanh(r) * sqrt(m - 3)``,
weighted by ``sqrt(m - 3)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from p2g_dask.tl.engine.correlate import correlate
from p2g_dask.tl.engine.kernels import benjamini_hochberg


def replication_columns(correlation: np.ndarray, samples: list[tuple[np.ndarray, np.ndarray, int]]) -> dict:
    """``n_samples``, ``n_samples_sig``, ``replication_pval`` of links with r ``correlation``.

    Parameters
    ----------
    correlation
        The unit's r of each link.
    samples
        Per sample: its r of each link, its BH FDR of each link, its number of metacells.

    Returns
    -------
    dict
        The three columns (see the module docstring).

    Examples
    --------
    >>> r = np.array([0.5, -0.2])
    >>> out = replication_columns(r, [(np.array([0.6, 0.1]), np.array([0.01, 0.5]), 40)])
    >>> out["n_samples"].tolist(), out["n_samples_sig"].tolist()
    ([1, 1], [1, 0])
    """
    sign = np.sign(correlation)
    n = len(correlation)
    weighted, weight2 = np.zeros(n), np.zeros(n)
    n_samples, n_sig = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for r, fdr, m in samples:
        ok = np.isfinite(r) & (m > 3)
        n_samples += ok
        n_sig += ok & (np.sign(r) == sign) & (fdr < 0.05)
        # Fisher z scaled to N(0, 1): atanh(r) * sqrt(m - 3), weighted by sqrt(m - 3).
        w = np.sqrt(max(m - 3, 0))
        z = np.arctanh(np.clip(np.where(ok, r, 0.0), -1 + 1e-12, 1 - 1e-12)) * w
        weighted += np.where(ok, w * z, 0.0)
        weight2 += np.where(ok, w * w, 0.0)
    combined = np.divide(weighted, np.sqrt(weight2), out=np.full(n, np.nan), where=weight2 > 0)
    # 2 * scipy.stats.norm.sf(|z|), without importing scipy.stats.
    return {"n_samples": n_samples, "n_samples_sig": n_sig, "replication_pval": 2 * special.ndtr(-np.abs(combined))}


class Replication:
    """The replication layer (``replication=True``): per-sample correlations of each unit."""

    name = "replication"
    needs_rna_rows = False

    def graph(self, run: Any) -> list:
        """Per unit, per sample: the correlate results of the sample's rows and its metacells."""
        values = []
        for unit_samples in run.stack.samples:
            names = list(unit_samples)
            results = correlate(run.plan, run.sums, run.columns, [unit_samples[s] for s in names],
                                scale_to=run.params.scale_to)
            values.append([(results[i], int(unit_samples[s].size)) for i, s in enumerate(names)])
        return values

    def add(self, stats: pd.DataFrame, samples: list) -> pd.DataFrame:
        """``stats`` with the replication columns, from the unit's samples' correlations."""
        per_sample = []
        for results, m in samples:
            r = np.concatenate([res[0] for res in results]) if results else np.empty(0)
            pval = np.concatenate([res[2] for res in results]) if results else np.empty(0)
            per_sample.append((r, benjamini_hochberg(pval), m))
        for column, values in replication_columns(stats["correlation"].to_numpy(), per_sample).items():
            stats[column] = values
        return stats

    def record(self, values: list, groups: tuple) -> dict:
        """Nothing beyond the columns (the samples are in ``attrs['params']['sample_key']``)."""
        return {}
