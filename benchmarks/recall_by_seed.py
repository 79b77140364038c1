"""Recall of planted links across metacell seeds, per store: is recall at 1M >= recall at 100k?

One seed's recall moves by a few links with the metacell draw, so compare the mean over seeds.

Usage:  python benchmarks/recall_by_seed.py STORE [STORE ...] [--seeds 1 2 3] [--n-metacells 500]
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_scale import load_genes, load_truth, recall
from distributed import Client, LocalCluster

import p2g_dask as p2g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--n-metacells", type=int, default=500)
    parser.add_argument("--memory-limit", default="3GiB")
    args = parser.parse_args()
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=args.memory_limit,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        for store in args.stores:
            truth, genes = load_truth(store), load_genes(store)
            values = []
            for seed in args.seeds:
                links = p2g.tl.peak_to_gene(store, gene_annotation=genes, use_rep="X_latent",
                                            n_metacells=args.n_metacells, seed=seed, client=client)
                values.append(recall(links, truth))
            print(f"{store}: n_metacells={args.n_metacells} recall by seed {[round(v, 4) for v in values]} "
                  f"mean {np.mean(values):.4f} sd {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
