"""peak_to_gene against a plain numpy/scipy recomputation of ArchR's statistics."""

import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import p2g_dask as p2g
from p2g_dask._tables import LINK_COLUMNS
from p2g_dask.tl.engine.pairs import candidate_pairs


def reference_links(atac, rna, genes, neighbours, max_distance):
    """Brute force: dense metacell sums, per-pair np.corrcoef, scipy's t and BH."""
    X_atac = atac.X.toarray().astype(np.float64)
    X_rna = rna.X.toarray().astype(np.float64)
    m = len(neighbours)
    sums_a = np.stack([X_atac[cells].sum(0) for cells in neighbours])
    sums_r = np.stack([X_rna[cells].sum(0) for cells in neighbours])
    norm_a = np.log2(sums_a / sums_a.sum(1, keepdims=True) * 1e4 + 1)
    norm_r = np.log2(sums_r / sums_r.sum(1, keepdims=True) * 1e4 + 1)
    peaks = atac.var
    centre = (peaks["start"].to_numpy() + peaks["end"].to_numpy()) // 2
    gene_pos = {g: i for i, g in enumerate(rna.var_names)}
    rows = []
    for g in genes.itertuples():
        tss = g.start if g.strand == "+" else g.end - 1
        for p in np.flatnonzero((peaks["chrom"].to_numpy() == g.chrom) & (np.abs(centre - tss) <= max_distance)):
            a, r = norm_a[:, p], norm_r[:, gene_pos[g.gene_name]]
            corr = np.nan if a.std() == 0 or r.std() == 0 else np.corrcoef(a, r)[0, 1]
            rows.append((peaks.index[p], g.gene_name, centre[p] - tss, corr))
    ref = pd.DataFrame(rows, columns=["peak", "gene", "distance", "correlation"])
    t = ref["correlation"] / np.sqrt(np.maximum(1 - ref["correlation"] ** 2, 1e-17) / (m - 2))
    ref["pval"] = 2 * stats.t.sf(np.abs(t), m - 2)
    ok = ref["pval"].notna()
    ref["fdr"] = np.nan
    ref.loc[ok, "fdr"] = stats.false_discovery_control(ref.loc[ok, "pval"], method="bh")
    var_a = stats.rankdata(norm_a.var(0, ddof=1))
    var_r = stats.rankdata(norm_r.var(0, ddof=1))
    ref["var_q_atac"] = np.trunc(var_a)[atac.var_names.get_indexer(ref["peak"])] / len(var_a)
    ref["var_q_rna"] = np.trunc(var_r)[rna.var_names.get_indexer(ref["gene"])] / len(var_r)
    return ref


def _compare(links, ref):
    merged = links.merge(ref, on=["peak", "gene"], suffixes=("", "_ref"), how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), "pair sets differ"
    np.testing.assert_array_equal(merged["distance"], merged["distance_ref"])
    np.testing.assert_allclose(merged["correlation"], merged["correlation_ref"], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(merged["pval"], merged["pval_ref"], rtol=1e-6, equal_nan=True, atol=1e-300)
    np.testing.assert_allclose(merged["fdr"], merged["fdr_ref"], rtol=1e-9, equal_nan=True, atol=1e-300)
    np.testing.assert_allclose(merged["var_q_atac"], merged["var_q_atac_ref"])
    np.testing.assert_allclose(merged["var_q_rna"], merged["var_q_rna_ref"])


@pytest.fixture(scope="module")
def tiny():
    sim = p2g.datasets.simulate_multiome(n_cells=300, n_peaks=1200, n_genes=120, n_linked_genes=12, seed=11)
    # A constant peak and a constant gene: their pairs must be reported with NaN, not dropped.
    atac = sim.atac.copy()
    X = atac.X.tolil()
    X[:, 5] = 1
    atac.X = sp.csr_matrix(X)
    rna = sim.rna.copy()
    X = rna.X.tolil()
    X[:, 3] = 0
    rna.X = sp.csr_matrix(X)
    neighbours = p2g.tl.metacells(atac.obsm["X_latent"], n_metacells=50, k_neighbors=15, seed=3)
    return sim, atac, rna, neighbours


@pytest.mark.parametrize("chunk_cells", [300, 64, 97])
def test_peak_to_gene__matches_numpy_reference_over_chunkings(tiny, chunk_cells):
    sim, atac, rna, neighbours = tiny
    with dask.config.set(scheduler="sync"):
        links = p2g.tl.peak_to_gene(atac, rna=rna, gene_annotation=sim.genes, metacells=neighbours,
                                    max_distance=100_000, chunk_cells=chunk_cells, split_every=2)
    ref = reference_links(atac, rna, sim.genes, neighbours, 100_000)
    _compare(links, ref)
    assert links["correlation"].isna().any(), "constant features must give NaN rows"
    assert list(links.columns) == list(LINK_COLUMNS)


def test_candidate_pairs__equal_brute_force_scan(small_sim):
    peaks = small_sim.atac.var
    genes = small_sim.genes
    got = candidate_pairs(peaks, genes, max_distance=150_000)
    centre = (peaks["start"].to_numpy() + peaks["end"].to_numpy()) // 2
    tss = np.where(genes["strand"] == "+", genes["start"], genes["end"] - 1)
    same = peaks["chrom"].to_numpy()[:, None] == genes["chrom"].to_numpy()[None, :]
    near = np.abs(centre[:, None] - tss[None, :]) <= 150_000
    p, g = np.nonzero(same & near)
    assert sorted(zip(got["peak_index"], got["gene_index"])) == sorted(zip(p, g))
    np.testing.assert_array_equal(got["distance"], centre[got["peak_index"]] - tss[got["gene_index"]])


def test_candidate_pairs__boundary_is_inclusive():
    peaks = pd.DataFrame({"chrom": ["c"] * 3, "start": [0, 10, 20], "end": [2, 12, 22]})  # centres 1, 11, 21
    genes = pd.DataFrame({"chrom": ["c"], "start": [0], "end": [12], "strand": ["-"]})  # TSS 11
    got = candidate_pairs(peaks, genes, max_distance=10)
    assert got["peak_index"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="max_distance=0"):
        candidate_pairs(peaks, genes, max_distance=0)


def test_peak_to_gene__local_cluster_equals_synchronous(small_sim, local_client):
    kwargs = dict(rna=small_sim.rna, gene_annotation=small_sim.genes, use_rep="X_latent",
                  n_metacells=80, k_neighbors=20, chunk_cells=150)
    with dask.config.set(scheduler="sync"):
        sync = p2g.tl.peak_to_gene(small_sim.atac, **kwargs)
    on_cluster = p2g.tl.peak_to_gene(small_sim.atac, client=local_client, **kwargs)
    pd.testing.assert_frame_equal(sync, on_cluster)


def test_peak_to_gene__store_equals_in_memory(small_sim, small_store, local_client):
    kwargs = dict(gene_annotation=small_sim.genes, use_rep="X_latent", n_metacells=80, k_neighbors=20)
    in_memory = p2g.tl.peak_to_gene(small_sim.atac, rna=small_sim.rna, **kwargs)
    from_store = p2g.tl.peak_to_gene(small_store.path, client=local_client, **kwargs)
    pd.testing.assert_frame_equal(in_memory, from_store)
    assert from_store.attrs["metacells"] == in_memory.attrs["metacells"]


def test_peak_to_gene__store_sums_atac_and_rna_on_different_workers(small_sim, small_store, local_client):
    # Each modality's lane (a chain of summing tasks) is pinned to its own worker: left to the
    # scheduler, both chains of a first call sometimes started on one worker, the other idle.
    from distributed import get_task_stream

    kwargs = dict(gene_annotation=small_sim.genes, use_rep="X_latent", n_metacells=80, k_neighbors=20)
    with get_task_stream(local_client) as stream:
        links = p2g.tl.peak_to_gene(small_store.path, client=local_client, **kwargs)
    sums = [task for task in stream.data if str(task["key"]).startswith("p2g-metacell-sum-")
            and "combine" not in str(task["key"])]
    chunks = -(-small_sim.atac.n_obs // small_store.atac.chunk_cells)
    assert len(sums) == 2 * chunks  # one lane each: ATAC's chunks, then RNA's
    assert {task["worker"] for task in sums} == set(local_client.scheduler_info()["workers"])
    # The same links as with the scheduler's own placement (the in-memory sums).
    pd.testing.assert_frame_equal(links, p2g.tl.peak_to_gene(small_sim.atac, rna=small_sim.rna, **kwargs))


def test_membership_sums__lanes_pinned_round_robin_from_first_lane():
    from p2g_dask.io.inputs import Modality
    from p2g_dask.tl.engine.accumulate import membership_sums

    class Workers:  # what membership_sums asks of a distributed client
        def scheduler_info(self):
            return {"workers": {"tcp://b:2": {}, "tcp://c:3": {}, "tcp://a:1": {}}}

    X = sp.csr_matrix(np.arange(24).reshape(8, 3))
    mod = Modality("atac", pd.DataFrame(index=list("abcdefgh")), pd.DataFrame(index=list("xyz")), X=X)
    blocks, _ = membership_sums(mod, sp.csr_matrix(np.ones((2, 8))), chunk_cells=2, lanes=2, client=Workers(),
                                first_lane=2)
    for lane, want in zip(blocks[0].lanes, ["tcp://c:3", "tcp://a:1"]):  # lanes 2 and 3 of 3 workers
        layers = lane.__dask_graph__().layers
        pinned = {tuple(layer.annotations["workers"]) for name, layer in layers.items()
                  if name.startswith("p2g-metacell-sum-")}
        assert pinned == {(want,)}
        assert all(layer.annotations["allow_other_workers"] for name, layer in layers.items()
                   if name.startswith("p2g-metacell-sum-"))
    unpinned, _ = membership_sums(mod, sp.csr_matrix(np.ones((2, 8))), chunk_cells=2, lanes=2)
    assert not any(layer.annotations for layer in unpinned[0].lanes[0].__dask_graph__().layers.values())


def test_peak_to_gene__gene_obsm_equals_rna(small_sim):
    atac = small_sim.atac.copy()
    atac.obsm["X_gene"] = small_sim.rna.X.toarray()
    kwargs = dict(gene_annotation=small_sim.genes, use_rep="X_latent", n_metacells=60, k_neighbors=20)
    via_rna = p2g.tl.peak_to_gene(small_sim.atac, rna=small_sim.rna, **kwargs)
    via_obsm = p2g.tl.peak_to_gene(atac, gene_obsm="X_gene", gene_names=small_sim.rna.var_names, **kwargs)
    pd.testing.assert_frame_equal(via_rna, via_obsm)


def test_peak_to_gene__shared_metacells_reproduce(small_sim):
    kwargs = dict(rna=small_sim.rna, gene_annotation=small_sim.genes, use_rep="X_latent",
                  n_metacells=60, k_neighbors=20, seed=4)
    first = p2g.tl.peak_to_gene(small_sim.atac, **kwargs)
    second = p2g.tl.peak_to_gene(small_sim.atac, metacells=first.attrs["metacells"], **kwargs)
    pd.testing.assert_frame_equal(first, second)
    assert first.attrs["params"]["seed"] == 4


def test_peak_to_gene__recall_of_planted_links_default_parameters():
    sim = p2g.datasets.simulate_multiome(n_cells=3000, seed=1)
    links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent")
    significant = set(zip(*links.loc[links["fdr"] < 0.05, ["peak", "gene"]].to_numpy().T))
    truth = set(zip(sim.truth["peak"], sim.truth["gene"]))
    recall = len(truth & significant) / len(truth)
    assert recall >= 0.8, recall


def test_write_links__parquet_round_trip_keeps_attrs(small_sim, tmp_path):
    links = p2g.tl.peak_to_gene(small_sim.atac, rna=small_sim.rna, gene_annotation=small_sim.genes,
                                use_rep="X_latent", n_metacells=40, k_neighbors=20)
    out = p2g.io.write_links(links, tmp_path / "links.parquet")
    back = p2g.io.read_links(out)
    pd.testing.assert_frame_equal(links, back)
    assert back.attrs["metacells"] == links.attrs["metacells"]
    assert back.attrs["params"] == links.attrs["params"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        p2g.io.write_links(links, out)


@pytest.mark.parametrize("block_bytes, lanes, sort", [(10**9, 1, True), (600, 2, True), (600, 3, False)])
def test_metacell_sums__column_blocks_and_lanes_match_numpy(small_sim, block_bytes, lanes, sort):
    from p2g_dask.io.inputs import Modality
    from p2g_dask.tl.engine.accumulate import metacell_sums
    from p2g_dask.tl.engine.columns import take_block_columns

    X = small_sim.atac.X.copy()
    if not sort:  # real files can hold rows whose column indices are not sorted
        for row in range(X.shape[0]):
            a, b = X.indptr[row], X.indptr[row + 1]
            X.indices[a:b], X.data[a:b] = X.indices[a:b][::-1].copy(), X.data[a:b][::-1].copy()
        assert not X.has_sorted_indices or not sp.csr_matrix(X).has_sorted_indices
    mod = Modality("atac", small_sim.atac.obs, small_sim.atac.var, X=X)
    neighbours = p2g.tl.metacells(small_sim.atac.obsm["X_latent"], n_metacells=30, k_neighbors=25, seed=2)
    blocks, totals = metacell_sums(mod, neighbours, chunk_cells=70, lanes=lanes, block_bytes=block_bytes)
    assert len(blocks) == (1 if block_bytes > 10**6 else -(-X.shape[1] // (600 // (len(neighbours) * 4))))
    sums, totals = dask.compute([b.sums for b in blocks], totals, scheduler="sync")
    dense = small_sim.atac.X.toarray()
    expected = np.stack([dense[cells].sum(0) for cells in neighbours])
    gathered = take_block_columns(np.arange(X.shape[1]), [b.first for b in blocks], *sums)
    np.testing.assert_array_equal(gathered, expected)
    np.testing.assert_array_equal(totals, expected.sum(1))
    scattered = np.array([5, 2000, 17, 2999, 1000])
    np.testing.assert_array_equal(take_block_columns(scattered, [b.first for b in blocks], *sums), expected[:, scattered])


PREPARE_SCRIPT = """
import numpy as np, p2g_dask as p2g
from p2g_dask.datasets import simulate_multiome
from p2g_dask.tl.engine import kernels, knn
from p2g_dask.tl.engine.prepare import csr_dtypes, prepare_in_background
sim = simulate_multiome(n_cells=300, n_peaks=600, n_genes=60, n_linked_genes=5, seed=2)
sim.atac.X = sim.atac.X.astype(np.float32); sim.rna.X = sim.rna.X.astype(np.float32)
prepare_in_background(tuple(csr_dtypes(X) for X in (sim.atac.X, sim.rna.X))).join()
def signatures():
    return {f.__name__: set(f.signatures) for f in (knn._keep_nearest, kernels._accumulate_csr,
            kernels._standardized_features_kernel, kernels._pair_dots)}
before = signatures()
p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent", n_metacells=40,
                    k_neighbors=10)
after = signatures()
print(all(before.values()), before == after)
"""


def test_prepare_in_background__covers_the_kernels_an_in_memory_call_runs():
    # The tiny calls on the background thread give the kernels the very signatures the real
    # call uses: the call compiles (or loads) nothing more in a fresh process.
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", PREPARE_SCRIPT], env=env, check=True, capture_output=True,
                         text=True, timeout=300).stdout.split()
    assert out == ["True", "True"]
