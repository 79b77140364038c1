"""Numbers and the QQ figure of docs/groups.md: calibration, planted recall, real PBMC 1k per group.

1. Calibration: the cells of one simulated cell type are split at random into two labels (no true
   difference) ``--permutations`` times; ``differential_links(h1, h2)`` p values are pooled, their
   share below 0.05 printed and drawn as a QQ plot against the uniform
   (``docs/figures/differential_calibration_qq.png``).
2. Planted group-specific links (``simulate_multiome(n_group_links=...)``): recall of per-group
   calling (fdr < 0.05 in the link's group) and of the differential test (link's group vs each
   other group, p < 0.05 and fdr < 0.05).
3. Real PBMC 1k (``../shared/data/pbmc_multiome_1k``, when present): coarse B / T / myeloid labels
   from marker genes, per-group links (30 x 20-cell metacells per group), link counts per group and
   the strongest differential links B vs T.

Usage:  python benchmarks/differential_report.py [--permutations 3] [--out docs/figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def calibration(p2g, n_permutations: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = p2g.datasets.simulate_multiome(n_cells=2400, n_peaks=3000, n_genes=300, n_linked_genes=20, seed=4,
                                         n_cell_types=3, n_group_links=6)
    cell_type = sim.atac.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(1)
    pooled = []
    for i in range(n_permutations):
        atac = sim.atac.copy()
        atac.obs["half"] = np.where(cell_type == cell_type[0],
                                    np.where(rng.random(cell_type.size) < 0.5, "h1", "h2"), "rest")
        links = p2g.tl.peak_to_gene(atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
                                    groupby="half", n_metacells={"h1": 100, "h2": 100, "rest": 30},
                                    k_neighbors=10, min_metacells=10, seed=int(rng.integers(1000)))
        diff = p2g.tl.differential_links(links, "h1", "h2")
        p = diff["pval"].dropna().to_numpy()
        pooled.append(p)
        print(f"permutation {i + 1}: {p.size} pairs, share p < 0.05 = {np.mean(p < 0.05):.4f}, "
              f"n_effective = {diff.attrs['n_effective']}", flush=True)
    p = np.sort(np.concatenate(pooled))
    expected = (np.arange(1, p.size + 1) - 0.5) / p.size
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    ax.plot(-np.log10(expected), -np.log10(p), ".", ms=2, color="#2166ac", label="permuted labels")
    top = -np.log10(expected[0])
    ax.plot([0, top], [0, top], "--", color="#666666", lw=0.8, label="uniform")
    ax.set_xlabel("expected -log10 p")
    ax.set_ylabel("observed -log10 p")
    ax.set_title(f"differential_links null: {np.mean(p < 0.05):.3f} at p < 0.05", fontsize=8, loc="left")
    ax.legend(fontsize=7, frameon=False)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "differential_calibration_qq.png", dpi=130, bbox_inches="tight")
    print(f"pooled: {p.size} p values, share p < 0.05 = {np.mean(p < 0.05):.4f}; "
          f"figure {out / 'differential_calibration_qq.png'}")


def planted_recall(p2g) -> None:
    sim = p2g.datasets.simulate_multiome(n_cells=1500, n_peaks=2000, n_genes=200, n_linked_genes=12, seed=5,
                                         n_group_links=9, n_cell_types=3)
    links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
                                groupby="cell_type", n_metacells=300, k_neighbors=20, min_metacells=10)
    merged = links.merge(sim.group_truth, on=["peak", "gene"], suffixes=("", "_true"))
    own = merged["group"].astype(str) == merged["group_true"]
    print(f"planted group links: recall in own group (fdr < 0.05) {np.mean(merged.loc[own, 'fdr'] < 0.05):.3f} "
          f"of {own.sum()}; significant in other groups {np.mean(merged.loc[~own, 'fdr'] < 0.05):.3f}")
    rows = []
    for group, truth in sim.group_truth.groupby("group"):
        for other in links.attrs["metacells"]:
            if other != group:
                rows.append(p2g.tl.differential_links(links, group, other).merge(truth, on=["peak", "gene"]))
    diff = pd.concat(rows)
    print(f"differential recall over {len(diff)} (link, other group) comparisons: p < 0.05 "
          f"{np.mean(diff['pval'] < 0.05):.3f}, fdr < 0.05 {np.mean(diff['fdr'] < 0.05):.3f}")


def pbmc_input(p2g, data: Path = DATA):
    """PBMC 1k ATAC (with a plain LSI in obsm['X_lsi'] and coarse B / T / myeloid labels in
    obs['coarse'] from marker genes), RNA and the hg38 genes; None when the data folder is absent."""
    import anndata as ad

    DATA = data
    if not (DATA / "pbmc_multiome_1k" / "atac.h5ad").exists():
        return None
    atac = ad.read_h5ad(DATA / "pbmc_multiome_1k" / "atac.h5ad")
    rna = ad.read_h5ad(DATA / "pbmc_multiome_1k" / "rna.h5ad")
    genes, _ = p2g.io.read_gene_annotation(DATA / "hg38" / "hg38_genes.tsv.gz")
    dense = (atac.X > 0).astype(np.float64).toarray()
    u, s, _ = np.linalg.svd(np.log1p(dense / np.maximum(dense.sum(1, keepdims=True), 1) * 1e4), full_matrices=False)
    atac.obsm["X_lsi"] = u[:, 1:11] * s[1:11]
    # Marker scores: mean log CP10k of each lineage's markers; the highest wins.
    x = rna.X.toarray().astype(np.float64)
    x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
    markers = {"B": ["MS4A1", "CD79A", "BANK1", "TCL1A"], "T": ["IL7R", "TRAC", "LEF1", "BCL11B", "CD2"],
               "myeloid": ["LYZ", "CD14", "S100A8", "VCAN", "CST3"]}
    scores = np.stack([x[:, rna.var_names.get_indexer(g)].mean(1) for g in markers.values()], axis=1)
    atac.obs["coarse"] = np.array(list(markers))[scores.argmax(1)]
    return atac, rna, genes


def pbmc(p2g) -> None:
    loaded = pbmc_input(p2g)
    if loaded is None:
        print(f"PBMC 1k: {DATA} absent, skipped")
        return
    atac, rna, genes = loaded
    print("PBMC 1k coarse labels:", atac.obs["coarse"].value_counts().to_dict())
    links = p2g.tl.peak_to_gene(atac, rna=rna, gene_annotation=genes, use_rep="X_lsi", groupby="coarse",
                                n_metacells={"B": 30, "T": 30, "myeloid": 30}, k_neighbors=20, min_metacells=10)
    for group, table in links.groupby("group", observed=True):
        print(f"  {group}: {len(table)} pairs, {int((table['fdr'] < 0.05).sum())} with fdr < 0.05, "
              f"{len(links.attrs['metacells'][group])} metacells")
    diff = p2g.tl.differential_links(links, "B", "T")
    print(f"B vs T: {len(diff)} pairs, n_effective {diff.attrs['n_effective']}; strongest:")
    print(diff.head(8)[["gene", "peak", "correlation_1", "correlation_2", "delta_r", "pval", "fdr"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3g}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--permutations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args()
    import dask
    import p2g_dask as p2g

    with dask.config.set(scheduler="synchronous"):
        calibration(p2g, args.permutations, args.out)
        planted_recall(p2g)
        pbmc(p2g)


if __name__ == "__main__":
    main()
