"""`p2g ingest --samples` and the `inputs: samples:` section of `p2g run` write the API's store."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import yaml

import p2g_dask as p2g
from _sample_files import numpy_counts, write_sample_files
from p2g_dask.cli import main


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples_cli")
    sim = p2g.datasets.simulate_multiome(n_cells=300, n_peaks=800, n_genes=60, n_linked_genes=8, seed=4)
    table, truth = write_sample_files(folder, sim, n_samples=2, shift=25)
    sim.genes.to_csv(folder / "genes.tsv", sep="\t", index=False)
    with dask.config.set(scheduler="synchronous"):
        api = p2g.io.ingest_samples(folder / "samples.tsv", folder / "api.zarr", chunk_cells=64)
    return folder, truth, api


def _same_store(store, reference):
    for name in ("atac", "rna"):
        np.testing.assert_array_equal(getattr(store, name).to_memory().toarray(),
                                      getattr(reference, name).to_memory().toarray())
    assert store.obs_names.tolist() == reference.obs_names.tolist()
    assert store.atac.var.index.tolist() == reference.atac.var.index.tolist()


def test_p2g_ingest__samples_table_writes_the_api_store(samples, tmp_path, capsys):
    folder, truth, api = samples
    assert main(["-q", "ingest", "--samples", str(folder / "samples.tsv"), str(tmp_path / "cli.zarr")]) == 0
    _same_store(p2g.io.open_store(tmp_path / "cli.zarr"), api)
    # A BED and SnapATAC2's counting from the command line (--ceiling 0: no cap).
    peaks = truth["peak_sets"]["s1"].iloc[::2]
    peaks.to_csv(tmp_path / "peaks.bed", sep="\t", header=False, index=False)
    assert main(["-q", "ingest", "--samples", str(folder / "samples.tsv"), str(tmp_path / "bed.zarr"), "--peaks",
                 str(tmp_path / "peaks.bed"), "--counting-strategy", "paired-insertion", "--ceiling", "0"]) == 0
    store = p2g.io.open_store(tmp_path / "bed.zarr")
    want = numpy_counts(truth["fragments"], p2g.io.read_peaks(tmp_path / "peaks.bed"), truth["cells"],
                        strategy="paired-insertion", ceiling=None)
    np.testing.assert_array_equal(store.atac.to_memory().toarray(), want)
    # Errors are one line naming the problem.
    assert main(["-q", "ingest", "--samples", str(folder / "samples.tsv"), str(tmp_path / "cli.zarr")]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["-q", "ingest", "--samples", str(folder / "samples.tsv"), "extra", str(tmp_path / "x.zarr")]) == 2
    assert "give only the output store" in capsys.readouterr().err


def test_p2g_run__inputs_samples_ingests_then_links(samples, tmp_path):
    folder, _, api = samples
    config = {
        "inputs": {"samples": "samples.tsv", "gene_annotation": "genes.tsv"},
        "output": str(tmp_path / "run"),
        "cluster": {"kind": "local", "n_workers": 1, "threads_per_worker": 2, "processes": False},
        "ingest": {"chunk_cells": 64},
        "iterative_lsi": {"n_components": 8, "var_features": 400, "iterations": 2, "seed": 1},
        "peak_to_gene": {"n_metacells": 30, "k_neighbors": 15, "seed": 1},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["-q", "run", str(path)]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "finished" and record["summary"]["pairs"] > 100
    _same_store(p2g.io.open_store(tmp_path / "run" / "store.zarr"), api)


@pytest.mark.parametrize("inputs, ingest, message", [
    ({"samples": "samples.tsv", "atac": "x.h5ad"}, None, "both 'samples' and 'atac'"),
    ({"samples": "samples.tsv"}, {"atac_only": True}, "'ingest' has unknown key(s) ['atac_only']"),
])
def test_p2g_run__bad_samples_config_names_the_key(samples, tmp_path, capsys, inputs, ingest, message):
    folder, _, _ = samples
    config = {"inputs": {**inputs, "gene_annotation": "genes.tsv"}, "output": str(tmp_path / "bad")}
    if ingest:
        config["ingest"] = ingest
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["-q", "run", str(path)]) == 2
    assert message in capsys.readouterr().err
