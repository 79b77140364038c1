"""One group's fragments written back as a bgzip BED file (barcodes as obs names)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from p2g_dask._atomic import atomic_path
from p2g_dask.io.fragment_cache import read_cache_file
from p2g_dask.io.bgzf import BgzfWriter, write_fragment_table


def write_group_bed(path: str, per_chrom: list, group_code: int, overwrite: bool) -> dict:
    """Write one group's fragments (as in the files, barcodes as obs names) to a bgzip BED file."""
    n = 0
    with atomic_path(path, overwrite=overwrite, argument="bed_path") as tmp, BgzfWriter(tmp, level=1) as fh:
        for chrom, length, sources in per_chrom:
            parts = []
            for file, lookup, names in sources:
                data = read_cache_file(file, ("start", "end", "barcode_id", "count"))
                keep = (lookup[data["barcode_id"]] == group_code) & (data["end"] <= length)
                parts.append((data["start"][keep], data["end"][keep], names[data["barcode_id"][keep]],
                              data["count"][keep]))
            if not parts or not sum(p[0].size for p in parts):
                continue
            start, end, barcode, count = (np.concatenate([p[i] for p in parts]) for i in range(4))
            order = np.argsort(start, kind="stable")
            table = pa.table({"chrom": pa.array(np.full(order.size, chrom, dtype=object), pa.string()),
                              "start": start[order].astype(np.int64), "end": end[order].astype(np.int64),
                              "barcode": pa.array(barcode[order], pa.string()), "count": count[order]})
            write_fragment_table(table, fh)
            n += order.size
    return {"kind": "bed", "path": str(path), "n_fragments": n}
