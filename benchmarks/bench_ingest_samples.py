"""ingest_samples at atlas shape: peak RSS against the number of samples, and peak matrix throughput.

Simulated 10x-like samples: a ``filtered_feature_bc_matrix.h5`` (RNA ~800 and ATAC ~300 non-zeros
per cell) and a sorted bgzip fragment file (hg38 chr1-22,X; half the fragments in 100,000 peaks)
per sample. One sample is generated; the others are hard links to its files (distinct paths,
so each is parsed, cached, counted and written as a sample of its own). ``peaks=`` (the BED of
the 100,000 peaks) makes every sample's ATAC counted from its fragments.

Rows, each in a fresh process:

- ``ingest N``: ``ingest_samples`` of the first N samples on a LocalCluster of 2 worker
  processes x 1 thread; peak RSS of the whole process tree (client, nanny, workers);
- ``throughput``: ``peak_matrix`` of one sample's 10,000 cells from its existing fragment cache
  (threads scheduler, 2 workers), second call (the first loads numba's cached kernels), in
  fragments per second.

Usage::

    python benchmarks/bench_ingest_samples.py                         # 5 and 20 samples of 10k cells
    python benchmarks/bench_ingest_samples.py --samples 5 20 --cells 10000 --fragments-per-cell 1000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _fresh import emit, load_note, run_fresh
from _peak_rss import PeakRSS



def _genome() -> dict[str, int]:
    from p2g_dask import genome

    return {c: int(n) for c, n in genome.hg38.chrom_sizes.items() if c not in ("chrY", "chrM")}


def _peaks(rng, genome: dict[str, int], n_peaks: int):
    import pandas as pd

    chroms = list(genome)
    sizes = np.array([genome[c] for c in chroms], np.int64)
    chrom = rng.choice(len(chroms), n_peaks, p=sizes / sizes.sum())
    start = (rng.random(n_peaks) * (sizes[chrom] - 2000)).astype(np.int64) // 10 * 10
    peaks = pd.DataFrame({"chrom": np.array(chroms)[chrom], "start": start, "end": start + 500})
    from p2g_dask.io.peak_sets import sort_peaks

    return sort_peaks(peaks.drop_duplicates(["chrom", "start"]))


def _fragments(path: Path, rng, genome, peaks, barcodes, per_cell: int) -> int:
    import pyarrow as pa

    from p2g_dask.io.fragments import BgzfWriter, write_fragment_table

    chroms = list(genome)
    code = {c: i for i, c in enumerate(chroms)}
    sizes = np.array([genome[c] for c in chroms], np.int64)
    n = int(per_cell * len(barcodes))
    in_peak = rng.random(n) < 0.5
    p = rng.integers(0, len(peaks), int(in_peak.sum()))
    chrom = np.empty(n, np.int16)
    centre = np.empty(n, np.int64)
    chrom[in_peak] = peaks["chrom"].map(code).to_numpy()[p]
    centre[in_peak] = peaks["start"].to_numpy()[p] + rng.integers(0, 500, p.size)
    bg = rng.choice(len(chroms), n - p.size, p=sizes / sizes.sum())
    chrom[~in_peak] = bg
    centre[~in_peak] = (rng.random(bg.size) * (sizes[bg] - 2000) + 1000).astype(np.int64)
    length = np.where(rng.random(n) < 0.4, rng.integers(180, 260, n), rng.integers(30, 150, n))
    start = np.maximum(centre - length // 2, 0)
    cell = rng.integers(0, len(barcodes), n).astype(np.int32)
    order = np.lexsort((start, chrom))
    with BgzfWriter(path, level=1, threads=2) as fh:
        for lo in range(0, n, 1 << 21):
            rows = order[lo : lo + (1 << 21)]
            table = pa.table({
                "chrom": pa.DictionaryArray.from_arrays(pa.array(chrom[rows].astype(np.int32)), pa.array(chroms)),
                "start": start[rows], "end": start[rows] + length[rows],
                "barcode": pa.DictionaryArray.from_arrays(pa.array(cell[rows]), pa.array(barcodes)),
                "count": np.ones(rows.size, np.int32)})
            write_fragment_table(table, fh)
    return n


def _h5(path: Path, rng, barcodes, peaks, n_genes: int = 20_000, rna_nnz: int = 800, atac_nnz: int = 300) -> None:
    import h5py
    import scipy.sparse as sp

    n = len(barcodes)
    width = n_genes + len(peaks)
    per_row = rna_nnz + atac_nnz
    cols = np.concatenate([np.sort(np.concatenate([rng.choice(n_genes, rna_nnz, replace=False),
                                                   n_genes + rng.choice(len(peaks), atac_nnz, replace=False)]))
                           for _ in range(n)])
    matrix = sp.csr_matrix((rng.integers(1, 4, n * per_row).astype(np.int32), cols.astype(np.int64),
                            np.arange(0, n * per_row + 1, per_row)), shape=(n, width))
    names = peaks["chrom"] + ":" + peaks["start"].astype(str) + "-" + peaks["end"].astype(str)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.asarray(barcodes, dtype="S")
        m.create_dataset("data", data=matrix.data, compression="gzip", compression_opts=1)
        m.create_dataset("indices", data=matrix.indices.astype(np.int64), compression="gzip", compression_opts=1)
        m["indptr"] = matrix.indptr
        m["shape"] = np.array([width, n])
        feats = m.create_group("features")
        feats["id"] = np.asarray([f"ENSG{i:011d}" for i in range(n_genes)] + list(names), dtype="S")
        feats["name"] = np.asarray([f"GENE{i}" for i in range(n_genes)] + list(names), dtype="S")
        feats["feature_type"] = np.asarray(["Gene Expression"] * n_genes + ["Peaks"] * len(peaks), dtype="S")


def generate(work: Path, n_samples: int, n_cells: int, per_cell: int, seed: int = 0) -> dict:
    """One sample's files and ``n_samples`` hard-linked copies; the samples table and the BED."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    genome = _genome()
    peaks = _peaks(rng, genome, 100_000)
    peaks[["chrom", "start", "end"]].to_csv(work / "peaks.bed", sep="\t", header=False, index=False)
    barcodes = np.array(["".join(b) + "-1" for b in rng.choice(list("ACGT"), (n_cells, 16))], dtype=object)
    base = work / "base"
    base.mkdir()
    t = time.perf_counter()
    n_fragments = _fragments(base / "atac_fragments.tsv.gz", rng, genome, peaks, barcodes, per_cell)
    _h5(base / "filtered_feature_bc_matrix.h5", rng, barcodes, peaks)
    rows = []
    for i in range(n_samples):
        folder = work / f"sample{i:03d}"
        folder.mkdir()
        for name in ("atac_fragments.tsv.gz", "filtered_feature_bc_matrix.h5"):
            os.link(base / name, folder / name)
        rows.append({"sample": f"S{i:03d}", "fragments": f"{folder.name}/atac_fragments.tsv.gz",
                     "h5": f"{folder.name}/filtered_feature_bc_matrix.h5"})
    pd.DataFrame(rows).to_csv(work / "samples.tsv", sep="\t", index=False)
    made = {"n_fragments": n_fragments, "seconds": time.perf_counter() - t}
    (work / "generated.json").write_text(__import__("json").dumps(made))
    return made


class _ProcessPeaks:
    """Peak RSS of this process (the client) and of the largest single child (a worker), sampled."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.client = self.worker = 0
        self._interval, self._stop = interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self._interval):
            self.client = max(self.client, me.memory_info().rss)
            for child in me.children(recursive=True):
                try:
                    self.worker = max(self.worker, child.memory_info().rss)
                except psutil.Error:
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _reuse(work: Path, n_samples: int) -> dict | None:
    """The files of an earlier run in ``work`` (``--work`` given twice), when there are enough samples."""
    import json

    record = work / "generated.json"
    if not record.is_file() or not (work / f"sample{n_samples - 1:03d}").is_dir():
        return None
    return json.loads(record.read_text())


def run_ingest(work: Path, n_samples: int) -> None:
    import pandas as pd
    from distributed import Client, LocalCluster

    import p2g_dask as p2g

    table = pd.read_csv(work / "samples.tsv", sep="\t").iloc[:n_samples]
    table["fragments"] = [str(work / f) for f in table["fragments"]]
    table["h5"] = [str(work / f) for f in table["h5"]]
    out = work / f"atlas{n_samples}.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="4GiB") as cluster, Client(cluster) as client:
        with PeakRSS(interval=0.05) as rss, _ProcessPeaks() as parts:
            store = p2g.io.ingest_samples(table, out, peaks=work / "peaks.bed", client=client,
                                          cache_fragments=work / f"cache{n_samples}")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    emit(samples=n_samples, cells=int(store.atac.n_obs), peaks=int(store.atac.n_vars), nnz=int(store.atac.nnz),
         seconds=rss.seconds, cpu=rss.cpu, peak_rss=rss.peak, store_bytes=size, client_rss=parts.client,
         worker_rss=parts.worker)
    shutil.rmtree(out)
    shutil.rmtree(work / f"cache{n_samples}")


def run_throughput(work: Path) -> None:
    import dask

    import p2g_dask as p2g
    from p2g_dask.io.fragment_cache import build_fragment_cache

    fragments = work / "base" / "atac_fragments.tsv.gz"
    cache = build_fragment_cache(fragments, work / "throughput_cache" / "atac_fragments")
    cells = list(cache.barcodes())
    peaks = p2g.io.read_peaks(work / "peaks.bed")
    timings = []
    with dask.config.set(scheduler="threads", num_workers=2):
        for _ in range(2):
            with PeakRSS(interval=0.05) as rss:
                matrix = p2g.io.peak_matrix(fragments, peaks, cells=cells, cache_fragments=work / "throughput_cache")
            timings.append((rss.seconds, rss.cpu, rss.peak))
    seconds, cpu, peak = timings[-1]
    emit(fragments=cache.n_fragments, cells=len(cells), peaks=len(peaks), nnz=int(matrix.X.nnz), seconds=seconds,
         cpu=cpu, peak_rss=peak, first_seconds=timings[0][0], rate=cache.n_fragments / seconds)


def draw(rows: list[dict], path: str) -> None:
    """Peak RSS (whole tree, client, largest worker) and wall / CPU seconds against the samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["samples"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for key, label in (("peak_rss", "all processes"), ("worker_rss", "largest worker"), ("client_rss", "client")):
        left.plot(n, [r[key] / 2**30 for r in rows], marker="o", label=label)
    top = max(r["peak_rss"] for r in rows) / 2**30
    left.set(xlabel="samples (10,000 cells each)", ylabel="peak RSS (GiB)", ylim=(0, top * 1.3), xticks=n)
    left.legend(frameon=False, fontsize=7, loc="upper center", ncol=3)
    right.plot(n, [r["seconds"] for r in rows], marker="o", label="wall")
    right.plot(n, [r["cpu"] for r in rows], marker="o", label="CPU (all processes)")
    right.set(xlabel="samples (10,000 cells each)", ylabel="seconds", ylim=(0, None), xticks=n)
    right.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--fragments-per-cell", type=int, default=1000)
    parser.add_argument("--work", default=None, help="folder for the files (default: a temporary folder)")
    parser.add_argument("--figure", default=None, help="also draw peak RSS and time against samples into this PNG")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run == "ingest":
        run_ingest(Path(args.work), args.n)
        return 0
    if args.run == "throughput":
        run_throughput(Path(args.work))
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="p2g-bench-samples-"))
    work.mkdir(parents=True, exist_ok=True)
    made = _reuse(work, max(args.samples)) or generate(work, max(args.samples), args.cells, args.fragments_per_cell)
    print(f"generated one sample ({args.cells} cells, {made['n_fragments']:,} fragments) in {made['seconds']:.1f} s; "
          f"{max(args.samples)} hard-linked samples in {work}; {load_note()}")
    script = str(Path(__file__).resolve())
    rate = run_fresh(script, "throughput", "--work", str(work))
    print(f"peak matrix from the cache: {rate['fragments']:,} fragments x {rate['cells']} cells x {rate['peaks']:,} "
          f"peaks in {rate['seconds']:.2f} s ({rate['rate'] / 1e6:.2f} M fragments/s; first call "
          f"{rate['first_seconds']:.2f} s), CPU {rate['cpu']:.1f} s, peak RSS {rate['peak_rss'] / 2**30:.2f} GiB")
    print(f"{'samples':>8} {'cells':>9} {'fragments':>12} {'wall s':>8} {'CPU s':>8} {'M frag/s':>9} "
          f"{'peak RSS GiB':>13} {'client GiB':>11} {'worker GiB':>11} {'store GiB':>10}")
    rows = []
    for n in args.samples:
        r = run_fresh(script, "ingest", "--work", str(work), "--n", str(n))
        rows.append(r)
        print(f"{n:>8} {r['cells']:>9,} {made['n_fragments'] * n:>12,} {r['seconds']:>8.1f} {r['cpu']:>8.1f} "
              f"{made['n_fragments'] * n / r['seconds'] / 1e6:>9.2f} {r['peak_rss'] / 2**30:>13.2f} "
              f"{r['client_rss'] / 2**30:>11.2f} {r['worker_rss'] / 2**30:>11.2f} {r['store_bytes'] / 2**30:>10.2f}")
    print(load_note())
    if args.figure:
        draw(rows, args.figure)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
