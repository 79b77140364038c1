"""Nodes that share only a data folder (issue #31, part 1): every tool on a scheduler and two
worker nodes that are separate hosts on this machine (tests/_netns.py: own network and mount
namespaces; private /tmp, HOME and working directory) gives the numbers of a LocalCluster, and
a node killed in the middle of peak_to_gene loses nothing.

The client is this test process (root namespaces, working directory private to it); it reaches
the scheduler over TLS on the bridge. Inputs, stores and outputs live in the shared data folder.
Skips, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import yaml
from distributed.diagnostics.plugin import WorkerPlugin

import _netns
from _sim_files import write_sim_inputs

import p2g_dask as p2g
from p2g_dask.cluster import close_cluster, start_cluster

# The workers cannot import this test module or the harness: send their functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(_netns)

REPO = Path(__file__).resolve().parents[1]
SIM = dict(n_cells=480, n_peaks=1500, n_genes=150, n_linked_genes=12, n_cell_types=3, n_samples=2,
           n_group_links=4, seed=5)
CHUNK_CELLS = 64
P2G_KW = dict(use_rep="X_latent", n_metacells=60, k_neighbors=15, seed=1)


# --- the harness, the clients and the data ------------------------------------------------------

@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """Scheduler + 2 nodes; the test process works in a folder no node can see."""
    try:
        _netns.check_available()
    except _netns.Unavailable as err:
        pytest.skip(str(err))
    base = tmp_path_factory.mktemp("two_nodes")
    client_dir = base / "client"
    for folder in ("data", "client", "harness"):
        (base / folder).mkdir()
    nodes = _netns.Harness(root=base / "harness", data=base / "data", code=REPO, hide=(str(client_dir),))
    try:
        nodes.start()
    except _netns.Unavailable as err:
        pytest.skip(str(err))
    previous = os.getcwd()
    os.chdir(client_dir)
    try:
        yield nodes
    finally:
        os.chdir(previous)
        nodes.close()


@pytest.fixture(scope="module")
def nodes(harness):
    """A client of the two-node cluster (TLS, the harness's credentials)."""
    try:
        client = start_cluster("address", address=harness.scheduler_address, security=harness.security_folder,
                               wait_for_workers=2, timeout="90s")
    except (OSError, TimeoutError) as err:
        pytest.fail(f"the two nodes did not come up ({err}); node logs:\n{harness.log_tail()}")
    yield client
    close_cluster(client)


@pytest.fixture(scope="module")
def local():
    """The reference: a LocalCluster of the same shape (2 workers x 1 thread) in this process."""
    client = start_cluster("local", n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    yield client
    close_cluster(client)


@pytest.fixture(scope="module")
def case(harness):
    """Simulated inputs written into the shared folder: h5ad files, genes, a fragment file."""
    from p2g_dask.datasets import simulate_fragments, simulate_multiome

    sim = simulate_multiome(**SIM)
    inputs = harness.data / "inputs"
    inputs.mkdir()
    write_sim_inputs(sim, inputs)
    fragments = simulate_fragments(sim.atac, inputs / "fragments.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=5)
    return sim, Path(fragments)


@pytest.fixture(scope="module")
def stores(harness, case, nodes, local):
    """One store per cluster (tools write into them), ingested by the client from the same cells."""
    sim, _ = case
    made = {}
    for name, client in (("nodes", nodes), ("local", local)):
        with client.as_current():
            made[name] = p2g.io.ingest(sim.atac, sim.rna, harness.data / f"{name}.zarr", chunk_cells=CHUNK_CELLS).path
    return made


def _on_both(nodes, local, stores, run):
    """``run(client, store_path, tag)`` on the two nodes and on the LocalCluster.

    The LocalCluster runs first: it compiles the numba kernels into the checkout's cache, which
    the nodes then load instead of compiling them again each."""
    on_local = run(local, stores["local"], "local")
    return run(nodes, stores["nodes"], "nodes"), on_local


def _by_name(client) -> dict[str, str]:
    return {info["name"]: addr for addr, info in client.scheduler_info(n_workers=-1)["workers"].items()}


# --- what a node sees ----------------------------------------------------------------------------

def _look_around(paths: dict[str, str], data: str, me: str) -> dict:
    """Run on a node: which of the client's paths exist here; leave a private and a shared marker."""
    import os

    seen = {key: os.path.exists(path) for key, path in paths.items()}
    with open(f"/tmp/p2g-node-{me}", "w") as fh:
        fh.write(me)
    with open(os.path.join(data, f"node-{me}"), "w") as fh:
        fh.write(me)
    others = sorted(p for p in os.listdir("/tmp") if p.startswith("p2g-node-"))
    return {"seen": seen, "cwd": os.getcwd(), "tmp_markers": others}


def test_two_nodes__share_only_the_data_folder(harness, nodes, tmp_path):
    token = uuid.uuid4().hex[:8]
    markers = {"client_tmp": tmp_path / f"client-tmp-{token}", "client_cwd": Path.cwd() / f"client-cwd-{token}",
               "client_home": Path.home() / f".p2g-two-nodes-{token}", "data": harness.data / f"client-{token}",
               "harness_logs": harness.root / "logs"}
    for key in ("client_tmp", "client_cwd", "client_home", "data"):
        markers[key].write_text(key)
    try:
        names = _by_name(nodes)
        assert sorted(names) == ["node1", "node2"]
        seen = {name: nodes.run(_look_around, {k: str(v) for k, v in markers.items()}, str(harness.data), name,
                                workers=[addr])[addr] for name, addr in names.items()}
    finally:
        for key in ("client_tmp", "client_cwd", "client_home"):
            markers[key].unlink(missing_ok=True)
    for name, info in seen.items():
        # The client's /tmp, working directory, HOME and the harness's own files are not there;
        # the shared data folder is.
        assert info["seen"] == {"client_tmp": False, "client_cwd": False, "client_home": False,
                                "data": True, "harness_logs": False}, name
        assert info["cwd"] == "/tmp/work"
        # Each node's /tmp is its own: it sees its own marker only.
        assert info["tmp_markers"] == [f"p2g-node-{name}"]
        assert (harness.data / f"node-{name}").read_text() == name  # written there, read here
    assert not Path("/tmp/p2g-node-node1").exists() and not Path("/tmp/p2g-node-node2").exists()
    # Separate hosts on the bridge: every worker listens on its node's own address.
    for name, addr in names.items():
        assert addr.startswith(f"tls://{harness.nodes[name].ip}:")
    assert nodes.scheduler.address == harness.scheduler_address


# --- every tool: the same numbers as on a LocalCluster -------------------------------------------

def _read_store_on(client, path: str, worker: str):
    def read(path):
        store = p2g.io.open_store(path)
        return store.atac.to_memory(), store.rna.to_memory(), store.obs_names.tolist()
    return client.submit(read, path, workers=[worker], pure=False).result()


def test_ingest__every_node_reads_what_the_client_wrote(case, nodes, local, stores):
    sim, _ = case
    for name, addr in _by_name(nodes).items():
        atac, rna, cells = _read_store_on(nodes, stores["nodes"], addr)
        assert (atac != sim.atac.X).nnz == 0 and (rna != sim.rna.X).nnz == 0, name
        assert cells == sim.atac.obs_names.tolist()
    local_atac, local_rna, _ = _read_store_on(local, stores["local"], next(iter(local.scheduler_info()["workers"])))
    assert (local_atac != sim.atac.X).nnz == 0 and (local_rna != sim.rna.X).nnz == 0


@pytest.mark.slow
def test_iterative_lsi__two_nodes_match_local_cluster(nodes, local, stores):
    def run(client, store, _):
        return p2g.tl.iterative_lsi(store, n_components=10, iterations=2, var_features=800, resolution=0.5,
                                    sample_cells_pre=300, seed=1, client=client)
    on_nodes, on_local = _on_both(nodes, local, stores, run)
    assert on_nodes.shape == (SIM["n_cells"], 10)
    np.testing.assert_allclose(on_nodes, on_local, rtol=1e-6, atol=1e-9)
    # What was written into each store is what was returned.
    np.testing.assert_array_equal(p2g.io.open_store(stores["nodes"]).atac.obsm["X_iterative_lsi"], on_nodes)


def _assert_same_links(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """The same table and the same metacells (one array, or one per group)."""
    pd.testing.assert_frame_equal(got, want)
    mine, theirs = got.attrs["metacells"], want.attrs["metacells"]
    if isinstance(theirs, dict):
        assert mine.keys() == theirs.keys()
        for group in theirs:
            np.testing.assert_array_equal(mine[group], theirs[group], err_msg=group)
    else:
        np.testing.assert_array_equal(mine, theirs)


def test_peak_to_gene__groupby_two_nodes_match_local_cluster(case, nodes, local, stores):
    sim, _ = case

    def run(client, store, _):
        return p2g.tl.peak_to_gene(store, gene_annotation=sim.genes, use_rep="X_latent", groupby="cell_type",
                                   n_metacells=150, k_neighbors=10, min_metacells=10, seed=1, client=client)
    on_nodes, on_local = _on_both(nodes, local, stores, run)
    assert on_nodes["group"].nunique() == SIM["n_cell_types"] and len(on_nodes) > 1000
    _assert_same_links(on_nodes, on_local)


def test_peak_to_gene__nulls_two_nodes_match_local_cluster(case, nodes, local, stores):
    sim, _ = case

    def run(client, store, _):
        return p2g.tl.peak_to_gene(store, gene_annotation=sim.genes, empirical_pval=True, n_permutations=3,
                                   client=client, **P2G_KW)
    on_nodes, on_local = _on_both(nodes, local, stores, run)
    assert on_nodes["emp_pval"].notna().any() and on_nodes["perm_pval"].notna().any()
    _assert_same_links(on_nodes, on_local)


def test_co_accessibility__two_nodes_match_local_cluster(nodes, local, stores):
    def run(client, store, _):
        return p2g.tl.co_accessibility(store, max_distance=100_000, client=client, **P2G_KW)
    on_nodes, on_local = _on_both(nodes, local, stores, run)
    assert len(on_nodes) > 100
    pd.testing.assert_frame_equal(on_nodes, on_local)


def test_gene_scores__two_nodes_match_local_cluster(case, nodes, local, stores):
    sim, fragments = case

    def run(client, store, _):
        into_store = p2g.tl.gene_scores({"sim": fragments}, genes=sim.genes, store=store, chunk_cells=200,
                                        client=client, show_progress=False)
        # In-memory cells: the fragment caches the workers build must land where all nodes and
        # the client see them (not the client's /tmp).
        in_memory = p2g.tl.gene_scores({"sim": fragments}, genes=sim.genes, cells=sim.atac, chunk_cells=200,
                                       client=client, show_progress=False)
        return into_store.to_memory().toarray(), in_memory.X.toarray()
    (on_nodes, nodes_memory), (on_local, local_memory) = _on_both(nodes, local, stores, run)
    assert on_nodes.shape[0] == SIM["n_cells"] and (on_nodes > 0).mean() > 0.1
    np.testing.assert_array_equal(on_nodes, on_local)
    np.testing.assert_array_equal(nodes_memory, local_memory)
    np.testing.assert_array_equal(nodes_memory, on_nodes)
    assert not list(fragments.parent.glob(".p2g-tmp-*"))  # the working folders were removed


def _bigwig_records(paths: dict[str, str]) -> dict[str, np.ndarray]:
    """Every (start, end, value) interval of each group's BigWig, chromosome after chromosome."""
    import pybigtools

    out = {}
    for group, path in paths.items():
        bw = pybigtools.open(str(path))
        out[group] = np.array([r for chrom in bw.chroms() for r in bw.records(chrom)], dtype=np.float64)
        bw.close()
    return out


def test_pseudobulk_with_fragments__two_nodes_match_local_cluster(case, harness, nodes, local, stores):
    sim, fragments = case

    def run(client, store, tag):
        paths = p2g.tl.pseudobulk_with_fragments(
            store, chromsizes=sim.chrom_sizes, cluster_key="cell_type", path_to_fragments={"sim": fragments},
            bigwig_path=harness.data / f"bigwig-{tag}", executor="dask", client=client, show_progress=False)
        return _bigwig_records(paths)
    on_nodes, on_local = _on_both(nodes, local, stores, run)
    assert sorted(on_nodes) == sorted(sim.atac.obs["cell_type"].astype(str).unique())
    for group in on_local:
        assert len(on_nodes[group]) > 1000
        np.testing.assert_array_equal(on_nodes[group], on_local[group], err_msg=group)


def test_plot_peak2gene__track_reads_two_nodes_match_local_cluster(case, nodes, local, stores):
    import matplotlib.pyplot as plt

    sim, _ = case
    gene = sim.truth["gene"].value_counts().index[0]
    links = p2g.tl.peak_to_gene(stores["local"], gene_annotation=sim.genes, client=local, **P2G_KW)

    def run(client, store, _):
        with client.as_current():
            fig, axes = p2g.pl.plot_peak2gene(store, gene=gene, links=links, gene_annotation=sim.genes,
                                              group_by="cell_type")
        heights = [[bar.get_height() for bar in ax.containers[0]] for ax in axes["coverage"]]
        plt.close(fig)
        return heights
    on_nodes, on_local = _on_both(nodes, local, stores, run)
    assert len(on_nodes) == SIM["n_cell_types"] and sum(map(len, on_nodes)) > 0
    np.testing.assert_array_equal(np.concatenate(on_nodes), np.concatenate(on_local))


def test_ingest_samples__two_nodes_match_local_cluster(case, nodes, local, harness):
    """Many samples (shifted peak sets: ATAC counted from the fragments) ingested as tasks on the
    two nodes and on the LocalCluster, from files in the shared folder: the same store."""
    from _sample_files import write_sample_files

    sim, _ = case
    table, _ = write_sample_files(harness.data / "samples", sim, n_samples=2)
    table = table.assign(**{c: [str(harness.data / "samples" / v) for v in table[c]]
                            for c in ("fragments", "atac", "rna")})

    def run(client, _, tag):
        store = p2g.io.ingest_samples(table, harness.data / f"samples_{tag}.zarr", chunk_cells=CHUNK_CELLS,
                                      client=client, show_progress=False)
        return {name: (getattr(store, name).to_memory().toarray(), getattr(store, name).obs.index.tolist(),
                       getattr(store, name).var.index.tolist()) for name in ("atac", "rna")}
    on_nodes, on_local = _on_both(nodes, local, {"nodes": None, "local": None}, run)
    assert on_nodes["atac"][0].sum() > 0 and len(on_nodes["atac"][1]) == SIM["n_cells"]
    for name in ("atac", "rna"):
        np.testing.assert_array_equal(on_nodes[name][0], on_local[name][0])
        assert on_nodes[name][1:] == on_local[name][1:]


@pytest.mark.slow
def test_p2g_run__config_naming_the_nodes_matches_local_cluster(case, harness, local, stores):
    sim, _ = case
    inputs, out = harness.data / "inputs", harness.data / "run"
    config = {
        "inputs": {"atac": str(inputs / "atac.h5ad"), "rna": str(inputs / "rna.h5ad"),
                   "gene_annotation": str(inputs / "genes.tsv")},
        "output": str(out),
        "cluster": {"kind": "address", "address": harness.scheduler_address,
                    "security": str(harness.security_folder), "wait_for_workers": 2, "timeout": "60s"},
        "ingest": {"chunk_cells": CHUNK_CELLS},
        "iterative_lsi": False,
        "peak_to_gene": dict(P2G_KW),
        "filter_links": {"cor_cutoff": 0.3},
    }
    path = harness.data / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-m", "p2g_dask.cli", "-q", "run", str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished"
    links = p2g.io.read_links(out / "links.parquet")
    want = p2g.tl.peak_to_gene(stores["local"], gene_annotation=sim.genes, client=local, **P2G_KW)
    pd.testing.assert_frame_equal(links, want)
    assert len(p2g.io.read_links(out / "links_filtered.parquet")) == len(p2g.tl.filter_links(want, cor_cutoff=0.3))


# --- a node dies in the middle of peak_to_gene ---------------------------------------------------

class HoldNode(WorkerPlugin):
    """Worker plugin: on worker ``name``, after its ``count``-th finished task matching ``pattern``,
    write the key to ``flag`` and block the worker (it holds results, answers nothing) until the
    test kills the node. Other workers are untouched."""

    name = "p2g-test-hold-node"

    def __init__(self, worker_name: str, pattern: str, count: int, flag: str, seconds: float = 60.0):
        self.worker_name, self.pattern, self.count, self.flag, self.seconds = worker_name, pattern, count, flag, seconds
        self.seen = 0

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        import re as _re
        import time as _time

        if finish != "memory" or self.worker.name != self.worker_name or not _re.fullmatch(self.pattern, str(key)):
            return
        self.seen += 1
        if self.seen >= self.count:
            with open(self.flag, "w") as fh:
                fh.write(str(key))
            _time.sleep(self.seconds)


def test_peak_to_gene__node_killed_mid_run_loses_nothing(case, harness, nodes, local, stores):
    """Last in this module: it leaves one node."""
    sim, _ = case
    kwargs = dict(gene_annotation=sim.genes, chunk_cells=32, **P2G_KW)
    want = p2g.tl.peak_to_gene(stores["local"], client=local, **kwargs)
    flag = harness.data / "held"
    pattern = r"p2g-metacell-sum-[0-9a-f]{32}"
    plugin = HoldNode("node2", pattern, 2, str(flag))
    nodes.register_plugin(plugin)
    victim = _by_name(nodes)["node2"]
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(p2g.tl.peak_to_gene, stores["nodes"], client=nodes, **kwargs)
            deadline = time.monotonic() + 60
            while not flag.exists() and not running.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert flag.exists(), "node2 never finished two metacell sums; " + (
                "the run ended first" if running.done() else "timed out")
            # The scheduler knows node2 holds finished sums: they are lost with it.
            held = []
            for _ in range(50):
                held = [k for k in nodes.has_what().get(victim, ()) if re.fullmatch(pattern, str(k))]
                if held:
                    break
                time.sleep(0.02)
            killed = harness.kill_node("node2")
            got = running.result(timeout=180)
    finally:
        nodes.unregister_worker_plugin(plugin.name)
    assert held, "node2 held no metacell sum when it was killed"
    assert len(killed) >= 2  # the nanny and its worker process
    assert list(_by_name(nodes)) == ["node1"]
    _assert_same_links(got, want)
