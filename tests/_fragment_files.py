"""Write small fragment files for the tests, independently of p2g_dask's own writers."""

from __future__ import annotations

import gzip
from pathlib import Path

from p2g_dask.io.bgzf import BgzfWriter


def write_fragment_file(path, df, compression="gzip", header=("# id=test", "# reference=none")):
    """``df`` (chrom, start, end, barcode, count) as a 10x fragment file: gzip, bgzip or plain (None)."""
    text = "".join(h + "\n" for h in header) + df.to_csv(sep="\t", header=False, index=False)
    if compression == "gzip":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    elif compression == "bgzip":
        with BgzfWriter(path) as fh:
            fh.write(text.encode())
    else:
        Path(path).write_text(text)
    return path
