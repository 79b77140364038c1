"""No global side effects: dask config defaults registered once (user values win), the pipeline's
plot style applied through a context, never to the caller's matplotlib rcParams."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import dask
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]


def test_register_defaults__once_per_process_even_on_reload():
    import p2g_dask.cluster as cluster

    registered = len(dask.config.defaults)
    assert cluster.register_defaults() is False
    importlib.reload(cluster)
    assert len(dask.config.defaults) == registered
    assert dask.config.get("p2g.cluster.host") == "127.0.0.1"


def test_register_defaults__user_values_win_over_package_defaults():
    code = ("import dask; import p2g_dask.cluster; "
            "print(dask.config.get('p2g.cluster.host'), dask.config.get('jobqueue.slurm.cores'))")
    env = dict(os.environ, PYTHONPATH=str(REPO), DASK_P2G__CLUSTER__HOST="10.1.2.3", DASK_JOBQUEUE__SLURM__CORES="9")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["10.1.2.3", "9"]


def test_plot_style__restores_rcparams_and_checks_fontsize():
    from p2g_dask.pl import plot_style

    before = dict(matplotlib.rcParams)
    with plot_style(fontsize=13):
        assert matplotlib.rcParams["font.size"] == 13
        assert matplotlib.rcParams["axes.spines.top"] is False
    assert dict(matplotlib.rcParams) == before
    with pytest.raises(ValueError, match="fontsize=0"):
        with plot_style(fontsize=0):
            pass


def test_run_plots__styled_inside_without_changing_global_rcparams(tmp_path, monkeypatch):
    import p2g_dask.pl as pl
    from p2g_dask import _stages

    seen = {}
    real = pl.plot_link_summary

    def spy(links, **kwargs):
        seen["spines_top"] = matplotlib.rcParams["axes.spines.top"]
        seen["font_size"] = matplotlib.rcParams["font.size"]
        return real(links, **kwargs)

    monkeypatch.setattr(pl, "plot_link_summary", spy)
    rng = np.random.default_rng(0)
    config = {"inputs": {}, "output": str(tmp_path), "plots": {"summary": True, "heatmap": False}}
    run = _stages._Run(config, client=None, record={"outputs": {}}, progress=False)
    run.links = pd.DataFrame({"gene": rng.choice(list("AB"), 50), "correlation": rng.uniform(-1, 1, 50),
                              "fdr": rng.uniform(0, 0.1, 50), "distance": rng.integers(-1e5, 1e5, 50)})
    matplotlib.rcParams["axes.spines.top"] = True
    before = dict(matplotlib.rcParams)
    run.plots()
    assert seen == {"spines_top": False, "font_size": 9.0}  # the p2g style while drawing
    assert dict(matplotlib.rcParams) == before  # and nothing left behind
    assert (tmp_path / "link_summary.png").stat().st_size > 5_000


EXIT_SCRIPT = """
import atexit, gc, logging, sys
# Registered before p2g_dask: runs after its handler (atexit is last in, first out).
atexit.register(lambda: open(sys.argv[1] + "/frozen", "w").write(str(gc.get_freeze_count())))
import p2g_dask
log = logging.getLogger("user")
log.addHandler(logging.FileHandler(sys.argv[1] + "/user.log"))
log.warning("x" * 100_000)
atexit.register(lambda: open(sys.argv[1] + "/late", "w").write("ran"))
data = open(sys.argv[1] + "/data.txt", "w")  # never closed: flushed as the module is cleared
data.write("y" * 100_000)
survivors = [[i] for i in range(50_000)]  # 50,001 tracked objects alive at exit
"""


@pytest.mark.parametrize("keep", ["", "1"])
def test_exit__survivors_frozen_and_nothing_lost_unless_kept(tmp_path, keep):
    env = {**os.environ, "PYTHONPATH": str(REPO), "P2G_DASK_EXIT_GC": keep}
    subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path)], env=env, check=True, timeout=120)
    frozen = int((tmp_path / "frozen").read_text())
    assert (frozen > 50_000) if keep == "" else frozen == 0
    assert (tmp_path / "user.log").read_text() == "x" * 100_000 + "\n"
    assert (tmp_path / "late").read_text() == "ran"
    assert (tmp_path / "data.txt").read_text() == "y" * 100_000
