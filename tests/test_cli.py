"""The p2g command line: `p2g run CONFIG.yaml` end to end, run.json, errors that name the bad key."""

import json

import pandas as pd
import pytest
import yaml

from _sim_files import write_sim_inputs

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


@pytest.mark.slow
def test_p2g_demo__writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--cells", "1200", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "planted links recovered at FDR < 0.05" in printed and "Dask dashboard" in printed
    record = json.loads((out / "run.json").read_text())
    assert record["summary"]["planted_links"]["recall"] >= 0.8
    links = p2g.io.read_links(out / "links.parquet")
    assert len(links) == record["summary"]["pairs"]
    assert (out / "link_summary.png").stat().st_size > 10_000
    assert (out / "peak2gene_heatmap.png").stat().st_size > 10_000
    assert len(list(out.glob("browser_*.png"))) == 1
    import pybigtools

    bigwigs = record["outputs"]["bigwigs"]
    assert len(bigwigs) == 6
    for path in bigwigs.values():
        with pybigtools.open(path) as bw:
            assert sum(1 for _ in bw.records("chr1")) > 0


def _rendered_lines(text: str) -> list[str]:
    """What a terminal shows: per line, the text after the last carriage return, escapes dropped."""
    import re

    lines = []
    for raw in text.split("\n"):
        shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", raw).split("\r")[-1]
        lines.append(shown)
    return lines


def test_p2g_run__stage_lines_not_interleaved_with_dask_progress(inputs, tmp_path):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    folder, _ = inputs
    config = _config(folder, tmp_path / "progress")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    done = subprocess.run([sys.executable, "-m", "p2g_dask.cli", "run", str(config)], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    shown = _rendered_lines(done.stdout)
    stages = ["ingest", "peak_to_gene", "filter_links"]
    for number, stage in enumerate(stages, start=1):
        # Each stage line is intact and alone on its line, start and end.
        assert f"[{number}/3] {stage} ..." in shown, shown
        assert any(re.fullmatch(rf"\[{number}/3\] {stage} done \(\d+\.\d s\)", line) for line in shown), shown
    # The Dask progress of peak_to_gene was drawn, on lines of its own.
    assert "Completed" in done.stdout
    assert not [line for line in shown if "Completed" in line and re.search(r"\[\d/3\] ", line)]
    starts = [shown.index(f"[{n}/3] {s} ...") for n, s in enumerate(stages, start=1)]
    assert starts == sorted(starts)


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
