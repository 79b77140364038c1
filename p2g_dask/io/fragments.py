"""Streamed reading of 10x fragment files (gzip, bgzip or plain text) in blocks.

A fragment file has one line per unique fragment: ``chrom, start, end, barcode, count``
(0-based, half-open; Cell Ranger ATAC / ARC files are already Tn5-adjusted), with optional
``#`` header lines at the top. Files hold 10^7-10^9 lines, so they are never read whole:
:func:`iter_fragments` yields validated pyarrow blocks, :func:`read_fragments` concatenates
the filtered blocks of a small file or region, and
:func:`p2g_dask.io.fragment_cache.build_fragment_cache` turns a file into a parquet cache
partitioned by chromosome that the coverage tasks read one chromosome at a time.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from p2g_dask._errors import InputFileError, check_input_file
from p2g_dask._logging import logger

FRAGMENT_COLUMNS = ("chrom", "start", "end", "barcode", "count")
DEFAULT_BLOCK_SIZE = 1 << 24  # 16 MiB of text per block: ~350k fragments, ~20 MB in memory
_GZIP_MAGIC = b"\x1f\x8b"
# BigWig stores positions as uint32, so nothing larger can be drawn anyway.
MAX_POSITION = 2**32 - 1


def is_gzip(path: str | os.PathLike) -> bool:
    """Return True when ``path`` starts with the gzip magic bytes (gzip and bgzip alike).

    Examples
    --------
    >>> import gzip, pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.tsv.gz"
    >>> with gzip.open(p, "wt") as fh:
    ...     _ = fh.write("chr1\\t1\\t5\\tA\\t1\\n")
    >>> is_gzip(p)
    True
    """
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_text(path: Path):
    return gzip.open(path, "rt") if is_gzip(path) else open(path, encoding="utf-8")


def _sniff(path: Path) -> tuple[int, int]:
    """Return (number of leading ``#`` lines, number of tab-separated fields of the first data line)."""
    n_header = 0
    try:
        with _open_text(path) as fh:
            for line in fh:
                if line.startswith("#"):
                    n_header += 1
                    continue
                if not line.strip():
                    raise ValueError(f"fragment file {str(path)!r}, line {n_header + 1}: empty line; remove it.")
                return n_header, len(line.rstrip("\n").split("\t"))
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise _gzip_error(path, err) from err
    return n_header, 0


def _gzip_error(path: Path, err: BaseException) -> InputFileError:
    text = str(err).lower()
    if "truncated" in text or "ended before" in text or isinstance(err, EOFError):
        return InputFileError(
            "path_to_fragments", path, "is truncated: its gzip stream ends before the end marker "
            "(an interrupted download or copy?)", "Re-download or re-create the file"
        )
    return InputFileError("path_to_fragments", path, f"is not a readable gzip/bgzip file ({err})",
                          "pass a 10x fragments file (.tsv.gz or .tsv)")


def _check_line(fields: list[str], n_fields: int) -> str | None:
    """Return why one split data line is malformed, or None when it is fine."""
    if len(fields) != n_fields:
        return f"expected {n_fields} tab-separated fields, found {len(fields)}"
    try:
        start, end = int(fields[1]), int(fields[2])
        if n_fields >= 5:
            int(fields[4])
    except ValueError:
        return "start, end and count must be integers"
    if not fields[0] or not fields[3]:
        return "empty chromosome or barcode"
    if start < 0 or end <= start:
        return f"needs 0 <= start < end, found start={start}, end={end}"
    if end > MAX_POSITION:
        return f"end={end} is past the largest position a BigWig can hold ({MAX_POSITION})"
    return None


def _locate_bad_line(path: Path, n_fields: int) -> tuple[int, str, str] | None:
    """Scan the file with plain Python to find the first malformed line (only on the error path)."""
    in_header = True  # '#' lines are header lines only before the first fragment
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                if in_header and line.startswith("#"):
                    continue
                in_header = False
                reason = _check_line(line.rstrip("\n").split("\t"), n_fields)
                if reason is not None:
                    return lineno, reason, line.rstrip("\n")[:200]
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return None
    return None


_LINE_FIX = ("fragment files need tab-separated 'chrom, start, end, barcode, count' lines (0-based, end > start), "
             "'#' lines only at the top; fix or remove that line")


def _malformed(path: Path, n_fields: int, err: BaseException | None) -> InputFileError:
    found = _locate_bad_line(path, n_fields)
    if found is None:
        return InputFileError("path_to_fragments", path, f"could not be parsed ({err})", "check its format")
    lineno, reason, text = found
    return InputFileError("path_to_fragments", path, f"is not a fragment file at line {lineno}: {reason}: {text!r}",
                          _LINE_FIX)


def check_fragment_file(path: str | os.PathLike) -> None:
    """Check a fragment file's presence, size, gzip ending and first data line, before any work.

    Raises :class:`p2g_dask.InputFileError` naming ``path_to_fragments``, the path and the fix;
    reads only the head and tail of the file.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.tsv"
    >>> _ = p.write_text("not a fragment line\\n")
    >>> check_fragment_file(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    p2g_dask._errors.InputFileError: path_to_fragments='...f.tsv' is not a fragment file at line 1: ...
    """
    path = Path(path)
    check_input_file(path, argument="path_to_fragments", kind="text")
    n_header, n_fields = _sniff(path)
    if n_fields == 0:
        raise InputFileError("path_to_fragments", path, "holds no fragment lines (only '#' header lines)",
                             "pass the fragments file of the sample")
    try:
        with _open_text(path) as fh:
            for _ in range(n_header):
                next(fh)
            first = next(fh).rstrip("\n")
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as err:
        raise _gzip_error(path, err) from err
    except UnicodeDecodeError as err:
        raise InputFileError("path_to_fragments", path, "is not a text or gzip file", _LINE_FIX) from err
    reason = _check_line(first.split("\t"), max(n_fields, 4))
    if reason is not None:
        raise InputFileError("path_to_fragments", path, f"is not a fragment file at line {n_header + 1}: "
                             f"{reason}: {first[:200]!r}", _LINE_FIX)


def fragment_files(path_to_fragments, *, argument: str = "path_to_fragments") -> dict[str, Path]:
    """Fragment files by sample, each checked before any work (damaged, empty, wrong format).

    Parameters
    ----------
    path_to_fragments
        One fragment file (its sample named after the file) or a ``{sample: file}`` dict.
    argument
        The caller's name of the argument, in error messages.

    Returns
    -------
    dict
        sample -> path.

    Examples
    --------
    >>> fragment_files({})
    Traceback (most recent call last):
    ...
    ValueError: path_to_fragments={} must be a fragment file or a non-empty {sample: fragment file} dict.
    """
    if isinstance(path_to_fragments, (str, os.PathLike)):
        p = Path(path_to_fragments)
        path_to_fragments = {p.name.split(".")[0] or "sample": p}
    if not isinstance(path_to_fragments, Mapping) or not path_to_fragments:
        raise ValueError(
            f"{argument}={path_to_fragments!r} must be a fragment file or a non-empty "
            "{sample: fragment file} dict."
        )
    files = {str(k): Path(v) for k, v in path_to_fragments.items()}
    missing = {k: str(v) for k, v in files.items() if not v.is_file()}
    if missing:
        raise FileNotFoundError(f"{argument}: these files do not exist: {missing}; check the paths.")
    for path in files.values():
        check_fragment_file(path)  # damaged, empty or wrong-format files fail here, before any work
    return files


def iter_fragments(path: str | os.PathLike, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[pa.Table]:
    """Yield a fragment file as validated pyarrow tables of about ``block_size`` bytes of text.

    Parameters
    ----------
    path
        A 10x fragment file: gzip, bgzip or plain text, tab-separated ``chrom, start, end,
        barcode[, count]`` (a missing count column reads as 1; further columns are ignored),
        optional ``#`` header lines before the first fragment.
    block_size
        Bytes of (uncompressed) text parsed per block; memory use is about this times 1.5.

    Yields
    ------
    pyarrow.Table
        Columns ``chrom`` and ``barcode`` (dictionary-encoded strings), ``start`` and ``end``
        (int64), ``count`` (int32).

    Raises
    ------
    ValueError
        For a malformed line (naming the file and the 1-based line number) or a truncated or
        corrupt gzip stream.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.tsv"
    >>> _ = p.write_text("# id=x\\nchr1\\t10\\t60\\tAAAC-1\\t2\\nchr1\\t12\\t90\\tGGTA-1\\t1\\n")
    >>> [t.num_rows for t in iter_fragments(p)]
    [2]
    """
    path = Path(path)
    check_input_file(path, argument="path_to_fragments", kind="text")
    n_header, n_fields = _sniff(path)
    if n_fields == 0:
        return
    if n_fields < 4:
        raise _malformed(path, 5, None)
    names = list(FRAGMENT_COLUMNS[: min(n_fields, 5)]) + [f"extra{i}" for i in range(n_fields - 5)]
    dict_str = pa.dictionary(pa.int32(), pa.string())
    types = {"chrom": dict_str, "start": pa.int64(), "end": pa.int64(), "barcode": dict_str, "count": pa.int32()}
    convert = pcsv.ConvertOptions(
        column_types={k: v for k, v in types.items() if k in names},
        include_columns=names[: min(n_fields, 5)],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    read = pcsv.ReadOptions(column_names=names, skip_rows=n_header, block_size=block_size, use_threads=False)
    parse = pcsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False)
    stream = pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None, buffer_size=1 << 20)
    rows_before = 0
    try:
        reader = pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            if "count" not in table.column_names:
                table = table.append_column("count", pa.array(np.ones(table.num_rows, np.int32)))
            _validate_block(path, table, n_header + rows_before)
            rows_before += table.num_rows
            yield table
    except pa.ArrowInvalid as err:
        raise _malformed(path, n_fields, err) from None
    except OSError as err:
        if "compress" in str(err).lower() or "gzip" in str(err).lower() or "zlib" in str(err).lower():
            raise _gzip_error(path, err) from None
        raise
    finally:
        stream.close()


def _validate_block(path: Path, table: pa.Table, lines_before: int) -> None:
    """Check nulls, start >= 0, end > start and end <= MAX_POSITION; name the first bad line."""
    start = table.column("start").to_numpy(zero_copy_only=False)
    end = table.column("end").to_numpy(zero_copy_only=False)
    bad = (start < 0) | (end <= start) | (end > MAX_POSITION)
    if any(table.column(c).null_count for c in ("start", "end", "count")):
        bad |= np.asarray(
            table.column("start").is_null().to_numpy(zero_copy_only=False)
            | table.column("end").is_null().to_numpy(zero_copy_only=False)
            | table.column("count").is_null().to_numpy(zero_copy_only=False)
        )
    for column in ("chrom", "barcode"):
        # An empty field parses as "" (nulls are off): find it through the small dictionary.
        col = table.column(column).combine_chunks()
        empty = np.flatnonzero(np.asarray(pc.equal(col.dictionary, "").to_numpy(zero_copy_only=False), dtype=bool))
        if empty.size:
            bad |= np.isin(col.indices.to_numpy(zero_copy_only=False), empty)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = {c: table.column(c)[i].as_py() for c in FRAGMENT_COLUMNS}
        raise ValueError(
            f"fragment file {str(path)!r}, line {lines_before + i + 1}: needs a chromosome, a barcode, "
            f"0 <= start < end <= {MAX_POSITION} and integer start/end/count, found {row}; fix or remove that line."
        )


def read_fragments(
    path: str | os.PathLike,
    *,
    chroms: Iterable[str] | None = None,
    barcodes: Iterable[str] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> pd.DataFrame:
    """Read the fragments of a file, optionally only some chromosomes and barcodes.

    The file is streamed block by block and filtered as it goes, so memory grows with the
    fragments kept, not with the file (for whole large files use the parquet cache instead).

    Parameters
    ----------
    path
        A 10x fragment file (gzip, bgzip or plain; see :func:`iter_fragments`).
    chroms, barcodes
        Keep only these chromosomes / barcodes (None keeps all).
    block_size
        Bytes of text parsed per block.

    Returns
    -------
    pandas.DataFrame
        ``chrom`` (categorical), ``start``, ``end`` (int64), ``barcode`` (categorical),
        ``count`` (int32), in file order.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.tsv"
    >>> _ = p.write_text("chr1\\t10\\t60\\tAAAC-1\\t2\\nchr2\\t12\\t90\\tGGTA-1\\t1\\n")
    >>> read_fragments(p, chroms=["chr2"])[["chrom", "start", "end"]].values.tolist()
    [['chr2', 12, 90]]
    """
    keep_chroms = None if chroms is None else pa.array(list(chroms), pa.string())
    keep_barcodes = None if barcodes is None else pa.array(list(barcodes), pa.string())
    parts = []
    for table in iter_fragments(path, block_size=block_size):
        mask = np.ones(table.num_rows, bool)
        for column, keep in (("chrom", keep_chroms), ("barcode", keep_barcodes)):
            if keep is not None:
                col = table.column(column).combine_chunks()
                # Look up the (small) dictionary once, then index: no per-row string compares.
                hit = np.isin(col.dictionary.to_numpy(zero_copy_only=False), keep.to_numpy(zero_copy_only=False))
                mask &= hit[col.indices.to_numpy(zero_copy_only=False)]
        df = table.filter(pa.array(mask)).to_pandas()
        parts.append(df.astype({"chrom": str, "barcode": str}))
    if not parts:
        empty = {"chrom": pd.Series(dtype=str), "start": pd.Series(dtype=np.int64), "end": pd.Series(dtype=np.int64),
                 "barcode": pd.Series(dtype=str), "count": pd.Series(dtype=np.int32)}
        parts = [pd.DataFrame(empty)]
    out = pd.concat(parts, ignore_index=True)
    out["chrom"] = out["chrom"].astype("category")
    out["barcode"] = out["barcode"].astype("category")
    logger.debug("read %d fragments from %s", len(out), path)
    return out


# The writer moved to io/bgzf.py; these names stay importable from here.
from p2g_dask.io.bgzf import BgzfWriter, write_fragment_table  # noqa: E402,F401 (re-exported)
