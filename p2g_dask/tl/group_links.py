"""Peak-to-gene links per group (cell type) and per sample, all groups in ONE pass over the data.

A metacell is only a membership (a row of a metacells x cells 0/1 matrix), so every group's
metacells are stacked (``scipy.sparse.vstack``) and summed by one call of
:func:`p2g_dask.tl.aggregate.membership_sums` per modality: K groups cost one streaming pass.
Each (group, chromosome) is then one ``p2g-correlate`` task over that group's rows of the sums.

Statistics per group: Benjamini-Hochberg within each group, variance quantiles within each group
(a feature's variance across the group's metacells ranks it among the group's features).
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.delayed import delayed
from scipy import stats

import p2g_dask
from p2g_dask import _graph
from p2g_dask._inputs import get_obsm, obs_names_hash
from p2g_dask._logging import logger
from p2g_dask._variables import check_metacells, params_record, warn_small_data
from p2g_dask.tl.aggregate import membership_sums, nonzero_shares
from p2g_dask.tl.correlate import correlate_chromosome
from p2g_dask.tl.metacells import MetacellMembership, metacell_membership
from p2g_dask.tl.metacells import metacells as compute_metacells


def _labels(obs: pd.DataFrame, key: str, argument: str) -> np.ndarray:
    if key not in obs.columns:
        raise ValueError(f"{argument}={key!r} is not an obs column; choose one of {list(obs.columns)[:10]}.")
    labels = obs[key]
    if labels.isna().any():
        raise ValueError(f"{argument}={key!r} has {int(labels.isna().sum())} missing labels; fill or drop those cells.")
    return labels.astype(str).to_numpy()


def group_metacells(
    obs: pd.DataFrame,
    embedding: np.ndarray,
    *,
    groupby: str | None,
    sample_key: str | None = None,
    n_metacells: int | dict = 500,
    k_neighbors: int = 100,
    overlap_cutoff: float = 0.8,
    seed: int = 1,
    min_group_cells: int | None = None,
    min_metacells: int = 30,
) -> dict[str, np.ndarray]:
    """ArchR's metacells built inside each group (and inside each sample of it), as global cell positions.

    A group gets ``round(n_metacells * group_cells / all_cells)`` seeds (at least
    ``min_metacells``), or ``n_metacells[group]`` when a dict. With ``sample_key`` the group's
    seeds are shared among its samples by their cell counts and each sample's metacells are built
    from that sample's cells only (so no metacell mixes samples); a sample with fewer than
    ``k_neighbors`` cells in the group is left out. Stratum ``i`` (groups, then samples, sorted)
    uses seed ``seed + i``. Groups with fewer than ``min_group_cells`` cells (default
    ``k_neighbors``) or fewer than ``min_metacells`` kept metacells are skipped with a warning.

    Parameters
    ----------
    obs
        Cell annotations with the ``groupby`` (and ``sample_key``) columns, in embedding order.
    embedding
        Cells x dimensions (the kNN space).
    groupby, sample_key
        obs columns of the groups and of the samples; ``groupby=None`` makes all cells one group
        named ``"all"`` (metacells within each sample only).
    n_metacells, k_neighbors, overlap_cutoff, seed
        ArchR's metacell rules (see :func:`p2g_dask.tl.metacells`).
    min_group_cells, min_metacells
        Smallest group kept (cells) and smallest number of kept metacells.

    Returns
    -------
    dict
        group -> ``(n_metacells_g, k_neighbors)`` int64 positions of cells in ``obs``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"type": ["a"] * 200 + ["b"] * 100})
    >>> emb = np.random.default_rng(0).normal(size=(300, 3))
    >>> found = group_metacells(obs, emb, groupby="type", n_metacells=60, k_neighbors=10, min_metacells=5)
    >>> sorted(found), bool(np.isin(found["b"], np.arange(200, 300)).all())
    (['a', 'b'], True)
    """
    groups = _labels(obs, groupby, "groupby") if groupby is not None else np.full(len(obs), "all")
    samples = _labels(obs, sample_key, "sample_key") if sample_key is not None else np.full(len(obs), "")
    min_cells = k_neighbors if min_group_cells is None else int(min_group_cells)
    if isinstance(n_metacells, dict):
        unknown = set(map(str, n_metacells)) - set(groups)
        if unknown:
            raise ValueError(f"n_metacells names groups {sorted(unknown)} that are not in obs[{groupby!r}].")
    found, skipped, stratum = {}, [], 0
    for group in sorted(set(groups)):
        in_group = groups == group
        n_group = int(in_group.sum())
        if isinstance(n_metacells, dict):
            wanted = int(n_metacells.get(group, n_metacells.get(type(group)(group), 0)))
        else:
            wanted = max(int(min_metacells), int(round(n_metacells * n_group / len(groups))))
        parts = []
        # Within a group, the small-data rule applies to the group's cells and its metacells.
        warn_small_data(n_group, wanted, k_neighbors, tool=f"peak_to_gene(groupby=...) group {group!r}")
        for sample in sorted(set(samples[in_group])):
            cells = np.flatnonzero(in_group & (samples == sample))
            stratum += 1
            if cells.size < max(min_cells if sample_key is None else 0, k_neighbors) or wanted < 1:
                continue
            n_seeds = max(1, int(round(wanted * cells.size / n_group)))
            local = compute_metacells(np.asarray(embedding)[cells], n_metacells=n_seeds, k_neighbors=k_neighbors,
                                      overlap_cutoff=overlap_cutoff, seed=seed + stratum - 1)
            parts.append(cells[local])
        kept = np.concatenate(parts) if parts else np.empty((0, k_neighbors), dtype=np.int64)
        if n_group < min_cells or kept.shape[0] < max(3, int(min_metacells)):
            skipped.append(f"{group} ({n_group} cells, {kept.shape[0]} metacells)")
            continue
        found[group] = kept.astype(np.int64)
    if skipped:
        logger.warning("groups skipped (fewer than %d cells or %d metacells): %s", min_cells, min_metacells,
                       ", ".join(skipped))
    if not found:
        raise ValueError(f"no group of {groupby!r} forms min_metacells={min_metacells} metacells; skipped: "
                         f"{', '.join(skipped)}. Lower min_metacells or k_neighbors.")
    return found


def _sample_rows(neighbours: np.ndarray, samples: np.ndarray) -> dict[str, np.ndarray]:
    """The metacell rows of each sample; raises when a metacell mixes samples."""
    labels = samples[neighbours]
    mixed = np.flatnonzero((labels != labels[:, :1]).any(axis=1))
    if mixed.size:
        raise ValueError(f"metacell {int(mixed[0])} mixes samples {sorted(set(labels[mixed[0]]))}; with sample_key "
                         "every metacell must hold cells of one sample.")
    return {s: np.flatnonzero(labels[:, 0] == s) for s in sorted(set(labels[:, 0]))}


def _correlate_rows(atac_cols, atac_totals, rna_cols, rna_totals, rows, *args):
    """``correlate_chromosome`` over one group's (or sample's) metacell rows of the stacked sums."""
    return correlate_chromosome(atac_cols[rows], atac_totals[rows], rna_cols[rows], rna_totals[rows], *args)


def _replication(table: pd.DataFrame, sample_tables: list[pd.DataFrame], sample_sizes: list[int]) -> pd.DataFrame:
    """Per link: samples where r is computed, same-sign significant samples, Stouffer p over samples."""
    sign = np.sign(table["correlation"].to_numpy())
    weighted, weight2 = np.zeros(len(table)), np.zeros(len(table))
    n_samples, n_sig = np.zeros(len(table), np.int64), np.zeros(len(table), np.int64)
    for sample_table, m in zip(sample_tables, sample_sizes):
        r = sample_table["correlation"].to_numpy()
        ok = np.isfinite(r) & (m > 3)
        n_samples += ok
        n_sig += ok & (np.sign(r) == sign) & (sample_table["fdr"].to_numpy() < 0.05)
        # Fisher z scaled to N(0, 1): atanh(r) * sqrt(m - 3), weighted by sqrt(m - 3).
        w = np.sqrt(max(m - 3, 0))
        z = np.arctanh(np.clip(np.where(ok, r, 0.0), -1 + 1e-12, 1 - 1e-12)) * w
        weighted += np.where(ok, w * z, 0.0)
        weight2 += np.where(ok, w * w, 0.0)
    combined = np.divide(weighted, np.sqrt(weight2), out=np.full(len(table), np.nan), where=weight2 > 0)
    table = table.copy()
    table["n_samples"] = n_samples
    table["n_samples_sig"] = n_sig
    table["replication_pval"] = 2 * stats.norm.sf(np.abs(combined))
    return table


def _group_table(assemble, names, group, results, sample_results, sample_sizes, chrom_peaks, chrom_genes, peaks,
                 genes):
    table = assemble(results, chrom_peaks, chrom_genes, peaks, genes)
    if sample_results is not None:
        tables = [assemble(r, chrom_peaks, chrom_genes, peaks, genes) for r in sample_results]
        table = _replication(table, tables, sample_sizes)
    # A categorical from codes: cheap to build and to concatenate over millions of rows.
    table.insert(0, "group", pd.Categorical.from_codes(np.full(len(table), names.index(group)), categories=names))
    return table


def _concat(*tables):
    return pd.concat(tables, ignore_index=True)


def grouped_peak_to_gene(
    atac_mod, rna_mod, extra_obsm, peaks, genes, rna_columns, centres, params, *,
    groupby: str | None, sample_key: str | None, metacells: dict | None, n_metacells, min_group_cells,
    min_metacells: int, replication: bool, chunk_cells, split_every: int, client: Any, show_progress: bool,
    columns, assemble, checkpoint: Any = None,
) -> pd.DataFrame:
    """The grouped branch of :func:`p2g_dask.tl.peak_to_gene` (called from there; see its docs).

    ``columns`` and ``assemble`` are peak_to_gene's per-chromosome column tasks and table assembly
    (passed in so the two paths share them). Returns the links with a ``group`` column first.
    """
    if checkpoint is not None:
        raise ValueError("checkpoint= is not supported with groupby=/sample_key= yet; run without checkpoint=.")
    n_cells = atac_mod.n_obs
    samples = _labels(atac_mod.obs, sample_key, "sample_key") if sample_key is not None else None
    if replication and sample_key is None:
        raise ValueError("replication=True needs sample_key= (the obs column naming each cell's sample).")
    if metacells is None:
        if groupby is None and sample_key is None:
            raise ValueError("groupby= or metacells= (a dict group -> membership) is needed for grouped links.")
        memberships = group_metacells(
            atac_mod.obs, get_obsm(atac_mod, params.use_rep, extra_obsm), groupby=groupby, sample_key=sample_key,
            n_metacells=n_metacells, k_neighbors=params.k_neighbors, overlap_cutoff=params.overlap_cutoff,
            seed=params.seed, min_group_cells=min_group_cells, min_metacells=min_metacells,
        )
    else:
        memberships = {str(g): check_metacells(np.asarray(m), n_cells) for g, m in metacells.items()}
    names = list(memberships)
    stacked = sp.vstack([metacell_membership(memberships[g], n_cells) for g in names], format="csr")
    offsets = np.cumsum([0] + [memberships[g].shape[0] for g in names])
    per_sample = {g: _sample_rows(memberships[g], samples) for g in names} if samples is not None else {}
    logger.info("peak_to_gene by %s: %s", groupby or "metacells", ", ".join(
        f"{g} ({memberships[g].shape[0]} metacells)" for g in names))

    client = _graph.current_client(client)
    token_of = dask.base.tokenize(stacked.indptr, stacked.indices, stacked.shape)
    atac_share, rna_share = nonzero_shares(atac_mod, rna_mod)  # the workers' lanes, by nonzeros
    atac_blocks, atac_totals = membership_sums(atac_mod, stacked, chunk_cells=chunk_cells, split_every=split_every,
                                               client=client, token=token_of, lane_share=atac_share)
    rna_blocks, rna_totals = membership_sums(rna_mod, stacked, chunk_cells=chunk_cells, split_every=split_every,
                                             client=client, token=token_of, lane_share=rna_share)
    token = dask.base.tokenize(atac_totals.key, rna_totals.key, params_record(params), names)
    peak_chrom = peaks["chrom"].to_numpy(dtype=object)
    gene_chrom = genes["chrom"].to_numpy(dtype=object)
    tss_all = genes["tss"].to_numpy()
    results = {g: [] for g in names}
    sample_results = {g: {s: [] for s in per_sample[g]} for g in per_sample} if replication else {}
    chrom_peaks, chrom_genes = [], []
    for chrom in pd.unique(np.concatenate([peak_chrom, gene_chrom])):
        p_idx, g_idx, chrom_token, atac_cols, rna_cols = columns(
            chrom, token, peak_chrom, gene_chrom, atac_blocks, rna_blocks, rna_columns)
        args = (p_idx, centres[p_idx], g_idx, tss_all[g_idx], params.max_distance, params.scale_to)
        units = [(g, None, np.arange(offsets[i], offsets[i + 1])) for i, g in enumerate(names)]
        units += [(g, s, offsets[names.index(g)] + rows) for g in sample_results for s, rows in per_sample[g].items()]
        for group, sample, rows in units:
            task = delayed(_correlate_rows, pure=True, nout=3)(
                atac_cols, atac_totals, rna_cols, rna_totals, rows, *args,
                dask_key_name=f"p2g-correlate-{dask.base.tokenize(chrom_token, group, sample)}",
            )
            (results[group] if sample is None else sample_results[group][sample]).append(task)
        chrom_peaks.append(p_idx)
        chrom_genes.append(g_idx)
    tables = [
        delayed(_group_table, pure=True)(
            assemble, names, g, results[g], list(sample_results[g].values()) if g in sample_results else None,
            [int(per_sample[g][s].size) for s in sample_results.get(g, {})], chrom_peaks, chrom_genes, peaks, genes,
            dask_key_name=f"p2g-links-{dask.base.tokenize(token, g)}",
        )
        for g in names
    ]
    links = _graph.compute(delayed(_concat, pure=True)(*tables, dask_key_name=f"p2g-links-{token}"),
                           client, show_progress)
    n_sig = links.loc[links["fdr"].to_numpy() < 0.05, "group"].value_counts()
    logger.info("peak_to_gene by group: pairs with FDR < 0.05: %s", n_sig.to_dict())
    links.attrs.update({
        "params": {**params_record(params), "groupby": groupby, "sample_key": sample_key,
                   "min_metacells": int(min_metacells), "replication": bool(replication),
                   "fdr_scope": "within group"},
        "metacells": {g: MetacellMembership(memberships[g]) for g in names},
        "n_cells": int(n_cells),
        "obs_names_hash": obs_names_hash(atac_mod.obs.index),
        "p2g_dask_version": p2g_dask.__version__,
    })
    return links
