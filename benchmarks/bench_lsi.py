"""iterative_lsi on PBMC10k-shaped scATAC counts against epione's own ``iterative_lsi``, each in a fresh process.

Case: 9,631 cells x 107,191 peaks, ~62 M nonzeros (PBMC10k's) held as float32 counts, cells in 8
types, each type raising or lowering a random fifth of the peaks, log-normal depth. Made once and
cached in ``--workdir``. Both tools get the same settings, 30 components, 2 iterations, 25,000
variable features, seed 1, and their own defaults otherwise.

Paths, each in a new Python process; the figure compared is the whole process, from interpreter
start to exit (start-up, imports, reading the h5ad, the call, as a user's script), and its parts
are printed (read, the tool's import, the call):
  epione       epione's ``iterative_lsi``, loaded from ``--epione DIR``/epione/tl/_iterative_lsi.py in
               its own environment (scanpy, leidenalg, igraph, pynndescent 0.6.0; see ``_epione.py``)
  memory       ``import p2g_dask as p2g; p2g.tl.iterative_lsi(atac, ...)``, numba kernels from cache
  memory cold  the same, first run after install (``NUMBA_CACHE_DIR`` a new empty folder)
  store        (``--store``) the store on a fresh ``start_cluster('local', n_workers=2)``, first and
               second call (call time only, no peer)
Printed: wall (best, range over ``--repeat``), CPU and peak RSS of the call, epione's whole process
over p2g's measured in the same run, and the embedding quality: 5-fold kNN cell-type accuracy
(``KNeighborsClassifier(15)``; the simulator's types are the labels).

Usage:  python benchmarks/bench_lsi.py --epione DIR [--workdir /tmp/p2g_bench] [--store] [--repeat 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _epione import add_arguments, load_epione, print_table, set_up
from _fresh import emit, load_note, run_fresh, two_calls_on_fresh_cluster
from _peak_rss import PeakRSS

SETTINGS = dict(n_components=30, iterations=2, var_features=25_000, seed=1)
CASE = "float32 counts"  # written into ``case.txt``: a cache of another case is made again


def pbmc_like(n_cells: int = 9631, n_peaks: int = 107_191, n_types: int = 8, density: float = 0.066,
              seed: int = 0):
    """Random float32 counts (as ``read_10x_h5`` gives them) with cell-type structure, drawn per cell type."""
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
    X = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_cells, n_peaks))
    X.sum_duplicates()
    obs = pd.DataFrame({"cell_type": pd.Categorical(cell_type.astype(str)),
                        "n_fragment": np.asarray(X.sum(1)).ravel()},
                       index=[f"cell{i:05d}-1" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"chr1:{600 * i}-{600 * i + 501}" for i in range(n_peaks)])
    return ad.AnnData(X=X, obs=obs, var=var)


def prepare(folder: Path, store: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "case.txt"
    if not (marker.exists() and marker.read_text() == CASE):
        t0 = time.perf_counter()
        atac = pbmc_like()
        print(f"simulated {atac.n_obs} x {atac.n_vars}, {atac.X.nnz / 1e6:.1f} M nonzeros, in "
              f"{time.perf_counter() - t0:.1f} s")
        atac.write_h5ad(folder / "tmp.h5ad")
        (folder / "tmp.h5ad").rename(folder / "atac.h5ad")
        atac.obs[["cell_type"]].to_parquet(folder / "cell_type.parquet")
        (folder / "ready").unlink(missing_ok=True)
        marker.write_text(CASE)
    if store and not (folder / "ready").exists():
        import anndata as ad

        import p2g_dask as p2g

        atac = ad.read_h5ad(folder / "atac.h5ad")
        rna = ad.AnnData(X=sp.csr_matrix((atac.n_obs, 1), dtype=np.float32), obs=atac.obs[[]])
        p2g.io.ingest(atac, rna, folder / "bench.zarr", overwrite=True)
        (folder / "ready").touch()


def knn_accuracy(emb: np.ndarray, labels) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(15), emb, labels, cv=5).mean())


# ---------------------------------------------------------------- the paths (each in a fresh process)
def run_store(folder: Path) -> None:
    import p2g_dask as p2g

    def call(client, name: str) -> None:
        emb = p2g.tl.iterative_lsi(str(folder / "bench.zarr"), client=client, overwrite=True, **SETTINGS)
        np.save(folder / f"emb_{name}.npy", emb)

    emit(**two_calls_on_fresh_cluster(call))


def run_path(kind: str, folder: Path, epione: Path | None) -> None:
    import anndata as ad

    if kind == "store":
        return run_store(folder)
    started = time.perf_counter()
    atac = ad.read_h5ad(folder / "atac.h5ad")
    read = time.perf_counter() - started
    if kind == "prime":  # compiles the numba kernels into the on-disk cache (not timed)
        import p2g_dask as p2g

        p2g.tl.iterative_lsi(atac[:3000].copy(), **{**SETTINGS, "var_features": 5_000})
        return emit()
    with PeakRSS(interval=0.02) as rss:
        started = time.perf_counter()
        if kind == "epione":
            module = load_epione(epione, "iterative_lsi")
            imported = time.perf_counter() - started
            module.iterative_lsi(atac, **SETTINGS)
            emb = atac.obsm["X_iterative_lsi"]
        else:
            import p2g_dask as p2g
            import p2g_dask.tl  # noqa: F401  (timed apart from the call, which would import it)

            imported = time.perf_counter() - started
            emb = p2g.tl.iterative_lsi(atac, **SETTINGS)
    np.save(folder / f"emb_{kind}.npy", emb)
    emit(**{kind: dict(seconds=rss.seconds, cpu=rss.cpu, peak=rss.peak, read=read, imported=imported)})


NAMES = {
    "epione": "epione iterative_lsi (its own code, its env), whole process",
    "memory": "p2g iterative_lsi in memory, whole process",
    "memory_cold": "p2g, whole process, 1st run after install (empty numba cache)",
}
STORE_NAMES = {"store1": "p2g store, fresh 2-worker LocalCluster, 1st call",
               "store2": "p2g store, same cluster, 2nd call"}
TARGETS = {"memory": ">= 10x"}


def measure(kind: str, folder: Path, args: tuple[str, ...], python: str) -> dict:
    """One fresh process of ``kind``: its result, whole-process seconds and the embedding's accuracy."""
    with tempfile.TemporaryDirectory(prefix="p2g-numba-") as empty:
        result = run_fresh(__file__, kind, *args, python=python if kind == "epione" else None,
                           extra_env={"NUMBA_CACHE_DIR": empty} if kind == "memory_cold" else None)
        cache_files = sum(1 for f in Path(empty).rglob("*") if f.is_file())
    labels = pd.read_parquet(folder / "cell_type.parquet")["cell_type"].to_numpy()
    rows = {key: value for key, value in result.items() if isinstance(value, dict)}
    for key, row in rows.items():
        emb = np.load(folder / f"emb_{key}.npy")
        row.update(process=result["process_seconds"], process_cpu=result["process_cpu"],
                   accuracy=knn_accuracy(emb, labels), dims=emb.shape[1], cache_files=cache_files)
    return rows


def print_parts(rows: dict[str, list]) -> None:
    """Where each path's whole process went (its fastest run), and the embedding's quality."""
    print(f"{'path':<60} {'process s':>9} {'read s':>7} {'import s':>9} {'call s':>7} {'kNN acc':>8} {'dims':>5}")
    for key, name in (NAMES | STORE_NAMES).items():
        if key not in rows:
            continue
        run = min(rows[key], key=lambda r: r["process"])
        call = run["seconds"] - run.get("imported", 0.0)
        parts = (f"{run['process']:9.1f} {run['read']:7.1f} {run['imported']:9.2f} {call:7.1f}"
                 if "read" in run else f"{'-':>9} {'-':>7} {'-':>9} {call:7.1f}")
        print(f"{name:<60} {parts} {run['accuracy']:8.3f} {run['dims']:5d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/p2g_bench", help="cache of the simulated case (reused)")
    parser.add_argument("--store", action="store_true", help="also time the store on a fresh LocalCluster")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every path (each in a fresh process)")
    add_arguments(parser)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.workdir) / "lsi"
    if args.run:
        return run_path(args.run, folder, args.epione)

    epione, python = set_up(args, "iterative_lsi")
    prepare(folder, args.store)
    common = ("--workdir", args.workdir, "--epione", str(epione))
    run_fresh(__file__, "prime", *common)
    rows: dict[str, list] = {}
    for _ in range(args.repeat):
        for kind in ("epione", "memory", "memory_cold", *(["store"] if args.store else [])):
            for key, row in measure(kind, folder, common, python).items():
                rows.setdefault(key, []).append(row)
    print(f"case: 9,631 cells x 107,191 peaks, float32 counts; settings {SETTINGS}; {load_note()}")
    print_table({k: v for k, v in rows.items() if k in NAMES}, NAMES, TARGETS, field="process", cpu="process_cpu")
    if args.store:
        print_table({k: v for k, v in rows.items() if k in STORE_NAMES}, STORE_NAMES, {})
    print_parts(rows)
    written = [r["cache_files"] for r in rows["memory_cold"]]
    print(f"the 1st-run-after-install process left {min(written)}-{max(written)} numba cache files in its "
          "empty NUMBA_CACHE_DIR (it compiled)")


if __name__ == "__main__":
    main()
