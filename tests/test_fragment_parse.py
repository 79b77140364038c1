"""The fast fragment parser behind the parquet cache: same cache as the general parser, or a fallback."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from _fragment_files import write_fragment_file
from p2g_dask.io import fragment_cache as fc
from p2g_dask.io._fragment_parse import FastParseUnsupported, parse_block


def _frags(n, n_barcodes=50, chroms=("chr1", "chr2", "chrX"), seed=0):
    rng = np.random.default_rng(seed)
    chrom = np.sort(rng.choice(list(chroms), n))
    start = rng.integers(0, 4_000_000_000, n)
    df = pd.DataFrame({"chrom": chrom, "start": start, "end": start + rng.integers(1, 600, n),
                       "barcode": rng.choice([f"BC{i:06d}-1" for i in range(n_barcodes)], n),
                       "count": rng.integers(1, 9, n)})
    df["end"] = np.minimum(df["end"], 2**32 - 1)
    df = df[df["end"] > df["start"]]
    return df.sort_values(["chrom", "start"], kind="stable").reset_index(drop=True)


def _cache_tables(out):
    files = sorted(p.relative_to(out) for p in (out / "fragments").glob("*/part-0.parquet"))
    return ([pq.read_table(out / f) for f in files], files, pq.read_table(out / "barcodes.parquet"))


def _both(path, tmp_path, block_size):
    fast, general = tmp_path / "fast", tmp_path / "general"
    manifest_fast = fc._write_cache_fast(path, fast, block_size)
    manifest_general = fc._write_cache_general(path, general, block_size)
    return manifest_fast, manifest_general, _cache_tables(fast), _cache_tables(general)


def _assert_same(path, tmp_path, block_size=1 << 24):
    m_fast, m_general, (t_fast, f_fast, b_fast), (t_general, f_general, b_general) = _both(path, tmp_path, block_size)
    assert m_fast == m_general
    assert f_fast == f_general
    assert b_fast.equals(b_general)
    for a, b in zip(t_fast, t_general):
        assert a.equals(b)
    return m_fast


@pytest.mark.parametrize("compression", ["bgzip", "gzip", None])
@pytest.mark.parametrize("block_size", [4096, 1 << 24])
def test_write_cache_fast__same_cache_as_general_parser(tmp_path, compression, block_size):
    df = _frags(20_000)
    path = write_fragment_file(tmp_path / "f.tsv.gz", df, compression)
    manifest = _assert_same(path, tmp_path, block_size)
    assert manifest["n_fragments"] == len(df)
    assert manifest["chroms"]["chr2"]["n"] == int((df["chrom"] == "chr2").sum())


def test_write_cache_fast__name_tables_grow(tmp_path):
    # More barcodes and chromosomes than the initial hash tables hold (16384 and 64).
    df = _frags(60_000, n_barcodes=30_000, chroms=tuple(f"contig{i}" for i in range(150)), seed=1)
    path = write_fragment_file(tmp_path / "f.tsv.gz", df, "bgzip", header=())
    manifest = _assert_same(path, tmp_path)
    assert manifest["n_barcodes"] == df["barcode"].nunique()


@pytest.mark.parametrize("columns", [4, 6])
def test_write_cache_fast__four_and_six_columns(tmp_path, columns):
    df = _frags(3000)
    if columns == 4:
        df = df.drop(columns="count")
    else:
        df["extra"] = "x"
    path = write_fragment_file(tmp_path / "f.tsv", df, None)
    _assert_same(path, tmp_path)


def test_write_cache_fast__last_line_without_newline_and_empty_lines(tmp_path):
    text = "# h\nchr1\t5\t9\tA\t1\n\nchr1\t7\t20\tB\t2\nchr2\t1\t3\tA\t1"
    path = tmp_path / "f.tsv"
    path.write_text(text)
    manifest = _assert_same(path, tmp_path)
    assert manifest["n_fragments"] == 3


@pytest.mark.parametrize("line", ["chr1\t-5\t9\tA\t1", "chr1\t5\t9\tA\t1\r", "#late\t1\t2\tA\t1", "chr1\t5\t9\tA",
                                  "chr1\t9\t5\tA\t1", "chr1\t5\t9\t\t1", "chr1\t5\t99999999999\tA\t1",
                                  "chr1\t5\t9\tA\t1\tx", "chr1\t5\t9\tA\t+1"])
def test_parse_block__unusual_lines_need_the_general_parser(line):
    text = ("chr1\t1\t4\tB\t1\n" + line + "\n").encode()
    with pytest.raises(FastParseUnsupported):
        parse_block(text, 5)


def test_build_fragment_cache__crlf_file_through_general_parser(tmp_path):
    df = _frags(500)
    lf = write_fragment_file(tmp_path / "lf.tsv", df, None)
    crlf = tmp_path / "crlf.tsv"
    crlf.write_bytes(lf.read_bytes().replace(b"\n", b"\r\n"))
    a = fc.build_fragment_cache(lf, tmp_path / "c1")
    b = fc.build_fragment_cache(crlf, tmp_path / "c2")
    for chrom in a.chroms:
        got_a, got_b = a.read_chrom(chrom), b.read_chrom(chrom)
        for column in got_a:
            np.testing.assert_array_equal(got_a[column], got_b[column])


def test_build_fragment_cache__bad_line_error_from_general_parser(tmp_path):
    df = _frags(3000)
    lines = write_fragment_file(tmp_path / "ok.tsv", df, None).read_text().splitlines(keepends=True)
    lines.insert(2501, "chr1\t90\t80\tBC\t1\n")
    path = tmp_path / "bad.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("".join(lines))
    with pytest.raises(ValueError, match=r"bad\.tsv\.gz.*line 2502"):
        fc.build_fragment_cache(path, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_build_fragment_cache__damaged_bgzip_error(tmp_path, damage):
    raw = bytearray(write_fragment_file(tmp_path / "f.tsv.gz", _frags(20_000), "bgzip").read_bytes())
    if damage == "truncated":
        del raw[len(raw) // 2 :]
    else:
        raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "bad.tsv.gz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad\.tsv\.gz" + (".*truncated" if damage == "truncated" else "")):
        fc.build_fragment_cache(tmp_path / "bad.tsv.gz", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
