"""benchmarks/make_atlas_store.py and benchmarks/bench_scale.py at a small size (2,000 cells).

The generator is run as a script (as the lead runs it at 1M cells) and its store is checked with
plain numpy/pandas; peak_to_gene on the store must equal the in-memory path on the same data.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest

import p2g_dask as p2g

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMALL = dict(cells=2000, peaks=6000, genes=1200, atac_nnz=300, rna_nnz=200, linked_genes=100)
P2G_KW = dict(use_rep="X_latent", n_metacells=150, k_neighbors=40, seed=3)


def _load_script(name: str):
    """Import a benchmark script under a unique module name (benchmarks/ is not a package)."""
    unique = f"p2g_test_{name}"
    if str(BENCHMARKS) not in sys.path:  # as when run as a script: helpers such as _peak_rss import
        sys.path.append(str(BENCHMARKS))
    if unique not in sys.modules:
        spec = importlib.util.spec_from_file_location(unique, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules[unique]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """The script's store at 2,000 cells, written by a subprocess as on the command line."""
    out = tmp_path_factory.mktemp("atlas") / "atlas.zarr"
    cmd = [sys.executable, str(BENCHMARKS / "make_atlas_store.py"), "--cells", str(SMALL["cells"]),
           "--peaks", str(SMALL["peaks"]), "--genes", str(SMALL["genes"]), "--atac-nnz", str(SMALL["atac_nnz"]),
           "--rna-nnz", str(SMALL["rna_nnz"]), "--linked-genes", str(SMALL["linked_genes"]),
           "--block-cells", "1000", "--seed", "5", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def bench():
    return _load_script("bench_scale")


@pytest.fixture(scope="module")
def maker():
    return _load_script("make_atlas_store")


@pytest.fixture(scope="module")
def store_links(atlas, bench):
    """peak_to_gene on the store path, synchronous scheduler."""
    with dask.config.set(scheduler="sync"):
        return p2g.tl.peak_to_gene(str(atlas), gene_annotation=bench.load_genes(atlas), **P2G_KW)


def _csr_rows_sorted_unique(X) -> bool:
    gaps = np.diff(X.indices.astype(np.int64))
    row_starts = np.zeros(X.indices.size, dtype=bool)
    row_starts[X.indptr[:-1][np.diff(X.indptr) > 0]] = True
    return bool((gaps[~row_starts[1:]] > 0).all())


def test_make_atlas_store__script_writes_openable_store(atlas):
    store = p2g.io.open_store(atlas)
    n = SMALL["cells"]
    assert store.atac.X.shape == (n, SMALL["peaks"]) and store.rna.X.shape == (n, SMALL["genes"])
    assert store.attrs["n_obs"] == n and store.attrs["p2g_simulation"]["seed"] == 5
    assert list(store.atac.obs.columns) == ["cell_type", "lineage", "n_fragment"]
    assert store.atac.obs.index.equals(store.rna.obs.index) and store.atac.obs.index.is_unique
    assert {"chrom", "start", "end"} <= set(store.atac.var.columns)
    assert store.atac.obsm["X_latent"].shape == (n, 8)
    for modality in (store.atac, store.rna):
        X = modality.to_memory()
        assert X.dtype == np.int32 and X.indices.dtype == np.int32 and X.data.min() >= 1
        assert _csr_rows_sorted_unique(X)
        assert modality.chunk_cells >= 256  # from the bytes target, as ingest chooses it
    atac = store.atac.to_anndata()  # anndata reads the group as any AnnData zarr
    np.testing.assert_array_equal(atac.obs["n_fragment"].to_numpy(), np.asarray(atac.X.sum(axis=1)).ravel())
    peaks = p2g.io.peak_table(atac.var_names)
    np.testing.assert_array_equal(peaks["start"].to_numpy(), atac.var["start"].to_numpy())
    assert (peaks.groupby("chrom", sort=False)["start"].diff().dropna() >= 600).all()


def test_make_atlas_store__sparsity_within_targets(atlas):
    store = p2g.io.open_store(atlas)
    X, R = store.atac.to_memory(), store.rna.to_memory()
    atac_per_cell = np.diff(X.indptr).mean()
    rna_per_cell = np.diff(R.indptr).mean()
    assert abs(atac_per_cell / SMALL["atac_nnz"] - 1) < 0.05, atac_per_cell
    assert abs(rna_per_cell / SMALL["rna_nnz"] - 1) < 0.05, rna_per_cell
    # scATAC-like: mostly ones; scRNA-like: a heavier tail of counts.
    assert (X.data == 1).mean() > 0.85
    assert (R.data == 1).mean() < (X.data == 1).mean() and R.data.max() > X.data.max()
    # Depth varies between cells (log-normal), and cell types differ in their profiles.
    assert 0.2 < np.diff(X.indptr).std() / atac_per_cell < 0.6
    types = store.atac.obs["cell_type"].to_numpy()
    means = np.vstack([np.asarray(X[types == t].mean(axis=0)).ravel() for t in ("T_CD4", "Mono_CD14")])
    assert np.corrcoef(means)[0, 1] < 0.95


def test_make_atlas_store__truth_and_genes_consistent(atlas, bench):
    store = p2g.io.open_store(atlas)
    truth, genes = bench.load_truth(atlas), bench.load_genes(atlas)
    assert len(truth) == 2 * SMALL["linked_genes"]
    assert truth.groupby("gene").size().eq(2).all()
    assert truth["peak"].isin(store.atac.var.index).all() and genes["gene_name"].isin(store.rna.var.index).all()
    var = store.atac.var.loc[truth["peak"]]
    gene = genes.set_index("gene_name").loc[truth["gene"]]
    tss = np.where(gene["strand"] == "-", gene["end"] - 1, gene["start"])
    centre = (var["start"].to_numpy() + var["end"].to_numpy()) // 2
    np.testing.assert_array_equal(truth["distance"].to_numpy(), centre - tss)
    assert (var["chrom"].to_numpy() == gene["chrom"].to_numpy()).all()
    assert truth["distance"].abs().between(9_000, 250_000).all()


def test_make_atlas_store__same_seed_same_store_any_block(maker, tmp_path):
    kw = dict(n_peaks=2000, n_genes=300, atac_nnz=100, rna_nnz=60, n_linked_genes=30, seed=11)
    a = maker.make_atlas_store(2500, tmp_path / "a" / "s.zarr", block_cells=1000, **kw)
    b = maker.make_atlas_store(2500, tmp_path / "b" / "s.zarr", block_cells=2000, **kw)
    c = maker.make_atlas_store(2500, tmp_path / "c" / "s.zarr", block_cells=1000, **{**kw, "seed": 12})
    for name in ("atac", "rna"):
        xa, xb, xc = (getattr(s, name).to_memory() for s in (a, b, c))
        assert (xa != xb).nnz == 0
        assert (xa != xc).nnz > 0
    pd.testing.assert_frame_equal(a.atac.obs, b.atac.obs)
    assert (tmp_path / "a" / "truth.tsv").read_bytes() == (tmp_path / "b" / "truth.tsv").read_bytes()


def test_make_atlas_store__refuses_overwrite(maker, atlas, tmp_path):
    with pytest.raises(FileExistsError, match="out="):
        maker.make_atlas_store(1000, atlas, n_peaks=500, n_genes=100, atac_nnz=50, rna_nnz=30, n_linked_genes=5)
    # A second store in the same folder would overwrite the first one's truth.tsv.
    with pytest.raises(FileExistsError, match="truth.tsv"):
        maker.make_atlas_store(1000, atlas.parent / "other.zarr", n_peaks=500, n_genes=100, atac_nnz=50,
                               rna_nnz=30, n_linked_genes=5)
    with pytest.raises(ValueError, match="block_cells=1500"):
        maker.make_atlas_store(1000, tmp_path / "x.zarr", block_cells=1500)
    with pytest.raises(ValueError, match="atac_nnz=5000"):
        maker.make_atlas_store(1000, tmp_path / "y.zarr", n_peaks=500, n_genes=100, atac_nnz=5000, n_linked_genes=5)
    assert not (tmp_path / "y.zarr").exists()


def test_load_truth__rejects_truth_of_another_store(atlas, bench, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(atlas.parent, copy)
    truth = pd.read_csv(copy / "truth.tsv", sep="\t")
    truth.iloc[1:].to_csv(copy / "truth.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="another store"):
        bench.load_truth(copy / "atlas.zarr")


def test_recall__matches_independent_count(store_links, atlas, bench):
    truth = bench.load_truth(atlas)
    significant = {
        (p, g) for p, g, f, r in store_links[["peak", "gene", "fdr", "correlation"]].itertuples(index=False)
        if f < 1e-4 and r > 0.45
    }
    expected = sum((p, g) in significant for p, g in zip(truth["peak"], truth["gene"])) / len(truth)
    assert bench.recall(store_links, truth) == expected
    loose = {(p, g) for p, g, f in store_links[["peak", "gene", "fdr"]].itertuples(index=False) if f < 0.05}
    expected_loose = sum((p, g) in loose for p, g in zip(truth["peak"], truth["gene"])) / len(truth)
    assert bench.recall(store_links, truth, fdr_cutoff=0.05, cor_cutoff=-1) == expected_loose


def test_planted_links__recovered_far_above_decoys(store_links, atlas, bench):
    truth = bench.load_truth(atlas)
    rng = np.random.default_rng(0)
    decoys = store_links.iloc[rng.choice(len(store_links), 2000, replace=False)][["peak", "gene"]]
    decoys = decoys.merge(truth, on=["peak", "gene"], how="left", indicator=True)
    decoys = decoys[decoys["_merge"] == "left_only"]
    planted, chance = bench.recall(store_links, truth), bench.recall(store_links, decoys)
    assert planted > 0.3 and planted > 5 * chance, (planted, chance)


def test_peak_to_gene__store_equals_in_memory(store_links, atlas, bench):
    store = p2g.io.open_store(atlas)
    atac, rna = store.atac.to_anndata(), store.rna.to_anndata()
    with dask.config.set(scheduler="sync"):
        in_memory = p2g.tl.peak_to_gene(atac, rna=rna, gene_annotation=bench.load_genes(atlas), **P2G_KW)
    pd.testing.assert_frame_equal(store_links, in_memory, check_exact=True)
    # Independently: metacell sums with plain numpy, ArchR's normalisation, Pearson per pair.
    members = np.asarray(store_links.attrs["metacells"])
    X, R = atac.X.toarray().astype(np.float64), rna.X.toarray().astype(np.float64)

    def normalised(M):
        sums = np.stack([M[cells].sum(axis=0) for cells in members])
        return np.log2(sums / sums.sum(axis=1, keepdims=True) * 1e4 + 1)

    A, G = normalised(X), normalised(R)
    picked = store_links.sample(300, random_state=1)
    p_idx = atac.var_names.get_indexer(picked["peak"])
    g_idx = rna.var_names.get_indexer(picked["gene"])
    expected = [np.corrcoef(A[:, p], G[:, g])[0, 1] for p, g in zip(p_idx, g_idx)]
    np.testing.assert_allclose(picked["correlation"].to_numpy(), expected, atol=1e-9)


def test_peak_to_gene__store_equals_in_memory_on_local_cluster(store_links, atlas, bench):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        links = p2g.tl.peak_to_gene(str(atlas), gene_annotation=bench.load_genes(atlas), client=client, **P2G_KW)
    pd.testing.assert_frame_equal(links, store_links, check_exact=True)


def test_run_peak_to_gene__row_on_local_cluster(store_links, atlas, bench):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      memory_limit="2GiB") as cluster, Client(cluster) as client:
        row = bench.run_peak_to_gene(atlas, client=client, n_metacells=P2G_KW["n_metacells"],
                                     k_neighbors=P2G_KW["k_neighbors"], seed=P2G_KW["seed"])
        assert bench.spilled_bytes(client) == 0
    store = p2g.io.open_store(atlas)
    import zarr

    group = zarr.open_group(str(atlas), mode="r")
    nnz = group["atac/X/data"].shape[0] + group["rna/X/data"].shape[0]
    assert row["cells"] == SMALL["cells"] and row["nnz"] == nnz == store.atac.nnz + store.rna.nnz
    assert row["recall"] == bench.recall(store_links, bench.load_truth(atlas))
    assert row["pairs"] == len(store_links) and row["kept_metacells"] == store_links.attrs["metacells"].shape[0]
    assert 0 < row["aggregation_s"] < row["total_s"] and 0 < row["correlation_s"] < row["total_s"]
    assert row["fdr_s"] > 0 and row["nnz_per_s"] == pytest.approx(nnz / row["aggregation_s"])
    assert row["peak_rss_bytes"] > 100 * 2**20 and row["spilled_bytes"] == 0
    table = bench.format_table([row])
    assert f"{row['kept_metacells']}/{P2G_KW['n_metacells']}" in table and f"{row['recall']:.3f}" in table


def test_stage_times__wall_and_busy(bench):
    def rec(key, *spans):
        return {"key": key, "startstops": [{"action": a, "start": s, "stop": e} for a, s, e in spans]}

    records = [
        rec("p2g-read-atac-abc-0", ("compute", 10.0, 11.0)),
        rec("p2g-metacell-sum-atac-abc-0", ("transfer", 11.0, 11.5), ("compute", 11.5, 14.0)),
        rec("p2g-metacell-sum-rna-abc-1", ("compute", 12.0, 13.0)),
        rec("p2g-correlate-xyz", ("compute", 14.0, 16.0)),
        rec("p2g-links-xyz", ("compute", 16.0, 16.25)),
        rec("unrelated-1", ("compute", 0.0, 100.0)),
    ]
    times = bench.stage_times(records)
    assert times["aggregation"] == {"wall": 4.0, "busy": 1.0 + 2.5 + 1.0, "tasks": 3}
    assert times["correlation"] == {"wall": 2.0, "busy": 2.0, "tasks": 1}
    assert times["fdr"] == {"wall": 0.25, "busy": 0.25, "tasks": 1}
    assert times["lsi_projection"] == {"wall": 0.0, "busy": 0.0, "tasks": 0}


def test_scale_checks__ratios_between_sizes(bench):
    def row(cells, total, rss, recall, nnz_per_s=60e6):
        return {"run": "peak_to_gene", "cells": cells, "n_metacells": 500, "total_s": total,
                "peak_rss_bytes": rss * 2**30, "recall": recall, "nnz_per_s": nnz_per_s}

    lines = bench.scale_checks([row(100_000, 30.0, 4.0, 0.60), row(1_000_000, 300.0, 5.0, 0.62, 40e6)])
    assert len(lines) == 3
    assert "time x10.0 [PASS <= 12]" in lines[2]
    assert "RSS x1.25 [PASS" in lines[2] and "recall 0.600 -> 0.620 [PASS]" in lines[2]
    assert "[FAIL >= 50]" in lines[1] and "[PASS >= 50]" in lines[0]
    bad = bench.scale_checks([row(100_000, 30.0, 2.0, 0.6), row(1_000_000, 400.0, 9.0, 0.5)])
    assert "time x13.3 [FAIL" in bad[2] and "RSS x4.50 [FAIL" in bad[2] and "[FAIL]" in bad[2]
    assert "RSS 9.00 GiB > 8.0 [FAIL]" in bad[1]


def test_repeat_atlas_store__copies_rows_and_jitters_the_latent(atlas, tmp_path):
    out = tmp_path / "big" / "atlas.zarr"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "repeat_atlas_store.py"), str(atlas), "--copies", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    small, big = p2g.io.open_store(atlas), p2g.io.open_store(out)
    n = small.atac.n_obs
    for name in ("atac", "rna"):
        src, rep = getattr(small, name).to_memory(), getattr(big, name).to_memory()
        assert rep.shape == (3 * n, src.shape[1])
        for copy in range(3):
            assert (rep[copy * n:(copy + 1) * n] != src).nnz == 0
    assert big.atac.obs.index.is_unique and big.atac.obs.index[n] == small.atac.obs.index[0] + "-1"
    latent, base = np.asarray(big.atac.obsm["X_latent"]), np.asarray(small.atac.obsm["X_latent"])
    shift = latent[n:2 * n] - base
    assert 0.01 < shift.std() < 0.03 and abs(shift.mean()) < 0.005
    assert (out.parent / "truth.tsv").read_bytes() == (atlas.parent / "truth.tsv").read_bytes()
    assert p2g.io.verify_store(out).startswith("ok")
