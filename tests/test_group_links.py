"""Links per group and per sample (issue 20) against a plain numpy recomputation per group."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import p2g_dask as p2g
from p2g_dask.tl.engine import accumulate as aggregate
from p2g_dask.tl.links.groups import group_metacells


def numpy_group_links(atac, rna, genes, neighbours, max_distance=250_000):
    """One group's pairs, r and BH from dense numpy sums over the group's metacells."""
    xa, xr = atac.X.toarray().astype(np.float64), rna.X.toarray().astype(np.float64)
    sa = np.stack([xa[c].sum(0) for c in neighbours])
    sr = np.stack([xr[c].sum(0) for c in neighbours])
    na = np.log2(sa / sa.sum(1, keepdims=True) * 1e4 + 1)
    nr = np.log2(sr / sr.sum(1, keepdims=True) * 1e4 + 1)
    # Peak coordinates parsed from the names chrom:start-end (the real data has no columns).
    parts = atac.var_names.str.extract(r"^(.+):(\d+)-(\d+)$")
    centre = (parts[1].astype(np.int64).to_numpy() + parts[2].astype(np.int64).to_numpy()) // 2
    chrom = parts[0].to_numpy()
    gene_pos = {g: i for i, g in enumerate(rna.var_names)}
    rows = []
    for g in genes[genes["gene_name"].isin(gene_pos)].itertuples():
        tss = g.start if g.strand == "+" else g.end - 1
        for p in np.flatnonzero((chrom == g.chrom) & (np.abs(centre - tss) <= max_distance)):
            a, b = na[:, p], nr[:, gene_pos[g.gene_name]]
            r = np.nan if a.std() == 0 or b.std() == 0 else np.corrcoef(a, b)[0, 1]
            rows.append((atac.var_names[p], g.gene_name, r))
    ref = pd.DataFrame(rows, columns=["peak", "gene", "correlation"])
    m = len(neighbours)
    t = ref["correlation"] / np.sqrt(np.maximum(1 - ref["correlation"] ** 2, 1e-17) / (m - 2))
    ref["pval"] = 2 * stats.t.sf(np.abs(t), m - 2)
    ok = ref["pval"].notna()
    ref["fdr"] = np.nan
    ref.loc[ok, "fdr"] = stats.false_discovery_control(ref.loc[ok, "pval"], method="bh")
    return ref


def assert_matches_numpy(links, atac, rna, genes):
    for group, neighbours in links.attrs["metacells"].items():
        ref = numpy_group_links(atac, rna, genes, np.asarray(neighbours))
        mine = links[links["group"] == group]
        merged = mine.merge(ref, on=["peak", "gene"], suffixes=("", "_ref"), how="outer", indicator=True)
        assert (merged["_merge"] == "both").all(), f"pair sets differ in group {group}"
        np.testing.assert_allclose(merged["correlation"], merged["correlation_ref"], atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(merged["fdr"], merged["fdr_ref"], rtol=1e-6, atol=1e-12, equal_nan=True)


@pytest.fixture(scope="module")
def sim():
    return p2g.datasets.simulate_multiome(n_cells=900, n_peaks=1500, n_genes=150, n_linked_genes=12, seed=5,
                                          n_group_links=6, n_cell_types=3, n_samples=2, sample_effect=0.3)


GROUPED = dict(use_rep="X_latent", groupby="cell_type", n_metacells=150, k_neighbors=10, min_metacells=10)


@pytest.mark.parametrize("chunk_cells", [None, 97, 250])
def test_peak_to_gene__groupby_matches_numpy_in_memory_sync(sim, chunk_cells):
    with dask.config.set(scheduler="synchronous"):
        links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, chunk_cells=chunk_cells,
                                    **GROUPED)
    assert list(links.columns[:2]) == ["group", "peak"]
    assert set(links.attrs["metacells"]) == set(sim.atac.obs["cell_type"].astype(str))
    assert_matches_numpy(links, sim.atac, sim.rna, sim.genes)


@pytest.mark.parametrize("chunk_cells", [128, 300])
def test_peak_to_gene__groupby_matches_numpy_store_local_cluster(sim, tmp_path, local_client, chunk_cells):
    store = p2g.io.ingest(sim.atac, sim.rna, tmp_path / "s.zarr", chunk_cells=128)
    links = p2g.tl.peak_to_gene(store, gene_annotation=sim.genes, client=local_client, chunk_cells=chunk_cells,
                                **GROUPED)
    assert_matches_numpy(links, sim.atac, sim.rna, sim.genes)
    # The same memberships in memory with the synchronous scheduler give the same table.
    with dask.config.set(scheduler="synchronous"):
        again = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes,
                                    metacells=dict(links.attrs["metacells"]))
    pd.testing.assert_frame_equal(links.reset_index(drop=True), again.reset_index(drop=True), check_exact=False,
                                  rtol=1e-6, check_categorical=False)


def test_peak_to_gene__groups_cost_one_pass(sim, monkeypatch):
    calls = []
    real = aggregate.membership_sums

    def counting(modality, membership, **options):
        calls.append(membership.shape[0])
        return real(modality, membership, **options)

    reads = []
    real_kernel = aggregate.metacell_sum_block

    def counting_kernel(*args, **kwargs):
        reads.append(1)
        return real_kernel(*args, **kwargs)

    monkeypatch.setattr("p2g_dask.tl.engine.sums.membership_sums", counting)
    monkeypatch.setattr(aggregate, "metacell_sum_block", counting_kernel)
    with dask.config.set(scheduler="synchronous"):
        links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, chunk_cells=100, **GROUPED)
    n_groups = len(links.attrs["metacells"])
    assert n_groups == 3
    # One call per modality, holding every group's metacells; one kernel call per chunk and modality.
    assert calls == [sum(len(m) for m in links.attrs["metacells"].values())] * 2
    assert len(reads) == 2 * int(np.ceil(sim.atac.n_obs / 100))


@pytest.fixture(scope="module")
def planted():
    """Three cell types of ~500 cells, three group-specific links in each."""
    return p2g.datasets.simulate_multiome(n_cells=1500, n_peaks=2000, n_genes=200, n_linked_genes=12, seed=5,
                                          n_group_links=9, n_cell_types=3)


def differential_recall(links, truth, p_cutoff=0.05):
    """Share of (planted link, other group) comparisons with pval < p_cutoff (r in its group vs other)."""
    hits = []
    for group, rows in truth.groupby("group"):
        for other in links.attrs["metacells"]:
            if other != group:
                diff = p2g.tl.differential_links(links, group, other).merge(rows, on=["peak", "gene"])
                hits.extend(diff["pval"] < p_cutoff)
    return float(np.mean(hits)), len(hits)


@pytest.mark.slow
def test_peak_to_gene__group_links_recovered(planted):
    with dask.config.set(scheduler="synchronous"):
        links = p2g.tl.peak_to_gene(planted.atac, rna=planted.rna, gene_annotation=planted.genes,
                                    **{**GROUPED, "n_metacells": 300, "k_neighbors": 20})
    merged = links.merge(planted.group_truth, on=["peak", "gene"], suffixes=("", "_true"))
    own = merged[merged["group"].astype(str) == merged["group_true"]]
    assert len(own) == len(planted.group_truth)
    assert (own["fdr"] < 0.05).mean() >= 0.8
    # In the other groups the planted pair is noise: rarely significant.
    assert (merged.loc[merged["group"].astype(str) != merged["group_true"], "fdr"] < 0.05).mean() <= 0.2
    recall, n = differential_recall(links, planted.group_truth)
    assert n == 2 * len(planted.group_truth)
    assert recall >= 0.7


def test_group_metacells__sample_aware_never_mix_samples(sim):
    found = group_metacells(sim.atac.obs, sim.atac.obsm["X_latent"], groupby="cell_type", sample_key="sample",
                            n_metacells=150, k_neighbors=10, min_metacells=10)
    samples = sim.atac.obs["sample"].to_numpy()
    groups = sim.atac.obs["cell_type"].astype(str).to_numpy()
    for group, neighbours in found.items():
        assert (samples[neighbours] == samples[neighbours[:, :1]]).all()
        assert (groups[neighbours] == group).all()
        assert len(set(samples[neighbours[:, 0]])) == 2
    # Without groupby: one group of all cells, still never mixing samples.
    with dask.config.set(scheduler="synchronous"):
        links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
                                    sample_key="sample", n_metacells=100, k_neighbors=10, min_metacells=10)
    (group, neighbours), = links.attrs["metacells"].items()
    assert group == "all" and (samples[neighbours] == samples[neighbours[:, :1]]).all()
    assert_matches_numpy(links, sim.atac, sim.rna, sim.genes)


def test_peak_to_gene__replication_columns(sim):
    with dask.config.set(scheduler="synchronous"):
        links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, sample_key="sample",
                                    replication=True, **GROUPED)
    group = links["group"].cat.categories[0]
    neighbours = np.asarray(links.attrs["metacells"][group])
    samples = sim.atac.obs["sample"].to_numpy()
    mine = links[links["group"] == group].reset_index(drop=True)
    z_sum, w2, n_samples = np.zeros(len(mine)), np.zeros(len(mine)), np.zeros(len(mine), int)
    for sample in np.unique(samples[neighbours[:, 0]]):
        rows = neighbours[samples[neighbours[:, 0]] == sample]
        ref = numpy_group_links(sim.atac, sim.rna, sim.genes, rows)
        ref = mine[["peak", "gene"]].merge(ref, on=["peak", "gene"], how="left")
        m = len(rows)
        ok = ref["correlation"].notna().to_numpy()
        n_samples += ok
        z_sum += np.where(ok, np.arctanh(ref["correlation"].fillna(0)) * (m - 3), 0)
        w2 += np.where(ok, m - 3, 0)
    np.testing.assert_array_equal(mine["n_samples"], n_samples)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(w2 > 0, 2 * stats.norm.sf(np.abs(z_sum / np.sqrt(w2))), np.nan)
    np.testing.assert_allclose(mine["replication_pval"], expected, rtol=1e-5, equal_nan=True)
    assert (mine["n_samples_sig"] <= mine["n_samples"]).all()


def test_peak_to_gene__small_groups_skipped_with_warning(sim, caplog):
    obs = sim.atac.obs.copy()
    atac = sim.atac.copy()
    atac.obs["label"] = np.where(np.arange(len(obs)) < 15, "tiny", obs["cell_type"].astype(str))
    with dask.config.set(scheduler="synchronous"), caplog.at_level("WARNING", logger="p2g_dask"):
        links = p2g.tl.peak_to_gene(atac, rna=sim.rna, gene_annotation=sim.genes, **{**GROUPED, "groupby": "label"})
    assert "tiny" not in links.attrs["metacells"]
    assert "tiny (15 cells" in caplog.text


def test_peak_to_gene__groupby_bad_column_names_it(sim):
    with pytest.raises(ValueError, match="groupby='nope'"):
        p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, **{**GROUPED, "groupby": "nope"})


def load_report_script():
    # Loaded from its path: the PBMC inputs (LSI, marker labels) are built the same way there.
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "differential_report.py"
    spec = importlib.util.spec_from_file_location("p2g_differential_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.real_data("groups from marker genes of real cells (B / T / myeloid), uneven sizes")
def test_peak_to_gene__groupby_real_pbmc_matches_numpy(shared_data):
    atac, rna, genes = load_report_script().pbmc_input(p2g, shared_data)
    assert set(atac.obs["coarse"]) == {"B", "T", "myeloid"}
    with dask.config.set(scheduler="synchronous"):
        links = p2g.tl.peak_to_gene(atac, rna=rna, gene_annotation=genes, use_rep="X_lsi", groupby="coarse",
                                    n_metacells={"B": 30, "T": 30, "myeloid": 30}, k_neighbors=20,
                                    min_metacells=10)
    assert {g: len(m) for g, m in links.attrs["metacells"].items()} == {"B": 30, "T": 30, "myeloid": 30}
    assert_matches_numpy(links, atac, rna, genes)
    diff = p2g.tl.differential_links(links, "B", "T")
    assert len(diff) > 0 and diff["pval"].dropna().between(0, 1).all()


@pytest.fixture(scope="module")
def sim_links(sim):
    with dask.config.set(scheduler="synchronous"):
        return p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, **GROUPED)


def test_write_links__group_column_bedpe_10x_and_parquet(sim_links, tmp_path):
    sig = sim_links[sim_links["fdr"] < 0.05]
    bedpe = p2g.io.write_links(sig, tmp_path / "l.bedpe", format="bedpe", header=False)
    names = pd.read_csv(bedpe, sep="\t", header=None)[6]
    assert sorted(names) == sorted(sig["gene"].astype(str) + "|" + sig["group"].astype(str))
    one = sig[sig["group"] == sig["group"].iloc[0]]
    tenx = pd.read_csv(p2g.io.write_links(one, tmp_path / "feature_linkage.bedpe", format="10x"), sep="\t",
                       header=None)
    assert tenx.shape == (len(one), 13) and (tenx[12] == "peak-gene").all()
    merged = tenx.merge(one, left_on=[0, 1, 4], right_on=["chrom", "peak_start", "tss"])
    np.testing.assert_allclose(merged[7], merged["correlation"], rtol=1e-5)
    np.testing.assert_allclose(merged[10], -np.log10(merged["pval"]), rtol=1e-4)
    np.testing.assert_array_equal(merged[11], np.abs((merged["peak_start"] + merged["peak_end"]) // 2 - merged["tss"]))
    assert (merged[6] == "<" + merged["gene"] + np.where(merged[11] <= 1000, "_promoter", "_distal") + "><"
            + merged["gene"] + ">").all()
    back = p2g.io.read_links(p2g.io.write_links(sim_links, tmp_path / "l.parquet"))
    assert set(back.attrs["metacells"]) == set(sim_links.attrs["metacells"])
    for group, membership in sim_links.attrs["metacells"].items():
        np.testing.assert_array_equal(np.asarray(back.attrs["metacells"][group]), np.asarray(membership))


def test_plot_peak2gene__one_arc_track_per_group(sim, sim_links):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gene = sim.group_truth["gene"].iloc[0]
    groups = list(sim_links.attrs["metacells"])[:2]
    fig, axes = p2g.pl.plot_peak2gene(sim.atac, gene=gene, links=sim_links, gene_annotation=sim.genes,
                                      groups=groups, fdr_cutoff=1.0, cor_cutoff=0.0)
    assert list(axes["links_by_group"]) == groups
    for group, ax in axes["links_by_group"].items():
        expected = sim_links[(sim_links["gene"] == gene) & (sim_links["group"] == group)
                             & sim_links["correlation"].notna()]
        assert len([p for p in ax.patches if p.get_gid() == "arc"]) == len(expected)
    plt.close(fig)
    with pytest.raises(ValueError, match="not groups of the links"):
        p2g.pl.plot_peak2gene(sim.atac, gene=gene, links=sim_links, gene_annotation=sim.genes, groups=["nope"])
