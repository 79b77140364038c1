"""The plan of a metacell-correlation run, built once: validated modalities, the feature tables,
and per chromosome the features and their candidate pairs.

Every later step (sums, correlation, the layers, the tables) reads the plan instead of finding
chromosomes or pairs again. Two kinds: peak-gene (``peak_to_gene``: left = peaks, right =
annotated genes, pairs within ``max_distance`` of the TSS) and peak-peak (``co_accessibility``:
both sides the peaks, each unordered pair once).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dask.base import tokenize

from p2g_dask._logging import logger
from p2g_dask.io.genes import gene_table, harmonize_chromosomes
from p2g_dask.io.inputs import Modality, get_obsm, resolve_input
from p2g_dask.io.peaks import peak_table
from p2g_dask.tl.engine.pairs import gene_tss, pairs_within, peak_centres, peak_pairs_within


@dataclasses.dataclass(frozen=True)
class ChromosomePlan:
    """One chromosome: its left and right features (global positions) and its pairs.

    ``pairs`` are local positions into ``left`` and ``right``, sorted by left then right.
    """

    name: str
    left: np.ndarray
    right: np.ndarray
    pairs: tuple[np.ndarray, np.ndarray]

    @property
    def n_pairs(self) -> int:
        return int(self.pairs[0].size)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """What a run correlates: cells, features and pairs (see the module docstring).

    Attributes
    ----------
    atac, rna
        The modalities; ``rna`` is None for a peak-peak plan (the right side is ``atac``).
    extra_obsm
        A MuData's own ``obsm`` (for ``use_rep``).
    peaks, centres
        ``chrom, start, end`` indexed by peak name, and each peak's centre.
    genes, gene_columns
        Annotated, measured genes (``gene_name, chrom, start, end, strand, tss``) and their
        column in the RNA matrix (None for a peak-peak plan).
    chromosomes
        One :class:`ChromosomePlan` per chromosome with features, in table order.
    max_distance
        Largest ``|centre - TSS|`` (or ``|centre - centre|``) of a pair, in bp.
    """

    atac: Modality
    rna: Modality | None
    extra_obsm: dict
    peaks: pd.DataFrame
    centres: np.ndarray
    genes: pd.DataFrame | None
    gene_columns: np.ndarray | None
    chromosomes: tuple[ChromosomePlan, ...]
    max_distance: int

    @property
    def n_cells(self) -> int:
        return self.atac.n_obs

    @property
    def peak_peak(self) -> bool:
        return self.rna is None

    @property
    def n_right(self) -> int:
        return len(self.peaks) if self.peak_peak else len(self.genes)

    @property
    def right_positions(self) -> np.ndarray:
        """Where the right side's columns are in its modality's matrix (genes: ``gene_columns``)."""
        return np.arange(len(self.peaks)) if self.peak_peak else self.gene_columns

    def pair_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pair's left and right feature (global positions), in table order."""
        lefts = [c.left[c.pairs[0]] for c in self.chromosomes]
        rights = [c.right[c.pairs[1]] for c in self.chromosomes]
        if not lefts:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(lefts).astype(np.int64), np.concatenate(rights).astype(np.int64)

    def token(self) -> str:
        """A hash of the features and pairs (task keys of the correlation)."""
        return tokenize(self.peak_peak, self.centres, self.max_distance,
                        None if self.genes is None else (self.genes["tss"].to_numpy(), self.gene_columns),
                        [c.name for c in self.chromosomes])


def _gene_modality(atac: Modality, extra_obsm: dict, gene_obsm: str, gene_names) -> Modality:
    """The gene side from ``obsm[gene_obsm]`` or the store's gene-score modality of that name."""
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


def peak_gene_plan(
    data: Any,
    rna: Any = None,
    *,
    gene_annotation: Any,
    max_distance: int,
    gene_obsm: str | None = None,
    gene_names: Any = None,
    mod_atac: str = "atac",
    mod_rna: str = "rna",
) -> Plan:
    """The plan of ``peak_to_gene``: peaks x annotated genes, pairs within ``max_distance`` of the TSS.

    Parameters
    ----------
    data, rna, mod_atac, mod_rna
        The inputs as :func:`p2g_dask.tl.peak_to_gene` takes them.
    gene_annotation
        A gene table, ``(genes, exons)``, a GFF3/GTF path or a genome.
    max_distance
        Largest ``|peak centre - TSS|`` in bp.
    gene_obsm, gene_names
        A gene-score matrix instead of RNA (see :func:`p2g_dask.tl.peak_to_gene`).

    Returns
    -------
    Plan
        Every chromosome with peaks or annotated genes, in order of first appearance (peaks
        first); raises before any heavy work when no chromosome or no pair is shared.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=50, n_peaks=200, n_genes=20, n_linked_genes=2, seed=1)
    >>> plan = peak_gene_plan(sim.atac, sim.rna, gene_annotation=sim.genes, max_distance=250_000)
    >>> sum(c.n_pairs for c in plan.chromosomes) > 0, plan.peak_peak
    (True, False)
    """
    atac_mod, rna_mod, extra_obsm = resolve_input(data, rna, mod_atac=mod_atac, mod_rna=mod_rna,
                                                  need_rna=gene_obsm is None)
    if gene_obsm is not None:
        rna_mod = _gene_modality(atac_mod, extra_obsm, gene_obsm, gene_names)
    peaks = peak_table(atac_mod.var)
    genes = harmonize_chromosomes(gene_table(gene_annotation), peaks["chrom"])
    genes, gene_columns = _annotated_genes(rna_mod, genes)
    if genes.empty:
        raise ValueError(
            f"none of the {rna_mod.n_vars} rna genes (e.g. {rna_mod.var.index[:3].tolist()}) is in "
            "gene_annotation; check that both use gene names (not Ensembl ids) of the same genome."
        )
    genes["tss"] = gene_tss(genes["start"].to_numpy(), genes["end"].to_numpy(), genes["strand"].to_numpy())
    centres = peak_centres(peaks["start"].to_numpy(), peaks["end"].to_numpy())
    peak_chrom = peaks["chrom"].to_numpy(dtype=object)
    gene_chrom = genes["chrom"].to_numpy(dtype=object)
    if not set(peak_chrom) & set(gene_chrom):
        raise ValueError(
            f"no chromosome has both peaks (e.g. {list(pd.unique(peak_chrom))[:3]}) and annotated genes "
            f"(e.g. {list(pd.unique(gene_chrom))[:3]}); check the genome build and chromosome names."
        )
    tss = genes["tss"].to_numpy()
    chromosomes = []
    # Every chromosome with peaks or genes: its features' variances feed the quantiles.
    for chrom in pd.unique(np.concatenate([peak_chrom, gene_chrom])):
        left, right = np.flatnonzero(peak_chrom == chrom), np.flatnonzero(gene_chrom == chrom)
        chromosomes.append(ChromosomePlan(str(chrom), left, right, pairs_within(centres[left], tss[right],
                                                                                 max_distance)))
    if not any(c.n_pairs for c in chromosomes):
        raise ValueError(
            f"no candidate peak-gene pairs within max_distance={max_distance} bp; check that peaks and "
            "genes come from the same genome build, or raise max_distance."
        )
    return Plan(atac_mod, rna_mod, extra_obsm, peaks, centres, genes, gene_columns, tuple(chromosomes),
                int(max_distance))


def peak_peak_plan(data: Any, *, max_distance: int, mod_atac: str = "atac") -> Plan:
    """The plan of ``co_accessibility``: peak pairs within ``max_distance`` on each chromosome.

    Parameters
    ----------
    data, mod_atac
        Cells x peaks as :func:`p2g_dask.tl.co_accessibility` takes them (no RNA).
    max_distance
        Largest ``|centre_i - centre_j|`` in bp.

    Returns
    -------
    Plan
        Chromosomes with at least two peaks; each unordered pair once (``i < j``).

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=50, n_peaks=200, n_genes=20, n_linked_genes=2, seed=1)
    >>> plan = peak_peak_plan(sim.atac, max_distance=100_000)
    >>> all((c.left[c.pairs[0]] < c.right[c.pairs[1]]).all() for c in plan.chromosomes)
    True
    """
    atac_mod, _, extra_obsm = resolve_input(data, None, mod_atac=mod_atac, need_rna=False)
    peaks = peak_table(atac_mod.var)
    centres = peak_centres(peaks["start"].to_numpy(), peaks["end"].to_numpy())
    peak_chrom = peaks["chrom"].to_numpy(dtype=object)
    chromosomes = []
    for chrom in pd.unique(peak_chrom):
        left = np.flatnonzero(peak_chrom == chrom)
        if left.size >= 2:
            chromosomes.append(ChromosomePlan(str(chrom), left, left, peak_pairs_within(centres[left], max_distance)))
    return Plan(atac_mod, None, extra_obsm, peaks, centres, None, None, tuple(chromosomes), int(max_distance))
