"""peak_matrix and merge_peaks against plain numpy counts of the same fragments and peaks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from _fragment_files import write_fragment_file
from _sample_files import numpy_counts
from p2g_dask.io._peak_matrix_kernels import count_peaks
from p2g_dask.io.peak_counts import peak_matrix
from p2g_dask.io.peak_sets import merge_peaks, read_peaks


def _random_case(rng, n_frags=4000, n_cells=30):
    peaks = []
    for chrom in ("chr1", "chr2"):
        starts = np.sort(rng.choice(np.arange(0, 50_000, 10), 60, replace=False))
        widths = rng.integers(50, 600, starts.size)  # some overlap their neighbour
        peaks.append(pd.DataFrame({"chrom": chrom, "start": starts, "end": starts + widths}))
    peaks = pd.concat(peaks, ignore_index=True)
    chrom = rng.choice(["chr1", "chr2", "chr3"], n_frags)
    start = rng.integers(0, 50_000, n_frags)
    end = start + rng.integers(1, 700, n_frags)  # 1-bp fragments: both insertions at one base
    cells = [f"c{i}" for i in range(n_cells)]
    frags = pd.DataFrame({"chrom": chrom, "start": start, "end": end, "barcode": rng.choice(cells + ["bg"], n_frags),
                          "count": 1})
    frags = frags.sort_values(["chrom", "start", "end"], kind="stable").reset_index(drop=True)
    return frags, read_peaks(peaks), cells


@pytest.mark.parametrize("strategy", ["insertion", "paired-insertion", "fragment"])
@pytest.mark.parametrize("ceiling", [4, None, 1])
def test_count_peaks__matches_numpy_with_overlapping_peaks(strategy, ceiling):
    rng = np.random.default_rng(3)
    frags, peaks, cells = _random_case(rng)
    part = frags[frags["chrom"] == "chr1"]
    on = peaks[peaks["chrom"] == "chr1"]
    rows = pd.Index(cells).get_indexer(part["barcode"])
    keep = rows >= 0
    data, indices, indptr = count_peaks(part["start"].to_numpy(np.uint32)[keep], part["end"].to_numpy(np.uint32)[keep],
                                        rows[keep].astype(np.int32), len(cells), on["start"], on["end"],
                                        ceiling=ceiling, counting_strategy=strategy)
    got = sp.csr_matrix((data, indices, indptr), shape=(len(cells), len(on)))
    assert got.has_sorted_indices
    want = numpy_counts(part, on, cells, strategy=strategy, ceiling=ceiling)
    np.testing.assert_array_equal(got.toarray(), want)
    assert (got.data > 0).all()


def test_count_peaks__archr_rule_by_hand():
    # Peaks [100, 200), [150, 250) overlap; [300, 400) apart. 0-based insertions: start and end - 1.
    peaks = read_peaks(["chr1:100-200", "chr1:150-250", "chr1:300-400"])
    cases = [  # (start, end) -> counts in the three peaks, ArchR's insertion rule, no cap
        ((110, 121), [2, 0, 0]),   # both ends in one peak: 2
        ((120, 320), [1, 0, 1]),   # ends in two different peaks: 1 each
        ((160, 171), [2, 2, 0]),   # both ends where two peaks overlap: 2 in both
        ((99, 200), [1, 1, 0]),    # 99 is in no peak; end - 1 = 199 is in [100, 200) and [150, 250)
        ((200, 300), [0, 1, 0]),   # 200 is past [100, 200) (half-open), in [150, 250); 299 is in none
    ]
    for (start, end), want in cases:
        d, i, p = count_peaks(np.array([start]), np.array([end]), np.zeros(1, np.int32), 1, peaks["start"],
                              peaks["end"], ceiling=None)
        assert sp.csr_matrix((d, i, p), shape=(1, 3)).toarray().ravel().tolist() == want, (start, end)
    # The ceiling caps a cell's count in a peak: five fragments inside one peak count 10 -> 4.
    d, i, p = count_peaks(np.full(5, 110), np.full(5, 121), np.zeros(5, np.int32), 1, peaks["start"], peaks["end"])
    assert d.tolist() == [4] and i.tolist() == [0]


def test_peak_matrix__two_samples_over_blocks_equal_numpy(tmp_path):
    rng = np.random.default_rng(5)
    frags, peaks, cells = _random_case(rng, n_frags=6000, n_cells=40)
    half = set(cells[:20])
    files = {}
    for name, mine in (("s1", frags["barcode"].isin(half)), ("s2", ~frags["barcode"].isin(half))):
        files[name] = write_fragment_file(tmp_path / f"{name}.tsv.gz", frags[mine], compression="bgzip")
    obs = pd.DataFrame({"sample": ["s1" if c in half else "s2" for c in cells]}, index=cells)
    want = numpy_counts(frags, peaks, cells)
    for chunk_cells in (7, 1000):
        got = peak_matrix(files, peaks, cells=obs, sample_id_col="sample", chunk_cells=chunk_cells,
                          cache_fragments=tmp_path / "cache")
        assert got.var_names.tolist() == peaks.index.tolist()
        np.testing.assert_array_equal(got.X.toarray(), want)


@pytest.mark.real_data("ArchR's counting rule on the real PBMC fragment file, split in two pseudo-samples")
def test_peak_matrix__real_pbmc_split_in_two_pseudo_samples(shared_data, tmp_path):
    import anndata as ad

    from p2g_dask.io.fragments import read_fragments

    folder = shared_data / "pbmc_multiome_1k"
    atac = ad.read_h5ad(folder / "atac.h5ad")
    frags = read_fragments(folder / "fragments.tsv.gz")
    frags["barcode"] = frags["barcode"].astype(str)
    frags["chrom"] = frags["chrom"].astype(str)
    cells = atac.obs_names.tolist()
    halves = {"p1": set(cells[::2]), "p2": set(cells[1::2])}
    files = {s: write_fragment_file(tmp_path / f"{s}.tsv.gz", frags[frags["barcode"].isin(b)], compression="bgzip")
             for s, b in halves.items()}
    # Each pseudo-sample calls its own peaks: the real ones shifted by +-40 bp, then merged.
    real = read_peaks(atac.var_names)
    shifted = {s: real.assign(start=real["start"] + d, end=real["end"] + d) for s, d in (("p1", -40), ("p2", 40))}
    merged = merge_peaks(shifted)
    obs = pd.DataFrame({"sample": ["p1" if c in halves["p1"] else "p2" for c in cells]}, index=cells)
    got = peak_matrix(files, merged, cells=obs, sample_id_col="sample")
    want = numpy_counts(frags, merged, cells)
    np.testing.assert_array_equal(got.X.toarray(), want)
    assert want.sum() > 10_000  # the real file puts many insertions in these peaks


def test_merge_peaks__union_of_overlapping_and_touching_peaks():
    merged = merge_peaks({"a": ["chr1:100-200", "chr1:500-600", "chr2:10-20"],
                          "b": ["chr1:150-300", "chr1:600-700", "chr1:900-950"],
                          "c": ["chr1:290-310"]})
    assert merged.index.tolist() == ["chr1:100-310", "chr1:500-700", "chr1:900-950", "chr2:10-20"]
    assert merged["n_samples"].tolist() == [3, 2, 1, 1]
    kept = merge_peaks({"a": ["chr1:100-200"], "b": ["chr1:150-300", "chr1:900-950"]}, min_samples=2)
    assert kept.index.tolist() == ["chr1:100-300"]


def test_merge_peaks__matches_a_brute_force_union():
    rng = np.random.default_rng(11)
    sets = {}
    for s in range(4):
        start = rng.integers(0, 20_000, 80)
        sets[s] = pd.DataFrame({"chrom": "chr1", "start": start, "end": start + rng.integers(1, 400, 80)})
    covered = np.zeros(21_000, bool)
    for table in sets.values():
        for a, b in zip(table["start"], table["end"]):
            covered[a:b] = True
    # Touching intervals join too, so the union's runs are the covered runs.
    edges = np.flatnonzero(np.diff(np.r_[0, covered.astype(int), 0]))
    merged = merge_peaks(sets)
    assert merged["start"].tolist() == edges[::2].tolist()
    assert merged["end"].tolist() == edges[1::2].tolist()


def test_peak_matrix__bad_arguments_name_the_argument(tmp_path):
    path = write_fragment_file(tmp_path / "f.tsv.gz", pd.DataFrame(
        {"chrom": ["chr1"], "start": [10], "end": [50], "barcode": ["A"], "count": [1]}))
    with pytest.raises(ValueError, match="counting_strategy='reads'"):
        peak_matrix(path, ["chr1:0-100"], counting_strategy="reads")
    with pytest.raises(ValueError, match="ceiling=0"):
        peak_matrix(path, ["chr1:0-100"], ceiling=0)
    with pytest.raises(ValueError, match="none of the cells"):
        peak_matrix(path, ["chr1:0-100"], cells=["B"])
    with pytest.raises(FileNotFoundError, match="peaks="):
        peak_matrix(path, str(tmp_path / "missing.bed"))
