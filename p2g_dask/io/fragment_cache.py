"""A parquet cache of a fragment file, partitioned by chromosome.

Parsing a 10^8-line gzip text file is the slow part of making coverage tracks, and every run
(another grouping, another bin size) would repeat it. The cache is written once per source file:

```
<cache_dir>/
  manifest.json                 source path, size, mtime_ns; per chromosome: file and row count
  barcodes.parquet              the file's barcodes; row i is barcode id i
  fragments/chrom=<name>/part-0.parquet   start, end (uint32), barcode_id (int32), count (int32)
```

It is reused only while the source file has the same resolved path, size and mtime
(nanoseconds); otherwise it is rebuilt. It holds every fragment of the file (not only the cells
of one analysis), so one cache serves any grouping of the cells. It is built under a temporary
name and renamed when complete, so an interrupted build never looks valid.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from p2g_dask._atomic import atomic_path
from p2g_dask._errors import InputFileError, check_input_file, reading
from p2g_dask._logging import logger, timed
from p2g_dask.io._fragment_parse import FastParseUnsupported, FileIds, ThreadTables, parse_block
from p2g_dask.io._fragment_text import iter_line_blocks
from p2g_dask.io.fragments import DEFAULT_BLOCK_SIZE, _sniff, iter_fragments

CACHE_VERSION = 1
_SCHEMA = pa.schema([("start", pa.uint32()), ("end", pa.uint32()), ("barcode_id", pa.int32()), ("count", pa.int32())])
# zstd: smallest cache here at the same read speed as lz4 (3 M fragments read back in 0.05 s).
_COMPRESSION = "zstd"
# Dictionary pages only for barcode ids (few distinct values): on positions (nearly all distinct)
# parquet's default tries a dictionary and gives up, which made writing 4x slower (5 M fragments:
# 2.2 s -> 0.5 s) and the files 40% larger.
_DICTIONARY_COLUMNS = ["barcode_id"]


def _source_signature(source: Path) -> dict:
    st = source.stat()
    return {"source": str(source.resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


@dataclass(frozen=True)
class FragmentCache:
    """An opened fragment cache (see the module docstring for the layout).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "f.tsv").write_text("chr1\\t10\\t60\\tAAAC-1\\t1\\nchr2\\t5\\t50\\tGGTA-1\\t1\\n")
    >>> cache = build_fragment_cache(d / "f.tsv", d / "cache")
    >>> cache.chroms, cache.read_chrom("chr2")["start"].tolist()
    ({'chr1': 1, 'chr2': 1}, [5])
    """

    path: Path
    manifest: dict

    @property
    def chroms(self) -> dict[str, int]:
        """Number of fragments per chromosome, in the order of the source file."""
        return {c: int(v["n"]) for c, v in self.manifest["chroms"].items()}

    @property
    def n_fragments(self) -> int:
        return int(self.manifest["n_fragments"])

    def chrom_file(self, chrom: str) -> str:
        """Path of the parquet file holding ``chrom``."""
        return str(self.path / self.manifest["chroms"][chrom]["file"])

    def barcodes(self) -> np.ndarray:
        """The file's barcodes as an object array; ``barcode_id`` indexes it."""
        with reading(self.path / "barcodes.parquet", argument="cache_fragments", kind="parquet"):
            return pq.read_table(self.path / "barcodes.parquet").column("barcode").to_numpy(zero_copy_only=False)

    def read_chrom(self, chrom: str, columns: tuple[str, ...] = ("start", "end", "barcode_id")) -> dict:
        """Numpy arrays of one chromosome's ``columns`` (empty arrays for an absent chromosome)."""
        if chrom not in self.manifest["chroms"]:
            return {c: np.empty(0, _SCHEMA.field(c).type.to_pandas_dtype()) for c in columns}
        return read_cache_file(self.chrom_file(chrom), columns)


def read_cache_file(file: str, columns: tuple[str, ...] = ("start", "end", "barcode_id")) -> dict:
    """Read ``columns`` of one chromosome file of a cache as numpy arrays (a task-side helper)."""
    with reading(file, argument="cache_fragments", kind="parquet"):
        table = pq.read_table(file, columns=list(columns), use_threads=False, memory_map=True)
    return {c: table.column(c).to_numpy() for c in columns}


def open_fragment_cache(cache_dir: str | os.PathLike) -> FragmentCache:
    """Open an existing cache (no validity check against its source; see :func:`cache_status`)."""
    path = Path(cache_dir)
    try:
        with reading(path / "manifest.json", argument="cache_fragments", kind="text"):
            manifest = json.loads((path / "manifest.json").read_text())
    except json.JSONDecodeError as err:
        raise InputFileError("cache_fragments", path / "manifest.json", f"is damaged ({err})",
                             "delete the cache folder to rebuild it") from err
    if manifest.get("version") != CACHE_VERSION:
        raise ValueError(
            f"cache_fragments: {str(path)!r} was written by another cache version "
            f"({manifest.get('version')} != {CACHE_VERSION}); delete it to rebuild."
        )
    return FragmentCache(path, manifest)


def cache_status(cache_dir: str | os.PathLike, source: str | os.PathLike) -> str:
    """``'current'`` when the cache matches ``source``; otherwise the reason it does not.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "f.tsv").write_text("chr1\\t10\\t60\\tAAAC-1\\t1\\n")
    >>> cache_status(d / "cache", d / "f.tsv")
    'no cache yet'
    """
    manifest_file = Path(cache_dir) / "manifest.json"
    if not manifest_file.is_file():
        return "no cache yet"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"unreadable manifest ({err})"
    if manifest.get("version") != CACHE_VERSION:
        return f"cache version {manifest.get('version')} != {CACHE_VERSION}"
    now = _source_signature(Path(source))
    changed = [k for k in ("source", "size", "mtime_ns") if manifest.get(k) != now[k]]
    return "current" if not changed else "source changed (" + ", ".join(changed) + ")"


def build_fragment_cache(
    source: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    force: bool = False,
) -> FragmentCache:
    """Return the parquet cache of a fragment file, building it only when missing or stale.

    Parameters
    ----------
    source
        A 10x fragment file (gzip, bgzip or plain text).
    cache_dir
        The cache folder for this one file. Reused when it records the same resolved path,
        size and mtime as ``source`` now has; rebuilt (replaced) otherwise.
    block_size
        Bytes of text parsed per block while building.
    force
        Rebuild even when the cache is current.

    Returns
    -------
    FragmentCache

    Examples
    --------
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "f.tsv").write_text("chr1\\t10\\t60\\tAAAC-1\\t1\\n")
    >>> build_fragment_cache(d / "f.tsv", d / "cache").n_fragments
    1
    """
    source, cache_dir = Path(source), Path(cache_dir)
    status = cache_status(cache_dir, source)
    if status == "current" and not force:
        logger.info("fragment cache %s is current for %s; reusing it", cache_dir, source)
        return open_fragment_cache(cache_dir)
    if cache_dir.exists():
        logger.info("rebuilding fragment cache %s: %s", cache_dir, "forced" if force else status)
    signature = _source_signature(source)
    with timed(f"caching fragments of {source.name}"), atomic_path(cache_dir, overwrite=True,
                                                                     argument="cache_fragments") as tmp:
        manifest = _write_cache(source, tmp, block_size)
        manifest.update(signature)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    # Re-check: a source modified while it was being read must not be recorded as cached.
    if _source_signature(source) != signature:
        raise RuntimeError(f"path_to_fragments: {str(source)!r} changed while it was being cached; run again.")
    return FragmentCache(cache_dir, manifest)


def _write_cache(source: Path, out: Path, block_size: int) -> dict:
    """Parse ``source`` into ``out``: the fast parser, or the general one when the file needs it."""
    try:
        return _write_cache_fast(source, out, block_size)
    except FastParseUnsupported as why:
        logger.debug("fragment cache of %s: general parser (%s)", source, why)
        shutil.rmtree(out, ignore_errors=True)
    return _write_cache_general(source, out, block_size)


class _ChromWriters:
    """One parquet writer per chromosome; rows arrive in file order, a block at a time."""

    def __init__(self, out: Path):
        self.out = out
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.counts: dict[str, int] = {}
        self.files: dict[str, str] = {}
        self.n_total = 0

    def write(self, chrom_codes, chrom_names, start, end, ids, count) -> None:
        if chrom_codes.size == 0:
            return
        self.n_total += int(chrom_codes.size)
        bounds = np.flatnonzero(np.diff(chrom_codes)) + 1
        if np.unique(chrom_codes[np.r_[0, bounds]]).size == bounds.size + 1:
            order = None  # sorted files: one run per chromosome, already in file order
            codes_sorted = chrom_codes
        else:  # a stable sort keeps file order within one chromosome
            order = np.argsort(chrom_codes, kind="stable")
            codes_sorted = chrom_codes[order]
            bounds = np.flatnonzero(np.diff(codes_sorted)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, chrom_codes.size]):
            name = chrom_names[codes_sorted[lo]]
            rows = slice(lo, hi) if order is None else order[lo:hi]
            if name not in self.writers:
                self.files[name] = f"fragments/chrom={urllib.parse.quote(name, safe='')}/part-0.parquet"
                (self.out / self.files[name]).parent.mkdir(parents=True)
                self.writers[name] = pq.ParquetWriter(self.out / self.files[name], _SCHEMA, compression=_COMPRESSION,
                                                      use_dictionary=_DICTIONARY_COLUMNS)
                self.counts[name] = 0
            piece = pa.table([start[rows], end[rows], ids[rows], count[rows]], schema=_SCHEMA)
            self.writers[name].write_table(piece, row_group_size=1 << 20)
            self.counts[name] += int(hi - lo)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def manifest(self, source: Path, barcodes: list | np.ndarray) -> dict:
        barcodes = np.asarray(barcodes, dtype=object)
        pq.write_table(pa.table({"barcode": pa.array(barcodes, pa.string())}), self.out / "barcodes.parquet")
        logger.info("cached %d fragments, %d barcodes, %d chromosomes from %s", self.n_total, len(barcodes),
                    len(self.counts), source)
        return {
            "version": CACHE_VERSION,
            "n_fragments": self.n_total,
            "n_barcodes": len(barcodes),
            "chroms": {c: {"file": self.files[c], "n": self.counts[c]} for c in self.counts},
        }


def _write_cache_fast(source: Path, out: Path, block_size: int) -> dict:
    check_input_file(source, argument="path_to_fragments", kind="text")
    n_header, n_fields = _sniff(source)
    if n_fields and n_fields < 4:
        raise FastParseUnsupported(f"{n_fields} fields")
    out.mkdir(parents=True)
    ids, tables = FileIds(), ThreadTables()
    sink = _ChromWriters(out)
    if not n_fields:  # only header lines
        return sink.manifest(source, [])
    blocks = iter_line_blocks(source, n_header, block_size)
    try:
        # Two blocks parsed at once (numba, GIL released) while a third is decompressed; the
        # block-local name ids become file-wide ones here, in file order.
        with ThreadPoolExecutor(2, thread_name_prefix="p2g-fragment-parse") as pool:
            pending: deque = deque()
            for text in blocks:
                pending.append(pool.submit(parse_block, text, n_fields, tables))
                if len(pending) == 2:
                    _write_parsed(sink, ids, pending.popleft().result())
            while pending:
                _write_parsed(sink, ids, pending.popleft().result())
        barcodes = ids.names("barcode")
    finally:
        blocks.close()
        sink.close()
    return sink.manifest(source, barcodes)


def _write_parsed(sink: _ChromWriters, ids: FileIds, parsed: tuple) -> None:
    chrom, start, end, barcode, count, chrom_names, barcode_names = parsed
    chrom_ids = ids.map("chrom", chrom_names)
    sink.write(chrom_ids[chrom], ids.names("chrom"), start, end, ids.map("barcode", barcode_names)[barcode], count)


def _write_cache_general(source: Path, out: Path, block_size: int) -> dict:
    out.mkdir(parents=True)
    barcode_ids: dict[str, int] = {}
    sink = _ChromWriters(out)
    try:
        for table in iter_fragments(source, block_size=block_size):
            bc = table.column("barcode").combine_chunks()
            # Map the block's small barcode dictionary to file-wide ids, then index per row.
            mapping = np.fromiter(
                (barcode_ids.setdefault(b, len(barcode_ids)) for b in bc.dictionary.to_pylist()),
                dtype=np.int32, count=len(bc.dictionary),
            )
            ids = mapping[bc.indices.to_numpy(zero_copy_only=False)]
            chrom = table.column("chrom").combine_chunks()
            sink.write(chrom.indices.to_numpy(zero_copy_only=False), chrom.dictionary.to_pylist(),
                       table.column("start").to_numpy().astype(np.uint32),
                       table.column("end").to_numpy().astype(np.uint32), ids, table.column("count").to_numpy())
    finally:
        sink.close()
    barcodes = np.empty(len(barcode_ids), dtype=object)
    barcodes[list(barcode_ids.values())] = list(barcode_ids.keys())
    return sink.manifest(source, barcodes)
