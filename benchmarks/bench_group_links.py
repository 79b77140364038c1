"""Links per group cost one pass: peak_to_gene(groupby=) with 7 groups vs one unstratified call.

Same PBMC10k-shaped random data as ``bench_peak_to_gene.py`` (9,631 cells x 107,194 peaks x
29,095 genes, ~700k candidate pairs), with 7 groups at PBMC shares (T_CD4 30 %, Mono_CD14 20 %,
T_CD8 15 %, B 12 %, NK 10 %, Mono_FCGR3A 8 %, DC 5 %). Both calls run in the same process on the
same data and scheduler, alternately, ``--repeats`` times each; the script prints every wall time
and the ratio of the medians (grouped / unstratified). The grouped call sums all groups'
metacells in one pass and correlates every pair once per group.

Usage:  python benchmarks/bench_group_links.py [--cells 9631] [--repeats 2] [--store]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_peak_to_gene import make_data

GROUP_SHARES = {"T_CD4": 0.30, "Mono_CD14": 0.20, "T_CD8": 0.15, "B": 0.12, "NK": 0.10, "Mono_FCGR3A": 0.08,
                "DC": 0.05}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=9631)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--store", action="store_true", help="run on a Zarr store with a 2-worker LocalCluster")
    args = parser.parse_args()

    import dask
    import p2g_dask as p2g

    atac, rna, genes = make_data(args.cells)
    rng = np.random.default_rng(1)
    atac.obs["cell_type"] = rng.choice(list(GROUP_SHARES), atac.n_obs, p=list(GROUP_SHARES.values()))
    data, options, client = {"atac": atac, "rna": rna}, {}, None
    if args.store:
        from distributed import Client, LocalCluster

        folder = tempfile.mkdtemp()
        data = {"atac": p2g.io.ingest(atac, rna, Path(folder) / "bench.zarr")}
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
        client = Client(cluster)
        options["client"] = client
    common = dict(gene_annotation=genes, use_rep="X_lsi", n_metacells=500, k_neighbors=100, **options)
    times = {"unstratified": [], "groupby (7 groups)": []}
    with dask.config.set(scheduler="threads") if client is None else dask.config.set({}):
        # Warm-up (numba compilation, imports) so neither timed call pays it.
        p2g.tl.peak_to_gene(data["atac"], rna=data.get("rna"), **{**common, "n_metacells": 60, "k_neighbors": 20},
                            groupby="cell_type", min_metacells=5)
        for _ in range(args.repeats):
            for name, extra in (("unstratified", {}), ("groupby (7 groups)", {"groupby": "cell_type"})):
                started = time.perf_counter()
                links = p2g.tl.peak_to_gene(data["atac"], rna=data.get("rna"), **common, **extra)
                times[name].append(time.perf_counter() - started)
                groups = links.attrs["metacells"]
                sizes = {g: len(m) for g, m in groups.items()} if isinstance(groups, dict) else len(groups)
                print(f"{name:20s} {times[name][-1]:7.1f} s  {len(links):,} rows  metacells {sizes}", flush=True)
    ratio = np.median(times["groupby (7 groups)"]) / np.median(times["unstratified"])
    print(f"cells {args.cells}, {'store + LocalCluster(2)' if client else 'in memory, threads'}: "
          f"median unstratified {np.median(times['unstratified']):.1f} s, groupby "
          f"{np.median(times['groupby (7 groups)']):.1f} s, ratio {ratio:.2f}")
    if client is not None:
        client.close()


if __name__ == "__main__":
    main()
