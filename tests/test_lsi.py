"""Tests of iterative LSI: TF-IDF, SVD/projection, depth filter, clustering, store vs memory."""

from __future__ import annotations

import logging

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

import p2g_dask as p2g
from p2g_dask.tl.lsi._clusters import leiden_clusters
from p2g_dask.tl.engine.knn import CHUNK_BYTES, nearest_neighbours
from p2g_dask.tl.lsi._kernels import (
    MIN_THREADED_NNZ, Threads, project_block, sample_cells, top_accessible, variable_features,
)
from p2g_dask.tl.lsi._svd import PADDED_WIDTH, SlabMatrix, project_rows, randomized_svd, sparse_svd, svd_of_rows



# ---------------------------------------------------------------- independent numpy references
def np_tfidf(X, idf=None, scale_to=1e4, binarize=True):
    """ArchR's log(TF-IDF) written out with dense numpy."""
    B = (X > 0).astype(float) if binarize else np.asarray(X, dtype=float)
    total = B.sum(axis=1, keepdims=True)
    tf = np.divide(B, total, out=np.zeros_like(B), where=total > 0)
    if idf is None:
        fsum = B.sum(axis=0)
        idf = np.divide(B.shape[0], fsum, out=np.zeros_like(fsum), where=fsum > 0)
    return np.where(B > 0, np.log(tf * idf * scale_to + 1), 0.0)


def np_zscore_rows(m):
    """Per-cell z-scores; a cell without counts (all-zero row) stays zero, as documented."""
    sd = m.std(axis=1, ddof=1, keepdims=True)
    return np.divide(m - m.mean(axis=1, keepdims=True), sd, out=np.zeros_like(m), where=sd > 0)


def np_project(adata, info):
    """Project every cell with the model stored in ``uns['X_iterative_lsi']``, in numpy."""
    cols = adata.var_names.get_indexer(info["features"])
    return np_tfidf(adata.X[:, cols].toarray(), idf=info["idf"]) @ info["loadings"]


def abs_corr(a, b):
    return abs(np.corrcoef(a, b)[0, 1])


def depth_artifact_data(n_cells=600, n_peaks=3000, seed=0):
    """Three cell types plus 20 % of peaks whose accessibility grows with depth squared."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n_cells)
    depth = rng.lognormal(0, 0.5, n_cells)
    base = rng.lognormal(np.log(0.05), 0.5, n_peaks)
    effect = np.exp(rng.normal(0, 1.0, (3, n_peaks)) * (rng.random((3, n_peaks)) < 0.2))
    artifact = rng.random(n_peaks) < 0.2
    rate = depth[:, None] * base * effect[types] * np.where(artifact, depth[:, None] ** 2, 1.0)
    X = sp.csr_matrix(rng.poisson(rate).astype(np.int32))
    obs = pd.DataFrame({"n_fragment": np.asarray(X.sum(1)).ravel()}, index=[f"c{i}-1" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"chr1:{600 * i}-{600 * i + 501}" for i in range(n_peaks)])
    return ad.AnnData(X=X, obs=obs, var=var)


@pytest.fixture(scope="module")
def sim_small():
    return p2g.datasets.simulate_multiome(n_cells=500, n_peaks=4000, n_genes=60, n_linked_genes=10, seed=3)


SMALL = dict(n_components=10, var_features=3000, n_neighbors=15)


# ---------------------------------------------------------------- TF-IDF
@pytest.mark.parametrize("binarize", [True, False])
def test_tfidf__matches_numpy(binarize):
    rng = np.random.default_rng(0)
    X = rng.poisson(0.4, (40, 25)) * (rng.random((40, 25)) < 0.5)
    X[3] = 0  # a cell without counts
    X[:, 7] = 0  # a feature without counts
    got = p2g.tl.tfidf(sp.csr_matrix(X), binarize=binarize, scale_to=1e4)
    assert sp.isspmatrix_csr(got) or sp.issparse(got)
    np.testing.assert_allclose(got.toarray(), np_tfidf(X, binarize=binarize), rtol=1e-12)


def test_tfidf__given_idf_and_dense_input():
    rng = np.random.default_rng(1)
    X = rng.poisson(0.5, (30, 12))
    idf = rng.uniform(1, 5, 12)
    got = p2g.tl.tfidf(X, idf=idf, scale_to=500.0)
    np.testing.assert_allclose(got.toarray(), np_tfidf(X, idf=idf, scale_to=500.0), rtol=1e-12)


@pytest.mark.parametrize("chunks", [60, 16, (7, 30, 23)])
def test_tfidf__dask_chunks_match_in_memory(chunks):
    rng = np.random.default_rng(2)
    X = sp.csr_matrix(rng.poisson(0.3, (60, 40)))
    bounds = np.cumsum((0,) + chunks) if isinstance(chunks, tuple) else list(range(0, 60, chunks)) + [60]
    blocks = [da.from_delayed(dask.delayed(X[a:b]), shape=(b - a, 40), meta=sp.csr_matrix((0, 0), dtype=X.dtype))
              for a, b in zip(bounds[:-1], bounds[1:])]
    lazy = da.concatenate(blocks, axis=0)
    with dask.config.set(scheduler="synchronous"):
        got = p2g.tl.tfidf(lazy)
        assert got.name.startswith("p2g-lsi-tfidf-")
        parts = got.compute()
    np.testing.assert_allclose(sp.csr_matrix(parts).toarray(), np_tfidf(X.toarray()), rtol=1e-12)


def test_tfidf__bad_input_names_argument():
    with pytest.raises(ValueError, match="X holds negative values"):
        p2g.tl.tfidf(sp.csr_matrix(np.array([[1, -1]])))
    with pytest.raises(ValueError, match=r"idf has shape \(3,\)"):
        p2g.tl.tfidf(sp.csr_matrix(np.eye(2)), idf=np.ones(3))


# ---------------------------------------------------------------- SVD and projection kernels
def test_sparse_svd__matches_dense_svd_and_projection_reproduces_fit(sim_small):
    X = sim_small.atac.X[:300, :1500]
    tf = np_tfidf(X.toarray())
    loadings, d, fitted = sparse_svd(sp.csr_matrix(tf), 10, seed=1, return_fitted=True)
    with threadpool_limits(1):
        u, s, vt = np.linalg.svd(tf, full_matrices=False)
    # Randomized SVD: near exact on the leading components, within 0.1 % down the flat noise tail.
    np.testing.assert_allclose(d[:3], s[:3], rtol=1e-4)
    np.testing.assert_allclose(d[:6], s[:6], rtol=1e-3)
    for c in range(3):  # same components up to sign
        assert abs_corr(loadings[:, c], vt[c]) > 0.9999
    # Projecting the fitted cells with the loadings gives their fitted coordinates back.
    nonzero = np.asarray((X > 0).sum(0)).ravel()
    idf = np.divide(X.shape[0], nonzero, out=np.zeros(nonzero.size), where=nonzero > 0)
    projected = project_block(X, np.arange(X.shape[1]), idf, loadings, scale_to=1e4, binarize=True)
    np.testing.assert_allclose(projected, fitted, rtol=1e-6, atol=1e-6 * np.abs(fitted).max())
    np.testing.assert_allclose(projected, tf @ loadings, rtol=1e-9, atol=1e-9)


def counts_with_gaps(seed=11, n_obs=120, n_vars=90):
    """Poisson counts with explicit zeros, empty rows and empty columns (what the kernels must skip)."""
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.4, (n_obs, n_vars)).astype(np.float32)
    dense[rng.random(n_obs) < 0.1] = 0
    dense[:, rng.random(n_vars) < 0.1] = 0
    X = sp.csr_matrix(dense)
    X.data[::7] = 0  # explicit zeros stay stored
    return X, X.toarray()


@pytest.mark.parametrize("binarize", [True, False])
@pytest.mark.parametrize("shift", [0, 3, 10])
def test_slab_matrix__tfidf_of_rows_and_products_match_scipy(binarize, shift):
    X, dense = counts_with_gaps()
    rng = np.random.default_rng(12)
    features = np.sort(rng.choice(X.shape[1], 50, replace=False))
    col_pos = np.full(X.shape[1], -1)
    col_pos[features] = np.arange(features.size)
    rows = np.sort(rng.choice(X.shape[0], 80, replace=False))
    idf = rng.uniform(1, 5, features.size)
    want = sp.csr_matrix(np_tfidf(dense[np.ix_(rows, features)], idf=idf, binarize=binarize))
    with Threads(2, nnz=MIN_THREADED_NNZ) as threads:  # threaded even on this small matrix
        for on in (None, threads):
            slabs = SlabMatrix.build(X, rows, col_pos, shift=shift, idf=idf, binarize=binarize, threads=on)
            assert slabs.shape == want.shape and slabs.nnz == want.nnz
            for width in (3, PADDED_WIDTH):  # the generic and the padded scatter
                right = rng.normal(size=(features.size, width))
                left = rng.normal(size=(rows.size, width))
                np.testing.assert_allclose(slabs.matmul(right, on), want @ right, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(slabs.rmatmul(left, on), want.T @ left, rtol=1e-12, atol=1e-12)
                got32 = slabs.matmul(right.astype(np.float32), on)
                assert got32.dtype == np.float32
                np.testing.assert_allclose(got32, want @ right, rtol=1e-4, atol=1e-4 * np.abs(want @ right).max())
                got32 = slabs.rmatmul(left.astype(np.float32), on)
                np.testing.assert_allclose(got32, want.T @ left, rtol=1e-4, atol=1e-4 * np.abs(want.T @ left).max())


def test_svd_of_rows__same_with_rows_left_out_and_on_any_threads():
    # Fitting some rows equals fitting all rows with the others emptied (the start is drawn for
    # every row), and the result does not depend on the threads or the slab layout.
    X, _ = counts_with_gaps(seed=13, n_obs=300, n_vars=200)
    rows = np.flatnonzero(np.random.default_rng(14).random(300) < 0.8)
    emptied = X.multiply(np.isin(np.arange(300), rows)[:, None]).tocsr()
    emptied.eliminate_zeros()
    loadings, d, fitted = svd_of_rows(X, rows, np.arange(200), 10, seed=3)
    want_loadings, want_d, want_fitted = sparse_svd(emptied, 10, seed=3, return_fitted=True)
    np.testing.assert_allclose(d, want_d, rtol=1e-6)
    np.testing.assert_allclose(fitted, want_fitted[rows], rtol=1e-5, atol=1e-5 * np.abs(want_fitted).max())
    start = np.random.default_rng(3).standard_normal((300, 30))[rows]
    one = randomized_svd(SlabMatrix.build(X, rows, np.arange(200), shift=2), 10, start)
    with Threads(2, nnz=MIN_THREADED_NNZ) as threads:
        two = randomized_svd(SlabMatrix.build(X, rows, np.arange(200), shift=2, threads=threads), 10, start,
                             threads=threads)
    for a, b in zip(one, two):  # the same to the last bit
        np.testing.assert_array_equal(a, b)
    # Other slabs group the nonzeros of M @ basis otherwise: the same up to round-off.
    other = randomized_svd(SlabMatrix.build(X, rows, np.arange(200), shift=5), 10, start)
    np.testing.assert_allclose(other[2], one[2], rtol=1e-5, atol=1e-5 * np.abs(one[2]).max())


def test_project_rows__equals_project_block():
    X, _ = counts_with_gaps(seed=15)
    rng = np.random.default_rng(16)
    col_pos = np.where(rng.random(X.shape[1]) < 0.6, 0, -1)
    col_pos[col_pos == 0] = np.arange((col_pos == 0).sum())
    n_features = int(col_pos.max()) + 1
    idf, loadings = rng.uniform(1, 3, n_features), rng.normal(size=(n_features, 4))
    wanted = rng.random(X.shape[0]) < 0.7
    for binarize in (True, False):
        want = project_block(X, col_pos, idf, loadings, scale_to=1e4, binarize=binarize, wanted=wanted)
        got = project_rows(X, np.flatnonzero(wanted), col_pos, idf, loadings, scale_to=1e4, binarize=binarize)
        np.testing.assert_allclose(got, want[wanted], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_queries", [40, 2500])
def test_nearest_neighbours__matches_a_full_sort_with_ties_by_position(n_queries):
    rng = np.random.default_rng(17)
    points = rng.integers(-4, 5, (2500, 3)).astype(float)  # a grid: exact distances, many ties
    queries = points[rng.choice(2500, n_queries, replace=False)]
    distance = ((queries[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(np.arange(2500), distance.shape), distance), axis=-1)[:, :25]
    for chunk_bytes in (8 * n_queries * 100, CHUNK_BYTES):  # 25 chunks, and one
        index, dist = nearest_neighbours(points, queries, 25, chunk_bytes=chunk_bytes)
        np.testing.assert_array_equal(index, order)
        np.testing.assert_array_equal(dist, np.take_along_axis(distance, order, axis=1))


def test_project_block__subset_features_and_skipped_rows():
    rng = np.random.default_rng(4)
    X = sp.csr_matrix(rng.poisson(0.6, (50, 30)))
    features = np.array([1, 4, 5, 9, 20, 29])
    col_pos = np.full(30, -1)
    col_pos[features] = np.arange(features.size)
    idf, loadings = rng.uniform(1, 3, 6), rng.normal(size=(6, 3))
    wanted = rng.random(50) < 0.5
    got = project_block(X, col_pos, idf, loadings, scale_to=1e4, binarize=False, wanted=wanted)
    want = np_tfidf(X[:, features].toarray(), idf=idf, binarize=False) @ loadings
    np.testing.assert_allclose(got[wanted], want[wanted], rtol=1e-12)
    assert (got[~wanted] == 0).all()


# ---------------------------------------------------------------- feature and cell selection
def test_top_accessible__skips_top_share_and_zero_features():
    totals = np.array([5, 0, 9, 3, 9, 1, 7, 0, 2, 6, 4, 8], dtype=float)
    # 10 features have counts; 10% of them (1) is skipped: the first of the tied 9s (stable order).
    got = top_accessible(totals, 4, filter_quantile=0.9, total_features=500_000)
    ranked = sorted(np.flatnonzero(totals), key=lambda j: (-totals[j], j))
    np.testing.assert_array_equal(got, np.sort(ranked[1:5]))
    # total_features caps the share; features without counts are never taken.
    np.testing.assert_array_equal(top_accessible(totals, 20, filter_quantile=0.5, total_features=4),
                                  np.sort(ranked[2:]))


def test_variable_features__matches_pandas():
    rng = np.random.default_rng(5)
    sums = rng.poisson(20, (4, 12)).astype(float)
    candidates = np.array([0, 2, 3, 5, 6, 8, 11])
    got = variable_features(sums, candidates, 3, scale_to=1e4)
    frame = pd.DataFrame(sums[:, candidates], columns=candidates)
    log_norm = np.log2(frame.div(frame.sum(axis=1), axis=0) * 1e4 + 1)
    want = np.sort(log_norm.var(axis=0, ddof=1).sort_values(ascending=False).index[:3].to_numpy())
    np.testing.assert_array_equal(got, want)


def test_sample_cells__within_depth_quantiles_and_seeded():
    log_depth = np.random.default_rng(6).normal(size=1000)
    a = sample_cells(np.random.default_rng(1), log_depth, 100, (0.1, 0.9))
    b = sample_cells(np.random.default_rng(1), log_depth, 100, (0.1, 0.9))
    np.testing.assert_array_equal(a, b)
    lo, hi = np.quantile(log_depth, [0.05, 0.95])
    assert a.size == 100 and np.unique(a).size == 100
    assert ((log_depth[a] >= lo) & (log_depth[a] <= hi)).all()
    np.testing.assert_array_equal(sample_cells(np.random.default_rng(1), log_depth, 5000, None), np.arange(1000))


def test_leiden_clusters__recovers_blobs_and_is_seeded():
    rng = np.random.default_rng(7)
    centres = 10.0 * np.eye(4, 5)  # blobs 14 apart, unit noise
    truth = np.repeat(np.arange(4), 60)
    pts = centres[truth] + rng.normal(0, 1, (240, 5))
    labels = leiden_clusters(pts, n_neighbors=15, resolution=0.3, seed=1)
    np.testing.assert_array_equal(labels, leiden_clusters(pts, n_neighbors=15, resolution=0.3, seed=1))
    assert pd.crosstab(labels, truth).gt(0).sum(axis=1).max() == 1  # no cluster mixes two blobs
    assert np.bincount(labels)[0] == np.bincount(labels).max()  # label 0 is the largest cluster


# ---------------------------------------------------------------- iterative_lsi on AnnData
def test_iterative_lsi__one_iteration_equals_numpy_lsi(sim_small):
    atac = sim_small.atac.copy()
    emb = p2g.tl.iterative_lsi(atac, iterations=1, outlier_quantiles=None, scale_dims=False, cor_cutoff=1.0,
                               filter_quantile=1.0, **SMALL)
    info = atac.uns["X_iterative_lsi"]
    totals = np.asarray(atac.X.sum(0)).ravel()
    want_features = np.sort(np.argsort(-totals, kind="stable")[:3000])
    np.testing.assert_array_equal(info["features"], atac.var_names[want_features])
    tf = np_tfidf(atac.X[:, want_features].toarray())
    with threadpool_limits(1):  # multi-threaded BLAS crawls on a busy 2-core machine
        u, s, _ = np.linalg.svd(tf, full_matrices=False)
    for c in range(4):
        np.testing.assert_allclose(np.abs(emb[:, c]), np.abs(u[:, c] * s[c]), rtol=1e-3, atol=1e-3 * s[c])
    np.testing.assert_allclose(emb, np_project(atac, info), rtol=1e-9, atol=1e-9)


def test_iterative_lsi__projection_of_sampled_cells_equals_fit(sim_small):
    # The last iteration fits all 500 cells but the depth outliers; the embedding of the fit cells
    # is the SVD's own, that of the outliers is projected: both must equal a numpy projection.
    atac = sim_small.atac.copy()
    emb = p2g.tl.iterative_lsi(atac, outlier_quantiles=(0.1, 0.9), **SMALL)
    info = atac.uns["X_iterative_lsi"]
    assert info["iteration_n_cells_sampled"][-1] == 500 and 350 < info["iteration_n_cells_fit"][-1] < 500
    projected = np_zscore_rows(np_project(atac, info))[:, info["components_kept"]]
    np.testing.assert_allclose(emb, projected, rtol=1e-7, atol=1e-7)


def test_iterative_lsi__cells_outside_the_sample_are_projected(sim_small):
    atac = sim_small.atac.copy()
    emb = p2g.tl.iterative_lsi(atac, sample_cells_pre=300, sample_cells_final=350, **SMALL)
    info = atac.uns["X_iterative_lsi"]
    np.testing.assert_array_equal(info["iteration_n_cells_sampled"], [300, 350])
    assert info["params"]["sample_cells_final"] == 350
    projected = np_zscore_rows(np_project(atac, info))[:, info["components_kept"]]
    np.testing.assert_allclose(emb, projected, rtol=1e-7, atol=1e-7)


def test_iterative_lsi__drops_depth_correlated_component():
    atac = depth_artifact_data()
    emb = p2g.tl.iterative_lsi(atac, **SMALL)
    info = atac.uns["X_iterative_lsi"]
    scaled = np_zscore_rows(np_project(atac, info))
    log_depth = np.log10(atac.obs["n_fragment"].to_numpy() + 1)
    corr = np.array([abs_corr(scaled[:, c], log_depth) for c in range(10)])
    dropped = np.flatnonzero(corr > 0.75)
    assert dropped.size >= 1
    np.testing.assert_allclose(info["depth_correlation"], corr, atol=1e-9)
    np.testing.assert_array_equal(info["components_kept"], np.flatnonzero(corr <= 0.75))
    assert emb.shape == (atac.n_obs, 10 - dropped.size)
    np.testing.assert_allclose(emb, scaled[:, corr <= 0.75], rtol=1e-7, atol=1e-7)
    assert p2g.tl.iterative_lsi(atac, cor_cutoff=1.0, **SMALL).shape[1] == 10


def test_iterative_lsi__knn_classifier_recovers_cell_types():
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    sim = p2g.datasets.simulate_multiome(n_cells=2000, n_peaks=20_000, n_genes=60, n_linked_genes=10,
                                         n_cell_types=6, seed=0)
    emb = p2g.tl.iterative_lsi(sim.atac, var_features=10_000, seed=1)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    accuracy = cross_val_score(KNeighborsClassifier(15), emb, sim.atac.obs["cell_type"], cv=folds).mean()
    assert accuracy >= 0.90, accuracy


def test_iterative_lsi__same_seed_same_result(sim_small):
    a, b, c = (sim_small.atac.copy() for _ in range(3))
    kw = dict(sample_cells_pre=350, **SMALL)
    emb1 = p2g.tl.iterative_lsi(a, seed=7, **kw)
    emb2 = p2g.tl.iterative_lsi(b, seed=7, **kw)
    emb3 = p2g.tl.iterative_lsi(c, seed=8, **kw)
    np.testing.assert_array_equal(emb1, emb2)
    assert emb1.shape != emb3.shape or not np.allclose(emb1, emb3)


def test_iterative_lsi__writes_obsm_uns_and_logs(sim_small, caplog):
    atac = sim_small.atac.copy()
    with caplog.at_level(logging.INFO, logger="p2g_dask"):
        emb = p2g.tl.iterative_lsi(atac, key_added="X_lsi_test", **SMALL)
    assert atac.obsm["X_lsi_test"] is emb
    info = atac.uns["X_lsi_test"]
    assert info["params"]["n_components"] == 10 and info["params"]["key_added"] == "X_lsi_test"
    assert info["loadings"].shape == (len(info["features"]), 10)
    assert list(info["iteration_n_features"]) == [3000, 3000]
    text = caplog.text
    assert "iterative_lsi 1/2: 3000 features" in text and "clusters found" in text
    assert "stored obsm['X_lsi_test'] with shape" in text


def test_iterative_lsi__one_cluster_keeps_the_top_features(sim_small, caplog):
    atac = sim_small.atac.copy()
    with caplog.at_level(logging.WARNING, logger="p2g_dask"):
        p2g.tl.iterative_lsi(atac, resolution=1e-9, **SMALL)
    info = atac.uns["X_iterative_lsi"]
    assert "one cluster only" in caplog.text and info["iteration_n_clusters"][0] == 1
    totals = np.asarray(atac.X.sum(0)).ravel()
    ranked = np.argsort(-totals, kind="stable")
    skip = int(0.005 * np.count_nonzero(totals))  # filter_quantile=0.995 of the features with counts
    np.testing.assert_array_equal(info["features"], atac.var_names[np.sort(ranked[skip : skip + 3000])])


def test_iterative_lsi__depth_from_row_sums_when_column_absent(sim_small, caplog):
    with_col = sim_small.atac.copy()
    with_col.obs["depth"] = np.asarray(with_col.X.sum(1)).ravel()
    without = sim_small.atac.copy()
    del without.obs["n_fragment"]
    with caplog.at_level(logging.INFO, logger="p2g_dask"):
        got = p2g.tl.iterative_lsi(without, **SMALL)
    assert "using the row sums" in caplog.text
    np.testing.assert_array_equal(got, p2g.tl.iterative_lsi(with_col, depth_col="depth", **SMALL))


@pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning")  # mudata 0.3 announcing a default
def test_iterative_lsi__mudata_writes_modality(sim_small):
    import mudata as md

    mdata = md.MuData({"atac": sim_small.atac.copy(), "rna": sim_small.rna.copy()})
    emb = p2g.tl.iterative_lsi(mdata, **SMALL)
    np.testing.assert_array_equal(mdata.mod["atac"].obsm["X_iterative_lsi"], emb)
    with pytest.raises(ValueError, match="mod_atac='peaks'"):
        p2g.tl.iterative_lsi(mdata, mod_atac="peaks", **SMALL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_components=1), "n_components=1"),
        (dict(var_features=5), "var_features=5"),
        (dict(cor_cutoff=1.5), "cor_cutoff=1.5"),
        (dict(outlier_quantiles=(0.9, 0.1)), "outlier_quantiles"),
        (dict(resolution=0), "resolution=0"),
        (dict(depth_col="bad"), "depth_col='bad'"),
    ],
)
def test_iterative_lsi__bad_arguments_name_the_argument(sim_small, kwargs, message):
    atac = sim_small.atac.copy()
    atac.obs["bad"] = np.nan
    with pytest.raises(ValueError, match=message):
        p2g.tl.iterative_lsi(atac, **{**SMALL, **kwargs})


def test_iterative_lsi__negative_counts_rejected(sim_small):
    atac = sim_small.atac.copy()
    atac.X = atac.X.astype(np.float32)
    atac.X.data[0] = -1.0
    with pytest.raises(ValueError, match="negative values"):
        p2g.tl.iterative_lsi(atac, **SMALL)


# ---------------------------------------------------------------- out of core
@pytest.fixture(scope="module")
def sim_store(sim_small, tmp_path_factory):
    path = tmp_path_factory.mktemp("lsi") / "sim.zarr"
    atac = sim_small.atac.copy()
    atac.obsm.clear()
    p2g.io.ingest(atac, sim_small.rna, path, chunk_cells=128)
    return path


@pytest.mark.parametrize("chunk_cells, final", [(500, None), (77, 400)])
def test_iterative_lsi__store_synchronous_equals_in_memory(sim_small, sim_store, chunk_cells, final):
    kw = dict(sample_cells_pre=350, sample_cells_final=final, **SMALL)
    atac = sim_small.atac.copy()
    want = p2g.tl.iterative_lsi(atac, **kw)
    with dask.config.set(scheduler="synchronous"):
        got = p2g.tl.iterative_lsi(sim_store, chunk_cells=chunk_cells, overwrite=True, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    store = p2g.io.open_store(sim_store)
    np.testing.assert_array_equal(store.atac.obsm["X_iterative_lsi"], got)
    stored = store.atac.uns["X_iterative_lsi"]
    np.testing.assert_array_equal(stored["components_kept"], atac.uns["X_iterative_lsi"]["components_kept"])
    np.testing.assert_array_equal(stored["features"], atac.uns["X_iterative_lsi"]["features"])


def test_iterative_lsi__store_on_local_cluster_equals_in_memory(sim_small, sim_store):
    from dask.utils import key_split
    from distributed import Client, LocalCluster, get_task_stream

    kw = dict(sample_cells_pre=350, sample_cells_final=400, **SMALL)  # the last projection streams
    want = p2g.tl.iterative_lsi(sim_small.atac.copy(), **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        with get_task_stream(client) as stream:
            got = p2g.tl.iterative_lsi(p2g.io.open_store(sim_store), client=client, overwrite=True, **kw)
        groups = {key_split(task["key"]) for task in stream.data}
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert {"p2g-lsi-colsum", "p2g-lsi-sample", "p2g-lsi-project"} <= groups, groups


def test_iterative_lsi__store_refuses_overwrite(sim_store):
    store = p2g.io.open_store(sim_store)
    if "X_iterative_lsi" not in store.atac.obsm:
        store.atac.write_obsm("X_iterative_lsi", np.zeros((store.atac.n_obs, 2)))
    with pytest.raises(FileExistsError, match="key_added='X_iterative_lsi' already exists"):
        p2g.tl.iterative_lsi(sim_store, **SMALL)


def test_iterative_lsi__large_sample_svd_compressed_agrees(sim_small, sim_store):
    kw = dict(iterations=1, outlier_quantiles=None, scale_dims=False, cor_cutoff=1.0, **SMALL)
    want = p2g.tl.iterative_lsi(sim_small.atac.copy(), **kw)
    with dask.config.set(scheduler="synchronous"):
        got = p2g.tl.iterative_lsi(sim_store, max_sample_bytes=1, key_added="X_big", **kw)
    for c in range(4):
        assert abs_corr(got[:, c], want[:, c]) > 0.999
    np.testing.assert_allclose(np.abs(got[:, 0]), np.abs(want[:, 0]), rtol=1e-4, atol=1e-4 * np.abs(want[:, 0]).max())


def test_iterative_lsi__large_sample_two_iterations_recover_cell_types(sim_small, sim_store):
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    with dask.config.set(scheduler="synchronous"):
        emb = p2g.tl.iterative_lsi(sim_store, max_sample_bytes=1, key_added="X_big2", **SMALL)
    info = p2g.io.open_store(sim_store).atac.uns["X_iterative_lsi"]
    assert info["iteration_n_clusters"][0] >= 2 and emb.shape[0] == 500
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    accuracy = cross_val_score(KNeighborsClassifier(15), emb, sim_small.atac.obs["cell_type"], cv=folds).mean()
    assert accuracy >= 0.9, accuracy


# ---------------------------------------------------------------- real data and docs
@pytest.mark.real_data("real PBMC depths, including cells without any peak count")
def test_iterative_lsi__real_pbmc_projection_matches_numpy(shared_data):
    path = shared_data / "pbmc_multiome_1k" / "atac.h5ad"
    atac = ad.read_h5ad(path)
    emb = p2g.tl.iterative_lsi(atac, n_components=8, var_features=150, n_neighbors=15, total_features=174)
    assert (np.asarray(atac.X.sum(1)).ravel() == 0).any()  # real data: some cells have no peak counts
    info = atac.uns["X_iterative_lsi"]
    assert "n_fragment" not in atac.obs  # depth came from row sums
    log_depth = np.log10(np.asarray(atac.X.sum(1)).ravel() + 1)
    scaled = np_zscore_rows(np_project(atac, info))
    corr = np.array([abs_corr(scaled[:, c], log_depth) for c in range(8)])
    np.testing.assert_allclose(info["depth_correlation"], corr, atol=1e-9)
    np.testing.assert_allclose(emb, scaled[:, corr <= 0.75], rtol=1e-7, atol=1e-7)
