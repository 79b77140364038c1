"""The run report (issue #31, part 3): report.html and Dask's performance report.

One run serves the file checks and the browser checks: conftest's ``demo_run`` (``p2g demo`` on
1,200 cells, 2 workers, in a fresh process). The memory sampler is checked against memory the
test puts on a worker; the browser checks open both files in headless Chromium (skipped, with the
reason, where no Chromium is installed: ``.ci/run`` installs Debian's).
"""

from __future__ import annotations

import base64
import io
import json
import re
import time

import numpy as np
import pytest
from _headless_chromium import find_chromium, visit_page

import p2g_dask as p2g
from p2g_dask.report import run_report


def _images(text: str) -> list[np.ndarray]:
    import matplotlib.pyplot as plt

    return [plt.imread(io.BytesIO(base64.b64decode(data)), format="png")
            for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def _table_after(text: str, heading: str) -> list[list[str]]:
    """The rows of the first table after ``<h2>heading</h2>`` (cells as text)."""
    section = text.split(f"<h2>{heading}</h2>", 1)[1]
    table = section.split("</table>", 1)[0]
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in table.split("<tr>")[1:]]


@pytest.mark.slow
def test_report__files_next_to_run_json_self_contained(demo_run):
    out, output = demo_run
    record = json.loads((out / "run.json").read_text())
    assert record["outputs"]["report"] == str(out / "report.html")
    assert record["outputs"]["performance_report"] == str(out / "performance_report.html")
    assert f"report: {out / 'report.html'}" in output
    text = (out / "report.html").read_text()
    # Self-contained: no script, no remote resource; every image an embedded PNG that is not blank.
    assert "<script" not in text and not re.search(r'(src|href)="(https?:)?//', text)
    images = _images(text)
    assert len(images) == 6  # stages, memory, link summary, calibration, browser, heatmap
    assert all(image[..., :3].std() > 0.05 for image in images)
    for caption in ("Stages on the run's time axis", "Memory per worker over time", "Link summary",
                    "Calibration", "Browser track of", "Heatmap"):
        assert caption in text, caption
    # Dask's report: Bokeh's scripts inline, nothing fetched from a CDN (or anywhere).
    dask_report = (out / "performance_report.html").read_text()
    assert "Bokeh" in dask_report and not re.search(r'<script[^>]+src="https?://', dask_report)
    assert not re.search(r'<link[^>]+href="https?://', dask_report)


@pytest.mark.slow
def test_report__stages_summary_workers_versions_match_the_run(demo_run):
    out, _ = demo_run
    record = json.loads((out / "run.json").read_text())
    text = (out / "report.html").read_text()
    stages = {row[0]: float(row[1]) for row in _table_after(text, "Stages")[1:] if not row[0].startswith(" ")}
    assert list(stages) == ["ingest", "iterative_lsi", "peak_to_gene", "filter_links", "pseudobulk", "plots"]
    for name, seconds in stages.items():
        assert seconds == pytest.approx(record["timings"][name], abs=0.05), name
    summary = dict(_table_after(text, "Summary")[1:])
    links = p2g.io.read_links(out / "links.parquet")
    assert summary["pairs"] == f"{len(links):,}"
    assert summary["significant perm fdr 0.05"] == f"{int((links['perm_fdr'] < 0.05).sum()):,}"
    workers = _table_after(text, "Memory per worker over time")[1:]
    assert sorted(row[0] for row in workers) == ["worker 0", "worker 1"]
    for row in workers:  # a worker process holds more than 50 MiB and less than its limit
        assert 0.05 < float(row[1].split()[0]) < float(row[4].split()[0])
    versions = dict(_table_after(text, "Versions")[1:])
    assert versions["p2g_dask"] == p2g.__version__ == record["versions"]["p2g_dask"]
    assert versions["distributed"] == record["versions"]["distributed"]
    assert '"n_permutations": 20' in text  # the parameters


def test_run_report__samples_managed_and_spilled_bytes_of_workers(tmp_path):
    """Memory put on a worker and spilled by it shows in the samples, with the stage's times."""
    import dask
    from distributed import Client, LocalCluster

    # Spill by managed memory only (the in-process cluster shares pytest's RSS: no pause, no kill).
    memory = {"distributed.worker.memory.target": 0.2, "distributed.worker.memory.spill": False,
              "distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False}
    mib = 2**20
    with dask.config.set(memory), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit="400MiB",
                         dashboard_address=":0") as cluster, Client(cluster) as client:
        with run_report(tmp_path / "report.html", client=client, interval=0.2) as report:
            with report.stage("hold"):
                # 4 x 40 MiB held: above the 80 MiB target, so some are spilled to disk.
                held = [client.submit(np.full, 5 * mib, i, dtype=np.float64, pure=False) for i in range(4)]
                client.gather(held)
                time.sleep(2.5)  # a few heartbeats and samples
            del held
    samples = report.memory
    assert set(samples["worker"]) == {"worker 0"}
    assert samples["memory_limit"].max() == 400 * mib
    assert samples["spilled"].max() >= 40 * mib  # at least one array went to disk
    assert samples["managed"].max() + samples["spilled"].max() >= 150 * mib  # in memory + on disk: all 4
    assert samples["time"].min() <= report.stages[0][1] + 1 and samples["time"].max() >= report.stages[0][2]
    text = (tmp_path / "report.html").read_text()
    assert (tmp_path / "performance_report.html").is_file() and "Dask performance report" in text
    peak_spilled = float(_table_after(text, "Memory per worker over time")[1][3].split()[0])
    assert peak_spilled == pytest.approx(samples["spilled"].max() / 2**30, abs=0.006)


def test_run_report__threaded_scheduler_samples_this_process(tmp_path):
    import dask

    sim = p2g.datasets.simulate_multiome(n_cells=200, n_peaks=1000, n_genes=100, n_linked_genes=10, seed=1)
    with dask.config.set(scheduler="threads"), run_report(tmp_path / "report.html", interval=0.1) as report:
        with report.stage("peak_to_gene"):
            links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
                                        n_metacells=20, k_neighbors=10, n_permutations=3)
        report.add_links(links, data=sim.atac, gene_annotation=sim.genes, groupby="cell_type")
    assert report.performance_report is None and not (tmp_path / "performance_report.html").exists()
    text = (tmp_path / "report.html").read_text()
    assert "no Dask performance report" in text and "this process (threaded scheduler)" in text
    import psutil

    assert 0 < report.memory["memory"].max() <= psutil.Process().memory_info().rss * 2
    # Drawn by the report itself: link summary, calibration (permutation columns), a browser track
    # of the gene with most links passing plot_peak2gene's cut-offs.
    passing = links[(links["fdr"] < 0.01) & (links["correlation"].abs() >= 0.3)]
    assert f"Browser track of {passing['gene'].value_counts().index[0]}" in text
    assert "Calibration" in text and len(_images(text)) == 5  # + stages, memory


def test_run_report__failed_run_still_reported(tmp_path, local_client):
    with pytest.raises(ZeroDivisionError):
        with run_report(tmp_path / "report.html", client=local_client) as report:
            with report.stage("divide"):
                local_client.submit(lambda: 1 / 0).result()
    text = (tmp_path / "report.html").read_text()
    assert "failed: ZeroDivisionError" in text and (tmp_path / "performance_report.html").is_file()
    assert not list(tmp_path.glob(".p2g-tmp-*"))  # nothing left under a temporary name


def test_p2g_run__report_false_writes_neither(tmp_path, local_client):
    from _sim_files import write_sim_inputs

    from p2g_dask.pipeline import load_config, run_pipeline

    sim = p2g.datasets.simulate_multiome(n_cells=200, n_peaks=1000, n_genes=100, n_linked_genes=10, seed=2)
    write_sim_inputs(sim, tmp_path)
    config = {"inputs": {"atac": str(tmp_path / "atac.h5ad"), "rna": str(tmp_path / "rna.h5ad"),
                         "gene_annotation": str(tmp_path / "genes.tsv")},
              "output": str(tmp_path / "out"), "iterative_lsi": False, "report": False,
              "peak_to_gene": {"use_rep": "X_latent", "n_metacells": 20, "k_neighbors": 10}}
    record = run_pipeline(config, client=local_client)
    assert "report" not in record["outputs"] and not (tmp_path / "out" / "report.html").exists()
    assert not (tmp_path / "out" / "performance_report.html").exists()
    with pytest.raises(ValueError, match="'report: 'yes'' must be true or false"):
        load_config({**config, "report": "yes"})


# ---------------------------------------------------------------------------------------------
# In a real browser


# Decided at collection: without a browser the demo run is not even started for these tests.
needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (Debian: apt-get "
                                    "install chromium; .ci/run installs it)")


def _drawn(png: bytes) -> tuple[float, int]:
    """Pixel spread and number of distinct colours of a screenshot (a blank page: 0 and 1)."""
    import matplotlib.pyplot as plt

    image = plt.imread(io.BytesIO(png), format="png")[..., :3]
    colours = np.unique((image.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    return float(image.std()), len(colours)


@pytest.mark.slow
@needs_chromium
def test_report__opens_in_headless_chromium_without_errors(demo_run):
    out, _ = demo_run
    visit = visit_page(out / "report.html", settle=1.0,
                       scripts=("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length",))
    assert visit.errors == []
    assert visit.values == [len(_images((out / "report.html").read_text()))]  # every figure decoded
    spread, colours = _drawn(visit.screenshot)
    assert spread > 0.05 and colours > 50


@pytest.mark.slow
@needs_chromium
def test_performance_report__bokeh_charts_draw_offline_in_headless_chromium(demo_run):
    out, _ = demo_run
    # Show the Task Stream tab (the first tab is text); Bokeh must have loaded from the file itself.
    visit = visit_page(out / "performance_report.html", settle=1.5,
                       scripts=("window.Bokeh ? Bokeh.documents.length : 0",
                                "Bokeh.documents[0].roots()[0].active = 1; Bokeh.documents[0].roots()[0].active"))
    assert visit.errors == [] and visit.values == [1, 1]
    spread, colours = _drawn(visit.screenshot)
    assert spread > 0.05 and colours > 20  # task rectangles in the stream's palette


def test_tools__report_argument_writes_a_report_of_the_call(tmp_path, local_client):
    """``p2g.tl.<tool>(..., report=PATH)``: the call's report and Dask's performance report."""
    sim = p2g.datasets.simulate_multiome(n_cells=200, n_peaks=1000, n_genes=100, n_linked_genes=10, seed=1)
    path = tmp_path / "p2g" / "report.html"
    path.parent.mkdir()
    links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
                                n_metacells=20, k_neighbors=10, client=local_client, report=path)
    assert "report" not in links.attrs["params"]
    text = path.read_text()
    assert "peak_to_gene" in text and "Memory per worker" in text and "Dask performance report" in text
    assert f"{len(links):,}" in text  # the links' numbers: pairs tested
    assert (path.parent / "performance_report.html").stat().st_size > 10_000
    # A tool whose result is no links table: its stage and the cluster's memory, no link numbers.
    other = tmp_path / "co" / "report.html"
    other.parent.mkdir()
    table = p2g.tl.co_accessibility(sim.atac, use_rep="X_latent", n_metacells=20, k_neighbors=10,
                                    client=local_client, report=other)
    assert len(table) and "co_accessibility" in other.read_text()


def test_message_sizing_quiet__workers_hold_back_sizeof_warnings_then_get_their_level_back(local_client):
    import logging

    from p2g_dask import _report

    def level() -> int:
        return logging.getLogger("distributed.sizeof").level

    sizing = logging.getLogger("distributed.sizeof")
    before = sizing.level
    sizing.setLevel(logging.INFO)
    try:
        with _report._message_sizing_quiet(local_client):
            assert set(local_client.run(level).values()) == {logging.ERROR}
            assert local_client.run_on_scheduler(level) == logging.ERROR
        assert set(local_client.run(level).values()) == {logging.INFO}
        assert local_client.run_on_scheduler(level) == logging.INFO
    finally:
        sizing.setLevel(before)
