"""Null p-values of peak_to_gene against an independent numpy/scipy recomputation."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import p2g_dask as p2g
from p2g_dask.tl.links import empirical as link_nulls

MAX_DISTANCE = 200_000


@pytest.fixture(scope="module")
def tiny():
    sim = p2g.datasets.simulate_multiome(n_cells=240, n_peaks=800, n_genes=80, n_linked_genes=8, n_chromosomes=3,
                                         seed=11)
    neighbours = p2g.tl.metacells(sim.atac.obsm["X_latent"], n_metacells=40, k_neighbors=15, seed=2)
    return sim, neighbours


def _normalised(X, neighbours):
    X = X.toarray().astype(np.float64)
    sums = np.stack([X[row].sum(axis=0) for row in neighbours])
    return np.log2(sums / sums.sum(axis=1, keepdims=True) * 1e4 + 1)


@pytest.mark.parametrize("n_null_peaks", [1000, 60])
def test_peak_to_gene__empirical_null_matches_numpy(tiny, monkeypatch, n_null_peaks, tmp_path):
    sim, neighbours = tiny
    monkeypatch.setattr(link_nulls, "NULL_PEAKS", n_null_peaks)
    with dask.config.set(scheduler="sync"):
        plain = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, metacells=neighbours,
                                    max_distance=MAX_DISTANCE, chunk_cells=97)
        links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, metacells=neighbours,
                                    max_distance=MAX_DISTANCE, chunk_cells=97, empirical_pval=True, seed=5)
    # The default output is unchanged; the option only adds columns.
    pd.testing.assert_frame_equal(links[plain.columns], plain)
    atac = _normalised(sim.atac.X, neighbours)
    rna_mat = _normalised(sim.rna.X, neighbours)
    peak_chrom = sim.atac.var["chrom"].astype(str).to_numpy()
    gene_pos = pd.Series(np.arange(sim.rna.n_vars), index=sim.rna.var_names)
    pooled, per_chrom = [], {}
    for index, chrom in enumerate(pd.unique(peak_chrom)):
        genes = links.loc[links["chrom"] == chrom, "gene"].unique()
        if genes.size == 0:
            continue
        sampled = link_nulls.null_peaks(peak_chrom, chrom, 5, index)
        other = np.flatnonzero(peak_chrom != chrom)
        assert sampled.size == min(n_null_peaks, other.size) and np.isin(sampled, other).all()
        assert np.unique(sampled).size == sampled.size
        a, g = atac[:, sampled], rna_mat[:, gene_pos[genes].to_numpy()]
        r = np.array([[np.corrcoef(a[:, i], g[:, j])[0, 1] if a[:, i].std() > 0 and g[:, j].std() > 0 else np.nan
                       for j in range(g.shape[1])] for i in range(a.shape[1])]).ravel()
        r = r[~np.isnan(r)]
        per_chrom[chrom] = (r.mean(), r.std(ddof=1), np.median(r), r.size)
        pooled.append(r)
    pooled = np.concatenate(pooled)
    record = links.attrs["null"]
    got = {row["chrom"]: (row["mean"], row["sd"], row["median"], row["n"]) for row in record["per_chromosome"]}
    assert set(got) == set(per_chrom)
    for chrom, want in per_chrom.items():
        np.testing.assert_allclose(got[chrom], want, rtol=1e-6, atol=1e-9)
    assert record["mean"] == pytest.approx(pooled.mean(), abs=1e-9)
    assert record["sd"] == pytest.approx(pooled.std(ddof=1), rel=1e-6)
    # The record survives a parquet round trip (plain floats, not arrays).
    p2g.io.write_links(links, tmp_path / "links.parquet")
    assert p2g.io.read_links(tmp_path / "links.parquet").attrs["null"] == record
    # emp_pval from the stored null mean/sd, emp_fdr its BH.
    z = (links["correlation"].to_numpy() - record["mean"]) / record["sd"]
    np.testing.assert_allclose(links["emp_pval"], 2 * stats.norm.cdf(-np.abs(z)), rtol=1e-10)
    valid = links["emp_pval"].notna().to_numpy()
    assert valid.sum() > 100 and links.loc[~valid, "correlation"].isna().all()
    np.testing.assert_allclose(links.loc[valid, "emp_fdr"],
                               stats.false_discovery_control(links.loc[valid, "emp_pval"], method="bh"), rtol=1e-10)


def test_null_peaks__seeded_and_off_chromosome():
    chrom = np.repeat(["chr1", "chr2", "chr3"], [500, 700, 900])
    a = link_nulls.null_peaks(chrom, "chr2", seed=3, index=1)
    assert a.size == 1000 and not (chrom[a] == "chr2").any()
    np.testing.assert_array_equal(a, link_nulls.null_peaks(chrom, "chr2", seed=3, index=1))
    assert not np.array_equal(a, link_nulls.null_peaks(chrom, "chr2", seed=4, index=1))


def _reference_permutation(sim, neighbours, links, permute, n_perm, seed):
    """Enumerate every permuted p (dense numpy, scipy), then the pooled estimator from its definition."""
    from p2g_dask.tl.links import permutations as perms

    m = neighbours.shape[0]
    atac = _normalised(sim.atac.X, neighbours)
    gene_pos = pd.Series(np.arange(sim.rna.n_vars), index=sim.rna.var_names)
    peak_pos = pd.Series(np.arange(sim.atac.n_vars), index=sim.atac.var_names)
    pi, gi = peak_pos[links["peak"]].to_numpy(), gene_pos[links["gene"]].to_numpy()
    if permute == "cells":
        mats = [(atac, _normalised(sim.rna.X, nb))
                for nb in perms.permuted_neighbours(neighbours, sim.atac.n_obs, n_perm, seed)]
    else:
        rna_mat = _normalised(sim.rna.X, neighbours)
        mats = [(atac[order], rna_mat) for order in perms.metacell_orders(m, n_perm, seed)]
    null = []
    for a, g in mats:
        for i, j in zip(pi, gi):
            if a[:, i].std() > 0 and g[:, j].std() > 0:
                r = np.corrcoef(a[:, i], g[:, j])[0, 1]
                t = r / np.sqrt(max(1 - r**2, 1e-17) / (m - 2))
                null.append(2 * stats.t.sf(abs(t), m - 2))
    null = np.sort(null)
    obs = links["pval"].to_numpy()
    valid = ~np.isnan(obs)
    p = obs[valid]
    # A permuted p within round-off of an observed p may count either way (numba vs corrcoef).
    low = np.array([(null <= x * (1 - 1e-9)).sum() for x in p])
    high = np.array([(null <= x * (1 + 1e-9)).sum() for x in p])
    n_obs = np.array([(p <= x).sum() for x in p])
    fdr = [np.array([min(1.0, ((c / n_perm) / n_obs)[p >= x].min()) for x in p]) for c in (low, high)]
    return valid, low, high, fdr, null.size


@pytest.mark.parametrize("permute", ["cells", "metacells"])
def test_peak_to_gene__permutation_counts_match_enumeration(tiny, permute):
    sim, neighbours = tiny
    kwargs = dict(rna=sim.rna, gene_annotation=sim.genes, metacells=neighbours, max_distance=60_000, seed=3)
    with dask.config.set(scheduler="sync"):
        plain = p2g.tl.peak_to_gene(sim.atac, chunk_cells=50, **kwargs)
        links = p2g.tl.peak_to_gene(sim.atac, chunk_cells=50, n_permutations=6, permute=permute, **kwargs)
    assert 20 < len(links) < 3000
    pd.testing.assert_frame_equal(links[plain.columns], plain, check_exact=False, rtol=1e-9, atol=1e-12)
    valid, low, high, want_fdr, n_null = _reference_permutation(sim, neighbours, links, permute, 6, 3)
    count = np.rint(links.loc[valid, "perm_pval"].to_numpy() * (1 + n_null) - 1)
    assert ((count >= low) & (count <= high)).all()
    assert (low == high).mean() > 0.8
    got_fdr = links.loc[valid, "perm_fdr"].to_numpy()
    assert ((got_fdr >= want_fdr[0] - 1e-12) & (got_fdr <= want_fdr[1] + 1e-12)).all()
    exact = want_fdr[0] == want_fdr[1]
    assert exact.mean() > 0.8
    np.testing.assert_allclose(got_fdr[exact], want_fdr[0][exact], rtol=1e-9)
    assert links.loc[~valid, "perm_pval"].isna().all()
    assert links.attrs["permutation"] == {"permute": permute, "n_permutations": 6, "n_null_pvalues": n_null}


def test_peak_to_gene__permutation_batches_change_nothing(tiny, monkeypatch):
    """One permutation per batch (the least memory) gives the same counts as all N at once."""
    from p2g_dask.tl.links import permutations as perms

    sim, neighbours = tiny
    kwargs = dict(rna=sim.rna, gene_annotation=sim.genes, metacells=neighbours, max_distance=60_000, seed=3,
                  n_permutations=5, chunk_cells=70)
    with dask.config.set(scheduler="sync"):
        whole = p2g.tl.peak_to_gene(sim.atac, **kwargs)
        monkeypatch.setattr(perms, "BATCH_BYTES", 1)
        batched = p2g.tl.peak_to_gene(sim.atac, **kwargs)
    pd.testing.assert_frame_equal(whole, batched)
    assert whole["perm_fdr"].notna().sum() > 20


def test_peak_to_gene__permutations_cost_one_rna_pass(tiny, monkeypatch, local_client):
    from p2g_dask.io.modality import Modality

    sim, neighbours = tiny
    calls = []
    original = Modality.blocks

    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Modality, "blocks", counting)
    links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, metacells=neighbours,
                                max_distance=60_000, n_permutations=9, chunk_cells=64, client=local_client)
    assert calls.count("rna") == 1 and calls.count("atac") == 1
    assert links["perm_fdr"].dropna().between(0, 1).all() and links["perm_fdr"].notna().sum() > 50
    keys = set(local_client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.task_prefixes]))
    assert "p2g-permute" in keys


def test_peak_to_gene__bad_permute_names_argument(tiny):
    sim, neighbours = tiny
    with pytest.raises(ValueError, match="permute='rows'"):
        p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, metacells=neighbours,
                            n_permutations=3, permute="rows")


def test_plot_link_calibration__draws_each_statistic_present():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    links = pd.DataFrame({"pval": rng.uniform(size=400) ** 3, "emp_pval": rng.uniform(size=400)})
    links["fdr"] = stats.false_discovery_control(links["pval"])
    links["emp_fdr"] = stats.false_discovery_control(links["emp_pval"])
    fig, axes = p2g.pl.plot_link_calibration(links, fdr_cutoff=0.05)
    assert sorted(line.get_gid() for line in axes[0].lines if line.get_gid()) == ["qq:emp_pval", "qq:pval"]
    heights = [bar.get_height() for bar in axes[2].patches]
    np.testing.assert_allclose(heights, [100 * (links["fdr"] < 0.05).mean(), 100 * (links["emp_fdr"] < 0.05).mean()])
    plt.close(fig)
    with pytest.raises(ValueError, match="pval"):
        p2g.pl.plot_link_calibration(pd.DataFrame({"x": [1.0]}))


@pytest.mark.slow
def test_peak_to_gene__nulls_calibrated_on_global_null():
    """RNA rows shuffled across cells: no association at all. The cell-level permutation FDR and
    the empirical FDR select at most 0.1% of pairs; the t-test (overlapping metacells) does not."""
    sim = p2g.datasets.simulate_multiome(n_cells=1500, n_peaks=5000, n_genes=500, n_linked_genes=50, seed=4)
    rna = sim.rna.copy()
    rna.X = rna.X[np.random.default_rng(0).permutation(rna.n_obs)]
    neighbours = p2g.tl.metacells(sim.atac.obsm["X_latent"], n_metacells=120, k_neighbors=40, seed=1)
    with dask.config.set(scheduler="threads", num_workers=2):
        links = p2g.tl.peak_to_gene(sim.atac, rna=rna, gene_annotation=sim.genes, metacells=neighbours,
                                    empirical_pval=True, n_permutations=10)
    assert len(links) > 5000
    assert (links["perm_fdr"] < 0.05).mean() <= 0.001
    assert (links["emp_fdr"] < 0.05).mean() <= 0.001
    assert (links["fdr"] < 0.05).mean() > 0.01  # why the nulls are needed
