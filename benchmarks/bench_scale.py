"""Atlas-scale benchmark: peak_to_gene (and iterative_lsi's projection) on stores of 10k-1M cells.

Each run gets a fresh 2-worker x 1-thread ``LocalCluster`` (separate processes) with a memory
limit per worker, and prints one table row per store and ``n_metacells``:

- wall time of the run and per stage, from the task stream (first start to last stop of the
  stage's tasks): aggregation (``p2g-read``/``p2g-metacell-sum``), correlation
  (``p2g-feature-variance``/``p2g-columns``/``p2g-correlate``), FDR (the client's tables: BH and
  the table); the kNN metacells run in the client (``links.attrs['timings']``);
- nonzeros (ATAC + RNA) aggregated per second of the aggregation stage;
- peak RSS of the whole process tree (this process, nannies and workers; psutil, 50 ms);
- bytes spilled to disk by the workers (their spill buffers' ``disk-write`` counters);
- recall of the planted links (``truth.tsv`` next to the store) at ArchR's
  ``getPeak2GeneLinks`` cut-offs (FDR < 1e-4, r > 0.45).

Stores come from ``make_atlas_store.py``. With several sizes, the issue's criteria are checked
between consecutive sizes (memory flat, time ~linear, recall not falling).

    python benchmarks/bench_scale.py /data/atlas_10k/atlas.zarr /data/atlas_100k/atlas.zarr \\
        /data/atlas_1m/atlas.zarr --memory-limit 3GiB --n-metacells 500 5000 --lsi
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from _peak_rss import PeakRSS

#: Task-key prefixes of each stage (see p2g_dask/tl/peak_to_gene.py and _lsi_stream.py).
STAGES = {
    "aggregation": ("p2g-read-", "p2g-input-", "p2g-metacell-sum-", "p2g-metacell-totals-"),
    "correlation": ("p2g-feature-variance-", "p2g-columns-", "p2g-correlate-"),
    "fdr": ("p2g-links-",),
    "lsi_projection": ("p2g-lsi-project-",),
    "lsi_passes": ("p2g-lsi-colsum", "p2g-lsi-rowsum", "p2g-lsi-sample", "p2g-lsi-groupsum", "p2g-lsi-tfidf"),
}
GiB = 2**30


def _sidecar(store_path: str | Path, kind: str) -> pd.DataFrame:
    """``truth.tsv`` / ``genes.tsv`` next to a store, checked against the hash the store recorded."""
    import zarr

    store_path = Path(store_path)
    info = dict(zarr.open_group(str(store_path), mode="r").attrs).get("p2g_simulation")
    if info is None:
        raise ValueError(f"store={str(store_path)!r} was not written by make_atlas_store.py (no p2g_simulation attrs).")
    path = store_path.parent / info[kind]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: make_atlas_store.py writes it next to the store.")
    content = path.read_bytes()
    if hashlib.sha256(content).hexdigest() != info[f"{kind}_sha256"]:
        raise ValueError(f"{path} belongs to another store than {store_path} (hash differs): "
                         "keep one store per folder.")
    return pd.read_csv(path, sep="\t")


def load_truth(store_path: str | Path) -> pd.DataFrame:
    """The planted links of a simulated store: ``peak, gene, distance``.

    Examples
    --------
    >>> truth = load_truth("atlas/atlas.zarr")  # doctest: +SKIP
    >>> list(truth.columns)  # doctest: +SKIP
    ['peak', 'gene', 'distance']
    """
    return _sidecar(store_path, "truth")


def load_genes(store_path: str | Path) -> pd.DataFrame:
    """The gene annotation of a simulated store: ``gene_name, chrom, start, end, strand``.

    Examples
    --------
    >>> genes = load_genes("atlas/atlas.zarr")  # doctest: +SKIP
    """
    return _sidecar(store_path, "genes")


def recall(links: pd.DataFrame, truth: pd.DataFrame, *, fdr_cutoff: float = 1e-4, cor_cutoff: float = 0.45) -> float:
    """Share of planted links found: tested, ``fdr < fdr_cutoff`` and ``correlation > cor_cutoff``.

    A planted pair that was not tested (e.g. beyond ``max_distance``) counts as missed.

    Examples
    --------
    >>> links = pd.DataFrame({"peak": ["p1", "p2"], "gene": ["g", "g"], "fdr": [1e-6, 0.5],
    ...                       "correlation": [0.8, 0.9]})
    >>> recall(links, pd.DataFrame({"peak": ["p1", "p2"], "gene": ["g", "g"]}))
    0.5
    """
    if truth.empty:
        return math.nan
    found = links.loc[(links["fdr"] < fdr_cutoff) & (links["correlation"] > cor_cutoff), ["peak", "gene"]]
    hits = truth[["peak", "gene"]].merge(found.drop_duplicates(), on=["peak", "gene"], how="inner")
    return len(hits) / len(truth)


def stage_times(records: list[dict], stages: dict[str, tuple[str, ...]] = STAGES) -> dict[str, dict[str, float]]:
    """Per stage: ``wall`` (first start to last stop), ``busy`` (summed compute) seconds, ``tasks``.

    Parameters
    ----------
    records
        Task-stream records (``distributed.get_task_stream(...).data``): dicts with ``key`` and
        ``startstops`` (``action``, ``start``, ``stop``); only ``compute`` intervals count.
    stages
        Stage name -> key prefixes.

    Examples
    --------
    >>> rec = [{"key": "p2g-links-x", "startstops": [{"action": "compute", "start": 1.0, "stop": 3.0}]}]
    >>> stage_times(rec, {"fdr": ("p2g-links-",)})
    {'fdr': {'wall': 2.0, 'busy': 2.0, 'tasks': 1}}
    """
    out = {}
    for stage, prefixes in stages.items():
        spans = [
            (ss["start"], ss["stop"])
            for rec in records if str(rec["key"]).startswith(prefixes)
            for ss in rec.get("startstops", ()) if ss.get("action") == "compute"
        ]
        n_tasks = sum(1 for rec in records if str(rec["key"]).startswith(prefixes))
        wall = max(s for _, s in spans) - min(s for s, _ in spans) if spans else 0.0
        out[stage] = {"wall": wall, "busy": sum(e - s for s, e in spans), "tasks": n_tasks}
    return out


def _disk_write_bytes(dask_worker) -> int:
    metrics = getattr(dask_worker.data, "cumulative_metrics", None)
    return int(metrics.get(("disk-write", "bytes"), 0)) if metrics is not None else 0


def spilled_bytes(client) -> int:
    """Bytes the workers have written to disk so far (cumulative over their spill buffers).

    Examples
    --------
    >>> spilled_bytes(client)  # doctest: +SKIP
    0
    """
    return int(sum(client.run(_disk_write_bytes).values()))


def run_peak_to_gene(
    store_path: str | Path, *, client, n_metacells: int = 500, k_neighbors: int = 100, seed: int = 1,
    use_rep: str = "X_latent",
) -> dict[str, Any]:
    """One timed ``peak_to_gene`` on a store; returns the row of the table.

    Examples
    --------
    >>> row = run_peak_to_gene("atlas/atlas.zarr", client=client)  # doctest: +SKIP
    >>> sorted(row)[:3]  # doctest: +SKIP
    ['aggregation_s', 'cells', 'correlation_s']
    """
    import distributed

    import p2g_dask as p2g

    store = p2g.io.open_store(store_path)
    truth, genes = load_truth(store_path), load_genes(store_path)
    spilled_before = spilled_bytes(client)
    with PeakRSS(interval=0.05) as rss, distributed.get_task_stream(client) as stream:
        started = time.perf_counter()
        links = p2g.tl.peak_to_gene(store, gene_annotation=genes, use_rep=use_rep, n_metacells=n_metacells,
                                    k_neighbors=k_neighbors, seed=seed, client=client)
        wall = time.perf_counter() - started
    stages = stage_times(stream.data)
    nnz = store.atac.nnz + store.rna.nnz
    aggregation = stages["aggregation"]["wall"]
    return {
        "run": "peak_to_gene", "store": str(store_path), "cells": store.atac.n_obs, "nnz": nnz,
        "n_metacells": n_metacells, "kept_metacells": int(links.attrs["metacells"].shape[0]),
        "total_s": wall, "metacells_s": float(links.attrs["timings"].get("metacells", math.nan)),
        "aggregation_s": aggregation, "aggregation_busy_s": stages["aggregation"]["busy"],
        "correlation_s": stages["correlation"]["wall"],
        # BH, variance quantiles and names are the client's (links.attrs["timings"]["tables"]).
        "fdr_s": float(links.attrs["timings"].get("tables", stages["fdr"]["wall"])),
        "nnz_per_s": nnz / aggregation if aggregation > 0 else math.nan,
        "peak_rss_bytes": rss.peak, "spilled_bytes": spilled_bytes(client) - spilled_before,
        "recall": recall(links, truth), "pairs": len(links),
        "links": int(((links["fdr"] < 1e-4) & (links["correlation"] > 0.45)).sum()),
    }


def run_lsi(store_path: str | Path, *, client, sample_cells: int = 10_000, seed: int = 1) -> dict[str, Any]:
    """``iterative_lsi`` on a store, timed; its projection of every cell is the pass that scales.

    Both iterations fit on ``sample_cells`` cells (``sample_cells_pre`` and
    ``sample_cells_final``), so the fits cost the same at any size and every cell is then
    projected onto the last model chunk by chunk (``p2g-lsi-project`` tasks). ArchR's default
    (the last fit on all cells) is a different, much larger computation at 1M cells. The
    embedding is written to the store's ``obsm['X_bench_lsi']``.

    Examples
    --------
    >>> row = run_lsi("atlas/atlas.zarr", client=client)  # doctest: +SKIP
    """
    import distributed

    import p2g_dask as p2g

    store = p2g.io.open_store(store_path)
    spilled_before = spilled_bytes(client)
    with PeakRSS(interval=0.05) as rss, distributed.get_task_stream(client) as stream:
        started = time.perf_counter()
        p2g.tl.iterative_lsi(store, sample_cells_pre=sample_cells, sample_cells_final=sample_cells, seed=seed,
                             key_added="X_bench_lsi", overwrite=True, client=client)
        wall = time.perf_counter() - started
    stages = stage_times(stream.data)
    # A store no larger than the sample is never projected (the fit gives every cell's coordinates).
    projection = stages["lsi_projection"]["wall"] if stages["lsi_projection"]["tasks"] else math.nan
    return {
        "run": "iterative_lsi", "store": str(store_path), "cells": store.atac.n_obs, "nnz": store.atac.nnz,
        "n_metacells": None, "total_s": wall, "other_passes_s": stages["lsi_passes"]["wall"],
        "projection_s": projection, "projection_tasks": stages["lsi_projection"]["tasks"],
        "nnz_per_s": store.atac.nnz / projection if projection > 0 else math.nan,
        "peak_rss_bytes": rss.peak, "spilled_bytes": spilled_bytes(client) - spilled_before,
    }


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (seconds, M nonzeros/s, GiB, recall).

    Examples
    --------
    >>> print(format_table([]).splitlines()[0].split()[:3])
    ['run', 'cells', 'metacells']
    """
    header = (f"{'run':<13}{'cells':>9}{'metacells':>11}{'total s':>9}{'kNN s':>7}{'aggr s':>8}{'corr s':>8}"
              f"{'FDR s':>7}{'proj s':>8}{'M nnz/s':>9}{'RSS GiB':>9}{'spill GiB':>10}{'recall':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['run']:<13}{r['cells']:>9}{str(r.get('n_metacells') or '-'):>11}  FAILED: {r['error']}")
            continue
        kept = f"{r['kept_metacells']}/{r['n_metacells']}" if r.get("n_metacells") else "-"
        lines.append(
            f"{r['run']:<13}{r['cells']:>9}{kept:>11}{_fmt(r['total_s'], '.1f'):>9}"
            f"{_fmt(r.get('metacells_s'), '.1f'):>7}{_fmt(r.get('aggregation_s'), '.1f'):>8}"
            f"{_fmt(r.get('correlation_s'), '.1f'):>8}{_fmt(r.get('fdr_s'), '.1f'):>7}"
            f"{_fmt(r.get('projection_s'), '.1f'):>8}{_fmt(r['nnz_per_s'] / 1e6, '.1f'):>9}"
            f"{_fmt(r['peak_rss_bytes'] / GiB, '.2f'):>9}{_fmt(r['spilled_bytes'] / GiB, '.2f'):>10}"
            f"{_fmt(r.get('recall'), '.3f'):>8}"
        )
    return "\n".join(lines)


def scale_checks(rows: list[dict[str, Any]], *, max_rss_gib: float = 8.0, min_nnz_per_s: float = 50e6) -> list[str]:
    """The issue's criteria, one line each: absolute limits per run, ratios between sizes.

    Examples
    --------
    >>> scale_checks([])
    []
    """
    lines = []
    ok_rows = [r for r in rows if "error" not in r and r["run"] == "peak_to_gene"]
    for r in ok_rows:
        rss = r["peak_rss_bytes"] / GiB
        lines.append(f"{r['cells']:>9} cells, {r['n_metacells']} metacells: peak RSS {rss:.2f} GiB "
                     f"{'<=' if rss <= max_rss_gib else '>'} {max_rss_gib} "
                     f"[{'PASS' if rss <= max_rss_gib else 'FAIL'}]; aggregation {r['nnz_per_s'] / 1e6:.1f} M nnz/s "
                     f"[{'PASS' if r['nnz_per_s'] >= min_nnz_per_s else 'FAIL'} >= {min_nnz_per_s / 1e6:.0f}]")
    by_metacells: dict[int, list] = {}
    for r in ok_rows:
        by_metacells.setdefault(r["n_metacells"], []).append(r)
    for n_metacells, group in by_metacells.items():
        group = sorted(group, key=lambda r: r["cells"])
        for small, large in zip(group, group[1:]):
            factor = large["cells"] / small["cells"]
            time_ratio = large["total_s"] / small["total_s"]
            rss_ratio = large["peak_rss_bytes"] / small["peak_rss_bytes"]
            lines.append(
                f"{small['cells']} -> {large['cells']} cells (x{factor:.0f}), {n_metacells} metacells: "
                f"time x{time_ratio:.1f} [{'PASS' if time_ratio <= 1.2 * factor else 'FAIL'} <= {1.2 * factor:.0f}], "
                f"RSS x{rss_ratio:.2f} [{'PASS' if rss_ratio <= 1.5 else 'FAIL'} <= 1.5], "
                f"recall {small['recall']:.3f} -> {large['recall']:.3f} "
                f"[{'PASS' if large['recall'] >= small['recall'] else 'FAIL'}]"
            )
    return lines


def warm_up(client) -> None:
    """One tiny ``peak_to_gene`` on the cluster, so that workers load the numba kernels before timing.

    Examples
    --------
    >>> warm_up(client)  # doctest: +SKIP
    """
    import p2g_dask as p2g

    sim = p2g.datasets.simulate_multiome(n_cells=200, n_peaks=1_000, n_genes=100, n_linked_genes=10, seed=0)
    p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent", n_metacells=20,
                        k_neighbors=10, client=client)


def _with_cluster(func, store: str, memory_limit: str, **kwargs) -> dict[str, Any]:
    """``func(store, client=..., **kwargs)`` on a fresh cluster, so each run's peak RSS is its own."""
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="p2g-bench-spill-") as spill_dir, LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit=memory_limit,
        dashboard_address=":0", local_directory=spill_dir,
    ) as cluster, Client(cluster) as client:
        try:
            warm_up(client)
            return func(store, client=client, **kwargs)
        except Exception as error:  # one failed size must not hide the others' numbers
            import zarr

            return {"run": func.__name__.removeprefix("run_"), "store": store,
                    "cells": int(zarr.open_group(store, mode="r").attrs["n_obs"]),
                    "error": f"{type(error).__name__}: {error}", "n_metacells": kwargs.get("n_metacells")}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+", help="stores written by make_atlas_store.py (smallest first)")
    parser.add_argument("--memory-limit", default="3GiB", help="per worker (2 workers x 1 thread)")
    parser.add_argument("--n-metacells", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--k-neighbors", type=int, default=100)
    parser.add_argument("--lsi", action="store_true", help="also run iterative_lsi (its projection pass)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    if args.json:
        from p2g_dask._atomic import check_overwrite

        check_overwrite(args.json, args.overwrite, argument="--json")
    rows = []
    for store in args.stores:
        for n_metacells in args.n_metacells:
            rows.append(_with_cluster(run_peak_to_gene, store, args.memory_limit, n_metacells=n_metacells,
                                      k_neighbors=args.k_neighbors))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        if args.lsi:
            rows.append(_with_cluster(run_lsi, store, args.memory_limit))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(f"2 workers x 1 thread, memory_limit={args.memory_limit} per worker; stage times from the task stream")
    print(format_table(rows))
    print()
    print("\n".join(scale_checks(rows)))
    if args.json:
        from p2g_dask._atomic import atomic_path

        with atomic_path(args.json, overwrite=args.overwrite, argument="--json") as tmp:
            tmp.write_text(json.dumps(rows, indent=1, default=float))
    return rows


if __name__ == "__main__":
    main()
