"""Cost of store integrity on reads: verified block reads vs plain zarr reads, with and without crc32c.

Writes one simulated store twice (with the crc32c codec, as ingest does, and without it, as
format-1 stores were), then reads every ATAC row block three ways and prints the best of
``--repeats`` timings:

- plain: zarr reads of indptr/data/indices only (no presence or CSR checks), store without crc32c,
- plain+crc: the same reads on the store with crc32c (zarr checks the checksums while decoding),
- verified: :func:`p2g_dask.io._integrity.read_block` (presence + crc32c + CSR invariants).

Usage: ``python benchmarks/bench_store_verify.py --cells 20000 --peaks 50000``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import zarr

import p2g_dask as p2g
from p2g_dask.io import _write as store_module
from p2g_dask.io._integrity import read_block


def plain_read(path: str, start: int, stop: int) -> int:
    group = zarr.open_group(path, mode="r")["atac/X"]
    indptr = group["indptr"][start : stop + 1]
    lo, hi = int(indptr[0]), int(indptr[-1])
    return group["data"][lo:hi].size + group["indices"][lo:hi].size


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--peaks", type=int, default=50_000)
    parser.add_argument("--chunk-cells", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sim = p2g.datasets.simulate_multiome(n_cells=args.cells, n_peaks=args.peaks, n_genes=500, n_linked_genes=10)
    folder = Path(tempfile.mkdtemp())
    with_crc = p2g.io.ingest(sim.atac, sim.rna, folder / "crc.zarr", chunk_cells=args.chunk_cells)
    original = store_module._compressors
    with mock.patch.object(store_module, "_compressors", lambda: original()[:1]):
        without = p2g.io.ingest(sim.atac, sim.rna, folder / "plain.zarr", chunk_cells=args.chunk_cells)
    bounds = with_crc.atac.row_chunks()
    n_vars = with_crc.atac.n_vars
    nnz = with_crc.atac.nnz
    results = {
        "plain": best(lambda: [plain_read(without.path, s, e) for s, e in bounds], args.repeats),
        "plain+crc": best(lambda: [plain_read(with_crc.path, s, e) for s, e in bounds], args.repeats),
        "verified": best(lambda: [read_block(with_crc.path, "atac", s, e, n_vars) for s, e in bounds], args.repeats),
    }
    print(f"{args.cells} cells x {args.peaks} peaks, {nnz:,} nonzeros, {len(bounds)} blocks of {args.chunk_cells} cells")
    for name, seconds in results.items():
        print(f"{name:>10}: {seconds:.3f} s ({nnz / seconds / 1e6:.0f} M nonzeros/s, "
              f"{seconds / results['plain']:.2f}x plain)")


if __name__ == "__main__":
    main()
