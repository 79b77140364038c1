"""iterative_lsi on PBMC10k-shaped scATAC counts against an epione-equivalent baseline, each in a fresh process.

Case: 9,631 cells x 107,191 peaks, ~62 M nonzeros (PBMC10k's), cells in 8 types, each type
raising or lowering a random fifth of the peaks, log-normal depth. Made once and cached in
``--workdir``. Same settings for both: 30 components, 2 iterations, 25,000 variable features,
seed 1.

Paths (each in a new Python process; imports before the timer, the first call timed):
  memory     ``p2g.tl.iterative_lsi`` on the AnnData, then a second call in the same process
  baseline   epione-equivalent, written below: TF-logIDF on every peak passing the accessibility
             filter (detected in >= 1 % of cells, the top 0.5 % most accessible skipped),
             ``sklearn.utils.extmath.randomized_svd``; cells' components z-scored; kNN graph on
             20 neighbours + igraph Leiden at resolution 0.2; the 25,000 peaks most variable over
             the clusters (log2 of cluster CPM); second TF-logIDF + randomized SVD with all cells
             fitted; components with |r| > 0.75 to log10 depth dropped
  store      (``--store``) the store on a fresh ``start_cluster('local', n_workers=2)``: first and
             second call, to show the first call's warm-up
Printed: wall, CPU, process-tree peak RSS, speed-up over the baseline and the embedding quality
(5-fold kNN cell-type accuracy, ``KNeighborsClassifier(15)``; the simulator's types are the labels).

Usage:  python benchmarks/bench_lsi.py [--workdir /tmp/p2g_bench] [--store] [--repeat 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _fresh import emit, load_note, run_fresh
from _peak_rss import PeakRSS

SETTINGS = dict(n_components=30, iterations=2, var_features=25_000, seed=1)


def pbmc_like(n_cells: int = 9631, n_peaks: int = 107_191, n_types: int = 8, density: float = 0.066,
              seed: int = 0):
    """Random counts with cell-type structure, drawn peak by peak per cell type."""
    import anndata as ad

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


def prepare(folder: Path, store: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "atac.h5ad").exists():
        t0 = time.perf_counter()
        atac = pbmc_like()
        print(f"simulated {atac.n_obs} x {atac.n_vars}, {atac.X.nnz / 1e6:.1f} M nonzeros, in "
              f"{time.perf_counter() - t0:.1f} s")
        atac.write_h5ad(folder / "tmp.h5ad")
        (folder / "tmp.h5ad").rename(folder / "atac.h5ad")
    if store and not (folder / "ready").exists():
        import anndata as ad

        import p2g_dask as p2g

        atac = ad.read_h5ad(folder / "atac.h5ad")
        rna = ad.AnnData(X=sp.csr_matrix((atac.n_obs, 1), dtype=np.int32), obs=atac.obs[[]])
        p2g.io.ingest(atac, rna, folder / "bench.zarr", overwrite=True)
        (folder / "ready").touch()


# ---------------------------------------------------------------- epione-equivalent baseline
def log_tfidf(X: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """log(TF * IDF * 1e4 + 1) of binarized counts, with scipy.sparse operations."""
    binary = X.copy()
    binary.data[:] = 1.0
    total = np.asarray(binary.sum(axis=1)).ravel()
    total[total == 0] = 1.0
    tf = sp.diags(1.0 / total) @ binary
    out = sp.csr_matrix(tf @ sp.diags(idf))
    out.data = np.log1p(out.data * 1e4)
    return out


def lsi_svd(X: sp.csr_matrix, n_components: int, seed: int) -> np.ndarray:
    from sklearn.utils.extmath import randomized_svd

    binary = (X > 0).astype(np.float64)
    idf = X.shape[0] / np.maximum(np.asarray(binary.sum(axis=0)).ravel(), 1.0)
    u, s, _ = randomized_svd(log_tfidf(X, idf), n_components, random_state=seed)
    coords = u * s
    return (coords - coords.mean(axis=1, keepdims=True)) / coords.std(axis=1, ddof=1, keepdims=True)


def leiden(coords: np.ndarray, n_neighbors: int, resolution: float, seed: int) -> np.ndarray:
    import random

    import igraph
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=n_neighbors).fit(coords).kneighbors(coords, return_distance=False)
    edges = np.column_stack([np.repeat(np.arange(coords.shape[0]), n_neighbors), idx.ravel()])
    edges = np.unique(np.sort(edges[edges[:, 0] != edges[:, 1]], axis=1), axis=0)
    graph = igraph.Graph(n=coords.shape[0], edges=edges.tolist())
    igraph.set_random_number_generator(random.Random(seed))
    return np.asarray(graph.community_leiden(objective_function="modularity", resolution=resolution).membership)


def epione_like(atac, *, n_components=30, var_features=25_000, seed=1) -> np.ndarray:
    """What a user runs today (epione's ``iterative_lsi``), restated with scipy / sklearn / igraph."""
    X = sp.csr_matrix(atac.X, dtype=np.float64)
    detected = np.asarray((X > 0).sum(axis=0)).ravel()
    keep = (detected >= 0.01 * X.shape[0]) & (detected <= np.quantile(detected, 0.995))
    peaks = np.flatnonzero(keep)
    coords = lsi_svd(X[:, peaks], n_components, seed)
    clusters = leiden(coords, 20, 0.2, seed)
    sums = np.vstack([np.asarray(X[clusters == c].sum(axis=0)).ravel() for c in range(clusters.max() + 1)])
    log_norm = np.log2(sums / sums.sum(axis=1, keepdims=True) * 1e6 + 1)
    variable = np.sort(np.argsort(-log_norm.var(axis=0, ddof=1))[:var_features])
    coords = lsi_svd(X[:, variable], n_components, seed)
    depth = np.log10(np.asarray(X.sum(axis=1)).ravel() + 1)
    r = np.array([abs(np.corrcoef(coords[:, c], depth)[0, 1]) for c in range(n_components)])
    return coords[:, r <= 0.75]


def knn_accuracy(emb: np.ndarray, labels) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(15), emb, labels, cv=5).mean())


# ---------------------------------------------------------------- the paths (each in a fresh process)
def run_path(kind: str, folder: Path) -> None:
    import anndata as ad

    import p2g_dask as p2g
    import p2g_dask.tl  # noqa: F401  (imports outside the timer, as for the baseline)

    atac = ad.read_h5ad(folder / "atac.h5ad")
    labels = atac.obs["cell_type"].to_numpy()
    rows = {}
    if kind == "baseline":
        import igraph  # noqa: F401  (imports outside the timer, as for p2g_dask)
        import sklearn.neighbors  # noqa: F401
        import sklearn.utils.extmath  # noqa: F401

        with PeakRSS(interval=0.02) as rss:
            emb = epione_like(atac)
        rows["baseline"] = dict(seconds=rss.seconds, cpu=rss.cpu, peak=rss.peak, accuracy=knn_accuracy(emb, labels),
                                dims=emb.shape[1])
    elif kind == "prime":  # compiles the numba kernels into the on-disk cache (not timed)
        p2g.tl.iterative_lsi(atac[:3000].copy(), **{**SETTINGS, "var_features": 5_000})
        return emit()
    elif kind == "memory":
        import igraph  # noqa: F401  (imported outside the timer, as the baseline's)

        for call in ("memory1", "memory2"):
            with PeakRSS(interval=0.02) as rss:
                emb = p2g.tl.iterative_lsi(atac, **SETTINGS)
            rows[call] = dict(seconds=rss.seconds, cpu=rss.cpu, peak=rss.peak, accuracy=knn_accuracy(emb, labels),
                              dims=emb.shape[1])
    else:
        from p2g_dask.cluster import close_cluster, start_cluster

        del atac
        client = start_cluster("local", n_workers=2, threads_per_worker=1, dashboard_address=None)
        try:
            for call in ("store1", "store2"):
                with PeakRSS(interval=0.02) as rss:
                    emb = p2g.tl.iterative_lsi(str(folder / "bench.zarr"), client=client, overwrite=True, **SETTINGS)
                rows[call] = dict(seconds=rss.seconds, cpu=rss.cpu, peak=rss.peak,
                                  accuracy=knn_accuracy(emb, labels), dims=emb.shape[1])
        finally:
            close_cluster(client)
    emit(**rows)


NAMES = {
    "baseline": "epione-equivalent (scipy/sklearn/igraph)",
    "memory1": "p2g in memory, 1st call in a fresh process",
    "memory2": "p2g in memory, 2nd call, same process",
    "store1": "p2g store, fresh 2-worker LocalCluster, 1st call",
    "store2": "p2g store, same cluster, 2nd call",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/p2g_bench", help="cache of the simulated case (reused)")
    parser.add_argument("--store", action="store_true", help="also time the store on a fresh LocalCluster")
    parser.add_argument("--no-baseline", action="store_true", help="skip the (slow) baseline")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every path (each in a fresh process)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.workdir) / "lsi"
    if args.run:
        return run_path(args.run, folder)

    prepare(folder, args.store)
    run_fresh(__file__, "prime", "--workdir", args.workdir)
    kinds = ["memory"] + ([] if args.no_baseline else ["baseline"]) + (["store"] if args.store else [])
    rows: dict[str, list] = {}
    for _ in range(args.repeat):
        for kind in kinds:
            for key, row in run_fresh(__file__, kind, "--workdir", args.workdir).items():
                rows.setdefault(key, []).append(row)
    print(f"case: 9,631 cells x 107,191 peaks; settings {SETTINGS}; {load_note()}")
    base = min(r["seconds"] for r in rows["baseline"]) if "baseline" in rows else None
    print(f"{'path':<50} {'wall s':>12} {'CPU s':>7} {'peak RSS GiB':>13} {'vs baseline':>12} {'kNN acc':>8} {'dims':>5}")
    for key in [k for k in NAMES if k in rows]:
        runs = rows[key]
        wall = [r["seconds"] for r in runs]
        shown = f"{min(wall):.1f}" + (f"-{max(wall):.1f}" if len(wall) > 1 else "")
        ratio = f"{base / min(wall):11.1f}x" if base else f"{'-':>12}"
        print(f"{NAMES[key]:<50} {shown:>12} {runs[0]['cpu']:7.1f} {max(r['peak'] for r in runs) / 2**30:13.2f} "
              f"{ratio} {runs[0]['accuracy']:8.3f} {runs[0]['dims']:5d}")


if __name__ == "__main__":
    main()
