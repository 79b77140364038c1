"""The metacells of a links run: one membership, or one per group (cell type) and per sample,
stacked so that all groups are summed in ONE pass over the data.

A metacell is only a membership (a row of a metacells x cells 0/1 matrix), so every group's
metacells are rows of one :class:`~p2g_dask.tl.engine.metacells.MetacellStack`: K groups cost one
streaming pass per matrix, and each group is a unit of the correlate step (Benjamini-Hochberg and
variance quantiles within each group: a feature's variance across the group's metacells ranks
it among the group's features).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._logging import logger
from p2g_dask._variables import check_metacells, warn_small_data
from p2g_dask.io.inputs import get_obsm
from p2g_dask.tl.engine.metacells import MetacellStack, resolve_metacells
from p2g_dask.tl.engine.metacells import metacells as compute_metacells


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
        ArchR's metacell rules (see :func:`p2g_dask.tl.engine.metacells`).
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


def _strata(*labels: np.ndarray | None) -> np.ndarray:
    """Each cell's stratum (the combination of its labels) as an integer code."""
    given = [np.asarray(x) for x in labels if x is not None]
    if len(given) == 1:
        return pd.factorize(given[0], sort=True)[0]
    return pd.MultiIndex.from_arrays(given).factorize(sort=True)[0]


def link_metacells(plan: Any, params: Any, *, metacells: Any = None, n_metacells: int | dict | None = None,
                   tool: str = "peak_to_gene") -> MetacellStack:
    """The metacells a links run correlates over, as one stack (see the module docstring).

    Parameters
    ----------
    plan
        The run's :class:`~p2g_dask.tl.engine.plan.Plan` (its ATAC ``obs`` and ``obsm``).
    params
        The tool's parameters (``use_rep``, ``k_neighbors``, ``overlap_cutoff``, ``seed``, and
        ``groupby``, ``sample_key``, ``min_group_cells``, ``min_metacells`` when it has them).
    metacells
        A precomputed membership, or a dict group -> membership (grouped without ``groupby``).
    n_metacells
        Seeds in all, or a dict group -> seeds (default ``params.n_metacells``).
    tool
        Names the caller in warnings.

    Returns
    -------
    MetacellStack
        One unit (ungrouped), or one unit per group with its samples' rows and each cell's
        stratum (group, and sample) for the cell-level permutations.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> from p2g_dask.tl.engine.plan import peak_peak_plan
    >>> from p2g_dask.tl.links.params import CoAccessibilityParams
    >>> sim = p2g.datasets.simulate_multiome(n_cells=200, n_peaks=100, n_genes=10, n_linked_genes=1, seed=1)
    >>> stack = link_metacells(peak_peak_plan(sim.atac, max_distance=10_000), CoAccessibilityParams(
    ...     use_rep="X_latent", n_metacells=20, k_neighbors=10))
    >>> stack.grouped, stack.neighbours.shape[1]
    (False, 10)
    """
    groupby, sample_key = getattr(params, "groupby", None), getattr(params, "sample_key", None)
    if groupby is None and sample_key is None and not isinstance(metacells, dict):
        return MetacellStack.of(resolve_metacells(plan.atac, plan.extra_obsm, params, metacells, tool=tool))
    obs, n_cells = plan.atac.obs, plan.n_cells
    samples = _labels(obs, sample_key, "sample_key") if sample_key is not None else None
    if metacells is None:
        memberships = group_metacells(
            obs, get_obsm(plan.atac, params.use_rep, plan.extra_obsm), groupby=groupby, sample_key=sample_key,
            n_metacells=params.n_metacells if n_metacells is None else n_metacells, k_neighbors=params.k_neighbors,
            overlap_cutoff=params.overlap_cutoff, seed=params.seed, min_group_cells=params.min_group_cells,
            min_metacells=params.min_metacells,
        )
    else:
        memberships = {str(g): check_metacells(np.asarray(m), n_cells) for g, m in dict(metacells).items()}
    per_sample = {g: _sample_rows(m, samples) for g, m in memberships.items()} if samples is not None else None
    groups = _labels(obs, groupby, "groupby") if groupby is not None else None
    logger.info("%s by %s: %s", tool, groupby or "metacells", ", ".join(
        f"{g} ({m.shape[0]} metacells)" for g, m in memberships.items()))
    strata = _strata(groups, samples) if groups is not None or samples is not None else None
    return MetacellStack.of(memberships, samples=per_sample, strata=strata)
