"""Decompressed text of a fragment file in blocks of whole lines, read ahead in a thread.

The reading half of the fast fragment parser (:mod:`p2g_dask.io._fragment_parse`): BGZF files
(10x fragment files are bgzipped) are inflated block by block with libdeflate, each block's
CRC checked; other gzip streams and plain text go through pyarrow's input stream. A background
thread keeps a few blocks ahead while the parser works (both release the GIL). Anything odd
raises :class:`~p2g_dask.io._fragment_parse.FastParseUnsupported`, so the caller falls back to
the general parser and its errors.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from p2g_dask.io._fragment_parse import FastParseUnsupported

_BGZF_READ = 1 << 22  # compressed bytes read per step (~250 BGZF blocks, ~16 MB of text)


def _bgzf_blocks(raw: memoryview, final: bool) -> tuple[list[tuple[int, int, int, int]], int]:
    """Complete BGZF blocks at the start of ``raw``: (data start, data end, crc, size) and bytes used."""
    blocks = []
    pos, n = 0, len(raw)
    while pos + 18 <= n:
        if raw[pos] != 0x1F or raw[pos + 1] != 0x8B or raw[pos + 3] & 4 == 0:
            raise FastParseUnsupported("not a BGZF block")
        xlen = struct.unpack_from("<H", raw, pos + 10)[0]
        extra, bsize = pos + 12, None
        while extra + 4 <= pos + 12 + xlen:
            sub_len = struct.unpack_from("<H", raw, extra + 2)[0]
            if raw[extra] == 66 and raw[extra + 1] == 67 and sub_len == 2:
                bsize = struct.unpack_from("<H", raw, extra + 4)[0]
            extra += 4 + sub_len
        if bsize is None:
            raise FastParseUnsupported("gzip member without the BGZF block size")
        end = pos + bsize + 1
        if end > n:
            break
        crc, size = struct.unpack_from("<II", raw, end - 8)
        blocks.append((pos + 12 + xlen, end - 8, crc, size))
        pos = end
    if final and pos != n:
        raise FastParseUnsupported("truncated BGZF file")
    return blocks, pos


def _bgzf_chunks(path: Path) -> Iterator[list[bytes]]:
    import deflate

    with open(path, "rb") as fh:
        rest = b""
        while True:
            piece = fh.read(_BGZF_READ)
            raw = rest + piece
            blocks, used = _bgzf_blocks(memoryview(raw), final=not piece)
            out = []
            for a, b, crc, size in blocks:
                if size:
                    try:
                        text = deflate.deflate_decompress(raw[a:b], size)
                    except deflate.DeflateError as err:
                        raise FastParseUnsupported(f"damaged BGZF block ({err})") from None
                    if deflate.crc32(text) != crc:
                        raise FastParseUnsupported("BGZF block CRC mismatch")
                    out.append(text)
            if out:
                yield out
            rest = raw[used:]
            if not piece:
                return


def _stream_chunks(path: Path, compressed: bool, size: int) -> Iterator[list[bytes]]:
    import pyarrow as pa

    try:
        with pa.input_stream(str(path), compression="gzip" if compressed else None, buffer_size=1 << 20) as stream:
            while True:
                piece = stream.read(size)
                if not piece:
                    return
                yield [piece]
    except (OSError, pa.ArrowInvalid) as err:
        raise FastParseUnsupported(f"unreadable stream ({err})") from None


def _is_bgzf(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(18)
    return len(head) == 18 and head[:2] == b"\x1f\x8b" and head[3] & 4 != 0 and head[12:14] == b"BC"


def _prefetch(chunks: Iterator, depth: int = 2) -> Iterator:
    """Run ``chunks`` in a background thread, ``depth`` chunks ahead (decompress while parsing)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        q.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as err:  # handed to the consumer
            q.put(err)

    thread = threading.Thread(target=produce, name="p2g-fragment-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


def iter_line_blocks(path: str | os.PathLike, n_header: int, block_size: int) -> Iterator[memoryview]:
    """The file's text after its ``n_header`` header lines, in blocks of whole lines (decompressed ahead).

    Each block is joined once from the decompressed pieces and the previous block's partial
    last line, and handed out as a memoryview (no further copies).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.tsv"
    >>> _ = p.write_text("# h\\nchr1\\t1\\t5\\tA\\t1\\nchr1\\t2\\t9\\tB\\t1")
    >>> [bytes(b) for b in iter_line_blocks(p, 1, 1 << 20)]
    [b'chr1\\t1\\t5\\tA\\t1\\n', b'chr1\\t2\\t9\\tB\\t1\\n']
    """
    path = Path(path)
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    chunks = _bgzf_chunks(path) if compressed and _is_bgzf(path) else _stream_chunks(path, compressed, block_size)
    rest = b""
    skip = n_header
    for pieces in _prefetch(chunks):
        text = b"".join([rest, *pieces]) if rest or len(pieces) > 1 else pieces[0]
        start = 0
        while skip:
            cut = text.find(b"\n", start)
            if cut < 0:
                break
            start, skip = cut + 1, skip - 1
        cut = text.rfind(b"\n", start)
        if skip or cut < 0:
            rest = text[start:]
            continue
        rest = text[cut + 1 :]
        yield memoryview(text)[start : cut + 1]
    if rest:
        yield memoryview(rest + b"\n")
