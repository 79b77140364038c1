"""Tests of the genome-browser link writers (BEDPE, UCSC interact, WashU longrange)."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pandas as pd
import pytest

import p2g_dask as p2g
from p2g_dask.io.links_formats import write_links_bedpe, write_links_interact, write_links_longrange


@pytest.fixture(scope="module")
def links():
    """Planted links of the simulator as a links table (coordinates computed here with pandas)."""
    sim = p2g.datasets.simulate_multiome(n_cells=100, n_peaks=2000, n_genes=200, n_linked_genes=25, seed=11)
    t = sim.truth.merge(sim.genes, left_on="gene", right_on="gene_name")
    coords = t["peak"].str.extract(r"^(chr\w+):(\d+)-(\d+)$")
    tss = np.where(t["strand"] == "+", t["start"], t["end"] - 1)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "peak": t["peak"], "gene": t["gene"], "chrom": coords[0], "peak_start": coords[1].astype(int),
        "peak_end": coords[2].astype(int), "tss": tss, "distance": t["distance"],
        "correlation": rng.uniform(-1, 1, len(t)).round(4), "fdr": rng.uniform(0, 0.01, len(t)),
    })
    # Shuffle so that sorting is the writers' job.
    return table.sample(frac=1.0, random_state=1).reset_index(drop=True)


def read_rows(path, skip_comment: bool = True) -> list[list[str]]:
    lines = path.read_text().splitlines()
    return [ln.split("\t") for ln in lines if not (skip_comment and (ln.startswith("#") or ln.startswith("track ")))]


def test_write_links_bedpe__anchors_and_columns(links, tmp_path):
    path = write_links_bedpe(links, tmp_path / "links.bedpe")
    text = path.read_text().splitlines()
    assert text[0] == "#chrom1\tstart1\tend1\tchrom2\tstart2\tend2\tname\tscore\tstrand1\tstrand2\tgene\tfdr\tdistance"
    rows = read_rows(path)
    assert len(rows) == len(links) and all(len(r) == 13 for r in rows)
    got = pd.DataFrame(rows).set_index(6)
    for link in links.itertuples():
        r = got.loc[f"{link.gene}|{link.peak}"]
        assert [r[0], int(r[1]), int(r[2])] == [link.chrom, link.peak_start, link.peak_end]
        assert [r[3], int(r[4]), int(r[5])] == [link.chrom, link.tss, link.tss + 1]
        assert float(r[7]) == pytest.approx(link.correlation, abs=1e-6)
        assert int(r[12]) == link.distance == (link.peak_start + link.peak_end) // 2 - link.tss
    keys = [(r[0], int(r[1])) for r in rows]
    assert keys == sorted(keys)


def test_write_links_interact__bed5_13_coordinates(links, tmp_path):
    path = write_links_interact(links, tmp_path / "links.interact", name="demo")
    first = path.read_text().splitlines()[0]
    assert first.startswith('track type=interact name="demo"') and "interactDirectional=true" in first
    rows = read_rows(path)
    assert len(rows) == len(links) and all(len(r) == 18 for r in rows)
    by_name = {r[3]: r for r in rows}
    for link in links.itertuples():
        r = by_name[f"{link.gene}/{link.peak}"]
        assert r[0] == link.chrom
        assert int(r[1]) == min(link.peak_start, link.tss) and int(r[2]) == max(link.peak_end, link.tss + 1)
        assert int(r[4]) == round(1000 * abs(link.correlation)) and 0 <= int(r[4]) <= 1000
        assert float(r[5]) == pytest.approx(link.correlation, abs=1e-6)
        assert r[7] == ("#2166AC" if link.correlation < 0 else "#B2182B")
        assert r[8:13] == [link.chrom, str(link.peak_start), str(link.peak_end), link.peak, "."]
        assert r[13:18] == [link.chrom, str(link.tss), str(link.tss + 1), link.gene, "."]
    keys = [(r[0], int(r[1]), int(r[2])) for r in rows]
    assert keys == sorted(keys)
    plain = write_links_interact(links, tmp_path / "plain.interact", track_line=False)
    assert not plain.read_text().startswith("track")


def test_write_links_longrange__two_lines_per_link_pointing_at_each_other(links, tmp_path):
    path = write_links_longrange(links, tmp_path / "links.longrange")
    rows = read_rows(path, skip_comment=False)
    assert len(rows) == 2 * len(links) and all(len(r) == 4 for r in rows)
    seen = set()
    for chrom, start, end, other in rows:
        where, score = other.rsplit(",", 1)
        o_chrom, o_range = where.split(":")
        o_start, o_end = (int(v) for v in o_range.split("-"))
        seen.add(((chrom, int(start), int(end)), (o_chrom, o_start, o_end), float(score)))
    for link in links.itertuples():
        peak, tss = (link.chrom, link.peak_start, link.peak_end), (link.chrom, link.tss, link.tss + 1)
        assert (peak, tss, pytest.approx(link.correlation)) in [(a, b, s) for a, b, s in seen]
        assert (tss, peak, pytest.approx(link.correlation)) in [(a, b, s) for a, b, s in seen]
    keys = [(r[0], int(r[1]), int(r[2])) for r in rows]
    assert keys == sorted(keys)


def test_write_links_formats__nan_correlation_left_out_with_warning(links, tmp_path, caplog):
    bad = links.copy()
    bad.loc[:2, "correlation"] = np.nan
    with caplog.at_level(logging.WARNING, logger="p2g_dask"):
        path = write_links_bedpe(bad, tmp_path / "nan.bedpe", header=False)
    assert len(read_rows(path)) == len(links) - 3
    assert "3 links with a NaN correlation" in caplog.text
    assert len(read_rows(write_links_longrange(bad, tmp_path / "nan.longrange"))) == 2 * (len(links) - 3)


def test_write_links_formats__refuses_overwrite_and_writes_gzip(links, tmp_path):
    path = write_links_interact(links, tmp_path / "a.interact")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_links_interact(links.iloc[:3], path)
    assert len(read_rows(path)) == len(links)
    write_links_interact(links.iloc[:3], path, overwrite=True)
    assert len(read_rows(path)) == 3
    gz = write_links_bedpe(links, tmp_path / "links.bedpe.gz")
    with gzip.open(gz, "rt") as handle:
        assert len([ln for ln in handle if not ln.startswith("#")]) == len(links)
    with pytest.raises(ValueError, match="bgzip"):
        write_links_longrange(links, tmp_path / "links.longrange.gz")
    assert not list(tmp_path.glob(".p2g-tmp-*"))


def test_write_links_formats__missing_columns_named(links, tmp_path):
    with pytest.raises(ValueError, match=r"missing columns \['tss'\]"):
        write_links_bedpe(links.drop(columns="tss"), tmp_path / "x.bedpe")
    with pytest.raises(TypeError, match="DataFrame"):
        write_links_longrange(links.to_dict(), tmp_path / "x.longrange")
    with pytest.raises(ValueError, match="double quotes"):
        write_links_interact(links, tmp_path / "x.interact", description='say "hi"')


def test_write_links__dispatches_to_browser_formats(links, tmp_path):
    try:
        from p2g_dask.io.links import write_links
    except ImportError:
        pytest.skip("p2g_dask.io.links (the lead's dispatcher) is not in this tree yet")
    for fmt, writer in (("bedpe", write_links_bedpe), ("interact", write_links_interact),
                        ("longrange", write_links_longrange)):
        direct = writer(links, tmp_path / f"direct.{fmt}")
        via = write_links(links, tmp_path / f"via.{fmt}", format=fmt)
        assert via is None or str(via).endswith(f"via.{fmt}")
        assert (tmp_path / f"via.{fmt}").read_text() == direct.read_text()
