"""The Zarr multiome store: round trips from every input form, streaming, validation."""

import numpy as np
import pandas as pd
import pytest
import zarr

from _sample_files import write_10x_h5
from _sim_files import write_sim_inputs

import p2g_dask as p2g
from p2g_dask.io import ingest, open_store


def _assert_same(store, atac, rna):
    np.testing.assert_array_equal(store.atac.X.compute().toarray(), atac.X.toarray())
    np.testing.assert_array_equal(store.rna.to_memory().toarray(), rna.X.toarray())
    assert list(store.atac.obs.index) == list(atac.obs_names)
    assert list(store.rna.var.index) == list(rna.var_names)
    pd.testing.assert_frame_equal(pd.DataFrame(store.atac.var), pd.DataFrame(atac.var), check_dtype=False)
    np.testing.assert_allclose(store.atac.obsm["X_latent"], atac.obsm["X_latent"])


@pytest.mark.parametrize("chunk_cells", [600, 128, 77])
def test_ingest__anndata_round_trip(small_sim, tmp_path, chunk_cells):
    store = ingest(small_sim.atac, small_sim.rna, tmp_path / "s.zarr", chunk_cells=chunk_cells)
    _assert_same(store, small_sim.atac, small_sim.rna)
    assert store.atac.X.chunks[0][0] == min(chunk_cells, 600)
    # Each modality is a plain AnnData Zarr group as well.
    import anndata as ad

    back = ad.read_zarr(tmp_path / "s.zarr" / "rna")
    assert (back.X != small_sim.rna.X).nnz == 0


def test_ingest__backed_h5ad_keeps_barcode_intersection(small_sim, tmp_path):
    atac_path, rna_path = tmp_path / "atac.h5ad", tmp_path / "rna.h5ad"
    small_sim.atac.write_h5ad(atac_path)
    rna = small_sim.rna[::-1][:500].copy()  # reversed order, 100 cells missing
    rna.write_h5ad(rna_path)
    store = ingest(atac_path, rna_path, tmp_path / "s.zarr", chunk_cells=100)
    common = small_sim.atac.obs_names.intersection(rna.obs_names, sort=False)
    assert list(store.obs_names) == list(common)
    _assert_same(store, small_sim.atac[common], small_sim.rna[common])


def test_ingest__10x_h5_split_by_feature_types(small_sim, tmp_path):
    write_10x_h5(tmp_path / "filtered_feature_bc_matrix.h5", small_sim.atac, small_sim.rna)
    store = ingest(tmp_path / "filtered_feature_bc_matrix.h5", None, tmp_path / "s.zarr", chunk_cells=64)
    np.testing.assert_array_equal(store.atac.to_memory().toarray(), small_sim.atac.X.toarray())
    np.testing.assert_array_equal(store.rna.to_memory().toarray(), small_sim.rna.X.toarray())
    assert list(store.rna.var.index) == list(small_sim.rna.var_names)
    # peak coordinates come from the names
    assert p2g.io.peak_table(store.atac.var)["start"].tolist() == small_sim.atac.var["start"].tolist()


def test_ingest__refuses_overwrite_and_leaves_no_partial_store(small_sim, tmp_path):
    ingest(small_sim.atac, small_sim.rna, tmp_path / "s.zarr")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ingest(small_sim.atac, small_sim.rna, tmp_path / "s.zarr")
    bad = small_sim.rna.copy()
    bad.X = bad.X.astype(np.float32)
    bad.X.data[-1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ingest(small_sim.atac, bad, tmp_path / "bad.zarr", chunk_cells=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a, r: r.X.__setattr__("data", -r.X.data), "negative values"),
        (lambda a, r: r.obs.__setattr__("index", pd.Index([f"x{i}" for i in range(r.n_obs)])), "share no barcodes"),
    ],
)
def test_ingest__bad_counts_and_barcodes_name_the_problem(small_sim, tmp_path, mutate, message):
    atac, rna = small_sim.atac.copy(), small_sim.rna.copy()
    rna.X = rna.X.astype(np.float32)
    mutate(atac, rna)
    with pytest.raises(ValueError, match=message):
        ingest(atac, rna, tmp_path / "s.zarr")


def test_open_store__rejects_incompatible_format_version(small_sim, tmp_path):
    ingest(small_sim.atac, small_sim.rna, tmp_path / "s.zarr")
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    root.attrs["p2g_format_version"] = 99
    with pytest.raises(ValueError, match="store format 99"):
        open_store(tmp_path / "s.zarr")


def test_store__write_obsm_and_float_counts(small_sim, tmp_path):
    rna = small_sim.rna.copy()
    rna.X = rna.X.astype(np.float64) * 0.5  # real data can hold float counts
    store = ingest(small_sim.atac, rna, tmp_path / "s.zarr")
    assert store.rna.dtype == np.float32
    np.testing.assert_allclose(store.rna.to_memory().toarray(), rna.X.toarray())
    store.atac.write_obsm("X_test", np.arange(1200.0).reshape(600, 2))
    np.testing.assert_array_equal(open_store(store.path).atac.obsm["X_test"][:, 1], np.arange(1, 1200, 2))
    with pytest.raises(ValueError, match="rows"):
        store.atac.write_obsm("X_bad", np.zeros((5, 2)))


@pytest.mark.parametrize("names", [["chr1:100-200"], ["chr1-100-200"], ["chr1_100_200"]])
def test_parse_peak_names__three_separators(names):
    table = p2g.io.parse_peak_names(names)
    assert table.iloc[0].tolist() == ["chr1", 100, 200]


def test_parse_peak_names__unparseable_shows_one():
    with pytest.raises(ValueError, match="'peak_42'"):
        p2g.io.parse_peak_names(["chr1:1-2", "peak_42"])


def test_ingest__atac_only_store_runs_lsi_gene_scores_and_peak_to_gene(tmp_path):
    """ATAC-only: ingest -> iterative_lsi -> gene_scores(store=) -> peak_to_gene(store, gene_obsm=) equals
    the same steps in memory; the store verifies, opens with rna None and says what is missing."""
    import dask
    import subprocess
    import sys

    from p2g_dask.datasets import simulate_fragments, simulate_multiome
    from p2g_dask.io.verify import verify_store

    sim = simulate_multiome(n_cells=240, n_peaks=900, n_genes=60, n_linked_genes=8, seed=5)
    frags = simulate_fragments(sim.atac, tmp_path / "f.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=5)
    with pytest.raises(ValueError, match="atac_only=True"):
        ingest(sim.atac, None, tmp_path / "no.zarr")
    with pytest.raises(ValueError, match="leave rna=None"):
        ingest(sim.atac, sim.rna, tmp_path / "no.zarr", atac_only=True)
    store = ingest(sim.atac, path=tmp_path / "a.zarr", chunk_cells=64, atac_only=True)
    assert store.rna is None and store.modalities == ("atac",) and "ATAC-only" in repr(store)
    assert not (tmp_path / "a.zarr" / "rna").exists()
    assert verify_store(tmp_path / "a.zarr").startswith("ok: 3 chunks")  # atac X: data, indices, indptr
    with pytest.raises(ValueError, match="holds no RNA"):
        p2g.tl.peak_to_gene(store.path, gene_annotation=sim.genes, use_rep="X_latent")
    atac = sim.atac.copy()
    with dask.config.set(scheduler="synchronous"):
        p2g.tl.iterative_lsi(store.path, n_components=8, var_features=400, seed=1)
        p2g.tl.iterative_lsi(atac, n_components=8, var_features=400, seed=1)
        modality = p2g.tl.gene_scores(frags, genes=sim.genes, store=store.path, chunk_cells=64, show_progress=False)
        scores = p2g.tl.gene_scores(frags, genes=sim.genes, cells=atac, show_progress=False)
    np.testing.assert_array_equal(modality.to_memory().toarray(), scores.X.toarray())
    kwargs = dict(gene_annotation=sim.genes, use_rep="X_iterative_lsi", n_metacells=30, k_neighbors=15)
    from_store = p2g.tl.peak_to_gene(store.path, gene_obsm="X_gene_score", gene_names=modality.var.index, **kwargs)
    atac.obsm["X_gene_score"] = scores.X
    from_memory = p2g.tl.peak_to_gene(atac, gene_obsm="X_gene_score", gene_names=scores.var_names, **kwargs)
    assert len(from_store) > 100
    pd.testing.assert_frame_equal(from_store, from_memory, check_exact=False, rtol=1e-5, atol=1e-9)
    # The command line writes the same ATAC-only store.
    sim.atac.write_h5ad(tmp_path / "atac.h5ad")
    done = subprocess.run([sys.executable, "-m", "p2g_dask.cli", "ingest", str(tmp_path / "atac.h5ad"),
                           str(tmp_path / "cli.zarr"), "--atac-only"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert open_store(tmp_path / "cli.zarr").rna is None


def test_run_pipeline__atac_only_config(tmp_path):
    """`p2g run` without RNA: ingest.atac_only, gene_scores, peak_to_gene(gene_obsm=) on the store."""
    import dask

    from p2g_dask.datasets import simulate_fragments, simulate_multiome
    from p2g_dask.pipeline import run_pipeline

    sim = simulate_multiome(n_cells=240, n_peaks=900, n_genes=60, n_linked_genes=8, seed=6)
    write_sim_inputs(sim, tmp_path, rna=False)
    frags = simulate_fragments(sim.atac, tmp_path / "f.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=6)
    meta = {"use_rep": "X_latent", "n_metacells": 30, "k_neighbors": 15}
    config = {"inputs": {"atac": str(tmp_path / "atac.h5ad"), "gene_annotation": str(tmp_path / "genes.tsv"),
                         "fragments": {"sim": str(frags)}},
              "output": str(tmp_path / "run"), "ingest": {"atac_only": True}, "iterative_lsi": False,
              "gene_scores": {"chunk_cells": 100}, "peak_to_gene": {"gene_obsm": "X_gene_score", **meta}}
    with dask.config.set(scheduler="synchronous"):
        run_pipeline(config)
        scores = p2g.tl.gene_scores(frags, genes=sim.genes, cells=sim.atac, show_progress=False)
    assert open_store(tmp_path / "run" / "store.zarr").rna is None
    links = p2g.io.read_links(tmp_path / "run" / "links.parquet")
    atac = sim.atac.copy()
    atac.obsm["X_gene_score"] = scores.X
    direct = p2g.tl.peak_to_gene(atac, gene_obsm="X_gene_score", gene_names=scores.var_names,
                                 gene_annotation=sim.genes, **meta)
    assert len(links) == len(direct) > 100
    np.testing.assert_allclose(links["correlation"], direct["correlation"], rtol=1e-5, atol=1e-6)


def test_open_store__cell_names_read_on_first_use_and_hashed_in_blocks(small_sim, tmp_path):
    from p2g_dask.io.inputs import obs_names_hash, resolve_input

    store = ingest(small_sim.atac, small_sim.rna, tmp_path / "s.zarr", chunk_cells=50)
    atac, rna, _ = resolve_input(open_store(store.path))
    # An atlas's names are not read to open it or to size it.
    assert atac.store._obs is None and atac.n_obs == small_sim.atac.n_obs and atac.store._obs is None
    blocks = list(atac.store.obs_names_blocks(block=37))
    assert [len(b) for b in blocks][:-1] == [37] * (len(blocks) - 1)
    np.testing.assert_array_equal(np.concatenate(blocks), small_sim.atac.obs_names.to_numpy(str))
    # The hash read block by block equals the hash of the names in memory (AnnData, read table).
    expected = obs_names_hash(small_sim.atac.obs_names)
    assert obs_names_hash(atac) == expected and atac.store._obs is None
    assert atac.obs.index.equals(small_sim.atac.obs_names) and obs_names_hash(atac) == expected
    assert obs_names_hash(small_sim.atac.obs_names[::-1]) != expected


def test_read_frame__plain_tables_without_anndata_equal_read_elem(tmp_path):
    import anndata as ad

    from p2g_dask.io._frames import _plain_frame, read_frame
    from p2g_dask.io._write import zarr_write_settings

    root = zarr.open_group(tmp_path / "t.zarr", mode="w")
    rng = np.random.default_rng(3)
    plain = pd.DataFrame({
        "chrom": rng.choice(["chr1", "chrX", "chr10"], 50), "start": rng.integers(0, 10**9, 50),
        "score": rng.random(50), "keep": rng.random(50) < 0.5,
        "kind": pd.Categorical(rng.choice(["B", "T", "NK"], 50), categories=["T", "B", "NK"], ordered=True),
        "level": pd.Categorical(rng.integers(1, 4, 50)),
    }, index=pd.Index([f"cell{i}-1" for i in range(50)], name="barcode"))
    unnamed = plain.rename_axis(None)[["start", "chrom"]]  # column order kept
    empty = pd.DataFrame(index=pd.Index(["a", "b"]))
    nullable = plain.assign(n=pd.array([1, None] * 25, dtype="Int64"))  # not a plain column
    with zarr_write_settings():
        for name, table in (("plain", plain), ("unnamed", unnamed), ("empty", empty), ("nullable", nullable)):
            ad.io.write_elem(root, name, table)
    for name in ("plain", "unnamed", "empty", "nullable"):
        pd.testing.assert_frame_equal(read_frame(root[name]), ad.io.read_elem(root[name]), check_exact=True)
    assert _plain_frame(root["plain"]) is not None and _plain_frame(root["nullable"]) is None


def test_open_store__names_read_in_a_process_without_anndata(small_sim, tmp_path):
    # A client that only imported pandas opens a store without importing anndata (~0.8 s, with
    # dask.array and xarray), inside its first call.
    import subprocess
    import sys

    ingest(small_sim.atac, small_sim.rna, tmp_path / "s.zarr")
    script = ("import sys, p2g_dask as p2g; s = p2g.io.open_store(sys.argv[1]); "
              "print(len(s.atac.var), len(s.rna.var), len(s.atac.obs), 'anndata' in sys.modules, "
              "'dask.array' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s.zarr")], check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert out == [str(small_sim.atac.n_vars), str(small_sim.rna.n_vars), str(small_sim.atac.n_obs), "False", "False"]
