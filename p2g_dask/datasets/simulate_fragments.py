"""Write a 10x-style fragment file consistent with a (simulated) ATAC count matrix.

Every nonzero entry ``(cell, peak, count)`` of the matrix becomes ``count`` fragments whose two
cut sites (``start`` and ``end - 1``) both fall inside the peak, so counting a cell's fragments
per peak from the file gives the matrix back. A little background (fragments that touch no peak)
is added on top, as real files have. Barcodes are the ``obs_names``.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from p2g_dask._atomic import atomic_path
from p2g_dask._logging import logger
from p2g_dask.io.bgzf import BgzfWriter, write_fragment_table

_PEAK_RE = re.compile(r"^(?P<chrom>[^:]+)[:_-](?P<start>\d+)[-_](?P<end>\d+)$")


def _peaks(atac: ad.AnnData) -> pd.DataFrame:
    var = atac.var
    if {"chrom", "start", "end"} <= set(var.columns):
        return pd.DataFrame({"chrom": var["chrom"].astype(str).to_numpy(), "start": var["start"].to_numpy(np.int64),
                             "end": var["end"].to_numpy(np.int64)})
    try:
        from p2g_dask.io.peaks import peak_table
    except ImportError:
        peak_table = None
    if peak_table is not None:
        table = peak_table(atac.var_names)
        return pd.DataFrame({"chrom": table["chrom"].astype(str).to_numpy(),
                             "start": table["start"].to_numpy(np.int64), "end": table["end"].to_numpy(np.int64)})
    rows = []
    for name in atac.var_names:
        m = _PEAK_RE.match(str(name))
        if m is None:
            raise ValueError(f"atac_anndata: peak name {name!r} is not 'chrom:start-end'; add var chrom/start/end.")
        rows.append((m["chrom"], int(m["start"]), int(m["end"])))
    return pd.DataFrame(rows, columns=["chrom", "start", "end"])


def simulate_fragments(
    atac_anndata: ad.AnnData,
    path: str | os.PathLike,
    *,
    chrom_sizes: dict[str, int],
    seed: int = 0,
    background: float = 0.05,
    compression: str | None = "bgzip",
    header: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a sorted 10x fragment file whose fragments reproduce the ATAC counts.

    Parameters
    ----------
    atac_anndata
        Cells x peaks counts (e.g. ``simulate_multiome(...).atac``); peaks from ``var``
        ``chrom/start/end`` or from ``chrom:start-end`` names.
    path
        Output file; refused when it exists unless ``overwrite``.
    chrom_sizes
        Chromosome lengths; the file is sorted in this chromosome order, then by start.
    seed
        Seed of ``numpy.random.default_rng``; the same seed gives the same file.
    background
        Extra fragments per cell, as a share of its in-peak fragments, placed so that they touch
        no peak (they change no matrix count).
    compression
        ``'bgzip'`` (BGZF, tabix-compatible), ``'gzip'`` or None (plain text).
    header
        Start with ``#`` header lines, as Cell Ranger writes.
    overwrite
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from p2g_dask.datasets import simulate_multiome
    >>> sim = simulate_multiome(n_cells=50, n_peaks=200, n_genes=30, n_linked_genes=5, seed=0)
    >>> out = simulate_fragments(sim.atac, pathlib.Path(tempfile.mkdtemp()) / "f.tsv.gz",
    ...                          chrom_sizes=sim.chrom_sizes, seed=0)
    >>> out.name
    'f.tsv.gz'
    """
    if compression not in ("bgzip", "gzip", None):
        raise ValueError(f"compression={compression!r} is not known; use 'bgzip', 'gzip' or None.")
    if background < 0:
        raise ValueError(f"background={background!r} must be >= 0 (a share of the in-peak fragments).")
    rng = np.random.default_rng(seed)
    peaks = _peaks(atac_anndata)
    chrom_order = {c: i for i, c in enumerate(chrom_sizes)}
    missing = sorted(set(peaks["chrom"]) - set(chrom_order))
    if missing:
        raise ValueError(f"chrom_sizes has no length for peak chromosomes {missing[:5]}; add them.")
    x = sp.coo_matrix(atac_anndata.X)
    counts = np.asarray(x.data).astype(np.int64)
    if np.any(counts < 0) or not np.allclose(counts, x.data):
        raise ValueError("atac_anndata.X must hold non-negative integer counts.")
    cell = np.repeat(x.row, counts)
    peak = np.repeat(x.col, counts)
    p_start = peaks["start"].to_numpy()[peak]
    width = peaks["end"].to_numpy()[peak] - p_start
    # Two cut sites inside the peak; the fragment spans them.
    a = p_start + (rng.random(peak.size) * width).astype(np.int64)
    b = p_start + (rng.random(peak.size) * width).astype(np.int64)
    start, end = np.minimum(a, b), np.maximum(a, b) + 1
    chrom_code = peaks["chrom"].map(chrom_order).to_numpy()[peak]

    n_bg = rng.poisson(background * np.bincount(cell, minlength=atac_anndata.n_obs))
    bg = _background(rng, n_bg, chrom_sizes, peaks, chrom_order)
    cell = np.concatenate([cell, bg[0]])
    chrom_code = np.concatenate([chrom_code, bg[1]])
    start = np.concatenate([start, bg[2]])
    end = np.concatenate([end, bg[3]])
    order = np.lexsort((cell, end, start, chrom_code))
    names = list(chrom_sizes)
    table = pa.table({
        "chrom": pa.DictionaryArray.from_arrays(pa.array(chrom_code[order].astype(np.int32)), pa.array(names)),
        "start": start[order], "end": end[order],
        "barcode": pa.DictionaryArray.from_arrays(pa.array(cell[order].astype(np.int32)),
                                                  pa.array(np.asarray(atac_anndata.obs_names, dtype=object))),
        "count": (rng.geometric(0.7, order.size)).astype(np.int32),
    })
    path = Path(path)
    with atomic_path(path, overwrite=overwrite, argument="path") as tmp:
        if compression == "bgzip":
            fh = BgzfWriter(tmp, level=1)
        elif compression == "gzip":
            fh = gzip.open(tmp, "wb", compresslevel=1)
        else:
            fh = open(tmp, "wb")
        with fh:
            if header:
                fh.write(f"# id=p2g_dask.simulate_fragments\n# seed={seed}\n".encode())
                fh.write("".join(f"# primary_contig={c}\n" for c in names).encode())
            for lo in range(0, table.num_rows, 1 << 20):
                write_fragment_table(table.slice(lo, 1 << 20), fh)
    logger.info("simulated %d fragments (%d background) for %d cells -> %s", table.num_rows, bg[0].size,
                atac_anndata.n_obs, path)
    return path


def _background(rng, n_per_cell, chrom_sizes, peaks, chrom_order):
    n = int(n_per_cell.sum())
    cell = np.repeat(np.arange(n_per_cell.size), n_per_cell)
    names = list(chrom_sizes)
    sizes = np.array([chrom_sizes[c] for c in names], dtype=np.int64)
    chrom = rng.choice(len(names), size=n, p=sizes / sizes.sum())
    length = rng.integers(40, 500, n)
    start = (rng.random(n) * (sizes[chrom] - length)).astype(np.int64)
    end = start + length
    keep = np.ones(n, bool)
    # Drop background fragments that touch a peak so that the matrix counts stay exact.
    for code, c in enumerate(names):
        sel = np.flatnonzero(chrom == code)
        on = peaks[peaks["chrom"] == c].sort_values("start")
        if sel.size == 0 or on.empty:
            continue
        ps, pe = on["start"].to_numpy(), on["end"].to_numpy()
        i = np.searchsorted(ps, end[sel], side="left")  # peaks starting before the fragment's end
        prev_end = np.where(i > 0, np.maximum.accumulate(pe)[np.maximum(i - 1, 0)], -1)
        keep[sel[prev_end > start[sel]]] = False
    return cell[keep], chrom[keep], start[keep], end[keep]
