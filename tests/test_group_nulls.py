"""Every layer of peak_to_gene works per group: with ``groupby``, each group's null columns equal an
independent recomputation over that group's metacells (and cells permuted within the group), and
on data without any association the calibrated nulls stay calibrated in every group."""

from __future__ import annotations

import dask
import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import p2g_dask as p2g
from p2g_dask.tl.links import permutations as perms

matplotlib.use("Agg")

MAX_DISTANCE = 80_000
KW = dict(use_rep="X_latent", n_metacells=60, k_neighbors=15, max_distance=MAX_DISTANCE, seed=3, min_metacells=5)


@pytest.fixture(scope="module")
def grouped():
    sim = p2g.datasets.simulate_multiome(n_cells=300, n_peaks=900, n_genes=90, n_linked_genes=9, n_chromosomes=3,
                                         seed=21)
    sim.atac.obs["kind"] = np.where(np.arange(sim.atac.n_obs) % 3 == 0, "x", "y")
    with dask.config.set(scheduler="sync"):
        links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, groupby="kind",
                                    empirical_pval=True, n_permutations=4, chunk_cells=70, **KW)
    return sim, links


def _normalised(X, neighbours):
    X = X.toarray().astype(np.float64)
    sums = np.stack([X[row].sum(axis=0) for row in neighbours])
    return np.log2(sums / sums.sum(axis=1, keepdims=True) * 1e4 + 1)


def test_peak_to_gene__groupby_gives_every_layer_per_group(grouped):
    sim, links = grouped
    assert {"emp_pval", "emp_fdr", "perm_pval", "perm_fdr"} <= set(links.columns)
    assert set(links.attrs["null"]) == set(links.attrs["permutation"]) == {"x", "y"}
    for group, rows in links.groupby("group", observed=True):
        assert rows["perm_fdr"].notna().sum() > 50
        # BH within the group: the group's own p-values give its FDR.
        valid = rows["emp_pval"].notna().to_numpy()
        np.testing.assert_allclose(rows.loc[valid, "emp_fdr"],
                                   stats.false_discovery_control(rows.loc[valid, "emp_pval"]), rtol=1e-9)
    assert links.attrs["params"]["empirical_pval"] and links.attrs["params"]["n_permutations"] == 4


def test_peak_to_gene__group_empirical_null_equals_an_ungrouped_run_on_its_metacells(grouped):
    sim, links = grouped
    for group, membership in links.attrs["metacells"].items():
        with dask.config.set(scheduler="sync"):
            alone = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes,
                                        metacells=np.asarray(membership), empirical_pval=True, **KW)
        mine = links[links["group"] == group].reset_index(drop=True)
        for column in ("correlation", "pval", "fdr", "var_q_atac", "var_q_rna", "emp_pval", "emp_fdr"):
            np.testing.assert_allclose(mine[column], alone[column], rtol=1e-10, equal_nan=True, err_msg=column)
        assert links.attrs["null"][group] == alone.attrs["null"]


def test_peak_to_gene__group_permutations_shuffle_cells_within_the_group(grouped):
    sim, links = grouped
    groups = list(links.attrs["metacells"])
    stacked = np.concatenate([np.asarray(links.attrs["metacells"][g]) for g in groups])
    strata = pd.factorize(sim.atac.obs["kind"].astype(str), sort=True)[0]
    permuted = perms.permuted_neighbours(stacked, sim.atac.n_obs, 4, seed=3, strata=strata)
    labels = sim.atac.obs["kind"].astype(str).to_numpy()
    peak_pos = pd.Series(np.arange(sim.atac.n_vars), index=sim.atac.var_names)
    gene_pos = pd.Series(np.arange(sim.rna.n_vars), index=sim.rna.var_names)
    start = 0
    for group in groups:
        m = len(links.attrs["metacells"][group])
        rows = slice(start, start + m)
        start += m
        # Each permuted metacell holds cells of its own group only.
        assert all((labels[nb[rows]] == group).all() for nb in permuted)
        mine = links[links["group"] == group]
        atac = _normalised(sim.atac.X, stacked[rows])
        pi, gi = peak_pos[mine["peak"]].to_numpy(), gene_pos[mine["gene"]].to_numpy()
        null = []
        for nb in permuted:
            rna = _normalised(sim.rna.X, nb[rows])
            for i, j in zip(pi, gi):
                if atac[:, i].std() > 0 and rna[:, j].std() > 0:
                    r = np.corrcoef(atac[:, i], rna[:, j])[0, 1]
                    null.append(2 * stats.t.sf(abs(r / np.sqrt(max(1 - r**2, 1e-17) / (m - 2))), m - 2))
        null = np.sort(null)
        valid = mine["pval"].notna().to_numpy()
        p = mine.loc[valid, "pval"].to_numpy()
        # A permuted p within round-off of an observed one may count either way (numba vs corrcoef).
        low = np.searchsorted(null, p * (1 - 1e-9), side="right")
        high = np.searchsorted(null, p * (1 + 1e-9), side="right")
        count = np.rint(mine.loc[valid, "perm_pval"].to_numpy() * (1 + null.size) - 1)
        assert null.size > 0 and ((count >= low) & (count <= high)).all()
        assert (low == high).mean() > 0.8
        assert links.attrs["permutation"][group]["n_null_pvalues"] == null.size


def test_peak_to_gene__group_metacell_order_null_per_group(grouped):
    sim, _ = grouped
    with dask.config.set(scheduler="sync"):
        links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, groupby="kind",
                                    n_permutations=3, permute="metacells", **KW)
    for unit, (group, membership) in enumerate(links.attrs["metacells"].items()):
        m = len(membership)
        atac = _normalised(sim.atac.X, np.asarray(membership))
        rna = _normalised(sim.rna.X, np.asarray(membership))
        mine = links[links["group"] == group]
        peak_pos = pd.Series(np.arange(sim.atac.n_vars), index=sim.atac.var_names)
        gene_pos = pd.Series(np.arange(sim.rna.n_vars), index=sim.rna.var_names)
        pi, gi = peak_pos[mine["peak"]].to_numpy(), gene_pos[mine["gene"]].to_numpy()
        null = np.sort([abs(np.corrcoef(atac[order, i], rna[:, j])[0, 1])
                        for order in perms.metacell_orders(m, 3, seed=3, unit=unit) for i, j in zip(pi, gi)
                        if atac[:, i].std() > 0 and rna[:, j].std() > 0])
        assert links.attrs["permutation"][group]["n_null_pvalues"] == null.size
        valid = mine["correlation"].notna().to_numpy()
        observed = mine.loc[valid, "correlation"].abs().to_numpy()
        # Permuted |r| at least the observed |r| (within round-off: numba vs corrcoef).
        low = null.size - np.searchsorted(null, observed * (1 - 1e-9), side="left")
        high = null.size - np.searchsorted(null, observed * (1 + 1e-9), side="left")
        count = np.rint(mine.loc[valid, "perm_pval"].to_numpy() * (1 + null.size) - 1)
        assert ((count <= low) & (count >= high)).all()
        assert (low == high).mean() > 0.8


def test_plot_link_calibration__one_group(grouped):
    _, links = grouped
    fig, axes = p2g.pl.plot_link_calibration(links, group="x")
    shares = [p.get_height() for p in axes[2].patches]
    mine = links[links["group"] == "x"]
    np.testing.assert_allclose(shares, [100 * (mine[c] < 0.05).mean() for c in ("fdr", "emp_fdr", "perm_fdr")])
    assert "N=4" in " ".join(t.get_text() for t in axes[0].get_legend().get_texts())
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="group='z'"):
        p2g.pl.plot_link_calibration(links, group="z")


@pytest.mark.slow
def test_peak_to_gene__group_nulls_calibrated_on_global_null():
    """RNA rows shuffled across cells (no association at all): the cell-level permutation FDR
    selects at most 0.1% of pairs in every group; the t-test over overlapping metacells does not."""
    sim = p2g.datasets.simulate_multiome(n_cells=1800, n_peaks=5000, n_genes=500, n_linked_genes=50, seed=4)
    rna = sim.rna.copy()
    rna.X = rna.X[np.random.default_rng(0).permutation(rna.n_obs)]
    sim.atac.obs["kind"] = np.where(np.arange(sim.atac.n_obs) % 2 == 0, "x", "y")
    with dask.config.set(scheduler="threads", num_workers=2):
        links = p2g.tl.peak_to_gene(sim.atac, rna=rna, gene_annotation=sim.genes, groupby="kind",
                                    use_rep="X_latent", n_metacells=200, k_neighbors=40, min_metacells=20,
                                    empirical_pval=True, n_permutations=10)
    for group, rows in links.groupby("group", observed=True):
        assert len(rows) > 5000
        assert (rows["perm_fdr"] < 0.05).mean() <= 0.001, group
        assert (rows["emp_fdr"] < 0.05).mean() <= 0.001, group
        assert (rows["fdr"] < 0.05).mean() > 0.01, group  # why the nulls are needed, per group too
