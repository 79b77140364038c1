"""peak_to_gene on PBMC10k-shaped data: store path (2-worker LocalCluster), in-memory path, naive baseline.

Shape: 9,631 cells x 107,194 peaks (~3.5 % nonzero) x 29,095 genes (~20,000 annotated), which gives
~700k candidate pairs within 250 kb. The data are random sparse counts with peaks and genes laid
on a 3 Gb genome at PBMC10k's densities (the statistics' cost does not depend on the signal).

Prints wall time and peak RSS (of the whole process tree: client + workers) for
  - store:     peak_to_gene on the Zarr store, 2-worker LocalCluster (excluding ingest)
  - in-memory: peak_to_gene on AnnData, threaded scheduler
  - naive:     dense metacell aggregation (membership @ dense X) + one np.corrcoef per pair
and the speed-up of each against the naive baseline measured in the same run.

Usage:  python benchmarks/bench_peak_to_gene.py [--cells 9631] [--naive-pairs 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _peak_rss import PeakRSS


def random_counts(rng, n_cells, n_features, density, dtype=np.int32):
    nnz_per_row = rng.binomial(n_features, density, n_cells)
    indptr = np.concatenate([[0], np.cumsum(nnz_per_row)])
    indices = np.concatenate([np.sort(rng.choice(n_features, k, replace=False)) for k in nnz_per_row])
    data = (rng.geometric(0.7, indptr[-1])).astype(dtype)
    return sp.csr_matrix((data, indices.astype(np.int32), indptr), shape=(n_cells, n_features))


def make_data(n_cells: int, seed: int = 0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    n_peaks, n_genes, n_annotated = 107_194, 29_095, 20_000
    genome = 1_500_000_000  # peaks and genes concentrate in gene-rich half of hg38: ~700k pairs
    chroms = [f"chr{i}" for i in range(1, 23)]
    sizes = np.linspace(250e6, 50e6, len(chroms))
    sizes = (sizes / sizes.sum() * genome).astype(np.int64)
    peak_chrom = rng.choice(len(chroms), n_peaks, p=sizes / sizes.sum())
    peak_start = (rng.random(n_peaks) * (sizes[peak_chrom] - 1000)).astype(np.int64)
    order = np.lexsort((peak_start, peak_chrom))
    peak_chrom, peak_start = peak_chrom[order], peak_start[order]
    names = [f"{chroms[c]}:{s}-{s + 500}" for c, s in zip(peak_chrom, peak_start)]
    atac = ad.AnnData(random_counts(rng, n_cells, n_peaks, 0.035), var=pd.DataFrame(index=names))
    gene_names = np.array([f"GENE{i}" for i in range(n_genes)])
    rna = ad.AnnData(random_counts(rng, n_cells, n_genes, 0.06), var=pd.DataFrame(index=gene_names))
    obs_names = [f"cell{i}" for i in range(n_cells)]
    atac.obs_names = rna.obs_names = obs_names
    atac.obsm["X_lsi"] = rng.normal(size=(n_cells, 30)).astype(np.float32)
    gene_chrom = rng.choice(len(chroms), n_annotated, p=sizes / sizes.sum())
    gene_start = (rng.random(n_annotated) * (sizes[gene_chrom] - 50_000)).astype(np.int64)
    genes = pd.DataFrame({
        "gene_name": gene_names[:n_annotated], "chrom": np.array(chroms)[gene_chrom],
        "start": gene_start, "end": gene_start + rng.integers(1_000, 40_000, n_annotated),
        "strand": rng.choice(["+", "-"], n_annotated),
    })
    return atac, rna, genes


def naive(atac, rna, genes, neighbours, max_distance, max_pairs, rng):
    """Dense aggregation and per-pair np.corrcoef: what a direct script does."""
    from p2g_dask.tl.pairs import candidate_pairs

    membership = np.zeros((len(neighbours), atac.n_obs), dtype=np.float32)
    for i, cells in enumerate(neighbours):
        membership[i, cells] = 1
    dense_atac = atac.X.toarray().astype(np.float32)
    sums_a = membership @ dense_atac
    del dense_atac
    sums_r = membership @ rna.X.toarray().astype(np.float32)
    norm_a = np.log2(sums_a / sums_a.sum(1, keepdims=True) * 1e4 + 1)
    norm_r = np.log2(sums_r / sums_r.sum(1, keepdims=True) * 1e4 + 1)
    pairs = candidate_pairs(pd.DataFrame({"chrom": atac.var_names.str.split(":").str[0],
                                          "start": atac.var_names.str.extract(r":(\d+)-")[0].astype(int),
                                          "end": atac.var_names.str.extract(r"-(\d+)$")[0].astype(int)}),
                            genes, max_distance=max_distance)
    gene_col = rna.var_names.get_indexer(genes["gene_name"])
    sample = rng.choice(len(pairs), min(max_pairs, len(pairs)), replace=False)
    started = time.perf_counter()
    for p, g in zip(pairs["peak_index"].to_numpy()[sample], pairs["gene_index"].to_numpy()[sample]):
        np.corrcoef(norm_a[:, p], norm_r[:, gene_col[g]])
    per_pair = (time.perf_counter() - started) / len(sample)
    return per_pair * len(pairs), len(pairs)


def run_path(kind: str, folder: Path, naive_pairs: int) -> None:
    """Run one path in this (fresh) process and print 'RESULT kind seconds peak_rss'."""
    import anndata as ad
    import dask
    from distributed import Client, LocalCluster

    import p2g_dask as p2g

    genes = pd.read_csv(folder / "genes.tsv", sep="\t")
    params = dict(gene_annotation=genes, use_rep="X_lsi", n_metacells=500, k_neighbors=100, max_distance=250_000)
    if kind == "store":
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="4GiB", dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            p2g.tl.peak_to_gene(str(folder / "bench.zarr"), client=client, **params)  # warm-up: numba on workers
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                links = p2g.tl.peak_to_gene(str(folder / "bench.zarr"), client=client, **params)
                seconds = time.perf_counter() - t0
        p2g.io.write_links(links, folder / "links_store.parquet", overwrite=True)
    else:
        atac = ad.read_h5ad(folder / "atac.h5ad")
        rna = ad.read_h5ad(folder / "rna.h5ad")
        if kind == "memory":
            with dask.config.set(scheduler="threads", num_workers=2):
                p2g.tl.peak_to_gene(atac[:2000].copy(), rna=rna[:2000].copy(), **{**params, "n_metacells": 50})
                with PeakRSS() as rss:
                    t0 = time.perf_counter()
                    links = p2g.tl.peak_to_gene(atac, rna=rna, **params)
                    seconds = time.perf_counter() - t0
            p2g.io.write_links(links, folder / "links_memory.parquet", overwrite=True)
        else:
            neighbours = np.asarray(p2g.io.read_links(folder / "links_store.parquet").attrs["metacells"])
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                correlate_total, n_pairs = naive(atac, rna, genes, neighbours, 250_000, naive_pairs,
                                                 np.random.default_rng(0))
                elapsed = time.perf_counter() - t0
            seconds = elapsed - correlate_total * naive_pairs / n_pairs + correlate_total
    print(f"RESULT {kind} {seconds} {rss.peak}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=9631)
    parser.add_argument("--naive-pairs", type=int, default=20_000,
                        help="pairs timed in the naive baseline (its total is extrapolated to all pairs)")
    parser.add_argument("--run", choices=["store", "memory", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run_path(args.run, Path(args.dir), args.naive_pairs)

    import subprocess
    import sys

    import p2g_dask as p2g

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        atac, rna, genes = make_data(args.cells)
        print(f"data: {atac.n_obs} cells x {atac.n_vars} peaks ({atac.X.nnz / atac.n_obs / atac.n_vars:.1%}) x "
              f"{rna.n_vars} genes ({rna.X.nnz / rna.n_obs / rna.n_vars:.1%}), {len(genes)} annotated "
              f"(made in {time.perf_counter() - t0:.1f} s)")
        atac.write_h5ad(folder / "atac.h5ad")
        rna.write_h5ad(folder / "rna.h5ad")
        genes.to_csv(folder / "genes.tsv", sep="\t", index=False)
        t0 = time.perf_counter()
        p2g.io.ingest(atac, rna, folder / "bench.zarr")
        print(f"ingest: {time.perf_counter() - t0:.1f} s (not counted)")
        del atac, rna
        rows = {}
        for kind in ("store", "memory", "naive"):
            # Each path runs in a fresh process so that its peak RSS is its own.
            out = subprocess.run([sys.executable, __file__, "--run", kind, "--dir", tmp,
                                  "--naive-pairs", str(args.naive_pairs)], capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
            if not line:
                print(out.stdout[-2000:], out.stderr[-4000:])
                raise SystemExit(f"the {kind} path failed")
            _, _, seconds, peak = line[0].split()
            rows[kind] = (float(seconds), int(peak))
        links = p2g.io.read_links(folder / "links_store.parquet")
        pd.testing.assert_frame_equal(links, p2g.io.read_links(folder / "links_memory.parquet"))
    names = {"store": "store, 2-worker LocalCluster (client + workers)",
             "memory": "in-memory AnnData, 2 threads",
             "naive": "naive: dense aggregation + per-pair np.corrcoef"}
    print(f"candidate pairs: {len(links):,}; store and in-memory links identical; naive baseline timed on "
          f"{args.naive_pairs:,} pairs and extrapolated")
    print(f"{'path':<50} {'wall s':>8} {'peak RSS GiB':>13} {'speed-up vs naive':>18}")
    base = rows["naive"][0]
    for kind, (seconds, peak) in rows.items():
        print(f"{names[kind]:<50} {seconds:8.2f} {peak / 2**30:13.2f} {base / seconds:17.1f}x")


if __name__ == "__main__":
    main()
