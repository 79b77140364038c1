"""A scheduler only its owner can use (issue #31, part 2): schedulers p2g starts beyond loopback
(LocalCluster with host=/interface=, every SLURM scheduler, run-in-allocation.sbatch on a network
interface) refuse clients without their credentials and serve clients with them; loopback
LocalClusters stay plain TCP; the dashboard stays on 127.0.0.1 unless asked."""

from __future__ import annotations

import gc
import os
import socket
import stat
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
from distributed import Client
from distributed.security import Security

from _slurm import require_idle_slurm, sbatch_run_in_allocation
from p2g_dask._cluster_security import binds_beyond_loopback
from p2g_dask.cluster import close_cluster, dashboard_link, load_credentials, start_cluster, write_credentials

REPO = Path(__file__).resolve().parents[1]


def _network_address() -> tuple[str, str]:
    """(interface, IPv4 address) of an up, non-loopback interface of this machine."""
    stats = psutil.net_if_stats()
    for name, addresses in sorted(psutil.net_if_addrs().items()):
        if not stats.get(name) or not stats[name].isup:
            continue
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return name, address.address
    pytest.skip("this machine has no up, non-loopback IPv4 interface to bind a scheduler to")


@pytest.fixture(scope="module")
def network():
    return _network_address()


def _refusal(address: str, security: Security | None = None) -> str | None:
    """The error a client gets connecting to ``address`` (None when it got in)."""
    try:
        # Not the default client: a failed constructor has already set dask's scheduler config, and
        # its close at garbage collection would later set it back to "dask.distributed" with no
        # client left (seen once: later tests failed with "no Client active").
        client = Client(address, security=security, timeout=3, set_as_default=False)
    except Exception as err:  # noqa: BLE001 - what matters is that it does not connect
        refused = f"{type(err).__name__}: {err}"
    else:
        client.close()
        return None
    # The half-built client is garbage now (the error and its traceback are gone): collect it
    # here. Left to a later collection, its __del__ ran close() inside another client's start
    # and waited forever on the loop lock that start held (a full-suite hang, seen once).
    gc.collect()
    return refused


def _assert_refuses_strangers(address: str) -> None:
    assert address.startswith("tls://")
    host_port = address.split("://", 1)[1]
    # No credentials at all; plain TCP to the TLS port (the issue's `Client("tcp://<address>")`);
    # a certificate of its own that this cluster never issued.
    for attempt, security in ((address, None), (f"tcp://{host_port}", None), (address, Security.temporary())):
        assert _refusal(attempt, security) is not None, f"{attempt} accepted a client without credentials"


def _worker_identity(address: str, security: Security | None) -> dict:
    """Ask a worker who it is, straight over its comm (what any code on the network could try)."""
    import asyncio

    from distributed.core import rpc

    async def ask():
        args = (security or Security()).get_connection_args("client")
        async with rpc(address, connection_args=args, timeout=3) as worker:
            return await worker.identity()
    return asyncio.run(ask())


def _run_task(client: Client) -> int:
    return client.submit(pow, 6, 2, pure=False).result(timeout=60)


def _assert_credentials_admit(client: Client, folder: Path) -> None:
    """Another process holding the owner's credentials (written to ``folder``) gets in and runs a task."""
    write_credentials(client.security, folder)
    other = start_cluster("address", address=client.scheduler.address, security=folder, warm=False)
    try:
        assert _run_task(other) == 36
    finally:
        close_cluster(other)


@pytest.mark.slow
def test_start_cluster__local_beyond_loopback_refuses_clients_without_credentials(network, tmp_path):
    _, ip = network
    client = start_cluster("local", host=ip, n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0")
    try:
        address = client.scheduler.address
        assert address.startswith(f"tls://{ip}:")
        workers = list(client.scheduler_info()["workers"])
        assert workers and all(w.startswith(f"tls://{ip}:") for w in workers)
        _assert_refuses_strangers(address)
        # Workers run code too (their `run` handler): the same lock.
        assert _worker_identity(workers[0], client.security)["type"] == "Worker"
        for attempt, security in ((workers[0], Security.temporary()),
                                  (workers[0].replace("tls://", "tcp://"), None)):
            with pytest.raises(Exception):  # noqa: B017 - any failure to connect will do
                _worker_identity(attempt, security)
        assert _run_task(client) == 36
        _assert_credentials_admit(client, tmp_path / "tls")
    finally:
        close_cluster(client)


def test_start_cluster__local_interface_beyond_loopback_uses_tls(network):
    interface, ip = network
    client = start_cluster("local", interface=interface, n_workers=1, threads_per_worker=1, processes=False,
                           dashboard_address="127.0.0.1:0")
    try:
        assert client.scheduler.address.startswith(f"tls://{ip}:")
        assert _refusal(client.scheduler.address.replace("tls://", "tcp://")) is not None
        assert _run_task(client) == 36
    finally:
        close_cluster(client)
    loop = start_cluster("local", interface="lo", n_workers=1, processes=False, dashboard_address="127.0.0.1:0")
    try:
        assert loop.scheduler.address.startswith("tcp://127.0.0.1:")
    finally:
        close_cluster(loop)


def test_start_cluster__local_loopback_stays_plain_tcp():
    client = start_cluster("local", n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0")
    try:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert not client.security.require_encryption
        assert _run_task(client) == 36
    finally:
        close_cluster(client)


def test_start_cluster__security_false_warns_and_admits_anyone(network, caplog):
    _, ip = network
    caplog.set_level("WARNING", logger="p2g_dask")
    client = start_cluster("local", host=ip, security=False, n_workers=1, processes=False,
                           dashboard_address="127.0.0.1:0")
    try:
        assert client.scheduler.address.startswith(f"tcp://{ip}:")
        warning = [r for r in caplog.records if r.levelname == "WARNING" and "security=False" in r.getMessage()]
        assert len(warning) == 1 and "anyone on the network" in warning[0].getMessage()
        assert "run code as user" in warning[0].getMessage()
        # What the warning means: a stranger's plain client gets in and runs code.
        stranger = Client(client.scheduler.address, timeout=5, set_as_default=False)
        try:
            assert _run_task(stranger) == 36
        finally:
            stranger.close()
    finally:
        close_cluster(client)


def test_start_cluster__own_security_is_used(network):
    _, ip = network
    mine = Security.temporary()
    client = start_cluster("local", host=ip, security=mine, n_workers=1, processes=False,
                           dashboard_address="127.0.0.1:0")
    try:
        assert client.security is mine
        assert _refusal(client.scheduler.address, mine) is None
        _assert_refuses_strangers(client.scheduler.address)
    finally:
        close_cluster(client)


def _dashboard_hosts(client: Client) -> set[str]:
    sockets = client.cluster.scheduler.http_server._sockets.values()
    return {sock.getsockname()[0] for sock in sockets}


def test_start_cluster__dashboard_on_loopback_unless_asked(network):
    _, ip = network
    client = start_cluster("local", host=ip, n_workers=1, processes=False)
    try:
        link = urlparse(dashboard_link(client))
        assert link.hostname == "127.0.0.1" and _dashboard_hosts(client) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{link.port}/health", timeout=10) as answer:
            assert answer.read() == b"ok"
        with pytest.raises(OSError):  # nothing listens on the network address's port
            socket.create_connection((ip, link.port), timeout=3).close()
    finally:
        close_cluster(client)
    asked = start_cluster("local", host=ip, n_workers=1, processes=False, dashboard_address=f"{ip}:0")
    try:
        assert urlparse(dashboard_link(asked)).hostname == ip and _dashboard_hosts(asked) == {ip}
    finally:
        close_cluster(asked)


def test_start_cluster__address_security_errors(tmp_path):
    with pytest.raises(ValueError, match=r"uses TLS and no credentials were given: pass security="):
        start_cluster("address", address="tls://127.0.0.1:1", timeout="1s")
    with pytest.raises(FileNotFoundError, match=r"security='.*nothing' is not a credentials folder"):
        start_cluster("address", address="tls://127.0.0.1:1", security=tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"security=42 is not valid"):
        start_cluster("address", address="tls://127.0.0.1:1", security=42)


def test_write_credentials__private_files_load_back(tmp_path):
    security = Security.temporary()
    folder = write_credentials(security, tmp_path / "creds")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    assert (folder / "key.pem").read_text() == security.tls_client_key
    assert (folder / "cert.pem").read_text() == (folder / "ca.pem").read_text() == security.tls_ca_file
    loaded = load_credentials(folder)
    assert loaded.require_encryption and loaded.tls_client_key == str(folder / "key.pem")
    # Written again from the file-based Security: the same texts.
    again = write_credentials(loaded, tmp_path / "again")
    assert (again / "key.pem").read_text() == security.tls_client_key
    assert not list(folder.glob(".p2g-tmp-*"))


def test_binds_beyond_loopback__cases(network):
    interface, ip = network
    assert [binds_beyond_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1")] == [False] * 4
    assert [binds_beyond_loopback(h) for h in ("0.0.0.0", "", "::", ip)] == [True] * 4
    assert binds_beyond_loopback(None, "lo") is False
    assert binds_beyond_loopback(None, interface) is True
    assert binds_beyond_loopback(None, "no-such-interface0") is True  # unknown: never weaker
    assert binds_beyond_loopback(None, None) is False


# --- real SLURM ----------------------------------------------------------------------------------

@pytest.mark.slurm
def test_start_cluster__slurm_tls_refuses_clients_without_credentials(network, tmp_path):
    require_idle_slurm()
    interface, ip = network
    creds = tmp_path / "tls"
    client = start_cluster("slurm", jobs=1, interface=interface, cores=1, memory="1GiB", processes=1,
                           walltime="00:10:00", job_extra_directives=["--partition=debug"],
                           log_directory=str(tmp_path / "logs"), credentials_directory=str(creds), timeout="120s")
    try:
        address = client.scheduler.address
        assert address.startswith(f"tls://{ip}:")
        assert urlparse(dashboard_link(client)).hostname == "127.0.0.1" and _dashboard_hosts(client) == {"127.0.0.1"}
        script = client.cluster.job_script()
        assert f"--tls-key {creds}/" in script and "--protocol tls://" in script
        keys = list(creds.glob(".dask-jobqueue.worker.key.*"))
        assert len(keys) == 1 and stat.S_IMODE(keys[0].stat().st_mode) == 0o600
        assert stat.S_IMODE(creds.stat().st_mode) == 0o700
        assert client.run(lambda: os.environ.get("SLURM_JOB_ID")) and _run_task(client) == 36
        _assert_refuses_strangers(address)
        _assert_credentials_admit(client, tmp_path / "mine")
    finally:
        close_cluster(client)
    assert list(creds.iterdir()) == []  # the workers' credentials went with the cluster


_STUB = """
import json, os, sys
from distributed import Client
from p2g_dask.cluster import start_cluster, close_cluster
client = start_cluster()
address = client.scheduler.address
info = {'address': address, 'value': client.submit(pow, 6, 2).result(),
        'job_ids': sorted(set(client.run(lambda: os.environ.get('SLURM_JOB_ID')).values()))}
close_cluster(client)
for name, target in (('no_credentials', address), ('plain_tcp', address.replace('tls://', 'tcp://'))):
    try:
        Client(target, timeout=3).close()
        info[name] = 'connected'
    except Exception as err:
        info[name] = 'refused: ' + type(err).__name__
json.dump(info, open(os.environ['STUB_OUT'], 'w'))
"""


@pytest.mark.slow
@pytest.mark.slurm
def test_run_in_allocation__network_scheduler_uses_tls(network, tmp_path):
    require_idle_slurm()
    interface, ip = network
    stub = tmp_path / "stub_p2g.py"
    stub.write_text(_STUB)
    out = tmp_path / "out.json"
    env = {**os.environ, "STUB_OUT": str(out), "PYTHON": sys.executable, "P2G_INTERFACE": interface,
           "P2G_CMD": f"{sys.executable} {stub}", "P2G_DASK_DIR": str(tmp_path / "dask"),
           "PYTHONPATH": str(REPO)}
    info, job_id = sbatch_run_in_allocation(tmp_path, env)
    assert info["address"].startswith(f"tls://{ip}:") and info["value"] == 36
    assert info["job_ids"] == [job_id]
    assert info["no_credentials"].startswith("refused") and info["plain_tcp"].startswith("refused")
    assert not (tmp_path / "dask" / "tls").exists()  # the job's credentials were removed at its end
