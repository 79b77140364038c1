"""Issue 13, MuData input: a MuData / .h5mu gives what the two AnnData objects give.

On simulated cells written as files here (an .h5mu made in tmp_path, no real data needed):
``peak_to_gene``, ``ingest`` and ``iterative_lsi``; the BigWigs and the browser track. Every
result is compared with the two-AnnData call and with plain numpy.
"""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import dask  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import p2g_dask as p2g  # noqa: E402

md = pytest.importorskip("mudata")

# mudata 0.3 warns about a future default on every MuData construction; not ours to act on.
pytestmark = pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning")


# ---------------------------------------------------------------------------------------------
# Helpers (kept in this file: pyranges installs a top-level `tests` package).


def tfidf_svd(x: sp.csr_matrix, n_components: int = 10) -> np.ndarray:
    """A plain LSI embedding (TF-IDF, log1p, SVD; the depth-driven first component dropped)."""
    dense = (x > 0).astype(np.float64).toarray()
    tf = dense / np.maximum(dense.sum(axis=1, keepdims=True), 1)
    idf = np.log1p(dense.shape[0] / np.maximum(dense.sum(axis=0), 1))
    u, s, _ = np.linalg.svd(np.log1p(tf * idf * 1e4), full_matrices=False)
    return (u[:, 1 : n_components + 1] * s[1 : n_components + 1]).astype(np.float64)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------------
# MuData input on simulated cells, read back from the files written here


@pytest.fixture(scope="module")
def multiome(tmp_path_factory):
    """600 simulated cells as h5ad files and an .h5mu, with a plain LSI."""
    sim = p2g.datasets.simulate_multiome(n_cells=600, n_peaks=2000, n_genes=200, n_linked_genes=20, seed=13)
    folder = tmp_path_factory.mktemp("sim_mudata_files")
    sim.atac.write_h5ad(folder / "atac.h5ad")
    sim.rna.write_h5ad(folder / "rna.h5ad")
    atac = ad.read_h5ad(folder / "atac.h5ad")
    rna = ad.read_h5ad(folder / "rna.h5ad")
    atac.obsm["X_lsi"] = tfidf_svd(atac.X)
    genes = sim.genes
    h5mu = folder / "multiome.h5mu"
    md.MuData({"atac": atac.copy(), "rna": rna.copy()}).write(h5mu)
    return SimpleNamespace(atac=atac, rna=rna, genes=genes, h5mu=h5mu, mdata=md.read_h5mu(h5mu), folder=folder)


P2G_SMALL = dict(n_metacells=100, k_neighbors=20, seed=1)


@pytest.fixture(scope="module")
def pair_links(multiome):
    with dask.config.set(scheduler="synchronous"):
        return p2g.tl.peak_to_gene(multiome.atac, rna=multiome.rna, gene_annotation=multiome.genes, use_rep="X_lsi",
                                   **P2G_SMALL)


def test_peak_to_gene__h5mu_equals_two_anndata(multiome, pair_links):
    assert set(multiome.mdata.mod) == {"atac", "rna"}  # the file round trip kept both modalities
    with dask.config.set(scheduler="synchronous"):
        got = p2g.tl.peak_to_gene(multiome.mdata, gene_annotation=multiome.genes, use_rep="X_lsi", **P2G_SMALL)
        shared = p2g.tl.peak_to_gene(multiome.mdata, gene_annotation=multiome.genes,
                                     metacells=pair_links.attrs["metacells"])
    assert len(pair_links) > 100 and pair_links["correlation"].notna().sum() > 100
    pd.testing.assert_frame_equal(got, pair_links)
    pd.testing.assert_frame_equal(shared, pair_links)
    np.testing.assert_array_equal(got.attrs["metacells"], pair_links.attrs["metacells"])
    assert got.attrs["obs_names_hash"] == pair_links.attrs["obs_names_hash"]
    assert got.attrs["params"] == pair_links.attrs["params"]


def test_peak_to_gene__h5mu_path_on_local_cluster(multiome, pair_links, local_client):
    got = p2g.tl.peak_to_gene(multiome.h5mu, gene_annotation=multiome.genes, use_rep="X_lsi", client=local_client,
                              **P2G_SMALL)
    pd.testing.assert_frame_equal(got, pair_links)


def test_peak_to_gene__mudata_use_rep_from_mudata_obsm(multiome, pair_links):
    atac = multiome.atac.copy()
    embedding = atac.obsm.pop("X_lsi")
    mdata = md.MuData({"atac": atac, "rna": multiome.rna.copy()})
    mdata.obsm["X_joint"] = embedding
    with dask.config.set(scheduler="synchronous"):
        got = p2g.tl.peak_to_gene(mdata, gene_annotation=multiome.genes, use_rep="X_joint", **P2G_SMALL)
    pd.testing.assert_frame_equal(got, pair_links)
    # The ATAC modality wins over the MuData's own obsm when both have the key.
    mdata.mod["atac"].obsm["X_joint"] = embedding[:, ::-1].copy()
    with dask.config.set(scheduler="synchronous"):
        atac_first = p2g.tl.peak_to_gene(mdata, gene_annotation=multiome.genes, use_rep="X_joint", **P2G_SMALL)
    reversed_atac = atac.copy()
    reversed_atac.obsm["X_joint"] = embedding[:, ::-1].copy()
    with dask.config.set(scheduler="synchronous"):
        want = p2g.tl.peak_to_gene(reversed_atac, rna=multiome.rna, gene_annotation=multiome.genes, use_rep="X_joint",
                                   **P2G_SMALL)
    pd.testing.assert_frame_equal(atac_first, want)


def test_peak_to_gene__mudata_cells_are_the_shared_barcodes(multiome):
    rng = np.random.default_rng(0)
    rna_cells = rng.permutation(multiome.rna.n_obs)[: multiome.rna.n_obs - 150]
    atac = multiome.atac[50:].copy()
    rna = multiome.rna[rna_cells].copy()
    mdata = md.MuData({"atac": atac.copy(), "rna": rna.copy()})
    with dask.config.set(scheduler="synchronous"):
        got = p2g.tl.peak_to_gene(mdata, gene_annotation=multiome.genes, use_rep="X_lsi", **P2G_SMALL)
        want = p2g.tl.peak_to_gene(atac, rna=rna, gene_annotation=multiome.genes, use_rep="X_lsi", **P2G_SMALL)
    shared = atac.obs_names.intersection(rna.obs_names)
    assert got.attrs["n_cells"] == shared.size < atac.n_obs
    pd.testing.assert_frame_equal(got, want)


def _store_equal(a, b) -> None:
    for name in ("atac", "rna"):
        ma, mb = getattr(a, name), getattr(b, name)
        x, y = ma.to_memory(), mb.to_memory()
        assert x.shape == y.shape and (x != y).nnz == 0 and x.dtype == y.dtype
        pd.testing.assert_frame_equal(ma.obs, mb.obs)
        pd.testing.assert_frame_equal(ma.var, mb.var)
        assert sorted(ma.obsm) == sorted(mb.obsm)
        for key in ma.obsm:
            np.testing.assert_array_equal(np.asarray(ma.obsm[key]), np.asarray(mb.obsm[key]))


def test_ingest__h5mu_equals_two_anndata(multiome):
    folder = multiome.folder
    from_pair = p2g.io.ingest(multiome.atac, multiome.rna, folder / "pair.zarr", chunk_cells=300)
    from_file = p2g.io.ingest(multiome.h5mu, folder / "h5mu.zarr", chunk_cells=300)   # ingest(h5mu, store)
    from_object = p2g.io.ingest(multiome.mdata, path=folder / "mudata.zarr", chunk_cells=300)
    _store_equal(from_pair, from_file)
    _store_equal(from_pair, from_object)
    # And the store holds the data itself: the real counts, cell for cell.
    x = from_file.atac.to_memory()
    assert (x != sp.csr_matrix(multiome.atac.X)).nnz == 0
    assert list(from_file.rna.var.index) == list(multiome.rna.var_names)
    assert list(from_file.atac.obs.index) == list(multiome.atac.obs_names)


def test_peak_to_gene__mudata_without_modality_lists_modalities(multiome):
    with pytest.raises(ValueError) as err:
        p2g.tl.peak_to_gene(multiome.mdata, gene_annotation=multiome.genes, use_rep="X_lsi", mod_atac="peaks", **P2G_SMALL)
    assert "mod_atac='peaks'" in str(err.value) and "['atac', 'rna']" in str(err.value)
    with pytest.raises(ValueError) as err:
        p2g.tl.iterative_lsi(multiome.mdata, mod_atac="peaks")
    assert "mod_atac='peaks'" in str(err.value) and "['atac', 'rna']" in str(err.value)
    with pytest.raises(ValueError) as err:
        p2g.pl.plot_peak2gene_heatmap(multiome.mdata, links=one_link_stub(), mod_rna="gex")
    assert "mod_rna='gex'" in str(err.value) and "['atac', 'rna']" in str(err.value)
    for source in (multiome.mdata, multiome.h5mu):
        for option, name in (("mod_atac", "peaks"), ("mod_rna", "gex")):
            with pytest.raises(ValueError) as err:
                p2g.io.ingest(source, path=multiome.folder / "never.zarr", **{option: name})
            assert f"'{name}'" in str(err.value) and "'atac'" in str(err.value) and "'rna'" in str(err.value)
    assert not (multiome.folder / "never.zarr").exists()


def one_link_stub() -> pd.DataFrame:
    """A one-row links table; the heatmap resolves its input before it looks at the links."""
    table = pd.DataFrame({"peak": ["chr1:100-600"], "gene": ["CD2"], "correlation": [0.9], "fdr": [1e-9],
                          "var_q_atac": [0.9], "var_q_rna": [0.9]})
    table.attrs = {"metacells": np.zeros((1, 2), dtype=np.int64)}
    return table


def test_peak_to_gene__mudata_without_rna_modality_lists_modalities(multiome):
    with pytest.raises(ValueError) as err:
        p2g.tl.peak_to_gene(multiome.mdata, gene_annotation=multiome.genes, use_rep="X_lsi", mod_rna="gex", **P2G_SMALL)
    assert "mod_rna='gex'" in str(err.value) and "['atac', 'rna']" in str(err.value)


def test_iterative_lsi__mudata_writes_into_atac_modality(multiome):
    mdata = md.read_h5mu(multiome.h5mu)
    small = dict(n_components=8, iterations=2, var_features=150, n_neighbors=15, sample_cells_pre=1000,
                 resolution=0.5, seed=2, key_added="X_ilsi")
    got = p2g.tl.iterative_lsi(mdata, **small)
    np.testing.assert_array_equal(mdata.mod["atac"].obsm["X_ilsi"], got)
    assert "X_ilsi" not in mdata.mod["rna"].obsm
    assert mdata.mod["atac"].uns["X_ilsi"]
    want = p2g.tl.iterative_lsi(multiome.atac.copy(), **small)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# MuData input to the BigWigs and the browser track (small simulated data)


@pytest.fixture(scope="module")
def sim_mudata(tmp_path_factory):
    sim = p2g.datasets.simulate_multiome(n_cells=150, n_peaks=800, n_genes=80, n_linked_genes=8, seed=4)
    folder = tmp_path_factory.mktemp("sim_mudata")
    fragments = p2g.datasets.simulate_fragments(sim.atac, folder / "fragments.tsv.gz",
                                                chrom_sizes=sim.chrom_sizes, seed=4)
    mdata = md.MuData({"atac": sim.atac.copy(), "rna": sim.rna.copy()})
    return sim, mdata, fragments, folder


def test_pseudobulk_with_fragments__mudata_input(sim_mudata):
    import pybigtools

    sim, mdata, fragments, folder = sim_mudata
    common = dict(chromsizes=sim.chrom_sizes, cluster_key="lineage", path_to_fragments={"sim": fragments},
                  executor="synchronous", show_progress=False, normalize_bigwig=False, bin_size=100)
    from_mudata = p2g.tl.pseudobulk_with_fragments(data=mdata, bigwig_path=folder / "bw_mu", **common)
    from_anndata = p2g.tl.pseudobulk_with_fragments(data=sim.atac, bigwig_path=folder / "bw_ad", **common)
    assert list(from_mudata) == list(from_anndata) == sorted(sim.atac.obs["lineage"].unique())
    for group in from_mudata:
        bw_mu, bw_ad = pybigtools.open(from_mudata[group]), pybigtools.open(from_anndata[group])
        total = 0.0
        for chrom in sim.chrom_sizes:
            records = list(bw_mu.records(chrom))
            assert records == list(bw_ad.records(chrom))
            # Each 100-bp bin holds its insertion count; equal neighbouring bins share one record.
            total += sum(value * (end - start) / 100 for start, end, value in records)
        # Raw cut sites: 2 per fragment, so at least 2 per in-peak count of the group's cells
        # (the simulated background fragments add up to ~5 % more).
        in_peaks = 2 * int(sim.atac.X[(sim.atac.obs["lineage"] == group).to_numpy()].sum())
        assert in_peaks <= total <= 1.2 * in_peaks
    with pytest.raises(ValueError, match="'atac', 'rna'"):
        p2g.tl.pseudobulk_with_fragments(data=mdata, bigwig_path=folder / "bw_bad", mod_atac="peaks",
                                         **common)


def test_plot_peak2gene__mudata_input_draws_as_anndata(sim_mudata):
    sim, mdata, _, _ = sim_mudata
    with dask.config.set(scheduler="synchronous"):
        links = p2g.tl.peak_to_gene(mdata, gene_annotation=sim.genes, use_rep="X_latent", n_metacells=40,
                                    k_neighbors=15)
    gene = sim.truth["gene"].value_counts().index[0]
    kw = dict(gene=gene, links=links, gene_annotation=sim.genes, exon_annotation=sim.exons, group_by="lineage",
              fdr_cutoff=0.5, cor_cutoff=0.0)
    fig_mu, axes_mu = p2g.pl.plot_peak2gene(mdata, **kw)
    fig_ad, axes_ad = p2g.pl.plot_peak2gene(sim.atac, **kw)
    groups = sorted(sim.atac.obs["lineage"].unique())
    assert len(axes_mu["coverage"]) == len(groups)
    for ax_mu, ax_ad, group in zip(axes_mu["coverage"], axes_ad["coverage"], groups):
        heights_mu = [p.get_height() for p in ax_mu.patches if p.get_gid() == f"coverage:{group}"]
        heights_ad = [p.get_height() for p in ax_ad.patches if p.get_gid() == f"coverage:{group}"]
        assert len(heights_mu) > 0
        np.testing.assert_array_equal(heights_mu, heights_ad)
    fig_mu.canvas.draw()
    fig_ad.canvas.draw()
    np.testing.assert_array_equal(np.asarray(fig_mu.canvas.buffer_rgba()), np.asarray(fig_ad.canvas.buffer_rgba()))
