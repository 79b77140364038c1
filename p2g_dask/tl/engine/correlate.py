"""The correlate step: Pearson r, t and p value of a plan's pairs, per chromosome and per set of
metacell rows (a unit, or a sample within it), over the plan's sums (ArchR's formulas).

Each chromosome's columns of the sums are gathered once (``p2g-columns``: only those columns
move between workers); each (rows, chromosome) is one ``p2g-correlate`` task that normalises its
columns, correlates its pairs and returns numbers only. Benjamini-Hochberg and the variance
quantiles are taken over whole units afterwards (:mod:`p2g_dask.tl.links.tables`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
from dask.base import tokenize
from dask.delayed import Delayed, delayed

from p2g_dask._checkpoint import as_checkpoint, checkpointed
from p2g_dask.tl.engine.columns import lane_columns
from p2g_dask.tl.engine.kernels import (
    benjamini_hochberg,
    pair_correlation,
    pair_correlation_t,
    standardize_columns,
    standardized_features,
    t_and_pvalue,
)

__all__ = ["benjamini_hochberg", "correlate_pairs", "correlate_rows", "chromosome_columns", "correlate"]


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


def correlate_rows(left_sums: np.ndarray, left_totals: np.ndarray, right_sums: np.ndarray | None,
                   right_totals: np.ndarray | None, rows: Any, pairs: tuple[np.ndarray, np.ndarray],
                   scale_to: float = 1e4) -> tuple[np.ndarray, ...]:
    """One chromosome's pairs over some metacell rows: r, t, p and the features' variances.

    Parameters
    ----------
    left_sums, left_totals
        The chromosome's left columns of the sums (metacells x features) and every metacell's
        total over all features of the matrix.
    right_sums, right_totals
        The same for the right side; None for peak-peak pairs (the right side is the left).
    rows
        The metacell rows to use (a slice, positions, or None for all).
    pairs
        Local positions of each pair into the left and right columns.
    scale_to
        Each metacell is scaled to this total before ``log2(x + 1)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``correlation, t, pval`` (one per pair; NaN for a constant feature) and the left and
        right features' sample variances.

    Examples
    --------
    >>> sums, totals = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 5.0], [4.0, 9.0]]), np.full(4, 100.0)
    >>> r, t, p, _, _ = correlate_rows(sums, totals, None, None, None, (np.array([0]), np.array([1])))
    >>> x = np.log2(sums / 100 * 1e4 + 1)  # ArchR's normalisation, then numpy's Pearson r
    >>> bool(np.isclose(r[0], np.corrcoef(x.T)[0, 1]))
    True
    """
    if rows is not None:
        left_sums, left_totals = left_sums[rows], np.asarray(left_totals)[rows]
        if right_sums is not None:
            right_sums, right_totals = right_sums[rows], np.asarray(right_totals)[rows]
    # One fused pass per matrix (normalise, centre, scale), read from the sums as they are (a
    # column view of a block needs no copy) and written feature-major for the dot products.
    left_t, left_var = standardized_features(left_sums, left_totals, scale_to)
    if right_sums is None:
        right_t, right_var = left_t, left_var
    else:
        right_t, right_var = standardized_features(right_sums, right_totals, scale_to)
    correlation = pair_correlation_t(left_t, right_t, pairs[0], pairs[1])
    t, pval = t_and_pvalue(correlation, left_sums.shape[0])
    return correlation, t, pval, left_var, right_var


@dataclasses.dataclass(frozen=True, eq=False)
class ChromosomeColumns:
    """A chromosome's columns of the sums (left and right; right is None for peak-peak) and its pairs."""

    left: Delayed
    right: Delayed | None
    pairs: Delayed
    token: str


def chromosome_columns(plan: Any, sums: Any, token: str) -> list[ChromosomeColumns]:
    """One gather of each chromosome's columns of the sums (``p2g-columns``), in plan order.

    Parameters
    ----------
    plan, sums
        A :class:`~p2g_dask.tl.engine.plan.Plan` and its :class:`~p2g_dask.tl.engine.sums.PlanSums`.
    token
        The run's token (task keys).

    Returns
    -------
    list of ChromosomeColumns
        Shared by every correlation of the chromosome and by the layers that need its columns.
    """
    gathered = []
    for chrom in plan.chromosomes:
        chrom_token = tokenize(token, chrom.name)
        left = lane_columns(sums.atac, chrom.left, f"p2g-columns-{tokenize(chrom_token, 'left')}")
        right = None
        if not plan.peak_peak:
            right = lane_columns(sums.rna, sums.rna_columns[chrom.right], f"p2g-columns-{tokenize(chrom_token, 'right')}")
        # One graph value per chromosome: its pairs travel once, whatever the number of units.
        pairs = delayed(tuple(p.astype(np.int64) for p in chrom.pairs), name=f"p2g-pairs-{chrom_token}")
        gathered.append(ChromosomeColumns(left, right, pairs, chrom_token))
    return gathered


def correlate(plan: Any, sums: Any, columns: list[ChromosomeColumns], row_sets: list, *, scale_to: float,
              checkpoint: Any = None, key: Any = None) -> list[list[Delayed]]:
    """Lazy :func:`correlate_rows` of every chromosome for every set of metacell rows.

    Parameters
    ----------
    plan, sums, columns
        The plan, its sums and their :func:`chromosome_columns`.
    row_sets
        Metacell rows per set (a slice, positions, or None for all): the units of a stack, or
        the samples within them.
    scale_to
        Normalisation total.
    checkpoint, key
        A checkpoint and the run's part of its keys (sums and parameters): each task's numbers
        are saved and loaded by a rerun.

    Returns
    -------
    list of list of Delayed
        ``[set][chromosome]`` -> ``(correlation, t, pval, left_var, right_var)``.
    """
    ckpt = as_checkpoint(checkpoint)
    right_totals = None if plan.peak_peak else sums.rna_totals
    results = []
    for number, rows in enumerate(row_sets):
        per_chromosome = []
        for chrom, gathered in zip(plan.chromosomes, columns):
            task = delayed(correlate_rows, pure=True, nout=5)(
                gathered.left, sums.atac_totals, gathered.right, right_totals, rows, gathered.pairs, scale_to,
                dask_key_name=f"p2g-correlate-{tokenize(gathered.token, number, rows)}")
            if ckpt is not None:
                task = checkpointed(task, ckpt, ckpt.key(key, "correlate", chrom.name, chrom.left, chrom.right,
                                                         plan.right_positions[chrom.right], chrom.pairs,
                                                         _rows_key(rows)), "tree", nout=5)
            per_chromosome.append(task)
        results.append(per_chromosome)
    return results


def _rows_key(rows: Any) -> Any:
    """Metacell rows as a checkpoint key part (a slice becomes its bounds)."""
    if isinstance(rows, slice):
        return ("slice", rows.start, rows.stop, rows.step)
    return rows
