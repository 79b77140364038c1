"""Fast path for building the fragment cache: 10x fragment text straight to numpy arrays.

``pyarrow.csv`` with dictionary-encoded strings spent most of its time hashing barcodes
(5 M fragments: ~2 s of a single core). Here one numba pass per block of text parses the
five fields, checks them, and interns chromosome and barcode names in small open-addressing
hash tables (exact byte comparison, ids in order of first appearance, as the dictionary path
gives); :mod:`p2g_dask.io._fragment_text` decompresses the next blocks meanwhile in a
background thread. Both release the GIL, so the two cores work at once.

Anything unusual (a malformed line, ``\\r``, a sign, a ``#`` line after the header, a damaged
gzip stream, numbers out of range) raises :class:`FastParseUnsupported`; the caller then
parses the file again with :func:`p2g_dask.io.fragments.iter_fragments`, which accepts or
rejects it with its precise, line-numbered errors. So this module changes speed only.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numba
import numpy as np

MAX_POSITION = 2**32 - 1
_NEWLINE = 10
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


class FastParseUnsupported(Exception):
    """The file needs the general parser (malformed, unusual or damaged input)."""


# --- name interning ------------------------------------------------------------------------------


class _Names:
    """Interned byte strings: ``arena[start[i]:start[i] + length[i]]`` is name ``i``.

    ``table`` is an open-addressing hash table of ids (-1: empty slot), kept at most half full.
    """

    def __init__(self, capacity: int = 1024):
        self.arena = np.empty(capacity * 24, np.uint8)
        self.start = np.empty(capacity, np.int64)
        self.length = np.empty(capacity, np.int32)
        self.hash = np.empty(capacity, np.uint64)
        self.table = np.full(2 * capacity, -1, np.int32)
        self.n = 0
        self.used = 0

    def grow(self) -> None:
        """Double every array (the kernel stopped: a table half full or the arena short)."""
        capacity = 2 * self.start.size
        for name in ("start", "length", "hash"):
            old = getattr(self, name)
            new = np.empty(capacity, old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)
        arena = np.empty(2 * self.arena.size, np.uint8)
        arena[: self.used] = self.arena[: self.used]
        self.arena = arena
        self.table = _rehash(self.hash, self.n, 2 * capacity)

    def names(self) -> list[bytes]:
        return _Snapshot(self, self.arena, self.start, self.length, 0, self.n).names()

    def snapshot(self, first: int) -> _Snapshot:
        """Names ``first:n`` as they are now (``grow`` replaces arrays, so these stay valid)."""
        return _Snapshot(self, self.arena, self.start, self.length, first, self.n)


class _Snapshot(NamedTuple):
    """A table's names as they were when a block was parsed; ``first:n`` were new in that block."""

    table: _Names
    arena: np.ndarray
    start: np.ndarray
    length: np.ndarray
    first: int
    n: int

    def names(self) -> list[bytes]:
        data = self.arena.tobytes()
        return [data[s : s + n] for s, n in zip(self.start[: self.n].tolist(), self.length[: self.n].tolist())]


class ThreadTables:
    """Name tables kept per parsing thread across the blocks of one file.

    A thread's table learns each name once per file (not once per block), so a block's
    snapshot holds only the names new to that thread, and :class:`FileIds` maps only those.
    """

    def __init__(self):
        self._local = threading.local()

    def get(self) -> tuple[_Names, _Names]:
        pair = getattr(self._local, "pair", None)
        if pair is None:
            pair = self._local.pair = (_Names(64), _Names(1 << 14))
        return pair


@numba.njit(cache=True, nogil=True)
def _rehash(hashes, n, size):  # pragma: no cover - numba
    table = np.full(size, -1, np.int32)
    mask = np.uint64(size - 1)
    for i in range(n):
        slot = hashes[i] & mask
        while table[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        table[slot] = i
    return table


@numba.njit(cache=True, nogil=True, inline="always")
def _intern(buf, a, b, arena, starts, lengths, hashes, table, state):  # pragma: no cover - numba
    """Id of the name ``buf[a:b]``, adding it when new; -1 when the tables are full (grow them).

    ``state`` holds (number of names, arena bytes used).
    """
    h = _FNV_OFFSET
    for i in range(a, b):
        h = (h ^ np.uint64(buf[i])) * _FNV_PRIME
    mask = np.uint64(table.size - 1)
    slot = h & mask
    n = b - a
    while True:
        k = table[slot]
        if k < 0:
            count, used = state[0], state[1]
            if 2 * (count + 1) > table.size or count + 1 > starts.size or used + n > arena.size:
                return -1
            table[slot] = count
            starts[count], lengths[count], hashes[count] = used, n, h
            for i in range(n):
                arena[used + i] = buf[a + i]
            state[0], state[1] = count + 1, used + n
            return count
        if hashes[k] == h and lengths[k] == n:
            s = starts[k]
            same = True
            for i in range(n):
                if arena[s + i] != buf[a + i]:
                    same = False
                    break
            if same:
                return k
        slot = (slot + np.uint64(1)) & mask


# --- the line parser -----------------------------------------------------------------------------

_OK, _FULL_CHROMS, _FULL_BARCODES, _BAD = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True, inline="always")
def _digits(buf, pos, max_digits):  # pragma: no cover - numba
    """(value, number of digits) of the decimal digits at ``pos``; 0 digits when more than ``max_digits``."""
    value = 0
    n = 0
    while pos + n < buf.size and buf[pos + n] >= 48 and buf[pos + n] <= 57:
        value = value * 10 + (buf[pos + n] - 48)
        n += 1
        if n > max_digits:
            return value, 0
    return value, n


@numba.njit(cache=True, nogil=True)
def _parse_lines(buf, pos, n_fields, out_chrom, out_start, out_end, out_barcode, out_count, m,
                 c_arena, c_start, c_length, c_hash, c_table, c_state,
                 b_arena, b_start, b_length, b_hash, b_table, b_state):  # pragma: no cover - numba
    """Parse complete lines of ``buf`` from ``pos`` into the outputs from row ``m``.

    Returns ``(status, pos, m)``: where it stopped and the rows filled. ``_FULL_*``: a name
    table is full (grow it and call again from ``pos``); ``_BAD``: a line the general parser
    must judge. Fields: chrom, start, end, barcode[, count[, ignored...]], exactly
    ``n_fields`` tab-separated fields per line; empty lines are skipped (as pyarrow does).
    """
    size = buf.size
    prev_chrom, prev_a, prev_end = -1, 0, 0
    while pos < size:
        if buf[pos] == _NEWLINE:
            pos += 1
            continue
        line_start = pos
        # chrom
        a = pos
        while pos < size and buf[pos] != 9 and buf[pos] != _NEWLINE:
            pos += 1
        if pos == a or pos >= size or buf[pos] != 9 or buf[a] == 35:  # empty, short line or '#'
            return _BAD, line_start, m
        chrom_end = pos
        pos += 1
        # start, end: plain decimal digits
        start = _digits(buf, pos, 10)
        pos += start[1]
        if start[1] == 0 or pos >= size or buf[pos] != 9:
            return _BAD, line_start, m
        pos += 1
        end = _digits(buf, pos, 10)
        pos += end[1]
        if end[1] == 0 or pos >= size or buf[pos] != 9:
            return _BAD, line_start, m
        pos += 1
        if end[0] <= start[0] or end[0] > MAX_POSITION:
            return _BAD, line_start, m
        # barcode
        b = pos
        while pos < size and buf[pos] != 9 and buf[pos] != _NEWLINE:
            pos += 1
        if pos == b or pos >= size:
            return _BAD, line_start, m
        barcode_end = pos
        count = 1
        fields = 4
        if buf[pos] == 9:
            pos += 1
            fields = 5
            value = _digits(buf, pos, 9)
            pos += value[1]
            if value[1] == 0 or pos >= size:
                return _BAD, line_start, m
            count = value[0]
            while buf[pos] == 9:  # further columns are ignored, but must be there exactly
                fields += 1
                pos += 1
                while pos < size and buf[pos] != 9 and buf[pos] != _NEWLINE:
                    pos += 1
                if pos >= size:
                    return _BAD, line_start, m
            if buf[pos] != _NEWLINE:
                return _BAD, line_start, m
        if fields != n_fields:
            return _BAD, line_start, m
        same = prev_chrom >= 0 and chrom_end - a == prev_end - prev_a
        if same:
            for i in range(chrom_end - a):
                if buf[a + i] != buf[prev_a + i]:
                    same = False
                    break
        if same:
            chrom = prev_chrom
        else:
            chrom = _intern(buf, a, chrom_end, c_arena, c_start, c_length, c_hash, c_table, c_state)
            if chrom < 0:
                return _FULL_CHROMS, line_start, m
            prev_chrom, prev_a, prev_end = chrom, a, chrom_end
        barcode = _intern(buf, b, barcode_end, b_arena, b_start, b_length, b_hash, b_table, b_state)
        if barcode < 0:
            return _FULL_BARCODES, line_start, m
        out_chrom[m], out_start[m], out_end[m] = chrom, start[0], end[0]
        out_barcode[m], out_count[m] = barcode, count
        m += 1
        pos += 1  # the newline
    return _OK, pos, m


def parse_block(buf, n_fields: int, tables: ThreadTables | None = None) -> tuple:
    """Parse one block of whole lines; name ids are those of the calling thread's tables.

    Returns ``(chrom, start, end, barcode, count, chrom_names, barcode_names)``: ids (int32)
    index the thread's names (snapshots, :class:`_Snapshot`, in order of first appearance;
    ``tables=None``: fresh tables for this block alone), start/end uint32, count int32.
    Thread-safe: each thread has its own tables. Raises :class:`FastParseUnsupported` for a
    line the general parser must judge.

    Examples
    --------
    >>> rows = parse_block(b"chr1\\t10\\t60\\tAAAC-1\\t2\\nchr2\\t5\\t9\\tAAAC-1\\t1\\n", 5)
    >>> [r.tolist() for r in rows[:5]], rows[5].names(), rows[6].names()
    ([[0, 1], [10, 5], [60, 9], [0, 0], [2, 1]], [b'chr1', b'chr2'], [b'AAAC-1'])
    """
    data = np.frombuffer(buf, np.uint8)
    # The shortest line ("c\\t0\\t1\\tb\\n") has 8 bytes: a bound without counting the lines
    # (untouched pages of np.empty cost no memory).
    n = data.size // 8 + 1
    out = (np.empty(n, np.int32), np.empty(n, np.uint32), np.empty(n, np.uint32), np.empty(n, np.int32),
           np.empty(n, np.int32))
    pos = m = 0
    c, b = tables.get() if tables is not None else (_Names(64), _Names(1 << 14))
    c_first, b_first = c.n, b.n
    while True:
        c_state, b_state = np.array([c.n, c.used], np.int64), np.array([b.n, b.used], np.int64)
        status, pos, m = _parse_lines(data, pos, n_fields, *out, m,
                                      c.arena, c.start, c.length, c.hash, c.table, c_state,
                                      b.arena, b.start, b.length, b.hash, b.table, b_state)
        c.n, c.used = int(c_state[0]), int(c_state[1])
        b.n, b.used = int(b_state[0]), int(b_state[1])
        if status == _OK:
            return (*(a[:m] for a in out), c.snapshot(c_first), b.snapshot(b_first))
        if status == _BAD:
            line = bytes(data[pos : pos + 200]).split(b"\n", 1)[0]
            raise FastParseUnsupported(f"line {line!r} needs the general parser")
        (c if status == _FULL_CHROMS else b).grow()


@numba.njit(cache=True, nogil=True)
def _map_names(src_arena, src_start, src_length, first, n, out,
               arena, starts, lengths, hashes, table, state):  # pragma: no cover - numba
    """``out[i]`` = file-wide id of block name ``i`` for ``first <= i < n``; stops where the tables are full."""
    for i in range(first, n):
        a = src_start[i]
        k = _intern(src_arena, a, a + src_length[i], arena, starts, lengths, hashes, table, state)
        if k < 0:
            return i
        out[i] = k
    return n


class FileIds:
    """File-wide ids of chromosome and barcode names, in order of first appearance.

    Examples
    --------
    >>> ids = FileIds()
    >>> first = parse_block(b"c1\\t1\\t5\\tB\\t1\\nc1\\t2\\t5\\tA\\t1\\n", 5)[6]
    >>> second = parse_block(b"c1\\t1\\t5\\tA\\t1\\nc1\\t2\\t5\\tC\\t1\\n", 5)[6]
    >>> ids.map("barcode", first).tolist(), ids.map("barcode", second).tolist(), ids.names("barcode")
    ([0, 1], [1, 2], ['B', 'A', 'C'])
    """

    def __init__(self):
        self._names = {"chrom": _Names(64), "barcode": _Names(1 << 14)}
        self._maps: dict[int, tuple[_Names, list]] = {}  # per thread table: [table-to-file ids, names mapped]

    def map(self, kind: str, block: _Snapshot) -> np.ndarray:
        """File-wide id of each name of a block's table (index it with the block's ids).

        Only the names the table learnt since its last mapped block are looked up.
        """
        names = self._names[kind]
        _, entry = self._maps.setdefault(id(block.table), (block.table, [np.empty(0, np.int32), 0]))
        if entry[0].size < block.n:
            grown = np.empty(max(block.n, 2 * entry[0].size), np.int32)
            grown[: entry[1]] = entry[0][: entry[1]]
            entry[0] = grown
        done = entry[1]
        while done < block.n:
            state = np.array([names.n, names.used], np.int64)
            done = _map_names(block.arena, block.start, block.length, done, block.n, entry[0],
                              names.arena, names.start, names.length, names.hash, names.table, state)
            names.n, names.used = int(state[0]), int(state[1])
            if done < block.n:
                names.grow()
        entry[1] = max(entry[1], block.n)
        return entry[0]

    def names(self, kind: str) -> list[str]:
        try:
            return [k.decode("utf-8") for k in self._names[kind].names()]
        except UnicodeDecodeError as err:
            raise FastParseUnsupported(f"{kind} names are not UTF-8 ({err})") from None
