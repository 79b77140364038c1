"""p2g's peak matrix against SnapATAC2's ``make_peak_matrix`` on the same fragment file and peaks.

SnapATAC2 runs in its own Python (a separate environment: ``--snapatac2-python``), through its
own ``pp.import_fragments`` + ``pp.make_peak_matrix``; p2g runs here. For each SnapATAC2
``counting_strategy`` (``insertion``, ``paired-insertion``, ``fragment``) the script compares
p2g's ``peak_matrix(..., counting_strategy=..., ceiling=None)`` with SnapATAC2's matrix, cell by
cell and peak by peak, and prints the number of differing entries. It also prints how ArchR's
default (insertion, ceiling 4) differs from SnapATAC2's default (paired-insertion, no cap).

Usage (the real PBMC 1k fragments of ../shared/data and its 174 peaks, or any file + BED)::

    python benchmarks/compare_snapatac2.py --snapatac2-python /work/snapatac2-venv/bin/python
    python benchmarks/compare_snapatac2.py --fragments f.tsv.gz --peaks peaks.bed --chrom-sizes hg38.chrom.sizes ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STRATEGIES = ("insertion", "paired-insertion", "fragment")

# Run by SnapATAC2's Python: argv = fragments, bed, chrom sizes, cells file, output folder.
_SNAPATAC2 = r"""
import sys, time, json, numpy as np, scipy.sparse as sp, snapatac2 as snap
fragments, bed, sizes, cells, out = sys.argv[1:6]
chrom_sizes = dict((l.split()[0], int(l.split()[1])) for l in open(sizes) if l.strip())
whitelist = [l.strip() for l in open(cells) if l.strip()]
t = time.perf_counter()
data = snap.pp.import_fragments(fragments, chrom_sizes=chrom_sizes, whitelist=whitelist, min_num_fragments=0,
                                sorted_by_barcode=False, chrM=[], file=None)
timings = {"import_fragments": time.perf_counter() - t}
for strategy in ("insertion", "paired-insertion", "fragment"):
    t = time.perf_counter()
    m = snap.pp.make_peak_matrix(data, peak_file=bed, counting_strategy=strategy)
    timings[strategy] = time.perf_counter() - t
    x = sp.csr_matrix(m.X)
    sp.save_npz(f"{out}/{strategy}.npz", x)
    open(f"{out}/{strategy}.json", "w").write(json.dumps({"obs": list(m.obs_names), "var": list(m.var_names)}))
open(f"{out}/timings.json", "w").write(json.dumps({"version": snap.__version__, **timings}))
"""


def _snapatac2(python: str, fragments: Path, bed: Path, sizes: Path, cells: list[str], out: Path) -> dict:
    (out / "cells.txt").write_text("\n".join(cells) + "\n")
    script = out / "run_snapatac2.py"
    script.write_text(_SNAPATAC2)
    done = subprocess.run([python, str(script), str(fragments), str(bed), str(sizes), str(out / "cells.txt"), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"SnapATAC2 failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "timings.json").read_text())


def _snapatac2_matrix(out: Path, strategy: str, cells: list[str], peak_names: list[str]) -> np.ndarray:
    import scipy.sparse as sp

    x = sp.load_npz(out / f"{strategy}.npz").toarray()
    names = json.loads((out / f"{strategy}.json").read_text())
    rows = {c: i for i, c in enumerate(names["obs"])}
    # SnapATAC2 names peaks chrom:start-end, as p2g does (0-based half-open, as in the BED).
    cols = {p: i for i, p in enumerate(names["var"])}
    full = np.zeros((len(cells), len(peak_names)), x.dtype)
    r = np.array([rows.get(c, -1) for c in cells])
    c = np.array([cols[p] for p in peak_names])
    full[r >= 0] = x[r[r >= 0]][:, c]
    return full


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapatac2-python", required=True, help="python of an environment with snapatac2")
    parser.add_argument("--fragments", type=Path, default=DATA / "pbmc_multiome_1k" / "fragments.tsv.gz")
    parser.add_argument("--peaks", type=Path, default=None, help="BED (default: the PBMC 1k atac.h5ad peaks)")
    parser.add_argument("--chrom-sizes", type=Path, default=DATA / "hg38" / "hg38.chrom.sizes")
    parser.add_argument("--cells", type=Path, default=None, help="h5ad whose obs_names are the cells "
                        "(default: the PBMC 1k atac.h5ad)")
    args = parser.parse_args(argv)
    import anndata as ad

    import p2g_dask as p2g

    cells_file = args.cells or DATA / "pbmc_multiome_1k" / "atac.h5ad"
    cells = ad.read_h5ad(cells_file, backed="r").obs_names.tolist()
    work = Path(tempfile.mkdtemp(prefix="p2g-vs-snapatac2-"))
    if args.peaks is None:
        peaks = p2g.io.read_peaks(ad.read_h5ad(cells_file, backed="r").var_names)
        peaks[["chrom", "start", "end"]].to_csv(work / "peaks.bed", sep="\t", header=False, index=False)
        bed = work / "peaks.bed"
    else:
        bed = args.peaks
        peaks = p2g.io.read_peaks(bed)
    timings = _snapatac2(args.snapatac2_python, args.fragments, bed, args.chrom_sizes, cells, work)
    print(f"SnapATAC2 {timings['version']} vs p2g_dask {p2g.__version__}: {args.fragments.name}, {len(cells)} cells, "
          f"{len(peaks)} peaks")
    print(f"{'counting_strategy':<18} {'entries':>8} {'differ':>7} {'p2g sum':>9} {'snap sum':>9} {'p2g s':>6} {'snap s':>6}")
    ours = {}
    for strategy in STRATEGIES:
        t = time.perf_counter()
        ours[strategy] = p2g.io.peak_matrix(args.fragments, peaks, cells=cells, ceiling=None,
                                            counting_strategy=strategy).X.toarray()
        seconds = time.perf_counter() - t
        theirs = _snapatac2_matrix(work, strategy, cells, peaks.index.tolist())
        differ = int((ours[strategy] != theirs).sum())
        print(f"{strategy:<18} {theirs.size:>8} {differ:>7} {int(ours[strategy].sum()):>9} {int(theirs.sum()):>9} "
              f"{seconds:>6.2f} {timings[strategy]:>6.2f}")
    archr = p2g.io.peak_matrix(args.fragments, peaks, cells=cells).X.toarray()
    snap_default = ours["paired-insertion"]
    print(f"ArchR default (insertion, ceiling 4) vs SnapATAC2 default (paired-insertion, no cap): "
          f"{int((archr != snap_default).sum())} of {archr.size} entries differ; totals {int(archr.sum())} vs "
          f"{int(snap_default.sum())}; ArchR's entries capped at 4: {int((ours['insertion'] > 4).sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
