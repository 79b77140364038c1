"""A store proves its own integrity: chunk presence, crc32c checksums and CSR invariants.

Ingest writes the count arrays (``<modality>/X/{data,indices,indptr}``) with zarr's ``crc32c``
codec after the compressor and with every chunk written (``write_empty_chunks``), and marks the
store ``p2g_integrity: "crc32c"``. Zarr fills a missing chunk with the fill value without a word
(every count would land on peak 0), so:

- opening a store checks that every expected chunk file of ``X`` is there (:func:`require_chunks`),
- reading a block (:func:`read_block`) checks the chunks it reads are there and their checksums
  (decoded directly by :mod:`p2g_dask.io._chunks`, 3.5x faster than zarr's pipeline; zarr re-reads
  any range that fails, to name the chunk), and the block's CSR invariants are checked
  (:func:`p2g_dask._variables.csr_block_problem`; a reader of some rows only, like the metacell
  sums, checks those rows: :func:`read_pieces`),
- :func:`p2g_dask.io.verify.verify_store` (``p2g verify STORE``) reads every chunk once.

Stores of the previous version (no ``p2g_integrity``) still open: their chunk presence and CSR
invariants are checked, there is no checksum to check.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numba
import numpy as np

from p2g_dask._errors import InputFileError
from p2g_dask.io._chunks import chunk_key, direct_layout, prefetch, read_range, thread_buffers

#: Root attribute of a store whose count arrays carry a crc32c checksum per chunk.
INTEGRITY_ATTR = "p2g_integrity"
X_ARRAYS = ("data", "indices", "indptr")
_FIX = "re-ingest the data with p2g.io.ingest (p2g ingest), or restore the store from a good copy"


def _array_meta(path: str, modality: str, name: str) -> dict:
    meta_file = Path(path) / modality / "X" / name / "zarr.json"
    try:
        return json.loads(meta_file.read_text())
    except (OSError, ValueError) as err:
        raise InputFileError("store", path, f"lacks the array {modality}/X/{name} (its zarr.json is missing or "
                             "damaged)", _FIX) from err


def _chunk_file(path: str, modality: str, name: str, index: int, meta: dict) -> Path:
    return Path(path) / modality / "X" / name / chunk_key(index, meta.get("chunk_key_encoding"))


def require_chunks(path: str, modality: str, name: str, first: int = 0, stop: int | None = None) -> int:
    """Raise :class:`InputFileError` naming the chunk when a chunk file of elements ``first:stop``
    of ``<modality>/X/<name>`` is missing; returns the number of chunks checked.

    Examples
    --------
    >>> import tempfile, p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=50, n_peaks=100, n_genes=20, n_linked_genes=2)
    >>> store = p2g.io.ingest(sim.atac, sim.rna, tempfile.mkdtemp() + "/s.zarr")
    >>> require_chunks(store.path, "atac", "indices")
    1
    """
    meta = _array_meta(path, modality, name)
    size, chunk = int(meta["shape"][0]), int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    stop = size if stop is None else min(stop, size)
    if stop <= first:
        return 0
    ids = range(first // chunk, math.ceil(stop / chunk))
    for i in ids:
        if not _chunk_file(path, modality, name, i, meta).is_file():
            raise InputFileError(
                "store", path, f"is damaged: chunk {modality}/X/{name}/c/{i} is missing (elements {i * chunk:,}-"
                f"{min(size, (i + 1) * chunk):,} of {size:,}), so its counts would silently read as zeros", _FIX)
    return len(ids)


def _locate_bad_chunk(path: str, modality: str, arrays: dict, spans: dict, err: BaseException) -> InputFileError:
    """The chunk whose decoding fails, found by reading the chunks of the failed read one by one."""
    for name, (lo, hi) in spans.items():
        array = arrays[name]
        chunk = int(array.chunks[0])
        for i in range(lo // chunk, max(lo // chunk, math.ceil(hi / chunk))):
            try:
                array[i * chunk : min(array.shape[0], (i + 1) * chunk)]
            except Exception as chunk_err:  # noqa: BLE001 - any decode failure names this chunk
                return InputFileError("store", path, f"is damaged: chunk {modality}/X/{name}/c/{i} fails its "
                                      f"checksum or cannot be decoded ({chunk_err})", _FIX)
    return InputFileError("store", path, f"is damaged: reading {modality}/X failed ({err})", _FIX)


def read_block(path: str, modality: str, start: int, stop: int, n_vars: int):
    """Rows ``start:stop`` of ``<modality>/X`` as raw CSR arrays, verified.

    Returns ``(data, indices, indptr)`` with ``indptr`` rebased to 0, after checking that every
    chunk read is present, that zarr's crc32c checks pass (stores with checksums) and that the
    block keeps the CSR invariants; raises :class:`InputFileError` naming the store and the chunk.
    """
    direct = _read_direct(path, modality, start, stop)
    if direct is not None:
        data, indices, indptr = direct
        lo, hi = int(indptr[0]), int(indptr[-1])
    else:
        data, indices, indptr, lo, hi = _read_through_zarr(path, modality, start, stop)
    indptr = indptr - lo
    _require_csr(path, modality, start, stop, indptr, indices, n_vars)
    return data, indices, indptr


def _require_csr(path: str, modality: str, start: int, stop: int, indptr: np.ndarray, indices: np.ndarray,
                 n_vars: int, rows: np.ndarray | None = None) -> None:
    """Raise :class:`InputFileError` when rows ``start:stop`` (``indptr`` rebased to 0) break the
    CSR format; only ``rows`` (positions in the block) are checked when given."""
    nnz = indices.size if indptr.size == 0 else int(indptr[-1])
    # One compiled pass decides; only a failing block pays for the numpy check that names the problem.
    if rows is None and _csr_block_ok(indptr, indices, n_vars, nnz):
        return
    if rows is not None and indptr.size and indptr[0] == 0 and indices.size == nnz and bool(
            _csr_some_rows_ok(np.asarray(indptr, dtype=np.int64), indices, int(n_vars), np.asarray(rows, np.int64))):
        return
    from p2g_dask._variables import csr_block_problem

    problem = csr_block_problem(indptr, indices, n_vars, nnz)
    if not problem and rows is not None:
        problem = "a row's positions are outside the block"
    if problem:
        raise InputFileError("store", path, f"is damaged: rows {start}-{stop} of {modality}/X break the CSR "
                             f"format ({problem})", _FIX)


#: Entries per piece of :func:`read_pieces` (16 MiB of int32 data and indices).
PIECE_ENTRIES = 2**21


def read_pieces(path: str, modality: str, start: int, stop: int, n_vars: int, max_entries: int | None = None,
                rows: np.ndarray | None = None, reuse: bool = False):
    """Rows ``start:stop`` of ``<modality>/X`` as consecutive verified pieces of about
    ``max_entries`` stored entries each (:data:`PIECE_ENTRIES` when None; a row is never split).

    ``rows`` (sorted positions relative to ``start``), when given, are the only rows the caller
    will use: the CSR invariants are checked on those rows only (their bounds within the piece,
    their columns increasing and below ``n_vars``). The chunks' checksums are checked either
    way; the metacell sums, which use ~5 % of an atlas's cells, skip ~15 % of their work so.

    Yields ``(first, stop, (data, indices, indptr))`` with rows relative to ``start`` and each
    piece's ``indptr`` rebased to 0, checked as :func:`read_block` checks a block. A caller that
    folds each piece into its result before reading the next holds one piece at a time instead
    of the whole range (a fifth of the memory for a store's ~96 MiB row chunks), and every chunk
    is still decoded once. Once a piece cannot be read directly, the rest of the range is read by
    :func:`read_block` (zarr names a damaged chunk).

    ``reuse``: the pieces' ``data`` and ``indices`` are decoded into this thread's reused buffers
    (:func:`p2g_dask.io._chunks.thread_buffers`), so each piece is valid only until the next one
    is asked for (or another reusing read runs on the thread): for a consumer that folds each
    piece in at once, in a worker process 1.5x faster than new arrays.
    """
    max_entries = PIECE_ENTRIES if max_entries is None else int(max_entries)
    layouts = _direct_layouts(path, modality)
    indptr = None
    if layouts is not None:
        try:
            indptr = read_range(layouts["indptr"], start, stop + 1)
        except Exception:  # noqa: BLE001 - read_block reads again and reports it
            indptr = None
    if indptr is None or indptr.size < 2:
        yield 0, stop - start, read_block(path, modality, start, stop, n_vars)
        return
    # Row cuts every ~max_entries entries (a row longer than that is a piece of its own; a range
    # of fewer entries is one piece).
    # The range's chunk files are read from disk by the kernel while the first pieces decode.
    for name in ("data", "indices"):
        prefetch(layouts[name], int(indptr[0]), int(indptr[-1]))
    targets = np.arange(int(indptr[0]) + max_entries, int(indptr[-1]), max_entries)
    cuts = np.unique(np.concatenate([[0], np.searchsorted(indptr, targets, side="right") - 1, [stop - start]]))
    carries = {"data": {}, "indices": {}}
    buffers = {name: thread_buffers(name) if reuse else None for name in carries}
    for first, last in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        lo, hi = int(indptr[first]), int(indptr[last])
        try:
            data = read_range(layouts["data"], lo, hi, carries["data"], buffers["data"])
            indices = read_range(layouts["indices"], lo, hi, carries["indices"], buffers["indices"])
        except Exception:  # noqa: BLE001 - the rest through read_block, which names the problem
            yield first, stop - start, read_block(path, modality, start + first, stop, n_vars)
            return
        piece_indptr = indptr[first : last + 1] - lo
        if rows is None:
            _require_csr(path, modality, start + first, start + last, piece_indptr, indices, n_vars)
        else:
            used = rows[np.searchsorted(rows, first):np.searchsorted(rows, last)] - first
            _require_csr(path, modality, start + first, start + last, piece_indptr, indices, n_vars, used)
        yield first, last, (data, indices, piece_indptr)


def _direct_layouts(path: str, modality: str) -> dict | None:
    """The direct layouts of the three arrays of ``<modality>/X``, or None when one is not readable so."""
    try:
        layouts = {name: direct_layout(Path(path) / modality / "X" / name, _array_meta(path, modality, name))
                   for name in X_ARRAYS}
    except Exception:  # noqa: BLE001 - read_block reads through zarr and reports it
        return None
    return None if any(layout is None for layout in layouts.values()) else layouts


def _read_direct(path: str, modality: str, start: int, stop: int):
    """``(data, indices, indptr)`` decoded by :mod:`p2g_dask.io._chunks`, or None when an array's
    layout is not the one it reads or any chunk fails (zarr then re-reads and names the problem)."""
    layouts = _direct_layouts(path, modality)
    if layouts is None:
        return None
    try:
        indptr = read_range(layouts["indptr"], start, stop + 1)
        lo, hi = int(indptr[0]), int(indptr[-1])
        return read_range(layouts["data"], lo, hi), read_range(layouts["indices"], lo, hi), indptr
    except Exception:  # noqa: BLE001 - any failure: the zarr path reads again and reports it
        return None


def _read_through_zarr(path: str, modality: str, start: int, stop: int):
    import zarr

    try:
        group = zarr.open_group(path, mode="r")[f"{modality}/X"]
        arrays = {name: group[name] for name in X_ARRAYS}
    except (KeyError, OSError, ValueError) as err:
        raise InputFileError("store", path, f"lacks the array {modality}/X ({err})", _FIX) from err
    spans = {"indptr": (start, stop + 1)}
    try:
        require_chunks(path, modality, "indptr", start, stop + 1)
        indptr = arrays["indptr"][start : stop + 1]
        lo, hi = int(indptr[0]), int(indptr[-1])
        spans.update(data=(lo, hi), indices=(lo, hi))
        require_chunks(path, modality, "indices", lo, hi)
        require_chunks(path, modality, "data", lo, hi)
        data, indices = arrays["data"][lo:hi], arrays["indices"][lo:hi]
    except InputFileError:
        raise
    except Exception as err:  # noqa: BLE001 - zarr/numcodecs raise plain errors on a bad chunk
        raise _locate_bad_chunk(path, modality, arrays, spans, err) from err
    return data, indices, indptr, lo, hi


def _csr_block_ok(indptr: np.ndarray, indices: np.ndarray, n_vars: int, nnz: int) -> bool:
    """The CSR invariants of :func:`p2g_dask._variables.csr_block_problem`, in one compiled pass (8x)."""
    if indptr.size == 0 or indptr[0] != 0 or int(indptr[-1]) != nnz or indices.size != nnz:
        return False
    return bool(_csr_rows_ok(np.asarray(indptr, dtype=np.int64), indices, int(n_vars)))


@numba.njit(cache=True, nogil=True)
def _csr_rows_ok(indptr, indices, n_vars):  # pragma: no cover - jit
    for row in range(indptr.size - 1):
        start, stop = indptr[row], indptr[row + 1]
        if stop < start or not _row_columns_ok(indices, start, stop, n_vars):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _csr_some_rows_ok(indptr, indices, n_vars, rows):  # pragma: no cover - jit
    nnz = indices.size
    for row in rows:
        start, stop = indptr[row], indptr[row + 1]
        if start < 0 or stop < start or stop > nnz or not _row_columns_ok(indices, start, stop, n_vars):
            return False
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def _row_columns_ok(indices, start, stop, n_vars):  # pragma: no cover - jit
    # One row's columns: strictly increasing and below n_vars.
    previous = -1
    for p in range(start, stop):
        column = indices[p]
        if column <= previous or column >= n_vars:
            return False
        previous = column
    return True


def check_store_chunks(path: str, modalities=("atac", "rna")) -> int:
    """Check every expected chunk file of the count arrays is present; returns the chunk count."""
    return sum(require_chunks(path, m, name) for m in modalities for name in X_ARRAYS)


def first_indptr_ok(path: str, modality: str) -> None:
    """The whole ``indptr`` ends at the number of stored entries (a cheap check at opening)."""
    import zarr

    group = zarr.open_group(path, mode="r")[f"{modality}/X"]
    n = group["indptr"].shape[0]
    last = int(np.asarray(group["indptr"][n - 1 : n])[0]) if n else 0
    if last != group["data"].shape[0] or group["indices"].shape[0] != group["data"].shape[0]:
        raise InputFileError("store", path, f"is damaged: {modality}/X has {group['data'].shape[0]:,} entries but "
                             f"indptr ends at {last:,}", _FIX)
