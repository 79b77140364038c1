"""``co_accessibility``: ArchR's addCoAccessibility (peak-peak correlation over kNN metacells).

It reuses the peak-to-gene engine: the same metacells (same seed and membership), ONE streaming
pass over the ATAC matrix (:func:`p2g_dask.tl.aggregate.metacell_sums`), one task per chromosome
that normalises only its own peak columns (``tl/_kernels``) and correlates its peak pairs.
Each unordered pair is correlated once and emitted in both orders, as ArchR returns them.

Graph (task key prefixes)::

    p2g-metacell-sum       the ATAC metacell sums (one pass over the cell rows)
    p2g-coaccessibility-columns   one chromosome's peak columns
    p2g-coaccessibility-pairs     one task per chromosome: pairs, r, t, p, peak variances
    p2g-coaccessibility-table     drop undefined r, BH over all rows, variance quantiles over the rows

(Not ``p2g-coaccess-*``: dask's ``key_split`` takes an 8-letter word starting with a-f for a hex
token, so the dashboard would show all of them as ``p2g``.)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import dask
import numpy as np
import pandas as pd
from dask.delayed import delayed

import p2g_dask
from p2g_dask import _graph
from p2g_dask._checkpoint import as_checkpoint, checkpointed, checkpointed_sums, modality_token
from p2g_dask._inputs import obs_names_hash, resolve_input
from p2g_dask._logging import logger, timed
from p2g_dask._memory import release_freed_memory
from p2g_dask._variables import (
    COACCESSIBILITY,
    check_max_distance,
    check_metacell_params,
    check_params,
    params_record,
    params_token,
    require_columns,
)
from p2g_dask.io.peaks import peak_table
from p2g_dask.tl._kernels import (
    benjamini_hochberg,
    normalize_log2,
    pair_correlation,
    standardize_columns,
    t_and_pvalue,
    variance_quantiles,
)
from p2g_dask.tl.aggregate import lane_columns, metacell_sums
from p2g_dask.tl.metacells import MetacellMembership
from p2g_dask.tl.metacells import resolve_metacells
from p2g_dask.tl.pairs import peak_centres

__all__ = ["CoAccessibilityParams", "co_accessibility", "coaccessibility_loops", "peak_pairs_within"]

_AFTER_SUMS = {"not_in": ("sums",)}
LOOP_COLUMNS = ["chrom", "start", "end", "peak1", "peak2", "correlation", "t", "pval", "fdr", "var_q1", "var_q2"]


@dataclasses.dataclass(frozen=True)
class CoAccessibilityParams:
    """Every parameter of :func:`co_accessibility` that shapes its result (validated, recorded, hashed).

    Examples
    --------
    >>> CoAccessibilityParams(max_distance=0)
    Traceback (most recent call last):
    ...
    ValueError: max_distance=0 must be a positive number of bp (ArchR: 250000).
    """

    use_rep: str = "X_iterative_lsi"
    n_metacells: int = 500
    k_neighbors: int = 100
    max_distance: int = dataclasses.field(default=100_000, metadata=_AFTER_SUMS)
    overlap_cutoff: float = 0.8
    scale_to: float = dataclasses.field(default=1e4, metadata=_AFTER_SUMS)
    seed: int = 1
    precomputed_metacells: bool = False
    chunk_cells: int | None = None
    split_every: int = 4

    def __post_init__(self) -> None:
        for name, kind in (("n_metacells", int), ("k_neighbors", int), ("overlap_cutoff", float),
                           ("scale_to", float), ("seed", int), ("split_every", int),
                           ("precomputed_metacells", bool)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "max_distance", check_max_distance(self.max_distance))
        check_metacell_params(self.n_metacells, self.k_neighbors, self.overlap_cutoff)
        check_params([
            (self.scale_to > 0, f"scale_to={self.scale_to} must be positive, e.g. 1e4 (ArchR's scaleTo)."),
            (self.split_every >= 2, f"split_every={self.split_every} must be at least 2, e.g. 4."),
            (self.chunk_cells is None or self.chunk_cells >= 1,
             f"chunk_cells={self.chunk_cells} must be a positive number of cells, or None."),
        ])


def peak_pairs_within(centres: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs ``i < j`` (positions into ``centres``) with ``|centre_i - centre_j| <= max_distance``.

    Each pair appears once, with ``i < j``; sorted by ``i`` then ``j``.

    Examples
    --------
    >>> [a.tolist() for a in peak_pairs_within(np.array([0, 500, 100]), 150)]
    [[0], [2]]
    """
    centres = np.asarray(centres, dtype=np.int64)
    order = np.argsort(centres, kind="stable")
    ordered = centres[order]
    # In centre order, the partners of position k are the next positions up to the window's end.
    stop = np.searchsorted(ordered, ordered + max_distance, side="right")
    counts = stop - np.arange(ordered.size) - 1
    first = np.repeat(np.arange(ordered.size, dtype=np.int64), counts)
    offsets = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    a, b = order[first], order[first + 1 + offsets]
    i, j = np.minimum(a, b), np.maximum(a, b)
    sort = np.lexsort((j, i))
    return i[sort], j[sort]


def _correlate_peak_pairs(sums: np.ndarray, totals: np.ndarray, peak_index: np.ndarray, centres: np.ndarray,
                          max_distance: int, scale_to: float) -> tuple[pd.DataFrame, np.ndarray]:
    """One chromosome: each unordered pair once, r, t, p; and the chromosome's peak variances."""
    standardized, variance = standardize_columns(normalize_log2(sums, totals, scale_to), overwrite=True)
    local1, local2 = peak_pairs_within(centres, max_distance)
    correlation = pair_correlation(standardized, standardized, local1, local2)
    t, pval = t_and_pvalue(correlation, sums.shape[0])
    peak_index = np.asarray(peak_index, dtype=np.int64)
    return pd.DataFrame({"index1": peak_index[local1], "index2": peak_index[local2], "correlation": correlation,
                         "t": t, "pval": pval}), variance


def _pair_numbers(results: list, chrom_peaks: list, n_peaks: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The chromosome tables as one numeric table (undefined r dropped) and every peak's variance.

    Numbers only: they leave the cluster as contiguous arrays; names are added on the client.
    """
    variance = np.full(n_peaks, np.nan)
    halves = []
    for (table, chrom_variance), p_idx in zip(results, chrom_peaks):
        variance[p_idx] = chrom_variance
        halves.append(table)
    half = pd.concat(halves, ignore_index=True) if halves else pd.DataFrame(
        {"index1": [], "index2": [], "correlation": [], "t": [], "pval": []})
    return half[np.isfinite(half["correlation"].to_numpy(dtype=float))], variance


def _assemble(half: pd.DataFrame, variance: np.ndarray, peaks: pd.DataFrame, centres: np.ndarray) -> pd.DataFrame:
    """Both orders of every pair, BH over all rows, variance quantiles over rows."""
    # The statistics of (j, i) are those of (i, j): emit the computed half twice.
    i1 = np.concatenate([half["index1"].to_numpy(np.int64), half["index2"].to_numpy(np.int64)])
    i2 = np.concatenate([half["index2"].to_numpy(np.int64), half["index1"].to_numpy(np.int64)])
    stats = {c: np.tile(half[c].to_numpy(np.float64), 2) for c in ("correlation", "t", "pval")}
    order = np.lexsort((i2, i1))
    i1, i2 = i1[order], i2[order]
    names = peaks.index.to_numpy(dtype=object)
    table = pd.DataFrame({
        "peak1": names[i1], "peak2": names[i2], "chrom": peaks["chrom"].to_numpy(dtype=object)[i1],
        "centre1": centres[i1], "centre2": centres[i2], "distance": centres[i2] - centres[i1],
        **{c: v[order] for c, v in stats.items()},
    })
    table["fdr"] = benjamini_hochberg(table["pval"].to_numpy())
    table["var_q1"] = variance_quantiles(variance[i1])
    table["var_q2"] = variance_quantiles(variance[i2])
    return table[COACCESSIBILITY.names]


def co_accessibility(
    data: Any,
    *,
    use_rep: str = "X_iterative_lsi",
    n_metacells: int = 500,
    k_neighbors: int = 100,
    overlap_cutoff: float = 0.8,
    max_distance: int = 100_000,
    scale_to: float = 1e4,
    seed: int = 1,
    metacells: np.ndarray | None = None,
    mod_atac: str = "atac",
    chunk_cells: int | None = None,
    split_every: int = 4,
    client: Any = None,
    checkpoint: Any = None,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Correlate nearby peaks across kNN metacells (ArchR's ``addCoAccessibility``).

    Parameters
    ----------
    data
        Cells x peaks: AnnData, MuData (``mod_atac``), a p2g store or its path. No RNA needed.
    use_rep
        Embedding in ``obsm`` for the kNN metacells.
    n_metacells, k_neighbors, overlap_cutoff
        ArchR's ``knnIteration``, ``k``, ``overlapCutoff``; the same metacells as
        :func:`p2g_dask.tl.peak_to_gene` with the same seed.
    max_distance
        Largest ``|centre_i - centre_j|`` of a pair in bp (ArchR's ``maxDist``, 100,000).
    scale_to
        Each metacell's peak sums are scaled to this total (over all peaks), then ``log2(x + 1)``.
    seed
        Seed of the metacell sampling.
    metacells
        A precomputed ``(n_metacells, k)`` membership (e.g. ``links.attrs['metacells']``).
    mod_atac
        ATAC modality name in a MuData.
    chunk_cells, split_every
        Cells per aggregation task and the reduction fan-in (as in ``peak_to_gene``).
    client
        A ``distributed.Client``; without one the current client, else the threaded scheduler.
    checkpoint
        A folder for finished stages (the metacell sums and each chromosome's pairs).
    show_progress
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per ordered pair (both ``(i, j)`` and ``(j, i)``): ``peak1, peak2, chrom, centre1,
        centre2, distance, correlation, t, pval, fdr, var_q1, var_q2``, sorted by the peaks' order
        in the matrix. Pairs with an undefined r (a constant peak) are dropped. ``attrs`` holds
        ``params``, ``metacells``, ``n_cells``, ``obs_names_hash``, ``timings``, ``p2g_dask_version``.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=300, n_peaks=1500, n_genes=100, n_linked_genes=10, seed=2)
    >>> coa = p2g.tl.co_accessibility(sim.atac, use_rep="X_latent", n_metacells=50, k_neighbors=20)
    >>> bool((coa["distance"].abs() <= 100_000).all()), len(coa) % 2
    (True, 0)
    """
    params = CoAccessibilityParams(
        use_rep=use_rep, n_metacells=n_metacells, k_neighbors=k_neighbors, max_distance=max_distance,
        overlap_cutoff=overlap_cutoff, scale_to=scale_to, seed=seed, precomputed_metacells=metacells is not None,
        chunk_cells=chunk_cells, split_every=split_every,
    )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    atac_mod, _, extra_obsm = resolve_input(data, None, mod_atac=mod_atac, need_rna=False)
    n_cells = atac_mod.n_obs
    peaks = peak_table(atac_mod.var)
    centres = peak_centres(peaks["start"].to_numpy(), peaks["end"].to_numpy())
    with timed("metacells", timings):
        neighbours = resolve_metacells(atac_mod, extra_obsm, params, metacells, tool="co_accessibility")
    logger.info("co_accessibility: %d peaks, %d cells, %d metacells of %d cells",
                len(peaks), n_cells, neighbours.shape[0], neighbours.shape[1])
    client = _graph.current_client(client)
    blocks, totals = metacell_sums(atac_mod, neighbours, chunk_cells=chunk_cells, split_every=split_every,
                                   client=client)
    ckpt = as_checkpoint(checkpoint)
    if ckpt is not None:
        sums_key = ckpt.key(modality_token(atac_mod), neighbours, params_token(params, "sums"), "atac")
        blocks, totals = checkpointed_sums(blocks, totals, ckpt, sums_key)
    token = dask.base.tokenize(totals.key, params_token(params))
    peak_chrom = peaks["chrom"].to_numpy(dtype=object)
    results, chrom_peaks = [], []
    for chrom in pd.unique(peak_chrom):
        p_idx = np.flatnonzero(peak_chrom == chrom)
        if p_idx.size < 2:
            continue
        chrom_token = dask.base.tokenize(token, chrom)
        columns = lane_columns(blocks, p_idx, f"p2g-coaccessibility-columns-{chrom_token}")
        task = delayed(_correlate_peak_pairs, pure=True, nout=2)(
            columns, totals, p_idx, centres[p_idx], params.max_distance, params.scale_to,
            dask_key_name=f"p2g-coaccessibility-pairs-{chrom_token}")
        if ckpt is not None:
            task = checkpointed(task, ckpt, ckpt.key(sums_key, params_token(params), "coaccess", chrom, p_idx,
                                                     centres[p_idx]), "tree", nout=2)
        results.append(task)
        chrom_peaks.append(p_idx)
    graph = delayed(_pair_numbers, pure=True, nout=2)(results, chrom_peaks, len(peaks),
                                                      dask_key_name=f"p2g-coaccessibility-table-{token}")
    with timed("aggregate + correlate", timings):
        table = _assemble(*_graph.compute(graph, client, show_progress), peaks, centres)
    logger.info("co_accessibility: %d ordered pairs, %d with FDR < 0.05", len(table), int((table["fdr"] < 0.05).sum()))
    release_freed_memory()  # the client gives back what the call freed (see p2g_dask._memory)
    timings["total"] = round(time.perf_counter() - started, 4)
    table.attrs.update({
        "params": params_record(params), "metacells": MetacellMembership(neighbours), "n_cells": int(n_cells),
        "obs_names_hash": obs_names_hash(atac_mod.obs.index), "timings": timings,
        "p2g_dask_version": p2g_dask.__version__,
    })
    return table


def coaccessibility_loops(table: pd.DataFrame, *, cor_cutoff: float = 0.5, resolution: int = 1) -> pd.DataFrame:
    """ArchR's ``getCoAccessibility(returnLoops=TRUE)``: one loop per unordered pair of peaks.

    Keeps ``correlation >= cor_cutoff``; each end is moved to ``floor(centre / resolution) *
    resolution + floor(resolution / 2)``; ``start``/``end`` are the lower/upper end. One row per
    ``(chrom, start, end)`` (the highest correlation kept), loops with ``start == end`` dropped,
    sorted by chromosome and position.

    Parameters
    ----------
    table
        Output of :func:`co_accessibility`.
    cor_cutoff
        Smallest correlation kept (ArchR's ``corCutOff``, 0.5; signed, not ``|r|``).
    resolution
        Bin size in bp the loop ends are moved to (ArchR's ``resolution``, 1 = peak centres).

    Returns
    -------
    pandas.DataFrame
        ``chrom, start, end, peak1, peak2, correlation, t, pval, fdr, var_q1, var_q2`` where
        ``peak1`` is the peak at ``start``. Export with :func:`p2g_dask.io.write_links`
        (``format="bedpe" | "interact" | "longrange"``).

    Examples
    --------
    >>> t = pd.DataFrame({"peak1": ["a", "b"], "peak2": ["b", "a"], "chrom": ["chr1"] * 2, "centre1": [100, 1900],
    ...     "centre2": [1900, 100], "distance": [1800, -1800], "correlation": [0.7, 0.7], "t": [5.0] * 2,
    ...     "pval": [1e-4] * 2, "fdr": [1e-3] * 2, "var_q1": [0.5, 1.0], "var_q2": [1.0, 0.5]})
    >>> coaccessibility_loops(t, resolution=1000)[["start", "end", "peak1", "peak2"]].values.tolist()
    [[500, 1500, 'a', 'b']]
    """
    require_columns(table, COACCESSIBILITY, argument="table")
    resolution = int(resolution)
    if resolution < 1:
        raise ValueError(f"resolution={resolution} must be a positive number of bp, e.g. 1 (peak centres) or 1000.")
    kept = table[table["correlation"].to_numpy(dtype=float) >= cor_cutoff]
    tile1 = kept["centre1"].to_numpy(np.int64) // resolution * resolution + resolution // 2
    tile2 = kept["centre2"].to_numpy(np.int64) // resolution * resolution + resolution // 2
    swap = tile1 > tile2
    first = kept["peak1"].to_numpy(dtype=object)
    second = kept["peak2"].to_numpy(dtype=object)
    loops = pd.DataFrame({
        "chrom": kept["chrom"].astype(str).to_numpy(), "start": np.where(swap, tile2, tile1),
        "end": np.where(swap, tile1, tile2), "peak1": np.where(swap, second, first),
        "peak2": np.where(swap, first, second),
        "correlation": kept["correlation"].to_numpy(float), "t": kept["t"].to_numpy(float),
        "pval": kept["pval"].to_numpy(float), "fdr": kept["fdr"].to_numpy(float),
        "var_q1": np.where(swap, kept["var_q2"], kept["var_q1"]).astype(float),
        "var_q2": np.where(swap, kept["var_q1"], kept["var_q2"]).astype(float),
    })
    loops = loops[loops["end"] > loops["start"]]
    loops = loops.sort_values("correlation", ascending=False, kind="stable")
    loops = loops.drop_duplicates(["chrom", "start", "end"], keep="first")
    return loops.sort_values(["chrom", "start", "end"], kind="stable").reset_index(drop=True)[LOOP_COLUMNS]
