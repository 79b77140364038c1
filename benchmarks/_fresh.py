"""Run one benchmark path in a fresh Python process and read back what it measured.

A path is a script called with ``--run <name>`` (plus its own options); it prints one line
``RESULT {json}``. Running every path in its own process keeps each one's imports, numba
loading, first-call warm-up and peak RSS its own, as a user starting a notebook would see them.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

#: The repository this script belongs to goes first on the path of every child process, so a
#: worktree's p2g_dask is measured rather than an installed one.
REPO = str(Path(__file__).resolve().parents[1])


def child_env() -> dict[str, str]:
    """The environment of a child process: this repository first on PYTHONPATH (workers inherit it)."""
    env = dict(os.environ)
    parts = [REPO, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != REPO]]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def compile_bytecode(*paths: str | Path, python: str | None = None) -> None:
    """Byte-compile ``paths`` (files or folders) with ``python``, as pip does when it installs a package.

    Fresh processes then load bytecode, as on a user's machine; without this, an editable install
    under ``PYTHONDONTWRITEBYTECODE`` (as on these machines) compiles every module's source again
    in each process, which a user never pays.
    """
    subprocess.run([python or sys.executable, "-m", "compileall", "-q", *map(str, paths)], check=True)


def emit(**result) -> None:
    """Print the ``RESULT`` line a path reports back to :func:`run_fresh`."""
    print("RESULT " + json.dumps(result), flush=True)


def run_fresh(script: str, name: str, *args: str, python: str | None = None,
              extra_env: dict[str, str] | None = None) -> dict:
    """Run ``script --run name *args`` in a new interpreter; return its ``RESULT`` dict.

    ``python`` is the interpreter (default: this one; epione's paths run in epione's own
    environment); ``extra_env`` is added to the child's environment. The returned dict also holds
    ``process_seconds``, the child's whole life from interpreter start-up to exit (as its user
    waits), and ``process_cpu``, its user + system CPU seconds (with its own children's).
    """
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run([python or sys.executable, script, "--run", name, *args], capture_output=True,
                         text=True, env={**child_env(), **(extra_env or {})})
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        print(out.stdout[-3000:], out.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"the {name!r} path of {Path(script).name} failed (exit code {out.returncode})")
    return {**json.loads(lines[-1][len("RESULT "):]), "process_seconds": seconds, "process_cpu": cpu}


def two_calls_on_fresh_cluster(call) -> dict:
    """Start p2g's 2-worker LocalCluster, then time ``call(client, name)`` for 'store1' and 'store2'.

    Returns each call's wall, CPU and peak RSS of the process tree (client + workers), with what
    ``call`` returned added, and ``cluster_start``: the seconds ``start_cluster`` took (untimed).
    """
    from _peak_rss import PeakRSS

    from p2g_dask.cluster import close_cluster, start_cluster

    started = time.perf_counter()
    client = start_cluster("local", n_workers=2, threads_per_worker=1, dashboard_address=None)
    rows = {"cluster_start": time.perf_counter() - started}
    try:
        for name in ("store1", "store2"):
            with PeakRSS(interval=0.02) as rss:
                more = call(client, name)
            rows[name] = dict(seconds=rss.seconds, cpu=rss.cpu, peak=rss.peak, **(more or {}))
    finally:
        close_cluster(client)
    return rows


def load_note() -> str:
    """Cores and load average now: on a shared machine the figures mean little without them."""
    import psutil

    return f"{psutil.cpu_count()} cores, load average {' / '.join(f'{x:.1f}' for x in psutil.getloadavg())}"
