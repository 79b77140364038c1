"""The p2g command line: `p2g run CONFIG.yaml` end to end, run.json, errors that name the bad key."""

import json
import logging
import sys

import pandas as pd
import pytest
import yaml

from _sim_files import run_cli_terminal, write_sim_inputs

import p2g_dask as p2g
from p2g_dask.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_inputs")
    sim = p2g.datasets.simulate_multiome(n_cells=500, n_peaks=3000, n_genes=300, n_linked_genes=30, seed=5)
    write_sim_inputs(sim, folder, truth=True)
    return folder, sim


def _config(folder, out, **extra):
    config = {
        "inputs": {"atac": "atac.h5ad", "rna": "rna.h5ad", "gene_annotation": "genes.tsv", "truth": "truth.tsv"},
        "output": str(out),
        "cluster": {"kind": "local", "n_workers": 1, "threads_per_worker": 2, "processes": False},
        "iterative_lsi": False,
        "peak_to_gene": {"use_rep": "X_latent", "n_metacells": 80, "k_neighbors": 20, "seed": 3},
        "filter_links": {"cor_cutoff": 0.3},
    }
    config.update(extra)
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_p2g_run__config_end_to_end_matches_api(inputs, tmp_path, capsys):
    folder, sim = inputs
    config = _config(folder, tmp_path / "run1")
    assert main(["-q", "run", str(config)]) == 0
    record = json.loads((tmp_path / "run1" / "run.json").read_text())
    assert record["status"] == "finished"
    for stage in ("ingest", "peak_to_gene", "filter_links", "total"):
        assert record["timings"][stage] > 0
    assert record["dashboard"].startswith("http://127.0.0.1")
    assert record["versions"]["p2g_dask"] == p2g.__version__
    assert record["parameters"]["peak_to_gene"]["n_metacells"] == 80
    links = p2g.io.read_links(tmp_path / "run1" / "links.parquet")
    direct = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
                                 n_metacells=80, k_neighbors=20, seed=3)
    pd.testing.assert_frame_equal(links, direct)
    kept = p2g.io.read_links(tmp_path / "run1" / "links_filtered.parquet")
    assert len(kept) == len(p2g.tl.filter_links(direct, cor_cutoff=0.3)) == record["summary"]["filtered_links"]
    assert record["summary"]["planted_links"]["recall"] > 0.5
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "finished"
    # A second run into the same folder is refused without --overwrite, allowed with it.
    assert main(["-q", "run", str(config)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["-q", "run", str(config), "--overwrite"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"peak_to_gene": {"n_metacell": 5}}, "'peak_to_gene' has unknown key(s) ['n_metacell']"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"inputs": {"atac": "atac.h5ad", "gene_anotation": "g"}}, "'inputs' has unknown key(s) ['gene_anotation']"),
        ({"pseudobulk": {"cluster_key": "cell_type"}}, "needs inputs.fragments and inputs.chrom_sizes"),
    ],
)
def test_p2g_run__bad_config_names_the_key(inputs, tmp_path, capsys, extra, message):
    folder, _ = inputs
    config = _config(folder, tmp_path / "bad", **extra)
    assert main(["-q", "run", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "run.json").exists()


def test_p2g_ingest__writes_a_store(inputs, tmp_path, capsys):
    folder, sim = inputs
    assert main(["-q", "ingest", str(folder / "atac.h5ad"), str(folder / "rna.h5ad"), str(tmp_path / "s.zarr")]) == 0
    store = p2g.io.open_store(tmp_path / "s.zarr")
    assert store.atac.shape == sim.atac.shape and store.rna.shape == sim.rna.shape
    assert main(["-q", "ingest", str(folder / "atac.h5ad"), str(folder / "rna.h5ad"), str(tmp_path / "s.zarr")]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_p2g_help__every_command_has_help(capsys):
    for command in ("demo", "ingest", "run", "bigwig", "plot"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: p2g" in capsys.readouterr().out


def test_example_config__validates():
    from pathlib import Path

    from p2g_dask.pipeline import load_config

    config = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "example-config.yaml").read_text())
    # Inputs need not exist to validate the keys of every section.
    assert load_config(config)["peak_to_gene"]["n_metacells"] == 500


def _rendered_lines(text: str) -> list[str]:
    """What a terminal shows: per line, the text after the last carriage return, escapes dropped."""
    import re

    lines = []
    for raw in text.split("\n"):
        shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", raw).split("\r")[-1]
        lines.append(shown)
    return lines


LOG_LINE = r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) "


def assert_one_view_per_stage(shown: list[str], stages: list[str]) -> None:
    """Each stage: its start line and its done line, each exactly once, intact, in order."""
    import re

    total = len(stages)
    for number, stage in enumerate(stages, start=1):
        assert shown.count(f"[{number}/{total}] {stage} ...") == 1, shown
        done = [line for line in shown if re.fullmatch(rf"\[{number}/{total}\] {stage} done \(\d+\.\d s\)", line)]
        assert len(done) == 1, shown
    starts = [shown.index(f"[{n}/{total}] {s} ...") for n, s in enumerate(stages, start=1)]
    assert starts == sorted(starts)
    # Dask's progress bars never share a line with a stage line.
    assert not [line for line in shown if "Completed" in line and re.search(rf"\[\d/{total}\] ", line)]


def test_p2g_run__stage_lines_not_interleaved_with_dask_progress(inputs, tmp_path):
    import re

    folder, _ = inputs
    # 250 x 25 metacells on 500 cells: each cell in 12.5 metacells, so peak_to_gene warns.
    config = _config(folder, tmp_path / "progress",
                     peak_to_gene={"use_rep": "X_latent", "n_metacells": 250, "k_neighbors": 25, "seed": 3})
    output = run_cli_terminal(["run", str(config)], tmp_path)
    shown = _rendered_lines(output)
    assert_one_view_per_stage(shown, ["ingest", "peak_to_gene", "filter_links"])
    # The Dask progress of peak_to_gene was drawn.
    assert "Completed" in output
    # The terminal: no INFO line of the package; its warning once, as it matters.
    assert not [line for line in shown if re.match(LOG_LINE.replace("WARNING|", ""), line)], shown
    warnings = [line for line in shown if re.match(LOG_LINE, line)]
    assert len(warnings) == 1 and "WARNING peak_to_gene: small data" in warnings[0], warnings
    # The details are in the log file of the output folder, the warning with them.
    log = (tmp_path / "progress" / "p2g.log").read_text()
    assert re.search(r"INFO p2g_dask: peak_to_gene: 3000 peaks, \d+ annotated genes, 500 cells, \d+ metacells of 25", log)
    assert re.search(r"INFO p2g_dask: peak_to_gene: \d+ candidate pairs, \d+ with FDR < 0.05", log)
    assert "WARNING p2g_dask: peak_to_gene: small data" in log
    for number, stage in enumerate(["ingest", "peak_to_gene", "filter_links"], start=1):
        assert log.count(f"[{number}/3] {stage} ...") == 1 and log.count(f"[{number}/3] {stage} done") == 1
    record = json.loads((tmp_path / "progress" / "run.json").read_text())
    assert record["outputs"]["log"] == str((tmp_path / "progress" / "p2g.log").resolve())


# ---------------------------------------------------------------------------------------------
# p2g demo: one run (a fresh process, its terminal captured: conftest's demo_run) for every check


@pytest.mark.slow
def test_p2g_demo__writes_every_output(demo_run):
    out, output = demo_run
    record = json.loads((out / "run.json").read_text())
    links = p2g.io.read_links(out / "links.parquet")
    assert len(links) == record["summary"]["pairs"]
    # Planted links are found far above chance (the share of all pairs that are significant).
    share = record["summary"]["significant_fdr_0.05"] / len(links)
    assert record["summary"]["planted_links"]["recall"] >= max(0.6, 3 * share)
    for name in ("link_summary.png", "link_calibration.png", "peak2gene_heatmap.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert len(list(out.glob("browser_*.png"))) == 1
    # Every figure written is listed, and only those.
    figures = sorted(str(p) for p in out.glob("*.png"))
    listed = [line.strip() for line in output.splitlines() if line.startswith("  ") and line.strip().endswith(".png")]
    assert sorted(listed) == figures == sorted(record["outputs"]["plots"])
    assert f"figures ({len(figures)}):" in output
    import pybigtools

    bigwigs = record["outputs"]["bigwigs"]
    assert len(bigwigs) == 6
    for path in bigwigs.values():
        with pybigtools.open(path) as bw:
            assert sum(1 for _ in bw.records("chr1")) > 0


@pytest.mark.slow
def test_p2g_demo__metacells_by_rule_and_both_fdrs_side_by_side(demo_run):
    import re

    from p2g_dask._variables import metacells_for

    out, output = demo_run
    links = p2g.io.read_links(out / "links.parquet")
    # The metacells follow the package's rule for 1,200 cells: no small-data warning.
    assert (links.attrs["params"]["n_metacells"], links.attrs["params"]["k_neighbors"]) == metacells_for(1200) \
        == (120, 20)
    # No warning of the package (distributed's own, e.g. an event loop slowed by a busy machine,
    # stay visible: they are not the package's to hide).
    assert "small data" not in output and not re.search(LOG_LINE, output, re.M)
    assert links.attrs["params"]["n_permutations"] > 0
    assert links["perm_fdr"].notna().sum() == links["fdr"].notna().sum() > 0
    truth = pd.read_csv(out / "inputs" / "truth.tsv", sep="\t")
    planted = set(zip(truth["peak"], truth["gene"]))
    for column, label in (("fdr", r"fdr < 0\.05 \(t-test\)"), ("perm_fdr", r"perm_fdr < 0\.05 \(\d+ permutations\)")):
        chosen = links[links[column] < 0.05]
        found = set(zip(chosen["peak"], chosen["gene"]))
        hits = len(found & planted)
        row = re.search(rf"^  {label}\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)$", output, re.M)
        assert row, (label, output)
        assert int(row[1].replace(",", "")) == len(found) and int(row[2].replace(",", "")) == hits
        assert float(row[3]) == pytest.approx(hits / len(planted), abs=0.005)
        assert float(row[4]) == pytest.approx(hits / len(found), abs=0.0005)
    # The permutation null is stricter than the anti-conservative t-test on overlapping metacells.
    assert (links["perm_fdr"] < 0.05).sum() < (links["fdr"] < 0.05).sum()


@pytest.mark.slow
def test_p2g_demo__one_terminal_view_details_in_log(demo_run):
    import re

    out, output = demo_run
    shown = _rendered_lines(output)
    stages = ["ingest", "iterative_lsi", "peak_to_gene", "filter_links", "pseudobulk", "plots"]
    assert_one_view_per_stage(shown, stages)
    assert not [line for line in shown if re.match(LOG_LINE, line)], shown  # no log line of the package
    assert sum(line.startswith("Dask dashboard: http://") for line in shown) == 1
    log = out / "p2g.log"
    assert f"log (details of every stage): {log.resolve()}" in output
    text = log.read_text()
    assert "INFO p2g_dask: simulated 1200 cells" in text and "INFO p2g_dask: stored 1200 cells" in text
    assert re.search(r"INFO p2g_dask: metacells: 120 of 120 seeds kept", text)
    for number, stage in enumerate(stages, start=1):
        assert text.count(f"[{number}/6] {stage} ...") == 1


def test_p2g_plot__old_option_names_warn_and_set_new(tmp_path):
    from p2g_dask.cli import build_parser

    base = ["plot", "store.zarr", "--links", "l.parquet", "--gene", "A", "--genes", "g.tsv", "--out", "x.png"]
    args = build_parser().parse_args(base + ["--fdr-cutoff", "0.2", "--cor-cutoff", "0.4", "--positive-only"])
    assert (args.fdr_cutoff, args.cor_cutoff, args.positive_only) == (0.2, 0.4, True)
    with pytest.warns(FutureWarning, match="--fdr is renamed --fdr-cutoff"):
        args = build_parser().parse_args(base + ["--fdr", "0.2"])
    assert args.fdr_cutoff == 0.2
    with pytest.warns(FutureWarning, match="--min-abs-r is renamed --cor-cutoff"):
        args = build_parser().parse_args(base + ["--min-abs-r", "0.4"])
    assert args.cor_cutoff == 0.4


def test_load_config__old_plot_argument_names_still_accepted(inputs, tmp_path):
    from p2g_dask.pipeline import load_config

    folder, _ = inputs
    config = load_config(_config(folder, tmp_path / "old", plots={"fdr_thresh": 0.1, "min_abs_r": 0.2}))
    assert config["plots"] == {"fdr_thresh": 0.1, "min_abs_r": 0.2}
    with pytest.raises(ValueError, match="unknown key"):
        load_config(_config(folder, tmp_path / "bad", plots={"fdr_threshold": 0.1}))


def test_dask_records_to_log_file__shutdown_warning_in_log_only(tmp_path):
    """A finished run's cluster shutdown: distributed's warnings go to p2g.log, not the terminal."""
    import io
    import logging

    from p2g_dask._logging import dask_records_to_log_file, log_to_file

    terminal = io.StringIO()  # stands for distributed's own stderr handler
    console = logging.StreamHandler(terminal)
    dask_logger, nanny = logging.getLogger("distributed"), logging.getLogger("distributed.nanny")
    dask_logger.addHandler(console)
    try:
        with log_to_file(tmp_path / "p2g.log"):
            with dask_records_to_log_file():
                nanny.warning("Worker process still alive after 4.0 seconds, killing")
            nanny.warning("a worker exceeded its memory budget")  # outside the shutdown: on the terminal
    finally:
        dask_logger.removeHandler(console)
    assert "still alive" not in terminal.getvalue() and "memory budget" in terminal.getvalue()
    log = (tmp_path / "p2g.log").read_text()
    assert "WARNING distributed.nanny: Worker process still alive" in log and "memory budget" not in log


def test_p2g_cli__groupby_options_and_their_old_names():
    """One name per idea on the command line too: --groupby; --cluster-key and --group-by warn."""
    import warnings

    from p2g_dask.cli import build_parser, main

    parser = build_parser()
    plot = ["plot", "s.zarr", "--links", "l.parquet", "--gene", "A", "--genes", "g.tsv", "--out", "x.png"]
    assert parser.parse_args(plot + ["--groupby", "lineage"]).groupby == "lineage"
    bw = ["bigwig", "s.zarr", "--fragments", "f.tsv.gz", "--chrom-sizes", "c.sizes", "--out", "bw"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert parser.parse_args(bw + ["--cluster-key", "grp"]).groupby == "grp"
        assert parser.parse_args(plot + ["--group-by", "grp"]).groupby == "grp"
    assert [str(w.message).split(";")[0] for w in caught if w.category is FutureWarning] == [
        "p2g: the option --cluster-key is renamed --groupby", "p2g: the option --group-by is renamed --groupby"]
    assert main(bw) == 2  # no --groupby: a one-line error naming it


def test_console_logging__writes_to_the_stderr_of_the_moment(monkeypatch):
    # A console handler made while stderr was another stream (a closed capture, an old notebook
    # cell) writes to the stderr there is now, and never to the closed one.
    import io

    from p2g_dask._logging import enable_console_logging, logger

    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    old, new = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", old)
    enable_console_logging()
    old.close()
    monkeypatch.setattr(sys, "stderr", new)
    logger.info("stage %d done", 3)
    assert new.getvalue().endswith("INFO stage 3 done\n")
