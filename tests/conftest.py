"""Shared fixtures: small simulated multiome data, a real in-process cluster, the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The real data folder beside the repository; P2G_SHARED_DATA points elsewhere (e.g. a missing
# folder, to run the suite as a fresh clone would).
SHARED_DATA = Path(os.environ.get("P2G_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def small_sim():
    """600 cells x 3,000 peaks x 300 genes with 30 planted genes (2 peaks each)."""
    from p2g_dask.datasets import simulate_multiome

    return simulate_multiome(n_cells=600, n_peaks=3000, n_genes=300, n_linked_genes=30, seed=7)


@pytest.fixture(scope="session")
def small_store(small_sim, tmp_path_factory):
    from p2g_dask.io import ingest

    path = tmp_path_factory.mktemp("store") / "small.zarr"
    return ingest(small_sim.atac, small_sim.rna, path, chunk_cells=128)


@pytest.fixture(scope="module")
def local_client():
    """A real in-process LocalCluster (2 single-threaded workers)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data(why): the test's point is the real data of ../shared/data; "
                            "why is shown when it skips")


@pytest.fixture
def shared_data(request):
    """The read-only real data folder (../shared/data, or $P2G_SHARED_DATA); skips when absent.

    Only tests whose point is real data use it (each says why with ``@pytest.mark.real_data``);
    every other check makes its own files.
    """
    wanted = [SHARED_DATA / "pbmc_multiome_1k" / "atac.h5ad", SHARED_DATA / "hg38" / "hg38_genes.tsv.gz"]
    if not all(path.exists() for path in wanted):
        marker = request.node.get_closest_marker("real_data")
        why = f"; real data is its point: {marker.args[0]}" if marker and marker.args else ""
        pytest.skip(f"real data folder {SHARED_DATA} is absent (a fresh clone has no ../shared/data){why}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``p2g demo`` on 1,200 cells and 2 workers, once, in a fresh process: (output folder, terminal text).

    Shared by the demo's checks (tests/test_cli.py) and the report's (tests/test_report.py).
    """
    from _sim_files import run_cli_terminal

    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, run_cli_terminal(["demo", "--out", str(out), "--cells", "1200", "--workers", "2"], out.parent)


@pytest.fixture(autouse=True)
def _isolated_matplotlib_style():
    """plot_set() changes matplotlib's global rcParams; keep each test's style its own."""
    import matplotlib

    with matplotlib.rc_context():
        yield


@pytest.fixture(autouse=True)
def _no_orphaned_distributed_scheduler(request):
    """A test that leaves dask's ``scheduler`` config at "dask.distributed" with no client left
    (a client garbage collected unclosed) would fail every later test that computes ("no Client
    active"): the config is reset and the test named in a warning, so one leak is one line."""
    yield
    import warnings

    import dask

    if dask.config.get("scheduler", None) not in ("dask.distributed", "distributed"):
        return
    from distributed import default_client

    try:
        default_client()
    except ValueError:
        dask.config.config.pop("scheduler", None)
        warnings.warn(f"{request.node.nodeid} left dask's scheduler config at 'dask.distributed' with no "
                      "client; reset", stacklevel=1)
