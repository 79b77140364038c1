"""co_accessibility and the null options of peak_to_gene, as ratios to plain peak_to_gene.

Speed (default): the PBMC10k-shaped random data of bench_peak_to_gene.py (107,194 peaks, 29,095
genes); each run in a fresh process (threaded scheduler, 2 threads) with its wall time and peak RSS
(process tree), printed as ratios to plain ``peak_to_gene`` measured in the same invocation:
  plain, coaccess, empirical (empirical_pval=True), permutation (n_permutations=N, permute="cells").

Calibration (``--calibration``): on the simulator (planted links) and on its global null (RNA rows
shuffled across cells before aggregation), the share of pairs each statistic selects at FDR < 0.05
(t-test ``fdr``, ``emp_fdr``, ``perm_fdr`` with permute="cells" and "metacells") and the recall of
the planted links.

Real data (``--pbmc``): co-accessibility of PBMC 1k (../shared/data/pbmc_multiome_1k) and the share
of loops with r >= 0.5 that touch a promoter (peak centre within 2 kb of a TSS) vs all tested pairs.

Usage:  python benchmarks/bench_coaccess.py [--cells 9631] [--metacells 500] [--k 100] [--permutations 100]
        python benchmarks/bench_coaccess.py --calibration [--permutations 20]
        python benchmarks/bench_coaccess.py --pbmc
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _peak_rss import PeakRSS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_one(kind: str, folder: Path, args) -> None:
    """One option in this fresh process; prints 'RESULT kind seconds peak_rss rows'."""
    import anndata as ad
    import dask

    import p2g_dask as p2g

    atac, rna = ad.read_h5ad(folder / "atac.h5ad"), ad.read_h5ad(folder / "rna.h5ad")
    genes = pd.read_csv(folder / "genes.tsv", sep="\t")
    meta = dict(use_rep="X_lsi", n_metacells=args.metacells, k_neighbors=args.k)
    p2g_kwargs = dict(rna=rna, gene_annotation=genes, max_distance=250_000, **meta)
    options = {"plain": {}, "empirical": {"empirical_pval": True},
               "permutation": {"n_permutations": args.permutations, "permute": "cells"}}
    with dask.config.set(scheduler="threads", num_workers=2):
        small = atac[:1500].copy()
        p2g.tl.co_accessibility(small, **{**meta, "n_metacells": 20, "k_neighbors": 20})  # numba warm-up
        p2g.tl.peak_to_gene(small, **{**p2g_kwargs, "rna": rna[:1500].copy(), "n_metacells": 20, "k_neighbors": 20})
        with PeakRSS() as rss:
            if kind == "coaccess":
                out = p2g.tl.co_accessibility(atac, max_distance=100_000, **meta)
            else:
                out = p2g.tl.peak_to_gene(atac, **p2g_kwargs, **options[kind])
    print(f"RESULT {kind} {rss.seconds} {rss.peak} {len(out)}", flush=True)


def speed(args) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_peak_to_gene import make_data

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        atac, rna, genes = make_data(args.cells)
        atac.write_h5ad(folder / "atac.h5ad")
        rna.write_h5ad(folder / "rna.h5ad")
        genes.to_csv(folder / "genes.tsv", sep="\t", index=False)
        print(f"data: {atac.n_obs} cells x {atac.n_vars} peaks x {rna.n_vars} genes; metacells {args.metacells} x "
              f"{args.k}; permutations N={args.permutations}", flush=True)
        del atac, rna
        results = {}
        for kind in ("plain", "coaccess", "empirical", "permutation"):
            out = subprocess.run([sys.executable, __file__, "--run", kind, "--dir", tmp, "--cells", str(args.cells),
                                  "--metacells", str(args.metacells), "--k", str(args.k),
                                  "--permutations", str(args.permutations)],
                                 capture_output=True, text=True, check=True).stdout
            line = [x for x in out.splitlines() if x.startswith("RESULT")][-1].split()
            results[kind] = (float(line[2]), int(line[3]), int(line[4]))
            print(f"{kind:12s} {results[kind][0]:8.1f} s  peak RSS {results[kind][1] / 2**30:6.2f} GiB  "
                  f"rows {results[kind][2]:,}", flush=True)
    base_s, base_rss, _ = results["plain"]
    for kind, (seconds, rss, _) in results.items():
        print(f"ratio {kind:12s} time x{seconds / base_s:.2f}  peak RSS x{rss / base_rss:.2f}")


def _share(table: pd.DataFrame, column: str) -> float:
    return float((table[column].to_numpy(dtype=float) < 0.05).mean()) if column in table else float("nan")


def calibration(args) -> None:
    import dask

    import p2g_dask as p2g

    sim = p2g.datasets.simulate_multiome(n_cells=3000, n_peaks=10_000, n_genes=1000, n_linked_genes=100, seed=3)
    null_rna = sim.rna.copy()
    null_rna.X = null_rna.X[np.random.default_rng(0).permutation(null_rna.n_obs)]  # no association at all
    neighbours = p2g.tl.metacells(sim.atac.obsm["X_latent"], n_metacells=200, k_neighbors=50, seed=1)
    truth = set(zip(sim.truth["peak"], sim.truth["gene"]))
    print(f"simulator: {sim.atac.n_obs} cells x {sim.atac.n_vars} peaks x {sim.rna.n_vars} genes, "
          f"{len(truth)} planted links; metacells 200 x 50; N={args.permutations}")
    rows = []
    for name, rna in (("planted", sim.rna), ("global null", null_rna)):
        with dask.config.set(scheduler="threads", num_workers=2):
            kw = dict(rna=rna, gene_annotation=sim.genes, metacells=neighbours, n_permutations=args.permutations)
            cells = p2g.tl.peak_to_gene(sim.atac, empirical_pval=True, permute="cells", **kw)
            order = p2g.tl.peak_to_gene(sim.atac, permute="metacells", **kw)
        planted = np.array([(p, g) in truth for p, g in zip(cells["peak"], cells["gene"])])
        for label, table, column in (("t-test fdr", cells, "fdr"), ("emp_fdr", cells, "emp_fdr"),
                                     ("perm_fdr cells", cells, "perm_fdr"), ("perm_fdr metacells", order, "perm_fdr")):
            selected = table[column].to_numpy(dtype=float) < 0.05
            rows.append({"data": name, "statistic": label, "share selected": _share(table, column),
                         "recall planted": float(selected[planted].mean()) if planted.any() else np.nan,
                         "pairs": len(table)})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def pbmc(args) -> None:
    import dask

    import p2g_dask as p2g

    import anndata as ad

    atac = ad.read_h5ad(DATA / "pbmc_multiome_1k" / "atac.h5ad")
    # A plain LSI (TF-IDF, log1p, SVD, first component dropped): 174 peaks are too few for iterative LSI.
    dense = (atac.X > 0).astype(np.float64).toarray()
    tf = dense / np.maximum(dense.sum(axis=1, keepdims=True), 1)
    u, sv, _ = np.linalg.svd(np.log1p(tf * np.log1p(dense.shape[0] / np.maximum(dense.sum(axis=0), 1)) * 1e4),
                             full_matrices=False)
    atac.obsm["X_iterative_lsi"] = u[:, 1:11] * sv[1:11]
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        table = p2g.tl.co_accessibility(atac, n_metacells=100, k_neighbors=20)
    seconds = time.perf_counter() - t0
    genes, _ = p2g.io.read_gene_annotation(args.genes)
    tss = np.where(genes["strand"].astype(str) == "-", genes["end"] - 1, genes["start"])
    near = {}
    for chrom, group in pd.DataFrame({"chrom": genes["chrom"].astype(str), "tss": tss}).groupby("chrom"):
        near[chrom] = np.sort(group["tss"].to_numpy(np.int64))

    def promoter(chrom: np.ndarray, centre: np.ndarray) -> np.ndarray:
        out = np.zeros(centre.size, bool)
        for c in np.unique(chrom):
            sel, t = chrom == c, near.get(c, np.empty(0, np.int64))
            if t.size:
                i = np.clip(np.searchsorted(t, centre[sel]), 1, t.size) - 1
                j = np.clip(i + 1, 0, t.size - 1)
                out[sel] = np.minimum(np.abs(centre[sel] - t[i]), np.abs(centre[sel] - t[j])) <= 2000
        return out

    chrom = table["chrom"].astype(str).to_numpy()
    touch = promoter(chrom, table["centre1"].to_numpy()) | promoter(chrom, table["centre2"].to_numpy())
    loops = p2g.tl.coaccessibility_loops(table, cor_cutoff=0.5)
    lchrom = loops["chrom"].astype(str).to_numpy()
    loop_touch = promoter(lchrom, loops["start"].to_numpy()) | promoter(lchrom, loops["end"].to_numpy())
    print(f"PBMC 1k: {atac.n_obs} cells x {atac.n_vars} peaks, metacells 100 x 20, {seconds:.1f} s; "
          f"{len(table):,} ordered pairs, {len(loops):,} loops with r >= 0.5")
    print(f"share touching a promoter (peak centre within 2 kb of a TSS): loops r >= 0.5 {loop_touch.mean():.3f}, "
          f"all tested pairs {touch.mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=9631)
    parser.add_argument("--metacells", type=int, default=500)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--calibration", action="store_true")
    parser.add_argument("--pbmc", action="store_true")
    parser.add_argument("--genes", default=str(DATA / "hg38" / "hg38_genes.tsv.gz"))
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_one(args.run, Path(args.dir), args)
    elif args.calibration:
        calibration(args)
    elif args.pbmc:
        pbmc(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
