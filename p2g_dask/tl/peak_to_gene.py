"""``peak_to_gene``: ArchR's addPeak2GeneLinks as one Dask graph.

Graph (task key prefixes as they appear on the dashboard)::

    p2g-read                     row chunks of the store, when sums span several column blocks
                                 (else each p2g-metacell-sum task reads its own rows)
    p2g-metacell-sum             partial metacell sums per chunk, tree-reduced (_graph.tree_sum)
    p2g-feature-variance-*       variance of every normalised feature -> quantiles
    p2g-columns                  one chromosome's columns (only these move between workers)
    p2g-correlate                one task per chromosome: candidate pairs, r, t, p
    p2g-links                    Benjamini-Hochberg over all pairs, the final table
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
from dask.delayed import delayed

import p2g_dask
from p2g_dask import _graph
from p2g_dask._deprecations import renamed_arguments
from p2g_dask._checkpoint import as_checkpoint, checkpointed, checkpointed_sums, modality_token
from p2g_dask._inputs import Modality, get_obsm, obs_names_hash, resolve_input
from p2g_dask._logging import logger, timed
from p2g_dask._memory import release_freed_memory
from p2g_dask._variables import (
    check_max_distance,
    check_metacell_params,
    LINK_COLUMNS,
    check_params,
    params_record,
    params_token,
)
from p2g_dask.io.peaks import peak_table
from p2g_dask.tl._genes import gene_table, harmonize_chromosomes
from p2g_dask.tl._kernels import benjamini_hochberg, variance_quantiles
from p2g_dask.tl.aggregate import lane_columns, metacell_sums, nonzero_shares
from p2g_dask.tl.correlate import correlate_chromosome
from p2g_dask.tl.metacells import MetacellMembership
from p2g_dask.tl.metacells import resolve_metacells
from p2g_dask.tl.pairs import gene_tss, pairs_within, peak_centres



#: Marks a parameter that does not change the metacell sums (left out of their checkpoint key).
_AFTER_SUMS = {"not_in": ("sums",)}


@dataclasses.dataclass(frozen=True)
class PeakToGeneParams:
    """Every parameter of :func:`peak_to_gene` that shapes its result: validated on creation,
    recorded in ``links.attrs['params']`` and hashed, field by field, into the checkpoint keys.

    Examples
    --------
    >>> PeakToGeneParams(max_distance=1000).max_distance
    1000
    >>> PeakToGeneParams(k_neighbors=1)
    Traceback (most recent call last):
    ...
    ValueError: k_neighbors=1 must be >= 2.
    """

    use_rep: str = "X_iterative_lsi"
    n_metacells: int = 500
    k_neighbors: int = 100
    max_distance: int = dataclasses.field(default=250_000, metadata=_AFTER_SUMS)
    overlap_cutoff: float = 0.8
    scale_to: float = dataclasses.field(default=1e4, metadata=_AFTER_SUMS)
    seed: int = 1
    gene_obsm: str | None = None
    precomputed_metacells: bool = False
    chunk_cells: int | None = None
    split_every: int = 4
    #: Null p-values (p2g_dask.tl.link_nulls): extra columns only, the sums are unchanged.
    empirical_pval: bool = dataclasses.field(default=False, metadata=_AFTER_SUMS)
    n_permutations: int = 0
    permute: str = "cells"

    def __post_init__(self) -> None:
        for name, kind in (("n_metacells", int), ("k_neighbors", int), ("overlap_cutoff", float),
                           ("scale_to", float), ("seed", int), ("split_every", int),
                           ("precomputed_metacells", bool), ("n_permutations", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "max_distance", check_max_distance(self.max_distance))
        check_metacell_params(self.n_metacells, self.k_neighbors, self.overlap_cutoff)
        check_params([
            (self.scale_to > 0, f"scale_to={self.scale_to} must be positive, e.g. 1e4 (ArchR's scaleTo)."),
            (self.split_every >= 2, f"split_every={self.split_every} must be at least 2, e.g. 4."),
            (self.chunk_cells is None or self.chunk_cells >= 1,
             f"chunk_cells={self.chunk_cells} must be a positive number of cells, or None."),
            (int(self.n_permutations) >= 0, f"n_permutations={self.n_permutations} must be >= 0, e.g. 100."),
            (self.permute in ("cells", "metacells"), f"permute={self.permute!r} must be 'cells' or 'metacells'."),
        ])


def _assemble_numbers(results, chrom_peaks, chrom_genes, n_peaks: int, n_genes: int) -> pd.DataFrame:
    """The chromosome tables as one numeric table: BH over all pairs, variance quantiles over all features.

    Numbers only (positions, no names): it leaves the cluster as a few contiguous arrays instead
    of ~800k pickled strings per name column; :func:`_name_links` adds the names on the client.
    """
    peak_var = np.zeros(n_peaks)
    gene_var = np.zeros(n_genes)
    tables = []
    for (table, atac_var, rna_var), p_idx, g_idx in zip(results, chrom_peaks, chrom_genes):
        tables.append(table)
        peak_var[p_idx] = atac_var
        gene_var[g_idx] = rna_var
    stats = pd.concat(tables, ignore_index=True)
    p_idx = stats["peak_index"].to_numpy(dtype=np.int64)
    g_idx = stats["gene_index"].to_numpy(dtype=np.int64)
    stats["fdr"] = benjamini_hochberg(stats["pval"].to_numpy())
    stats["var_q_atac"] = variance_quantiles(peak_var)[p_idx]
    stats["var_q_rna"] = variance_quantiles(gene_var)[g_idx]
    return stats


def _name_links(stats: pd.DataFrame, peaks: pd.DataFrame, genes: pd.DataFrame) -> pd.DataFrame:
    """The links table of :func:`_assemble_numbers`' output: names and positions, then any null columns."""
    p_idx = stats["peak_index"].to_numpy(dtype=np.int64)
    g_idx = stats["gene_index"].to_numpy(dtype=np.int64)
    links = pd.DataFrame(
        {
            "peak": peaks.index.to_numpy(dtype=object)[p_idx],
            "gene": genes["gene_name"].to_numpy(dtype=object)[g_idx],
            "chrom": peaks["chrom"].to_numpy(dtype=object)[p_idx],
            "peak_start": peaks["start"].to_numpy()[p_idx],
            "peak_end": peaks["end"].to_numpy()[p_idx],
            "tss": genes["tss"].to_numpy()[g_idx],
            "distance": stats["distance"].to_numpy(dtype=np.int64),
        }
    )
    extra = [c for c in stats.columns if c not in LINK_COLUMNS and c not in ("peak_index", "gene_index")]
    for column in [c for c in LINK_COLUMNS if c not in links.columns] + extra:
        links[column] = stats[column].to_numpy()
    links = links[list(LINK_COLUMNS) + extra]
    links.attrs.update(stats.attrs)
    return links


def _assemble(results, chrom_peaks, chrom_genes, peaks, genes):
    """Concatenate the chromosome tables into the links table (see :func:`_assemble_numbers`)."""
    return _name_links(_assemble_numbers(results, chrom_peaks, chrom_genes, len(peaks), len(genes)), peaks,
                       genes)


def _gene_modality(atac: Modality, extra_obsm: dict, gene_obsm: str, gene_names) -> Modality:
    if atac.store is not None and gene_obsm and (Path(atac.store.path) / gene_obsm / "X").is_dir():
        # A gene-score modality of the store (p2g.tl.gene_scores(..., store=)): read out of core,
        # in row blocks like any count matrix, instead of loading obsm[gene_obsm] into memory.
        from p2g_dask.io.store import StoreModality

        scores = StoreModality(atac.store.path, gene_obsm, atac.store.chunk_cells)
        names = scores.var.index if gene_names is None else pd.Index(np.asarray(gene_names).astype(str))
        if names.size != scores.n_vars or not scores.obs.index.equals(atac.obs.index):
            raise ValueError(
                f"gene_names has {names.size} names and the store's {gene_obsm!r} modality is {scores.n_obs} "
                f"cells x {scores.n_vars} genes (ATAC: {atac.n_obs} cells); leave gene_names=None to use its "
                "own gene names, or rewrite it with p2g.tl.gene_scores(..., store=).")
        return Modality("rna", atac.obs, pd.DataFrame(index=names), store=scores)
    matrix = get_obsm(atac, gene_obsm, extra_obsm, argument="gene_obsm")
    if gene_names is None:
        raise ValueError(f"gene_obsm={gene_obsm!r} needs gene_names= (one name per column of obsm[{gene_obsm!r}]).")
    gene_names = pd.Index(np.asarray(gene_names).astype(str))
    if gene_names.size != matrix.shape[1]:
        raise ValueError(
            f"gene_names has {gene_names.size} names but obsm[{gene_obsm!r}] has {matrix.shape[1]} columns."
        )
    import scipy.sparse as sp

    matrix = sp.csr_matrix(matrix) if sp.issparse(matrix) else np.asarray(matrix)
    return Modality("rna", atac.obs, pd.DataFrame(index=gene_names), X=matrix)


def _annotated_genes(rna: Modality, genes: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Genes both measured and annotated: the table and their column positions in the RNA matrix."""
    names = pd.Index(rna.var.index.astype(str))
    first = ~names.duplicated(keep="first")
    if not first.all():
        logger.warning("rna has %d duplicate gene names; using the first column of each", int((~first).sum()))
    position = pd.Series(np.flatnonzero(first), index=names[first])
    annotated = genes[genes["gene_name"].isin(position.index)].reset_index(drop=True)
    n_missing = int(first.sum()) - len(annotated)
    if n_missing:
        logger.info("%d of %d rna genes are not in gene_annotation and are skipped", n_missing, int(first.sum()))
    return annotated, position.loc[annotated["gene_name"]].to_numpy(dtype=np.int64)


def _chromosome_columns(chrom, token, peak_chrom, gene_chrom, atac_blocks, rna_blocks, rna_columns):
    """A chromosome's peak and gene positions, its token and the tasks gathering their sums' columns."""
    p_idx = np.flatnonzero(peak_chrom == chrom)
    g_idx = np.flatnonzero(gene_chrom == chrom)
    chrom_token = dask.base.tokenize(token, chrom)
    atac_cols = lane_columns(atac_blocks, p_idx, f"p2g-columns-{dask.base.tokenize(chrom_token, 'atac')}")
    rna_cols = lane_columns(rna_blocks, rna_columns[g_idx], f"p2g-columns-{dask.base.tokenize(chrom_token, 'rna')}")
    return p_idx, g_idx, chrom_token, atac_cols, rna_cols


@renamed_arguments(atac="data")
def peak_to_gene(
    data: Any,
    *,
    rna: Any = None,
    gene_annotation: Any,
    use_rep: str = "X_iterative_lsi",
    n_metacells: int = 500,
    k_neighbors: int = 100,
    max_distance: int = 250_000,
    overlap_cutoff: float = 0.8,
    scale_to: float = 1e4,
    seed: int = 1,
    metacells: np.ndarray | None = None,
    gene_obsm: str | None = None,
    gene_names: Any = None,
    mod_atac: str = "atac",
    mod_rna: str = "rna",
    chunk_cells: int | None = None,
    split_every: int = 4,
    client: Any = None,
    show_progress: bool = False,
    checkpoint: Any = None,
    groupby: str | None = None,
    sample_key: str | None = None,
    min_group_cells: int | None = None,
    min_metacells: int = 30,
    replication: bool = False,
    empirical_pval: bool = False,
    n_permutations: int = 0,
    permute: str = "cells",
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
        :func:`p2g_dask.tl.gene_scores` with ``store=``; ATAC-only stores included), that modality
        is read out of core and ``gene_names`` defaults to its own gene names.
    mod_atac, mod_rna
        Modality names in a MuData.
    chunk_cells, split_every
        Cells per aggregation task (from a bytes target when None) and the reduction fan-in.
    client
        A ``distributed.Client``; without one the current client, else the threaded scheduler.
    show_progress
        Show a progress bar while the graph runs.
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
        ``replication=True`` adds per-sample replication columns. See
        :func:`p2g_dask.tl.group_links.grouped_peak_to_gene` and docs/groups.md.
    empirical_pval
        Add ArchR's empirical null p-values ``emp_pval`` and ``emp_fdr`` (correlations of up to
        1000 peaks of the other chromosomes with each chromosome's genes; see
        :mod:`p2g_dask.tl.link_nulls` and docs/coaccessibility.md); the null's summary is in
        ``attrs['null']``.
    n_permutations, permute
        With ``n_permutations > 0``, add ``perm_pval`` and a pooled ``perm_fdr`` from that many
        seeded permutations: ``"cells"`` shuffles which cell's RNA profile belongs to which cell
        (valid when metacells overlap; all permutations are summed in the same single pass over
        the RNA matrix), ``"metacells"`` shuffles the ATAC metacell order (ArchR's approach).
        See docs/coaccessibility.md for the memory cost.

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
        k_neighbors=k_neighbors, max_distance=max_distance,
        overlap_cutoff=overlap_cutoff, scale_to=scale_to, seed=seed, gene_obsm=gene_obsm,
        precomputed_metacells=metacells is not None, chunk_cells=chunk_cells, split_every=split_every,
        empirical_pval=empirical_pval, n_permutations=n_permutations, permute=permute,
    )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    atac_mod, rna_mod, extra_obsm = resolve_input(
        data, rna, mod_atac=mod_atac, mod_rna=mod_rna, need_rna=gene_obsm is None
    )
    if gene_obsm is not None:
        rna_mod = _gene_modality(atac_mod, extra_obsm, gene_obsm, gene_names)
    n_cells = atac_mod.n_obs

    peaks = peak_table(atac_mod.var)
    genes = harmonize_chromosomes(gene_table(gene_annotation), peaks["chrom"])
    genes, rna_columns = _annotated_genes(rna_mod, genes)
    if genes.empty:
        raise ValueError(
            f"none of the {rna_mod.n_vars} rna genes (e.g. {rna_mod.var.index[:3].tolist()}) is in "
            "gene_annotation; check that both use gene names (not Ensembl ids) of the same genome."
        )
    genes["tss"] = gene_tss(genes["start"].to_numpy(), genes["end"].to_numpy(), genes["strand"].to_numpy())
    centres = peak_centres(peaks["start"].to_numpy(), peaks["end"].to_numpy())

    if groupby is not None or sample_key is not None or isinstance(metacells, dict):
        # Links per group: all groups' metacells summed in the same single pass (tl/group_links.py).
        from p2g_dask.tl.group_links import grouped_peak_to_gene

        return grouped_peak_to_gene(
            atac_mod, rna_mod, extra_obsm, peaks, genes, rna_columns, centres, params, groupby=groupby,
            sample_key=sample_key, metacells=metacells, n_metacells=n_metacells, min_group_cells=min_group_cells,
            min_metacells=min_metacells, replication=replication, chunk_cells=chunk_cells,
            split_every=split_every, client=client, show_progress=show_progress, columns=_chromosome_columns,
            assemble=_assemble, checkpoint=checkpoint,
        )
    with timed("metacells", timings):
        neighbours = resolve_metacells(atac_mod, extra_obsm, params, metacells, tool="peak_to_gene")
    n_kept = neighbours.shape[0]
    logger.info(
        "peak_to_gene: %d peaks, %d annotated genes, %d cells, %d metacells of %d cells",
        len(peaks), len(genes), n_cells, n_kept, neighbours.shape[1],
    )

    client = _graph.current_client(client)
    # ATAC and RNA share the workers' lanes by their nonzeros: each sum is then held about once
    # across the cluster, not once per worker (half the memory on 2 workers, same speed).
    atac_share, rna_share = nonzero_shares(atac_mod, rna_mod)
    atac_blocks, atac_totals = metacell_sums(atac_mod, neighbours, chunk_cells=chunk_cells, split_every=split_every,
                                             client=client, lane_share=atac_share)
    if params.n_permutations and params.permute == "cells":
        from p2g_dask.tl import _link_permutations

        # One pass over the RNA matrix: its row blocks give the real sums and the permutations'
        # chromosome pieces; columns become positions in rna_columns.
        rna_blocks, rna_totals, rna_rows = _link_permutations.rna_sums(
            rna_mod, rna_columns, neighbours, chunk_cells=chunk_cells, split_every=split_every, client=client,
            lane_share=rna_share)
        rna_columns = np.arange(rna_columns.size)
    else:
        rna_blocks, rna_totals = metacell_sums(rna_mod, neighbours, chunk_cells=chunk_cells, split_every=split_every,
                                               client=client, lane_share=rna_share)
    ckpt = as_checkpoint(checkpoint)
    if ckpt is not None:
        # Keys hash every parameter field (all but those marked as not changing the sums).
        sums_key = ckpt.key(modality_token(atac_mod), modality_token(rna_mod), neighbours,
                            params_token(params, "sums"))
        atac_blocks, atac_totals = checkpointed_sums(atac_blocks, atac_totals, ckpt, ckpt.key(sums_key, "atac"))
        rna_blocks, rna_totals = checkpointed_sums(rna_blocks, rna_totals, ckpt, ckpt.key(sums_key, "rna"))
    token = dask.base.tokenize(atac_totals.key, rna_totals.key, params_token(params))
    peak_chrom = peaks["chrom"].to_numpy(dtype=object)
    gene_chrom = genes["chrom"].to_numpy(dtype=object)
    if not set(peak_chrom) & set(gene_chrom):
        raise ValueError(
            f"no chromosome has both peaks (e.g. {list(pd.unique(peak_chrom))[:3]}) and annotated genes "
            f"(e.g. {list(pd.unique(gene_chrom))[:3]}); check the genome build and chromosome names."
        )
    results, chrom_peaks, chrom_genes = [], [], []
    tss_all = genes["tss"].to_numpy()
    # Counting the pairs is cheap (a sorted search per chromosome): fail before the aggregation.
    if not any(pairs_within(centres[peak_chrom == c], tss_all[gene_chrom == c], params.max_distance)[0].size
               for c in set(peak_chrom) & set(gene_chrom)):
        raise ValueError(
            f"no candidate peak-gene pairs within max_distance={max_distance} bp; check that peaks and "
            "genes come from the same genome build, or raise max_distance."
        )
    # Every chromosome with peaks or genes gets a task: its features' variances feed the quantiles.
    for chrom in pd.unique(np.concatenate([peak_chrom, gene_chrom])):
        p_idx, g_idx, chrom_token, atac_cols, rna_cols = _chromosome_columns(
            chrom, token, peak_chrom, gene_chrom, atac_blocks, rna_blocks, rna_columns)
        task = delayed(correlate_chromosome, pure=True, nout=3)(
            atac_cols, atac_totals, rna_cols, rna_totals, p_idx, centres[p_idx], g_idx,
            tss_all[g_idx], params.max_distance, params.scale_to,
            dask_key_name=f"p2g-correlate-{chrom_token}",
        )
        if ckpt is not None:
            task = checkpointed(task, ckpt, ckpt.key(sums_key, params_token(params), "correlate", chrom, p_idx,
                                                     g_idx, rna_columns[g_idx], centres[p_idx], tss_all[g_idx]),
                                "tree", nout=3)
        results.append(task)
        chrom_peaks.append(p_idx)
        chrom_genes.append(g_idx)
    result = delayed(_assemble_numbers, pure=True)(results, chrom_peaks, chrom_genes, len(peaks), len(genes),
                                                   dask_key_name=f"p2g-links-{token}")
    if params.empirical_pval:
        from p2g_dask.tl import link_nulls

        null = link_nulls.empirical_null(
            atac_blocks, atac_totals, rna_blocks, rna_totals, peak_chrom=peak_chrom, centres=centres,
            gene_chrom=gene_chrom, tss=tss_all, rna_columns=rna_columns, max_distance=params.max_distance,
            scale_to=params.scale_to, seed=params.seed, token=token)
        result = delayed(link_nulls.add_empirical, pure=True)(result, null, dask_key_name=f"p2g-empirical-{token}")
    if params.n_permutations:
        from p2g_dask.tl import _link_permutations

        result = _link_permutations.permutation_null(
            result, atac_blocks, atac_totals, rna_blocks, rna_totals, peak_chrom=peak_chrom, centres=centres,
            gene_chrom=gene_chrom, tss=tss_all, rna_columns=rna_columns, neighbours=neighbours,
            n_permutations=params.n_permutations, permute=params.permute, max_distance=params.max_distance,
            scale_to=params.scale_to, seed=params.seed, token=token,
            rna_rows=rna_rows if params.permute == "cells" else None, split_every=split_every)
    with timed("aggregate + correlate", timings):
        # Not empty: some chromosome has candidate pairs (checked above, before the graph ran).
        links = _name_links(_graph.compute(result, client, show_progress), peaks, genes)
    n_sig = int((links["fdr"] < 0.05).sum())
    logger.info("peak_to_gene: %d candidate pairs, %d with FDR < 0.05", len(links), n_sig)
    release_freed_memory()  # the client gives back what the call freed (see p2g_dask._memory)
    timings["total"] = round(time.perf_counter() - started, 4)
    links.attrs.update(
        {
            "params": params_record(params),
            "metacells": MetacellMembership(neighbours),
            "n_cells": int(n_cells),
            "obs_names_hash": obs_names_hash(atac_mod.obs.index),
            "timings": timings,
            "p2g_dask_version": p2g_dask.__version__,
        }
    )
    return links
