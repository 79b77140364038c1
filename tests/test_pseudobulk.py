"""pseudobulk_with_fragments: BigWigs read back with pybigtools against a plain numpy pileup."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pybigtools
import pytest
from dask.callbacks import Callback

from _fragment_files import write_fragment_file
from p2g_dask.datasets.simulate import simulate_multiome
from p2g_dask.datasets.simulate_fragments import simulate_fragments
from p2g_dask.tl.pseudobulk._coverage import fragment_runs, insertion_runs
from p2g_dask.tl.pseudobulk.pseudobulk import pseudobulk_with_fragments

CHROMS = {"chr1": 1000, "chr2": 500}


def _toy_fragments(seed=0):
    """Fragments of 8 cells on chr1/chr2, plus lines that must be skipped or ignored."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(300):
        chrom = "chr1" if i % 3 else "chr2"
        start = int(rng.integers(0, CHROMS[chrom] - 60))
        rows.append((chrom, start, start + int(rng.integers(1, 60)), f"BC{i % 8}-1", int(rng.integers(1, 4))))
    rows += [
        ("chr2", 480, 500, "BC1-1", 1),   # ends exactly at the chromosome end: kept (default shift)
        ("chr2", 490, 520, "BC2-1", 1),   # runs past chr2's end: skipped
        ("chr1", 2, 9, "BC3-1", 1),       # 7 bp: kept unshifted, empty after (4, -5)
        ("chrUn", 10, 90, "BC0-1", 1),    # chromosome not in chromsizes: skipped
        ("chr1", 100, 200, "NOTACELL-1", 1),  # barcode not in input_data: ignored
    ]
    df = pd.DataFrame(rows, columns=["chrom", "start", "end", "barcode", "count"])
    return df.sort_values(["chrom", "start"], kind="stable").reset_index(drop=True)


def _write(path, df, compression="gzip"):
    return write_fragment_file(path, df, compression, header=("# id=toy", "# reference=none"))


def _toy_cells():
    obs = pd.DataFrame({"grp": pd.Categorical(["A", "A", "B", "B", "A", "B", None, "C"])},
                       index=[f"BC{i}-1" for i in range(8)])
    return ad.AnnData(obs=obs)


def _pileup(df, barcodes, chroms, strategy, shift=(0, 0), normalize=False, bin_size=1):
    """Dense per-base coverage of the fragments of ``barcodes``, computed independently."""
    out = {c: np.zeros(n, dtype=np.float64) for c, n in chroms.items()}
    total = 0
    for row in df[df["barcode"].isin(barcodes) & df["chrom"].isin(list(chroms))].itertuples():
        s, e = row.start + shift[0], row.end + shift[1]
        if s < 0 or e > chroms[row.chrom] or e <= s:
            continue
        if strategy == "cutsite":
            out[row.chrom][s] += 1
            out[row.chrom][e - 1] += 1
            total += 2
        else:
            out[row.chrom][s:e] += 1
            total += 1
    if normalize and total:
        out = {c: v * 1e6 / total for c, v in out.items()}
    if bin_size > 1:
        out = {c: np.repeat(np.add.reduceat(v, np.arange(0, v.size, bin_size)), bin_size)[: v.size]
               for c, v in out.items()}
    return out


def _read_bw(path, chroms):
    bw = pybigtools.open(str(path))
    assert dict(bw.chroms()) == chroms
    out = {c: bw.values(c, 0, n, fillna=0.0) for c, n in chroms.items()}
    bw.close()
    return out


def _assert_bw(path, want):
    got = _read_bw(path, {c: v.size for c, v in want.items()})
    for c in want:
        np.testing.assert_allclose(got[c], want[c], rtol=1e-6, atol=1e-9, err_msg=c)


def _run(tmp_path, frag_path, **kw):
    args = dict(chromsizes=CHROMS, cluster_key="grp", path_to_fragments={"toy": frag_path},
                bigwig_path=tmp_path / "bw", executor="synchronous", show_progress=False)
    data = kw.pop("input_data", None)
    args.update(kw)
    return pseudobulk_with_fragments(_toy_cells() if data is None else data, **args)


@pytest.mark.parametrize("strategy", ["cutsite", "fragment"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shift", [(0, 0), (4, -5)])
def test_pseudobulk_with_fragments__matches_numpy_pileup(tmp_path, strategy, normalize, shift):
    df = _toy_fragments()
    path = _write(tmp_path / "frags.tsv.gz", df)
    cells = _toy_cells()
    bws = _run(tmp_path, path, bigwig_strategy=strategy, normalize_bigwig=normalize, shift=shift)
    assert list(bws) == ["A", "B", "C"]  # category order; the cell without a group is left out
    for group, bw in bws.items():
        barcodes = cells.obs_names[cells.obs["grp"] == group]
        _assert_bw(bw, _pileup(df, barcodes, CHROMS, strategy, shift, normalize))
    # The counted 7-bp fragment and the chr2-end fragment actually mattered for this data.
    if strategy == "cutsite" and shift == (0, 0) and not normalize:
        assert _read_bw(bws["B"], CHROMS)["chr1"][[2, 8]].min() >= 1


@pytest.mark.parametrize("strategy", ["cutsite", "fragment"])
def test_pseudobulk_with_fragments__bins(tmp_path, strategy):
    df = _toy_fragments(1)
    path = _write(tmp_path / "frags.tsv.gz", df)
    bws = _run(tmp_path, path, bigwig_strategy=strategy, normalize_bigwig=True, bin_size=70)
    cells = _toy_cells()
    for group, bw in bws.items():
        barcodes = cells.obs_names[cells.obs["grp"] == group]
        _assert_bw(bw, _pileup(df, barcodes, CHROMS, strategy, normalize=True, bin_size=70))


@pytest.mark.parametrize("strategy", ["cutsite", "fragment"])
def test_pseudobulk_with_fragments__pybigtools_writer_same_values(tmp_path, strategy):
    df = _toy_fragments(3)
    path = _write(tmp_path / "frags.tsv.gz", df)
    cells = _toy_cells()
    ours = _run(tmp_path / "p2g", path, bigwig_strategy=strategy)
    theirs = _run(tmp_path / "pybigtools", path, bigwig_strategy=strategy, bigwig_writer="pybigtools")
    for group in ours:
        want = _pileup(df, cells.obs_names[cells.obs["grp"] == group], CHROMS, strategy, normalize=True)
        _assert_bw(ours[group], want)
        _assert_bw(theirs[group], want)
        a, b = pybigtools.open(ours[group]), pybigtools.open(theirs[group])
        assert dict(a.chroms()) == dict(b.chroms())
        for chrom in dict(a.chroms()):
            assert list(a.records(chrom)) == list(b.records(chrom))


@pytest.mark.parametrize("compression", ["bgzip", None])
def test_pseudobulk_with_fragments__compressions_agree(tmp_path, compression):
    df = _toy_fragments(2)
    ref = _run(tmp_path / "gz", _write(tmp_path / "a.tsv.gz", df))
    other = _run(tmp_path / "other", _write(tmp_path / "b.tsv", df, compression))
    for g in ref:
        a, b = _read_bw(ref[g], CHROMS), _read_bw(other[g], CHROMS)
        for c in CHROMS:
            np.testing.assert_array_equal(a[c], b[c])


def test_pseudobulk_with_fragments__multiple_samples(tmp_path):
    df1, df2 = _toy_fragments(3), _toy_fragments(4)  # the same raw barcodes in both files
    f1, f2 = _write(tmp_path / "s1.tsv.gz", df1), _write(tmp_path / "s2.tsv", df2, None)
    obs = pd.DataFrame(
        {"grp": ["A", "B", "A", "B", "B", "A"], "sample": ["s1", "s1", "s1", "s2", "s2", "s2"]},
        index=["s1_BC0-1", "s1_BC1-1", "s1_BC2-1", "s2_BC0-1", "s2_BC5-1", "s2_BC6-1"],
    )
    cells = ad.AnnData(obs=obs)
    bws = _run(tmp_path, None, input_data=cells, path_to_fragments={"s1": f1, "s2": f2},
               sample_id_col="sample", normalize_bigwig=True, executor="thread", n_jobs=2,
               bed_path=tmp_path / "bed")
    for group in ["A", "B"]:
        mine = obs[obs["grp"] == group]
        raw = {s: [n.split("_", 1)[1] for n in mine.index[mine["sample"] == s]] for s in ("s1", "s2")}
        both = pd.concat([df1[df1["barcode"].isin(raw["s1"])], df2[df2["barcode"].isin(raw["s2"])]])
        want = _pileup(both, set(both["barcode"]), CHROMS, "cutsite", normalize=True)
        _assert_bw(bws[group], want)
        bed = pd.read_csv(tmp_path / "bed" / f"{group}.bed.gz", sep="\t", header=None, names=list(df1.columns))
        prefixed = pd.concat([df1.assign(barcode="s1_" + df1["barcode"]), df2.assign(barcode="s2_" + df2["barcode"])])
        want_bed = prefixed[prefixed["barcode"].isin(mine.index) & prefixed["chrom"].isin(list(CHROMS))]
        want_bed = want_bed[want_bed["end"] <= want_bed["chrom"].map(CHROMS)]
        key = ["chrom", "start", "end", "barcode"]
        assert bed.sort_values(key).values.tolist() == want_bed.sort_values(key).values.tolist()
        assert bed["chrom"].tolist() == sorted(bed["chrom"], key=list(CHROMS).index)


def test_pseudobulk_with_fragments__cache_reuse_and_invalidation(tmp_path):
    df = _toy_fragments(5)
    path = _write(tmp_path / "frags.tsv.gz", df)
    cache = tmp_path / "cache"
    _run(tmp_path, path, cache_fragments=cache, normalize_bigwig=False)
    manifest = cache / "toy" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    bws = _run(tmp_path, path, cache_fragments=cache, normalize_bigwig=False, overwrite=True)
    assert manifest.stat().st_mtime_ns == stamp  # reused
    # Change the source: the cache must be rebuilt and the BigWigs must show the new fragments.
    extra = pd.DataFrame([("chr1", 900, 950, "BC0-1", 1)] * 5, columns=df.columns)
    df2 = pd.concat([df, extra]).sort_values(["chrom", "start"], kind="stable")
    _write(path, df2)
    bws = _run(tmp_path, path, cache_fragments=cache, normalize_bigwig=False, overwrite=True)
    assert manifest.stat().st_mtime_ns != stamp
    cells = _toy_cells()
    _assert_bw(bws["A"], _pileup(df2, cells.obs_names[cells.obs["grp"] == "A"], CHROMS, "cutsite"))
    assert not list(tmp_path.glob("bw/.p2g-tmp-*"))  # no temporary cache or BigWig left behind


def test_pseudobulk_with_fragments__group_without_fragments(tmp_path):
    df = _toy_fragments(6)
    df = df[df["barcode"] != "BC7-1"]  # group C's only cell has no fragments
    path = _write(tmp_path / "frags.tsv.gz", df)
    with pytest.warns(UserWarning, match="'C' has no fragments"):
        bws = _run(tmp_path, path)
    got = _read_bw(bws["C"], CHROMS)  # a valid BigWig of zeros
    assert all(np.all(v == 0) for v in got.values())
    assert pybigtools.open(bws["C"]).info()["summary"]["basesCovered"] == sum(CHROMS.values())


def test_pseudobulk_with_fragments__balance_clusters(tmp_path):
    df = _toy_fragments(7)
    path = _write(tmp_path / "frags.tsv.gz", df)
    runs = []
    for out in ("one", "two"):
        bws = _run(tmp_path / out, path, balance_clusters=True, seed=4, bed_path=tmp_path / out / "bed",
                   normalize_bigwig=False)
        runs.append(bws)
        for group, bw in bws.items():
            bed = pd.read_csv(tmp_path / out / "bed" / f"{group}.bed.gz", sep="\t", header=None,
                              names=list(df.columns))
            assert bed["barcode"].nunique() == 1  # C has one cell, so every group keeps one
            _assert_bw(bw, _pileup(df, set(bed["barcode"]), CHROMS, "cutsite"))
    for g in runs[0]:
        assert Path(runs[0][g]).read_bytes() == Path(runs[1][g]).read_bytes()  # seeded


def test_pseudobulk_with_fragments__local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    df = _toy_fragments(8)
    path = _write(tmp_path / "frags.tsv.gz", df)
    cells = _toy_cells()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster):
        bws = _run(tmp_path, path, executor="dask", bigwig_strategy="fragment", show_progress=True)
    for group, bw in bws.items():
        _assert_bw(bw, _pileup(df, cells.obs_names[cells.obs["grp"] == group], CHROMS, "fragment", normalize=True))


def test_pseudobulk_with_fragments__graph_keys(tmp_path):
    keys = []
    path = _write(tmp_path / "frags.tsv.gz", _toy_fragments(9))
    with Callback(pretask=lambda key, dsk, state: keys.append(key)):
        _run(tmp_path, path, bed_path=tmp_path / "bed")
    steps = {re.fullmatch(r"(p2g-[a-z]+)-[0-9a-f]{32}", k).group(1) for k in keys}
    assert steps == {"p2g-fragcache", "p2g-split", "p2g-pileup", "p2g-bigwig", "p2g-bed"}
    assert sum(k.startswith("p2g-pileup-") for k in keys) == 3 * len(CHROMS)  # groups x chromosomes
    # Group and chromosome names live in the token only: these keys name no group or chromosome.
    assert not any(name in k for k in keys for name in ("chr", "-A-", "-B-", "-C-"))


def test_pseudobulk_with_fragments__chromsizes_forms_and_overwrite(tmp_path):
    path = _write(tmp_path / "frags.tsv.gz", _toy_fragments(10))
    sizes_file = tmp_path / "sizes.txt"
    sizes_file.write_text("chr1\t1000\nchr2\t500\n")
    pr = pytest.importorskip("pyranges")
    forms = {"file": sizes_file, "df": pd.DataFrame({"chrom": ["chr1", "chr2"], "size": [1000, 500]}),
             "pyranges": pr.PyRanges(pd.DataFrame({"Chromosome": ["chr1", "chr2"], "Start": [0, 0], "End": [1000, 500]}))}
    ref = _run(tmp_path / "dict", path)
    for name, sizes in forms.items():
        got = _run(tmp_path / name, path, chromsizes=sizes)
        assert Path(got["A"]).read_bytes() == Path(ref["A"]).read_bytes(), name
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _run(tmp_path / "dict", path)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"bigwig_strategy": "reads"}, "bigwig_strategy='reads'"),
     ({"cluster_key": "nope"}, "cluster_key='nope'"),
     ({"shift": (4,)}, "shift="),
     ({"shift": (4, -5, 1)}, "shift="),
     ({"cluster_key": "grp", "input_data": ad.AnnData(obs=pd.DataFrame({"grp": ["a/b", "a_b"]}, index=["x", "y"]))},
      "same file name"),
     ({"bin_size": 0}, "bin_size=0"),
     ({"executor": "mpi"}, "executor='mpi'"),
     ({"path_to_fragments": {"a": "x.tsv.gz", "b": "y.tsv.gz"}}, "do not exist"),
     ({"chromsizes": {"chr1": -5}}, "positive integers"),
     ({"chromsizes": {"chr1": 2**32}}, "32-bit"),
     ({"bigwig_writer": "ucsc"}, "bigwig_writer='ucsc'")],
)
def test_pseudobulk_with_fragments__bad_arguments(tmp_path, kw, match):
    path = _write(tmp_path / "frags.tsv.gz", _toy_fragments())
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        _run(tmp_path, path, **kw)


def test_pseudobulk_with_fragments__several_files_need_sample_col(tmp_path):
    f1 = _write(tmp_path / "a.tsv.gz", _toy_fragments())
    with pytest.raises(ValueError, match="sample_id_col"):
        _run(tmp_path, f1, path_to_fragments={"a": f1, "b": f1})


def test_coverage_runs__match_dense_pileup():
    rng = np.random.default_rng(11)
    for _ in range(100):
        length, n, bin_size = 3000, int(rng.integers(0, 60)), int(rng.choice([1, 7, 64]))
        s = rng.integers(0, length - 100, n)
        e = s + rng.integers(1, 100, n)
        cut, cov = np.zeros(length), np.zeros(length)
        np.add.at(cut, s, 1)
        np.add.at(cut, e - 1, 1)
        for a, b in zip(s, e):
            cov[a:b] += 1
        for fn, dense in ((insertion_runs, cut), (fragment_runs, cov)):
            runs = fn(s, e, chrom_length=length, bin_size=bin_size)
            want = np.repeat(np.add.reduceat(dense, np.arange(0, length, bin_size)), bin_size)[:length]
            got = np.zeros(length)
            for a, b, v in zip(*runs):
                got[a:b] = v
            np.testing.assert_array_equal(got, want)
            touching = (runs.end[:-1] == runs.start[1:]) & (runs.value[:-1] == runs.value[1:])
            assert not touching.any() and (runs.value > 0).all()  # maximal, nonzero runs


def test_pseudobulk_with_fragments__simulated_multiome(tmp_path):
    sim = simulate_multiome(n_cells=120, n_peaks=600, n_genes=60, n_linked_genes=6, seed=2)
    frags = simulate_fragments(sim.atac, tmp_path / "f.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=2)
    bws = pseudobulk_with_fragments(sim.atac, chromsizes=sim.chrom_sizes, cluster_key="cell_type",
                                    path_to_fragments={"sim": frags}, bigwig_path=tmp_path / "bw",
                                    executor="thread", n_jobs=2, show_progress=False, normalize_bigwig=False)
    # Raw insertion sums per group = 2 x the group's fragments (in-peak matrix counts + background).
    for group, bw in bws.items():
        n_in_peaks = int(sim.atac[sim.atac.obs["cell_type"] == group].X.sum())
        total = pybigtools.open(bw).info()["summary"]["sum"]
        assert 2 * n_in_peaks <= total <= 2 * n_in_peaks * 1.2


def _windows(pos, gap=50_000):
    cuts = np.flatnonzero(np.diff(pos) > gap) + 1
    return [(int(w[0]), int(w[-1]) + 1) for w in np.split(pos, cuts)]


@pytest.mark.slow
@pytest.mark.real_data("a real Cell Ranger fragment file (bgzip + tabix, 16 chromosomes), base by base")
def test_pseudobulk_with_fragments__real_pbmc(shared_data, tmp_path):
    DATA = shared_data
    folder = DATA / "pbmc_multiome_1k"
    atac = ad.read_h5ad(folder / "atac.h5ad")
    atac.obs["half"] = np.where(np.arange(atac.n_obs) < atac.n_obs // 2, "first", "second")
    sizes = pd.read_csv(DATA / "hg38" / "hg38.chrom.sizes", sep="\t", header=None, names=["c", "n"])
    chroms = dict(zip(sizes["c"], sizes["n"]))
    frags = pd.read_csv(folder / "fragments.tsv.gz", sep="\t", header=None, comment="#",
                        names=["chrom", "start", "end", "barcode", "count"])
    for strategy in ("cutsite", "fragment"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no group may come out empty
            bws = pseudobulk_with_fragments(
                atac, chromsizes=DATA / "hg38" / "hg38.chrom.sizes", cluster_key="half",
                path_to_fragments={"pbmc": folder / "fragments.tsv.gz"}, bigwig_path=tmp_path / strategy,
                bigwig_strategy=strategy, normalize_bigwig=True, executor="thread", n_jobs=2,
                show_progress=False, cache_fragments=tmp_path / "cache")
        for group, bw_path in bws.items():
            mine = frags[frags["barcode"].isin(atac.obs_names[atac.obs["half"] == group])]
            assert len(mine) > 10_000
            total = 2 * len(mine) if strategy == "cutsite" else len(mine)
            bw = pybigtools.open(bw_path)
            for chrom, part in mine.groupby("chrom"):
                s, e = part["start"].to_numpy(), part["end"].to_numpy()
                pos = np.sort(np.concatenate([s, e - 1]))
                for lo, hi in _windows(pos):
                    want = np.zeros(hi - lo)
                    if strategy == "cutsite":
                        np.add.at(want, pos[(pos >= lo) & (pos < hi)] - lo, 1)
                    else:
                        inside = (s >= lo) & (e <= hi)
                        delta = np.zeros(hi - lo + 1)
                        np.add.at(delta, s[inside] - lo, 1)
                        np.add.at(delta, e[inside] - lo, -1)
                        want = np.cumsum(delta)[:-1]
                    np.testing.assert_allclose(bw.values(chrom, lo, hi, fillna=0.0), want * 1e6 / total,
                                               rtol=1e-6, err_msg=f"{group} {chrom}:{lo}-{hi}")
            assert np.isclose(bw.info()["summary"]["sum"],
                              1e6 if strategy == "cutsite" else 1e6 * (mine["end"] - mine["start"]).mean(), rtol=1e-4)
            assert dict(bw.chroms()) == {c: chroms[c] for c in mine["chrom"].unique()}


@pytest.mark.slow  # starting worker processes takes 15-20 s on a busy 2-core machine
@pytest.mark.parametrize("executor", ["process", "dask"])
def test_pseudobulk_with_fragments__own_workers(tmp_path, executor):
    # 'dask' with no client running starts (and closes) its own in-process LocalCluster.
    distributed = pytest.importorskip("distributed")
    with pytest.raises(ValueError):
        distributed.get_client()
    df = _toy_fragments(12)
    path = _write(tmp_path / "frags.tsv.gz", df)
    cells = _toy_cells()
    bws = _run(tmp_path, path, executor=executor, n_jobs=2, show_progress=False)
    for group, bw in bws.items():
        _assert_bw(bw, _pileup(df, cells.obs_names[cells.obs["grp"] == group], CHROMS, "cutsite", normalize=True))


def test_read_chrom_sizes__pseudobulk_forms(tmp_path):
    from p2g_dask.io.annotation import read_chrom_sizes

    sizes_file = tmp_path / "sizes.txt"
    sizes_file.write_text("# comment\nchr1\t1000\nchr2 500\n")
    pr = pytest.importorskip("pyranges")
    frame = pd.DataFrame({"Chromosome": ["chr1", "chr2"], "Start": [0, 0], "End": [1000, 500]})
    for form in (sizes_file, frame, pr.PyRanges(frame), pd.Series(CHROMS), CHROMS):
        assert read_chrom_sizes(form, argument="chromsizes") == CHROMS
    with pytest.raises(ValueError, match="chromsizes: chromosome 'chr1' has length 0; lengths must be positive integers"):
        read_chrom_sizes({"chr1": 0}, argument="chromsizes")
    with pytest.raises(ValueError, match="chromsizes has columns"):
        read_chrom_sizes(pd.DataFrame({"x": [1]}), argument="chromsizes")


@pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning")
def test_pseudobulk_with_fragments__store_and_mudata_inputs(tmp_path):
    df = _toy_fragments(13)
    path = _write(tmp_path / "frags.tsv.gz", df)
    cells = _toy_cells()
    atac = ad.AnnData(X=np.ones((8, 2), dtype=np.int32), obs=cells.obs.copy())
    ref = _run(tmp_path / "ref", path)
    inputs = {}
    mudata = pytest.importorskip("mudata")
    rna = ad.AnnData(X=np.ones((8, 3), dtype=np.int32), obs=cells.obs.copy())
    rna.var_names = ["g0", "g1", "g2"]
    inputs["mudata"] = mudata.MuData({"atac": atac, "rna": rna})
    inputs["mudata"].write(tmp_path / "cells.h5mu")
    inputs["h5mu path"] = tmp_path / "cells.h5mu"
    # Only obs is read from a file: an .h5ad without X (the groups alone) is enough.
    ad.AnnData(obs=cells.obs.copy()).write_h5ad(tmp_path / "obs_only.h5ad")
    inputs["obs-only h5ad path"] = str(tmp_path / "obs_only.h5ad")
    try:
        from p2g_dask.io.store import ingest
    except ImportError:
        ingest = None
    if ingest is not None:
        ingest(atac, rna, tmp_path / "cells.zarr")
        inputs["store path"] = tmp_path / "cells.zarr"
    for name, data in inputs.items():
        got = _run(tmp_path / name.replace(" ", "_").replace("-", "_"), path, input_data=data)
        assert list(got) == list(ref)
        for g in ref:
            assert Path(got[g]).read_bytes() == Path(ref[g]).read_bytes(), name


@pytest.mark.parametrize("writer", ["p2g", "pybigtools"])
def test_p2g_bigwig_command__obs_only_h5ad(tmp_path, capsys, writer):
    from p2g_dask.cli import main

    df = _toy_fragments(4)
    path = _write(tmp_path / "frags.tsv.gz", df)
    cells = _toy_cells()
    ad.AnnData(obs=cells.obs.copy()).write_h5ad(tmp_path / "cells.h5ad")
    (tmp_path / "sizes.txt").write_text("".join(f"{c}\t{n}\n" for c, n in CHROMS.items()))
    rc = main(["--quiet", "bigwig", str(tmp_path / "cells.h5ad"), "--fragments", f"toy={path}",
               "--chrom-sizes", str(tmp_path / "sizes.txt"), "--groupby", "grp", "--out", str(tmp_path / "bw"),
               "--jobs", "1", "--writer", writer])
    assert rc == 0
    written = dict(line.split("\t") for line in capsys.readouterr().out.strip().splitlines())
    assert list(written) == ["A", "B", "C"]
    for group, bw in written.items():
        _assert_bw(bw, _pileup(df, cells.obs_names[cells.obs["grp"] == group], CHROMS, "cutsite", normalize=True))
