"""``co_accessibility``: ArchR's addCoAccessibility (peak-peak correlation over kNN metacells).

A composition of the engine's steps, as ``peak_to_gene``: a peak-peak plan (each unordered pair
within ``max_distance`` once), the same metacells (same seed and membership), ONE streaming pass
over the ATAC matrix, one correlate task per chromosome over its own peak columns; the table
then emits each pair in both orders, as ArchR returns them.

Graph (task key prefixes)::

    p2g-metacell-sum       the ATAC metacell sums (one pass over the cell rows)
    p2g-columns            one chromosome's peak columns
    p2g-correlate          one task per chromosome: r, t, p of its pairs, its peaks' variances
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from dask.base import tokenize

from p2g_dask import _graph
from p2g_dask._logging import logger, timed
from p2g_dask._memory import release_freed_memory
from p2g_dask._tables import COACCESSIBILITY, require_columns
from p2g_dask._variables import params_token
from p2g_dask._report import reported
from p2g_dask.tl.engine.correlate import chromosome_columns, correlate
from p2g_dask.tl.engine.kernels import benjamini_hochberg, variance_quantiles
from p2g_dask.tl.engine.plan import peak_peak_plan
from p2g_dask.tl.engine.prepare import prepare_for_plan
from p2g_dask.tl.engine.sums import plan_sums
from p2g_dask.tl.links.groups import link_metacells
from p2g_dask.tl.links.params import CoAccessibilityParams
from p2g_dask.tl.links.tables import run_record

__all__ = ["CoAccessibilityParams", "co_accessibility", "coaccessibility_loops"]

LOOP_COLUMNS = ["chrom", "start", "end", "peak1", "peak2", "correlation", "t", "pval", "fdr", "var_q1", "var_q2"]


def coaccessibility_table(plan: Any, results: list[tuple]) -> pd.DataFrame:
    """Both orders of every pair with a defined r, BH over all rows, variance quantiles over rows.

    Parameters
    ----------
    plan
        A peak-peak :class:`~p2g_dask.tl.engine.plan.Plan`.
    results
        ``(correlation, t, pval, variance, variance)`` per chromosome of the plan.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`co_accessibility`.
    """
    variance = np.full(len(plan.peaks), np.nan)
    for chrom, result in zip(plan.chromosomes, results):
        variance[chrom.left] = result[3]
    first, second = plan.pair_index()
    half = {name: (np.concatenate([r[k] for r in results]) if results else np.empty(0))
            for k, name in enumerate(("correlation", "t", "pval"))}
    defined = np.isfinite(half["correlation"])
    # The statistics of (j, i) are those of (i, j): emit the computed half twice.
    i1 = np.concatenate([first[defined], second[defined]])
    i2 = np.concatenate([second[defined], first[defined]])
    order = np.lexsort((i2, i1))
    i1, i2 = i1[order], i2[order]
    names, centres = plan.peaks.index.to_numpy(dtype=object), plan.centres
    table = pd.DataFrame({
        "peak1": names[i1], "peak2": names[i2], "chrom": plan.peaks["chrom"].to_numpy(dtype=object)[i1],
        "centre1": centres[i1], "centre2": centres[i2], "distance": centres[i2] - centres[i1],
        **{c: np.tile(v[defined].astype(np.float64), 2)[order] for c, v in half.items()},
    })
    table["fdr"] = benjamini_hochberg(table["pval"].to_numpy())
    table["var_q1"] = variance_quantiles(variance[i1])
    table["var_q2"] = variance_quantiles(variance[i2])
    return table[COACCESSIBILITY.names]


@reported
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
    show_progress: bool | None = None,
    report: Any = None,
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
        :func:`p2g_dask.tl.links.peak_to_gene` with the same seed.
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
        Show a progress bar while the graph runs (None: the dask config ``p2g.show-progress``,
        True unless set).

    report
        A path (e.g. ``"out/report.html"``): write a run report of this call there (stages,
        memory per worker over time, spilled bytes, the results' numbers, parameters, versions)
        and Dask's performance report beside it (with a ``distributed`` client); see
        docs/report.md.

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
    plan = peak_peak_plan(data, max_distance=params.max_distance, mod_atac=mod_atac)
    client = _graph.current_client(client)
    prepare_for_plan(plan, client)  # the kernels compile or load while the metacells are found
    with timed("metacells", timings):
        stack = link_metacells(plan, params, metacells=metacells, tool="co_accessibility")
    logger.info("co_accessibility: %d peaks, %d cells, %d metacells of %d cells", len(plan.peaks), plan.n_cells,
                *stack.neighbours.shape)
    sums = plan_sums(plan, stack, chunk_cells=chunk_cells, split_every=split_every, client=client,
                     checkpoint=checkpoint, key=params_token(params, "sums"))
    token = tokenize(sums.key(), plan.token(), params_token(params))
    correlations = correlate(plan, sums, chromosome_columns(plan, sums, token), stack.unit_slices(),
                             scale_to=params.scale_to, checkpoint=checkpoint, key=(sums.identity, params_token(params)))
    with timed("aggregate + correlate", timings):
        results = _graph.compute(correlations, client, show_progress)
    with timed("tables", timings):
        table = coaccessibility_table(plan, results[0])
    logger.info("co_accessibility: %d ordered pairs, %d with FDR < 0.05", len(table), int((table["fdr"] < 0.05).sum()))
    release_freed_memory()  # the client gives back what the call freed (see p2g_dask._memory)
    timings["total"] = round(time.perf_counter() - started, 4)
    table.attrs.update(run_record(params, plan, stack, timings))
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
