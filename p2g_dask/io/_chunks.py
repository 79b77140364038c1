"""Direct reads of a store's 1-D count arrays: chunk files decoded with one blosc call each.

Zarr 3's codec pipeline costs ~3.5x the decoding itself on these arrays (an event loop, buffer
prototypes and a copy per chunk: 0.52 s against 0.15 s for the 250 MB of PBMC10k's ATAC
indices). The arrays ingest writes have one fixed layout, a regular 1-D chunk grid encoded as
``bytes (little endian) -> blosc [-> crc32c]``, so this module reads exactly that layout and
nothing else: :func:`direct_layout` returns None for any other array, and the caller then reads
through zarr. Every check zarr makes is made here too (the checksum of each chunk, the decoded
size); a chunk that fails one makes :func:`read_range` raise, and the caller lets zarr re-read
the range so that the error it reports is zarr's, naming the chunk.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import NamedTuple

import google_crc32c
import numpy as np
from numcodecs import blosc

_DTYPES = {"int32": np.int32, "int64": np.int64, "uint32": np.uint32, "uint64": np.uint64,
           "float32": np.float32, "float64": np.float64, "int16": np.int16, "uint16": np.uint16}


#: ``crc32c(payload + crc32c(payload).to_bytes(4, "little"))`` for every payload.
_CRC32C_RESIDUE = 0x48674BC7


class DirectLayout(NamedTuple):
    """What :func:`read_range` needs to decode an array's chunks by itself."""

    folder: Path
    size: int
    chunk: int
    dtype: np.dtype
    checksum: bool
    key_encoding: dict


def chunk_key(index: int, key_encoding: dict | None = None) -> str:
    """The file name of chunk ``index`` under a zarr 3 ``chunk_key_encoding`` (default: ``c/<index>``).

    Examples
    --------
    >>> chunk_key(3), chunk_key(3, {"name": "default", "configuration": {"separator": "."}})
    ('c/3', 'c.3')
    """
    key_encoding = key_encoding or {}
    if key_encoding.get("name", "default") != "default":
        return str(index)
    return f"c{key_encoding.get('configuration', {}).get('separator', '/')}{index}"


def direct_layout(folder: Path, meta: dict) -> DirectLayout | None:
    """The array's layout when it is one this module decodes (see the module docstring), else None.

    Examples
    --------
    >>> meta = {"zarr_format": 3, "shape": [10], "data_type": "int32",
    ...         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4]}},
    ...         "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "blosc"}]}
    >>> direct_layout(Path("x"), meta).chunk
    4
    >>> direct_layout(Path("x"), {**meta, "codecs": [{"name": "sharding_indexed"}]}) is None
    True
    """
    try:
        codecs = [c["name"] for c in meta["codecs"]]
        endian = meta["codecs"][0].get("configuration", {}).get("endian", "little")
        key = meta.get("chunk_key_encoding", {"name": "default"})
        ok = (meta.get("zarr_format") == 3 and len(meta["shape"]) == 1 and meta["data_type"] in _DTYPES
              and meta["chunk_grid"]["name"] == "regular" and codecs[:2] == ["bytes", "blosc"]
              and codecs[2:] in ([], ["crc32c"]) and endian == "little" and key["name"] == "default"
              and not meta.get("storage_transformers"))
        if not ok:
            return None
        return DirectLayout(folder, int(meta["shape"][0]), int(meta["chunk_grid"]["configuration"]["chunk_shape"][0]),
                            np.dtype(_DTYPES[meta["data_type"]]), codecs[2:] == ["crc32c"], key)
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def prefetch(layout: DirectLayout, first: int, stop: int) -> None:
    """Ask the operating system to start reading the chunk files of elements ``first:stop``.

    The reads run in the kernel while the caller decodes the chunks it already has: a store
    larger than memory (a 10M-cell atlas) is then read from disk and decoded at the same time
    instead of in turn. A no-op where ``posix_fadvise`` is missing; errors are left to the read.

    Examples
    --------
    >>> prefetch(DirectLayout(Path("nowhere"), 10, 4, np.dtype("int32"), False, {}), 0, 10)
    """
    if not hasattr(os, "posix_fadvise") or stop <= first:
        return
    for i in range(first // layout.chunk, math.ceil(min(stop, layout.size) / layout.chunk)):
        try:
            descriptor = os.open(layout.folder / chunk_key(i, layout.key_encoding), os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(descriptor)


class ReadBuffers:
    """Arrays that consecutive :func:`read_range` calls decode into, kept per thread.

    A new array per read costs page faults in worker processes: dask starts them with
    ``MALLOC_TRIM_THRESHOLD_=65536``, so every freed chunk-sized array goes back to the system
    and the next one is faulted in page by page again (measured: a summing task 1.5x slower).
    Reused buffers are faulted in once per thread. One instance per array read side by side
    (e.g. ``data`` and ``indices``); a read's result is valid until its buffers' next read.

    Examples
    --------
    >>> buffers = ReadBuffers()
    >>> a = buffers.get("out", 3, np.int32); b = buffers.get("out", 2, np.int32)
    >>> b.base is a.base
    True
    """

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def get(self, slot: str, size: int, dtype) -> np.ndarray:
        """A view of ``size`` elements of the slot's array (grown when too small)."""
        dtype = np.dtype(dtype)
        array = self._arrays.get((slot, dtype.str))
        if array is None or array.size < size:
            array = np.empty(max(size, 1), dtype=dtype)
            self._arrays[(slot, dtype.str)] = array
        return array[:size]


_THREAD_BUFFERS = threading.local()


def _read_into(path: Path, buffers: ReadBuffers) -> np.ndarray:
    """A chunk file's bytes in the buffers' ``raw`` slot, as a read-only uint8 view (what the
    checksum function takes)."""
    with open(path, "rb", buffering=0) as file:
        size = os.fstat(file.fileno()).st_size
        raw = buffers.get("raw", size, np.uint8)
        got = file.readinto(raw)
    if got != size:
        raise OSError(f"{path}: read {got} of {size} bytes")
    raw = raw.view()
    raw.flags.writeable = False
    return raw


def thread_buffers(name: str) -> ReadBuffers:
    """This thread's :class:`ReadBuffers` called ``name`` (made on first use).

    Examples
    --------
    >>> thread_buffers("data") is thread_buffers("data")
    True
    """
    pool = getattr(_THREAD_BUFFERS, "pool", None)
    if pool is None:
        pool = _THREAD_BUFFERS.pool = {}
    return pool.setdefault(name, ReadBuffers())


def read_range(layout: DirectLayout, first: int, stop: int, carry: dict | None = None,
               buffers: "ReadBuffers | None" = None) -> np.ndarray:
    """Elements ``first:stop`` of the array, decoded chunk by chunk straight into the result.

    ``carry``, a dict kept by a caller reading consecutive ranges, holds the last partly read
    chunk, so the chunk two ranges share is decoded (and its checksum checked) once.
    ``buffers``: decode into these reused arrays (:class:`ReadBuffers`) instead of new ones; the
    result is then a view that the next read with the same buffers overwrites.

    Raises ``ValueError`` when the range is outside the array (the last chunk's padding is not
    data) or a chunk's checksum or decoded size is wrong, ``OSError`` when a chunk file cannot be
    read.
    """
    if first < 0 or stop > layout.size:
        raise ValueError(f"elements {first}:{stop} are outside the array of {layout.size}")
    n = max(0, stop - first)
    out = np.empty(n, dtype=layout.dtype) if buffers is None else buffers.get("out", n, layout.dtype)
    if stop <= first:
        return out
    chunk_bytes = layout.chunk * layout.dtype.itemsize
    scratch = None
    for i in range(first // layout.chunk, math.ceil(stop / layout.chunk)):
        lo, hi = i * layout.chunk, (i + 1) * layout.chunk
        a, b = max(lo, first), min(hi, stop)
        if carry is not None and carry.get("index") == i:
            out[a - first : b - first] = carry["values"][a - lo : b - lo]
            continue
        path = layout.folder / chunk_key(i, layout.key_encoding)
        raw = path.read_bytes() if buffers is None else _read_into(path, buffers)
        if layout.checksum:
            # The CRC of a payload followed by its own CRC (little endian) is a constant: checked
            # on the file's bytes as read, without copying the payload out first (10x cheaper).
            payload = memoryview(raw)[:-4]
            if len(raw) < 4 or google_crc32c.value(raw) != _CRC32C_RESIDUE:
                raise ValueError(f"chunk {i} fails its crc32c checksum")
        else:
            payload = raw
        # Bytes 4-7 of a blosc header: the decoded size.
        if len(payload) < 16 or int.from_bytes(bytes(payload[4:8]), "little") != chunk_bytes:
            raise ValueError(f"chunk {i} decodes to the wrong size")
        if first <= lo and hi <= stop:  # a whole chunk: decoded in place
            blosc.decompress(payload, out[lo - first : hi - first])
            continue
        if buffers is not None:
            # Two scratch chunks in turn: the carried one may still be read by the next range.
            spare = "scratch-b" if carry is not None and carry.get("slot") == "scratch-a" else "scratch-a"
            scratch = buffers.get(spare, layout.chunk, layout.dtype)
            if carry is not None:
                carry["slot"] = spare
        elif scratch is None or carry is not None:
            scratch = np.empty(layout.chunk, dtype=layout.dtype)
        blosc.decompress(payload, scratch)
        out[a - first : b - first] = scratch[a - lo : b - lo]
        if carry is not None:
            carry.update(index=i, values=scratch)
    return out
