"""Benchmark: ArchR gene scores (``p2g.tl.gene_scores``) from a large simulated fragment file.

Generates (numpy, seeded; ``bench_bigwig.make_fragments``) a sorted bgzip 10x fragment file of
``--n-fragments`` fragments for ``--cells`` cells on hg38 chr1-22,X, takes hg38 genes
(protein-coding, from ``--genes``, default the shared GENCODE v44 table), and measures, each
step in its own fresh process (so peak RSS is that step's alone):

1. parse: building the parquet fragment cache alone;
2. gene scores from the cache, written into a store (the out-of-core path): wall, fragments/s;
3. the same for ``--cells-large`` cells (same number of fragments): peak RSS must not grow;
4. baseline: ``pandas.read_csv`` of the whole file + a scipy tiles x cells matrix (capped) + one
   sparse product with the same tile weights + the same scaling, all in memory;
5. ``--fresh-fragments`` (default 5 M) fragments x ``--cells`` cells from a fresh process with an
   empty cache (Python start-up, imports, parsing and all), the result returned as AnnData:
   the SnapATAC2 comparison (``import_fragments`` + ``make_gene_matrix`` measured at 16 s).

Peak RSS is psutil's, summed over the step's process tree, minus this script's own RSS.

Run::

    python benchmarks/bench_gene_scores.py                     # 30 M fragments, 10k and 40k cells
    python benchmarks/bench_gene_scores.py --n-fragments 3e6 --no-baseline --cells-large 0   # quick look
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
    from p2g_dask.io._fragment_cache import build_fragment_cache

    shutil.rmtree(work / "cache" / "bench", ignore_errors=True)
    cache = build_fragment_cache(work / "fragments.tsv.gz", work / "cache" / "bench")
    return {"n_fragments": cache.n_fragments}


def step_scores(work: Path, genes_path: str, store: bool, chunk_cells: int) -> dict:
    import dask

    import p2g_dask as p2g

    genes = _genes(genes_path)
    t0 = time.perf_counter()
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

    from p2g_dask.tl._gene_score_model import GeneScoreParams, gene_regions, tile_weights

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
    return {"nnz": int(scores.nnz)}


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
    ap.add_argument("--n-fragments", type=float, default=30e6)
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--cells-large", type=int, default=40_000, help="second cell count (0: skip)")
    ap.add_argument("--fresh-fragments", type=float, default=5e6, help="fresh-process run size (0: skip)")
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
    n = int(args.n_fragments)
    common = ["--genes", args.genes, "--chunk-cells", str(args.chunk_cells)]
    try:
        for n_cells in [args.cells] + ([args.cells_large] if args.cells_large else []):
            work = root / f"c{n_cells}"
            work.mkdir(parents=True, exist_ok=True)
            res, wall, _, _ = _run("generate", work, "--n-fragments", str(n), "--cells", str(n_cells))
            rows.append((f"generate {n / 1e6:.0f} M fragments, {n_cells:,} cells", wall, None, None,
                         f"{res['file_mb']:.0f} MB bgzip"))
            res, wall, peak, cpu = _run("parse", work)
            rows.append(("parse -> parquet cache", wall, peak, cpu, f"{n / wall / 1e6:.2f} M fragments/s (incl. start-up)"))
            res, wall, peak, cpu = _run("scores", work, *common, "--store", "1")
            rows.append((f"gene_scores from cache -> store, {n_cells:,} cells", wall, peak, cpu,
                         f"compute {res['compute_s']:.1f} s = {n / res['compute_s'] / 1e6:.2f} M fragments/s; "
                         f"{res['genes']} genes, {res['nnz']:,} non-zeros"))
            if not args.no_baseline and n_cells == args.cells:
                res, wall, peak, cpu = _run("baseline", work, *common)
                rows.append(("baseline: pandas + scipy tiles x cells + product", wall, peak, cpu,
                             f"{res['nnz']:,} non-zeros"))
            if not args.keep:
                shutil.rmtree(work / "fragments.tsv.gz", ignore_errors=True)
                shutil.rmtree(work, ignore_errors=True)
        if args.fresh_fragments:
            work = root / "fresh"
            work.mkdir(parents=True, exist_ok=True)
            n_fresh = int(args.fresh_fragments)
            _run("generate", work, "--n-fragments", str(n_fresh), "--cells", str(args.cells))
            res, wall, peak, cpu = _run("scores", work, *common, "--store", "0")
            rows.append((f"fresh process, {n_fresh / 1e6:.0f} M fragments x {args.cells:,} cells", wall, peak, cpu,
                         f"parse + scores -> AnnData, empty cache: {n_fresh / wall / 1e6:.2f} M fragments/s end to end "
                         f"(SnapATAC2 2.10: 16 s)"))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nbench_gene_scores: hg38 chr1-22,X, protein-coding genes, chunk_cells={args.chunk_cells}, "
          f"{psutil.cpu_count()} cores, threads scheduler (2 workers)")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in psutil.getloadavg())}")
    print(f"{'step':52s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS':>10s}  notes")
    for step, sec, peak, cpu, note in rows:
        mem = f"{peak / 2**30:.2f} GiB" if peak else "-"
        cpu_text = f"{cpu:8.1f}" if cpu is not None else f"{'-':>8s}"
        print(f"{step:52s} {sec:8.1f} {cpu_text} {mem:>10s}  {note}")


if __name__ == "__main__":
    main()
