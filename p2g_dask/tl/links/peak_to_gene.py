"""``peak_to_gene``: ArchR's addPeak2GeneLinks on the engine, as one Dask graph.

A composition of the engine's steps (``tl/engine``) and the layers (``tl/links/layers.py``)::

    plan          peaks, annotated genes, per chromosome their pairs        (engine/plan.py)
    metacells     one membership, or per group and sample, stacked          (links/groups.py)
    sums          p2g-metacell-sum: the stack summed, one pass per matrix   (engine/sums.py)
    correlate     p2g-columns, p2g-correlate per chromosome and unit        (engine/correlate.py)
    layers        p2g-nullcorrelation, p2g-permute, per-sample correlations (links/layers.py)
    tables        BH and variance quantiles per unit, names, attrs          (links/tables.py)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from dask.base import tokenize

from p2g_dask import _graph
from p2g_dask._deprecations import argument_aliases, renamed_arguments
from p2g_dask._epione import LINKS_KEY, accepts_verbose, keep_links
from p2g_dask._logging import logger, timed
from p2g_dask._memory import release_freed_memory
from p2g_dask._variables import params_token
from p2g_dask._report import reported
from p2g_dask.tl.engine.correlate import chromosome_columns, correlate
from p2g_dask.tl.engine.plan import peak_gene_plan
from p2g_dask.tl.engine.prepare import prepare_for_plan
from p2g_dask.tl.engine.sums import plan_sums
from p2g_dask.tl.links.groups import link_metacells
from p2g_dask.tl.links.layers import LinkRun, requested_layers
from p2g_dask.tl.links.params import PeakToGeneParams
from p2g_dask.tl.links.tables import name_links, run_record, unit_numbers

__all__ = ["PeakToGeneParams", "peak_to_gene"]


@renamed_arguments(atac="data")
@argument_aliases(adata="data")  # epione's name of the cells (its tutorials pass them first)
@accepts_verbose
@reported
def peak_to_gene(
    data: Any,
    *,
    rna: Any = None,
    gene_annotation: Any,
    use_rep: str = "X_iterative_lsi",
    n_metacells: int | dict = 500,
    k_neighbors: int = 100,
    max_distance: int = 250_000,
    overlap_cutoff: float = 0.8,
    scale_to: float = 1e4,
    seed: int = 1,
    metacells: np.ndarray | dict | None = None,
    gene_obsm: str | None = None,
    gene_names: Any = None,
    mod_atac: str = "atac",
    mod_rna: str = "rna",
    chunk_cells: int | None = None,
    split_every: int = 4,
    client: Any = None,
    show_progress: bool | None = None,
    checkpoint: Any = None,
    groupby: str | None = None,
    sample_key: str | None = None,
    min_group_cells: int | None = None,
    min_metacells: int = 30,
    replication: bool = False,
    empirical_pval: bool = False,
    n_permutations: int = 0,
    permute: str = "cells",
    key_added: str | None = LINKS_KEY,
    inplace: bool = True,
    report: Any = None,
) -> pd.DataFrame:
    """Correlate peak accessibility with gene expression across kNN metacells (ArchR-compatible).

    Parameters
    ----------
    data
        Cells x peaks: AnnData, MuData, a p2g store (:func:`p2g_dask.io.open_store`) or its path.
    rna
        Cells x genes AnnData (the same cells; the shared barcodes are used). Not needed for a
        store, a MuData with an ``mod_rna`` modality, or with ``gene_obsm``.
    gene_annotation
        ``gene_name, chrom, start, end, strand`` DataFrame (0-based) or a GFF3/GTF path.
    use_rep
        Embedding in ``obsm`` for the kNN (ATAC modality first, then a MuData's own obsm).
    n_metacells, k_neighbors, overlap_cutoff
        ArchR's ``knnIteration`` (500), ``k`` (100), ``overlapCutoff`` (0.8).
    max_distance
        Largest ``|peak centre - TSS|`` in bp (ArchR's ``maxDist``, 250,000).
    scale_to
        Each metacell is scaled to this total before ``log2(x + 1)`` (ArchR's ``scaleTo``).
    seed
        Seed of the metacell sampling.
    metacells
        A precomputed ``(n_metacells, k)`` membership (e.g. ``links.attrs['metacells']``), so two
        runs share it; ``use_rep``/``n_metacells``/``k_neighbors`` are then unused.
    gene_obsm, gene_names
        Use a gene-score matrix ``atac.obsm[gene_obsm]`` (cells x genes, named by ``gene_names``)
        instead of RNA. With a store holding the modality ``<store>/<gene_obsm>`` (written by
        :func:`p2g_dask.tl.scores.gene_scores` with ``store=``; ATAC-only stores included), that modality
        is read out of core and ``gene_names`` defaults to its own gene names.
    mod_atac, mod_rna
        Modality names in a MuData.
    chunk_cells, split_every
        Cells per aggregation task (from a bytes target when None) and the reduction fan-in.
    client
        A ``distributed.Client``; without one the current client, else the threaded scheduler.
    show_progress
        Show a progress bar while the graph runs (None: the dask config ``p2g.show-progress``,
        True unless set).
    checkpoint
        A folder (or ``p2g_dask._checkpoint.Checkpoint``) for finished stages: the metacell sums
        and each chromosome's pair table are saved there, keyed by a hash of the data, the
        metacells and the parameters, so a rerun after a crash recomputes only what is missing
        (see docs/reliability.md). Changed inputs or parameters give new keys.
    groupby, sample_key, min_group_cells, min_metacells, replication
        Links per group (an obs column; or ``metacells=`` as a dict group -> membership): metacells
        built within each group (and each sample with ``sample_key``), all groups summed in one
        pass, BH and variance quantiles within each group; ``n_metacells`` may be a dict group ->
        int. ``sample_key`` alone builds the metacells within each sample (one group ``"all"``).
        ``replication=True`` adds per-sample replication columns. Every layer (``empirical_pval``,
        ``n_permutations``, ``replication``) works per group. See docs/groups.md.
    empirical_pval
        Add ArchR's empirical null p-values ``emp_pval`` and ``emp_fdr`` (correlations of up to
        1000 peaks of the other chromosomes with each chromosome's genes; see
        :mod:`p2g_dask.tl.links.empirical` and docs/coaccessibility.md); the null's summary is in
        ``attrs['null']``.
    n_permutations, permute
        With ``n_permutations > 0``, add ``perm_pval`` and a pooled ``perm_fdr`` from that many
        seeded permutations: ``"cells"`` shuffles which cell's RNA profile belongs to which cell
        (valid when metacells overlap; all permutations are summed in the same single pass over
        the RNA matrix), ``"metacells"`` shuffles the ATAC metacell order (ArchR's approach).
        With ``groupby``, cells are shuffled within their group (and sample) and ``perm_fdr`` is
        pooled within the group. See docs/coaccessibility.md for the memory cost.
    key_added, inplace
        With an in-memory AnnData (or MuData: its ``mod_atac`` modality) the links are also kept
        in its ``uns[key_added]``, as epione's ``peak_to_gene`` keeps them, so
        ``p2g.pl.plot_peak2gene(data, gene=...)`` finds them without ``links=`` (the same table
        object, not a copy). ``inplace=False`` or ``key_added=None`` keeps nothing; a store, a
        path or a view (``atac[cells]``) is never written to.
    verbose
        epione's: True shows this call's progress (the ``p2g_dask`` logger's INFO records, on
        stderr when logging shows none), False only its warnings, None (default) leaves logging as
        configured.

    report
        A path (e.g. ``"out/report.html"``): write a run report of this call there (stages,
        memory per worker over time, spilled bytes, the results' numbers, parameters, versions)
        and Dask's performance report beside it (with a ``distributed`` client); see
        docs/report.md.

    Returns
    -------
    pandas.DataFrame
        One row per tested pair: ``peak, gene, chrom, peak_start, peak_end, tss, distance,
        correlation, t, pval, fdr, var_q_atac, var_q_rna``, sorted by chromosome, peak, gene.
        ``attrs`` holds ``params``, ``metacells`` (the membership), ``n_cells``,
        ``obs_names_hash``, ``timings`` and ``p2g_dask_version``.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=400, n_peaks=2000, n_genes=200, n_linked_genes=20, seed=2)
    >>> links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
    ...                             n_metacells=60, k_neighbors=20)
    >>> list(links.columns[:3]), bool(links["correlation"].abs().max() <= 1)
    (['peak', 'gene', 'chrom'], True)
    """
    params = PeakToGeneParams(
        use_rep=use_rep, n_metacells=500 if isinstance(n_metacells, dict) else n_metacells,  # dict: per group
        k_neighbors=k_neighbors, max_distance=max_distance, overlap_cutoff=overlap_cutoff, scale_to=scale_to,
        seed=seed, precomputed_metacells=metacells is not None, chunk_cells=chunk_cells, split_every=split_every,
        gene_obsm=gene_obsm, groupby=groupby, sample_key=sample_key, min_group_cells=min_group_cells,
        min_metacells=min_metacells, replication=replication, empirical_pval=empirical_pval,
        n_permutations=n_permutations, permute=permute,
    )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    plan = peak_gene_plan(data, rna, gene_annotation=gene_annotation, max_distance=params.max_distance,
                          gene_obsm=gene_obsm, gene_names=gene_names, mod_atac=mod_atac, mod_rna=mod_rna)
    client = _graph.current_client(client)
    prepare_for_plan(plan, client)  # the kernels compile or load while the metacells are found
    with timed("metacells", timings):
        stack = link_metacells(plan, params, metacells=metacells, n_metacells=n_metacells)
    layers = requested_layers(params, stack)
    logger.info("peak_to_gene: %d peaks, %d annotated genes, %d cells, %d metacells of %d cells",
                len(plan.peaks), len(plan.genes), plan.n_cells, *stack.neighbours.shape)
    sums = plan_sums(plan, stack, chunk_cells=chunk_cells, split_every=split_every, client=client,
                     keep_rna_rows=any(layer.needs_rna_rows for layer in layers), checkpoint=checkpoint,
                     key=params_token(params, "sums"))
    token = tokenize(sums.key(), plan.token(), params_token(params))
    columns = chromosome_columns(plan, sums, token)
    correlations = correlate(plan, sums, columns, stack.unit_slices(), scale_to=params.scale_to,
                             checkpoint=checkpoint, key=(sums.identity, params_token(params)))
    run = LinkRun(plan, stack, sums, columns, correlations, params, token)
    with timed("aggregate + correlate", timings):
        results, extras = _graph.compute((correlations, [layer.graph(run) for layer in layers]), client,
                                         show_progress)
    with timed("tables", timings):
        links = _links_table(plan, stack, results, layers, extras)
    logger.info("peak_to_gene: %d candidate pairs, %d with FDR < 0.05", len(links), int((links["fdr"] < 0.05).sum()))
    release_freed_memory()  # the client gives back what the call freed (see p2g_dask._memory)
    timings["total"] = round(time.perf_counter() - started, 4)
    records = {k: v for layer, values in zip(layers, extras) for k, v in layer.record(values, stack.groups).items()}
    links.attrs.update(run_record(params, plan, stack, timings, **records))
    keep_links(data, links, key_added=key_added, inplace=inplace, mod_atac=mod_atac)
    return links


def _links_table(plan, stack, results: list, layers: list, extras: list) -> pd.DataFrame:
    """Every unit's numbers with the layers' columns, named; units concatenated (group column first)."""
    tables = []
    for unit, group in enumerate(stack.groups):
        stats = unit_numbers(plan, results[unit])
        for layer, values in zip(layers, extras):
            stats = layer.add(stats, values[unit])
        tables.append(name_links(stats, plan, group, stack.groups))
    return tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
