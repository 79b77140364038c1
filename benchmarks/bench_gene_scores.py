"""Benchmark: ArchR gene scores (``p2g.tl.gene_scores``) from a large simulated fragment file.

Generates (numpy, seeded; ``bench_bigwig.make_fragments``) a sorted bgzip 10x fragment file of
``--n-fragments`` (default 5 M) fragments for ``--cells`` (10,000) cells on hg38 chr1-22,X, takes
hg38 genes (protein-coding, from ``--genes``, default the shared GENCODE v44 table), and measures,
each step in its own fresh process (so peak RSS is that step's alone):

1. fresh file: gene scores from the .tsv.gz with an empty cache, returned as AnnData (reading
   the gene annotation, parsing, scores): the SnapATAC2 comparison (``import_fragments`` +
   ``make_gene_matrix``, a simpler model, measured at 16 s wall for 5 M x 10k on this machine);
2. parse: building the parquet fragment cache alone;
3. from the cache: gene scores with the cache built, written into a store (the out-of-core path);
4. baseline: ``pandas.read_csv`` of the whole file + a scipy tiles x cells matrix (capped) + one
   sparse product with the same tile weights + the same scaling, all in memory;
5. with ``--large``: ``--large-fragments`` (30 M) fragments for 10k and ``--cells-large`` (40k)
   cells, parse + scores from the cache: peak RSS must not grow with the cells (~4 min here).

"timed" is measured inside the step after its imports (as the SnapATAC2 figure); "process" is
the whole child process, Python start-up and imports included. Peak RSS is psutil's, summed
over the step's process tree, minus this script's own RSS.

Run::

    python benchmarks/bench_gene_scores.py            # 5 M x 10k: fresh, cache, baseline (~1.5 min)
    python benchmarks/bench_gene_scores.py --large    # + 30 M fragments x 10k and 40k cells
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from _peak_rss import PeakRSS

HERE = Path(__file__).resolve().parent
DEFAULT_GENES = HERE.parents[1] / "shared" / "data" / "hg38" / "hg38_genes.tsv.gz"


def _genes(path: str):
    from p2g_dask.io import read_gene_annotation

    return read_gene_annotation(path, gene_types="protein_coding")[0]


def step_generate(work: Path, n_fragments: int, n_cells: int) -> dict:
    """The fragment file, the cells, and a minimal store of those cells (for the store output)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from bench_bigwig import HUMAN, make_fragments
    from p2g_dask.io import ingest

    frag = work / "fragments.tsv.gz"
    obs, _ = make_fragments(frag, n_fragments=n_fragments, n_cells=n_cells, n_groups=1, genome=HUMAN)
    obs = pd.DataFrame(index=obs.index)
    ad.AnnData(obs=obs).write_h5ad(work / "cells.h5ad")
    ones = sp.csr_matrix(np.ones((len(obs), 1), np.float32))
    ingest(ad.AnnData(ones, obs=obs, var=pd.DataFrame(index=["chr1:1-100"])),
           ad.AnnData(ones, obs=obs, var=pd.DataFrame(index=["GENE"])), work / "store.zarr", overwrite=True)
    return {"file_mb": frag.stat().st_size / 1e6}


def step_parse(work: Path) -> dict:
    from p2g_dask.io.fragment_cache import build_fragment_cache

    shutil.rmtree(work / "cache" / "bench", ignore_errors=True)
    cache = build_fragment_cache(work / "fragments.tsv.gz", work / "cache" / "bench")
    return {"n_fragments": cache.n_fragments}


def step_scores(work: Path, genes_path: str, store: bool, chunk_cells: int) -> dict:
    """gene_scores; the timer starts after the imports and covers reading the genes too."""
    import dask

    import p2g_dask as p2g
    import p2g_dask.tl  # noqa: F401 - imports before the timer, as the SnapATAC2 figure has them

    t0 = time.perf_counter()
    genes = _genes(genes_path)
    with dask.config.set(scheduler="threads", num_workers=2):
        if store:
            out = p2g.tl.gene_scores({"bench": work / "fragments.tsv.gz"}, genes=genes, store=work / "store.zarr",
                                     cache_fragments=work / "cache", chunk_cells=chunk_cells, overwrite=True,
                                     show_progress=False)
            nnz = out.nnz
        else:
            out = p2g.tl.gene_scores({"bench": work / "fragments.tsv.gz"}, genes=genes, cells=work / "cells.h5ad",
                                     chunk_cells=chunk_cells, show_progress=False)
            nnz = out.X.nnz
    return {"compute_s": time.perf_counter() - t0, "nnz": int(nnz), "genes": int(out.shape[1])}


def step_baseline(work: Path, genes_path: str) -> dict:
    """In memory: pandas read + scipy tiles x cells (capped) + one sparse product + scaling."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from p2g_dask.tl.scores._model import GeneScoreParams, gene_regions, tile_weights

    t0 = time.perf_counter()
    p = GeneScoreParams()
    cells = ad.read_h5ad(work / "cells.h5ad").obs_names
    df = pd.read_csv(work / "fragments.tsv.gz", sep="\t", comment="#", header=None,
                     names=["chrom", "start", "end", "barcode", "count"], dtype={"chrom": "category"})
    regions = gene_regions(_genes(genes_path), p)
    chroms = [c for c in pd.unique(regions["chrom"]) if c in set(df["chrom"].cat.categories)]
    weights = [tile_weights(regions[regions["chrom"] == c].reset_index(drop=True), p) for c in chroms]
    offset = dict(zip(chroms, np.cumsum([0] + [w.shape[0] for w in weights])[:-1]))
    n_tiles = sum(w.shape[0] for w in weights)
    w_all = sp.block_diag(weights, format="csr")
    cell = pd.Categorical(df["barcode"], categories=cells).codes.astype(np.int64)
    chrom_code = pd.Categorical(df["chrom"], categories=chroms).codes
    rows, cols = [], []
    for i, (chrom, w) in enumerate(zip(chroms, weights)):
        mine = (chrom_code == i) & (cell >= 0)
        for pos in (df["start"].to_numpy()[mine] + 1, df["end"].to_numpy()[mine]):
            tile = pos // p.tile_size
            inside = tile < w.shape[0]
            rows.append(offset[chrom] + tile[inside])
            cols.append(cell[mine][inside])
    counts = sp.csr_matrix((np.ones(sum(r.size for r in rows), np.float32), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n_tiles, len(cells)))
    counts.data = np.minimum(counts.data, p.ceiling)
    scores = (w_all.T @ counts).T.tocsr()  # cells x genes
    totals = np.asarray(scores.sum(axis=1)).ravel()
    scores.data = np.round(p.scale_to * scores.data / np.repeat(totals, np.diff(scores.indptr)), 3)
    scores.eliminate_zeros()
    return {"compute_s": time.perf_counter() - t0, "nnz": int(scores.nnz)}


def _run(step: str, work: Path, *extra: str) -> tuple[dict, float, int, float]:
    """Run one step in a fresh process: (its JSON result, wall s, peak RSS over the parent's, CPU s)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", step, "--work", str(work), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    with PeakRSS(interval=0.05) as rss:
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result, wall, rss.peak - rss.start, rss.cpu


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-fragments", type=float, default=5e6, help="fragments of the main rows")
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--large", action="store_true",
                    help="also the peak-RSS rows: --large-fragments fragments for --cells and --cells-large cells")
    ap.add_argument("--large-fragments", type=float, default=30e6)
    ap.add_argument("--cells-large", type=int, default=40_000)
    ap.add_argument("--chunk-cells", type=int, default=10_000)
    ap.add_argument("--genes", default=str(DEFAULT_GENES))
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--store", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.step is not None:  # a child process: one step, result as JSON on the last line
        work = Path(args.work)
        result = {
            "generate": lambda: step_generate(work, int(args.n_fragments), args.cells),
            "parse": lambda: step_parse(work),
            "scores": lambda: step_scores(work, args.genes, bool(args.store), args.chunk_cells),
            "baseline": lambda: step_baseline(work, args.genes),
        }[args.step]()
        print(json.dumps(result))
        return

    root = Path(args.workdir or tempfile.mkdtemp(prefix="p2g-bench-genescores-", dir="/tmp"))

    class Rows(list):
        def append(self, row):  # each row as soon as it is measured (a long run shows progress)
            super().append(row)
            print(row, f"load {psutil.getloadavg()[0]:.1f}", flush=True)

    rows = Rows()
    common = ["--genes", args.genes, "--chunk-cells", str(args.chunk_cells)]
    try:
        n = int(args.n_fragments)
        work = root / "main"
        work.mkdir(parents=True, exist_ok=True)
        res, wall, _, _ = _run("generate", work, "--n-fragments", str(n), "--cells", str(args.cells))
        rows.append((f"generate {n / 1e6:g} M fragments, {args.cells:,} cells", wall, None, None,
                     f"{res['file_mb']:.0f} MB bgzip", None))
        size = f"{n / 1e6:g} M x {args.cells // 1000}k"
        res, wall, peak, cpu = _run("scores", work, *common, "--store", "0")
        fresh = res["compute_s"]
        rows.append((f"fresh file {size} -> AnnData (parse incl.)", wall, peak, cpu,
                     f"{n / fresh / 1e6:.2f} M fragments/s; {res['genes']} genes, {res['nnz']:,} non-zeros "
                     f"(SnapATAC2 2.10: 16 s)", fresh))
        res, wall, peak, cpu = _run("parse", work)
        rows.append((f"parse {size} -> parquet cache alone", wall, peak, cpu, "", None))
        res, wall, peak, cpu = _run("scores", work, *common, "--store", "1")
        rows.append((f"from the cache {size} -> store", wall, peak, cpu,
                     f"{n / res['compute_s'] / 1e6:.2f} M fragments/s; {res['nnz']:,} non-zeros", res["compute_s"]))
        if not args.no_baseline:
            res, wall, peak, cpu = _run("baseline", work, *common)
            rows.append((f"baseline {size}: pandas + scipy + product", wall, peak, cpu,
                         f"{res['nnz']:,} non-zeros; the fresh run is {res['compute_s'] / fresh:.1f}x faster "
                         f"(timed), {wall / rows[1][1]:.1f}x (process)", res["compute_s"]))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        for n_cells in ([args.cells, args.cells_large] if args.large else []):
            n = int(args.large_fragments)
            work = root / f"c{n_cells}"
            work.mkdir(parents=True, exist_ok=True)
            size = f"{n / 1e6:g} M x {n_cells // 1000}k"
            res, wall, _, _ = _run("generate", work, "--n-fragments", str(n), "--cells", str(n_cells))
            rows.append((f"generate {n / 1e6:g} M fragments, {n_cells:,} cells", wall, None, None,
                         f"{res['file_mb']:.0f} MB bgzip", None))
            res, wall, peak, cpu = _run("parse", work)
            rows.append((f"parse {size} -> parquet cache", wall, peak, cpu,
                         f"{n / wall / 1e6:.2f} M fragments/s (process)", None))
            res, wall, peak, cpu = _run("scores", work, *common, "--store", "1")
            rows.append((f"from the cache {size} -> store", wall, peak, cpu,
                         f"{n / res['compute_s'] / 1e6:.2f} M fragments/s; {res['nnz']:,} non-zeros",
                         res["compute_s"]))
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nbench_gene_scores: hg38 chr1-22,X, protein-coding genes, chunk_cells={args.chunk_cells}, "
          f"{psutil.cpu_count()} cores, threads scheduler (2 workers); each row a fresh process")
    print("timed s: after the imports (gene annotation, parsing and all); process s: the whole process")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in psutil.getloadavg())}")
    print(f"{'step':44s} {'timed s':>8s} {'process s':>9s} {'CPU s':>7s} {'peak RSS':>10s}  notes")
    for step, sec, peak, cpu, note, timed_s in rows:
        mem = f"{peak / 2**30:.2f} GiB" if peak else "-"
        cpu_text = f"{cpu:7.1f}" if cpu is not None else f"{'-':>7s}"
        timed_text = f"{timed_s:8.1f}" if timed_s is not None else f"{'-':>8s}"
        print(f"{step:44s} {timed_text} {sec:9.1f} {cpu_text} {mem:>10s}  {note}")


if __name__ == "__main__":
    main()
