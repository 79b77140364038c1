"""differential_links: Fisher z against scipy, effective sizes, calibration under permuted labels, the plot."""

from __future__ import annotations

import dask
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

import p2g_dask as p2g  # noqa: E402
from p2g_dask.tl.links.differential import effective_metacells  # noqa: E402


def _links():
    rng = np.random.default_rng(0)
    r1, r2 = rng.uniform(-0.9, 0.9, 50), rng.uniform(-0.9, 0.9, 50)
    base = pd.DataFrame({"peak": [f"p{i}" for i in range(50)], "gene": "G", "chrom": "chr1",
                         "distance": np.arange(50)})
    links = pd.concat([base.assign(group="a", correlation=r1), base.assign(group="b", correlation=r2)])
    links.attrs["metacells"] = {"a": np.arange(400).reshape(40, 10), "b": np.arange(300).reshape(30, 10)}
    return links, r1, r2


def test_differential_links__fisher_z_matches_scipy():
    links, r1, r2 = _links()
    diff = p2g.tl.differential_links(links, "a", "b").sort_values("peak", key=lambda s: s.str[1:].astype(int))
    se = np.sqrt(1 / (40 - 3) + 1 / (30 - 3))  # disjoint metacells: effective size = metacell count
    z = (np.arctanh(r1) - np.arctanh(r2)) / se
    np.testing.assert_allclose(diff["z"], z, rtol=1e-10)
    np.testing.assert_allclose(diff["pval"], 2 * stats.norm.sf(np.abs(z)), rtol=1e-10)
    np.testing.assert_allclose(diff["fdr"], stats.false_discovery_control(2 * stats.norm.sf(np.abs(z))), rtol=1e-10)
    np.testing.assert_allclose(diff["delta_r"], r1 - r2)
    assert diff.attrs["n_effective"] == {"a": 40.0, "b": 30.0}


def test_effective_metacells__overlap_lowers_it():
    overlapping = np.array([np.arange(i, i + 10) for i in range(0, 50, 2)])  # 25 metacells over 58 cells
    assert effective_metacells(overlapping) == pytest.approx(58 / 10)
    assert effective_metacells(np.arange(100).reshape(10, 10)) == 10


def test_differential_links__bad_groups_named():
    links, _, _ = _links()
    with pytest.raises(ValueError, match="group2='c'"):
        p2g.tl.differential_links(links, "a", "c")
    with pytest.raises(ValueError, match="both 'a'"):
        p2g.tl.differential_links(links, "a", "a")


@pytest.mark.slow
def test_differential_links__calibrated_under_permuted_labels():
    """Cells of one type split at random into two labels: no true difference, share p<0.05 <= 0.06."""
    sim = p2g.datasets.simulate_multiome(n_cells=2400, n_peaks=3000, n_genes=300, n_linked_genes=20, seed=4,
                                         n_cell_types=3, n_group_links=6)
    cell_type = sim.atac.obs["cell_type"].astype(str).to_numpy()
    target = cell_type[0]
    rng = np.random.default_rng(1)
    shares = []
    for _ in range(2):
        atac = sim.atac.copy()
        atac.obs["half"] = np.where(cell_type == target, np.where(rng.random(len(cell_type)) < 0.5, "h1", "h2"),
                                    "rest")
        with dask.config.set(scheduler="synchronous"):
            links = p2g.tl.peak_to_gene(atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
                                        groupby="half", n_metacells={"h1": 100, "h2": 100, "rest": 30},
                                        k_neighbors=10, min_metacells=10, seed=int(rng.integers(1000)))
        diff = p2g.tl.differential_links(links, "h1", "h2")
        p = diff["pval"].dropna().to_numpy()
        assert p.size > 1000
        shares.append(float((p < 0.05).mean()))
    assert max(shares) <= 0.06, shares


def test_plot_differential_links__highlights_significant():
    links, _, _ = _links()
    links.loc[(links["group"] == "a") & (links["peak"] == "p0"), "correlation"] = 0.99
    links.loc[(links["group"] == "b") & (links["peak"] == "p0"), "correlation"] = -0.99
    diff = p2g.tl.differential_links(links, "a", "b")
    fig, ax = p2g.pl.plot_differential_links(diff, fdr_cutoff=0.05)
    n_hit = int((diff["fdr"] <= 0.05).sum())
    assert n_hit >= 1
    drawn = {c.get_gid(): len(c.get_offsets()) for c in ax.collections}
    assert drawn["up"] + drawn["down"] == n_hit and drawn["pairs"] == len(diff) - n_hit
    assert ax.get_xlabel() == "r in a"
    plt.close(fig)
