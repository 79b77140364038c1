"""Bad input fails at once with a message naming the argument, the offending value and the fix.

Each row of the tables below breaks one thing in otherwise good input and lists the pieces the
message must contain. Errors of ``peak_to_gene`` must come before any heavy work: the metacell
aggregation kernel is counted and must not have run.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import p2g_dask as p2g
from p2g_dask.datasets import simulate_multiome


@pytest.fixture(scope="module")
def sim():
    return simulate_multiome(n_cells=200, n_peaks=600, n_genes=60, n_linked_genes=10, seed=3)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Count calls of the metacell aggregation kernel (the first heavy step of peak_to_gene)."""
    import p2g_dask.tl.engine.kernels as kernels
    import p2g_dask.tl.engine.accumulate as aggregate

    calls = []
    real = kernels.metacell_sum_block

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    for module in (kernels, aggregate):
        if hasattr(module, "metacell_sum_block"):
            monkeypatch.setattr(module, "metacell_sum_block", counted)
    return calls


def _run(sim, **overrides):
    kwargs = dict(rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent", n_metacells=40, k_neighbors=15,
                  max_distance=250_000, seed=1)
    kwargs.update(overrides)
    atac = kwargs.pop("atac", sim.atac)
    return p2g.tl.peak_to_gene(atac, **kwargs)


def _float_copy(adata):
    copy = adata.copy()
    copy.X = sp.csr_matrix(copy.X, dtype=np.float32)
    return copy


def _with_data(adata, position, value):
    copy = _float_copy(adata)
    copy.X.data[position] = value
    return copy


def _renamed_cells(adata, prefix):
    copy = adata.copy()
    copy.obs_names = [f"{prefix}{n}" for n in copy.obs_names]
    return copy


def _duplicated_barcode(sim):
    atac = sim.atac.copy()
    names = list(atac.obs_names)
    names[7] = names[3]
    atac.obs_names = names
    return {"atac": atac, "rna": sim.rna[10:].copy()}


def _unparseable_peaks(sim):
    atac = sim.atac.copy()
    atac.var = pd.DataFrame(index=[f"peak_{i}" for i in range(atac.n_vars)])
    return {"atac": atac}


def _peak_nan_start(sim):
    atac = sim.atac.copy()
    var = atac.var.copy()
    var["start"] = var["start"].astype(float)
    var.iloc[4, var.columns.get_loc("start")] = np.nan
    atac.var = var
    return {"atac": atac}


def _genes_with(sim, **changes):
    genes = sim.genes.copy()
    for column, (row, value) in changes.items():
        genes[column] = genes[column].astype(object)
        genes.loc[row, column] = value
    return {"gene_annotation": genes}


def _nan_embedding(sim):
    atac = sim.atac.copy()
    emb = np.array(atac.obsm["X_latent"], dtype=float)
    emb[5, 0] = np.nan
    atac.obsm["X_latent"] = emb
    return {"atac": atac}


# id, change to good input, exception, pieces the message must contain (argument, value, fix)
PEAK_TO_GENE_ERRORS = [
    ("no_shared_barcodes", lambda s: {"rna": _renamed_cells(s.rna, "X-")}, ValueError,
     ["atac", "rna", "share no barcodes", "'X-", "same barcode form"]),
    ("duplicate_barcodes", _duplicated_barcode, ValueError,
     ["atac has 1 duplicate barcodes", "drop the duplicates"]),
    ("use_rep_missing", lambda s: {"use_rep": "X_lsi"}, KeyError,
     ["use_rep='X_lsi'", "X_latent", "iterative_lsi"]),
    ("atac_nan_counts", lambda s: {"atac": _with_data(s.atac, 11, np.nan)}, ValueError,
     ["atac counts", "non-finite", "cell row", "replace them"]),
    ("rna_inf_counts", lambda s: {"rna": _with_data(s.rna, 0, np.inf)}, ValueError,
     ["rna counts", "non-finite", "cell row 0", "replace them"]),
    ("rna_negative_counts", lambda s: {"rna": _with_data(s.rna, 2, -3.0)}, ValueError,
     ["rna counts", "negative", "min -3", "layers['counts']"]),
    ("peak_names_unparseable", _unparseable_peaks, ValueError,
     ["peak names cannot be parsed", "'peak_0'", "chr1:100-200"]),
    ("peak_start_missing", _peak_nan_start, ValueError,
     ["var['start']", "nan", "fill them"]),
    ("annotation_missing_column", lambda s: {"gene_annotation": s.genes.drop(columns="strand")}, ValueError,
     ["gene_annotation is missing columns ['strand']", "gene_name, chrom, start, end, strand"]),
    ("annotation_unknown_strand", lambda s: _genes_with(s, strand=(3, "*")), ValueError,
     ["gene_annotation", "strand '*'", "'G00003'", "drop them or set the strand"]),
    ("annotation_end_before_start", lambda s: _genes_with(s, end=(2, 5)), ValueError,
     ["gene_annotation", "end <= start", "'G00002'", "fix or drop them"]),
    ("annotation_start_missing", lambda s: _genes_with(s, start=(1, None)), ValueError,
     ["gene_annotation['start']", "None", "'G00001'", "fill them"]),
    ("annotation_other_chromosomes", lambda s: {"gene_annotation": s.genes.assign(chrom="scaffold_9")}, ValueError,
     ["no chromosome has both peaks", "scaffold_9", "chromosome names"]),
    ("annotation_other_gene_ids", lambda s: {"gene_annotation": s.genes.assign(gene_name="ENSG" + s.genes["gene_name"])},
     ValueError, ["none of the 60 rna genes", "'G00000'", "gene names (not Ensembl ids)"]),
    ("max_distance_zero", lambda s: {"max_distance": 0}, ValueError, ["max_distance=0", "positive", "250000"]),
    ("max_distance_negative", lambda s: {"max_distance": -5}, ValueError, ["max_distance=-5", "positive"]),
    ("rna_missing", lambda s: {"rna": None}, ValueError, ["rna is required", "rna=", "gene_obsm="]),
    ("gene_obsm_without_names", lambda s: {"rna": None, "gene_obsm": "X_latent"}, ValueError,
     ["gene_obsm='X_latent'", "gene_names="]),
    ("metacells_wrong_shape", lambda s: {"metacells": np.arange(5)}, ValueError,
     ["metacells must be", "(5,)"]),
    ("metacells_other_cells", lambda s: {"metacells": np.array([[0, 1], [2, 900], [3, 4]])}, ValueError,
     ["metacells index cells outside 0..199", "other cells"]),
    ("embedding_nan", _nan_embedding, ValueError, ["use_rep", "NaN", "recompute it or drop those cells"]),
    ("k_neighbors_one", lambda s: {"k_neighbors": 1}, ValueError, ["k_neighbors=1", ">= 2"]),
    ("n_metacells_zero", lambda s: {"n_metacells": 0}, ValueError, ["n_metacells=0", ">= 1"]),
    ("overlap_cutoff_above_one", lambda s: {"overlap_cutoff": 1.5}, ValueError, ["overlap_cutoff=1.5", "(0, 1]"]),
    ("k_neighbors_all_cells", lambda s: {"k_neighbors": 300}, ValueError,
     ["only 1 metacells", "Lower k_neighbors"]),
]


@pytest.mark.parametrize("change, error, pieces", [row[1:] for row in PEAK_TO_GENE_ERRORS],
                         ids=[row[0] for row in PEAK_TO_GENE_ERRORS])
def test_peak_to_gene__bad_input_message(sim, kernel_calls, change, error, pieces):
    with pytest.raises(error) as info:
        _run(sim, **change(sim))
    message = info.value.args[0] if isinstance(info.value, KeyError) else str(info.value)
    for piece in pieces:
        assert piece in message, f"{piece!r} not in {message!r}"
    assert kernel_calls == [], "the error came after the aggregation had started"


def _far_genes(sim):
    genes = sim.genes.copy()
    genes[["start", "end"]] += 1_000  # every TSS 1 kb away from its promoter peak
    return genes


def test_peak_to_gene__no_candidate_pairs_message(sim):
    with pytest.raises(ValueError, match=r"no candidate peak-gene pairs within max_distance=10 bp.*raise max_distance"):
        _run(sim, gene_annotation=_far_genes(sim), max_distance=10)


def test_peak_to_gene__no_candidate_pairs_before_aggregation(sim, kernel_calls):
    with pytest.raises(ValueError, match="no candidate peak-gene pairs"):
        _run(sim, gene_annotation=_far_genes(sim), max_distance=10)
    assert kernel_calls == []


# --- problems that are repaired, with a log record that says so ---------------------------------


def _normalised(X, members, scale_to=1e4):
    """Independent metacell matrix: sum member rows, scale each metacell to 1e4, log2(x + 1)."""
    X = sp.csr_matrix(X).toarray().astype(np.float64)
    sums = np.stack([X[row].sum(axis=0) for row in np.asarray(members)])
    return np.log2(sums / sums.sum(axis=1, keepdims=True) * scale_to + 1)


def _expected_r(atac_X, rna_X, members, peak_pos, gene_pos):
    a = _normalised(atac_X, members)[:, peak_pos]
    r = _normalised(rna_X, members)[:, gene_pos]
    return np.array([np.corrcoef(a[:, i], r[:, i])[0, 1] for i in range(len(peak_pos))])


def _p2g_records(caplog, level=logging.INFO):
    return " | ".join(r.getMessage() for r in caplog.records if r.name == "p2g_dask" and r.levelno >= level)


def test_peak_to_gene__partial_barcode_overlap_keeps_intersection(sim, caplog):
    rna = sim.rna[20:].copy()
    with caplog.at_level(logging.INFO, logger="p2g_dask"):
        links = _run(sim, rna=rna)
    assert "atac has 200 cells and rna 180; using the 180 barcodes they share" in _p2g_records(caplog, logging.WARNING)
    assert links.attrs["n_cells"] == 180
    # Correlations equal an independent computation on the shared cells only.
    atac = sim.atac[rna.obs_names]
    members = np.asarray(links.attrs["metacells"])
    sample = links.dropna(subset=["correlation"]).iloc[::7]
    expected = _expected_r(atac.X, rna.X, members, atac.var_names.get_indexer(sample["peak"]),
                           rna.var_names.get_indexer(sample["gene"]))
    np.testing.assert_allclose(sample["correlation"], expected, rtol=1e-6, atol=1e-9)


def test_peak_to_gene__chromosome_names_harmonised(sim, caplog):
    genes = sim.genes.assign(chrom=sim.genes["chrom"].str.replace("chr", "", regex=False))
    with caplog.at_level(logging.INFO, logger="p2g_dask"):
        renamed = _run(sim, gene_annotation=genes)
    assert re.search(r"chromosome names differ.*'chr1'.*'1'.*added 'chr'", _p2g_records(caplog, logging.WARNING))
    pd.testing.assert_frame_equal(renamed, _run(sim), check_exact=True)


def test_peak_to_gene__duplicate_annotation_genes_keep_first(sim, caplog):
    duplicate = sim.genes.iloc[[0]].assign(chrom="chr5", start=1_000, end=2_000)
    genes = pd.concat([sim.genes, duplicate], ignore_index=True)
    with caplog.at_level(logging.INFO, logger="p2g_dask"):
        links = _run(sim, gene_annotation=genes)
    assert "1 duplicate gene names (e.g. 'G00000'); keeping the first" in _p2g_records(caplog, logging.WARNING)
    pd.testing.assert_frame_equal(links, _run(sim), check_exact=True)


def test_peak_to_gene__rna_genes_missing_from_annotation_counted(sim, caplog):
    dropped = list(sim.genes["gene_name"].iloc[:5])
    with caplog.at_level(logging.INFO, logger="p2g_dask"):
        links = _run(sim, gene_annotation=sim.genes.iloc[5:])
    assert "5 of 60 rna genes are not in gene_annotation" in _p2g_records(caplog)
    assert not set(dropped) & set(links["gene"])
    full = _run(sim).set_index(["peak", "gene"])
    # Correlations do not depend on the other genes; only BH and quantiles see the smaller set.
    np.testing.assert_array_equal(links["correlation"].to_numpy(),
                                  full.loc[list(zip(links["peak"], links["gene"])), "correlation"].to_numpy())


def test_peak_to_gene__more_metacells_than_cells_samples_with_replacement(sim, caplog):
    with caplog.at_level(logging.INFO, logger="p2g_dask"):
        links = _run(sim, n_metacells=500, k_neighbors=10)
    assert "n_metacells=500 exceeds the 200 cells; seeds are drawn with replacement" in _p2g_records(caplog, logging.WARNING)
    members = np.asarray(links.attrs["metacells"])
    seeds = np.random.default_rng(1).choice(200, size=500, replace=True)
    assert set(members[:, 0]) <= set(seeds)
    assert links["correlation"].dropna().abs().max() <= 1


def test_peak_to_gene__k_neighbors_above_cells_warns(sim, caplog):
    with caplog.at_level(logging.INFO, logger="p2g_dask"), pytest.raises(ValueError, match="only 1 metacells"):
        _run(sim, k_neighbors=300)
    assert "k_neighbors=300 exceeds the 200 cells" in _p2g_records(caplog, logging.WARNING)


def test_validate_counts__dense_and_integer(sim):
    from p2g_dask.io.inputs import validate_counts

    validate_counts(np.array([[0, 3], [1, 0]], dtype=np.int64), "atac")  # fine
    with pytest.raises(ValueError, match=r"atac counts contain negative values \(min -2\), first in cell row 1 \('b'\)"):
        validate_counts(np.array([[0, 3], [-2, 0]]), "atac", pd.Index(["a", "b"]))
    with pytest.raises(ValueError, match="cell row 2"):
        validate_counts(sp.csr_matrix(np.array([[0, 1.0], [0, 0], [np.nan, 0]])), "rna")


# --- the store --------------------------------------------------------------------------------


STORE_ERRORS = [
    ("no_shared_barcodes", lambda s: (s.atac, _renamed_cells(s.rna, "X-")), ValueError,
     ["atac (200 cells", "rna (200 cells", "share no barcodes", "'X-", "same barcode form"]),
    ("duplicate_barcodes", lambda s: tuple(_duplicated_barcode(s).values()), ValueError,
     ["atac has 1 duplicate barcodes", "drop the duplicates"]),
    ("nan_counts", lambda s: (_with_data(s.atac, 40, np.nan), s.rna), ValueError,
     ["atac counts", "non-finite", "cell row", "replace them"]),
    ("negative_counts", lambda s: (s.atac, _with_data(s.rna, 40, -1.0)), ValueError,
     ["rna counts", "negative", "raw counts"]),
]


@pytest.mark.parametrize("make, error, pieces", [row[1:] for row in STORE_ERRORS], ids=[row[0] for row in STORE_ERRORS])
def test_ingest__bad_input_message(sim, tmp_path, make, error, pieces):
    atac, rna = make(sim)
    with pytest.raises(error) as info:
        p2g.io.ingest(atac, rna, tmp_path / "s.zarr", chunk_cells=64)
    for piece in pieces:
        assert piece in str(info.value), f"{piece!r} not in {str(info.value)!r}"
    assert list(tmp_path.iterdir()) == [], "a failed ingest left files behind"


def test_open_store__incompatible_format_version(sim, tmp_path, kernel_calls):
    path = tmp_path / "old.zarr"
    p2g.io.ingest(sim.atac, sim.rna, path, chunk_cells=64)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["p2g_format_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    pieces = ["store format 99", f"reads format {p2g.STORE_FORMAT_VERSION}", "re-ingest"]
    for call in (lambda: p2g.io.open_store(path), lambda: p2g.tl.peak_to_gene(
            str(path), gene_annotation=sim.genes, use_rep="X_latent", n_metacells=40, k_neighbors=15)):
        with pytest.raises(ValueError) as info:
            call()
        assert all(piece in str(info.value) for piece in pieces), str(info.value)
    assert kernel_calls == []


def test_open_store__not_a_store(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    with pytest.raises(ValueError, match=r"plain.zarr' is not a p2g_dask store.*p2g.io.ingest"):
        p2g.io.open_store(tmp_path / "plain.zarr")
    with pytest.raises(FileNotFoundError, match=r"store path=.*missing.zarr' does not exist"):
        p2g.io.open_store(tmp_path / "missing.zarr")


# --- fragment files ---------------------------------------------------------------------------

GOOD_LINES = ["# a header", "chr1\t10\t60\tAAAC-1\t1", "chr1\t20\t90\tGGTA-1\t2"]
FRAGMENT_ERRORS = [
    ("too_few_fields", "chr1\t30\t80\tAAAC-1", ["line 4", "expected 5 tab-separated fields, found 4"]),
    ("text_start", "chr1\tten\t80\tAAAC-1\t1", ["line 4", "start, end and count must be integers"]),
    ("end_before_start", "chr1\t80\t30\tAAAC-1\t1", ["line 4", ("start=80, end=30", "'start': 80, 'end': 30")]),
    ("empty_barcode", "chr1\t30\t80\t\t1", ["line 4", ("empty chromosome or barcode", "'barcode': ''")]),
]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("bad_line, pieces", [row[1:] for row in FRAGMENT_ERRORS], ids=[row[0] for row in FRAGMENT_ERRORS])
def test_read_fragments__malformed_line_names_file_and_line(tmp_path, bad_line, pieces, compress):
    text = "\n".join(GOOD_LINES + [bad_line, "chr2\t5\t50\tAAAC-1\t1"]) + "\n"
    path = tmp_path / ("frags.tsv.gz" if compress else "frags.tsv")
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    with pytest.raises(ValueError) as info:
        p2g.io.read_fragments(path)
    message = str(info.value)
    for piece in [path.name, *pieces, "fix or remove that line"]:
        alternatives = piece if isinstance(piece, tuple) else (piece,)  # the gzip path words it differently
        assert any(p in message for p in alternatives), f"{piece!r} not in {message!r}"


def test_read_fragments__truncated_gzip(tmp_path):
    lines = "".join(f"chr1\t{i}\t{i + 50}\tBC{i % 97}-1\t1\n" for i in range(20_000))
    blob = gzip.compress(lines.encode())
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut.tsv.gz' is truncated.*Re-download or re-create"):
        p2g.io.read_fragments(path)


# --- other entry points: pseudobulk, run config, cluster ------------------------------------


def _pseudobulk(sim, tmp_path, **overrides):
    frag = tmp_path / "f.tsv"
    frag.write_text("chr1\t10\t60\tAAAC-1\t1\n")
    kwargs = dict(chromsizes=sim.chrom_sizes, cluster_key="lineage", path_to_fragments={"s": frag},
                  bigwig_path=tmp_path / "bw", executor="synchronous", show_progress=False)
    kwargs.update(overrides)
    return p2g.tl.pseudobulk_with_fragments(sim.atac, **kwargs)


PSEUDOBULK_ERRORS = [
    ("strategy", {"bigwig_strategy": "coverage"}, ValueError, ["bigwig_strategy='coverage'", "cutsite"]),
    ("bin_size", {"bin_size": 0}, ValueError, ["bin_size=0", "positive integer"]),
    ("cluster_key", {"cluster_key": "leiden"}, ValueError, ["cluster_key='leiden'", "lineage"]),
    ("missing_file", {"path_to_fragments": {"s": "/nonexistent/f.tsv.gz"}}, FileNotFoundError,
     ["path_to_fragments", "/nonexistent/f.tsv.gz", "check the paths"]),
    ("shift", {"shift": (4,)}, ValueError, ["shift=(4,)", "two integers"]),
]


@pytest.mark.parametrize("change, error, pieces", [row[1:] for row in PSEUDOBULK_ERRORS],
                         ids=[row[0] for row in PSEUDOBULK_ERRORS])
def test_pseudobulk_with_fragments__bad_input_message(sim, tmp_path, change, error, pieces):
    with pytest.raises(error) as info:
        _pseudobulk(sim, tmp_path, **change)
    for piece in pieces:
        assert piece in str(info.value), f"{piece!r} not in {str(info.value)!r}"
    assert not (tmp_path / "bw").exists() or not list((tmp_path / "bw").glob("*.bw"))


CONFIG_ERRORS = [
    ("unknown_section", {"inputs": {"atac": "a.h5ad"}, "output": "o", "peak2gene": {}}, ["'top level'", "peak2gene"]),
    ("unknown_parameter", {"inputs": {"atac": "a.h5ad"}, "output": "o", "peak_to_gene": {"k": 5}},
     ["'peak_to_gene'", "['k']", "k_neighbors"]),
    ("no_inputs", {"output": "o"}, ["needs a 'inputs' section"]),
    ("no_atac", {"inputs": {"rna": "r.h5ad"}, "output": "o"}, ["inputs needs 'atac'", "'store'"]),
]


@pytest.mark.parametrize("config, pieces", [row[1:] for row in CONFIG_ERRORS], ids=[row[0] for row in CONFIG_ERRORS])
def test_load_config__bad_config_message(config, pieces):
    from p2g_dask.pipeline import load_config

    with pytest.raises(ValueError) as info:
        load_config(config)
    for piece in pieces:
        assert piece in str(info.value), f"{piece!r} not in {str(info.value)!r}"


def test_start_cluster__unknown_kind_message():
    from p2g_dask.cluster import start_cluster

    with pytest.raises(ValueError, match=r"kind='kubernetes' is not a cluster kind; use one of 'local', 'slurm', 'address'"):
        start_cluster("kubernetes")


def test_cli__bad_input_exit_code_and_message(sim, tmp_path, capsys):
    from p2g_dask.cli import main

    atac, rna = tmp_path / "atac.h5ad", tmp_path / "rna.h5ad"
    sim.atac.write_h5ad(atac)
    _renamed_cells(sim.rna, "X-").write_h5ad(rna)
    assert main(["-q", "ingest", str(atac), str(rna), str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err
    assert "p2g ingest: error:" in err and "share no barcodes" in err
    assert not (tmp_path / "s.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atac.h5ad", "rna.h5ad"]
    assert Path(atac).exists()


# --- security: local-only listeners, no code from input files, no shell ---------------------


def _listening_hosts(client) -> set[str]:
    scheduler = client.cluster.scheduler
    hosts = {addr.split("://")[1].rsplit(":", 1)[0] for addr in [scheduler.address, *client.scheduler_info()["workers"]]}
    http = getattr(scheduler, "http_server", None)
    if http is not None:  # the dashboard's sockets
        hosts |= {sock.getsockname()[0] for sock in http._sockets.values()}
    return hosts


def test_start_cluster__listens_on_localhost_only():
    from p2g_dask.cluster import close_cluster, dashboard_link, start_cluster

    client = start_cluster("local", n_workers=1, threads_per_worker=1, processes=False)
    try:
        assert _listening_hosts(client) == {"127.0.0.1"}
        assert dashboard_link(client).startswith("http://127.0.0.1:")
    finally:
        close_cluster(client)


def test_pseudobulk_cluster__listens_on_localhost_only():
    import distributed

    from p2g_dask._graph import executor as run_tasks

    with run_tasks("dask", n_jobs=1, client=None, progress=False) as run:
        client = distributed.get_client()
        assert run([dask.delayed(sum)([1, 2])]) == [3]
        assert _listening_hosts(client) == {"127.0.0.1"}


def test_start_cluster__slurm_scheduler_binds_localhost(monkeypatch):
    import dask_jobqueue

    import p2g_dask.cluster as cluster

    seen = {}

    class FakeSLURMCluster:
        def __init__(self, scheduler_options=None, **kwargs):
            seen.update(scheduler_options or {})
            raise RuntimeError("no SLURM here")

    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(dask_jobqueue, "SLURMCluster", FakeSLURMCluster)
    with pytest.raises(RuntimeError, match="no SLURM here"):
        cluster.start_cluster("slurm", cores=1, memory="1GiB")
    assert seen["host"] == "127.0.0.1" and seen["dashboard_address"].startswith("127.0.0.1:")


def test_load_config__python_yaml_tags_refused(tmp_path):
    from p2g_dask.cluster import slurm_cluster_options
    from p2g_dask.pipeline import load_config

    pwned = tmp_path / "PWNED"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"inputs: !!python/object/apply:os.system ['touch {pwned}']\noutput: out\n")
    with pytest.raises(ValueError, match=r"evil.yaml' is not a plain YAML mapping .*no !!python tags"):
        load_config(evil)
    evil.write_text(f"jobqueue:\n  slurm: !!python/object/apply:os.system ['touch {pwned}']\n")
    with pytest.raises(Exception, match="python/object/apply"):
        slurm_cluster_options(evil)
    assert not pwned.exists()


def test_package_source__no_pickle_eval_or_shell():
    root = Path(p2g.__file__).parent
    forbidden = re.compile(r"pickle\.loads?\(|\beval\(|\bexec\(|yaml\.(unsafe_)?load\(|yaml\.Loader|allow_pickle=True"
                           r"|shell=True|os\.system\(|os\.popen\(")
    hits = [f"{path.relative_to(root)}:{n}: {line.strip()}"
            for path in sorted(root.rglob("*.py")) for n, line in enumerate(path.read_text().splitlines(), 1)
            if forbidden.search(line)]
    assert hits == []


def test_run_pipeline__paths_with_shell_metacharacters(sim, tmp_path, local_client, monkeypatch):
    from p2g_dask.pipeline import run_pipeline

    nasty = "in $(touch PWNED1) `touch PWNED2`; touch PWNED3 & | > 'q' \"d\" *?"
    inputs = tmp_path / nasty
    inputs.mkdir()
    sim.atac.write_h5ad(inputs / f"{nasty}atac.h5ad")
    sim.rna.write_h5ad(inputs / f"{nasty}rna.h5ad")
    sim.genes.to_csv(inputs / f"{nasty}genes.tsv", sep="\t", index=False)
    config = tmp_path / "run.yaml"
    import yaml

    config.write_text(yaml.safe_dump({
        "inputs": {"atac": f"{nasty}/{nasty}atac.h5ad", "rna": f"{nasty}/{nasty}rna.h5ad",
                   "gene_annotation": f"{nasty}/{nasty}genes.tsv"},
        "output": f"out {nasty}", "iterative_lsi": False,
        "peak_to_gene": {"use_rep": "X_latent", "n_metacells": 40, "k_neighbors": 15},
    }))
    monkeypatch.chdir(tmp_path)
    record = run_pipeline(config, client=local_client)
    out = tmp_path / f"out {nasty}"
    assert record["status"] == "finished"
    assert Path(record["outputs"]["links"]) == out / "links.parquet" and (out / "run.json").is_file()
    assert p2g.io.read_links(out / "links.parquet")["gene"].isin(sim.genes["gene_name"]).all()
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
