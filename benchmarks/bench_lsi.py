"""Benchmark iterative_lsi on PBMC10k-shaped scATAC data (9,631 cells x 107,194 peaks).

The matrix is generated directly (fast, ~3.5 % nonzero): cells fall into 8 types, each type
raises or lowers a random fifth of the peaks, per-cell depth is log-normal. Printed: wall time
and peak RSS of ``p2g.tl.iterative_lsi`` (ArchR defaults: 30 components, 2 iterations, 25,000
features), and, as a baseline in the same run, one plain TF-IDF + scikit-learn
``TruncatedSVD(30)`` over all cells and all peaks (no iterations, no clustering, no projection).

    python benchmarks/bench_lsi.py                 # AnnData in memory + baseline
    python benchmarks/bench_lsi.py --store         # also: the Zarr store on a 2-worker LocalCluster

Target: <= 30 s on 2 cores (ArchR's published wall time for this size: 1 min 33 s).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import anndata as ad
import numpy as np
import pandas as pd
import psutil
import scipy.sparse as sp
from _peak_rss import PeakRSS


def pbmc_like(n_cells: int = 9631, n_peaks: int = 107_194, n_types: int = 8, density: float = 0.035,
              seed: int = 0) -> ad.AnnData:
    """Random counts with cell-type structure, drawn peak by peak per cell type."""
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(0, n_types, n_cells)
    depth = rng.lognormal(0.0, 0.4, n_cells)
    base = rng.lognormal(0.0, 0.8, n_peaks)
    rows, cols = [], []
    for t in range(n_types):
        effect = np.where(rng.random(n_peaks) < 0.2, rng.lognormal(0.0, 1.2, n_peaks), 1.0)
        prob = base * effect
        prob /= prob.sum()
        cells = np.flatnonzero(cell_type == t)
        per_cell = rng.poisson(depth[cells] * density * n_peaks / np.exp(0.08))
        rows.append(np.repeat(cells, per_cell))
        cols.append(np.searchsorted(np.cumsum(prob), rng.random(per_cell.sum()) * prob.sum()))
    rows, cols = np.concatenate(rows), np.minimum(np.concatenate(cols), n_peaks - 1)
    X = sp.csr_matrix((np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(n_cells, n_peaks))
    X.sum_duplicates()
    obs = pd.DataFrame({"cell_type": pd.Categorical(cell_type.astype(str)),
                        "n_fragment": np.asarray(X.sum(1)).ravel()},
                       index=[f"cell{i:05d}-1" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"chr1:{600 * i}-{600 * i + 501}" for i in range(n_peaks)])
    return ad.AnnData(X=X, obs=obs, var=var)


def knn_accuracy(emb: np.ndarray, labels) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(15), emb, labels, cv=5).mean())


def report(name: str, meter: PeakRSS, emb: np.ndarray, labels) -> None:
    print(f"{name:<40} wall {meter.seconds:6.1f} s  CPU {meter.cpu:6.1f} s  peak RSS {meter.peak / 2**30:5.2f} GiB "
          f"(+{(meter.peak - meter.start) / 2**30:4.2f} GiB)   shape {emb.shape}   "
          f"5-fold kNN accuracy {knn_accuracy(emb, labels):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", action="store_true", help="also run on a Zarr store with a LocalCluster")
    args = parser.parse_args()

    import p2g_dask as p2g
    from p2g_dask._logging import enable_console_logging

    t0 = time.perf_counter()
    atac = pbmc_like()
    labels = atac.obs["cell_type"].to_numpy()
    print(f"data: {atac.n_obs} cells x {atac.n_vars} peaks, {100 * atac.X.nnz / np.prod(atac.shape):.2f}% "
          f"nonzero, generated in {time.perf_counter() - t0:.1f} s; {psutil.cpu_count()} cores, "
          f"load average {psutil.getloadavg()[0]:.1f}")

    # Imports and numba kernels (compiled once, then cached on disk) load outside the timing.
    p2g.tl.iterative_lsi(atac[:300, :5000].copy(), n_components=5, var_features=2000, n_neighbors=10)
    enable_console_logging()

    with PeakRSS(interval=0.02) as meter:
        emb = p2g.tl.iterative_lsi(atac, n_components=30, iterations=2, var_features=25_000, resolution=0.5,
                                   n_neighbors=30, sample_cells_pre=10_000, depth_col="n_fragment", seed=1)
    report("p2g iterative_lsi (AnnData)", meter, emb, labels)

    from sklearn.decomposition import TruncatedSVD

    with PeakRSS(interval=0.02) as meter:
        base = TruncatedSVD(30, algorithm="randomized", random_state=1).fit_transform(p2g.tl.tfidf(atac.X))
    report("baseline tfidf + sklearn TruncatedSVD", meter, base, labels)

    if args.store:
        from distributed import Client, LocalCluster

        with tempfile.TemporaryDirectory() as tmp:
            rna = ad.AnnData(X=sp.csr_matrix((atac.n_obs, 1), dtype=np.int32), obs=atac.obs[[]])
            atac.obsm.clear()  # the store starts without the embedding computed above
            t0 = time.perf_counter()
            p2g.io.ingest(atac, rna, f"{tmp}/bench.zarr")
            print(f"ingest into a store: {time.perf_counter() - t0:.1f} s")
            del atac
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
                    Client(cluster) as client, PeakRSS(interval=0.02) as meter:
                emb = p2g.tl.iterative_lsi(f"{tmp}/bench.zarr", seed=1, client=client)
            report("p2g iterative_lsi (store, LocalCluster)", meter, emb, labels)


if __name__ == "__main__":
    main()
