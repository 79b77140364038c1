"""peak_to_gene on a PBMC10k-shaped case against an epione-equivalent baseline, each in a fresh process.

Case (issue 18): 9,631 cells x 107,191 peaks x 29,095 genes, 20,169 of them annotated, ~62.6 M
ATAC and ~63.6 M RNA nonzeros, ~800k candidate pairs within 250 kb. The counts are random
(the statistics' cost does not depend on the signal); peaks and TSSs lie on 22 chromosomes of a
1.34 Gb genome, which gives PBMC10k's pair count. The data are made once and cached in
``--workdir`` (AnnData files, gene table and the p2g store).

Paths, each in a new Python process (imports done before the timer, work timed from the call):
  memory      ``p2g.tl.peak_to_gene`` on AnnData (the default scheduler: threads)
  store 1st   on the store, ``p2g_dask.cluster.start_cluster('local', n_workers=2, threads_per_worker=1)``
              started before the timer; the first call timed (worker warm-up included)
  store 2nd   the same cluster, second call
  baseline    epione-equivalent, written below: cosine kNN (sklearn) of 500 random anchors x 100
              neighbours, ``X[idx].mean(axis=0)`` per metacell on CSR rows for both matrices,
              log2(x / total * 1e4 + 1), z-scored columns (ddof=1), one dot product per pair, t ->
              two-sided p (scipy), Benjamini-Hochberg
Printed per path: wall, process-tree peak RSS (client + workers) and the speed-up over the
baseline; the three p2g paths must give the same links (correlations equal to 1e-6).

Usage:  python benchmarks/bench_peak_to_gene.py [--workdir /tmp/p2g_bench] [--repeat 1]
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

N_CELLS, N_PEAKS, N_GENES, N_ANNOTATED = 9_631, 107_191, 29_095, 20_169
ATAC_NNZ, RNA_NNZ = 62.6e6, 63.6e6
GENOME_BP = 1_340_000_000  # peaks x annotated TSSs x 500 kb / genome ~ 805k pairs
PARAMS = dict(use_rep="X_lsi", n_metacells=500, k_neighbors=100, max_distance=250_000)


def random_counts(rng, n_cells, n_features, density, dtype=np.int32):
    nnz_per_row = rng.binomial(n_features, density, n_cells)
    indptr = np.concatenate([[0], np.cumsum(nnz_per_row)])
    indices = np.concatenate([np.sort(rng.choice(n_features, k, replace=False)) for k in nnz_per_row])
    data = (rng.geometric(0.7, indptr[-1])).astype(dtype)
    return sp.csr_matrix((data, indices.astype(np.int32), indptr), shape=(n_cells, n_features))


def make_data(seed: int = 0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    chroms = [f"chr{i}" for i in range(1, 23)]
    sizes = np.linspace(250e6, 50e6, len(chroms))
    sizes = (sizes / sizes.sum() * GENOME_BP).astype(np.int64)
    peak_chrom = rng.choice(len(chroms), N_PEAKS, p=sizes / sizes.sum())
    peak_start = (rng.random(N_PEAKS) * (sizes[peak_chrom] - 1000)).astype(np.int64)
    order = np.lexsort((peak_start, peak_chrom))
    peak_chrom, peak_start = peak_chrom[order], peak_start[order]
    while (same := (np.diff(peak_start) == 0) & (np.diff(peak_chrom) == 0)).any():  # unique peak names
        peak_start[1:][same] += 1
    names = [f"{chroms[c]}:{s}-{s + 500}" for c, s in zip(peak_chrom, peak_start)]
    atac = ad.AnnData(random_counts(rng, N_CELLS, N_PEAKS, ATAC_NNZ / N_CELLS / N_PEAKS),
                      var=pd.DataFrame(index=names))
    gene_names = np.array([f"GENE{i}" for i in range(N_GENES)])
    rna = ad.AnnData(random_counts(rng, N_CELLS, N_GENES, RNA_NNZ / N_CELLS / N_GENES),
                     var=pd.DataFrame(index=gene_names))
    atac.obs_names = rna.obs_names = [f"cell{i}" for i in range(N_CELLS)]
    atac.obsm["X_lsi"] = rng.normal(size=(N_CELLS, 30)).astype(np.float32)
    gene_chrom = rng.choice(len(chroms), N_ANNOTATED, p=sizes / sizes.sum())
    gene_start = (rng.random(N_ANNOTATED) * (sizes[gene_chrom] - 50_000)).astype(np.int64)
    genes = pd.DataFrame({
        "gene_name": gene_names[:N_ANNOTATED], "chrom": np.array(chroms)[gene_chrom],
        "start": gene_start, "end": gene_start + rng.integers(1_000, 40_000, N_ANNOTATED),
        "strand": rng.choice(["+", "-"], N_ANNOTATED),
    })
    return atac, rna, genes


def prepare(folder: Path) -> None:
    """Simulate and write the case once (AnnData, genes, store); later runs reuse it."""
    if (folder / "ready").exists():
        return
    import p2g_dask as p2g

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    atac, rna, genes = make_data()
    print(f"simulated in {time.perf_counter() - t0:.1f} s; writing to {folder}")
    atac.write_h5ad(folder / "atac.h5ad")
    rna.write_h5ad(folder / "rna.h5ad")
    genes.to_csv(folder / "genes.tsv", sep="\t", index=False)
    p2g.io.ingest(atac, rna, folder / "bench.zarr", overwrite=True)
    (folder / "ready").touch()


# ---------------------------------------------------------------- epione-equivalent baseline
def baseline_pairs(peak_names: pd.Index, genes: pd.DataFrame, max_distance: int):
    """Peak-gene pairs with |peak centre - TSS| <= max_distance (searchsorted per chromosome)."""
    parts = peak_names.str.extract(r"^(.+):(\d+)-(\d+)$")
    centre = (parts[1].astype(np.int64).to_numpy() + parts[2].astype(np.int64).to_numpy()) // 2
    tss = np.where(genes["strand"].to_numpy() == "-", genes["end"].to_numpy() - 1, genes["start"].to_numpy())
    peak_index, gene_index = [], []
    for chrom, g_rows in genes.groupby("chrom").indices.items():
        p_rows = np.flatnonzero(parts[0].to_numpy() == chrom)
        p_rows = p_rows[np.argsort(centre[p_rows], kind="stable")]
        lo = np.searchsorted(centre[p_rows], tss[g_rows] - max_distance, side="left")
        hi = np.searchsorted(centre[p_rows], tss[g_rows] + max_distance, side="right")
        for g, a, b in zip(g_rows, lo, hi):
            peak_index.append(p_rows[a:b])
            gene_index.append(np.full(b - a, g))
    return np.concatenate(peak_index), np.concatenate(gene_index)


def zscore_columns(m: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (m - m.mean(axis=0)) / m.std(axis=0, ddof=1)


def epione_like(atac, rna, genes, *, n_metacells=500, k=100, max_distance=250_000, seed=1) -> pd.DataFrame:
    """What a user runs today (epione's ``peak_to_gene``), restated with numpy / scipy / sklearn."""
    from scipy import stats
    from sklearn.neighbors import NearestNeighbors

    emb = atac.obsm["X_lsi"]
    rng = np.random.default_rng(seed)
    anchors = rng.choice(atac.n_obs, n_metacells, replace=False)
    idx = NearestNeighbors(n_neighbors=k, metric="cosine").fit(emb).kneighbors(emb[anchors], return_distance=False)
    X_atac, X_rna = sp.csr_matrix(atac.X), sp.csr_matrix(rna[atac.obs_names].X)
    mc_atac = np.vstack([np.asarray(X_atac[cells].mean(axis=0)) for cells in idx])
    mc_rna = np.vstack([np.asarray(X_rna[cells].mean(axis=0)) for cells in idx])
    norm = [np.log2(m / m.sum(axis=1, keepdims=True) * 1e4 + 1) for m in (mc_atac, mc_rna)]
    z_atac, z_rna = (zscore_columns(m) for m in norm)
    peak_index, gene_index = baseline_pairs(atac.var_names, genes, max_distance)
    gene_col = rna.var_names.get_indexer(genes["gene_name"])[gene_index]
    r = np.empty(peak_index.size)
    for s in range(0, r.size, 50_000):  # one dot product per pair, in blocks of pairs
        p, g = peak_index[s:s + 50_000], gene_col[s:s + 50_000]
        r[s:s + 50_000] = np.einsum("ij,ij->j", z_atac[:, p], z_rna[:, g]) / (n_metacells - 1)
    dof = n_metacells - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt(dof / (1 - r**2))
    pval = 2 * stats.t.sf(np.abs(t), dof)
    fdr = np.full(r.size, np.nan)
    ok = np.isfinite(pval)
    fdr[ok] = stats.false_discovery_control(pval[ok])
    return pd.DataFrame({"peak_index": peak_index, "gene_index": gene_index, "correlation": r, "fdr": fdr})


# ---------------------------------------------------------------- the paths (each in a fresh process)
def run_path(kind: str, folder: Path) -> None:
    import anndata as ad

    import p2g_dask as p2g
    import p2g_dask.tl  # noqa: F401  (imports outside the timer, as for the baseline)

    genes = pd.read_csv(folder / "genes.tsv", sep="\t")
    if kind.startswith("store"):
        from p2g_dask.cluster import close_cluster, start_cluster

        client = start_cluster("local", n_workers=2, threads_per_worker=1, dashboard_address=None)
        rows = {}
        try:
            for call in ("store1", "store2"):
                with PeakRSS() as rss:
                    links = p2g.tl.peak_to_gene(str(folder / "bench.zarr"), gene_annotation=genes, client=client,
                                                **PARAMS)
                rows[call] = dict(seconds=rss.seconds, peak=rss.peak, cpu=rss.cpu)
                np.save(folder / f"r_{call}.npy", links["correlation"].to_numpy())
        finally:
            close_cluster(client)
        return emit(**rows)
    atac = ad.read_h5ad(folder / "atac.h5ad")
    rna = ad.read_h5ad(folder / "rna.h5ad")
    if kind == "prime":  # compiles numba kernels into the on-disk cache (not timed)
        small = atac[:2000].copy()
        p2g.tl.peak_to_gene(small, rna=rna[:2000].copy(), gene_annotation=genes, **{**PARAMS, "n_metacells": 50})
        return emit()
    if kind == "memory":
        with PeakRSS() as rss:
            links = p2g.tl.peak_to_gene(atac, rna=rna, gene_annotation=genes, **PARAMS)
        np.save(folder / "r_memory.npy", links["correlation"].to_numpy())
        return emit(memory=dict(seconds=rss.seconds, peak=rss.peak, cpu=rss.cpu, n_pairs=len(links)))
    import scipy.stats  # noqa: F401  (imports outside the timer, as for p2g_dask)
    import sklearn.neighbors  # noqa: F401

    with PeakRSS() as rss:
        links = epione_like(atac, rna, genes)
    return emit(baseline=dict(seconds=rss.seconds, peak=rss.peak, cpu=rss.cpu, n_pairs=len(links),
                              n_significant=int(((links["fdr"] < 0.1) & (links["correlation"].abs() > 0.45)).sum())))


NAMES = {
    "memory": "p2g in memory (AnnData, threads)",
    "store1": "p2g store, fresh 2-worker LocalCluster, 1st call",
    "store2": "p2g store, same cluster, 2nd call",
    "baseline": "epione-equivalent (numpy/scipy/sklearn)",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/p2g_bench", help="cache of the simulated case (reused)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every path (each in a fresh process)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.workdir) / "peak_to_gene"
    if args.run:
        return run_path(args.run, folder)

    prepare(folder)
    run_fresh(__file__, "prime", "--workdir", args.workdir)
    rows: dict[str, list] = {k: [] for k in NAMES}
    for _ in range(args.repeat):
        for kind in ("baseline", "memory", "store"):
            for key, row in run_fresh(__file__, kind, "--workdir", args.workdir).items():
                rows[key].append(row)
    ref = np.load(folder / "r_memory.npy")
    for call in ("store1", "store2"):
        other = np.load(folder / f"r_{call}.npy")
        np.testing.assert_allclose(other, ref, rtol=0, atol=1e-6, equal_nan=True)
    print(f"case: {N_CELLS:,} cells x {N_PEAKS:,} peaks x {N_GENES:,} genes ({N_ANNOTATED:,} annotated); "
          f"p2g pairs {rows['memory'][0]['n_pairs']:,}, baseline pairs {rows['baseline'][0]['n_pairs']:,}; "
          f"{load_note()}")
    print("the three p2g paths give the same links (correlations equal to 1e-6)")
    base = min(r["seconds"] for r in rows["baseline"])
    print(f"{'path':<50} {'wall s':>14} {'CPU s':>7} {'peak RSS GiB':>13} {'vs baseline':>12}")
    for key, runs in rows.items():
        wall = [r["seconds"] for r in runs]
        shown = f"{min(wall):.2f}" + (f"-{max(wall):.2f}" if len(wall) > 1 else "")
        print(f"{NAMES[key]:<50} {shown:>14} {runs[0]['cpu']:7.1f} {max(r['peak'] for r in runs) / 2**30:13.2f} "
              f"{base / min(wall):11.1f}x")


if __name__ == "__main__":
    main()
