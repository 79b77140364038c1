"""Separate "hosts" on this machine for the tests: a Dask scheduler and worker nodes, each in its
own network namespace (a veth pair on a bridge, addresses made here) and its own mount namespace
(private /tmp, /var/tmp, /dev/shm, HOME and working directory). What a node sees of this
machine's files: the system and the Python installation (read-only), the code under test (on
PYTHONPATH; writable, like code on a cluster's shared home, for numba's kernel cache), the TLS
credentials folder (read-only) and the one shared data folder (read-write). Everything else it writes stays on its own tmpfs and is gone when it stops.

The test process is the client: it stays in the root namespaces and reaches the scheduler over
the bridge, like a laptop or a login node reaching a cluster. The scheduler is a host of its own
(its namespaces, no data needed), so the client never talks to a worker except through it.

Names carry the owning process id (``p2gh<pid>...``), so two test runs never collide, and
:func:`remove_leftovers` deletes what a crashed earlier run left (its pid no longer runs).
Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), iproute2's ``ip`` and util-linux's ``unshare``;
:class:`Unavailable` says why when they are missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "p2gh"
SCHEDULER_PORT = 8786


class Unavailable(RuntimeError):
    """Namespaces cannot be made here; the message says why (for ``pytest.skip``)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, ["ip", *args], done.stdout, done.stderr)
    return done


def _alive(pid: int) -> bool:
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _netns_pids(netns: str) -> list[int]:
    done = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_netns_processes(netns: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process in ``netns`` (what a node losing power does); return their pids."""
    pids = _netns_pids(netns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _netns_pids(netns) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def remove_leftovers() -> list[str]:
    """Delete namespaces and links of earlier runs whose process is gone; return their names."""
    removed = []
    owner = re.compile(rf"^{PREFIX}-?(\d+)")
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = owner.match(name)
        if m and not _alive(int(m.group(1))):
            _kill_netns_processes(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        m = owner.match(name)
        if m and not _alive(int(m.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def check_available() -> None:
    """Raise :class:`Unavailable` (with the reason) unless namespaces can be made here."""
    if not sys.platform.startswith("linux"):
        raise Unavailable(f"cannot create network namespaces: not Linux ({sys.platform})")
    if os.geteuid() != 0:
        raise Unavailable(f"cannot create network namespaces: not root (uid {os.geteuid()}); "
                          "the two-node harness needs CAP_SYS_ADMIN and CAP_NET_ADMIN")
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux"), ("bash", "bash")):
        if shutil.which(tool) is None:
            raise Unavailable(f"cannot create network namespaces: `{tool}` not found (install {package})")
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
        _ip("link", "add", f"{PREFIX}{os.getpid()}p", "type", "bridge")
    except subprocess.CalledProcessError as err:
        raise Unavailable(f"cannot create network namespaces: {err.stderr.strip() or err}") from None
    finally:
        _ip("link", "del", f"{PREFIX}{os.getpid()}p", check=False)
        _ip("netns", "del", probe, check=False)
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise Unavailable(f"cannot create mount namespaces: {done.stderr.strip()}")


def _free_subnet() -> str:
    """A /24 of 10.0.0.0/8 that no route of this machine uses ("10.a.b")."""
    routes = _ip("-4", "route", "show", "table", "all", check=False).stdout
    pid = os.getpid()
    for step in range(200):
        a, b = 200 + (pid + step) % 50, (pid // 50 + step) % 256
        if f"10.{a}.{b}." not in routes and f"10.{a}.0.0/16" not in routes:
            return f"10.{a}.{b}"
    raise Unavailable("cannot create network namespaces: no free 10.x.y.0/24 subnet for the bridge")


@dataclass
class Node:
    """One host: its network namespace, address, host-side veth and its running command."""

    name: str
    netns: str
    veth: str
    ip: str
    log: Path
    process: subprocess.Popen | None = None


# Runs inside `ip netns exec NS unshare --mount --propagation private`: hides HIDE (tmpfs each),
# then binds each EXPOSE path back at its own place (read-only unless marked rw), then starts
# the command in a private working directory.
_NODE_SCRIPT = r"""
set -euo pipefail
fd=10
declare -a FDS=()
for spec in "${EXPOSE[@]}"; do
    path="${spec#*:}"
    eval "exec $fd<\"\$path\""
    FDS+=("$fd:$spec")
    fd=$((fd + 1))
done
for hide in "${HIDE[@]}"; do
    [[ -d "$hide" ]] && mount -t tmpfs -o mode=1777 p2g-node-private "$hide"
done
for entry in "${FDS[@]}"; do
    n="${entry%%:*}"; spec="${entry#*:}"; mode="${spec%%:*}"; path="${spec#*:}"
    mkdir -p "$path"
    mount --no-canonicalize --bind "/proc/self/fd/$n" "$path"
    [[ "$mode" == ro ]] && mount -o remount,bind,ro "$path"
    eval "exec $n<&-"
done
mkdir -p "$HOME" /tmp/work
cd /tmp/work
exec "$@"
"""


@dataclass
class Harness:
    """A scheduler and ``n_nodes`` worker nodes as separate hosts; see the module docstring.

    Parameters
    ----------
    root
        A folder of the test process for logs and credentials (nodes see only ``tls/`` in it).
    data
        The shared data folder (read-write on every node, at the same path).
    code
        The checkout under test (read-only on every node, first on PYTHONPATH).
    """

    root: Path
    data: Path
    code: Path
    n_nodes: int = 2
    nthreads: int = 1
    memory_limit: str = "2GiB"
    hide: tuple[str, ...] = ()
    nodes: dict[str, Node] = field(default_factory=dict)
    subnet: str = ""
    security_folder: Path | None = None

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{os.getpid()}b"

    @property
    def scheduler_address(self) -> str:
        return f"tls://{self.nodes['sched'].ip}:{SCHEDULER_PORT}"

    @property
    def worker_nodes(self) -> list[str]:
        return [name for name in self.nodes if name != "sched"]

    def start(self) -> None:
        """Make the network, the credentials and the processes; on any failure undo everything."""
        from distributed.security import Security

        from p2g_dask.cluster import write_credentials

        check_available()
        remove_leftovers()
        try:
            self._make_network()
            self.security_folder = write_credentials(Security.temporary(), self.root / "tls")
            self.start_node("sched")
            for name in self.worker_nodes:
                self.start_node(name)
        except BaseException:
            self.close()
            raise

    def _make_network(self) -> None:
        self.subnet = _free_subnet()
        pid = os.getpid()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        names = ["sched"] + [f"node{i + 1}" for i in range(self.n_nodes)]
        for i, name in enumerate(names):
            node = Node(name=name, netns=f"{PREFIX}-{pid}-{name}", veth=f"{PREFIX}{pid}{name[0]}{i}",
                        ip=f"{self.subnet}.{10 + i}", log=self.root / "logs" / f"{name}.log")
            self.nodes[name] = node
            _ip("netns", "add", node.netns)
            _ip("link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
            _ip("link", "set", node.veth, "master", self.bridge)
            _ip("link", "set", node.veth, "up")
            _ip("-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
            _ip("-n", node.netns, "link", "set", "eth0", "up")
            _ip("-n", node.netns, "link", "set", "lo", "up")

    def _command(self, name: str) -> list[str]:
        node, tls = self.nodes[name], self.security_folder
        creds = ["--tls-ca-file", str(tls / "ca.pem"), "--tls-cert", str(tls / "cert.pem"),
                 "--tls-key", str(tls / "key.pem")]
        if name == "sched":
            return [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", node.ip,
                    "--port", str(SCHEDULER_PORT), "--protocol", "tls", "--no-dashboard", *creds]
        return [sys.executable, "-m", "distributed.cli.dask_worker", self.scheduler_address,
                "--host", node.ip, "--name", name, "--nthreads", str(self.nthreads), "--nworkers", "1",
                "--memory-limit", self.memory_limit, "--no-dashboard", "--death-timeout", "60", *creds]

    def exposed(self) -> list[str]:
        """``mode:path`` of what a node sees of this machine's files (besides the system)."""
        python = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
        # The checkout stays writable, as code on a cluster's shared home is: numba writes its
        # kernel cache beside the modules, and nodes that could not read it would each compile
        # every kernel again (minutes on a busy 2-core machine).
        specs = [f"ro:{p}" for p in sorted(python)] + [f"rw:{self.code.resolve()}",
                                                      f"ro:{self.security_folder}", f"rw:{self.data.resolve()}"]
        return sorted(specs, key=lambda s: len(s.split(":", 1)[1]))  # parents before children

    def hidden(self) -> list[str]:
        """Folders each node gets its own empty tmpfs over."""
        home = str(Path.home())
        return list(dict.fromkeys(["/tmp", "/var/tmp", "/dev/shm", home, *self.hide]))

    def start_node(self, name: str) -> Node:
        """Start (or restart) the node's process in fresh namespaces' mounts: a rebooted host."""
        node = self.nodes[name]
        node.log.parent.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home()), "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.code.resolve()), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg",
            "EXPOSE_LIST": " ".join(shlex.quote(s) for s in self.exposed()),
            "HIDE_LIST": " ".join(shlex.quote(h) for h in self.hidden()),
        }
        script = 'eval "EXPOSE=($EXPOSE_LIST)"; eval "HIDE=($HIDE_LIST)"\n' + _NODE_SCRIPT
        argv = ["ip", "netns", "exec", node.netns, "unshare", "--mount", "--propagation", "private", "--",
                "bash", "-c", script, "p2g-node", *self._command(name)]
        with open(node.log, "ab") as log:
            node.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        return node

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process of the node (the host dies); return their pids."""
        node = self.nodes[name]
        pids = _kill_netns_processes(node.netns)
        if node.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=10)
        return pids

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of every node's log, for failure messages."""
        out = []
        for node in self.nodes.values():
            with contextlib.suppress(OSError):
                text = node.log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {node.name} ({node.ip}) ---\n" + "\n".join(text))
        return "\n".join(out)

    def close(self) -> None:
        """Kill every node's processes, delete the namespaces, veths and the bridge."""
        for node in self.nodes.values():
            _kill_netns_processes(node.netns)
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=10)
            _ip("netns", "del", node.netns, check=False)
            _ip("link", "del", node.veth, check=False)
        _ip("link", "del", self.bridge, check=False)
