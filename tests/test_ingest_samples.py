"""ingest_samples: many samples -> one store, equal to plain numpy / in-memory references."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

import p2g_dask as p2g
from _sample_files import aligned_rna, numpy_counts, write_sample_files
from p2g_dask.io import _sample_tasks
from p2g_dask.io.verify import verify_store


@pytest.fixture(scope="module")
def sim():
    return p2g.datasets.simulate_multiome(n_cells=360, n_peaks=900, n_genes=60, n_linked_genes=8, seed=3)


@pytest.fixture(scope="module")
def shifted(sim, tmp_path_factory):
    """Three h5ad samples with shifted peak sets, ingested with the synchronous scheduler."""
    folder = tmp_path_factory.mktemp("shifted")
    table, truth = write_sample_files(folder, sim, n_samples=3, shift=30)
    with dask.config.set(scheduler="synchronous"):
        store = p2g.io.ingest_samples(folder / "samples.tsv", folder / "atlas.zarr", chunk_cells=40)
    return folder, table, truth, store


def _arrays(store):
    return {m: getattr(store, m).to_memory().toarray() for m in ("atac", "rna")}


def test_ingest_samples__shifted_peak_sets_merged_and_counted_as_numpy(shifted):
    folder, table, truth, store = shifted
    merged = p2g.io.merge_peaks(truth["peak_sets"])
    assert store.atac.var.index.tolist() == merged.index.tolist()
    assert store.obs_names.tolist() == truth["cells"]  # <sample>_<barcode>, samples in table order
    assert store.atac.obs["sample"].astype(str).tolist() == [c.split("_")[0] for c in truth["cells"]]
    np.testing.assert_array_equal(store.atac.to_memory().toarray(), numpy_counts(truth["fragments"], merged,
                                                                                 truth["cells"]))
    # Genes aligned by id: the union in order of first appearance; sample 1 lacks 5 genes (zeros).
    gene_ids = store.rna.var["gene_ids"].tolist()
    assert gene_ids == [f"ENSG{i:05d}" for i in range(60)]
    np.testing.assert_array_equal(store.rna.to_memory().toarray(), aligned_rna(truth, gene_ids))
    assert [s["genes_absent"] for s in store.attrs["p2g_samples"]] == [0, 5, 0]
    assert store.rna.var["n_samples"].tolist()[:6] == [2] * 5 + [3]
    assert verify_store(store.path).startswith("ok: 6 chunks")
    assert not (folder / ".p2g-ingest-atlas.zarr").exists()  # the work folder is gone


def test_ingest_samples__links_equal_ingest_of_the_cells_concatenated_in_memory(shifted, sim, tmp_path):
    import anndata as ad

    _, _, truth, store = shifted
    merged = p2g.io.merge_peaks(truth["peak_sets"])
    counts = numpy_counts(truth["fragments"], merged, truth["cells"])
    gene_ids = store.rna.var["gene_ids"].tolist()
    atac = ad.AnnData(counts.astype(np.int32), obs=pd.DataFrame(index=truth["cells"]), var=merged[[]])
    rna = ad.AnnData(aligned_rna(truth, gene_ids).astype(np.int32), obs=pd.DataFrame(index=truth["cells"]),
                     var=pd.DataFrame(index=store.rna.var.index))
    import scipy.sparse as sp

    atac.X, rna.X = sp.csr_matrix(atac.X), sp.csr_matrix(rna.X)
    reference = p2g.io.ingest(atac, rna, tmp_path / "memory.zarr")
    embedding = sim.atac.obsm["X_latent"]
    kwargs = dict(gene_annotation=sim.genes, use_rep="X_latent", n_metacells=40, k_neighbors=20, seed=1)
    links = {}
    for name, target in (("samples", store), ("memory", reference)):
        target.atac.write_obsm("X_latent", embedding)
        links[name] = p2g.tl.peak_to_gene(target.path, **kwargs)
    assert len(links["samples"]) > 200
    pd.testing.assert_frame_equal(links["samples"], links["memory"])


def test_ingest_samples__10x_h5_with_one_peak_set_copies_the_counts(sim, tmp_path):
    table, truth = write_sample_files(tmp_path, sim, n_samples=3, shift=0, h5=True)
    store = p2g.io.ingest_samples(tmp_path / "samples.tsv", tmp_path / "atlas.zarr", chunk_cells=64)
    assert [s["atac"] for s in store.attrs["p2g_samples"]] == ["copied"] * 3
    want = np.vstack([a.X.toarray() for a in truth["atac"]])
    np.testing.assert_array_equal(store.atac.to_memory().toarray(), want)
    assert store.atac.var.index.tolist() == truth["atac"][0].var_names.tolist()
    np.testing.assert_array_equal(store.rna.to_memory().toarray(),
                                  aligned_rna(truth, store.rna.var["gene_ids"].tolist()))


def test_ingest_samples__given_bed_and_snapatac2_counting(sim, tmp_path):
    table, truth = write_sample_files(tmp_path, sim, n_samples=2, shift=0)
    bed = truth["peak_sets"]["s0"].iloc[::3].assign(start=lambda d: d["start"] - 100)
    bed.to_csv(tmp_path / "peaks.bed", sep="\t", header=False, index=False)
    store = p2g.io.ingest_samples(tmp_path / "samples.tsv", tmp_path / "atlas.zarr", peaks=tmp_path / "peaks.bed",
                                  counting_strategy="paired-insertion", ceiling=None, chunk_cells=50)
    peaks = p2g.io.read_peaks(tmp_path / "peaks.bed")
    assert store.atac.n_vars == len(bed)
    want = numpy_counts(truth["fragments"], peaks, truth["cells"], strategy="paired-insertion", ceiling=None)
    np.testing.assert_array_equal(store.atac.to_memory().toarray(), want)
    assert store.attrs["p2g_peak_matrix"] == {"ceiling": None, "counting_strategy": "paired-insertion"}


def test_ingest_samples__interrupted_ingest_resumes_at_the_next_unwritten_sample(sim, tmp_path, monkeypatch, shifted):
    folder, table, _, complete = shifted
    finish, written, crash = _sample_tasks.finish_sample, [], [True]

    def failing(row, *args, **kwargs):
        if crash[0] and len(written) == 2:
            raise RuntimeError("injected crash after 2 samples")
        written.append(row["sample"])
        return finish(row, *args, **kwargs)

    monkeypatch.setattr(_sample_tasks, "finish_sample", failing)
    target = tmp_path / "atlas.zarr"
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="injected crash"):
        p2g.io.ingest_samples(folder / "samples.tsv", target, chunk_cells=40)
    assert not target.exists()  # nothing under the final name
    markers = sorted(p.name for p in (tmp_path / ".p2g-ingest-atlas.zarr" / "samples").glob("*.done.json"))
    assert len(written) == 2 and markers == sorted(f"{s}.done.json" for s in written)
    (rest,) = {"s0", "s1", "s2"} - set(written)
    # The sample without a marker (blocks perhaps written) is written again, the finished ones are not.
    blocks, crash[0] = [], False
    write_block = _sample_tasks.write_block
    monkeypatch.setattr(_sample_tasks, "write_block", lambda row, *a, **k: blocks.append(row["sample"]) or
                        write_block(row, *a, **k))
    with dask.config.set(scheduler="synchronous"):
        resumed = p2g.io.ingest_samples(folder / "samples.tsv", target, chunk_cells=40)
    assert set(blocks) == {rest} and written[2:] == [rest]
    for name, values in _arrays(complete).items():
        np.testing.assert_array_equal(_arrays(resumed)[name], values)
    pd.testing.assert_frame_equal(resumed.atac.obs, complete.atac.obs)
    pd.testing.assert_frame_equal(resumed.rna.var, complete.rna.var)
    # ... hence the same links.
    kwargs = dict(gene_annotation=sim.genes, use_rep="X_latent", n_metacells=40, k_neighbors=20, seed=1)
    links = []
    for store in (resumed, complete):
        store.atac.write_obsm("X_latent", sim.atac.obsm["X_latent"])
        links.append(p2g.tl.peak_to_gene(store.path, **kwargs))
    pd.testing.assert_frame_equal(*links)


@pytest.mark.slow
def test_ingest_samples__killed_worker_loses_nothing(shifted, tmp_path):
    import os
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster

    folder, _, _, complete = shifted
    target = tmp_path / "atlas.zarr"
    work = tmp_path / ".p2g-ingest-atlas.zarr" / "samples"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        result = {}
        run = threading.Thread(target=lambda: result.update(store=p2g.io.ingest_samples(
            folder / "samples.tsv", target, chunk_cells=20, client=client)))
        run.start()
        deadline = time.time() + 120
        while time.time() < deadline and not list(work.glob("*/block-*")):
            time.sleep(0.05)
        assert not target.exists()
        os.kill(pids[0], signal.SIGKILL)  # mid-ingest: some blocks written, the store not yet
        run.join(180)
    assert "store" in result
    for name, values in _arrays(complete).items():
        np.testing.assert_array_equal(_arrays(result["store"])[name], values)


def test_ingest_samples__bad_tables_name_the_argument_value_and_fix(sim, tmp_path):
    table, _ = write_sample_files(tmp_path, sim, n_samples=2, shift=30)
    with pytest.raises(ValueError, match=r"missing the column\(s\) \['fragments'\].*sample, fragments"):
        p2g.io.ingest_samples(table.drop(columns="fragments"), tmp_path / "x.zarr")
    with pytest.raises(ValueError, match=r"sample names \['s0'\] appear more than once"):
        p2g.io.ingest_samples(table.assign(sample="s0"), tmp_path / "x.zarr")
    with pytest.raises(FileNotFoundError, match=r"sample 's1': rna='.*nope.h5ad' does not exist; fix the path"):
        bad = table.copy()
        bad.loc[1, "rna"] = "nope.h5ad"
        bad.to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
        p2g.io.ingest_samples(tmp_path / "bad.tsv", tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="neither an 'h5' column nor 'atac' and 'rna'"):
        p2g.io.ingest_samples(table.drop(columns="rna"), tmp_path / "x.zarr")
    # A fragment file of other cells: no barcode of the sample is in it.
    other = pd.DataFrame({"chrom": ["chr1"], "start": [100], "end": [300], "barcode": ["ZZZ-1"], "count": [1]})
    other.to_csv(tmp_path / "other.tsv", sep="\t", header=False, index=False)
    # Both samples' files: which fails first is the scheduler's choice, and a sample that finished
    # before the other failed is kept for a resume (tested above); here none can finish.
    wrong = table.assign(fragments="other.tsv")
    wrong.to_csv(tmp_path / "wrong.tsv", sep="\t", index=False)
    with dask.config.set(scheduler="synchronous"), \
            pytest.raises(ValueError, match=r"sample 's[01]': none of its \d+ cells is in fragments=.*other.tsv"):
        p2g.io.ingest_samples(tmp_path / "wrong.tsv", tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()
    assert not (tmp_path / ".p2g-ingest-x.zarr").exists()  # no sample finished: no work folder left


@pytest.mark.real_data("the real PBMC fragment file split in two pseudo-samples with shifted peak sets (unsorted real fragments, real barcodes)")
def test_ingest_samples__real_pbmc_in_two_pseudo_samples_equals_numpy(shared_data, tmp_path):
    import anndata as ad

    from _fragment_files import write_fragment_file
    from p2g_dask.io.fragments import read_fragments

    folder = shared_data / "pbmc_multiome_1k"
    atac, rna = ad.read_h5ad(folder / "atac.h5ad"), ad.read_h5ad(folder / "rna.h5ad")
    frags = read_fragments(folder / "fragments.tsv.gz")
    frags["barcode"], frags["chrom"] = frags["barcode"].astype(str), frags["chrom"].astype(str)
    peaks = p2g.io.read_peaks(atac.var_names)
    rows, cells, named = [], [], []
    for k, name in enumerate(("p1", "p2")):
        mine = atac.obs_names[k::2]
        sub = atac[mine].copy()
        shifted = peaks.loc[sub.var_names].assign(start=lambda d, k=k: d["start"] + 40 * k - 20,
                                                  end=lambda d, k=k: d["end"] + 40 * k - 20)
        sub.var_names = (shifted["chrom"] + ":" + shifted["start"].astype(str) + "-" + shifted["end"].astype(str))
        sub.write_h5ad(tmp_path / f"{name}.atac.h5ad")
        rna[mine].copy().write_h5ad(tmp_path / f"{name}.rna.h5ad")
        part = frags[frags["barcode"].isin(set(mine))]
        write_fragment_file(tmp_path / f"{name}.tsv.gz", part, compression="bgzip")
        named.append(part.assign(barcode=name + "_" + part["barcode"]))
        rows.append({"sample": name, "fragments": str(tmp_path / f"{name}.tsv.gz"),
                     "atac": str(tmp_path / f"{name}.atac.h5ad"), "rna": str(tmp_path / f"{name}.rna.h5ad")})
        cells += [f"{name}_{b}" for b in mine]
    store = p2g.io.ingest_samples(pd.DataFrame(rows), tmp_path / "pbmc.zarr", chunk_cells=300)
    merged = store.atac.var
    want = numpy_counts(pd.concat(named), merged, cells)
    assert store.obs_names.tolist() == cells and want.sum() > 10_000
    np.testing.assert_array_equal(store.atac.to_memory().toarray(), want)
    rna_counts = np.vstack([rna[atac.obs_names[k::2]].X.toarray() for k in range(2)])
    np.testing.assert_array_equal(store.rna.to_memory().toarray(), rna_counts)
    # The same links as ingest of the same cells concatenated in memory.
    import scipy.sparse as sp

    reference = p2g.io.ingest(ad.AnnData(sp.csr_matrix(want.astype(np.int32)), obs=pd.DataFrame(index=cells),
                                         var=merged[[]]),
                              ad.AnnData(sp.csr_matrix(rna_counts.astype(np.int32)), obs=pd.DataFrame(index=cells),
                                         var=pd.DataFrame(index=store.rna.var.index)), tmp_path / "memory.zarr")
    logged = np.log1p(rna_counts / np.maximum(rna_counts.sum(1, keepdims=True), 1) * 1e4)
    u, s, _ = np.linalg.svd(logged - logged.mean(0), full_matrices=False)
    genes, _ = p2g.io.read_gene_annotation(shared_data / "hg38" / "hg38_genes.tsv.gz")
    links = []
    for target in (store, reference):
        target.atac.write_obsm("X_pca", u[:, :10] * s[:10])
        links.append(p2g.tl.peak_to_gene(target.path, gene_annotation=genes, use_rep="X_pca", n_metacells=100,
                                         k_neighbors=20, seed=1))
    assert len(links[0]) > 50
    pd.testing.assert_frame_equal(*links)
