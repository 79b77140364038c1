"""Columns of the metacell sums: a chromosome's columns gathered where the sums live (only those
columns move between workers)."""

from __future__ import annotations

import numpy as np
from dask.delayed import Delayed, delayed

from p2g_dask.tl.engine.accumulate import ColumnBlock, add_sums


def lane_columns(blocks: list[ColumnBlock], columns: np.ndarray, key: str) -> Delayed:
    """A task holding ``columns`` (global positions) of the sums, moving only those columns.

    With lanes, each lane's columns are taken where the lane lives and the parts are added;
    otherwise the columns are taken from the summed blocks. The columns of a single lane keep
    its dtype, which may be exact-count uint16 (half the bytes to move, no copy): consumers
    normalise them in float64 (``standardized_features``, ``normalize_log2``).
    """
    needed = blocks_for(blocks, columns)
    starts = [b.first for b in needed]
    if not all(b.lanes for b in needed) or len({len(b.lanes) for b in needed}) != 1:
        return delayed(take_block_columns, pure=True)(columns, starts, *[b.sums for b in needed],
                                                      dask_key_name=key)
    n_lanes = len(needed[0].lanes)
    if n_lanes == 1:
        return delayed(take_block_columns, pure=True)(columns, starts, *[b.lanes[0] for b in needed],
                                                      dask_key_name=key)
    parts = [
        delayed(take_block_columns, pure=True)(columns, starts, *[b.lanes[lane] for b in needed],
                                               dask_key_name=f"{key}-{lane}")
        for lane in range(n_lanes)
    ]
    return delayed(add_sums, pure=True)(*parts, dask_key_name=key)


def take_block_columns(columns: np.ndarray, block_starts: list[int], *block_sums: np.ndarray) -> np.ndarray:
    """Columns ``columns`` (global positions) gathered from the column blocks that hold them."""
    columns = np.asarray(columns, dtype=np.int64)
    n_rows = block_sums[0].shape[0] if block_sums else 0
    out = np.empty((n_rows, columns.size), dtype=np.result_type(*(sums.dtype for sums in block_sums))
                   if block_sums else np.float32)
    for first, sums in zip(block_starts, block_sums):
        inside = (columns >= first) & (columns < first + sums.shape[1])
        if inside.all() and columns.size and columns[-1] - columns[0] + 1 == columns.size:
            # A view, not a copy: the correlation kernels read any strides, and a view sent to
            # another worker is serialised as its own columns only.
            return sums[:, columns[0] - first : columns[-1] - first + 1]
        if inside.all():
            return sums[:, columns - first]  # one gather (2x np.take along axis 1), no boolean scatter
        out[:, inside] = sums[:, columns[inside] - first]
    return out


def blocks_for(blocks: list["ColumnBlock"], columns: np.ndarray) -> list["ColumnBlock"]:
    """The column blocks that hold any of ``columns``."""
    columns = np.asarray(columns)
    if columns.size == 0:
        return blocks[:1]
    return [b for b in blocks if ((columns >= b.first) & (columns < b.stop)).any()]
