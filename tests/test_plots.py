"""Tests of p2g_dask.pl: figure objects checked against plain numpy/pandas recomputations."""

from __future__ import annotations

import logging
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.patches import Arc, StepPatch  # noqa: E402

import p2g_dask as p2g  # noqa: E402
from p2g_dask.pl import _tracks  # noqa: E402
from p2g_dask.pl.browser import plot_peak2gene  # noqa: E402
from p2g_dask.pl.heatmap import plot_peak2gene_heatmap  # noqa: E402
from p2g_dask.pl.style import plot_set  # noqa: E402
from p2g_dask.pl.summary import plot_link_summary  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Helpers (kept here: pyranges installs a top-level `tests` package).


def candidate_links(sim, genes: list[str], *, seed: int = 0, max_distance: int = 250_000) -> pd.DataFrame:
    """All peak-gene pairs within max_distance for ``genes``: planted ones strong and significant,
    one planted pair per gene made negative, the rest weak and not significant."""
    rng = np.random.default_rng(seed)
    var = sim.atac.var
    centre = ((var["start"] + var["end"]) // 2).to_numpy()
    truth = set(zip(sim.truth["peak"], sim.truth["gene"]))
    rows = []
    for g in sim.genes[sim.genes["gene_name"].isin(genes)].itertuples():
        tss = g.start if g.strand == "+" else g.end - 1
        near = np.flatnonzero((var["chrom"].to_numpy() == g.chrom) & (np.abs(centre - tss) <= max_distance))
        for i in near:
            planted = (var.index[i], g.gene_name) in truth
            r = rng.uniform(0.5, 0.95) if planted else rng.uniform(-0.25, 0.25)
            fdr = rng.uniform(1e-8, 1e-3) if planted else rng.uniform(0.05, 1.0)
            rows.append((var.index[i], g.gene_name, g.chrom, var["start"].iloc[i], var["end"].iloc[i], tss,
                         centre[i] - tss, r, fdr))
    links = pd.DataFrame(rows, columns=["peak", "gene", "chrom", "peak_start", "peak_end", "tss", "distance",
                                        "correlation", "fdr"])
    # A significant negative link that still passes |r| >= 0.3.
    first = links.index[links["fdr"] < 0.01][0]
    links.loc[first, "correlation"] = -0.6
    return links


def arcs_of(ax) -> list[Arc]:
    return [p for p in ax.patches if isinstance(p, Arc) and p.get_gid() == "arc"]


def arc_endpoints(arc: Arc) -> tuple[float, float, float]:
    """(left x, right x, lowest y) of an arc, from its path in data coordinates."""
    v = arc.get_patch_transform().transform(arc.get_path().vertices)
    return v[:, 0].min(), v[:, 0].max(), v[:, 1].min()


def region_of(ax) -> tuple[float, float]:
    return ax.get_xlim()


@pytest.fixture(scope="module")
def sim():
    return p2g.datasets.simulate_multiome(n_cells=400, n_peaks=4000, n_genes=400, n_linked_genes=30, seed=5)


@pytest.fixture(scope="module")
def target(sim):
    # A planted gene with two planted peaks, so its links fill the arc track.
    return sim.truth["gene"].value_counts().index[0]


@pytest.fixture(scope="module")
def links(sim, target):
    other = [g for g in sim.truth["gene"].unique() if g != target][:3]
    return candidate_links(sim, [target, *other])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------------
# plot_peak2gene


def test_plot_peak2gene__coverage_rows_equal_groups_with_mean_cp10k(sim, target, links):
    fig, axes = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes,
                               exon_annotation=sim.exons, group_by="cell_type")
    groups = [c for c in sim.atac.obs["cell_type"].cat.categories if (sim.atac.obs["cell_type"] == c).any()]
    assert len(axes["coverage"]) == len(groups)
    lo, hi = region_of(axes["genes"])
    var = sim.atac.var
    in_region = np.flatnonzero((var["chrom"] == links.loc[links.gene == target, "chrom"].iloc[0]).to_numpy()
                               & (var["end"].to_numpy() > lo) & (var["start"].to_numpy() < hi))
    dense = sim.atac.X.toarray().astype(float)
    cp10k = dense / dense.sum(axis=1, keepdims=True) * 1e4
    ylims = set()
    for ax, group in zip(axes["coverage"], groups):
        bars = [p for p in ax.patches if p.get_gid() == f"coverage:{group}"]
        assert len(bars) == len(ax.patches) == in_region.size
        cells = (sim.atac.obs["cell_type"] == group).to_numpy()
        expected = cp10k[cells][:, in_region].mean(axis=0)
        np.testing.assert_allclose([b.get_height() for b in bars], expected, rtol=1e-10)
        np.testing.assert_array_equal([b.get_x() for b in bars], var["start"].to_numpy()[in_region])
        np.testing.assert_array_equal([b.get_width() for b in bars],
                                      (var["end"] - var["start"]).to_numpy()[in_region])
        ylims.add(ax.get_ylim())
    assert len(ylims) == 1  # one shared y scale


def test_plot_peak2gene__arcs_are_passing_links_from_peak_centre_to_tss(sim, target, links):
    fdr_cutoff, cor_cutoff = 0.01, 0.3
    fig, axes = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes,
                               exon_annotation=sim.exons, group_by="lineage", fdr_cutoff=fdr_cutoff,
                               cor_cutoff=cor_cutoff)
    mine = links[links["gene"] == target]
    passing = mine[(mine["fdr"] <= fdr_cutoff) & (mine["correlation"].abs() >= cor_cutoff)]
    arcs = arcs_of(axes["links"])
    assert len(arcs) == len(passing) >= 2
    centres = ((passing["peak_start"] + passing["peak_end"]) // 2).to_numpy()
    expected = sorted(zip(np.minimum(centres, passing["tss"]), np.maximum(centres, passing["tss"])))
    got = sorted((round(a), round(b)) for a, b, _ in map(arc_endpoints, arcs))
    assert got == [(int(a), int(b)) for a, b in expected]
    # ArchR geometry: depth proportional to half-width, the widest arc reaching R_MAX.
    rx = np.array([(b - a) / 2 for a, b, _ in map(arc_endpoints, arcs)])
    depth = -np.array([y for _, _, y in map(arc_endpoints, arcs)])
    np.testing.assert_allclose(depth, _tracks.R_MAX * rx / rx.max(), rtol=1e-9)
    # Colour follows the correlation on the fixed [-1, 1] diverging scale.
    cmap = plt.get_cmap("RdBu_r")
    by_width = {round(2 * r): c for r, c in zip(rx, [a.get_edgecolor() for a in arcs])}
    for row in passing.itertuples():
        width = abs(int((row.peak_start + row.peak_end) // 2) - row.tss)
        np.testing.assert_allclose(by_width[width], cmap((row.correlation + 1) / 2), atol=1e-6)
    linked = [p for p in axes["peaks"].patches if p.get_gid() == "peak-linked"]
    assert sorted(p.get_x() for p in linked) == sorted(passing["peak_start"].unique())


def test_plot_peak2gene__exon_patches_at_exon_coordinates(sim, target, links):
    fig, axes = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes,
                               exon_annotation=sim.exons, group_by="lineage")
    lo, hi = region_of(axes["genes"])
    chrom = sim.genes.set_index("gene_name").loc[target, "chrom"]
    near = sim.genes[(sim.genes["chrom"] == chrom) & (sim.genes["end"] > lo) & (sim.genes["start"] < hi)]
    assert target in set(near["gene_name"])
    for gene in near["gene_name"]:
        drawn = sorted((p.get_x(), p.get_x() + p.get_width()) for p in axes["genes"].patches
                       if p.get_gid() == f"exon:{gene}")
        table = sim.exons[sim.exons["gene_name"] == gene]
        assert drawn == sorted(zip(table["start"].astype(float), table["end"].astype(float)))
        intron = [ln for ln in axes["genes"].lines if ln.get_gid() == f"intron:{gene}"]
        row = near[near["gene_name"] == gene].iloc[0]
        assert len(intron) == 1 and list(intron[0].get_xdata()) == [row["start"], row["end"]]


def test_plot_peak2gene__chevrons_point_along_strand(sim, target, links):
    # A wide window holds genes of both strands.
    fig, axes = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes,
                               exon_annotation=sim.exons, pad_bp=600_000)
    chevrons = [c for c in axes["genes"].collections
                if isinstance(c, LineCollection) and str(c.get_gid()).startswith("chevrons:")]
    strands = {str(c.get_gid()).rsplit(":", 1)[1] for c in chevrons}
    assert strands == {"+", "-"}
    strand_of = sim.genes.set_index("gene_name")["strand"]
    for c in chevrons:
        _, gene, strand = str(c.get_gid()).split(":")
        assert strand == strand_of[gene]
        segs = c.get_segments()
        assert len(segs) >= 1
        for seg in segs:
            tip, wings = seg[1, 0], seg[[0, 2], 0]
            assert (tip > wings).all() if strand == "+" else (tip < wings).all()


def test_plot_peak2gene__without_exons_one_block_per_gene(sim, target, links):
    fig, axes = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes, group_by="lineage")
    blocks = [p for p in axes["genes"].patches if str(p.get_gid()).startswith("gene-block:")]
    assert not [p for p in axes["genes"].patches if str(p.get_gid()).startswith("exon:")]
    genes = sim.genes.set_index("gene_name")
    names = [str(p.get_gid()).split(":", 1)[1] for p in blocks]
    assert len(names) == len(set(names)) and target in names
    for p, name in zip(blocks, names):
        assert (p.get_x(), p.get_x() + p.get_width()) == (genes.loc[name, "start"], genes.loc[name, "end"])


def test_plot_peak2gene__gene_labels_do_not_overlap(sim, target, links, tmp_path):
    fig, axes = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes,
                               exon_annotation=sim.exons, pad_bp=600_000)
    fig.savefig(tmp_path / "wide.png")  # lays the text out
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in axes["genes"].texts]
    assert len(boxes) >= 3
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (axes["genes"].texts[i].get_text(), axes["genes"].texts[j].get_text())


def test_plot_peak2gene__absent_gene_raises_with_close_names(sim, links):
    name = sim.genes["gene_name"].iloc[7]
    typo = name.lower()  # e.g. 'g00007' for 'G00007': the case-insensitive match comes first
    with pytest.raises(ValueError, match=rf"gene='{typo}' is not in gene_annotation.*close names: \['{name}'"):
        plot_peak2gene(sim.atac, gene=typo, links=links, gene_annotation=sim.genes)
    with pytest.raises(ValueError, match="gene='NOPE' is not in gene_annotation \\(400 genes\\)\\. Pass"):
        plot_peak2gene(sim.atac, gene="NOPE", links=links, gene_annotation=sim.genes)


def test_plot_peak2gene__no_passing_links_draws_note_and_warns(sim, target, links, caplog):
    with caplog.at_level(logging.WARNING, logger="p2g_dask"):
        fig, axes = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes,
                                   exon_annotation=sim.exons, fdr_cutoff=1e-12)
    assert arcs_of(axes["links"]) == []
    notes = [t for t in axes["links"].texts if t.get_gid() == "note"]
    assert len(notes) == 1 and target in notes[0].get_text()
    assert any("no links" in r.getMessage() and target in r.getMessage() for r in caplog.records)
    gene = sim.genes.set_index("gene_name").loc[target]
    lo, hi = region_of(axes["genes"])
    assert (lo, hi) == (max(0, gene["start"] - 80_000), gene["end"] + 80_000)


def test_plot_peak2gene__bigwig_rows_binned_signal(sim, target, links, tmp_path):
    import pybigtools

    chrom = sim.genes.set_index("gene_name").loc[target, "chrom"]
    size = sim.chrom_sizes[chrom]
    rng = np.random.default_rng(1)
    files, truth = {}, {}
    for group in ("B", "T"):
        starts = np.sort(rng.choice(np.arange(0, size - 1000, 1000), 400, replace=False))
        values = rng.uniform(0.5, 5.0, starts.size)
        path = tmp_path / f"{group}.bw"
        pybigtools.open(str(path), "w").write(
            {chrom: size}, [(chrom, int(s), int(s) + 500, float(v)) for s, v in zip(starts, values)])
        files[group], truth[group] = str(path), (starts, values)
    fig, axes = plot_peak2gene(None, gene=target, links=links, gene_annotation=sim.genes,
                               exon_annotation=sim.exons, bigwig_files=files)
    assert len(axes["coverage"]) == 2
    lo, hi = (int(v) for v in region_of(axes["genes"]))
    for ax, group in zip(axes["coverage"], files):
        steps = [p for p in ax.patches if isinstance(p, StepPatch)]
        assert len(steps) == 1 and steps[0].get_gid() == f"coverage:{group}"
        values, edges, _ = steps[0].get_data()
        assert edges[0] == lo and edges[-1] == hi and len(values) >= 50
        per_bp = np.zeros(size)
        for s, v in zip(*truth[group]):
            per_bp[s:s + 500] = v
        # Bins of the plot as integer bp ranges; pybigtools may round bin edges by a base.
        for i in range(0, len(values), max(1, len(values) // 25)):
            a, b = int(round(edges[i])), int(round(edges[i + 1]))
            assert values[i] == pytest.approx(per_bp[a:b].mean(), abs=5.0 / (b - a) + 1e-9)


def test_bigwig_signal__matches_numpy_on_exact_bins(tmp_path):
    import pybigtools

    path = tmp_path / "x.bw"
    pybigtools.open(str(path), "w").write({"chr1": 10_000}, [("chr1", 100, 250, 2.0), ("chr1", 300, 400, 4.0)])
    edges, values = _tracks.bigwig_signal(path, "chr1", 0, 500, 5)
    per_bp = np.zeros(500)
    per_bp[100:250], per_bp[300:400] = 2.0, 4.0
    np.testing.assert_allclose(values, per_bp.reshape(5, 100).mean(axis=1))
    np.testing.assert_array_equal(edges, np.linspace(0, 500, 6))
    edges, values = _tracks.bigwig_signal(path, "chr9", 0, 500, 5)
    assert (values == 0).all()


def test_plot_peak2gene__store_input_matches_anndata(sim, target, links, tmp_path):
    from distributed import Client, LocalCluster

    store = tmp_path / "sim.zarr"
    p2g.io.ingest(sim.atac, sim.rna, store, chunk_cells=150)
    ref_fig, ref = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes, group_by="lineage")
    expected = [[b.get_height() for b in ax.containers[0]] for ax in ref["coverage"]]
    import dask

    with dask.config.set(scheduler="synchronous"):
        _, sync = plot_peak2gene(str(store), gene=target, links=links, gene_annotation=sim.genes, group_by="lineage")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster):
        _, dist = plot_peak2gene(p2g.io.open_store(store), gene=target, links=links, gene_annotation=sim.genes,
                                 group_by="lineage")
    for axes in (sync, dist):
        got = [[b.get_height() for b in ax.containers[0]] for ax in axes["coverage"]]
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        assert len(arcs_of(axes["links"])) == len(arcs_of(ref["links"]))


def test_plot_peak2gene__renders_png_headless_into_given_axes(sim, target, links, tmp_path):
    fig, ax = plt.subplots(figsize=(9, 6))
    out_fig, axes = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes,
                                   exon_annotation=sim.exons, group_by="lineage", ax=ax)
    assert out_fig is fig and ax not in fig.axes
    out = tmp_path / "browser.png"
    fig.savefig(out, dpi=80)
    image = plt.imread(out)
    assert image.shape[:2] == (480, 720) and image[..., :3].std() > 0.05


@pytest.mark.real_data("a real locus (CD8A) drawn from the GENCODE gene table and MANE exon BED")
def test_plot_peak2gene__real_pbmc_locus_with_annotation_files(shared_data, tmp_path):
    DATA = shared_data
    import anndata as ad

    atac = ad.read_h5ad(DATA / "pbmc_multiome_1k" / "atac.h5ad")
    genes = pd.read_csv(DATA / "hg38" / "hg38_genes.tsv.gz", sep="\t")
    gene = genes[genes["gene_name"] == "CD8A"].iloc[0]
    tss = gene["end"] - 1 if gene["strand"] == "-" else gene["start"]
    names = atac.var_names.to_series().str.extract(r"^(.+):(\d+)-(\d+)$")
    peaks = pd.DataFrame({"peak": atac.var_names, "chrom": names[0].to_numpy(),
                          "peak_start": names[1].astype(int).to_numpy(), "peak_end": names[2].astype(int).to_numpy()})
    near = peaks[(peaks["chrom"] == gene["#contig"])
                 & ((peaks["peak_start"] + peaks["peak_end"]) // 2 - tss).abs().le(250_000)].copy()
    assert len(near) >= 2
    near["gene"], near["tss"] = "CD8A", tss
    near["distance"] = (near["peak_start"] + near["peak_end"]) // 2 - tss
    near["correlation"] = np.linspace(0.35, 0.9, len(near))
    near["fdr"] = 1e-6
    fig, axes = plot_peak2gene(atac, gene="CD8A", links=near, gene_annotation=DATA / "hg38" / "hg38_genes.tsv.gz",
                               exon_annotation=DATA / "hg38" / "hg38_exons.bed.gz")
    assert len(arcs_of(axes["links"])) == len(near)
    exons = pd.read_csv(DATA / "hg38" / "hg38_exons.bed.gz", sep="\t")  # header '#contig start end ...'
    cd8a = exons[exons["gene_name"] == "CD8A"]
    assert len(cd8a) >= 3
    drawn = sorted((p.get_x(), p.get_x() + p.get_width()) for p in axes["genes"].patches if p.get_gid() == "exon:CD8A")
    assert drawn == sorted(zip(cd8a["start"].astype(float), cd8a["end"].astype(float)))
    fig.savefig(tmp_path / "browser_CD8A.png", dpi=100)


# ---------------------------------------------------------------------------------------------
# plot_link_summary


def test_plot_link_summary__panels_match_numpy():
    rng = np.random.default_rng(3)
    n = 3000
    links = pd.DataFrame({"gene": rng.choice([f"g{i}" for i in range(120)], n), "correlation": rng.uniform(-1, 1, n),
                          "fdr": rng.uniform(0, 0.5, n), "distance": rng.integers(-250_000, 250_001, n)})
    links.loc[:9, "correlation"] = np.nan
    fig, axes = plot_link_summary(links, fdr_cutoff=0.05, bins=40)
    r = links["correlation"].to_numpy()
    ok = np.isfinite(r)
    sig = ok & (links["fdr"].to_numpy() <= 0.05)
    edges = np.linspace(-1, 1, 41)

    def heights(ax, gid):
        return [p.get_height() for p in ax.patches if p.get_gid() == gid]

    np.testing.assert_array_equal(heights(axes[0], "hist-all"), np.histogram(r[ok], edges)[0])
    np.testing.assert_array_equal(heights(axes[0], "hist-sig"), np.histogram(r[sig], edges)[0])
    span = np.abs(links["distance"]).max() / 1e3
    np.testing.assert_array_equal(heights(axes[1], "hist-distance"),
                                  np.histogram(links["distance"][sig] / 1e3, np.linspace(-span, span, 41))[0])
    per_gene = links[sig].groupby("gene").size()
    expected = [int((per_gene == k).sum()) for k in range(1, per_gene.max() + 1)]
    assert heights(axes[2], "bar-per-gene") == expected
    assert "10 NaN" in axes[0].get_title()


def test_plot_link_summary__no_significant_link_warns(caplog):
    links = pd.DataFrame({"gene": ["a", "b"], "correlation": [0.1, 0.2], "fdr": [0.9, 0.8], "distance": [10, -10]})
    with caplog.at_level(logging.WARNING, logger="p2g_dask"):
        fig, axes = plot_link_summary(links)
    assert "no link" in caplog.text
    assert sum(p.get_height() for p in axes[2].patches) == 0


# ---------------------------------------------------------------------------------------------
# plot_peak2gene_heatmap


def knn_metacells(latent: np.ndarray, n: int, k: int, seed: int) -> np.ndarray:
    """Seed cells and their k nearest neighbours (brute force), as plain numpy."""
    rng = np.random.default_rng(seed)
    seeds = rng.choice(latent.shape[0], n, replace=False)
    d = ((latent[seeds, None, :] - latent[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def heat_links(sim):
    t = sim.truth.merge(sim.genes, left_on="gene", right_on="gene_name")
    links = pd.DataFrame({"peak": t["peak"], "gene": t["gene"], "chrom": t["chrom"],
                          "correlation": np.linspace(0.5, 0.95, len(t)), "fdr": 1e-6,
                          "var_q_atac": 0.9, "var_q_rna": 0.9})
    weak = links.iloc[:5].assign(correlation=0.2)  # fails cor_cutoff
    links = pd.concat([links, weak], ignore_index=True)
    links.attrs["metacells"] = knn_metacells(sim.atac.obsm["X_latent"], 50, 20, seed=0)
    return links


def expected_z(X, metacells: np.ndarray, cols: np.ndarray) -> np.ndarray:
    dense = np.asarray(X.toarray(), dtype=float)
    sums = dense[metacells].sum(axis=1)
    norm = np.log2(sums / sums.sum(axis=1, keepdims=True) * 1e4 + 1)[:, cols].T
    sd = norm.std(1, ddof=1, keepdims=True)
    # Constant rows (a feature without counts in any metacell) are drawn as 0.
    return np.where(sd > 0, (norm - norm.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1), 0.0)


def test_plot_peak2gene_heatmap__rows_matched_and_values_match_numpy(sim, heat_links):
    fig, axes, mats = plot_peak2gene_heatmap(sim.atac, sim.rna, links=heat_links, k=4, groupby="cell_type",
                                             return_matrices=True)
    drawn = mats["links"]
    assert len(drawn) == len(sim.truth)  # the weak copies are filtered out
    members = np.asarray(heat_links.attrs["metacells"])
    cols = mats["metacells"]
    peak_col = sim.atac.var_names.get_indexer(drawn["peak"])
    gene_col = sim.rna.var_names.get_indexer(drawn["gene"])
    np.testing.assert_allclose(mats["atac"], expected_z(sim.atac.X, members, peak_col)[:, cols], atol=1e-9)
    np.testing.assert_allclose(mats["rna"], expected_z(sim.rna.X, members, gene_col)[:, cols], atol=1e-9)
    np.testing.assert_allclose(axes["atac"].images[0].get_array(), mats["atac"])
    np.testing.assert_allclose(axes["rna"].images[0].get_array(), mats["rna"])
    assert (np.diff(drawn["cluster"].to_numpy()) >= 0).all() and drawn["cluster"].nunique() == 4
    labels = sim.atac.obs["cell_type"].astype(str).to_numpy()
    categories = list(sim.atac.obs["cell_type"].cat.categories)
    majority = []
    for m in members[cols]:
        counts = pd.Series(labels[m]).value_counts()
        top = counts[counts == counts.max()].index
        majority.append(min(top, key=categories.index))
    assert list(mats["groups"]) == majority


def test_plot_peak2gene_heatmap__seeded_reproducible_and_subsampled(sim, heat_links):
    _, _, a = plot_peak2gene_heatmap(sim.atac, sim.rna, links=heat_links, k=4, seed=7, return_matrices=True)
    _, _, b = plot_peak2gene_heatmap(sim.atac, sim.rna, links=heat_links, k=4, seed=7, return_matrices=True)
    np.testing.assert_array_equal(a["atac"], b["atac"])
    assert a["links"]["peak"].tolist() == b["links"]["peak"].tolist()
    _, _, c = plot_peak2gene_heatmap(sim.atac, sim.rna, links=heat_links, k=4, max_links=20, return_matrices=True)
    assert 16 <= len(c["links"]) <= 20


def test_plot_peak2gene_heatmap__with_peak_to_gene_links_and_png(sim, tmp_path):
    import dask

    with dask.config.set(scheduler="synchronous"):
        links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
                                    n_metacells=60, k_neighbors=20, seed=1)
    fig, axes = plot_peak2gene_heatmap(sim.atac, sim.rna, links=links, k=5, fdr_cutoff=1e-3, cor_cutoff=0.3)
    fig.savefig(tmp_path / "heatmap.png", dpi=60)
    assert (tmp_path / "heatmap.png").stat().st_size > 10_000
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in axes["atac"].texts]  # cluster numbers
    assert boxes and not any(boxes[i].overlaps(boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))
    shuffled = sim.atac[::-1].copy()
    with pytest.raises(ValueError, match="obs_names"):
        plot_peak2gene_heatmap(shuffled, sim.rna[::-1].copy(), links=links, k=5, fdr_cutoff=1e-3,
                               cor_cutoff=0.3)


def test_plot_peak2gene_heatmap__bad_inputs_name_the_fix(sim, heat_links):
    with pytest.raises(ValueError, match="cor_cutoff"):
        plot_peak2gene_heatmap(sim.atac, sim.rna, links=heat_links, cor_cutoff=0.99)
    bare = heat_links.copy()
    bare.attrs = {}
    with pytest.raises(ValueError, match="metacells"):
        plot_peak2gene_heatmap(sim.atac, sim.rna, links=bare)


# ---------------------------------------------------------------------------------------------
# Renamed arguments: the old names work for one release, with a FutureWarning naming the new one.


def _arc_peaks(axes) -> list[float]:
    return sorted(arc_endpoints(a)[0] for a in arcs_of(axes["links"]))


def test_plot_peak2gene__old_argument_names_warn_and_draw_the_same(sim, target, links):
    _, new = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes, fdr_cutoff=0.01,
                            cor_cutoff=0.3)
    # epione's names (fdr_thresh, min_abs_r, as its tutorials write them) work without a warning.
    for old, value in (("fdr_thresh", 0.01), ("min_abs_r", 0.3)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, axes = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes, **{old: value})
        assert _arc_peaks(axes) == _arc_peaks(new) and len(_arc_peaks(new)) > 0
    with pytest.warns(FutureWarning, match="atac= is renamed data="):
        _, axes = plot_peak2gene(atac=sim.atac, gene=target, links=links, gene_annotation=sim.genes)
    assert _arc_peaks(axes) == _arc_peaks(new)
    with pytest.raises(TypeError, match="pass only fdr_cutoff="):
        plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes, fdr_thresh=0.1, fdr_cutoff=0.1)


def test_plot_peak2gene__positive_only_drops_negative_arcs(sim, target, links):
    _, both = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes)
    _, positive = plot_peak2gene(sim.atac, gene=target, links=links, gene_annotation=sim.genes, positive_only=True)
    mine = links[(links["gene"] == target) & (links["fdr"] <= 0.01)]
    assert len(arcs_of(both["links"])) == int((mine["correlation"].abs() >= 0.3).sum())
    assert len(arcs_of(positive["links"])) == int((mine["correlation"] >= 0.3).sum())


def test_plot_link_summary__old_argument_names_warn(caplog):
    rng = np.random.default_rng(3)
    links = pd.DataFrame({"gene": rng.choice(list("ABC"), 300), "correlation": rng.uniform(-1, 1, 300),
                          "fdr": rng.uniform(0, 0.1, 300), "distance": rng.integers(-1e5, 1e5, 300)})
    _, new = plot_link_summary(links, fdr_cutoff=0.02, cor_cutoff=0.5)
    expected = int(((links["fdr"] <= 0.02) & (links["correlation"].abs() >= 0.5)).sum())
    for old in ({"fdr": 0.02, "cor_cutoff": 0.5}, {"fdr_cutoff": 0.02, "min_abs_r": 0.5}):
        with pytest.warns(FutureWarning, match="is renamed"):
            _, axes = plot_link_summary(links, **old)
        heights = [p.get_height() for p in axes[0].patches if p.get_gid() == "hist-sig"]
        assert sum(heights) == expected == sum(p.get_height() for p in new[0].patches if p.get_gid() == "hist-sig")


def test_plot_peak2gene_heatmap__old_order_and_names_warn_and_draw_the_same(sim, heat_links):
    _, _, new = plot_peak2gene_heatmap(sim.atac, sim.rna, links=heat_links, k=4, return_matrices=True)
    with pytest.warns(FutureWarning, match=r"\(links, atac, rna\) is the old argument order"):
        _, _, old = plot_peak2gene_heatmap(heat_links, sim.atac, sim.rna, k=4, return_matrices=True)
    np.testing.assert_array_equal(old["atac"], new["atac"])
    with pytest.warns(FutureWarning, match="fdr= is renamed fdr_cutoff="):
        _, _, old = plot_peak2gene_heatmap(sim.atac, sim.rna, links=heat_links, k=4, fdr=1e-4,
                                           return_matrices=True)
    np.testing.assert_array_equal(old["atac"], new["atac"])
    with pytest.warns(FutureWarning, match="atac= is renamed data="):
        _, _, old = plot_peak2gene_heatmap(atac=sim.atac, rna=sim.rna, links=heat_links, k=4, return_matrices=True)
    np.testing.assert_array_equal(old["atac"], new["atac"])


def test_plot_peak2gene_heatmap__cor_cutoff_is_absolute_unless_positive_only(sim, heat_links):
    negative = heat_links.assign(correlation=-heat_links["correlation"])
    negative.attrs = dict(heat_links.attrs)
    with pytest.raises(ValueError, match=r"0 links pass .*correlation >= 0.45"):
        plot_peak2gene_heatmap(sim.atac, sim.rna, links=negative, k=4)
    _, _, both = plot_peak2gene_heatmap(sim.atac, sim.rna, links=negative, k=4, positive_only=False,
                                        return_matrices=True)
    assert len(both["links"]) == len(sim.truth)  # the |r| = 0.2 copies are still dropped


# ---------------------------------------------------------------------------------------------
# plot_set


def test_plot_set__applies_style_and_logs_one_line(caplog):
    try:
        with caplog.at_level(logging.INFO, logger="p2g_dask"):
            plot_set(fontsize=11)
        assert matplotlib.rcParams["font.size"] == 11
        assert matplotlib.rcParams["axes.spines.top"] is False
        assert matplotlib.rcParams["pdf.fonttype"] == 42
        assert len([r for r in caplog.records if r.name == "p2g_dask"]) == 1
        with pytest.raises(ValueError, match="fontsize"):
            plot_set(fontsize=0)
    finally:
        matplotlib.rcdefaults()
        matplotlib.use("Agg")
