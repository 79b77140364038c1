"""A seeded multiome simulator with planted peak-gene links (offline demo and tests).

Cells live on a low-dimensional latent manifold: each cell type is a cloud around its own centre,
and every *variable* feature (peak or gene) responds to the latent position through a loading
vector. A planted link gives a peak the loading of its gene (plus a little noise), so across
metacells the peak's accessibility follows the gene's expression. Counts are Poisson draws around
those rates, scaled by a per-cell depth, which gives scATAC-like (2-5 % nonzero, mostly ones) and
scRNA-like (5-10 % nonzero) sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from p2g_dask._logging import logger

CELL_TYPE_NAMES = ["T_CD4", "T_CD8", "NK", "B", "Mono_CD14", "Mono_FCGR3A", "DC", "Platelet"]
LINEAGE_OF = {
    "T_CD4": "T", "T_CD8": "T", "NK": "NK", "B": "B",
    "Mono_CD14": "Myeloid", "Mono_FCGR3A": "Myeloid", "DC": "Myeloid", "Platelet": "Other",
}
# Spread of each cell-type cloud around its centre on the latent manifold.
_CLOUD_SD = 0.45


@dataclass
class SimulatedMultiome:
    """Paired ATAC/RNA AnnData, their annotation and the planted truth.

    Attributes
    ----------
    atac, rna
        Cells x peaks and cells x genes count matrices (CSR, int32) with the same ``obs_names``.
        ``obs`` has ``cell_type``, ``lineage`` and ``n_fragment``; ``obsm['X_latent']`` holds the
        true latent positions.
    genes
        Gene annotation: ``gene_name, chrom, start, end, strand`` (0-based, half-open).
    exons
        Exon annotation with the same columns.
    truth
        Planted links: ``peak, gene, distance``.
    chrom_sizes
        Chromosome lengths of the simulated genome.
    group_truth
        Group-specific planted links (``n_group_links``): ``peak, gene, group, distance``; the
        link is active only in the cells of ``group`` (a ``cell_type``).
    """

    atac: ad.AnnData
    rna: ad.AnnData
    genes: pd.DataFrame
    exons: pd.DataFrame
    truth: pd.DataFrame
    chrom_sizes: dict[str, int] = field(default_factory=dict)
    group_truth: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({"peak": [], "gene": [], "group": [], "distance": []}))


def _place_genes(rng, n_genes, chrom_sizes):
    chroms = list(chrom_sizes)
    lengths = np.array([chrom_sizes[c] for c in chroms], dtype=float)
    gene_chrom = rng.choice(len(chroms), size=n_genes, p=lengths / lengths.sum())
    rows = []
    for ci, chrom in enumerate(chroms):
        n_here = int((gene_chrom == ci).sum())
        if n_here == 0:
            continue
        # Evenly spaced slots with jitter keep genes from piling up on one another.
        slots = np.sort(rng.choice(np.arange(1, chrom_sizes[chrom] // 20_000 - 10), n_here, replace=False))
        starts = slots * 20_000 + rng.integers(0, 5_000, n_here)
        lengths_bp = rng.integers(2_000, 15_000, n_here)
        for s, ln in zip(starts, lengths_bp):
            rows.append((chrom, int(s), int(s + ln), "+" if rng.random() < 0.5 else "-"))
    genes = pd.DataFrame(rows, columns=["chrom", "start", "end", "strand"])
    genes.insert(0, "gene_name", [f"G{i:05d}" for i in range(len(genes))])
    return genes


def _make_exons(rng, genes):
    rows = []
    for g in genes.itertuples(index=False):
        n_exons = int(rng.integers(2, 8))
        bounds = np.sort(rng.choice(np.arange(g.start + 1, g.end - 1), 2 * n_exons - 2, replace=False))
        edges = np.concatenate([[g.start], bounds, [g.end]])
        for e in range(n_exons):
            rows.append((g.gene_name, g.chrom, int(edges[2 * e]), int(edges[2 * e + 1]), g.strand))
    return pd.DataFrame(rows, columns=["gene_name", "chrom", "start", "end", "strand"])


def _tss(genes):
    return np.where(genes["strand"].to_numpy() == "+", genes["start"].to_numpy(), genes["end"].to_numpy() - 1)


def simulate_multiome(
    n_cells: int = 3000,
    n_peaks: int = 20_000,
    n_genes: int = 2000,
    *,
    n_cell_types: int = 6,
    n_linked_genes: int = 150,
    peaks_per_link: int = 2,
    n_chromosomes: int = 5,
    latent_dim: int = 6,
    atac_density: float = 0.035,
    rna_density: float = 0.08,
    link_strength: float = 1.0,
    seed: int = 0,
    n_group_links: int = 0,
    n_samples: int = 1,
    sample_effect: float = 0.0,
) -> SimulatedMultiome:
    """Simulate paired scATAC + scRNA counts with planted peak-gene links.

    Parameters
    ----------
    n_cells, n_peaks, n_genes
        Matrix sizes.
    n_cell_types
        Number of cell types (clouds on the latent manifold), at most 8.
    n_linked_genes, peaks_per_link
        How many genes get planted links and how many peaks each (within 10-200 kb of the TSS).
    n_chromosomes
        Chromosomes ``chr1..chrN`` of the simulated genome (60 Mb down to 20 Mb).
    latent_dim
        Dimension of the latent manifold.
    atac_density, rna_density
        Target mean Poisson rate per entry; the nonzero share is about ``1 - exp(-rate)``.
    link_strength
        Scale of the shared loading of a linked peak (0 removes the links).
    seed
        Seed of ``numpy.random.default_rng``; the same seed gives the same data.
    n_group_links
        Group-specific links: a peak and a gene without latent loadings that co-vary along a
        within-group direction in the cells of one cell type only (types taken in turn); listed in
        ``group_truth``. 0 (default) leaves the data of a seed unchanged.
    n_samples, sample_effect
        Cells are assigned to ``n_samples`` samples (``obs['sample']``); with ``sample_effect`` > 0
        each sample thins each feature's counts by ``exp(-sample_effect * |N(0, 1)|)`` and shifts
        the embedding ``X_latent`` by ``sample_effect * N(0, 0.3)`` per dimension (a batch
        effect). These draws use their own generator, so the defaults change nothing.

    Returns
    -------
    SimulatedMultiome
        ``atac``, ``rna``, ``genes``, ``exons``, ``truth``, ``chrom_sizes``.

    Examples
    --------
    >>> sim = simulate_multiome(n_cells=200, n_peaks=2000, n_genes=200, n_linked_genes=20, seed=1)
    >>> sim.atac.shape, sim.rna.shape, len(sim.truth)
    ((200, 2000), (200, 200), 40)
    """
    _check_sizes(n_peaks, n_genes, n_cell_types=n_cell_types, n_linked_genes=n_linked_genes,
                 peaks_per_link=peaks_per_link)
    rng = np.random.default_rng(seed)
    sizes = np.linspace(60_000_000, 20_000_000, n_chromosomes).astype(int)
    chrom_sizes = {f"chr{i + 1}": int(s) for i, s in enumerate(sizes)}
    chrom_names = np.array(list(chrom_sizes))

    genes = _place_genes(rng, n_genes, chrom_sizes)
    n_genes = len(genes)
    tss = _tss(genes)
    peaks = _place_peaks(rng, genes, tss, chrom_names, sizes, n_peaks=n_peaks, n_linked_genes=n_linked_genes,
                         peaks_per_link=peaks_per_link)
    peak_names = [f"{chrom_names[c]}:{s}-{e}" for c, s, e in zip(peaks.chrom, peaks.start, peaks.end)]

    # Latent manifold: cell-type clouds around random centres.
    cell_type = rng.integers(0, n_cell_types, n_cells)
    centres = rng.normal(0, 1.0, (n_cell_types, latent_dim))
    latent = centres[cell_type] + rng.normal(0, _CLOUD_SD, (n_cells, latent_dim))
    gene_load, peak_load = _loadings(rng, n_genes, peaks, latent_dim=latent_dim, link_strength=link_strength)
    gene_base = rng.lognormal(np.log(rna_density), 1.0, n_genes)
    peak_base = rng.lognormal(np.log(atac_density), 0.6, n_peaks)
    atac_depth = rng.lognormal(0, 0.35, n_cells)
    rna_depth = rng.lognormal(0, 0.35, n_cells)
    atac_x = _poisson_counts(rng, latent, centres, peak_load, peak_base, atac_depth)
    rna_x = _poisson_counts(rng, latent, centres, gene_load, gene_base, rna_depth)

    type_names = np.array(CELL_TYPE_NAMES[:n_cell_types])
    # Optional extras draw from their own generator: the outputs of existing seeds stay the same.
    extra = np.random.default_rng([seed, 20])
    group_truth = SimulatedMultiome.__dataclass_fields__["group_truth"].default_factory()
    if n_group_links:
        atac_x, rna_x, group_truth = _plant_group_links(
            extra, atac_x, rna_x, n_group_links, latent - centres[cell_type], cell_type, type_names,
            (peaks.chrom, peaks.centre, peaks.origin, peak_load, atac_depth), (genes, tss, gene_load, rna_depth),
            np.asarray(peak_names, dtype=object), chrom_names,
        )
    sample = extra.integers(0, n_samples, n_cells) if n_samples > 1 else np.zeros(n_cells, dtype=np.int64)
    if sample_effect > 0:
        atac_x, rna_x = (_thin_by_sample(extra, x, sample, n_samples, sample_effect) for x in (atac_x, rna_x))
        latent = latent + sample_effect * extra.normal(0, 0.3, (n_samples, latent_dim))[sample]

    peak_var = pd.DataFrame(
        {"chrom": chrom_names[peaks.chrom], "start": peaks.start.astype(np.int64), "end": peaks.end.astype(np.int64)},
        index=peak_names,
    )
    atac, rna = _paired_anndata(atac_x, rna_x, latent, type_names, cell_type, sample if n_samples > 1 else None,
                                peak_var=peak_var, gene_names=genes["gene_name"].to_numpy())
    truth = _planted_truth(peaks, peak_names, genes, tss)
    logger.info(
        "simulated %d cells x %d peaks (%.1f%% nonzero) x %d genes (%.1f%% nonzero), %d planted links",
        n_cells, n_peaks, 100 * atac_x.nnz / (n_cells * n_peaks), n_genes,
        100 * rna_x.nnz / (n_cells * n_genes), len(truth),
    )
    return SimulatedMultiome(atac, rna, genes, _make_exons(rng, genes), truth, chrom_sizes, group_truth)


# ---------------------------------------------------------------------------------------------
# The steps of simulate_multiome, in the order they draw from the generator (the order is part of
# the data of a seed: reordering the draws changes every simulated matrix).


def _check_sizes(n_peaks: int, n_genes: int, *, n_cell_types: int, n_linked_genes: int, peaks_per_link: int) -> None:
    """Refuse more cell types than names, or more planted links than the peaks and genes hold."""
    if not 1 <= n_cell_types <= len(CELL_TYPE_NAMES):
        raise ValueError(f"n_cell_types={n_cell_types} must be between 1 and {len(CELL_TYPE_NAMES)}.")
    if n_linked_genes * peaks_per_link > n_peaks // 2 or n_linked_genes > n_genes:
        raise ValueError(
            f"n_linked_genes={n_linked_genes} x peaks_per_link={peaks_per_link} needs more peaks/genes; "
            f"use at most {min(n_genes, n_peaks // (2 * peaks_per_link))} linked genes."
        )


@dataclass
class _PeakSet:
    """The simulated peaks sorted by position, and the planted links they carry."""

    chrom: np.ndarray  # chromosome number of each peak
    centre: np.ndarray
    origin: np.ndarray  # the planted link of each peak (an index of link_gene), -1 for none
    linked_genes: np.ndarray  # the genes with planted links, sorted
    link_gene: np.ndarray  # the gene of each planted link

    @property
    def start(self) -> np.ndarray:
        """Peak starts: peaks are 501 bp wide."""
        return self.centre - 250

    @property
    def end(self) -> np.ndarray:
        """Peak ends (half-open)."""
        return self.centre + 251


def _place_peaks(rng, genes: pd.DataFrame, tss: np.ndarray, chrom_names: np.ndarray, sizes: np.ndarray, *,
                 n_peaks: int, n_linked_genes: int, peaks_per_link: int) -> _PeakSet:
    """Planted linked peaks near linked genes, promoter peaks, and background, sorted and spaced."""
    n_genes = len(genes)
    linked_genes = np.sort(rng.choice(n_genes, n_linked_genes, replace=False))
    link_gene = np.repeat(linked_genes, peaks_per_link)
    link_offset = rng.integers(10_000, 200_000, link_gene.size) * rng.choice([-1, 1], link_gene.size)
    n_promoter = min(n_genes, (n_peaks - link_gene.size) // 4)
    promoter_gene = np.sort(rng.choice(n_genes, n_promoter, replace=False))
    n_background = n_peaks - link_gene.size - n_promoter
    bg_chrom = rng.choice(len(chrom_names), n_background, p=sizes / sizes.sum())
    bg_pos = (rng.random(n_background) * (sizes[bg_chrom] - 400_000) + 200_000).astype(np.int64)
    gene_chrom_idx = pd.Index(chrom_names).get_indexer(genes["chrom"])
    peak_chrom = np.concatenate([gene_chrom_idx[link_gene], gene_chrom_idx[promoter_gene], bg_chrom])
    peak_centre = np.concatenate([tss[link_gene] + link_offset, tss[promoter_gene], bg_pos])
    peak_centre = np.clip(peak_centre, 1_000, sizes[peak_chrom] - 1_000)
    origin = np.concatenate([np.arange(link_gene.size), np.full(n_promoter + n_background, -1)])

    order = np.lexsort((peak_centre, peak_chrom))
    peak_chrom, peak_centre, origin = peak_chrom[order], peak_centre[order], origin[order]
    # Keep peaks 501 bp wide and at least 100 bp apart, as called peak sets are.
    for c in np.unique(peak_chrom):
        sel = np.flatnonzero(peak_chrom == c)
        spaced = peak_centre[sel] - np.arange(sel.size) * 600
        peak_centre[sel] = np.maximum.accumulate(spaced) + np.arange(sel.size) * 600
    return _PeakSet(peak_chrom, peak_centre, origin, linked_genes, link_gene)


def _loadings(rng, n_genes: int, peaks: _PeakSet, *, latent_dim: int,
              link_strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Latent loadings of genes and peaks: a share of the features responds to the latent; a
    linked peak shares its gene's loading (times ``link_strength``, plus a little noise)."""
    n_peaks = len(peaks.origin)
    gene_load = rng.normal(0, 0.9, (n_genes, latent_dim)) * (rng.random((n_genes, 1)) < 0.5)
    gene_load[peaks.linked_genes] = rng.normal(0, 0.9, (len(peaks.linked_genes), latent_dim))
    peak_load = rng.normal(0, 0.8, (n_peaks, latent_dim)) * (rng.random((n_peaks, 1)) < 0.4)
    is_linked = peaks.origin >= 0
    peak_load[is_linked] = link_strength * gene_load[peaks.link_gene[peaks.origin[is_linked]]] + rng.normal(
        0, 0.15, (int(is_linked.sum()), latent_dim)
    )
    return gene_load, peak_load


def _poisson_counts(rng, latent: np.ndarray, centres: np.ndarray, load: np.ndarray, base: np.ndarray,
                    depth: np.ndarray) -> sp.csr_matrix:
    """Cells x features Poisson counts around ``depth * base * exp(latent @ load)``, centred so a
    feature's mean rate stays near ``base``; drawn 2,048 cells at a time."""
    n_cells = len(latent)
    blocks = []
    for start in range(0, n_cells, 2048):
        stop = min(start + 2048, n_cells)
        signal = latent[start:stop] @ load.T
        signal -= 0.5 * (load**2).sum(1) * _CLOUD_SD**2 + 0.5 * (load @ centres.T).var(1)
        rate = depth[start:stop, None] * base[None, :] * np.exp(signal)
        blocks.append(sp.csr_matrix(rng.poisson(np.minimum(rate, 50.0)).astype(np.int32)))
    return sp.vstack(blocks, format="csr")


def _paired_anndata(atac_x: sp.csr_matrix, rna_x: sp.csr_matrix, latent: np.ndarray, type_names: np.ndarray,
                    cell_type: np.ndarray, sample: np.ndarray | None, *, peak_var: pd.DataFrame,
                    gene_names: np.ndarray) -> tuple[ad.AnnData, ad.AnnData]:
    """The ATAC and RNA AnnData of the same cells: ``cell_type``, ``lineage`` (and ``sample``) in
    obs, ``n_fragment`` in the ATAC obs, the latent positions in ``obsm['X_latent']``."""
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(type_names[cell_type], categories=type_names),
            "lineage": pd.Categorical([LINEAGE_OF[t] for t in type_names[cell_type]]),
        },
        index=[f"cell{i:06d}-1" for i in range(len(cell_type))],
    )
    if sample is not None:
        obs["sample"] = pd.Categorical([f"S{i + 1}" for i in sample])
    atac_obs = obs.copy()
    atac_obs["n_fragment"] = np.asarray(atac_x.sum(1)).ravel().astype(np.int64)
    atac = ad.AnnData(X=atac_x, obs=atac_obs, var=peak_var)
    atac.obsm["X_latent"] = latent.astype(np.float32)
    rna = ad.AnnData(X=rna_x, obs=obs.copy(), var=pd.DataFrame(index=gene_names))
    rna.obsm["X_latent"] = latent.astype(np.float32)
    return atac, rna


def _planted_truth(peaks: _PeakSet, peak_names: list[str], genes: pd.DataFrame, tss: np.ndarray) -> pd.DataFrame:
    """The planted links: ``peak, gene, distance`` (peak centre - TSS)."""
    linked_peak_idx = np.flatnonzero(peaks.origin >= 0)
    truth_gene = peaks.link_gene[peaks.origin[linked_peak_idx]]
    return pd.DataFrame(
        {
            "peak": np.asarray(peak_names, dtype=object)[linked_peak_idx],
            "gene": genes["gene_name"].to_numpy()[truth_gene],
            "distance": peaks.centre[linked_peak_idx] - tss[truth_gene],
        }
    )


def _replace_columns(x: sp.csr_matrix, columns: np.ndarray, values: np.ndarray) -> sp.csr_matrix:
    """``x`` with ``columns`` replaced by the dense ``values`` (cells x len(columns))."""
    x = x.tocsr(copy=True)
    x.data[np.isin(x.indices, columns)] = 0
    x.eliminate_zeros()
    rows, local = np.nonzero(values)
    new = sp.csr_matrix((values[rows, local].astype(np.int32), (rows, columns[local])), shape=x.shape)
    return (x + new).astype(np.int32).tocsr()


def _plant_group_links(rng, atac_x, rna_x, n_links, within, cell_type, type_names, peak_info, gene_info,
                       peak_names, chrom_names):
    """Peaks and genes without loadings that co-vary within one cell type only."""
    peak_chrom, peak_centre, origin, peak_load, atac_depth = peak_info
    genes, tss, gene_load, rna_depth = gene_info
    free_peaks = (origin < 0) & ~(peak_load != 0).any(1)
    free_genes = np.flatnonzero(~(gene_load != 0).any(1))
    gene_chrom = pd.Index(chrom_names).get_indexer(genes["chrom"])
    rows, used = [], set()
    for gene in rng.permutation(free_genes):
        offset = np.abs(peak_centre - tss[gene])
        near = np.flatnonzero(free_peaks & (peak_chrom == gene_chrom[gene]) & (offset >= 10_000) & (offset <= 200_000))
        near = [p for p in near if p not in used]
        if not near:
            continue
        peak = int(rng.choice(near))
        used.add(peak)
        rows.append((peak, int(gene), len(rows) % len(type_names)))
        if len(rows) == n_links:
            break
    if len(rows) < n_links:
        raise ValueError(f"n_group_links={n_links}: only {len(rows)} free peak-gene pairs; use fewer or more peaks.")
    peaks, gene_idx, group = (np.array(c) for c in zip(*rows))
    atac_new = atac_x[:, peaks].toarray()
    rna_new = rna_x[:, gene_idx].toarray()
    for j, (g, t) in enumerate(zip(group, group)):
        cells = np.flatnonzero(cell_type == t)
        # A within-type direction of the latent: its spread (sd ~1) drives both features.
        direction = rng.normal(0, 1, within.shape[1])
        u = within[cells] @ direction / (_CLOUD_SD * np.linalg.norm(direction))
        shared = np.exp(u - 0.5)
        atac_new[cells, j] = rng.poisson(atac_depth[cells] * 0.4 * shared)
        rna_new[cells, j] = rng.poisson(rna_depth[cells] * 1.0 * shared)
    truth = pd.DataFrame({"peak": peak_names[peaks], "gene": genes["gene_name"].to_numpy()[gene_idx],
                          "group": type_names[group], "distance": peak_centre[peaks] - tss[gene_idx]})
    return _replace_columns(atac_x, peaks, atac_new), _replace_columns(rna_x, gene_idx, rna_new), truth


def _thin_by_sample(rng, x, sample, n_samples, effect):
    """Binomial thinning of every (sample, feature) by its own factor: a per-sample feature effect."""
    factor = np.exp(-effect * np.abs(rng.normal(0, 1, (n_samples, x.shape[1]))))
    x = x.tocsr(copy=True)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    x.data = rng.binomial(x.data, factor[sample[rows], x.indices]).astype(np.int32)
    x.eliminate_zeros()
    return x
