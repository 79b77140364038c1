"""Write (and execute) ``peak_to_gene_tutorial.ipynb`` from the cells below.

Usage::

    python notebooks/make_tutorial.py              # write the notebook and execute it (~1-2 min)
    python notebooks/make_tutorial.py --no-execute # write it without outputs

The notebook is executed in a temporary folder, so its outputs (store, BigWigs, links files) never
land in the repository; only the notebook with its printed outputs and figures is saved.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "peak_to_gene_tutorial.ipynb"

# (kind, source) pairs: "md" for markdown, "code" for code.
CELLS: list[tuple[str, str]] = [
    ("md", """\
# Peak-to-gene links with p2g_dask

This tutorial runs the whole p2g_dask workflow on simulated paired scATAC + scRNA data (the same
offline demo data as `p2g demo`), so it needs no download and finishes in about a minute:

1. simulate a multiome data set with planted peak-gene links;
2. write it into a chunked Zarr **store** (out of core from then on);
3. embed the cells with **iterative LSI** (ArchR's `addIterativeLSI`);
4. link peaks to genes with **`peak_to_gene`** on a Dask `LocalCluster` (ArchR's
   `addPeak2GeneLinks`);
5. summarise the links, keep the confident ones with **`filter_links`** (ArchR's
   `getPeak2GeneLinks`) and tabulate them per gene and per peak;
6. look at the links of **marker genes**;
7. build one coverage **BigWig** per cell type from a fragment file;
8. draw **browser tracks** and the peak-to-gene **heatmap**, and export the links for genome browsers;
9. do the same from a **MuData** (`.h5mu`), the scverse container of paired modalities, and
   without RNA, from **gene scores** (ArchR's GeneScoreMatrix) made from the fragments;
   compute links **per cell type** with a differential test between two types;
10. (guarded, not run here) the same steps on the real **10x PBMC 10k multiome** data.

The simulator plants known links, so we can check how many the pipeline recovers."""),
    ("code", """\
%matplotlib inline
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

import p2g_dask as p2g
from p2g_dask.cluster import close_cluster, dashboard_link, start_cluster

# Warnings only; set level=logging.INFO to see every step start and finish with its duration.
logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", level=logging.WARNING)
p2g.pl.plot_set()                          # clean publication style for all figures
OUT = Path("p2g_tutorial_out")             # everything this notebook writes goes here
OUT.mkdir(exist_ok=True)
started = time.perf_counter()
print("p2g_dask", p2g.__version__)"""),
    ("md", """\
## 1. Simulated multiome data

`simulate_multiome` draws cells of six cell types (in three lineages) on a latent manifold and
counts for peaks and genes, with some peaks planted to drive a nearby gene. It returns both
modalities as AnnData (ATAC: cells x peaks, RNA: cells x genes, raw integer counts), the gene and
exon annotation (0-based half-open), the planted links and the chromosome sizes."""),
    ("code", """\
sim = p2g.datasets.simulate_multiome(n_cells=2500, n_peaks=20_000, n_genes=2000, seed=1)
atac, rna = sim.atac, sim.rna
print(atac)
print(rna)
print(f"{len(sim.truth)} planted links on {sim.truth['gene'].nunique()} genes")
atac.obs.head()"""),
    ("code", "sim.genes.head()"),
    ("md", """\
## 2. A chunked on-disk store

`p2g.io.ingest` writes both modalities into one Zarr store, CSR chunked by cell rows. Every later
step reads it chunk by chunk, so the data never has to fit in memory. `ingest` also accepts
`.h5ad` paths, a MuData / `.h5mu` (section 9) and Cell Ranger ARC's `filtered_feature_bc_matrix.h5`."""),
    ("code", """\
store = p2g.io.ingest(atac, rna, OUT / "demo.zarr", overwrite=True)
store"""),
    ("code", """\
# The store's matrices are lazy dask arrays of scipy CSR row chunks.
store.atac.X"""),
    ("md", """\
## 3. A Dask cluster and the iterative LSI embedding

`start_cluster("local", ...)` starts a `distributed.LocalCluster` and returns its client (the same
call takes `"slurm"` or `"address"`, see `docs/cluster.md`). Every p2g step uses the current
client; open the dashboard link to watch the `p2g-*` task groups while a step runs. Here: 2
single-threaded workers in this process (`processes=False` starts fastest in a notebook; leave the
default `processes=True` for real data)."""),
    ("code", """\
client = start_cluster("local", n_workers=2, threads_per_worker=1, processes=False)
print("Dask dashboard:", dashboard_link(client))"""),
    ("code", """\
embedding = p2g.tl.iterative_lsi(store, n_components=30, iterations=2, var_features=10_000,
                                 sample_cells_pre=10_000, depth_col="n_fragment", seed=1,
                                 overwrite=True)
print("X_iterative_lsi:", embedding.shape, "(cells x kept components), stored in", sorted(store.atac.obsm))"""),
    ("md", """\
## 4. Peak-to-gene links

Metacells of the nearest cells in the embedding (overlapping ones dropped), metacell counts
scaled to 10,000 and log2-transformed, then the Pearson correlation of every peak with every gene
whose TSS lies within 250 kb of the peak centre, its p value and the Benjamini-Hochberg FDR over
all tested pairs. One row per tested pair.

ArchR's defaults, 500 metacells of 100 cells, suit ~10,000 cells or more. On these 2,500 cells
each cell would sit in 20 metacells: near-copies of each other, whose correlations look stronger
than they are, and `peak_to_gene` would warn. The package's rule for small data (the README's
*Small data*; `p2g demo` uses it too) is `cells / 10` metacells of 20 cells: 250 x 20 here."""),
    ("code", """\
links = p2g.tl.peak_to_gene(store, gene_annotation=sim.genes, use_rep="X_iterative_lsi",
                            n_metacells=250, k_neighbors=20, max_distance=250_000, seed=1,
                            client=client)
print(f"{len(links):,} pairs tested; {(links.fdr < 0.05).sum():,} at FDR < 0.05; "
      f"{links.attrs['metacells'].shape[0]} metacells kept")
links.head()"""),
    ("code", """\
# The parameters and the metacell membership travel with the table (and into links.parquet).
print(links.attrs["params"])
print("timings (s):", {k: round(v, 2) for k, v in links.attrs["timings"].items()})"""),
    ("code", """\
# The planted links are known here: how many does the pipeline find?
significant = set(zip(*links.loc[links.fdr < 0.05, ["peak", "gene"]].T.values))
planted = set(zip(sim.truth.peak, sim.truth.gene))
print(f"recall {len(significant & planted) / len(planted):.2f} "
      f"({len(significant & planted)} of {len(planted)} planted links at FDR < 0.05)")"""),
    ("md", """\
## 5. Summaries, ArchR's filter and tidy per-gene / per-peak tables

`plot_link_summary` draws the correlation histogram of all pairs and the significant ones, the
signed distance peak centre - TSS of the significant links, and the number of links per gene."""),
    ("code", "fig, axes = p2g.pl.plot_link_summary(links, fdr_cutoff=0.05)"),
    ("md", """\
With hundreds of metacells even weak correlations are significant (a fifth of all pairs here
pass FDR < 0.05, because the cell types differ in many peaks and genes at once). This is why
ArchR also asks for a strong correlation. The same summary with ArchR's cut-offs:"""),
    ("code", "fig, axes = p2g.pl.plot_link_summary(links, fdr_cutoff=1e-4, cor_cutoff=0.45)"),
    ("md", """\
ArchR users never read the raw pair table: `getPeak2GeneLinks` keeps the confident links.
`p2g.tl.filter_links` applies the same rule with the same defaults: keep a pair when
`abs(correlation) >= 0.45` and `fdr <= 1e-4`, then `var_q_atac > 0.25` and `var_q_rna > 0.25`
(the peak's and gene's variance quantiles across metacells; either cut-off may be `None`).
A NaN correlation (a constant feature) never passes. Negative links pass too, because they are
real biology (e.g. repressors); `positive_only=True` keeps only the positive ones."""),
    ("code", """\
confident = p2g.tl.filter_links(links)                          # ArchR's defaults
positive = p2g.tl.filter_links(links, positive_only=True)
print(f"{len(confident):,} links pass ArchR's filter, {len(positive):,} of them positive")
print("cut-offs recorded in attrs:", confident.attrs["filter_links"])
confident.sort_values("correlation", ascending=False).head()"""),
    ("code", """\
per_gene = p2g.tl.links_per_gene(confident)   # n_links, max_correlation, strongest_r, nearest_distance
per_peak = p2g.tl.links_per_peak(confident)
print(f"{len(per_gene)} genes and {len(per_peak)} peaks have confident links")
per_gene.head(10)"""),
    ("code", "per_peak.head()"),
    ("md", """\
## 6. Links of marker genes

Marker genes are found here in the simplest way: per cell type, the gene with the largest
difference in mean log-normalised expression against all other cells. Their confident links
show which peaks drive them."""),
    ("code", """\
import scipy.sparse as sp

counts = sp.csr_matrix(rna.X, dtype=np.float64)
lognorm = sp.diags(1e4 / np.maximum(counts.sum(axis=1).A1, 1)) @ counts
lognorm.data = np.log1p(lognorm.data)
cell_type = rna.obs["cell_type"].astype(str).to_numpy()
markers = {}
for ct in sorted(set(cell_type)):
    inside = lognorm[cell_type == ct].mean(axis=0).A1
    outside = lognorm[cell_type != ct].mean(axis=0).A1
    markers[ct] = rna.var_names[int(np.argmax(inside - outside))]
marker_table = pd.DataFrame({"marker": pd.Series(markers)})
marker_table = marker_table.join(per_gene, on="marker").fillna({"n_links": 0})
marker_table"""),
    ("code", """\
marker_links = confident[confident.gene.isin(list(markers.values()))]
marker_links[["gene", "peak", "distance", "correlation", "fdr"]].sort_values(["gene", "distance"])"""),
    ("md", """\
## 7. One coverage BigWig per cell type from the fragments

Real data comes with a 10x fragment file; the simulator writes one whose fragments reproduce
the ATAC counts exactly (plus background fragments outside peaks).
`pseudobulk_with_fragments` caches the fragment file as parquet, piles up Tn5 cut sites per
group and chromosome as Dask tasks, and writes one CPM-normalised BigWig per group."""),
    ("code", """\
fragments = p2g.datasets.simulate_fragments(atac, OUT / "fragments.tsv.gz", chrom_sizes=sim.chrom_sizes,
                                            seed=1, overwrite=True)
bigwigs = p2g.tl.pseudobulk_with_fragments(
    data=store, chrom_sizes=sim.chrom_sizes, groupby="cell_type",
    fragments={"demo": fragments}, bigwig_path=OUT / "bigwig", client=client,
    show_progress=False, overwrite=True)
bigwigs"""),
    ("md", """\
## 8. Browser tracks, heatmap, exports

`plot_peak2gene` draws one locus ArchR-style: coverage per group (here from the BigWigs), the
peaks, each link as an arc from the peak centre to the TSS coloured by its correlation, and the
gene models. The gene shown is the planted gene with the most confident links."""),
    ("code", """\
planted_genes = set(sim.truth.gene)
gene = next(g for g in per_gene.index if g in planted_genes)
fig, axes = p2g.pl.plot_peak2gene(store, gene=gene, links=links, gene_annotation=sim.genes,
                                  exon_annotation=sim.exons, bigwig_files=bigwigs,
                                  fdr_cutoff=1e-4, cor_cutoff=0.45)
fig.savefig(OUT / f"browser_{gene}.png")"""),
    ("code", """\
# Without fragments: the coverage rows come from the peak matrix (mean CP10k per group).
fig, axes = p2g.pl.plot_peak2gene(store, gene=gene, links=links, gene_annotation=sim.genes,
                                  exon_annotation=sim.exons, groupby="lineage")"""),
    ("md", """\
`plot_peak2gene_heatmap` is ArchR's `plotPeak2GeneHeatmap`: the confident positive links, each a
row, with the accessibility of its peak (left) and the expression of its gene (right) across the
metacells of `peak_to_gene`, rows z-scored and k-means clustered."""),
    ("code", """\
fig, axes = p2g.pl.plot_peak2gene_heatmap(store, links=links, groupby="cell_type", k=6, figsize=(8.0, 5.0))
fig.set_dpi(72)   # keeps the notebook small; fig.savefig(..., dpi=300) for print"""),
    ("code", """\
# Parquet keeps every column and attrs; the text formats are for genome browsers.
for path, fmt in [("links.parquet", "parquet"), ("links.bedpe", "bedpe"),
                  ("links.interact", "interact"), ("links.longrange", "longrange")]:
    p2g.io.write_links(confident, OUT / path, format=fmt, overwrite=True)
print((OUT / "links.interact").read_text().splitlines()[:3])
assert p2g.io.read_links(OUT / "links.parquet").attrs["filter_links"] == confident.attrs["filter_links"]"""),
    ("md", """\
## 9. MuData input

scverse users keep paired ATAC + RNA in one MuData (`.h5mu`). Every entry point that takes an
AnnData pair takes a MuData: `peak_to_gene`, `iterative_lsi`, `pseudobulk_with_fragments`, the
plots and `p2g.io.ingest`. `mod_atac="atac"` and `mod_rna="rna"` (muon's names) choose the
modalities; the cells are the barcodes the two modalities share; `use_rep` is looked up in the
ATAC modality first, then in the MuData's own `obsm`."""),
    ("code", """\
import mudata as md

md.set_options(pull_on_update=False)   # mudata >= 0.3.x: adopt the coming default, no warning
atac_mod = atac.copy()
atac_mod.obsm["X_iterative_lsi"] = store.atac.obsm["X_iterative_lsi"]   # the embedding from section 3
mdata = md.MuData({"atac": atac_mod, "rna": rna.copy()})
mdata.write(OUT / "demo.h5mu")
mdata = md.read_h5mu(OUT / "demo.h5mu")
mdata"""),
    ("code", """\
links_mu = p2g.tl.peak_to_gene(mdata, gene_annotation=sim.genes, use_rep="X_iterative_lsi",
                               n_metacells=250, k_neighbors=20, max_distance=250_000, seed=1,
                               client=client)
pd.testing.assert_frame_equal(links_mu, links)   # the same table as from the store
print("MuData links identical to the store's:", len(links_mu), "pairs")"""),
    ("code", """\
# The .h5mu file is also an input of ingest (and of the `p2g run` config: inputs.atac: demo.h5mu).
store_mu = p2g.io.ingest(OUT / "demo.h5mu", OUT / "demo_from_h5mu.zarr", overwrite=True)
print(store_mu)
same = (store_mu.atac.to_memory() != store.atac.to_memory()).nnz == 0
print("same ATAC counts as the store from the two AnnData:", same)"""),
    ("code", """\
# A modality name that is not there lists the ones that are.
try:
    p2g.tl.peak_to_gene(mdata, gene_annotation=sim.genes, mod_atac="peaks")
except ValueError as err:
    print("ValueError:", err)"""),
    ("md", """\
## 9b. ATAC-only data: gene scores instead of RNA

Most scATAC data sets have no RNA. `gene_scores` makes ArchR's GeneScoreMatrix from the fragment
file (ArchR's `addGeneScoreMatrix` model and defaults: Tn5 insertions in 500-bp tiles, capped at
4 per cell, weighted by `exp(-|distance|/5000) + exp(-1)` within gene windows cut at the
neighbouring genes, each cell scaled to 10,000) and writes it into the store; `peak_to_gene`
then takes it as the gene side with `gene_obsm=`. Every rule: `docs/gene_scores.md`.

Expect these links to differ from RNA links: a gene score is made of the same fragments as the
peaks around the gene, so most nearby peaks correlate with it (closer to co-accessibility than to
regulation). Where RNA exists, prefer it."""),
    ("code", """\
scores = p2g.tl.gene_scores({"demo": fragments}, genes=sim.genes, store=store, client=client,
                            overwrite=True, show_progress=False)
print(scores)   # the modality <store>/X_gene_score (also in store.atac.obsm["X_gene_score"])
links_atac_only = p2g.tl.peak_to_gene(store, gene_obsm="X_gene_score", gene_names=scores.var.index,
                                      gene_annotation=sim.genes, use_rep="X_iterative_lsi",
                                      n_metacells=250, k_neighbors=20, seed=1, client=client)
both = pd.concat([links.set_index(["peak", "gene"])["correlation"].rename("rna"),
                  links_atac_only.set_index(["peak", "gene"])["correlation"].rename("gene_score")],
                 axis=1, join="inner").dropna()
print(f"{len(links_atac_only):,} pairs; correlation of the pairs' r, gene scores vs RNA: "
      f"{both.corr().iloc[0, 1]:.2f}")"""),
    ("md", """\
## 9c. Links per cell type, and what differs between them

`groupby="cell_type"` builds the metacells within each cell type (ArchR's rules inside the type's
cells, the number of metacells scaled to the type's size) and sums all types' metacells in the
same single pass over the store; BH and the variance quantiles are computed within each type.
`differential_links` then tests, pair by pair, whether r differs between two types (Fisher's z
with an effective number of metacells; see `docs/groups.md`)."""),
    ("code", """\
by_type = p2g.tl.peak_to_gene(store, gene_annotation=sim.genes, use_rep="X_iterative_lsi",
                              groupby="cell_type", n_metacells=500, k_neighbors=30, seed=1, client=client)
print(by_type.groupby("group", observed=True)["fdr"].apply(lambda f: int((f < 0.05).sum())))
print({group: m.shape for group, m in by_type.attrs["metacells"].items()})"""),
    ("code", """\
diff = p2g.tl.differential_links(by_type, "B", "T_CD4")
fig, ax = p2g.pl.plot_differential_links(diff, fdr_cutoff=0.05)
diff.head()"""),
    ("md", """\
## 9d. Co-accessibility and calibrated null p-values

`co_accessibility` is ArchR's `addCoAccessibility`: peak-peak correlations over the same metacells
(pass `metacells=links.attrs["metacells"]` to share them), one pass over the ATAC matrix.
`coaccessibility_loops` keeps `r >= 0.5`, one loop per pair, for export (`write_links`) and as a
second arc track of `plot_peak2gene`."""),
    ("code", """\
coaccess = p2g.tl.co_accessibility(store, metacells=links.attrs["metacells"], max_distance=100_000,
                                   client=client)
loops = p2g.tl.coaccessibility_loops(coaccess, cor_cutoff=0.5)
print(len(coaccess), "ordered peak pairs;", len(loops), "loops with r >= 0.5")
p2g.io.write_links(loops, OUT / "coaccess.bedpe", format="bedpe", overwrite=True)
fig, axes = p2g.pl.plot_peak2gene(store, gene=gene, links=links, gene_annotation=sim.genes,
                                  exon_annotation=sim.exons, groupby="lineage", coaccessibility=loops,
                                  fdr_cutoff=1e-4, cor_cutoff=0.45)"""),
    ("md", """\
How far can the t-test's FDR be trusted? Overlapping metacells share cells, so even noise is
smooth across metacells and the t-test is anti-conservative. `n_permutations=N` (cell-level
permutation of the RNA rows, all N summed in the same pass) gives a pooled `perm_fdr` that stays
calibrated; `empirical_pval=True` adds ArchR's empirical null. `plot_link_calibration` compares them."""),
    ("code", """\
links_null = p2g.tl.peak_to_gene(store, gene_annotation=sim.genes, metacells=links.attrs["metacells"],
                                 max_distance=250_000, empirical_pval=True, n_permutations=10,
                                 client=client)
print({c: int((links_null[c] < 0.05).sum()) for c in ["fdr", "emp_fdr", "perm_fdr"]})
fig, axes = p2g.pl.plot_link_calibration(links_null)"""),
    ("code", """\
close_cluster(client)
print(f"tutorial on simulated data finished in {time.perf_counter() - started:.0f} s")"""),
    ("md", """\
## 10. Real data: 10x Multiome PBMC 10k (not run here)

The same steps on the public 10x PBMC 10k multiome sample. The files come from the package's
registry (`p2g.datasets.register_datasets()`, pooch: downloaded once, hash-checked, cached;
see `docs/real_data.md`). The fragment file is several GB and peak-to-gene on 9,631 cells x
107,194 peaks takes minutes, so the cell is guarded: set `RUN_REAL_DATA = True` to run it on a
machine with network access. Use `start_cluster("local")` (worker processes) or
`start_cluster("slurm", ...)` for this size."""),
    ("code", """\
RUN_REAL_DATA = False   # True downloads ~3 GB (once) and runs the full analysis

if RUN_REAL_DATA:
    DS = p2g.datasets.register_datasets()                      # a pooch.Pooch; DS.registry lists the files
    atac10k = p2g.datasets.pbmc10k_multiome("ATAC")            # 9,631 cells x 107,194 peaks
    rna10k = p2g.datasets.pbmc10k_multiome("RNA")              # 9,631 cells x 29,095 genes
    fragments10k = p2g.datasets.pbmc10k_multiome("fragments")  # path; the .tbi is fetched next to it
    genes38, exons38 = p2g.io.read_gene_annotation(p2g.genome.hg38.annotation)   # GENCODE v41 GFF3
    if "n_fragment" not in atac10k.obs:
        atac10k.obs["n_fragment"] = np.asarray(atac10k.X.sum(axis=1)).ravel()
    client = start_cluster("local")
    print("Dask dashboard:", dashboard_link(client))
    store10k = p2g.io.ingest(atac10k, rna10k, OUT / "pbmc10k.zarr", overwrite=True)
    p2g.tl.iterative_lsi(store10k, n_components=30, iterations=2, var_features=25_000, resolution=0.5,
                         n_neighbors=30, sample_cells_pre=10_000, depth_col="n_fragment", seed=1,
                         overwrite=True)
    links10k = p2g.tl.peak_to_gene(store10k, gene_annotation=genes38, use_rep="X_iterative_lsi",
                                   n_metacells=500, k_neighbors=100, max_distance=250_000, seed=1)
    confident10k = p2g.tl.filter_links(links10k)
    print(p2g.tl.links_per_gene(confident10k).head(20))
    group_key = "cell_type"   # check atac10k.obs.columns for the shipped label column
    bigwigs10k = p2g.tl.pseudobulk_with_fragments(
        data=store10k, chrom_sizes=p2g.genome.hg38.chrom_sizes, groupby=group_key,
        fragments={"pbmc10k": fragments10k}, bigwig_path=OUT / "bigwig10k", overwrite=True)
    for marker in ["CD14", "MS4A1", "CD3D", "NKG7"]:
        fig, axes = p2g.pl.plot_peak2gene(store10k, gene=marker, links=links10k, gene_annotation=genes38,
                                          exon_annotation=exons38, bigwig_files=bigwigs10k)
    fig, axes = p2g.pl.plot_peak2gene_heatmap(store10k, links=links10k, groupby=group_key)
    close_cluster(client)
else:
    print("RUN_REAL_DATA is False: the PBMC 10k analysis was skipped (it needs the network).")"""),
]


def build() -> nbformat.NotebookNode:
    """The tutorial notebook, without outputs."""
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, *, workdir: str | Path | None = None, timeout: int = 600) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom with nbclient in ``workdir`` (a temporary folder when None)."""
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="p2g-tutorial-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(folder)}})
        client.execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-execute", action="store_true", help="write the notebook without running it")
    parser.add_argument("--out", default=str(NOTEBOOK), help="notebook path (default: %(default)s)")
    args = parser.parse_args(argv)
    nb = build()
    if not args.no_execute:
        nb = execute(nb)
    nbformat.validate(nb)
    nbformat.write(nb, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
