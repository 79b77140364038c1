"""Benchmark: per-group coverage BigWigs from a large simulated fragment file.

Generates (numpy, seeded) a sorted, bgzip-compressed 10x fragment file of ``--n-fragments``
fragments for ``--cells`` cells in ``--groups`` groups on a human-sized genome (half of the
fragments in 100,000 peaks, half in the background, nucleosome-free and mono-nucleosome
lengths), then measures:

1. parse: building the parquet cache alone (stream, parse, split by chromosome, write);
2. first run: ``pseudobulk_with_fragments`` with an empty cache folder (parse + coverage + write);
3. cached re-run: the same call again, the cache reused;
4. the cached re-run with ``bigwig_writer='pybigtools'`` (unless ``--no-pybigtools``);
5. cached re-run from a new process: the ``p2g bigwig`` command (imports, cluster start and
   all), as a user re-running it would see;
6. baseline (unless ``--no-baseline``): ``pandas.read_csv`` of the whole file plus a dense
   ``np.add.at`` pileup per group and chromosome (no BigWig writing: it does less work).

Peak RSS is sampled with psutil over the process tree (the benchmark and its Dask workers).

Run::

    python benchmarks/bench_bigwig.py                      # 30 M fragments, 2 workers
    python benchmarks/bench_bigwig.py --n-fragments 3e6 --no-baseline   # quick look
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
from _peak_rss import PeakRSS

from p2g_dask import genome as p2g_genome

# hg38 chr1-22, X (lengths in bp, from the package's shipped table): the benchmark genome.
HUMAN = {c: n for c, n in p2g_genome.hg38.chrom_sizes.items() if c not in ("chrY", "chrM")}
# The simulator's genome (simulate_multiome's default: 5 chromosomes, 60 Mb down to 20 Mb).
SIMULATED = {f"chr{i + 1}": int(n) for i, n in enumerate(np.linspace(60_000_000, 20_000_000, 5))}


def make_fragments(path: Path, *, n_fragments: int, n_cells: int, n_groups: int, genome: dict[str, int],
                   seed: int = 0):
    """Write the simulated fragment file; return (obs DataFrame, chrom sizes)."""
    from p2g_dask.io.fragments import BgzfWriter, write_fragment_table

    rng = np.random.default_rng(seed)
    chroms = list(genome)
    sizes = np.array([genome[c] for c in chroms], dtype=np.int64)
    barcodes = np.array(["".join(b) + "-1" for b in rng.choice(list("ACGT"), (n_cells, 16))], dtype=object)
    group_of_cell = rng.choice(n_groups, n_cells, p=np.linspace(2, 1, n_groups) / np.linspace(2, 1, n_groups).sum())
    obs = pd.DataFrame({"group": pd.Categorical([f"G{g}" for g in group_of_cell])}, index=barcodes)
    n_peaks = int(100_000 * sizes.sum() / sum(HUMAN.values()))  # same peak density as hg38
    peak_chrom = rng.choice(len(chroms), n_peaks, p=sizes / sizes.sum())
    peak_centre = (rng.random(n_peaks) * (sizes[peak_chrom] - 2000) + 1000).astype(np.int64)
    peak_weight = rng.lognormal(0, 1, n_peaks)
    in_peak = rng.random(n_fragments) < 0.5
    n_in = int(in_peak.sum())
    frag_chrom = np.empty(n_fragments, np.int16)
    centre = np.empty(n_fragments, np.int64)
    p = rng.choice(n_peaks, n_in, p=peak_weight / peak_weight.sum())
    frag_chrom[in_peak] = peak_chrom[p]
    centre[in_peak] = peak_centre[p] + rng.integers(-250, 250, n_in)
    bg_chrom = rng.choice(len(chroms), n_fragments - n_in, p=sizes / sizes.sum())
    frag_chrom[~in_peak] = bg_chrom
    centre[~in_peak] = (rng.random(bg_chrom.size) * (sizes[bg_chrom] - 2000) + 1000).astype(np.int64)
    nucleosomal = rng.random(n_fragments) < 0.4
    length = np.where(nucleosomal, rng.integers(180, 260, n_fragments), rng.integers(30, 150, n_fragments))
    start = centre - length // 2
    cell = rng.integers(0, n_cells, n_fragments).astype(np.int32)
    del centre, in_peak, nucleosomal
    with BgzfWriter(path, level=1, threads=2) as fh:
        fh.write(b"# id=bench_bigwig\n# reference_path=simulated\n")
        for code in range(len(chroms)):
            sel = np.flatnonzero(frag_chrom == code)
            order = sel[np.argsort(start[sel], kind="stable")]
            n = order.size
            table = pa.table({
                "chrom": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([chroms[code]])),
                "start": start[order], "end": start[order] + length[order],
                "barcode": pa.DictionaryArray.from_arrays(pa.array(cell[order]), pa.array(barcodes)),
                "count": np.ones(n, np.int32),
            })
            write_fragment_table(table, fh)
    return obs, dict(genome)


def baseline(path: Path, obs: pd.DataFrame, chrom_sizes: dict[str, int]) -> int:
    """Naive: read the whole file with pandas, then a dense np.add.at pileup per group and chromosome."""
    df = pd.read_csv(path, sep="\t", comment="#", header=None, names=["chrom", "start", "end", "barcode", "count"])
    df["group"] = obs["group"].reindex(df["barcode"]).to_numpy()
    nonzero = 0
    for (group, chrom), part in df.groupby(["group", "chrom"], observed=True):
        dense = np.zeros(chrom_sizes[chrom], np.int32)
        np.add.at(dense, part["start"].to_numpy(), 1)
        np.add.at(dense, part["end"].to_numpy() - 1, 1)
        nonzero += int(np.count_nonzero(dense))
    return nonzero


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-fragments", type=float, default=30e6)
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=7)
    ap.add_argument("--executor", default="dask", choices=["dask", "thread", "process", "synchronous"])
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--bin-size", type=int, default=1)
    ap.add_argument("--strategy", default="cutsite", choices=["cutsite", "fragment"])
    ap.add_argument("--genome", default="human", choices=["human", "simulated"],
                    help="hg38 chr1-22,X (3.1 Gb) or the simulator's 5 chromosomes (200 Mb)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-pybigtools", action="store_true", help="skip the cached re-run with pybigtools' writer")
    ap.add_argument("--workdir", default=None, help="folder for the temporary files (default: a new one in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary files")
    args = ap.parse_args(argv)

    from p2g_dask._logging import enable_console_logging
    from p2g_dask.io.fragment_cache import build_fragment_cache
    from p2g_dask.tl.pseudobulk.pseudobulk import pseudobulk_with_fragments

    enable_console_logging(logging.INFO)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="p2g-bench-bigwig-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        t0 = time.perf_counter()
        frag = work / "fragments.tsv.gz"
        obs, chrom_sizes = make_fragments(frag, n_fragments=int(args.n_fragments), n_cells=args.cells,
                                          n_groups=args.groups,
                                          genome=HUMAN if args.genome == "human" else SIMULATED)
        rows.append(("generate fragment file", time.perf_counter() - t0, None, None,
                     f"{int(args.n_fragments):,} fragments, {frag.stat().st_size / 1e6:.0f} MB bgzip"))

        with PeakRSS() as rss:
            t0 = time.perf_counter()
            cache = build_fragment_cache(frag, work / "parse_only_cache")
        rows.append(("parse -> parquet cache", time.perf_counter() - t0, rss.peak, rss.cpu,
                     f"{cache.n_fragments:,} fragments, {cache.n_fragments / (time.perf_counter() - t0) / 1e6:.1f} M/s"))
        shutil.rmtree(work / "parse_only_cache")

        kw = dict(chromsizes=chrom_sizes, cluster_key="group", path_to_fragments={"bench": frag},
                  bigwig_strategy=args.strategy, normalize_bigwig=True, cache_fragments=work / "cache",
                  executor=args.executor, n_jobs=args.n_jobs, show_progress=False, bin_size=args.bin_size)
        for label in ("first run (empty cache)", "cached re-run"):
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                out = pseudobulk_with_fragments(obs, bigwig_path=work / "bw", overwrite=True, **kw)
            size = sum(Path(p).stat().st_size for p in out.values()) / 1e6
            rows.append((label, time.perf_counter() - t0, rss.peak, rss.cpu,
                         f"{len(out)} BigWigs, {size:.0f} MB ({args.executor}, n_jobs={args.n_jobs})"))

        if not args.no_pybigtools:
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                pseudobulk_with_fragments(obs, bigwig_path=work / "bw_pybigtools", overwrite=True,
                                          bigwig_writer="pybigtools", **kw)
            rows.append(("cached re-run, bigwig_writer='pybigtools'", time.perf_counter() - t0, rss.peak, rss.cpu,
                         "the same intervals through pybigtools' writer"))

        # The same cached job as a user re-running the CLI would see it, from a fresh process.
        import anndata as ad

        ad.AnnData(obs=obs).write_h5ad(work / "cells.h5ad")
        pd.Series(chrom_sizes).to_csv(work / "chrom.sizes", sep="\t", header=False)
        cmd = [sys.executable, "-m", "p2g_dask.cli", "--quiet", "bigwig", str(work / "cells.h5ad"), "--fragments",
               f"bench={frag}", "--chrom-sizes", str(work / "chrom.sizes"), "--cluster-key", "group",
               "--out", str(work / "bw_cli"), "--cache", str(work / "cache"), "--jobs", str(args.n_jobs),
               "--strategy", args.strategy, "--bin-size", str(args.bin_size)]
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        rows.append(("cached re-run, new `p2g bigwig` process", time.perf_counter() - t0, rss.peak, rss.cpu,
                     "includes Python start-up, imports and the cluster"))

        if not args.no_baseline:
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                nonzero = baseline(frag, obs, chrom_sizes)
            rows.append(("baseline: pandas read_csv + np.add.at", time.perf_counter() - t0, rss.peak, rss.cpu,
                         f"no BigWig writing; {nonzero:,} nonzero bases"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nbench_bigwig: {args.cells:,} cells, {args.groups} groups, {args.genome} genome, {args.strategy}, "
          f"bin_size={args.bin_size}, {psutil.cpu_count()} cores")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in psutil.getloadavg())}")
    print(f"{'step':40s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS':>10s}  notes")
    for step, sec, peak, cpu, note in rows:
        mem = f"{peak / 2**30:.2f} GiB" if peak else "-"
        cpu_text = f"{cpu:8.1f}" if cpu is not None else f"{'-':>8s}"
        print(f"{step:40s} {sec:8.1f} {cpu_text} {mem:>10s}  {note}")


if __name__ == "__main__":
    main()
