"""p2g_dask.cluster on real clusters: LocalCluster, scheduler + workers as processes (address
mode), and a real one-node SLURM (dask-jobqueue) brought up by deploy/slurm/local-slurm.sh."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
import yaml

from _slurm import require_idle_slurm as _require_idle_slurm
from _slurm import sbatch_run_in_allocation
from p2g_dask.cluster import (
    VALID_KINDS,
    close_cluster,
    cluster_session,
    dashboard_link,
    slurm_cluster_options,
    start_cluster,
)

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
P2G_KW = dict(use_rep="X_latent", n_metacells=80, k_neighbors=25, seed=1)


# --- helpers -------------------------------------------------------------------------------------

def _workload() -> da.Array:
    """A small seeded graph with many tasks (random chunks, a matmul, a reduction)."""
    x = da.random.default_rng(11).random((1200, 300), chunks=(200, 300))
    return (x.T @ x) / 1200.0 + x.mean(axis=0)[:, None]


def _numpy_reference() -> np.ndarray:
    # The same random numbers, materialised without any cluster, then plain numpy.
    x = da.random.default_rng(11).random((1200, 300), chunks=(200, 300)).compute(scheduler="sync")
    return (x.T @ x) / 1200.0 + x.mean(axis=0)[:, None]


def _host(address: str) -> str:
    return urlparse(address).hostname


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by init) has an empty cmdline: it counts as gone.
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _stub_p2g(tmp_path: Path) -> Path:
    """A stand-in for the `p2g` command: connects with start_cluster() from the environment
    the deploy scripts set, runs _workload-like work, and writes what it saw as JSON."""
    stub = tmp_path / "stub_p2g.py"
    stub.write_text(
        "import json, os, sys\n"
        "import dask.array as da\n"
        "from p2g_dask.cluster import start_cluster, close_cluster\n"
        "client = start_cluster()\n"
        "x = da.random.default_rng(5).random((600, 200), chunks=(100, 200))\n"
        "value = float((x.T @ x).sum().compute())\n"
        "info = {'argv': sys.argv[1:], 'value': value, 'address': client.scheduler.address,\n"
        "        'workers': len(client.scheduler_info(n_workers=-1)['workers']),\n"
        "        'job_ids': sorted(set(client.run(lambda: os.environ.get('SLURM_JOB_ID')).values()))}\n"
        "close_cluster(client)\n"
        "json.dump(info, open(os.environ['STUB_OUT'], 'w'))\n"
    )
    return stub


def _stub_value() -> float:
    x = da.random.default_rng(5).random((600, 200), chunks=(100, 200)).compute(scheduler="sync")
    return float((x.T @ x).sum())


def _independent_correlations(sim, links: pd.DataFrame, n: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r of ``n`` link rows recomputed with numpy from the metacell membership."""
    members = np.asarray(links.attrs["metacells"])
    atac = sim.atac.X.toarray().astype(np.float64)
    rna = sim.rna.X.toarray().astype(np.float64)

    def normalised(x):
        sums = x[members].sum(axis=1)
        return np.log2(sums / sums.sum(axis=1, keepdims=True) * 1e4 + 1)

    a, r = normalised(atac), normalised(rna)
    rows = links.dropna(subset=["correlation"]).sample(n, random_state=0)
    peak_pos = sim.atac.var_names.get_indexer(rows["peak"])
    gene_pos = sim.rna.var_names.get_indexer(rows["gene"])
    expected = np.array([np.corrcoef(a[:, p], r[:, g])[0, 1] for p, g in zip(peak_pos, gene_pos)])
    return rows["correlation"].to_numpy(), expected


# --- LocalCluster --------------------------------------------------------------------------------

def test_start_cluster__local_dashboard_on_loopback(caplog):
    caplog.set_level("INFO", logger="p2g_dask")
    client = start_cluster("local", n_workers=1, threads_per_worker=1, processes=False)
    try:
        link = dashboard_link(client)
        assert link is not None and urlparse(link).hostname == "127.0.0.1"
        assert _host(client.scheduler.address) == "127.0.0.1"
        assert f"Dask dashboard: {link}" in caplog.text
        np.testing.assert_allclose(_workload().compute(), _numpy_reference(), rtol=1e-12)
    finally:
        cluster = client.cluster
        close_cluster(client)
    assert client.status == "closed"
    assert cluster.status.name == "closed"


def test_start_cluster__local_given_sizes():
    client = start_cluster("local", n_workers=2, threads_per_worker=1, memory_limit="300MiB",
                           processes=False, dashboard_address="127.0.0.1:0")
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        assert sorted(w["nthreads"] for w in workers) == [1, 1]
        assert all(w["memory_limit"] == 300 * 2**20 for w in workers)
    finally:
        close_cluster(client)


def test_start_cluster__local_sized_to_machine():
    import psutil

    client = start_cluster("local", processes=False, dashboard_address="127.0.0.1:0")
    try:
        workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
        cpus = len(os.sched_getaffinity(0))
        assert sum(w["nthreads"] for w in workers) == cpus
        total_memory = sum(w["memory_limit"] for w in workers)
        assert abs(total_memory - psutil.virtual_memory().total) <= len(workers)
    finally:
        close_cluster(client)


def test_start_cluster__kind_and_options_from_dask_config():
    with dask.config.set({"p2g.cluster.kind": "local", "p2g.cluster.local.n-workers": 1,
                          "p2g.cluster.local.threads-per-worker": 1, "p2g.cluster.local.processes": False}):
        client = start_cluster(dashboard_address="127.0.0.1:0")
    try:
        assert len(client.scheduler_info()["workers"]) == 1
    finally:
        close_cluster(client)


def test_start_cluster__bad_kind_names_valid_ones():
    with pytest.raises(ValueError, match="kind='kubernetes'") as err:
        start_cluster("kubernetes")
    for kind in VALID_KINDS:
        assert repr(kind) in str(err.value)


def test_start_cluster__bad_n_workers():
    with pytest.raises(ValueError, match=r"n_workers=0 .*integer >= 1"):
        start_cluster("local", n_workers=0, processes=False)


def test_start_cluster__unknown_option_named():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['n_worker'\] \(values \[2\]\) for kind='local'"):
        start_cluster("local", n_worker=2)
    with pytest.raises(ValueError, match=r"\['colour'\].*kind='address'"):
        start_cluster("address", address="tcp://127.0.0.1:8786", colour="blue")


def test_cluster_session__closes_client_and_cluster():
    with cluster_session("local", n_workers=1, processes=False, dashboard_address="127.0.0.1:0") as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
        cluster = client.cluster
    assert client.status == "closed" and cluster.status.name == "closed"


def test_cluster_defaults__registered_and_overridable():
    defaults = yaml.safe_load((REPO / "p2g_dask" / "cluster_defaults.yaml").read_text())
    assert dask.config.get("p2g.cluster.host") == defaults["p2g"]["cluster"]["host"] == "127.0.0.1"
    assert dask.config.get("jobqueue.slurm.cores") == defaults["jobqueue"]["slurm"]["cores"]
    with dask.config.set({"jobqueue.slurm.cores": 7}):
        assert slurm_cluster_options()["cores"] == 7


# --- SLURM options (no SLURM needed) -------------------------------------------------------------

def test_slurm_cluster_options__file_then_options(tmp_path):
    path = tmp_path / "jq.yaml"
    path.write_text(yaml.safe_dump({"jobqueue": {"slurm": {
        "name": "my-job", "cores": 3, "memory": "5GiB", "queue": "q1", "interface": None,
        "job-extra-directives": ["--qos=short"], "walltime": "00:05:00"}}}))
    with dask.config.set({"jobqueue.slurm.interface": "lo", "jobqueue.slurm.account": "acc"}):
        kw = slurm_cluster_options(path, cores=2, walltime="00:10:00")
    assert kw["cores"] == 2 and kw["walltime"] == "00:10:00"          # options win
    assert kw["memory"] == "5GiB" and kw["queue"] == "q1"              # the file wins over config
    assert kw["job_extra_directives"] == ["--qos=short"] and kw["job_name"] == "my-job"
    assert kw["interface"] == "lo" and kw["account"] == "acc"         # null in the file keeps config
    assert "name" not in kw and all(v is not None for v in kw.values())


def test_slurm_cluster_options__deploy_yaml_is_valid():
    path = DEPLOY / "slurm" / "jobqueue.yaml"
    kw = slurm_cluster_options(path)
    raw = yaml.safe_load(path.read_text())["jobqueue"]["slurm"]
    for key, value in raw.items():
        if value is not None:
            name = "job_name" if key == "name" else key.replace("-", "_")
            assert kw[name] == value, key


def test_slurm_cluster_options__deprecated_names_mapped():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mapped names must not trigger dask-jobqueue's FutureWarning
        kw = slurm_cluster_options(job_extra=["-p x"], env_extra=["module load y"], extra=["--lifetime", "1h"])
    assert kw["job_extra_directives"] == ["-p x"]
    assert kw["job_script_prologue"] == ["module load y"]
    assert kw["worker_extra_args"] == ["--lifetime", "1h"]
    assert not {"job_extra", "env_extra", "extra"} & set(kw)


def test_slurm_cluster_options__bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"unknown SLURMCluster option\(s\) \['corez'\]"):
        slurm_cluster_options(corez=2)
    with pytest.raises(FileNotFoundError, match="config='/no/such.yaml'"):
        slurm_cluster_options("/no/such.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("slurm:\n  cores: 2\n")
    with pytest.raises(ValueError, match="no 'jobqueue: slurm:' section"):
        slurm_cluster_options(bad)


def test_start_cluster__slurm_without_sbatch(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="sbatch.*local-slurm.sh"):
        start_cluster("slurm", jobs=1)


def test_start_cluster__slurm_adapt_needs_maximum():
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch not on PATH: the adapt check runs after the sbatch check")
    with pytest.raises(ValueError, match="adapt=True needs maximum_jobs"):
        start_cluster("slurm", adapt=True)


# --- address mode: scheduler and workers as separate processes -----------------------------------

@pytest.fixture(scope="module")
def process_cluster(tmp_path_factory):
    """`dask scheduler` + 2 `dask worker` processes on 127.0.0.1, via deploy/local."""
    folder = tmp_path_factory.mktemp("dask-local")
    env = {**os.environ, "PYTHON": sys.executable, "DASK": f"{sys.executable} -m dask"}
    subprocess.run(["bash", str(DEPLOY / "local" / "start-local-cluster.sh"), "-n", "2", "-p", "0",
                    "-d", str(folder), "-w", "60"], check=True, env=env, timeout=120,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield folder
    finally:
        subprocess.run(["bash", str(DEPLOY / "local" / "stop-local-cluster.sh"), str(folder)],
                       check=False, timeout=60, capture_output=True)


def test_start_cluster__address_runs_computation(process_cluster):
    address = (process_cluster / "address").read_text().strip()
    assert _host(address) == "127.0.0.1"
    client = start_cluster("address", address=address, wait_for_workers=2)
    try:
        pids = client.run(os.getpid)
        assert len(pids) == 2 and os.getpid() not in pids.values()
        assert all(_host(w) == "127.0.0.1" for w in pids)
        np.testing.assert_allclose(_workload().compute(), _numpy_reference(), rtol=1e-12)
        assert urlparse(dashboard_link(client)).hostname == "127.0.0.1"
    finally:
        close_cluster(client)
    # close_cluster leaves a scheduler that p2g did not start running.
    again = start_cluster("address", scheduler_file=str(process_cluster / "scheduler.json"))
    try:
        assert len(again.scheduler_info()["workers"]) == 2
    finally:
        close_cluster(again)


def test_start_cluster__address_errors():
    with pytest.raises(ValueError, match="needs address='tcp://host:port'"):
        start_cluster("address")
    with pytest.raises(ValueError, match="address='tcp://127.0.0.1'"):
        start_cluster("address", address="tcp://127.0.0.1")
    with pytest.raises(FileNotFoundError, match="scheduler_file='/no/such.json'"):
        start_cluster("address", scheduler_file="/no/such.json")
    port = _free_port()
    with pytest.raises(OSError, match=f"tcp://127.0.0.1:{port}"):
        start_cluster("address", address=f"127.0.0.1:{port}", timeout="1s")


def test_stop_local_cluster__stops_its_processes(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DASK": f"{sys.executable} -m dask"}
    subprocess.run(["bash", str(DEPLOY / "local" / "start-local-cluster.sh"), "-n", "1", "-p", "0",
                    "-d", str(tmp_path)], check=True, env=env, timeout=120, capture_output=True)
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    subprocess.run(["bash", str(DEPLOY / "local" / "stop-local-cluster.sh"), str(tmp_path)],
                   check=True, timeout=60, capture_output=True)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)
    assert not list(tmp_path.glob("*.pid"))


# --- peak_to_gene: identical through every kind of cluster ---------------------------------------

def _links_on(client, sim):
    from p2g_dask.tl import peak_to_gene

    return peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, client=client, **P2G_KW)


def _assert_same_links(links, local_links):
    pdt.assert_frame_equal(links, local_links)
    np.testing.assert_array_equal(np.asarray(links.attrs["metacells"]), np.asarray(local_links.attrs["metacells"]))


@pytest.fixture(scope="module")
def local_links(small_sim):
    client = start_cluster("local", n_workers=2, threads_per_worker=1, processes=False,
                           dashboard_address="127.0.0.1:0")
    try:
        return _links_on(client, small_sim)
    finally:
        close_cluster(client)


def test_peak_to_gene__local_cluster_matches_numpy(small_sim, local_links):
    got, expected = _independent_correlations(small_sim, local_links)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_peak_to_gene__address_matches_local(small_sim, local_links, process_cluster):
    client = start_cluster("address", address=(process_cluster / "address").read_text().strip())
    try:
        links = _links_on(client, small_sim)
    finally:
        close_cluster(client)
    _assert_same_links(links, local_links)


# --- real SLURM ----------------------------------------------------------------------------------

def _slurm_options(log_dir: Path) -> dict:
    return dict(cores=1, memory="1GiB", processes=1, walltime="00:15:00",
                job_extra_directives=["--partition=debug"], log_directory=str(log_dir), timeout="120s")


def _wait_jobs_gone(job_ids: list[str], seconds: float = 30) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
        left = [j for j in job_ids if j in out]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@pytest.mark.slurm
def test_start_cluster__slurm_two_jobs_match_local(tmp_path):
    _require_idle_slurm()
    client = start_cluster("slurm", jobs=2, wait_for_workers=2, **_slurm_options(tmp_path))
    try:
        assert _host(client.scheduler.address) == "127.0.0.1"
        assert urlparse(dashboard_link(client)).hostname == "127.0.0.1"
        jobs = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert len(jobs) == 2 and None not in jobs.values() and len(set(jobs.values())) == 2
        threads = [w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values()]
        assert threads == [1, 1]
        on_slurm = _workload().compute()
    finally:
        close_cluster(client)
    with cluster_session("local", n_workers=2, threads_per_worker=1, processes=False,
                         dashboard_address="127.0.0.1:0"):
        on_local = _workload().compute()
    # Equal up to rounding: BLAS may use other thread counts in the SLURM jobs.
    np.testing.assert_allclose(on_slurm, on_local, rtol=1e-12)
    np.testing.assert_allclose(on_slurm, _numpy_reference(), rtol=1e-12)
    assert _wait_jobs_gone(sorted(jobs.values())) == []


@pytest.mark.slurm
def test_peak_to_gene__slurm_matches_local(small_sim, local_links, tmp_path):
    _require_idle_slurm()
    client = start_cluster("slurm", jobs=2, wait_for_workers=2, **_slurm_options(tmp_path))
    try:
        assert len(set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())) == 2
        links = _links_on(client, small_sim)
    finally:
        close_cluster(client)
    _assert_same_links(links, local_links)


@pytest.mark.slurm
def test_start_cluster__slurm_timeout_shows_squeue(tmp_path):
    _require_idle_slurm()
    options = _slurm_options(tmp_path)
    # A job that may not start for an hour: the wait must time out and report squeue.
    options.update(job_extra_directives=["--partition=debug", "--begin=now+3600"], timeout="3s")
    with pytest.raises(TimeoutError) as err:
        start_cluster("slurm", jobs=1, **options)
    message = str(err.value)
    assert "squeue says" in message and "BeginTime" in message and "timeout=3 s" in message
    job_id = message.split("(jobs ['")[1].split("'")[0]
    assert _wait_jobs_gone([job_id]) == []  # the pending job was cancelled


@pytest.mark.slurm
def test_run_in_allocation__sbatch_runs_p2g_against_its_scheduler(tmp_path):
    _require_idle_slurm()
    out = tmp_path / "out.json"
    env = {**os.environ, "STUB_OUT": str(out), "PYTHON": sys.executable,
           "P2G_CMD": f"{sys.executable} {_stub_p2g(tmp_path)}", "P2G_DASK_DIR": str(tmp_path / "dask")}
    info, job_id = sbatch_run_in_allocation(tmp_path, env)
    assert info["argv"] == ["run", "cfg.yaml"]
    assert info["job_ids"] == [job_id] and info["workers"] == 1
    assert _host(info["address"]) == "127.0.0.1"
    assert info["value"] == pytest.approx(_stub_value(), rel=1e-12)


@pytest.mark.slurm
def test_run_login_scheduler__submits_slurm_workers(tmp_path):
    _require_idle_slurm()
    jq = tmp_path / "jobqueue.yaml"
    jq.write_text(yaml.safe_dump({"jobqueue": {"slurm": {
        "cores": 1, "memory": "1GiB", "queue": "debug", "walltime": "00:10:00",
        "log-directory": str(tmp_path / "logs")}}}))
    out = tmp_path / "out.json"
    env = {**os.environ, "STUB_OUT": str(out), "P2G_JOBQUEUE_CONFIG": str(jq),
           "P2G_CMD": f"{sys.executable} {_stub_p2g(tmp_path)}", "P2G_WAIT": "120s",
           "DASK_P2G__CLUSTER__SLURM__WAIT_FOR_WORKERS": "2"}
    done = subprocess.run(["bash", str(DEPLOY / "slurm" / "run-login-scheduler.sh"), "cfg.yaml", "2"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads(out.read_text())
    assert info["argv"] == ["run", "cfg.yaml"] and info["workers"] == 2
    assert len(info["job_ids"]) == 2 and None not in info["job_ids"]
    assert _host(info["address"]) == "127.0.0.1"
    assert info["value"] == pytest.approx(_stub_value(), rel=1e-12)
    assert len(list((tmp_path / "logs").glob("*.err"))) >= 1


def test_start_cluster__unreachable_address_leaves_dask_config_as_it_was():
    import gc

    import dask

    from p2g_dask.cluster import start_cluster

    before = dask.config.get("scheduler", None)
    with pytest.raises(OSError, match="could not connect to the Dask scheduler at tcp://127.0.0.1:1"):
        start_cluster("address", address="tcp://127.0.0.1:1", timeout=1, warm=False)
    gc.collect()
    assert dask.config.get("scheduler", None) == before
