"""Fragment file reading, the parquet cache, BGZF writing and the fragment simulator."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from _fragment_files import write_fragment_file
from p2g_dask.datasets.simulate import simulate_multiome
from p2g_dask.datasets.simulate_fragments import simulate_fragments
from p2g_dask.io.fragment_cache import build_fragment_cache, cache_status
from p2g_dask.io.bgzf import BgzfWriter
from p2g_dask.io.fragments import iter_fragments, read_fragments

COLS = ["chrom", "start", "end", "barcode", "count"]


def _rows(n=500, seed=0):
    rng = np.random.default_rng(seed)
    chrom = np.sort(rng.choice(["chr1", "chr2", "chrX"], n))
    start = rng.integers(0, 10_000, n)
    df = pd.DataFrame({"chrom": chrom, "start": start, "end": start + rng.integers(1, 600, n),
                       "barcode": rng.choice([f"BC{i:03d}-1" for i in range(40)], n),
                       "count": rng.integers(1, 5, n)})
    return df.sort_values(["chrom", "start"], kind="stable").reset_index(drop=True)


def _write(path, df, compression, header=("# id=test", "# pipeline=none")):
    return write_fragment_file(path, df, compression, header)


def _plain(df):
    out = df.copy()
    out["chrom"] = out["chrom"].astype(str)
    out["barcode"] = out["barcode"].astype(str)
    return out.astype({"start": np.int64, "end": np.int64, "count": np.int64})[COLS]


@pytest.mark.parametrize("compression", ["gzip", "bgzip", None])
def test_read_fragments__compressions_and_headers(tmp_path, compression):
    df = _rows()
    path = _write(tmp_path / "f.tsv.gz", df, compression)
    got = read_fragments(path, block_size=4096)  # many blocks
    pd.testing.assert_frame_equal(_plain(got), _plain(df))


def test_iter_fragments__blocks_cover_file_once(tmp_path):
    df = _rows(2000)
    path = _write(tmp_path / "f.tsv", df, None)
    sizes = [t.num_rows for t in iter_fragments(path, block_size=8192)]
    assert len(sizes) > 3 and sum(sizes) == len(df)


def test_read_fragments__filters_chroms_and_barcodes(tmp_path):
    df = _rows()
    path = _write(tmp_path / "f.tsv.gz", df, "gzip")
    keep = ["BC001-1", "BC007-1", "BC-none"]
    got = read_fragments(path, chroms=["chr2", "chrX"], barcodes=keep, block_size=4096)
    want = df[df["chrom"].isin(["chr2", "chrX"]) & df["barcode"].isin(keep)].reset_index(drop=True)
    assert len(want) > 0
    pd.testing.assert_frame_equal(_plain(got), _plain(want))


def test_read_fragments__four_columns_count_one(tmp_path):
    df = _rows(50)
    path = _write(tmp_path / "f.tsv", df[COLS[:4]], None, header=())
    got = read_fragments(path)
    assert (got["count"] == 1).all() and got["start"].tolist() == df["start"].tolist()


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [("chr1\t5\t7\n", "expected 5 tab-separated fields"),
     ("chr1\tabc\t7\tBC\t1\n", "integers"),
     ("chr1\t90\t80\tBC\t1\n", "start < end")],
)
def test_iter_fragments__malformed_line_names_file_and_line(tmp_path, bad_line, reason):
    df = _rows(3000)
    lines = _write(tmp_path / "ok.tsv", df, None).read_text().splitlines(keepends=True)
    lines.insert(2501, bad_line)  # after 2 header lines: file line 2502, several blocks in
    path = tmp_path / "bad.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("".join(lines))
    with pytest.raises(ValueError, match=r"bad\.tsv\.gz.*line 2502") as err:
        for _ in iter_fragments(path, block_size=8192):
            pass
    assert reason in str(err.value)


def test_iter_fragments__truncated_gzip(tmp_path):
    path = _write(tmp_path / "f.tsv.gz", _rows(5000), "bgzip")
    raw = path.read_bytes()
    cut = tmp_path / "cut.tsv.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.tsv\.gz.*truncated"):
        read_fragments(cut)


def test_iter_fragments__missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv.gz"):
        read_fragments(tmp_path / "nope.tsv.gz")


def test_bgzf_writer__valid_bgzf_blocks(tmp_path):
    data = os.urandom(200_000).hex().encode()  # 400 kB: several 64 kB blocks
    path = tmp_path / "x.gz"
    with BgzfWriter(path, threads=2) as fh:
        fh.write(data[:1000])
        fh.write(data[1000:])
    assert gzip.open(path).read() == data
    raw = path.read_bytes()
    # Each BGZF block header carries the 'BC' extra field; the file ends with the 28-byte EOF block.
    assert raw[12:14] == b"BC" and raw.count(b"\x1f\x8b\x08\x04") >= 7 and len(raw) > 28


def test_build_fragment_cache__matches_file(tmp_path):
    df = _rows(3000)
    path = _write(tmp_path / "f.tsv.gz", df, "gzip")
    cache = build_fragment_cache(path, tmp_path / "cache", block_size=8192)
    assert cache.n_fragments == len(df)
    assert cache.chroms == df["chrom"].value_counts().sort_index().to_dict()
    barcodes = cache.barcodes()
    for chrom, part in df.groupby("chrom"):
        got = cache.read_chrom(chrom, ("start", "end", "barcode_id", "count"))
        assert got["start"].tolist() == part["start"].tolist()
        assert got["end"].tolist() == part["end"].tolist()
        assert barcodes[got["barcode_id"]].tolist() == part["barcode"].tolist()
        assert got["count"].tolist() == part["count"].tolist()
    # Hive-style chromosome partitions: readable as a dataset by other tools too.
    ds = pads.dataset(tmp_path / "cache" / "fragments", partitioning="hive", format="parquet")
    assert ds.count_rows() == len(df)


def test_build_fragment_cache__reuse_and_invalidation(tmp_path):
    df = _rows(400)
    path = _write(tmp_path / "f.tsv", df, None)
    cache_dir = tmp_path / "cache"
    build_fragment_cache(path, cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["source"] == str(path.resolve()) and manifest["size"] == path.stat().st_size
    stamp = (cache_dir / "manifest.json").stat().st_mtime_ns
    build_fragment_cache(path, cache_dir)
    assert (cache_dir / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten

    with open(path, "a") as fh:  # size changes
        fh.write("chr2\t20000\t20100\tNEW-1\t1\n")
    assert cache_status(cache_dir, path).startswith("source changed")
    cache = build_fragment_cache(path, cache_dir)
    assert cache.n_fragments == len(df) + 1 and "NEW-1" in set(cache.barcodes())

    st = path.stat()  # same size, new mtime
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert "mtime_ns" in cache_status(cache_dir, path)
    build_fragment_cache(path, cache_dir)
    assert cache_status(cache_dir, path) == "current"

    moved = tmp_path / "moved.tsv"  # same content and mtime, another path
    shutil.copy2(path, moved)
    assert "source" in cache_status(cache_dir, moved)


def test_simulate_fragments__consistent_with_matrix(tmp_path):
    sim = simulate_multiome(n_cells=80, n_peaks=400, n_genes=40, n_linked_genes=5, seed=3)
    path = simulate_fragments(sim.atac, tmp_path / "f.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=1)
    frags = read_fragments(path)
    assert set(frags["barcode"].astype(str)) <= set(sim.atac.obs_names)
    order = {c: i for i, c in enumerate(sim.chrom_sizes)}
    key = frags["chrom"].astype(str).map(order).to_numpy() * 10**10 + frags["start"].to_numpy()
    assert np.all(np.diff(key) >= 0)  # sorted by chromosome, then start
    # Count fragments with both cut sites inside each peak, per cell: the matrix must come back.
    var = sim.atac.var
    counts = np.zeros(sim.atac.shape, dtype=np.int64)
    cell_index = pd.Index(sim.atac.obs_names).get_indexer(frags["barcode"].astype(str))
    n_in_peak = 0
    for chrom, part in frags.groupby("chrom", observed=True):
        pv = var[var["chrom"] == chrom]
        ps, pe = pv["start"].to_numpy(), pv["end"].to_numpy()
        cols = np.flatnonzero((var["chrom"] == chrom).to_numpy())
        s, e = part["start"].to_numpy(), part["end"].to_numpy()
        j = np.searchsorted(ps, s, side="right") - 1
        inside = (j >= 0) & (s >= ps[np.maximum(j, 0)]) & (e - 1 < pe[np.maximum(j, 0)])
        np.add.at(counts, (cell_index[part.index[inside]], cols[j[inside]]), 1)
        n_in_peak += int(inside.sum())
        # Background fragments touch no peak at all.
        k = np.searchsorted(ps, e[~inside], side="left")
        touching = (k > 0) & (pe[np.maximum(k - 1, 0)] > s[~inside])
        assert not touching.any()
    np.testing.assert_array_equal(counts, sim.atac.X.toarray())
    assert len(frags) > n_in_peak  # some background
    again = simulate_fragments(sim.atac, tmp_path / "g.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=1)
    assert gzip.open(again).read() == gzip.open(path).read()


@pytest.mark.parametrize("compression", ["gzip", None])
def test_simulate_fragments__compression_and_overwrite(tmp_path, compression):
    sim = simulate_multiome(n_cells=30, n_peaks=200, n_genes=30, n_linked_genes=5, seed=0)
    path = simulate_fragments(sim.atac, tmp_path / "f.tsv", chrom_sizes=sim.chrom_sizes, seed=0,
                              compression=compression, background=0.0)
    with open(path, "rb") as fh:
        assert (fh.read(2) == b"\x1f\x8b") == (compression == "gzip")
    assert len(read_fragments(path)) == int(sim.atac.X.sum())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        simulate_fragments(sim.atac, path, chrom_sizes=sim.chrom_sizes, seed=0)
