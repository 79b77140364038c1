"""Tables of a links run, assembled on the client from the correlate step's numbers: per unit,
Benjamini-Hochberg over its pairs and the variance quantiles over its features; then names and
positions; and the one ``attrs`` record every run keeps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

import p2g_dask
from p2g_dask._tables import LINK_COLUMNS
from p2g_dask._variables import params_record
from p2g_dask.io.inputs import obs_names_hash
from p2g_dask.tl.engine.kernels import benjamini_hochberg, variance_quantiles


def unit_numbers(plan: Any, results: list[tuple]) -> pd.DataFrame:
    """One unit's pairs as numbers: ``peak_index, gene_index, distance, correlation, t, pval, fdr,
    var_q_atac, var_q_rna`` (a peak-gene plan).

    Parameters
    ----------
    plan
        The run's :class:`~p2g_dask.tl.engine.plan.Plan`.
    results
        The unit's ``(correlation, t, pval, left_var, right_var)`` per chromosome, in plan order.

    Returns
    -------
    pandas.DataFrame
        One row per pair, in plan order; BH over the unit's pairs (NaN p values not counted),
        ArchR's variance quantiles over all the run's peaks and annotated genes.
    """
    peak_index, gene_index = plan.pair_index()
    peak_var, gene_var = np.zeros(len(plan.peaks)), np.zeros(len(plan.genes))
    for chrom, (_, _, _, left_var, right_var) in zip(plan.chromosomes, results):
        peak_var[chrom.left] = left_var
        gene_var[chrom.right] = right_var
    pval = np.concatenate([r[2] for r in results]) if results else np.empty(0)
    stats = pd.DataFrame({
        "peak_index": peak_index, "gene_index": gene_index,
        "distance": plan.centres[peak_index] - plan.genes["tss"].to_numpy()[gene_index],
        "correlation": np.concatenate([r[0] for r in results]) if results else np.empty(0),
        "t": np.concatenate([r[1] for r in results]) if results else np.empty(0),
        "pval": pval,
    })
    stats["fdr"] = benjamini_hochberg(pval)
    stats["var_q_atac"] = variance_quantiles(peak_var)[peak_index]
    stats["var_q_rna"] = variance_quantiles(gene_var)[gene_index]
    return stats


def name_links(stats: pd.DataFrame, plan: Any, group: Any = None, groups: tuple = ()) -> pd.DataFrame:
    """The links table of :func:`unit_numbers`' output (plus layer columns): names and positions.

    With ``group`` (one of ``groups``) a categorical ``group`` column comes first.
    """
    p_idx = stats["peak_index"].to_numpy(dtype=np.int64)
    g_idx = stats["gene_index"].to_numpy(dtype=np.int64)
    peaks, genes = plan.peaks, plan.genes
    columns = {
        "peak": peaks.index.to_numpy(dtype=object)[p_idx],
        "gene": genes["gene_name"].to_numpy(dtype=object)[g_idx],
        "chrom": peaks["chrom"].to_numpy(dtype=object)[p_idx],
        "peak_start": peaks["start"].to_numpy()[p_idx],
        "peak_end": peaks["end"].to_numpy()[p_idx],
        "tss": genes["tss"].to_numpy()[g_idx],
        "distance": stats["distance"].to_numpy(dtype=np.int64),
    }
    if group is not None:
        # A categorical from codes: cheap to build and to concatenate over millions of rows.
        codes = np.full(len(stats), list(groups).index(group))
        columns = {"group": pd.Categorical.from_codes(codes, categories=list(groups)), **columns}
    links = pd.DataFrame(columns)
    extra = [c for c in stats.columns if c not in LINK_COLUMNS and c not in ("peak_index", "gene_index")]
    for column in [c for c in LINK_COLUMNS if c not in links.columns] + extra:
        links[column] = stats[column].to_numpy()
    return links


def run_record(params: Any, plan: Any, stack: Any, timings: dict | None = None, **extra: Any) -> dict:
    """The ``attrs`` of a run's table: parameters, metacells, cells, their hash, timings, version.

    Parameters
    ----------
    params
        The tool's parameters dataclass.
    plan, stack
        The run's plan and its :class:`~p2g_dask.tl.engine.metacells.MetacellStack` (one
        membership, or a dict group -> membership when grouped).
    timings
        Seconds per stage.
    **extra
        Entries the layers add (``null``, ``permutation``).

    Returns
    -------
    dict
        What ``table.attrs.update`` takes.
    """
    record = params_record(params)
    if stack.grouped:
        record["fdr_scope"] = "within group"
    out = {
        "params": record,
        "metacells": stack.record(),
        "n_cells": int(plan.n_cells),
        "obs_names_hash": obs_names_hash(plan.atac),
        "p2g_dask_version": p2g_dask.__version__,
        **extra,
    }
    if timings is not None:
        out["timings"] = timings
    return out
