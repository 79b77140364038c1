"""Workers started by start_cluster are warm (package and kernels loaded) and lean (no client-side
libraries), even when the user's script, which each spawned worker re-imports, imports p2g_dask.tl;
and importing p2g_dask.tl imports no tool's libraries."""

from __future__ import annotations

import json
import os
import multiprocessing
import subprocess
import sys
import textwrap

from p2g_dask._lazy import LazyModule
from p2g_dask._warm import in_worker_process

CLIENT_ONLY = ("sklearn", "igraph", "anndata", "h5py", "matplotlib")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import p2g_dask.tl  # at the top, as in a user's script: every spawned worker re-imports it
    from p2g_dask.cluster import close_cluster, start_cluster

    def modules():
        import sys
        return {"loaded": [m for m in %r if m in sys.modules],
                "warm": "p2g_dask.tl.engine.kernels" in sys.modules and "p2g_dask.io._chunks" in sys.modules}

    if __name__ == "__main__":
        client = start_cluster("local", n_workers=1, threads_per_worker=1, dashboard_address=None)
        try:
            worker = list(client.run(modules).values())[0]
        finally:
            close_cluster(client)
        print(json.dumps({"worker": worker, "client": modules()}))
    """
) % (CLIENT_ONLY,)


def test_start_cluster__workers_are_warm_without_the_client_libraries(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["worker"] == {"loaded": [], "warm": True}
    # A tool imports only what it uses: importing p2g_dask.tl loads no kNN or clustering library.
    assert not {"sklearn", "igraph"} & set(report["client"]["loaded"])


def test_in_worker_process__a_nannys_worker_process_counts_while_starting(monkeypatch):
    import weakref

    from distributed.worker import Worker

    monkeypatch.setattr(Worker, "_instances", weakref.WeakSet())  # no in-process worker alive
    assert in_worker_process() is False
    monkeypatch.setattr(multiprocessing.current_process(), "name", "Dask Worker process (from Nanny)")
    assert in_worker_process() is True


def test_lazy_module__imports_on_first_attribute():
    module = LazyModule("colorsys")
    assert "colorsys" in repr(module)
    assert module.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)


CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    import numpy as np

    if __name__ == "__main__":
        from p2g_dask.tl.engine import knn
        if sys.argv[1] == "fill":  # a first run: compiles the kernel into the (empty) cache
            knn.nearest_neighbours(np.eye(3), np.eye(3)[:1], 2)
            print(json.dumps({"signatures": len(knn._keep_nearest.signatures)}))
            sys.exit()
        from p2g_dask.cluster import close_cluster, start_cluster
        before = len(knn._keep_nearest.signatures)
        client = start_cluster("local", n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
        try:
            for thread in threading.enumerate():
                if thread.name == "p2g-warm":
                    thread.join(60)
        finally:
            close_cluster(client)
        print(json.dumps({"before": before, "after": len(knn._keep_nearest.signatures)}))
    """
)


def test_start_cluster__client_kernels_load_while_the_workers_start(tmp_path):
    script = tmp_path / "client_script.py"
    script.write_text(CLIENT_SCRIPT)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    runs = [subprocess.run([sys.executable, str(script), step], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path, env=env) for step in ("fill", "start")]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr[-3000:]
    filled, started = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert filled == {"signatures": 1}
    # The kNN kernel the first call's metacells need is loaded from the cache, never called.
    assert started == {"before": 0, "after": 1}
