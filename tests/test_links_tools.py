"""Issue 13, working with links: ArchR's link filter and the per-gene / per-peak summaries.

Every number is checked against a plain pandas computation written here. The MuData input of
the same issue is tested in ``test_links_mudata.py``.
"""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

import p2g_dask as p2g
from p2g_dask.tl.links.filters import filter_links, links_per_gene, links_per_peak

# ---------------------------------------------------------------------------------------------
# Helpers (kept in this file: pyranges installs a top-level `tests` package).


def pandas_filter(links, cor=0.45, fdr=1e-4, var_atac=0.25, var_rna=0.25, positive_only=False):
    """ArchR's getPeak2GeneLinks filter, written out with plain pandas comparisons."""
    out = links[(links["correlation"].abs() >= cor) & (links["fdr"] <= fdr)]
    if var_atac is not None:
        out = out[out["var_q_atac"] > var_atac]
    if var_rna is not None:
        out = out[out["var_q_rna"] > var_rna]
    if positive_only:
        out = out[out["correlation"] > 0]
    return out


def boundary_table(seed: int = 0, n_random: int = 300) -> pd.DataFrame:
    """Hand-made rows at every boundary of the default cut-offs, plus random rows around them."""
    nan = float("nan")
    rows = {
        # name: (correlation, fdr, var_q_atac, var_q_rna)
        "cor_exact": (0.45, 1e-6, 0.9, 0.9),           # |r| == 0.45 passes (>=)
        "cor_exact_neg": (-0.45, 1e-6, 0.9, 0.9),      # negative at the boundary passes
        "cor_below": (0.4499999, 1e-6, 0.9, 0.9),
        "fdr_exact": (0.8, 1e-4, 0.9, 0.9),            # fdr == 1e-4 passes (<=)
        "fdr_above": (0.8, 1.0001e-4, 0.9, 0.9),
        "var_atac_exact": (0.8, 1e-6, 0.25, 0.9),      # var_q == 0.25 fails (>)
        "var_rna_exact": (0.8, 1e-6, 0.9, 0.25),
        "var_both_above": (0.8, 1e-6, 0.2500001, 0.2500001),
        "neg_strong": (-0.9, 1e-9, 0.9, 0.9),
        "cor_nan": (nan, 1e-9, 0.9, 0.9),               # constant feature: NaN never passes
        "fdr_nan": (0.9, nan, 0.9, 0.9),
        "var_atac_nan": (0.9, 1e-9, nan, 0.9),
        "var_rna_nan": (0.9, 1e-9, 0.9, nan),
        "all_pass": (0.95, 0.0, 1.0, 1.0),
    }
    hand = pd.DataFrame.from_dict(rows, orient="index", columns=["correlation", "fdr", "var_q_atac", "var_q_rna"])
    rng = np.random.default_rng(seed)
    random = pd.DataFrame(
        {
            "correlation": rng.uniform(-1, 1, n_random),
            "fdr": 10.0 ** rng.uniform(-7, 0, n_random),
            "var_q_atac": rng.uniform(0, 1, n_random),
            "var_q_rna": rng.uniform(0, 1, n_random),
        },
        index=[f"r{i}" for i in range(n_random)],
    )
    random.loc[random.index[::17], "correlation"] = np.nan
    table = pd.concat([hand, random])
    table.insert(0, "gene", rng.choice([f"G{i}" for i in range(12)], len(table)))
    table.insert(0, "peak", rng.choice([f"chr1:{i * 1000}-{i * 1000 + 500}" for i in range(40)], len(table)))
    table["distance"] = rng.integers(-250_000, 250_001, len(table))
    table.attrs = {"params": {"n_metacells": 500, "k_neighbors": 100}, "metacells": np.arange(12).reshape(3, 4),
                   "obs_names_hash": "abc"}
    return table



def summary_by_pandas(links: pd.DataFrame, by: str) -> pd.DataFrame:
    """links_per_gene / links_per_peak recomputed with a pandas groupby and a loop for the signed r."""
    grouped = links.groupby(by)
    out = pd.DataFrame({
        "n_links": grouped.size(),
        "max_correlation": grouped["correlation"].max(),
        "nearest_distance": grouped["distance"].apply(lambda d: d.abs().min()),
    })
    strongest = {}
    for name, part in grouped:
        r = part["correlation"].dropna()
        strongest[name] = r.iloc[int(np.argmax(r.abs().to_numpy()))] if len(r) else np.nan
    out["strongest_r"] = pd.Series(strongest)
    return out


def check_summary(got: pd.DataFrame, links: pd.DataFrame, by: str) -> None:
    want = summary_by_pandas(links, by)
    assert got.index.name == by
    assert sorted(got.index) == sorted(want.index)
    got_sorted, want_sorted = got.sort_index(), want.sort_index()
    np.testing.assert_array_equal(got_sorted["n_links"].to_numpy(), want_sorted["n_links"].to_numpy())
    np.testing.assert_array_equal(got_sorted["nearest_distance"].to_numpy(),
                                  want_sorted["nearest_distance"].to_numpy())
    np.testing.assert_allclose(got_sorted["max_correlation"].to_numpy(dtype=float),
                               want_sorted["max_correlation"].to_numpy(dtype=float), rtol=0, atol=0)
    np.testing.assert_allclose(got_sorted["strongest_r"].to_numpy(dtype=float),
                               want_sorted["strongest_r"].to_numpy(dtype=float), rtol=0, atol=0)
    # Most links first, then the largest r: the sort keys never increase down the table.
    keys = list(zip(got["n_links"], got["max_correlation"].fillna(-np.inf)))
    assert keys == sorted(keys, reverse=True)


@pytest.fixture(scope="module")
def sim_links():
    sim = p2g.datasets.simulate_multiome(n_cells=500, n_peaks=3000, n_genes=300, n_linked_genes=30, seed=11)
    with dask.config.set(scheduler="synchronous"):
        links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
                                    n_metacells=80, k_neighbors=25, seed=3)
    return sim, links


# ---------------------------------------------------------------------------------------------
# filter_links


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"cor_cutoff": 0.3, "fdr_cutoff": 0.05},
        {"cor_cutoff": 0.0, "fdr_cutoff": 1.0, "var_cutoff_atac": 0.0, "var_cutoff_rna": 0.0},
        {"cor_cutoff": 1.0, "fdr_cutoff": 0.0},
        {"var_cutoff_atac": 0.5, "var_cutoff_rna": 0.75},
    ],
)
def test_filter_links__equals_pandas_filter(kwargs):
    links = boundary_table()
    got = filter_links(links, **kwargs)
    want = pandas_filter(links, cor=kwargs.get("cor_cutoff", 0.45), fdr=kwargs.get("fdr_cutoff", 1e-4),
                         var_atac=kwargs.get("var_cutoff_atac", 0.25), var_rna=kwargs.get("var_cutoff_rna", 0.25))
    pd.testing.assert_frame_equal(got, want)


def test_filter_links__boundaries_and_nan_with_archr_defaults():
    got = set(filter_links(boundary_table(n_random=0)).index)
    # Written out by hand from ArchR's rule (|r| >= 0.45, FDR <= 1e-4, var quantiles > 0.25).
    assert got == {"cor_exact", "cor_exact_neg", "fdr_exact", "var_both_above", "neg_strong", "all_pass"}


def test_filter_links__positive_only():
    links = boundary_table()
    got = filter_links(links, positive_only=True)
    pd.testing.assert_frame_equal(got, pandas_filter(links, positive_only=True))
    assert (got["correlation"] > 0).all()
    assert "cor_exact" in got.index and "cor_exact_neg" not in got.index and "neg_strong" not in got.index
    # The negative links are what positive_only removes, and nothing else.
    both = filter_links(links)
    assert set(both.index) - set(got.index) == set(both.index[both["correlation"] < 0])


@pytest.mark.parametrize("which", ["atac", "rna", "both"])
def test_filter_links__none_variance_cutoff_skips_it(which):
    links = boundary_table()
    kwargs = {f"var_cutoff_{m}": None for m in (("atac", "rna") if which == "both" else (which,))}
    got = filter_links(links, **kwargs)
    want = pandas_filter(links, var_atac=None if which in ("atac", "both") else 0.25,
                         var_rna=None if which in ("rna", "both") else 0.25)
    pd.testing.assert_frame_equal(got, want)
    # A skipped filter lets its NaN and boundary rows through.
    if which in ("atac", "both"):
        assert {"var_atac_exact", "var_atac_nan"} <= set(got.index)
    if which in ("rna", "both"):
        assert {"var_rna_exact", "var_rna_nan"} <= set(got.index)


def test_filter_links__keeps_attrs_and_records_cutoffs(sim_links):
    _, links = sim_links
    before = dict(links.attrs)
    got = filter_links(links, cor_cutoff=0.3, fdr_cutoff=0.01, var_cutoff_rna=None, positive_only=True)
    pd.testing.assert_frame_equal(got, pandas_filter(links, cor=0.3, fdr=0.01, var_rna=None, positive_only=True))
    assert len(got) > 0
    for key in ("params", "obs_names_hash", "n_cells"):
        assert got.attrs[key] == links.attrs[key]
    np.testing.assert_array_equal(got.attrs["metacells"], links.attrs["metacells"])
    assert got.attrs["filter_links"] == {"cor_cutoff": 0.3, "fdr_cutoff": 0.01, "var_cutoff_atac": 0.25,
                                         "var_cutoff_rna": None, "positive_only": True}
    # The input is not changed.
    assert set(links.attrs) == set(before) and "filter_links" not in links.attrs


def test_filter_links__peak_to_gene_output_matches_pandas(sim_links):
    sim, links = sim_links
    got = filter_links(links)
    pd.testing.assert_frame_equal(got, pandas_filter(links))
    # What the filter keeps is strongly enriched for the planted links of the simulation.
    planted = set(zip(sim.truth["peak"], sim.truth["gene"]))
    kept = set(zip(got["peak"], got["gene"]))
    tested = set(zip(links["peak"], links["gene"]))
    assert len(kept) > 0
    assert len(kept & planted) / len(kept) > 10 * len(tested & planted) / len(tested)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"fdr_cutoff": 5}, "fdr_cutoff=5"),
        ({"fdr_cutoff": -1e-3}, "fdr_cutoff=-0.001"),
        ({"fdr_cutoff": float("nan")}, "fdr_cutoff=nan"),
        ({"cor_cutoff": 1.5}, "cor_cutoff=1.5"),
        ({"cor_cutoff": -0.2}, "cor_cutoff=-0.2"),
        ({"cor_cutoff": None}, "cor_cutoff=None"),
        ({"var_cutoff_atac": 2}, "var_cutoff_atac=2"),
        ({"var_cutoff_rna": -0.5}, "var_cutoff_rna=-0.5"),
    ],
)
def test_filter_links__out_of_range_cutoff_names_argument_and_range(kwargs, argument):
    with pytest.raises(ValueError) as err:
        filter_links(boundary_table(n_random=0), **kwargs)
    message = str(err.value)
    assert argument in message and "[0.0, 1.0]" in message


def test_filter_links__missing_columns_named():
    links = boundary_table(n_random=0).drop(columns=["var_q_rna", "fdr"])
    with pytest.raises(ValueError, match=r"missing columns \['fdr', 'var_q_rna'\].*peak_to_gene"):
        filter_links(links)


# ---------------------------------------------------------------------------------------------
# links_per_gene / links_per_peak


def test_links_per_gene__matches_pandas_groupby(sim_links):
    _, links = sim_links
    significant = links[links["fdr"] <= 0.05]
    assert significant["gene"].nunique() > 5
    check_summary(links_per_gene(significant), significant, "gene")
    check_summary(links_per_gene(links), links, "gene")


def test_links_per_peak__matches_pandas_groupby(sim_links):
    _, links = sim_links
    significant = links[links["fdr"] <= 0.05]
    check_summary(links_per_peak(significant), significant, "peak")
    check_summary(links_per_peak(links), links, "peak")


def test_links_per_gene__nan_and_negative_correlations():
    links = boundary_table()
    got = links_per_gene(links)
    check_summary(got, links, "gene")
    # A gene whose only link has r = NaN is counted, with NaN r.
    lone = pd.DataFrame({"gene": ["A", "A", "B"], "peak": ["p1", "p2", "p3"],
                         "correlation": [-0.8, 0.3, np.nan], "distance": [-40, 900, 12]})
    summary = links_per_gene(lone)
    assert summary.loc["A", "strongest_r"] == -0.8 and summary.loc["A", "max_correlation"] == 0.3
    assert summary.loc["A", "nearest_distance"] == 40 and summary.loc["A", "n_links"] == 2
    assert summary.loc["B", "n_links"] == 1 and np.isnan(summary.loc["B", "strongest_r"])


def test_links_per_gene__empty_table():
    empty = boundary_table().iloc[:0]
    for function, by in ((links_per_gene, "gene"), (links_per_peak, "peak")):
        got = function(empty)
        assert got.empty and got.index.name == by
        assert list(got.columns) == ["n_links", "max_correlation", "strongest_r", "nearest_distance"]
