"""co_accessibility and coaccessibility_loops against an independent numpy/scipy recomputation."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import p2g_dask as p2g
from p2g_dask._tables import COACCESSIBILITY

MAX_DISTANCE = 1_500_000


@pytest.fixture(scope="module")
def tiny():
    sim = p2g.datasets.simulate_multiome(n_cells=240, n_peaks=600, n_genes=60, n_linked_genes=6, n_chromosomes=3,
                                         seed=5)
    atac = sim.atac.copy()
    X = atac.X.tolil()
    X[:, 4] = 0  # a constant peak: its pairs have an undefined r and are dropped
    atac.X = sp.csr_matrix(X)
    neighbours = p2g.tl.metacells(atac.obsm["X_latent"], n_metacells=40, k_neighbors=15, seed=3)
    return sim, atac, neighbours


def reference_coaccess(atac, neighbours, max_distance, scale_to=1e4):
    """Straight from the definitions: dense sums, every ordered pair, scipy statistics."""
    X = atac.X.toarray().astype(np.float64)
    sums = np.stack([X[row].sum(axis=0) for row in neighbours])
    norm = np.log2(sums / sums.sum(axis=1, keepdims=True) * scale_to + 1)
    variance = norm.var(axis=0, ddof=1)
    var = atac.var
    chrom = var["chrom"].astype(str).to_numpy()
    centre = (var["start"].to_numpy(np.int64) + var["end"].to_numpy(np.int64)) // 2
    rows = []
    for i in range(len(var)):
        for j in range(len(var)):
            if i != j and chrom[i] == chrom[j] and abs(centre[i] - centre[j]) <= max_distance:
                a, b = norm[:, i], norm[:, j]
                if a.std() == 0 or b.std() == 0:
                    continue
                rows.append((i, j, np.corrcoef(a, b)[0, 1]))
    ref = pd.DataFrame(rows, columns=["i", "j", "correlation"])
    m = len(neighbours)
    r = ref["correlation"].to_numpy()
    t = r / np.sqrt(np.maximum(1 - r**2, 1e-17) / (m - 2))
    ref["t"] = t
    ref["pval"] = 2 * stats.t.sf(np.abs(t), m - 2)
    ref["fdr"] = stats.false_discovery_control(ref["pval"].to_numpy(), method="bh")
    v1, v2 = variance[ref["i"]], variance[ref["j"]]
    ref["var_q1"] = np.trunc(stats.rankdata(v1)) / v1.size
    ref["var_q2"] = np.trunc(stats.rankdata(v2)) / v2.size
    ref["peak1"] = var.index.to_numpy()[ref["i"]]
    ref["peak2"] = var.index.to_numpy()[ref["j"]]
    ref["distance"] = centre[ref["j"]] - centre[ref["i"]]
    return ref


def _compare(table, ref):
    got = table.set_index(["peak1", "peak2"])
    want = ref.set_index(["peak1", "peak2"])
    assert set(got.index) == set(want.index)
    assert len(got) == len(want)
    got = got.loc[want.index]
    np.testing.assert_allclose(got["correlation"], want["correlation"], atol=1e-6)
    np.testing.assert_allclose(got["t"], want["t"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["pval"], want["pval"], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(got["fdr"], want["fdr"], rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(got["distance"], want["distance"])
    np.testing.assert_allclose(got["var_q1"], want["var_q1"])
    np.testing.assert_allclose(got["var_q2"], want["var_q2"])


@pytest.mark.parametrize("chunk_cells", [240, 64, 37])
def test_co_accessibility__matches_numpy_reference_over_chunkings(tiny, chunk_cells):
    sim, atac, neighbours = tiny
    with dask.config.set(scheduler="sync"):
        table = p2g.tl.co_accessibility(atac, metacells=neighbours, max_distance=MAX_DISTANCE,
                                        chunk_cells=chunk_cells, split_every=2)
    ref = reference_coaccess(atac, neighbours, MAX_DISTANCE)
    assert len(ref) > 500
    assert not (table["peak1"] == atac.var_names[4]).any()
    _compare(table, ref)
    assert list(table.columns) == COACCESSIBILITY.names
    assert table.attrs["metacells"].shape == neighbours.shape


def test_co_accessibility__local_cluster_equals_synchronous(tiny, local_client):
    sim, atac, neighbours = tiny
    with dask.config.set(scheduler="sync"):
        sync = p2g.tl.co_accessibility(atac, metacells=neighbours, max_distance=MAX_DISTANCE)
    on_cluster = p2g.tl.co_accessibility(atac, metacells=neighbours, max_distance=MAX_DISTANCE, client=local_client)
    pd.testing.assert_frame_equal(sync, on_cluster)
    keys = set(local_client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.task_prefixes]))
    assert {"p2g-columns", "p2g-correlate"} <= keys


def test_co_accessibility__same_metacells_as_peak_to_gene(tiny):
    sim, atac, _ = tiny
    kwargs = dict(use_rep="X_latent", n_metacells=30, k_neighbors=12, seed=4)
    with dask.config.set(scheduler="sync"):
        coa = p2g.tl.co_accessibility(atac, max_distance=MAX_DISTANCE, **kwargs)
        links = p2g.tl.peak_to_gene(atac, rna=sim.rna, gene_annotation=sim.genes, **kwargs)
        shared = p2g.tl.co_accessibility(atac, max_distance=MAX_DISTANCE, metacells=links.attrs["metacells"])
    np.testing.assert_array_equal(np.asarray(coa.attrs["metacells"]), np.asarray(links.attrs["metacells"]))
    pd.testing.assert_frame_equal(coa, shared)


def test_co_accessibility__store_equals_memory(small_sim, small_store):
    neighbours = p2g.tl.metacells(small_sim.atac.obsm["X_latent"], n_metacells=30, k_neighbors=15, seed=1)
    with dask.config.set(scheduler="sync"):
        memory = p2g.tl.co_accessibility(small_sim.atac, metacells=neighbours)
        store = p2g.tl.co_accessibility(small_store, metacells=neighbours)
    pd.testing.assert_frame_equal(memory, store)


def test_co_accessibility__bad_max_distance_names_argument(tiny):
    with pytest.raises(ValueError, match="max_distance=-5"):
        p2g.tl.co_accessibility(tiny[1], metacells=tiny[2], max_distance=-5)


def reference_loops(table, cor_cutoff, resolution):
    best = {}
    for row in table.itertuples():
        if row.correlation < cor_cutoff:
            continue
        a = row.centre1 // resolution * resolution + resolution // 2
        b = row.centre2 // resolution * resolution + resolution // 2
        (start, p1), (end, p2) = sorted([(a, row.peak1), (b, row.peak2)], key=lambda x: x[0])
        if start == end:
            continue
        key = (row.chrom, start, end)
        if key not in best or row.correlation > best[key][2]:
            best[key] = (p1, p2, row.correlation)
    return best


@pytest.mark.parametrize("resolution", [1, 1000, 100_000])
def test_coaccessibility_loops__matches_reference(tiny, resolution):
    sim, atac, neighbours = tiny
    with dask.config.set(scheduler="sync"):
        table = p2g.tl.co_accessibility(atac, metacells=neighbours, max_distance=MAX_DISTANCE)
    loops = p2g.tl.coaccessibility_loops(table, cor_cutoff=0.3, resolution=resolution)
    ref = reference_loops(table, 0.3, resolution)
    assert len(ref) > 10
    assert len(loops) == len(ref)
    for row in loops.itertuples():
        assert ref[(row.chrom, row.start, row.end)][2] == pytest.approx(row.correlation)
    assert (loops["end"] > loops["start"]).all()
    assert loops.equals(loops.sort_values(["chrom", "start", "end"]).reset_index(drop=True))
    if resolution == 1:
        # Every kept pair is one loop: both orders collapse into one row, named at its lower end.
        assert len(loops) == int((table["correlation"] >= 0.3).sum()) // 2
        ref_pairs = {(v[0], v[1]) for v in ref.values()}
        assert set(zip(loops["peak1"], loops["peak2"])) == ref_pairs


def test_coaccessibility_loops__bad_resolution_names_argument(tiny):
    table = pd.DataFrame({c: [] for c in COACCESSIBILITY.names})
    with pytest.raises(ValueError, match="resolution=0"):
        p2g.tl.coaccessibility_loops(table, resolution=0)


@pytest.mark.parametrize("fmt", ["bedpe", "interact", "longrange"])
def test_write_links__coaccessibility_loops(tmp_path, fmt):
    loops = pd.DataFrame({"chrom": ["chr2", "chr1"], "start": [500, 100], "end": [900, 4000],
                          "peak1": ["chr2:400-600", "chr1:0-200"], "peak2": ["chr2:800-1000", "chr1:3900-4100"],
                          "correlation": [0.6, 0.8], "t": [3.0, 4.0], "pval": [0.01, 0.001], "fdr": [0.02, 0.002],
                          "var_q1": [0.5, 0.5], "var_q2": [0.5, 0.5]})
    path = p2g.io.write_links(loops, tmp_path / f"loops.{fmt}", format=fmt, **({"header": False} if fmt == "bedpe" else
                                                                               {"track_line": False} if fmt == "interact"
                                                                               else {}))
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    if fmt == "bedpe":
        assert lines[0][:8] == ["chr1", "100", "101", "chr1", "4000", "4001", "chr1:3900-4100|chr1:0-200", "0.8"]
        assert len(lines) == 2
    elif fmt == "interact":
        assert lines[0][:3] == ["chr1", "100", "4001"] and lines[0][5] == "0.8"
        assert lines[0][8:11] == ["chr1", "100", "101"] and lines[0][13:16] == ["chr1", "4000", "4001"]
    else:
        assert lines[0] == ["chr1", "100", "101", "chr1:4000-4001,0.8"]
        assert len(lines) == 4


def test_plot_peak2gene__coaccessibility_track(tiny):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim, atac, neighbours = tiny
    t = sim.truth.merge(sim.genes, left_on="gene", right_on="gene_name")
    coords = t.peak.str.split("[:-]")
    links = pd.DataFrame({"peak": t.peak, "gene": t.gene, "chrom": t.chrom, "peak_start": coords.str[1].astype(int),
                          "peak_end": coords.str[2].astype(int), "tss": np.where(t.strand == "+", t.start, t.end - 1),
                          "distance": t.distance, "correlation": 0.8, "fdr": 1e-5})
    with dask.config.set(scheduler="sync"):
        table = p2g.tl.co_accessibility(atac, metacells=neighbours, max_distance=MAX_DISTANCE)
    loops = p2g.tl.coaccessibility_loops(table, cor_cutoff=0.0)
    fig, axes = p2g.pl.plot_peak2gene(atac, gene=links.gene[0], links=links, gene_annotation=sim.genes,
                                      coaccessibility=loops, pad_bp=1_000_000)
    lo, hi = axes["genes"].get_xlim()
    chrom = links.chrom[0]
    expected = ((loops["chrom"] == chrom) & (loops["start"] >= lo) & (loops["end"] < hi)).sum()
    drawn = [p for p in axes["coaccessibility"].patches if p.get_gid() == "coaccess-arc"]
    assert expected > 0 and len(drawn) == expected
    assert not [p for p in axes["links"].patches if p.get_gid() == "coaccess-arc"]
    plt.close(fig)
    with pytest.raises(ValueError, match="coaccessibility="):
        p2g.pl.plot_peak2gene(atac, gene=links.gene[0], links=links, gene_annotation=sim.genes, coaccessibility=table)


def test_co_accessibility__checkpoint_resumes_to_same_table(tiny, tmp_path):
    sim, atac, neighbours = tiny
    with dask.config.set(scheduler="sync"):
        first = p2g.tl.co_accessibility(atac, metacells=neighbours, max_distance=MAX_DISTANCE, checkpoint=tmp_path)
        saved = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
        again = p2g.tl.co_accessibility(atac, metacells=neighbours, max_distance=MAX_DISTANCE, checkpoint=tmp_path)
    assert saved and sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == saved
    pd.testing.assert_frame_equal(first, again)
