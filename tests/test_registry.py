"""Tests for the dataset registry (pooch) and genome annotation fetching, all on 127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import logging
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pooch
import pytest

import p2g_dask as p2g
from p2g_dask.datasets import registry as reg


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests_seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server naming)
        type(self).requests_seen.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve tmp_path/'srv' on 127.0.0.1 (an OS-chosen port) from a thread; yield (dir, url)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "srv"
    root.mkdir()
    handler = type("Handler", (_QuietHandler,), {"requests_seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests_seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_make_registry__loopback_fetch_checks_sha256(server, tmp_path):
    root, url, seen = server
    payload = root / "small.txt"
    payload.write_bytes(np.random.default_rng(0).bytes(50_000))
    pup = reg.make_registry({"small.txt": f"sha256:{_sha256(payload)}"}, base_url=url, path=tmp_path / "cache")
    assert isinstance(pup, pooch.Pooch)
    got = pup.fetch("small.txt")
    assert Path(got) == tmp_path / "cache" / "small.txt"
    assert Path(got).read_bytes() == payload.read_bytes()
    # Cached: the module-level fetch returns the same file without a second request.
    assert reg.fetch("small.txt", datasets=pup) == Path(got)
    assert seen == ["/small.txt"]


def test_make_registry__loopback_md5_and_query_url(server, tmp_path):
    # Like the Mendeley entries: the URL has a query string and the cache name is the registry key.
    root, url, _ = server
    (root / "blob").write_bytes(b"fragments\n" * 1000)
    md5 = hashlib.md5((root / "blob").read_bytes()).hexdigest()
    pup = reg.make_registry({"frags.tsv.gz": f"md5:{md5}"}, urls={"frags.tsv.gz": f"{url}/blob?a=758c"},
                            path=tmp_path / "cache")
    assert reg.fetch("frags.tsv.gz", datasets=pup).read_bytes() == b"fragments\n" * 1000


def test_make_registry__wrong_hash_is_rejected(server, tmp_path):
    root, url, _ = server
    (root / "small.txt").write_text("the real content\n")
    wrong = "sha256:" + "0" * 64
    pup = reg.make_registry({"small.txt": wrong}, base_url=url, path=tmp_path / "cache", retry_if_failed=0)
    actual = _sha256(root / "small.txt")
    for call in (lambda: pup.fetch("small.txt"), lambda: reg.fetch("small.txt", datasets=pup)):
        with pytest.raises(reg.DatasetHashError) as info:
            call()
        msg = str(info.value)
        assert "'small.txt'" in msg and wrong in msg and actual in msg
        assert "delete" in msg and str(tmp_path / "cache" / "small.txt") in msg
        assert isinstance(info.value, ValueError)
    # The bad download is discarded, never left where the next fetch would trust it.
    assert not (tmp_path / "cache" / "small.txt").exists()


def test_make_registry__no_hash_logs_sha256(server, tmp_path, caplog):
    root, url, _ = server
    (root / "new.bin").write_bytes(b"\x00\x01" * 5000)
    pup = reg.make_registry({"new.bin": None}, base_url=url, path=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="p2g_dask"):
        pup.fetch("new.bin")
    assert any(_sha256(root / "new.bin") in r.getMessage() for r in caplog.records)


def test_make_registry__errors(server, tmp_path):
    _, url, _ = server
    pup = reg.make_registry({"missing.txt": None}, base_url=url, path=tmp_path / "cache", retry_if_failed=0)
    with pytest.raises(ConnectionError, match="could not download 'missing.txt' from http://127.0.0.1.*save it as"):
        pup.fetch("missing.txt")
    with pytest.raises(ValueError, match="name='other.txt' is not in the p2g_dask dataset registry; "
                                         "valid names: missing.txt"):
        reg.fetch("other.txt", datasets=pup)
    with pytest.raises(ValueError, match="urls has names not in registry"):
        reg.make_registry({"a": None}, urls={"b": "http://127.0.0.1/b"})
    with pytest.raises(ValueError, match="no URL for \\['a'\\]"):
        reg.make_registry({"a": None})


def test_register_datasets__entries_and_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(reg.DATA_DIR_ENV, raising=False)
    ds = p2g.datasets.register_datasets()
    assert isinstance(ds, pooch.Pooch)
    assert Path(ds.path) == Path(pooch.os_cache("p2g_dask"))
    issue = {  # the files and hashes named in the issue
        "10x-Multiome-Pbmc10k-ATAC.h5ad": "sha256:24d030fb7f90453a0303b71a1e3e4e7551857d1e70072752d7fff9c918f77217",
        "10x-Multiome-Pbmc10k-RNA.h5ad": "sha256:a25327acff48b20b295c12221a84fd00f8f3f486ff3e7bd090fdef241b996a22",
        "pbmc_10k_atac.tsv.gz": "md5:a959ef83dfb9cae6ff73ab0147d547d1",
        "gencode_v41_GRCh38.gff3.gz": "sha256:b82a655bdb736ca0e463a8f5d00242bedf10fa88ce9d651a017f135c7c4e9285",
    }
    for name, known in issue.items():
        assert ds.registry[name] == known
    assert ds.get_url("gencode_v41_GRCh38.gff3.gz").endswith("release_41/gencode.v41.basic.annotation.gff3.gz")
    assert ds.get_url("pbmc_10k_atac.tsv.gz").endswith("pbmc_granulocyte_sorted_10k_atac_fragments.tsv.gz")
    assert all(ds.get_url(n).startswith("https://") for n in ds.registry)
    monkeypatch.setenv(reg.DATA_DIR_ENV, str(tmp_path / "shared-cache"))
    assert Path(p2g.datasets.register_datasets().path) == tmp_path / "shared-cache"


def test_pbmc10k_multiome__loopback(server, tmp_path):
    root, url, _ = server
    sim = p2g.datasets.simulate_multiome(n_cells=30, n_peaks=200, n_genes=20, n_linked_genes=4, seed=1)
    sim.atac.write_h5ad(root / "atac.h5ad")
    sim.rna.write_h5ad(root / "rna.h5ad")
    with gzip.open(root / "frag.tsv.gz", "wt") as fh:
        fh.write("chr1\t10\t60\tAAAC-1\t1\n")
    (root / "frag.tsv.gz.tbi").write_bytes(b"TBI\x01")
    files = {"ATAC": "atac.h5ad", "RNA": "rna.h5ad", "fragments": "frag.tsv.gz"}
    names = {**reg.PBMC10K_FILES, "tbi": reg.PBMC10K_FILES["fragments"] + ".tbi"}
    files["tbi"] = "frag.tsv.gz.tbi"
    pup = reg.make_registry({names[k]: f"sha256:{_sha256(root / f)}" for k, f in files.items()},
                            urls={names[k]: f"{url}/{f}" for k, f in files.items()}, path=tmp_path / "cache")
    atac = p2g.datasets.pbmc10k_multiome("ATAC", datasets=pup)
    rna = p2g.datasets.pbmc10k_multiome("rna", datasets=pup)
    assert isinstance(atac, ad.AnnData) and atac.shape == sim.atac.shape
    assert (atac.X != sim.atac.X).nnz == 0 and list(rna.var_names) == list(sim.rna.var_names)
    frag = p2g.datasets.pbmc10k_multiome("fragments", datasets=pup)
    assert frag.name == "pbmc_10k_atac.tsv.gz" and (frag.parent / "pbmc_10k_atac.tsv.gz.tbi").exists()
    assert pd.read_csv(frag, sep="\t", header=None).iloc[0, 3] == "AAAC-1"
    with pytest.raises(ValueError, match=r"modality='GEX' is not available; use one of \['ATAC', 'RNA', 'fragments'\]"):
        p2g.datasets.pbmc10k_multiome("GEX", datasets=pup)


def test_genome__annotation_uses_registry_cache(tmp_path, monkeypatch, caplog):
    # mm10's GFF3 has no pinned hash, so a file already in the cache is used as is (no network).
    monkeypatch.setenv(reg.DATA_DIR_ENV, str(tmp_path))
    gff = ("##gff-version 3\n"
           "chr19\tHAVANA\tgene\t3102\t3205\t.\t+\t.\tID=ENSMUSG1.1;gene_id=ENSMUSG1.1;gene_type=snRNA;gene_name=Gm1\n"
           "chrUn\tHAVANA\tgene\t10\t20\t.\t-\t.\tID=ENSMUSG2.1;gene_id=ENSMUSG2.1;gene_type=snRNA;gene_name=Gm2\n")
    with gzip.open(tmp_path / "gencode_vM25_GRCm38.gff3.gz", "wt") as fh:
        fh.write(gff)
    assert p2g.genome.mm10.annotation == tmp_path / "gencode_vM25_GRCm38.gff3.gz"
    genes, exons = p2g.genome.mm10.gene_annotation()
    assert genes[["gene_name", "chrom", "start", "end"]].values.tolist() == [["Gm1", "chr19", 3101, 3205]]
    assert exons.empty
    # Passing the genome itself to the reader goes through the same path.
    assert p2g.io.read_gene_annotation(p2g.genome.mm10)[0]["gene_name"].tolist() == ["Gm1", "Gm2"]
