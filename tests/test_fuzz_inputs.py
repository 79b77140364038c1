"""Property tests over small random inputs: a clear ValueError, or a valid links table.

Random shapes, chromosomes with peaks but no genes (and the reverse), all-zero cells and
features, duplicated embedding points and parameters at and beyond their limits. A valid
result has one row per candidate pair (counted here with plain Python), correlations equal to a
plain numpy recomputation (NaN exactly for features constant across metacells), and FDR values
that are monotone in the p value.
"""

from __future__ import annotations

import gzip
import re

import anndata as ad
import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import p2g_dask as p2g

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CHROMS = ["chr1", "chr2", "chr3"]
# The errors a random but well-formed input may legitimately get, each naming what to change.
CLEAR_ERRORS = [
    r"only \d+ metacells; correlations need at least 3\. Lower k_neighbors or raise n_metacells",
    r"no candidate peak-gene pairs within max_distance=\d+ bp; .* raise max_distance",
    r"no chromosome has both peaks .* and annotated genes .*check the genome build",
]


@st.composite
def multiome(draw):
    n_cells = draw(st.one_of(st.integers(20, 40), st.integers(3, 40)))
    n_peaks = draw(st.integers(1, 25))
    n_genes = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    peak_chroms = draw(st.lists(st.sampled_from(CHROMS[:2]), min_size=n_peaks, max_size=n_peaks))
    gene_chroms = draw(st.lists(st.sampled_from(CHROMS), min_size=n_genes, max_size=n_genes))
    peak_start = rng.integers(0, 100_000, n_peaks)
    peak_len = rng.integers(1, 2_000, n_peaks)
    gene_start = rng.integers(0, 100_000, n_genes)
    gene_len = rng.integers(1, 50_000, n_genes)
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    atac = rng.poisson(2.0, (n_cells, n_peaks)) * (rng.random((n_cells, n_peaks)) < density)
    rna = rng.poisson(3.0, (n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < max(density, 0.1))
    zero_cells = draw(st.lists(st.integers(0, n_cells - 1), max_size=n_cells // 2))
    atac[zero_cells] = 0
    rna[draw(st.lists(st.integers(0, n_cells - 1), max_size=n_cells // 2))] = 0
    atac[:, draw(st.lists(st.integers(0, n_peaks - 1), max_size=n_peaks))] = 0
    rna[:, draw(st.lists(st.integers(0, n_genes - 1), max_size=n_genes))] = 0
    embedding = rng.normal(size=(n_cells, 3))
    if draw(st.booleans()):
        embedding[: n_cells // 2] = embedding[0]  # many tied points
    cells = [f"c{i}" for i in range(n_cells)]
    peaks = [f"{c}:{s}-{s + ln}" for c, s, ln in zip(peak_chroms, peak_start, peak_len)]
    genes = pd.DataFrame({"gene_name": [f"g{i}" for i in range(n_genes)], "chrom": gene_chroms,
                          "start": gene_start, "end": gene_start + gene_len,
                          "strand": rng.choice(["+", "-"], n_genes)})
    atac_ad = ad.AnnData(sp.csr_matrix(atac.astype(np.int32)), obs=pd.DataFrame(index=cells),
                         var=pd.DataFrame(index=peaks))
    atac_ad.obsm["X_emb"] = embedding
    rna_ad = ad.AnnData(sp.csr_matrix(rna.astype(np.float32)), obs=pd.DataFrame(index=cells),
                        var=pd.DataFrame(index=list(genes["gene_name"])))
    # Mostly workable sizes, sometimes beyond the limits (k or metacells above the cell count).
    params = {"n_metacells": draw(st.one_of(st.integers(5, 30), st.integers(1, 60))),
              "k_neighbors": draw(st.one_of(st.integers(2, max(2, n_cells // 5)), st.integers(2, 45))),
              "max_distance": draw(st.sampled_from([1, 500, 20_000, 250_000, 250_000, 250_000, 250_000])),
              "seed": draw(st.integers(0, 5))}
    return atac_ad, rna_ad, genes, params


def _normalised(X, members):
    X = sp.csr_matrix(X).toarray().astype(np.float64)
    sums = np.stack([X[row].sum(axis=0) for row in members])
    totals = sums.sum(axis=1, keepdims=True)
    # A metacell of empty cells stays all zero (p2g's convention; ArchR would divide by zero).
    return np.log2(np.divide(sums, totals, out=np.zeros_like(sums), where=totals > 0) * 1e4 + 1)


def _candidate_pairs(atac_ad, genes, max_distance):
    pairs = set()
    for name in atac_ad.var_names:
        chrom, rest = name.split(":")
        start, end = map(int, rest.split("-"))
        centre = (start + end) // 2
        for g in genes.itertuples():
            tss = g.start if g.strand == "+" else g.end - 1
            if g.chrom == chrom and abs(centre - tss) <= max_distance:
                pairs.add((name, g.gene_name))
    return pairs


@settings(FUZZ, max_examples=150)
@given(data=multiome())
def test_peak_to_gene__random_inputs_error_or_valid(data):
    atac_ad, rna_ad, genes, params = data
    try:
        with dask.config.set(scheduler="sync"):
            links = p2g.tl.peak_to_gene(atac_ad, rna=rna_ad, gene_annotation=genes, use_rep="X_emb", **params)
    except ValueError as err:
        assert any(re.search(p, str(err)) for p in CLEAR_ERRORS), f"unclear error: {err}"
        event(f"error: {str(err)[:30]}")
        return
    event("valid result")
    assert list(links.columns) == ["peak", "gene", "chrom", "peak_start", "peak_end", "tss", "distance",
                                   "correlation", "t", "pval", "fdr", "var_q_atac", "var_q_rna"]
    assert set(zip(links["peak"], links["gene"])) == _candidate_pairs(atac_ad, genes, params["max_distance"])
    r = links["correlation"].to_numpy()
    assert np.all(np.isnan(r) | ((r >= -1) & (r <= 1)))
    # FDR: NaN exactly where p is NaN, >= p, <= 1, and monotone in p.
    pval, fdr = links["pval"].to_numpy(), links["fdr"].to_numpy()
    assert np.array_equal(np.isnan(pval), np.isnan(fdr))
    ok = ~np.isnan(pval)
    order = np.argsort(pval[ok], kind="stable")
    assert np.all(np.diff(fdr[ok][order]) >= -1e-15)
    assert np.all(fdr[ok] >= pval[ok] - 1e-15) and np.all(fdr[ok] <= 1)
    # Correlations against plain numpy on the same metacells.
    members = np.asarray(links.attrs["metacells"])
    a = _normalised(atac_ad.X, members)[:, atac_ad.var_names.get_indexer(links["peak"])]
    g = _normalised(rna_ad.X, members)[:, rna_ad.var_names.get_indexer(links["gene"])]
    constant = (np.ptp(a, axis=0) == 0) | (np.ptp(g, axis=0) == 0)
    assert np.isnan(r[constant]).all(), "a feature constant across metacells must give NaN (DESIGN)"
    spread = (a.std(axis=0) > 1e-6) & (g.std(axis=0) > 1e-6)
    for i in np.flatnonzero(spread):
        assert r[i] == pytest.approx(np.corrcoef(a[:, i], g[:, i])[0, 1], abs=1e-7)


def test_peak_to_gene__constant_nonzero_feature_gives_nan():
    """A peak with the same non-zero value in every metacell: r must be NaN (DESIGN), not ~1e-15."""
    m, k = 7, 3
    # Every metacell: 3 cells with 1 count in peak 0 and 7 counts split over peaks 1 and 2, so
    # peak 0 normalises to the same value everywhere (one whose float mean is not itself).
    X = np.zeros((m * k, 3), dtype=np.int32)
    X[:, 0] = 1
    split = np.random.default_rng(0).integers(0, 8, m)
    X[:, 1] = np.repeat(split, k)
    X[:, 2] = 7 - X[:, 1]
    value = np.log2(k / (8 * k) * 1e4 + 1)
    assert np.full(m, value).mean() != value  # the case that exposes the centring roundoff
    cells = [f"c{i}" for i in range(m * k)]
    atac = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=cells),
                      var=pd.DataFrame(index=["chr1:1000-1100", "chr1:5000-5100", "chr1:9000-9100"]))
    rna = ad.AnnData(sp.csr_matrix(np.random.default_rng(1).poisson(5, (m * k, 2)).astype(np.float32)),
                     obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=["g0", "g1"]))
    genes = pd.DataFrame({"gene_name": ["g0", "g1"], "chrom": "chr1", "start": [2000, 7000], "end": [3000, 8000],
                          "strand": "+"})
    with dask.config.set(scheduler="sync"):
        links = p2g.tl.peak_to_gene(atac, rna=rna, gene_annotation=genes, metacells=np.arange(m * k).reshape(m, k),
                                    max_distance=100_000)
    constant = links["peak"] == "chr1:1000-1100"
    assert constant.sum() == 2 and links.loc[~constant, "correlation"].notna().all()
    assert links.loc[constant, ["correlation", "t", "pval", "fdr"]].isna().all().all()


@FUZZ
@given(names=st.lists(st.text(alphabet="chr0123456789XY:-_.", min_size=1, max_size=14), min_size=1, max_size=8))
def test_parse_peak_names__random_names_error_or_coordinates(names):
    try:
        table = p2g.io.parse_peak_names(names)
    except ValueError as err:
        message = str(err)
        assert ("cannot be parsed, e.g." in message and "'chr1:100-200'" in message) or "end <= start" in message
        shown = re.search(r"e\.g\. ('.*?')", message).group(1)
        assert shown.strip("'") in names
        return
    assert (table["end"] > table["start"]).all() and (table["start"] >= 0).all()
    for name, row in zip(names, table.itertuples()):
        assert name.startswith(row.chrom) and name.endswith(str(row.end))
        assert str(row.start) in name[len(row.chrom):]


FRAGMENT_FIELD = st.one_of(st.integers(-5, 200).map(str), st.sampled_from(["", "chr1", "x", "1.5", "AAAC-1"]))


@FUZZ
@given(rows=st.lists(st.lists(FRAGMENT_FIELD, min_size=3, max_size=6), min_size=1, max_size=6),
       compress=st.booleans())
def test_read_fragments__random_lines_error_or_table(tmp_path_factory, rows, compress):
    text = "".join("\t".join(["chr1", *row]) + "\n" for row in rows)
    path = tmp_path_factory.mktemp("frag") / ("f.tsv.gz" if compress else "f.tsv")
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    try:
        table = p2g.io.read_fragments(path)
    except ValueError as err:
        line = re.search(r"line (\d+)", str(err))
        assert line and 1 <= int(line.group(1)) <= len(rows), f"no line number in {err}"
        assert "f.tsv" in str(err)
        return
    assert len(table) == len(rows)
    assert (table["end"] > table["start"]).all() and (table["start"] >= 0).all()
    assert (table["barcode"].astype(str) != "").all()
