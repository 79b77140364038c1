"""Shared fixtures: small simulated multiome data, a real in-process cluster, the real data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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


@pytest.fixture(scope="session")
def shared_data():
    """The read-only real data folder (../shared/data); skips when absent, as in a fresh clone."""
    if not (SHARED_DATA / "pbmc_multiome_1k" / "atac.h5ad").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (fresh clone without ../shared/data)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_matplotlib_style():
    """plot_set() changes matplotlib's global rcParams; keep each test's style its own."""
    import matplotlib

    with matplotlib.rc_context():
        yield
