"""The graph module (blocks, store reads, tree sums, compute) and the parameter dataclasses."""

from __future__ import annotations

import dataclasses

import dask
import dask.core
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from dask.delayed import delayed

import p2g_dask as p2g
from p2g_dask import _graph
from p2g_dask.io import blocks as io_blocks
from p2g_dask.io.inputs import Modality
from p2g_dask._variables import params_record, params_token
from p2g_dask.tl.engine.accumulate import membership_sums, metacell_sums
from p2g_dask.tl.lsi.lsi import LSIParams
from p2g_dask.tl.links.peak_to_gene import PeakToGeneParams
from p2g_dask.tl.pseudobulk.pseudobulk import PseudobulkParams


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    sim = p2g.datasets.simulate_multiome(n_cells=90, n_peaks=300, n_genes=40, n_linked_genes=4, seed=3)
    path = tmp_path_factory.mktemp("graph") / "s.zarr"
    return sim, p2g.io.ingest(sim.atac, sim.rna, path, chunk_cells=32)


@pytest.mark.parametrize("chunk", [7, 32, 90])
@pytest.mark.parametrize("fused", [False, True])
def test_store_blocks__rows_equal_the_matrix(small_store, chunk, fused):
    sim, store = small_store
    bounds = io_blocks.row_bounds(store.rna.n_obs, chunk)
    blocks = io_blocks.store_blocks(store.path, "rna", store.rna.n_vars, bounds, fused=fused)
    rows = [io_blocks.load(b) for b in _graph.compute(blocks, scheduler="sync")]
    assert all(isinstance(r, io_blocks.Rows) for r in rows)
    got = sp.vstack([r.to_csr() for r in rows]).toarray()
    np.testing.assert_array_equal(got, sim.rna.X.toarray())
    assert all(b.key.startswith("p2g-rows-" if fused else "p2g-read-") for b in blocks)


def test_store_blocks__token_changes_with_the_store(small_store, tmp_path):
    sim, store = small_store
    first = io_blocks.store_blocks(store.path, "rna", store.rna.n_vars, [(0, 10)])[0].key
    other = p2g.io.ingest(sim.atac, sim.rna, tmp_path / "other.zarr", chunk_cells=32)
    assert io_blocks.store_blocks(other.path, "rna", other.rna.n_vars, [(0, 10)])[0].key != first


@pytest.mark.parametrize("n_parts, split_every", [(1, 2), (5, 2), (9, 3), (17, 8)])
def test_tree_sum__equals_numpy_sum(n_parts, split_every):
    rng = np.random.default_rng(n_parts)
    arrays = [rng.random((3, 4)) for _ in range(n_parts)]
    total = _graph.tree_sum([delayed(a) for a in arrays], "test", "tok", split_every=split_every)
    np.testing.assert_allclose(_graph.compute(total, scheduler="sync"), np.sum(arrays, axis=0))
    graph = dict(total.__dask_graph__())
    task_keys = [k for k in graph if str(k).startswith("p2g-test-tok-")]
    n_nodes, level = 0, n_parts
    while level > 1:
        level = -(-level // split_every)
        n_nodes += level
    assert len(task_keys) == n_nodes
    # A tree of fan-in split_every: every node has at most split_every inputs.
    for key in task_keys:
        assert len(dask.core.get_dependencies(graph, key)) <= split_every


def test_compute__local_cluster_and_sync_agree(local_client):
    parts = [delayed(np.arange)(i) for i in range(1, 4)]
    want = [np.arange(i) for i in range(1, 4)]
    for got in (_graph.compute(parts, local_client), _graph.compute(parts, scheduler="sync")):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    assert _graph.compute(delayed(sum)([1, 2]), scheduler="sync") == 3


def test_executor__every_local_scheduler_runs_the_tasks():
    for name in ("synchronous", "thread"):
        with _graph.executor(name, n_jobs=2, progress=False) as run:
            assert run([delayed(max)([1, 5]), delayed(min)([1, 5])]) == [5, 1]


@pytest.mark.parametrize("chunk", [5, 13, 40])
def test_membership_sums__stacked_memberships_in_one_pass(chunk):
    rng = np.random.default_rng(chunk)
    X = sp.random(40, 25, density=0.3, random_state=chunk, format="csr", data_rvs=lambda n: rng.integers(1, 5, n))
    mod = Modality("atac", pd.DataFrame(index=[f"c{i}" for i in range(40)]), pd.DataFrame(index=range(25)), X=X)
    first = rng.integers(0, 40, (6, 4))
    second = rng.integers(0, 40, (3, 7))
    ones = [sp.csr_matrix((np.ones(m.size), m.ravel(), np.arange(0, m.size + 1, m.shape[1])), shape=(m.shape[0], 40))
            for m in (first, second)]
    for m in ones:
        m.data[:] = 1.0
        m.sum_duplicates()
        m.data[:] = 1.0
    stacked = sp.vstack(ones, format="csr")
    blocks, totals = membership_sums(mod, stacked, chunk_cells=chunk, block_bytes=6 * 9 * 4)
    sums = np.hstack(dask.compute(*[b.sums for b in blocks], scheduler="sync"))
    expected = (stacked @ X).toarray()
    np.testing.assert_allclose(sums, expected)
    np.testing.assert_allclose(totals.compute(scheduler="sync"), expected.sum(axis=1))
    # The same numbers as one membership at a time (metacell_sums).
    single, _ = metacell_sums(mod, first, chunk_cells=chunk)
    np.testing.assert_allclose(np.hstack(dask.compute(*[b.sums for b in single], scheduler="sync")), expected[:6])


@pytest.mark.parametrize("params", [PeakToGeneParams(), LSIParams(), PseudobulkParams(groupby="g")])
def test_params_token__a_new_field_changes_the_key(params):
    cls = type(params)
    extended = dataclasses.make_dataclass(cls.__name__, [("new_option", int, dataclasses.field(default=0))],
                                          bases=(cls,), frozen=True)
    extended.__qualname__ = cls.__qualname__  # the same name: only the new field differs
    base = extended(**dataclasses.asdict(params))
    assert params_token(base) != params_token(params)
    assert params_token(dataclasses.replace(base, new_option=1)) != params_token(base)
    # Every stage's key sees a field that does not say otherwise.
    for stage in ("sums", "pileup"):
        assert params_token(dataclasses.replace(base, new_option=1), stage) != params_token(base, stage)


def test_params_token__marked_fields_stay_out_of_their_stage():
    base = PeakToGeneParams()
    near = dataclasses.replace(base, max_distance=50_000)
    assert params_token(near, "sums") == params_token(base, "sums")
    assert params_token(near) != params_token(base)
    assert params_token(dataclasses.replace(base, seed=2), "sums") != params_token(base, "sums")


def test_params_record__same_keys_as_links_attrs():
    record = params_record(PeakToGeneParams(n_metacells=60, k_neighbors=20))
    assert {"use_rep", "n_metacells", "k_neighbors", "max_distance", "overlap_cutoff", "scale_to", "seed",
            "gene_obsm", "precomputed_metacells"} <= set(record)
    assert record["n_metacells"] == 60 and isinstance(record["scale_to"], float)


def test_peak_to_gene_params__checked_before_any_graph():
    with pytest.raises(ValueError, match="max_distance=-1 must be a positive number of bp"):
        PeakToGeneParams(max_distance=-1)
    with pytest.raises(ValueError, match="split_every=1 must be at least 2"):
        PeakToGeneParams(split_every=1)
    with pytest.raises(ValueError, match=r"outlier_quantiles=\(0.9, 0.1\)"):
        LSIParams(outlier_quantiles=(0.9, 0.1))
    with pytest.raises(ValueError, match="shift=5 must be two integers"):
        PseudobulkParams(groupby="g", shift=5)


def test_read_columns__store_on_client_equals_memory(small_store, local_client):
    from dask.utils import key_split
    from distributed import get_task_stream

    from p2g_dask.io.inputs import resolve_input
    from p2g_dask.pl._tracks import read_columns

    sim, store = small_store
    atac, _, _ = resolve_input(store)
    cols = np.array([3, 10, 11, 200])
    with get_task_stream(local_client) as stream:
        sub, tot = read_columns(atac, cols, client=local_client)
    np.testing.assert_array_equal(sub.toarray(), sim.atac.X[:, cols].toarray())
    np.testing.assert_allclose(tot, np.asarray(sim.atac.X.sum(axis=1)).ravel())
    # Named keys only (no anonymous _take_block-<uuid>): the fused row references and the columns.
    assert {key_split(t["key"]) for t in stream.data} <= {"p2g-rows", "p2g-trackcolumns"}
    assert "p2g-trackcolumns" in {key_split(t["key"]) for t in stream.data}


def test_compute__progress_bar_on_a_cluster_counts_the_tasks_down_to_done(capsys):
    # The bar polls the scheduler from the caller's thread; it must end at 100% on stderr, leave
    # stdout to the caller, and return the same result as without a bar.
    import time

    from distributed import Client, LocalCluster

    parts = [delayed(time.sleep)(0.1, dask_key_name=f"nap-{i}") for i in range(12)]
    count = delayed(lambda *naps: len(naps))(*parts)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client, dask.config.set({"p2g.progress-after": 0.1}):
        assert _graph.compute(count, client=client, progress=True) == 12
    captured = capsys.readouterr()
    assert captured.out == ""
    frames = captured.err.split("\r")
    assert "100% Completed" in frames[-1]
    shown = [int(f.split("%")[0].split("|")[1]) for f in frames if "% Completed" in f]
    assert shown == sorted(shown), shown


def test_current_client__a_scheduler_chosen_in_config_wins_and_a_closed_client_is_none():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        client = Client(cluster, set_as_default=False)
        try:
            with client.as_current():
                assert _graph.current_client() is client
                # As dask.compute does: the caller's explicit scheduler, not the current client.
                with dask.config.set(scheduler="sync"):
                    assert _graph.current_client() is None
            assert _graph.current_client(client) is client
        finally:
            client.close()
        with client.as_current():
            assert _graph.current_client() is None
