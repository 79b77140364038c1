"""A BigWig (bbi version 4) writer for run-length coverage, in numpy and numba.

Why not pybigtools' writer: it takes one Python tuple per interval, which made writing
bp-resolution coverage (tens of millions of intervals) the slowest step of
``pseudobulk_with_fragments``. Here the intervals stay numpy arrays: sections of
:data:`ITEMS_PER_SLOT` bedGraph items are packed with structured dtypes and deflated by
libdeflate (the ``deflate`` package; zlib streams, as the format wants), the zoom summaries
come from one numba pass, and both indexes (the chromosome B+ tree and the R-trees, in
:mod:`p2g_dask.io._bbi_index`) are built from arrays. The tests read the files back with
pybigtools and with libBigWig (pyBigWig).

Layout written (the UCSC bbi format; all integers little-endian)::

    header (64 bytes) | zoom headers (24 bytes each) | total summary (40 bytes)
    | chromosome B+ tree | data count (uint64) + zlib-format sections | data R-tree
    | per zoom level: record count (uint32) + zlib record blocks + R-tree | magic

Zoom records cover aligned bins of the reduction (clipped to the covered bases); the first
reduction is the smallest of ``10 x bin width x 2**k`` whose records take at most half the
bytes of the data (as UCSC's bedGraphToBigWig decides), each further level is 4x coarser.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence

import deflate
import numba
import numpy as np

from p2g_dask.io._bbi_index import chrom_tree_bytes, rtree_bytes

BIGWIG_MAGIC = 0x888FFC26
ITEMS_PER_SLOT = 1024
ZOOM_INCREMENT = 4
MAX_ZOOM_LEVELS = 10
# libdeflate at level 2 packs bp coverage as tightly as zlib's default level 6, 5x faster
# (2.2x faster than zlib level 1); readers see plain zlib streams.
DEFLATE_LEVEL = 2

SECTION_HEADER = np.dtype([("chrom", "<u4"), ("start", "<u4"), ("end", "<u4"), ("step", "<u4"),
                           ("span", "<u4"), ("type", "u1"), ("reserved", "u1"), ("count", "<u2")])
BEDGRAPH_ITEM = np.dtype([("start", "<u4"), ("end", "<u4"), ("value", "<f4")])
ZOOM_RECORD = np.dtype([("chrom", "<u4"), ("start", "<u4"), ("end", "<u4"), ("valid", "<u4"),
                        ("min", "<f4"), ("max", "<f4"), ("sum", "<f4"), ("sumsq", "<f4")])
_BEDGRAPH = 1


class _Blocks:
    """Compressed blocks of one file part, with the R-tree keys of each block."""

    def __init__(self):
        self.data: list[bytes] = []
        self.chrom: list[int] = []
        self.start: list[int] = []
        self.end: list[int] = []
        self.max_raw = 0

    def add(self, chrom_id: int, start: int, end: int, raw: bytes) -> None:
        self.data.append(deflate.zlib_compress(raw, DEFLATE_LEVEL))
        self.chrom.append(chrom_id)
        self.start.append(start)
        self.end.append(end)
        self.max_raw = max(self.max_raw, len(raw))


def _data_blocks(chrom_id: int, start: np.ndarray, end: np.ndarray, value: np.ndarray, out: _Blocks) -> None:
    items = np.empty(start.size, BEDGRAPH_ITEM)
    items["start"] = start
    items["end"] = end
    items["value"] = value
    header = np.zeros(1, SECTION_HEADER)
    header["chrom"] = chrom_id
    header["type"] = _BEDGRAPH
    for lo in range(0, start.size, ITEMS_PER_SLOT):
        hi = min(lo + ITEMS_PER_SLOT, start.size)
        header["start"], header["end"], header["count"] = start[lo], end[hi - 1], hi - lo
        out.add(chrom_id, int(start[lo]), int(end[hi - 1]), header.tobytes() + items[lo:hi].tobytes())


@numba.njit(cache=True, nogil=True)
def _count_bins(start, end, finest, n_levels):
    # Zoom records (bins with a covered base) at reductions finest * 2**j, j < n_levels.
    counts = np.zeros(n_levels, np.int64)
    last = np.full(n_levels, -1, np.int64)
    for i in range(start.size):
        b0 = start[i] // finest
        b1 = (end[i] - 1) // finest
        for j in range(n_levels):
            if b0 == last[j] and b1 == b0:
                break  # inside a bin already counted here, hence at every coarser level too
            counts[j] += b1 - b0 + 1 - (1 if b0 == last[j] else 0)
            last[j] = b1
            b0 >>= 1
            b1 >>= 1
    return counts


@numba.njit(cache=True, nogil=True)
def _zoom_from_runs(start, end, value, reduction):
    n_out = 0
    last = -1
    for i in range(start.size):
        b0 = start[i] // reduction
        b1 = (end[i] - 1) // reduction
        n_out += b1 - b0 + 1 - (1 if b0 == last else 0)
        last = b1
    rec_start = np.empty(n_out, np.int64)
    rec_end = np.empty(n_out, np.int64)
    valid = np.zeros(n_out, np.int64)
    lo_val = np.empty(n_out, np.float64)
    hi_val = np.empty(n_out, np.float64)
    total = np.zeros(n_out, np.float64)
    squares = np.zeros(n_out, np.float64)
    k = -1
    current = -1
    for i in range(start.size):
        v = np.float64(value[i])
        for b in range(start[i] // reduction, (end[i] - 1) // reduction + 1):
            lo = max(start[i], b * reduction)
            hi = min(end[i], (b + 1) * reduction)
            if b != current:
                k += 1
                current = b
                rec_start[k] = lo
                lo_val[k] = v
                hi_val[k] = v
            rec_end[k] = hi
            w = hi - lo
            valid[k] += w
            lo_val[k] = min(lo_val[k], v)
            hi_val[k] = max(hi_val[k], v)
            total[k] += v * w
            squares[k] += v * v * w
    return rec_start, rec_end, valid, lo_val, hi_val, total, squares


def _reduce_zoom(level: tuple, reduction: int) -> tuple:
    """Fold records of a finer level into bins of ``reduction`` (a multiple of the finer one)."""
    rec_start, rec_end, valid, lo_val, hi_val, total, squares = level
    if rec_start.size == 0:
        return level
    key = rec_start // reduction
    first = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
    last = np.concatenate([first[1:] - 1, [key.size - 1]])
    return (rec_start[first], rec_end[last], np.add.reduceat(valid, first), np.minimum.reduceat(lo_val, first),
            np.maximum.reduceat(hi_val, first), np.add.reduceat(total, first), np.add.reduceat(squares, first))


def choose_reductions(runs: Sequence[tuple[np.ndarray, np.ndarray]], *, min_width: int, longest: int) -> list[int]:
    """Zoom reductions for these (start, end) runs: first level at most half the data's bytes.

    Parameters
    ----------
    runs
        ``(start, end)`` arrays per chromosome, sorted and non-overlapping.
    min_width
        Smallest interval width (the bin size): the first candidate is ``10 * min_width``.
    longest
        Longest chromosome: no reduction reaches it.

    Returns
    -------
    list of int
        Reductions in bases, finest first, each 4x the previous; empty when no level would
        take at most half the bytes of the data (or there are no runs).

    Examples
    --------
    >>> s = np.arange(0, 1_000_000, 100); e = s + 1
    >>> choose_reductions([(s, e)], min_width=1, longest=1_000_000)[:3]
    [640, 2560, 10240]
    """
    n_items = sum(int(s.size) for s, _ in runs)
    if n_items == 0:
        return []
    candidates = []
    r = 10 * max(1, int(min_width))
    while r < longest and len(candidates) < 40:
        candidates.append(r)
        r *= 2
    if not candidates:
        return []
    counts = np.zeros(len(candidates), np.int64)
    for s, e in runs:
        if s.size:
            counts += _count_bins(s.astype(np.int64, copy=False), e.astype(np.int64, copy=False),
                                  np.int64(candidates[0]), len(candidates))
    data_bytes = n_items * BEDGRAPH_ITEM.itemsize
    first = next((i for i, c in enumerate(counts) if c * ZOOM_RECORD.itemsize * 2 <= data_bytes), None)
    if first is None:
        return []
    reductions = [candidates[first]]
    previous = counts[first]
    i = first
    while len(reductions) < MAX_ZOOM_LEVELS:
        i += 2  # candidates double, levels grow by ZOOM_INCREMENT = 4
        if i >= len(candidates) or counts[i] >= previous:
            break
        reductions.append(candidates[i])
        previous = counts[i]
    return reductions


def _zoom_blocks(chrom_id: int, level: tuple, out: _Blocks) -> int:
    rec_start, rec_end, valid, lo_val, hi_val, total, squares = level
    records = np.empty(rec_start.size, ZOOM_RECORD)
    records["chrom"] = chrom_id
    records["start"] = rec_start
    records["end"] = rec_end
    records["valid"] = valid
    records["min"] = lo_val
    records["max"] = hi_val
    records["sum"] = total
    records["sumsq"] = squares
    for lo in range(0, records.size, ITEMS_PER_SLOT):
        hi = min(lo + ITEMS_PER_SLOT, records.size)
        out.add(chrom_id, int(rec_start[lo]), int(rec_end[hi - 1]), records[lo:hi].tobytes())
    return records.size


def _block_index(blocks: _Blocks, offsets: np.ndarray, base: int) -> bytes:
    """The R-tree of ``blocks`` written at file ``offsets``, to be placed at ``base`` (where their data end)."""
    return rtree_bytes(blocks.chrom, blocks.start, blocks.end, offsets, [len(b) for b in blocks.data], base=base,
                       end_of_data=base, items_per_slot=ITEMS_PER_SLOT)


def _write_blocks(fh, blocks: _Blocks) -> np.ndarray:
    offsets = np.empty(len(blocks.data), np.uint64)
    position = fh.tell()
    for i, data in enumerate(blocks.data):
        offsets[i] = position
        fh.write(data)
        position += len(data)
    return offsets


def write_runs_bigwig(
    path: str | os.PathLike,
    chrom_sizes: Mapping[str, int],
    runs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    min_width: int = 1,
) -> dict:
    """Write sorted, non-overlapping ``(start, end, value)`` runs per chromosome to a BigWig.

    Only chromosomes of ``runs`` go into the file (in sorted name order, as UCSC's tools do);
    values are stored as float32. No checks: the caller validates the runs.

    Parameters
    ----------
    path
        File to write (overwritten).
    chrom_sizes
        Length of every chromosome in ``runs``.
    runs
        ``{chrom: (start, end, value)}``, 0-based half-open, sorted, non-overlapping.
    min_width
        Smallest interval width (the bin size), which sets the finest zoom level tried.

    Returns
    -------
    dict
        The header's summary (:func:`runs_summary`: ``n_intervals``, ``bases_covered``,
        ``min``, ``max``, ``sum``, ``sum_squares``) and ``zoom_levels`` (reductions).

    Examples
    --------
    >>> import tempfile, pathlib, pybigtools
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bw"
    >>> info = write_runs_bigwig(p, {"chr1": 100}, {"chr1": (np.array([10]), np.array([20]), np.array([1.5]))})
    >>> pybigtools.open(str(p)).values("chr1", 9, 11, fillna=0).tolist()
    [0.0, 1.5]
    """
    names = sorted(runs, key=lambda c: c.encode())
    data = _Blocks()
    for chrom_id, chrom in enumerate(names):
        start, end, value = runs[chrom]
        _data_blocks(chrom_id, start, end, np.asarray(value, np.float32), data)
    summary = runs_summary(runs)

    longest = max((int(chrom_sizes[c]) for c in names), default=0)
    reductions = choose_reductions([(runs[c][0], runs[c][1]) for c in names], min_width=min_width, longest=longest)
    zooms = []
    finest = [None] * len(names)
    for reduction in reductions:
        blocks = _Blocks()
        n_records = 0
        for chrom_id, chrom in enumerate(names):
            start, end, value = runs[chrom]
            if finest[chrom_id] is None:
                finest[chrom_id] = _zoom_from_runs(np.asarray(start, np.int64), np.asarray(end, np.int64),
                                                   np.asarray(value, np.float32), np.int64(reduction))
            else:
                finest[chrom_id] = _reduce_zoom(finest[chrom_id], reduction)
            n_records += _zoom_blocks(chrom_id, finest[chrom_id], blocks)
        zooms.append((reduction, n_records, blocks))

    with open(path, "wb") as fh:
        fh.write(bytes(64 + 24 * len(zooms)))
        summary_offset = fh.tell()
        fh.write(struct.pack("<Qdddd", summary["bases_covered"], summary["min"], summary["max"], summary["sum"],
                             summary["sum_squares"]))
        chrom_tree_offset = fh.tell()
        fh.write(chrom_tree_bytes([c.encode() for c in names], [int(chrom_sizes[c]) for c in names], chrom_tree_offset))
        data_offset = fh.tell()
        fh.write(struct.pack("<Q", len(data.data)))
        offsets = _write_blocks(fh, data)
        index_offset = fh.tell()
        fh.write(_block_index(data, offsets, index_offset))
        zoom_headers = []
        for reduction, n_records, blocks in zooms:
            zoom_data = fh.tell()
            fh.write(struct.pack("<I", n_records))
            offsets = _write_blocks(fh, blocks)
            zoom_index = fh.tell()
            fh.write(_block_index(blocks, offsets, zoom_index))
            zoom_headers.append(struct.pack("<IIQQ", reduction, 0, zoom_data, zoom_index))
        fh.write(struct.pack("<I", BIGWIG_MAGIC))
        uncompress_buf = max([data.max_raw] + [blocks.max_raw for _, _, blocks in zooms])
        fh.seek(0)
        fh.write(struct.pack("<IHHQQQHHQQIQ", BIGWIG_MAGIC, 4, len(zooms), chrom_tree_offset, data_offset,
                             index_offset, 0, 0, 0, summary_offset, uncompress_buf, 0))
        fh.write(b"".join(zoom_headers))
    return {**summary, "zoom_levels": reductions}


def runs_summary(runs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """The BigWig header's total summary of ``{chrom: (start, end, value)}`` runs, values as float32.

    Examples
    --------
    >>> runs_summary({"chr1": (np.array([0, 10]), np.array([5, 12]), np.array([1.0, 3.0]))})["sum"]
    11.0
    """
    out = {"n_intervals": 0, "bases_covered": 0, "min": math.inf, "max": -math.inf, "sum": 0.0, "sum_squares": 0.0}
    for start, end, value in runs.values():  # chromosome by chromosome: temporaries stay small
        if len(start) == 0:
            continue
        width = (np.asarray(end, np.int64) - start).astype(np.float64)
        v = np.asarray(value, np.float32).astype(np.float64)  # the stored float32 values
        out["n_intervals"] += len(start)
        out["bases_covered"] += int(width.sum())
        out["min"], out["max"] = min(out["min"], float(v.min())), max(out["max"], float(v.max()))
        out["sum"] += float((v * width).sum())
        out["sum_squares"] += float((v * v * width).sum())
    if out["n_intervals"] == 0:
        out["min"] = out["max"] = 0.0
    return out
