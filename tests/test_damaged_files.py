"""Damaged, empty, wrong-format or missing input files: one clear InputFileError, never a wrong answer.

Every file is generated here (tmp_path), no real data needed: a simulated multiome written as the
files a user has (h5ad, h5mu, a bgzip fragment file, a GENCODE-style gene table and exon BED,
chrom sizes, links, a BigWig, a store); each damaged by cutting it at 3 offsets, emptying it,
replacing it with a text file of the right suffix or with a folder; stores with a chunk deleted
or altered. Through the API each gives :class:`p2g_dask.InputFileError` naming the argument and
the path; through the CLI, exit status 2, one error line, no traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import pandas as pd
import pytest

import p2g_dask as p2g
from p2g_dask import InputFileError

REPO = Path(__file__).resolve().parents[1]
N_CELLS = 1000


def _write_gencode_style(sim, folder: Path) -> tuple[Path, Path]:
    """The gene table and exon BED in the layout of GENCODE-derived tables, gzip-compressed."""
    genes = sim.genes.rename(columns={"chrom": "#contig"})
    genes = genes.assign(gene_id=[f"ENSG{i:011d}.1" for i in range(len(genes))], gene_type="protein_coding")
    gene_path = folder / "genes.tsv.gz"
    genes[["#contig", "start", "end", "gene_name", "gene_id", "strand", "gene_type"]].to_csv(
        gene_path, sep="\t", index=False, compression="gzip")
    exons = sim.exons.rename(columns={"chrom": "#contig"})
    exons = exons.assign(exon_id=[f"ENSE{i:011d}.1" for i in range(len(exons))],
                         exon_number=exons.groupby("gene_name").cumcount() + 1,
                         transcript_id="ENST" + exons["gene_name"].str[1:] + ".1")
    exon_path = folder / "exons.bed.gz"
    exons[["#contig", "start", "end", "exon_id", "gene_name", "exon_number", "transcript_id"]].to_csv(
        exon_path, sep="\t", index=False, compression="gzip")
    return gene_path, exon_path


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Good files made once from a simulated multiome: h5ads, h5mu, fragments, annotation, store, links, BigWig."""
    import mudata as md
    import pybigtools

    sim = p2g.datasets.simulate_multiome(n_cells=N_CELLS, n_peaks=3000, n_genes=300, n_linked_genes=30, seed=11)
    folder = tmp_path_factory.mktemp("good")
    sim.atac.write_h5ad(folder / "atac.h5ad")
    sim.rna.write_h5ad(folder / "rna.h5ad")
    grouped = sim.atac.copy()
    grouped.obs["grp"] = np.where(np.arange(grouped.n_obs) % 2, "a", "b")
    grouped.write_h5ad(folder / "atac_grp.h5ad")
    with md.set_options(pull_on_update=False):
        md.MuData({"atac": sim.atac, "rna": sim.rna}).write_h5mu(folder / "sim.h5mu")
    fragments = p2g.datasets.simulate_fragments(sim.atac, folder / "fragments.tsv.gz", chrom_sizes=sim.chrom_sizes,
                                                seed=11)  # bgzip, as Cell Ranger writes them
    genes, exons = _write_gencode_style(sim, folder)
    (folder / "sim.chrom.sizes").write_text("".join(f"{c}\t{n}\n" for c, n in sim.chrom_sizes.items()))
    store = p2g.io.ingest(folder / "atac.h5ad", folder / "rna.h5ad", folder / "sim.zarr")
    gene = sim.truth["gene"].value_counts().index[0]
    chrom = sim.genes.set_index("gene_name").loc[gene, "chrom"]
    peaks = sim.atac.var_names[:20]
    from p2g_dask._tables import LINK_COLUMNS

    links = pd.DataFrame({c: np.linspace(0, 1, peaks.size) for c in LINK_COLUMNS})
    links = links.assign(peak=peaks, gene=gene, chrom=chrom, peak_start=0, peak_end=1, tss=1, distance=0)
    p2g.io.write_links(links, folder / "links.parquet")
    pybigtools.open(str(folder / "a.bw"), "w").write(
        {"chr1": sim.chrom_sizes["chr1"]}, [("chr1", i * 500, i * 500 + 200, 1.0 + i % 7) for i in range(20_000)])
    return {
        "h5ad": folder / "atac.h5ad", "rna": folder / "rna.h5ad", "h5mu": folder / "sim.h5mu",
        "fragments": fragments, "genes": genes, "exons": exons, "chrom_sizes": folder / "sim.chrom.sizes",
        "links": folder / "links.parquet", "bigwig": folder / "a.bw", "store": Path(store.path),
        "grouped": folder / "atac_grp.h5ad", "gene": gene,
    }


# format -> (API call on a damaged file, argument named in the message, CLI argv or None)
def _api(fmt: str, good: dict, bad: Path, out: Path):
    if fmt == "h5ad":
        return p2g.io.ingest(bad, good["rna"], out / "s.zarr")
    if fmt == "h5mu":
        return p2g.io.ingest(bad, out / "s.zarr")
    if fmt == "fragments":
        return p2g.io.read_fragments(bad)
    if fmt == "genes":
        return p2g.io.read_gene_annotation(bad)
    if fmt == "exons":
        return p2g.io.read_gene_annotation(good["genes"], exons=bad)
    if fmt == "chrom_sizes":
        return p2g.io.read_chrom_sizes(bad)
    if fmt == "links":
        return p2g.io.read_links(bad)
    if fmt == "bigwig":
        from p2g_dask.pl._tracks import bigwig_signal

        return bigwig_signal(bad, "chr1", 0, 100_000, 10)
    raise AssertionError(fmt)


ARGUMENT = {"h5ad": "atac", "h5mu": "atac", "fragments": "path_to_fragments", "genes": "path_or_df",
            "exons": "exons", "chrom_sizes": "sizes", "links": "links", "bigwig": "bigwig_files"}


def _cli(fmt: str, good: dict, bad: Path, out: Path) -> list[str]:
    plot = ["plot", str(good["store"]), "--links", str(good["links"]), "--gene", good["gene"],
            "--genes", str(good["genes"]), "--out", str(out / "p.png")]
    bigwig = ["bigwig", str(good["grouped"]), "--fragments", str(good["fragments"]), "--chrom-sizes",
              str(good["chrom_sizes"]), "--groupby", "grp", "--out", str(out / "bw"), "--jobs", "1"]
    swap = {"links": ("--links", plot), "genes": ("--genes", plot), "fragments": ("--fragments", bigwig),
            "chrom_sizes": ("--chrom-sizes", bigwig)}
    if fmt == "h5ad":
        return ["ingest", str(bad), str(good["rna"]), str(out / "s.zarr")]
    if fmt == "h5mu":
        return ["ingest", str(bad), str(out / "s.zarr")]
    if fmt == "exons":
        return [*plot, "--exons", str(bad)]
    if fmt == "bigwig":
        return [*plot, "--bigwig", f"a={bad}"]
    option, argv = swap[fmt]
    argv = list(argv)
    argv[argv.index(option) + 1] = str(bad)
    return argv


def _cut_offsets(data: bytes, fmt: str) -> list[int]:
    offsets = [max(1, len(data) // 10), len(data) // 2, len(data) - 3]
    if fmt == "chrom_sizes":
        # A plain-text table cut exactly at a line end is a complete shorter table: cut mid-line.
        offsets = [o - 1 if data[o - 1 : o] == b"\n" else o for o in offsets]
    return offsets


SUFFIX = {"h5ad": "atac.h5ad", "h5mu": "sim.h5mu", "fragments": "fragments.tsv.gz", "genes": "genes.tsv.gz",
          "exons": "exons.bed.gz", "chrom_sizes": "sim.chrom.sizes", "links": "links.parquet", "bigwig": "a.bw"}
DAMAGES = ["cut0", "cut1", "cut2", "empty", "text", "folder"]
CASES = [(fmt, damage) for fmt in SUFFIX for damage in DAMAGES]


def _damaged(fmt: str, damage: str, good: dict, folder: Path) -> Path:
    bad = folder / "bad" / SUFFIX[fmt]
    bad.parent.mkdir(parents=True, exist_ok=True)
    data = Path(good[fmt]).read_bytes()
    if damage.startswith("cut"):
        bad.write_bytes(data[: _cut_offsets(data, fmt)[int(damage[-1])]])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "text":
        bad.write_text("this is a note, not the data file\n")
    else:
        bad.mkdir()
    return bad


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_readers__generated_good_files_read(good, tmp_path, fmt):
    # The undamaged files read without error: each error below comes from the damage alone.
    _api(fmt, good, Path(good[fmt]), tmp_path)


@pytest.mark.parametrize("fmt,damage", CASES, ids=[f"{f}-{d}" for f, d in CASES])
def test_readers__damaged_file_raises_input_file_error(good, tmp_path, fmt, damage):
    bad = _damaged(fmt, damage, good, tmp_path)
    with pytest.raises(InputFileError) as err:
        _api(fmt, good, bad, tmp_path)
    message = str(err.value)
    assert str(bad) in message and f"{ARGUMENT[fmt]}=" in message, message
    assert not (tmp_path / "s.zarr").exists()  # failed before any output was written


def _run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "p2g_dask.cli", "-q", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_cli__damaged_file_exits_2_with_one_line(good, tmp_path, fmt):
    for damage in ("cut1", "text"):
        bad = _damaged(fmt, damage, good, tmp_path / damage)
        done = _run_cli(_cli(fmt, good, bad, tmp_path / damage), tmp_path)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"p2g {_cli(fmt, good, bad, tmp_path)[0]}: error: "), lines
        assert str(bad) in lines[0]


def _damage_chunk(path: Path, how: str) -> None:
    chunk = path / "atac" / "X" / "indices" / "c" / "0"
    if how == "deleted":
        chunk.unlink()
    else:
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))


def _broken_store(good: dict, folder: Path, how: str) -> Path:
    path = folder / f"{how}.zarr"
    shutil.copytree(good["store"], path)
    _damage_chunk(path, how)
    return path


@pytest.mark.parametrize("how", ["deleted", "altered"])
def test_store__damaged_chunk_named_in_memory_and_on_cluster(good, tmp_path, how, local_client):
    path = _broken_store(good, tmp_path, how)
    expected = f"chunk atac/X/indices/c/0 {'is missing' if how == 'deleted' else 'fails its checksum'}"
    # In memory: the whole matrix read; on the LocalCluster: the blocks read by the workers.
    with pytest.raises(InputFileError, match=expected) as err:
        if how == "deleted":
            p2g.io.open_store(path)
        else:
            p2g.io.open_store(path).atac.to_memory()
    assert str(path) in str(err.value)
    # On the cluster: the store is opened intact and damaged afterwards (a deleted chunk is then
    # caught by the read of the worker, not by the opening).
    from p2g_dask import _graph
    from p2g_dask.io.inputs import resolve_input

    shutil.rmtree(path)
    shutil.copytree(good["store"], path)
    atac, _, _ = resolve_input(str(path))
    blocks, _ = atac.blocks(100)
    _damage_chunk(path, how)
    with pytest.raises(InputFileError, match=expected):
        _graph.compute(blocks, local_client)


def test_peak_to_gene__altered_chunk_stops_before_results(good, tmp_path):
    path = _broken_store(good, tmp_path, "altered")
    embedding = np.random.default_rng(0).normal(size=(N_CELLS, 5))
    p2g.io.open_store(good["store"]).atac.write_obsm("X_test", embedding)  # obsm is not checked here
    shutil.rmtree(path / "atac" / "obsm")
    shutil.copytree(good["store"] / "atac" / "obsm", path / "atac" / "obsm")
    with pytest.raises(InputFileError, match="atac/X/indices/c/0"):
        p2g.tl.peak_to_gene(str(path), gene_annotation=good["genes"], n_metacells=50, k_neighbors=20,
                            use_rep="X_test", seed=1)


@pytest.mark.parametrize("how", ["deleted", "altered"])
def test_p2g_verify__states_of_a_store(good, tmp_path, how):
    intact = _run_cli(["verify", str(good["store"])], tmp_path)
    assert intact.returncode == 0 and "ok: " in intact.stdout and "chunks verified" in intact.stdout
    done = _run_cli(["verify", str(_broken_store(good, tmp_path, how))], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "atac/X/indices/c/0" in done.stderr


def test_store__previous_format_without_checksums_opens(good, tmp_path):
    import json

    path = tmp_path / "old.zarr"
    shutil.copytree(good["store"], path)
    meta_file = path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"].pop("p2g_integrity")
    meta["attributes"]["p2g_dask_version"] = "0.0.9"
    meta_file.write_text(json.dumps(meta))
    from p2g_dask.io.verify import verify_store

    assert verify_store(path).startswith("no checksums (written by p2g_dask 0.0.9)")
    store = p2g.io.open_store(path)
    assert store.atac.to_memory().nnz == p2g.io.open_store(good["store"]).atac.nnz


def test_store__damaged_csr_block_named(good, tmp_path):
    # indices rewritten out of order, with a valid checksum (as a buggy writer would): CSR check.
    import zarr

    path = tmp_path / "csr.zarr"
    shutil.copytree(good["store"], path)
    indices = zarr.open_array(str(path / "atac" / "X" / "indices"), mode="r+")
    values = indices[:]
    indices[:] = values[::-1].copy()
    with pytest.raises(InputFileError, match="break the CSR format"):
        p2g.io.open_store(path).atac.to_memory()


def test_store__csr_check_of_the_used_rows_only(good, tmp_path):
    # One row's columns put out of order (checksums rewritten valid): a reader that uses only
    # other rows (the metacell sums) reads on; one that uses it is stopped, naming the rows.
    import zarr

    from p2g_dask.io._integrity import read_pieces

    path = tmp_path / "row.zarr"
    shutil.copytree(good["store"], path)
    indptr = zarr.open_array(str(path / "atac" / "X" / "indptr"), mode="r")[:]
    bad_row = int(np.flatnonzero(np.diff(indptr) >= 2)[3])
    indices = zarr.open_array(str(path / "atac" / "X" / "indices"), mode="r+")
    lo, hi = int(indptr[bad_row]), int(indptr[bad_row + 1])
    indices[lo:hi] = indices[lo:hi][::-1].copy()
    expected = p2g.io.open_store(good["store"]).atac.to_memory()
    n_obs, n_vars = expected.shape
    others = np.setdiff1d(np.arange(n_obs), [bad_row])
    pieces = list(read_pieces(str(path), "atac", 0, n_obs, n_vars, max_entries=500, rows=others))
    assert len(pieces) > 3
    for first, stop, (data, piece_indices, piece_indptr) in pieces:
        got = sp.csr_matrix((data, piece_indices, piece_indptr), shape=(stop - first, n_vars))
        used = others[(others >= first) & (others < stop)]
        assert (got[used - first] != expected[used]).nnz == 0
    with pytest.raises(InputFileError, match=rf"rows \d+-\d+ of atac/X break the CSR format"):
        list(read_pieces(str(path), "atac", 0, n_obs, n_vars, max_entries=500, rows=np.array([0, bad_row])))
    with pytest.raises(InputFileError, match="break the CSR format"):
        list(read_pieces(str(path), "atac", 0, n_obs, n_vars, max_entries=500))


def test_csr_some_rows_ok__agrees_with_the_check_of_those_rows():
    from p2g_dask._variables import csr_block_problem
    from p2g_dask.io._integrity import _csr_some_rows_ok

    rng = np.random.default_rng(1)
    verdicts = []
    for _ in range(300):
        matrix = sp.random(20, 30, density=0.2, format="csr", random_state=rng)
        indices = matrix.indices.copy()
        if indices.size and rng.random() < 0.7:
            indices[rng.integers(indices.size)] = rng.integers(-2, 33)
        rows = np.sort(rng.choice(20, rng.integers(1, 20), replace=False)).astype(np.int64)
        # The same rows as a block of their own: its CSR check is the reference.
        own_indptr = np.concatenate([[0], np.cumsum(np.diff(matrix.indptr)[rows])])
        own_indices = np.concatenate([indices[matrix.indptr[r]:matrix.indptr[r + 1]] for r in rows])
        reference = csr_block_problem(own_indptr, own_indices, 30, own_indices.size) is None
        verdict = bool(_csr_some_rows_ok(matrix.indptr.astype(np.int64), indices, 30, rows))
        assert verdict == reference, (rows, indices)
        verdicts.append(verdict)
    assert 50 < sum(verdicts) < 250


def test_store__folder_not_a_store(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(InputFileError, match="not a p2g store"):
        from p2g_dask.io.inputs import resolve_input

        resolve_input(str(tmp_path / "x.zarr"))


def test_input_file_error__pickles_with_its_message():
    import pickle

    err = InputFileError("store", "/x.zarr", "is damaged: chunk atac/X/data/c/3 is missing", "re-ingest")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is InputFileError and str(back) == str(err) and back.path == "/x.zarr"


@pytest.mark.slow
def test_p2g_bigwig__bad_line_mid_file_prints_one_error_line(good, tmp_path):
    # The first lines are fine (the up-front check passes): the error comes from a task on the
    # LocalCluster, whose worker log and shutdown must not reach stderr.
    import gzip

    with gzip.open(good["fragments"], "rt") as fh:
        text = fh.readlines()
    bad = tmp_path / "mid.tsv.gz"
    with gzip.open(bad, "wt", compresslevel=1) as fh:
        fh.writelines(text[: len(text) // 2])
        fh.write("garbage line here\n")
        fh.writelines(text[len(text) // 2 :])
    argv = _cli("fragments", good, bad, tmp_path)
    done = _run_cli([*argv[:-2], "--jobs", "2"], tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("p2g bigwig: error: path_to_fragments=")
    assert "garbage line here" in lines[0] and str(bad) in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("n_metacells,k_neighbors,warns", [(500, 100, True), (100, 20, False)])
def test_peak_to_gene__small_data_warning_on_1000_cells(good, tmp_path, caplog, n_metacells, k_neighbors, warns):
    import logging

    path = tmp_path / "s.zarr"
    shutil.copytree(good["store"], path)
    store = p2g.io.open_store(path)
    store.atac.write_obsm("X_test", np.random.default_rng(0).normal(size=(store.atac.n_obs, 5)))
    with caplog.at_level(logging.WARNING, logger="p2g_dask"):
        links = p2g.tl.peak_to_gene(store, gene_annotation=good["genes"], use_rep="X_test",
                                    n_metacells=n_metacells, k_neighbors=k_neighbors, seed=1)
    assert len(links) > 0
    messages = [r.getMessage() for r in caplog.records if "small data" in r.getMessage()]
    assert bool(messages) == warns, messages
    if warns:
        assert "each of the 1000 cells is in 50.0 metacells" in messages[0] and "n_metacells=100" in messages[0]


def test_csr_block_ok__agrees_with_the_named_check():
    """The compiled one-pass check of a store block accepts exactly what csr_block_problem accepts."""
    from p2g_dask._variables import csr_block_problem
    from p2g_dask.io._integrity import _csr_block_ok

    rng = np.random.default_rng(0)
    cases = [(np.array([0, 2, 3]), np.array([1, 4, 0]), 5, 3), (np.array([0, 2, 3]), np.array([1, 1, 0]), 5, 3),
             (np.array([0, 2, 3]), np.array([1, 5, 0]), 5, 3), (np.array([0, 3, 2]), np.array([1, 2, 0]), 5, 3),
             (np.array([0, 2, 3]), np.array([1, 4]), 5, 3), (np.array([1, 2, 3]), np.array([1, 4, 0]), 5, 3),
             (np.array([0, 2, 3]), np.array([-1, 4, 0]), 5, 3), (np.array([0, 0, 0]), np.array([], dtype=int), 5, 0)]
    for _ in range(200):
        matrix = sp.random(20, 30, density=0.2, format="csr", random_state=rng)
        indices = matrix.indices.copy()
        if indices.size and rng.random() < 0.5:
            indices[rng.integers(indices.size)] = rng.integers(-2, 33)  # maybe out of range or out of order
        cases.append((matrix.indptr, indices, 30, matrix.nnz))
    for case in cases:
        assert _csr_block_ok(*case) == (csr_block_problem(*case) is None), case
    assert sum(csr_block_problem(*case) is not None for case in cases) > 50
