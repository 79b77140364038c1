"""The generative model behind ``make_atlas_store.py``: genome, planted links, cells, count draws.

Split from the script so that the numba kernels and the model can be tested on their own.
Everything is seeded: ``build_model(seed)`` fixes the features, topics and rates;
``simulate_cells`` draws the cells of each unit of ``UNIT_CELLS`` from ``(seed, unit)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
from scipy import stats

#: Cells per seeding unit: a block of cells is always a whole number of units (but the last).
UNIT_CELLS = 1_000
CELL_TYPES = {  # name: (share of PBMCs, lineage)
    "T_CD4": (0.30, "T"), "T_CD8": (0.15, "T"), "NK": (0.10, "NK"), "B": (0.12, "B"),
    "Mono_CD14": (0.20, "Myeloid"), "Mono_FCGR3A": (0.05, "Myeloid"), "DC": (0.03, "Myeloid"),
    "Platelet": (0.05, "Other"),
}
N_TOPICS, LATENT_DIM, N_CHROMOSOMES = 16, 8, 22
BP_PER_PEAK, MAX_GENOME_BP = 15_000, 1_500_000_000
WITHIN_TYPE_SD, DEPTH_SD = 0.5, 0.35  # latent spread of a cell type; log-normal depth
# Planted links: linked peaks are strong enhancers (base accessibility x LINK_BASE) and linked
# genes respond strongly to the topics (SD of their topic effects), as links ArchR finds are.
LINK_BASE, LINK_EFFECT_SD = 6.0, 1.3


@dataclass
class AtlasModel:
    """Features, planted truth and the parameters that cells are drawn from."""

    peaks: pd.DataFrame  # index "chr:start-end"; chrom, start, end (0-based, half-open)
    genes: pd.DataFrame  # gene_name, chrom, start, end, strand
    truth: pd.DataFrame  # peak, gene, distance (peak centre - TSS)
    centres: np.ndarray  # (cell types, latent dim)
    type_share: np.ndarray
    topic_map: np.ndarray  # (topics, latent dim): topic weights = softmax(topic_map @ latent)
    atac_table: np.ndarray  # (topics, peaks, 2) float32 alias tables: [threshold, alias]
    rna_table: np.ndarray
    atac_rate: float  # mean fragments per cell (depth 1)
    rna_rate: float

    @property
    def cell_type_names(self) -> list[str]:
        return list(CELL_TYPES)[: self.centres.shape[0]]

    @property
    def lineage_of(self) -> dict[str, str]:
        return {name: lineage for name, (_, lineage) in CELL_TYPES.items()}


@dataclass
class CellBlock:
    """Cells ``start:stop``: type, latent position, topic weights and draws per modality."""

    cell_type: np.ndarray
    latent: np.ndarray
    topic_weights: np.ndarray  # (cells, topics), rows sum to 1
    atac_draws: np.ndarray
    rna_draws: np.ndarray
    unit_seeds: np.ndarray  # (cells, 2) numba seeds (atac, rna), set at each unit's first cell


@numba.njit(cache=True)
def _alias_table(prob):  # pragma: no cover - jit
    """Vose's alias table of one distribution as (threshold, alias) float32 pairs."""
    n = prob.size
    scaled = prob * n / prob.sum()
    table = np.empty((n, 2), dtype=np.float32)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    n_small = n_large = 0
    for i in range(n):
        if scaled[i] < 1.0:
            small[n_small] = i
            n_small += 1
        else:
            large[n_large] = i
            n_large += 1
    while n_small and n_large:
        n_small -= 1
        s = small[n_small]
        g = large[n_large - 1]
        table[s, 0] = scaled[s]
        table[s, 1] = g
        scaled[g] = scaled[g] + scaled[s] - 1.0
        if scaled[g] < 1.0:
            n_large -= 1
            small[n_small] = g
            n_small += 1
    for j in range(n_large):
        table[large[j], 0] = 2.0  # always keep (thresholds are < 1)
        table[large[j], 1] = large[j]
    for j in range(n_small):  # rounding leftovers
        table[small[j], 0] = 2.0
        table[small[j], 1] = small[j]
    return table


#: de Bruijn table: position of the lowest set bit of a 64-bit word (in O(1), without a loop).
_DEBRUIJN = 0x03F79D71B4CB0A89
_LOWEST_BIT = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _LOWEST_BIT[(((1 << _bit) * _DEBRUIJN) % 2**64) >> 58] = _bit


@numba.njit(cache=True, nogil=True)
def _draw_kernel(unit_seeds, n_draws, topic_weights, table, lowest_bit, indices, data, row_nnz):  # pragma: no cover
    n_topics, n_features = table.shape[0], table.shape[1]
    # Per-cell scratch: a dense count per feature and a bitmap of the features hit (in L1/L2),
    # so a row comes out sorted by scanning the bitmap, without sorting the draws.
    counts = np.zeros(n_features, dtype=np.int32)
    bitmap = np.zeros(n_features // 64 + 1, dtype=np.uint64)
    one, magic, shift = np.uint64(1), np.uint64(_DEBRUIJN), np.uint64(58)
    write = 0
    for cell in range(n_draws.size):
        if unit_seeds[cell] >= 0:
            np.random.seed(unit_seeds[cell])  # numba's thread-local generator, per unit
        left, mass = n_draws[cell], 1.0
        for k in range(n_topics):
            # Topic counts as a multinomial by conditional binomials; then draws stay in one
            # topic's alias table (cache friendly) instead of jumping between topics.
            if left == 0:
                break
            weight = topic_weights[cell, k]
            c = left if k == n_topics - 1 or weight >= mass else np.random.binomial(left, weight / mass)
            left -= c
            mass -= weight
            for _ in range(c):
                v = np.random.random() * n_features
                col = min(int(v), n_features - 1)
                if v - col >= table[k, col, 0]:
                    col = int(table[k, col, 1])
                counts[col] += 1
                bitmap[col >> 6] |= one << np.uint64(col & 63)
        first = write
        for w in range(bitmap.size):
            word = bitmap[w]
            if word == 0:
                continue
            bitmap[w] = 0
            while word:
                low = word & (~word + one)
                col = w * 64 + lowest_bit[(low * magic) >> shift]
                indices[write] = col
                data[write] = counts[col]
                counts[col] = 0
                write += 1
                word ^= low
        row_nnz[cell] = write - first
    return write


def draw_counts(unit_seeds: np.ndarray, n_draws: np.ndarray, topic_weights: np.ndarray, table: np.ndarray):
    """CSR rows of counts: each cell's draws pick a topic, then a feature from its alias table.

    ``unit_seeds`` holds a seed at the first cell of each unit and -1 elsewhere. Returns
    ``(indices, data, row_nnz)`` with sorted, unique column indices per row (int32).
    """
    total = int(n_draws.sum())
    indices = np.empty(total, dtype=np.int32)
    data = np.empty(total, dtype=np.int32)
    row_nnz = np.empty(n_draws.size, dtype=np.int64)
    nnz = _draw_kernel(unit_seeds, n_draws.astype(np.int64), topic_weights, table, _LOWEST_BIT,
                       indices, data, row_nnz)
    return indices[:nnz], data[:nnz], row_nnz


def _topic_weights(topic_map: np.ndarray, latent: np.ndarray) -> np.ndarray:
    logits = latent.astype(np.float64) @ topic_map.T
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _solve_rate(weights: np.ndarray, depth: np.ndarray, profiles: np.ndarray, target: float, argument: str) -> float:
    """Fragments per cell (at depth 1) whose expected nonzeros per cell equal ``target``.

    With ``Poisson(rate * depth)`` draws split over features, feature ``p`` is nonzero with
    probability ``1 - exp(-rate * depth * q_p)``; Newton from below converges monotonically
    because the expected count is concave in the rate.
    """
    n_features = profiles.shape[1]
    if not 0 < target < 0.5 * n_features:
        raise ValueError(f"{argument}={target} must lie between 0 and half the features ({n_features // 2}).")
    rate = float(target)
    for _ in range(50):
        value = slope = 0.0
        for start in range(0, depth.size, 256):  # bounded memory: 256 cells x features at a time
            expected = ((weights[start : start + 256] @ profiles) * depth[start : start + 256, None]).astype(np.float32)
            decay = np.exp(-rate * expected)
            value += float((1.0 - decay).sum())
            slope += float((expected * decay).sum())
        step = (target * depth.size - value) / slope
        rate += step
        if abs(step) < 1e-6 * rate:
            break
    return rate


def _genome(rng, n_peaks: int) -> dict[str, int]:
    genome_bp = min(MAX_GENOME_BP, max(50_000_000, n_peaks * BP_PER_PEAK))
    shares = np.linspace(250, 50, N_CHROMOSOMES)
    sizes = (shares / shares.sum() * genome_bp).astype(np.int64)
    return {f"chr{i + 1}": int(s) for i, s in enumerate(sizes)}


def _place_genes(rng, n_genes: int, chrom_sizes: dict[str, int]) -> pd.DataFrame:
    sizes = np.array(list(chrom_sizes.values()))
    chrom = rng.choice(sizes.size, n_genes, p=sizes / sizes.sum())
    length = np.clip(rng.lognormal(np.log(20_000), 0.9, n_genes), 1_000, 150_000).astype(np.int64)
    start = (50_000 + rng.random(n_genes) * (sizes[chrom] - 100_000 - length)).astype(np.int64)
    order = np.lexsort((start, chrom))
    chrom, start, length = chrom[order], start[order], length[order]
    return pd.DataFrame({
        "gene_name": [f"G{i:05d}" for i in range(n_genes)],
        "chrom": np.array(list(chrom_sizes))[chrom], "start": start, "end": start + length,
        "strand": rng.choice(np.array(["+", "-"]), n_genes),
    })


def _place_peaks(rng, n_peaks, genes, tss, chrom_sizes, n_linked_genes):
    """Linked peaks (2 per linked gene, 10-200 kb from the TSS), promoters, background; sorted."""
    names = np.array(list(chrom_sizes))
    sizes = np.array(list(chrom_sizes.values()))
    gene_chrom = pd.Index(names).get_indexer(genes["chrom"])
    linked = np.sort(rng.choice(len(genes), n_linked_genes, replace=False))
    link_gene = np.repeat(linked, 2)
    offset = rng.integers(10_000, 200_000, link_gene.size) * rng.choice([-1, 1], link_gene.size)
    n_promoter = min(len(genes), (n_peaks - link_gene.size) // 4)
    promoter_gene = rng.choice(len(genes), n_promoter, replace=False)
    n_background = n_peaks - link_gene.size - n_promoter
    bg_chrom = rng.choice(sizes.size, n_background, p=sizes / sizes.sum())
    chrom = np.concatenate([gene_chrom[link_gene], gene_chrom[promoter_gene], bg_chrom])
    centre = np.concatenate([
        tss[link_gene] + offset, tss[promoter_gene] + rng.integers(-300, 300, n_promoter),
        (rng.random(n_background) * sizes[bg_chrom]).astype(np.int64),
    ])
    centre = np.clip(centre, 1_000, sizes[chrom] - 1_000)
    kind = np.concatenate([np.arange(link_gene.size), np.full(n_promoter, -2), np.full(n_background, -1)])
    order = np.lexsort((centre, chrom))
    chrom, centre, kind = chrom[order], centre[order], kind[order]
    # Peaks 501 bp wide and >= 600 bp apart, as called peak sets are: push crowded peaks right.
    rank = np.arange(chrom.size) - np.searchsorted(chrom, chrom, side="left")
    lifted = centre + chrom * 10**12 - rank * 600
    centre = np.maximum.accumulate(lifted) - chrom * 10**12 + rank * 600
    start, end = centre - 250, centre + 251
    peaks = pd.DataFrame(
        {"chrom": names[chrom], "start": start.astype(np.int64), "end": end.astype(np.int64)},
        index=pd.Index([f"{c}:{s}-{e}" for c, s, e in zip(names[chrom], start, end)]),
    )
    return peaks, kind, link_gene


def build_model(
    n_peaks: int, n_genes: int, *, atac_nnz: float, rna_nnz: float, n_linked_genes: int, seed: int
) -> AtlasModel:
    """Genome, features, planted links, topics and rates (seeded; cells are drawn later)."""
    if n_genes < 10 or n_peaks < 100:
        raise ValueError(f"n_peaks={n_peaks} and n_genes={n_genes} are too small; use >= 100 peaks, 10 genes.")
    if not 0 <= n_linked_genes <= min(n_genes, n_peaks // 4):
        raise ValueError(f"n_linked_genes={n_linked_genes} must lie in 0..{min(n_genes, n_peaks // 4)} "
                         "(two peaks each, at most half the peaks).")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    chrom_sizes = _genome(rng, n_peaks)
    genes = _place_genes(rng, n_genes, chrom_sizes)
    tss = np.where(genes["strand"] == "-", genes["end"] - 1, genes["start"]).astype(np.int64)
    peaks, kind, link_gene = _place_peaks(rng, n_peaks, genes, tss, chrom_sizes, n_linked_genes)

    # Topic responses: half of the features vary with topics; a linked peak copies its gene's.
    gene_effect = rng.normal(0, 1, (N_TOPICS, n_genes)) * (rng.random(n_genes) < 0.5)
    gene_effect[:, link_gene] = rng.normal(0, LINK_EFFECT_SD, (N_TOPICS, link_gene.size))
    peak_effect = rng.normal(0, 1, (N_TOPICS, n_peaks)) * (rng.random(n_peaks) < 0.5)
    is_linked = kind >= 0
    peak_effect[:, is_linked] = gene_effect[:, link_gene[kind[is_linked]]] + rng.normal(
        0, 0.25, (N_TOPICS, int(is_linked.sum())))
    peak_base = rng.lognormal(0, 0.7, n_peaks) * np.where(kind >= 0, LINK_BASE, np.where(kind == -2, 3.0, 1.0))
    gene_base = rng.lognormal(0, 1.4, n_genes)
    peak_profiles = peak_base * np.exp(peak_effect)
    peak_profiles /= peak_profiles.sum(axis=1, keepdims=True)
    gene_profiles = gene_base * np.exp(gene_effect)
    gene_profiles /= gene_profiles.sum(axis=1, keepdims=True)

    n_types = len(CELL_TYPES)
    centres = rng.normal(0, 1.0, (n_types, LATENT_DIM))
    type_share = np.array([share for share, _ in CELL_TYPES.values()])
    topic_map = rng.normal(0, 1.5 / np.sqrt(LATENT_DIM), (N_TOPICS, LATENT_DIM))
    # Calibration cells: exact cell-type shares and depth quantiles, so that the rates hit the
    # targets closely without simulating many cells.
    n_cal = 1024
    cal_rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    cal_type = np.repeat(np.arange(n_types), np.round(type_share / type_share.sum() * n_cal).astype(int))
    cal_latent = centres[cal_type] + cal_rng.normal(0, WITHIN_TYPE_SD, (cal_type.size, LATENT_DIM))
    cal_depth = np.exp(-(DEPTH_SD**2) / 2 + DEPTH_SD * stats.norm.ppf((np.arange(cal_type.size) + 0.5) / cal_type.size))
    cal_depth = cal_rng.permutation(cal_depth)
    weights = _topic_weights(topic_map, cal_latent)
    atac_rate = _solve_rate(weights, cal_depth, peak_profiles, atac_nnz, "atac_nnz")
    rna_rate = _solve_rate(weights, cal_depth, gene_profiles, rna_nnz, "rna_nnz")

    linked_idx = np.flatnonzero(is_linked)
    truth_gene = link_gene[kind[linked_idx]]
    centre = (peaks["start"].to_numpy() + peaks["end"].to_numpy()) // 2
    truth = pd.DataFrame({
        "peak": peaks.index.to_numpy()[linked_idx], "gene": genes["gene_name"].to_numpy()[truth_gene],
        "distance": centre[linked_idx] - tss[truth_gene],
    })
    return AtlasModel(
        peaks, genes, truth, centres, type_share, topic_map,
        np.stack([_alias_table(p) for p in peak_profiles]), np.stack([_alias_table(p) for p in gene_profiles]),
        atac_rate, rna_rate,
    )


def _draw_unit_cells(rng, n, centres, type_share):
    cell_type = rng.choice(centres.shape[0], n, p=type_share / type_share.sum())
    latent = centres[cell_type] + rng.normal(0, WITHIN_TYPE_SD, (n, centres.shape[1]))
    depth = rng.lognormal(-(DEPTH_SD**2) / 2, DEPTH_SD, (2, n))  # mean 1: ATAC and RNA depth
    return cell_type, latent, depth[0], depth[1]


def simulate_cells(model: AtlasModel, start: int, stop: int, seed: int) -> CellBlock:
    """Cells ``start:stop`` (``start`` a multiple of ``UNIT_CELLS``), each unit from ``(seed, unit)``."""
    if start % UNIT_CELLS:
        raise ValueError(f"start={start} must be a multiple of {UNIT_CELLS}.")
    parts = []
    for unit_start in range(start, stop, UNIT_CELLS):
        n = min(UNIT_CELLS, stop - unit_start)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, unit_start // UNIT_CELLS]))
        cell_type, latent, atac_depth, rna_depth = _draw_unit_cells(rng, n, model.centres, model.type_share)
        seeds = np.full((n, 2), -1, dtype=np.int64)
        seeds[0] = rng.integers(0, 2**31 - 1, 2)
        parts.append((cell_type, latent, rng.poisson(model.atac_rate * atac_depth),
                      rng.poisson(model.rna_rate * rna_depth), seeds))
    cell_type, latent, atac_draws, rna_draws, seeds = (np.concatenate(p) for p in zip(*parts))
    weights = _topic_weights(model.topic_map, latent)
    return CellBlock(cell_type.astype(np.int16), latent.astype(np.float32), weights, atac_draws, rna_draws, seeds)
