"""The second step of :func:`p2g_dask.io.ingest_samples`: staged units -> one store.

Why two steps: a store's ``X`` is one CSR over all cells, its ``data``/``indices`` cut into
fixed chunks of 2^20 entries. Where a sample's entries start depends on every earlier sample's
count of non-zeros, and a sample boundary falls inside a chunk, so samples written in parallel
straight into the store would write the same chunk file. Instead each (sample, block of cells)
is first written as a staged unit of its own; once every sample is in, the offsets are known and
each task here writes whole, distinct chunk files (``p2g-ingest-assemble``: a run of
:data:`CHUNKS_PER_TASK` chunks of one array, read from the units it overlaps), so no two tasks
ever write one chunk. Then the client writes obs/var and the store's attributes.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import zarr
from dask.base import tokenize

#: Chunks of 2^20 entries written per assembling task (32 MiB of int32 values).
CHUNKS_PER_TASK = 8


def _unit_array(unit: str, modality: str, name: str):
    return zarr.open_array(str(Path(unit) / modality / name), mode="r")


def copy_entries(target: str, units: list[str], offsets: np.ndarray, modality: str, name: str, lo: int, hi: int) -> int:
    """One task: entries ``lo:hi`` of the store's ``<modality>/X/<name>`` from the staged units.

    ``offsets[u]`` is the first entry of unit ``u``; ``lo`` is chunk-aligned and ``hi`` is a chunk
    boundary or the array's end, so the task writes whole chunk files of its own.
    """
    first = int(np.searchsorted(offsets, lo, side="right")) - 1
    pieces = []
    u = max(first, 0)
    while u < len(units) and offsets[u] < hi:
        a, b = max(lo, int(offsets[u])), min(hi, int(offsets[u + 1]))
        if b > a:
            pieces.append(_unit_array(units[u], modality, name)[a - int(offsets[u]) : b - int(offsets[u])])
        u += 1
    values = np.concatenate(pieces) if pieces else np.empty(0)
    array = zarr.open_array(str(Path(target) / modality / "X" / name), mode="r+")
    array[lo:hi] = values.astype(array.dtype, copy=False)
    return hi - lo


def copy_indptr(target: str, units: list[str], row_offsets: np.ndarray, nnz_offsets: np.ndarray, modality: str,
                lo: int, hi: int) -> int:
    """One task: ``indptr[lo:hi]`` of ``<modality>/X`` from the units' per-row counts."""
    values = np.empty(hi - lo, np.int64)
    u = max(int(np.searchsorted(row_offsets, lo, side="right")) - 1, 0)
    position = lo
    while position < hi:
        if u >= len(units):  # the final entry, indptr[n_obs]
            values[position - lo] = nnz_offsets[-1]
            position += 1
            continue
        a, b = int(row_offsets[u]), int(row_offsets[u + 1])
        if b <= position:
            u += 1
            continue
        row_nnz = _unit_array(units[u], modality, "row_nnz")[:]
        # indptr[r] for rows a..b-1 of the unit: the unit's first entry plus the entries before r.
        starts = nnz_offsets[u] + np.concatenate([[0], np.cumsum(row_nnz)[:-1]]).astype(np.int64)
        take = slice(position - a, min(b, hi) - a)
        chunk = starts[take]
        values[position - lo : position - lo + chunk.size] = chunk
        position += chunk.size
        u += 1
    array = zarr.open_array(str(Path(target) / modality / "X" / "indptr"), mode="r+")
    array[lo:hi] = values
    return hi - lo


def assemble_tasks(target: str, units: list[str], rows: np.ndarray, nnz: dict[str, np.ndarray],
                   chunk: int) -> list:
    """The ``p2g-ingest-assemble`` tasks filling the store's count arrays from the staged units.

    ``rows[u]`` is the number of cells of unit ``u`` and ``nnz[modality][u]`` its entries; the
    arrays must exist with their final shapes (the client creates them).
    """
    row_offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    step = chunk * CHUNKS_PER_TASK
    tasks = []
    token = tokenize(target, units, rows, {m: v.tolist() for m, v in nnz.items()})
    for modality, counts in nnz.items():
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        for name in ("data", "indices"):
            for lo in range(0, int(offsets[-1]), step):
                hi = min(lo + step, int(offsets[-1]))
                tasks.append(dask.delayed(copy_entries, pure=True)(
                    target, units, offsets, modality, name, lo, hi,
                    dask_key_name=f"p2g-ingest-assemble-{tokenize(token, modality, name, lo)}"))
        n_ptr = int(row_offsets[-1]) + 1
        for lo in range(0, n_ptr, step):
            hi = min(lo + step, n_ptr)
            tasks.append(dask.delayed(copy_indptr, pure=True)(
                target, units, row_offsets, offsets, modality, lo, hi,
                dask_key_name=f"p2g-ingest-assemble-{tokenize(token, modality, 'indptr', lo)}"))
    return tasks
