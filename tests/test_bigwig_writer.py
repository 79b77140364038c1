"""The numpy BigWig writer, read back by two independent readers (pybigtools and libBigWig).

Every number is checked against a plain numpy recomputation: the stored intervals, the header
summary, and each zoom level's records (bases covered, min, max, sum per aligned bin).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pybigtools
import pytest

from p2g_dask.io._bigwig_writer import (
    BEDGRAPH_ITEM,
    ITEMS_PER_SLOT,
    ZOOM_RECORD,
    choose_reductions,
    write_runs_bigwig,
)


def _random_runs(rng, length, n, max_width, gap=50):
    """Sorted, non-overlapping runs with float32-exact values; some span many zoom bins."""
    start = np.cumsum(rng.integers(1, gap, n)) + rng.integers(0, 100)
    width = rng.integers(1, max_width, n)
    end = np.minimum(start + width, np.append(start[1:], length))
    keep = (end > start) & (end <= length)
    start, end = start[keep], end[keep]
    value = (rng.integers(1, 400, start.size) / 8).astype(np.float32)
    return start.astype(np.int64), end.astype(np.int64), value


@pytest.fixture(scope="module")
def genome():
    """300 chromosomes (a two-level chromosome tree), the first with > 256 sections (two-level R-tree)."""
    rng = np.random.default_rng(7)
    names = ["chr1", "chr10", "chr2", "chrX", "chrUn_KI270302v1"] + [f"scaffold_{i}" for i in range(295)]
    sizes = {name: int(rng.integers(20_000, 60_000)) for name in names}
    sizes["chr1"] = 20_000_000
    runs = {"chr1": _random_runs(rng, sizes["chr1"], 300_000, 30)}
    runs["chr10"] = _random_runs(rng, sizes["chr10"], 50, 5_000, gap=400)  # long runs, 'fragment'-like
    for name in names[2:200]:  # chromosomes 200+ stay empty and must be left out of the header
        runs[name] = _random_runs(rng, sizes[name], int(rng.integers(1, 500)), 20)
    return sizes, runs


@pytest.fixture(scope="module")
def written(genome, tmp_path_factory):
    sizes, runs = genome
    path = tmp_path_factory.mktemp("bw") / "x.bw"
    info = write_runs_bigwig(path, sizes, runs)
    return path, info


def _zoom_reference(start, end, value, reduction):
    """Per aligned bin of ``reduction`` (pandas groupby over run pieces): first covered base,
    last covered end, bases covered, min, max and sum."""
    first_bin, last_bin = start // reduction, (end - 1) // reduction
    run = np.repeat(np.arange(start.size), last_bin - first_bin + 1)
    offset = np.arange(run.size) - np.repeat(np.cumsum(last_bin - first_bin + 1) - (last_bin - first_bin + 1),
                                             last_bin - first_bin + 1)
    bin_ = first_bin[run] + offset
    lo = np.maximum(start[run], bin_ * reduction)
    hi = np.minimum(end[run], (bin_ + 1) * reduction)
    v = value[run].astype(np.float64)
    pieces = pd.DataFrame({"bin": bin_, "lo": lo, "hi": hi, "w": hi - lo, "v": v, "vw": v * (hi - lo)})
    table = pieces.groupby("bin").agg(lo=("lo", "first"), hi=("hi", "last"), w=("w", "sum"),
                                      vmin=("v", "min"), vmax=("v", "max"), vw=("vw", "sum"))
    return table


def test_header_and_summary_match_numpy(genome, written):
    sizes, runs = genome
    path, info = written
    bw = pybigtools.open(str(path))
    assert dict(bw.chroms()) == {c: sizes[c] for c in runs}
    width = np.concatenate([e - s for s, e, _ in runs.values()])
    value = np.concatenate([v for *_, v in runs.values()]).astype(np.float64)
    summary = bw.info()["summary"]
    assert summary["basesCovered"] == width.sum() == info["bases_covered"]
    assert summary["sum"] == pytest.approx((width * value).sum(), rel=1e-12)
    assert (summary["min"], summary["max"]) == (value.min(), value.max())
    assert info["n_intervals"] == width.size
    assert bw.info()["zoomLevels"] == len(info["zoom_levels"]) >= 3


def test_intervals_read_back_exactly_by_pybigtools(genome, written):
    sizes, runs = genome
    bw = pybigtools.open(str(written[0]))
    for chrom, (s, e, v) in runs.items():
        got = np.array(list(bw.records(chrom)), dtype=np.float64)
        assert got.shape == (s.size, 3), chrom
        np.testing.assert_array_equal(got[:, 0], s)
        np.testing.assert_array_equal(got[:, 1], e)
        np.testing.assert_array_equal(got[:, 2], v)
    # A window query goes through the R-tree: per-base values equal a dense numpy pileup.
    s, e, v = runs["chr1"]
    dense = np.zeros(sizes["chr1"], np.float32)
    for a, z, x in zip(s, e, v):
        dense[a:z] = x
    for lo, hi in [(0, 5_000), (3_333_333, 3_400_000), (int(e[-1]) - 1_000, int(e[-1]) + 10)]:
        np.testing.assert_array_equal(bw.values("chr1", lo, hi, fillna=0), dense[lo:hi])


def test_zoom_records_match_numpy_at_every_level(genome, written):
    sizes, runs = genome
    path, info = written
    bw = pybigtools.open(str(path))
    assert bw.zooms() == info["zoom_levels"]
    assert all(b == 4 * a for a, b in itertools.pairwise(info["zoom_levels"]))
    for reduction in info["zoom_levels"]:
        for chrom in ["chr1", "chr10", "chr2", "scaffold_150"]:
            s, e, v = runs[chrom]
            expected = _zoom_reference(s, e, v, reduction)
            got = np.array([(a, z, d["bases_covered"], d["min_val"], d["max_val"], d["sum"])
                            for a, z, d in bw.zoom_records(reduction, chrom)])
            assert got.shape == (len(expected), 6), (chrom, reduction)
            np.testing.assert_array_equal(got[:, :3], expected[["lo", "hi", "w"]].to_numpy())
            np.testing.assert_allclose(got[:, 3:], expected[["vmin", "vmax", "vw"]].to_numpy(), rtol=1e-6)


def test_read_back_by_libbigwig(genome, written):
    pyBigWig = pytest.importorskip("pyBigWig", reason="pyBigWig (libBigWig) is in the test extras")
    sizes, runs = genome
    path, info = written
    bw = pyBigWig.open(str(path))
    assert bw.chroms() == {c: sizes[c] for c in runs}
    assert bw.header()["nLevels"] == len(info["zoom_levels"])
    for chrom in ["chr1", "chr10", "chrUn_KI270302v1", "scaffold_194"]:
        s, e, v = runs[chrom]
        got = np.array(bw.intervals(chrom), dtype=np.float64)
        np.testing.assert_array_equal(got, np.column_stack([s, e, v.astype(np.float64)]))
        length = sizes[chrom]
        dense = np.full(length, np.nan)
        for a, z, x in zip(s, e, v):
            dense[a:z] = x
        n_bins = 8
        edges = [i * length // n_bins for i in range(n_bins + 1)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins: NaN expected
            expected = [np.nanmean(dense[a:z]) for a, z in zip(edges[:-1], edges[1:])]
        exact = np.array(bw.stats(chrom, 0, length, nBins=n_bins, exact=True), dtype=np.float64)
        np.testing.assert_allclose(exact, expected, rtol=1e-6)


def test_same_intervals_as_pybigtools_writer(genome, tmp_path):
    sizes, runs = genome
    some = {c: runs[c] for c in ["chr2", "chrX", "scaffold_7"]}
    ours, theirs = tmp_path / "ours.bw", tmp_path / "theirs.bw"
    write_runs_bigwig(ours, sizes, some)
    items = ((c, int(a), int(z), float(x)) for c in sorted(some) for a, z, x in zip(*some[c]))
    pybigtools.open(str(theirs), "w").write({c: sizes[c] for c in sorted(some)}, items)
    a, b = pybigtools.open(str(ours)), pybigtools.open(str(theirs))
    assert dict(a.chroms()) == dict(b.chroms())
    for chrom in some:
        assert list(a.records(chrom)) == list(b.records(chrom))
        np.testing.assert_array_equal(a.values(chrom, fillna=0), b.values(chrom, fillna=0))


def test_one_interval_no_zoom(tmp_path):
    path = tmp_path / "one.bw"
    info = write_runs_bigwig(path, {"chrM": 16_569}, {"chrM": (np.array([0]), np.array([16_569]), np.array([0.0]))})
    bw = pybigtools.open(str(path))
    assert info["zoom_levels"] == [] and bw.zooms() == []
    assert list(bw.records("chrM")) == [(0, 16_569, 0.0)]
    assert bw.info()["summary"]["basesCovered"] == 16_569


def test_choose_reductions_first_level_halves_the_bytes():
    rng = np.random.default_rng(0)
    s, e, _ = _random_runs(rng, 10_000_000, 50_000, 3, gap=100)
    reductions = choose_reductions([(s, e)], min_width=1, longest=10_000_000)
    data_bytes = s.size * BEDGRAPH_ITEM.itemsize

    def n_records(r):
        bins = np.concatenate([np.arange(a // r, (z - 1) // r + 1) for a, z in zip(s, e)])
        return np.unique(bins).size

    first = reductions[0]
    assert n_records(first) * ZOOM_RECORD.itemsize * 2 <= data_bytes
    assert n_records(first // 2) * ZOOM_RECORD.itemsize * 2 > data_bytes  # the smallest that does
    assert first % 10 == 0 and all(b == 4 * a for a, b in itertools.pairwise(reductions))
    counts = [n_records(r) for r in reductions]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
    assert choose_reductions([], min_width=1, longest=100) == []
    assert ITEMS_PER_SLOT == 1024
