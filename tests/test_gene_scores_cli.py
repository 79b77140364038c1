"""`p2g gene-scores`, the `gene_scores:` section of `p2g run`, and `p2g demo --atac-only`."""

from __future__ import annotations

import json

import anndata as ad
import dask
import numpy as np
import pytest
import yaml

from _sim_files import write_sim_inputs

import p2g_dask as p2g
from p2g_dask.cli import main
from p2g_dask.pipeline import load_config, run_pipeline


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gene_scores_cli")
    sim = p2g.datasets.simulate_multiome(n_cells=300, n_peaks=1500, n_genes=120, n_linked_genes=12, seed=9)
    write_sim_inputs(sim, folder)
    p2g.datasets.simulate_fragments(sim.atac, folder / "fragments.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=9)
    return folder, sim


def test_p2g_gene_scores__cli_equals_api(sim_files, tmp_path, capsys):
    folder, sim = sim_files
    out = tmp_path / "scores.h5ad"
    assert main(["-q", "gene-scores", str(folder / "fragments.tsv.gz"), "--genes", str(folder / "genes.tsv"),
                 "--cells", str(folder / "atac.h5ad"), "--out", str(out), "--jobs", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    written = ad.read_h5ad(out)
    with dask.config.set(scheduler="synchronous"):
        direct = p2g.tl.gene_scores(folder / "fragments.tsv.gz", genes=sim.genes, cells=sim.atac, show_progress=False)
    np.testing.assert_array_equal(written.X.toarray(), direct.X.toarray())
    assert list(written.var_names) == list(direct.var_names)
    # An existing output is refused before any work, allowed with --overwrite.
    assert main(["-q", "gene-scores", str(folder / "fragments.tsv.gz"), "--genes", str(folder / "genes.tsv"),
                 "--cells", str(folder / "atac.h5ad"), "--out", str(out)]) == 2


def test_p2g_run__gene_scores_section_feeds_peak_to_gene(sim_files, tmp_path, local_client):
    folder, sim = sim_files
    config = {
        "inputs": {"atac": str(folder / "atac.h5ad"), "rna": str(folder / "rna.h5ad"),
                   "gene_annotation": str(folder / "genes.tsv"), "fragments": {"sim": str(folder / "fragments.tsv.gz")}},
        "output": str(tmp_path / "run"),
        "iterative_lsi": False,
        "gene_scores": {"chunk_cells": 100},
        "peak_to_gene": {"use_rep": "X_latent", "gene_obsm": "X_gene_score", "n_metacells": 30, "k_neighbors": 15,
                         "seed": 2},
    }
    record = run_pipeline(config, client=local_client)
    assert record["timings"]["gene_scores"] > 0
    links = p2g.io.read_links(tmp_path / "run" / "links.parquet")
    with dask.config.set(scheduler="synchronous"):
        scores = p2g.tl.gene_scores(folder / "fragments.tsv.gz", genes=sim.genes, cells=sim.atac, show_progress=False)
    atac = sim.atac.copy()
    atac.obsm["X_gene_score"] = scores.X
    direct = p2g.tl.peak_to_gene(atac, gene_obsm="X_gene_score", gene_names=scores.var_names,
                                 gene_annotation=sim.genes, use_rep="X_latent", n_metacells=30, k_neighbors=15, seed=2)
    assert len(links) == len(direct) > 0
    np.testing.assert_allclose(links["correlation"].to_numpy(), direct["correlation"].to_numpy(), rtol=1e-5, atol=1e-6)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["outputs"]["gene_scores"].endswith("X_gene_score")


def test_p2g_run__gene_scores_section_checks_keys(sim_files, tmp_path):
    folder, _ = sim_files
    config = {"inputs": {"atac": str(folder / "atac.h5ad"), "gene_annotation": str(folder / "genes.tsv"),
                         "fragments": {"sim": str(folder / "fragments.tsv.gz")}},
              "output": str(tmp_path / "bad"), "gene_scores": {"tile_sise": 500}}
    with pytest.raises(ValueError, match="'gene_scores' has unknown key"):
        load_config(config)
    config["gene_scores"] = {"tile_size": 500}
    del config["inputs"]["fragments"]
    with pytest.raises(ValueError, match="needs inputs.fragments"):
        load_config(config)


@pytest.mark.slow
def test_p2g_demo__atac_only_writes_scores_links_plot(tmp_path, capsys):
    from p2g_dask.io.store import StoreModality

    out = tmp_path / "demo"
    assert main(["-q", "demo", "--atac-only", "--out", str(out), "--cells", "600"]) == 0
    printed = capsys.readouterr().out
    assert "gene scores (the gene side of the links):" in printed and "planted links recovered" in printed
    assert "perm_fdr < 0.05" in printed and "small data" not in printed
    scores = StoreModality(str(out / "store.zarr"), "X_gene_score")
    assert scores.n_obs == 600 and p2g.io.open_store(out / "store.zarr").rna is None
    np.testing.assert_allclose(np.asarray(scores.to_memory().sum(axis=1)).ravel(), 1e4, atol=2.0)
    links = p2g.io.read_links(out / "links.parquet")
    assert len(links) > 0 and links.attrs["params"]["gene_obsm"] == "X_gene_score"
    assert (links.attrs["params"]["n_metacells"], links.attrs["params"]["k_neighbors"]) == (60, 20)
    assert not (out / "inputs" / "rna.h5ad").exists()  # ATAC only: no RNA file was even written
    assert list(out.glob("browser_*.png")) and (out / "link_calibration.png").is_file()
