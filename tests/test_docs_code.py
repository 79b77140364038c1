"""The code of README.md and docs/*.md runs as written, without a warning.

Every ```python block of a file runs in order in one namespace (a later block sees the names of
the earlier ones, as a reader running them in order would), in a fresh working folder holding
simulated inputs under the file names the text uses (tests/_docs_inputs.py: atac.h5ad, rna.h5ad,
pbmc.h5mu, atac_fragments.tsv.gz, hg38.chrom.sizes, hg38_genes.tsv.gz, genes.gff3, samples.tsv,
s1.tsv.gz, peaks.bed, ...). The docs after the README continue its *Use* session: their namespace
starts from ``SESSION`` below (``atac``, ``rna``, ``mdata``, ``store`` = pbmc.zarr with its LSI
embedding, ``genes``, ``exons``, ``links``, ``fragments``, ``client``), as README.md says.

Nothing is downloaded: the dataset registry's ``fetch`` returns simulated files of the same format
(``_docs_inputs.REGISTRY_FILES``: the PBMC 10k h5ad files -> atac.h5ad / rna.h5ad, its fragments ->
atac_fragments.tsv.gz, the 10x h5 -> a Cell Ranger ARC layout h5, the GENCODE GFF3s ->
a GENCODE-layout GFF3 of the simulated genes), so ``p2g.genome.hg38.annotation`` runs too.

A block that cannot run here is skipped by a marker on the line before it, naming the reason:
``<!-- test: skip REASON -->``. Any warning while a block runs (Python warnings of any library,
and WARNING records of the ``p2g_dask`` logger) fails the test.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from _docs_inputs import docs_inputs, serve_registry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SKIP_MARKER = re.compile(r"^<!--\s*test:\s*skip\s+(?P<reason>.+?)\s*-->$")

#: The README's *Use* session, which the docs continue (run in the file's working folder).
SESSION = """\
import anndata as ad
import mudata as md
import p2g_dask as p2g

atac, rna = ad.read_h5ad("atac.h5ad"), ad.read_h5ad("rna.h5ad")
with md.set_options(pull_on_update=False):
    mdata = md.read_h5mu("pbmc.h5mu")
store = p2g.io.open_store("pbmc.zarr")                        # ingested, with its iterative LSI
atac.obsm["X_iterative_lsi"] = store.atac.obsm["X_iterative_lsi"]   # the same cells' embedding
genes, exons = p2g.io.read_gene_annotation(p2g.genome.hg38)
links = p2g.io.read_links("links.parquet")                    # peak_to_gene(store.path, ...) of the README
fragments = {"pbmc": "atac_fragments.tsv.gz"}
"""


@dataclass(frozen=True)
class Block:
    """One ```python block: its file, the line of its opening fence, its code, a skip reason."""

    doc: str
    line: int
    source: str
    skip: str | None


def doc_blocks(doc: str, root: Path = ROOT) -> list[Block]:
    """The ```python blocks of ``doc`` (a path relative to ``root``), in order."""
    lines = (root / doc).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        previous = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        marker = SKIP_MARKER.match(previous)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        # A block inside a list item is indented like the item's text.
        source = textwrap.dedent("\n".join(lines[i + 1:end]) + "\n")
        blocks.append(Block(doc, i + 1, source, marker["reason"] if marker else None))
        i = end + 1
    return blocks


def run_block(block: Block, namespace: dict) -> None:
    """Execute ``block`` in ``namespace``; tracebacks show the doc's path, line and text."""
    # Padded so that line numbers are the doc's own: a traceback shows the doc's line.
    code = compile("\n" * block.line + block.source, str(ROOT / block.doc), "exec")
    exec(code, namespace)  # noqa: S102 - the point of the test


@pytest.fixture(scope="session")
def docs_context(tmp_path_factory):
    """The simulated inputs, and the README session's store and links (built once)."""
    inputs = docs_inputs(tmp_path_factory)
    context = tmp_path_factory.mktemp("docs-context")
    with pytest.MonkeyPatch.context() as mp:
        serve_registry(mp, inputs)
        import p2g_dask as p2g

        store = p2g.io.ingest(inputs / "atac.h5ad", inputs / "rna.h5ad", context / "pbmc.zarr")
        p2g.tl.iterative_lsi(store.path, n_components=30, iterations=2, var_features=25_000, seed=1,
                             show_progress=False)
        genes, _ = p2g.io.read_gene_annotation(p2g.genome.hg38)
        links = p2g.tl.peak_to_gene(store.path, gene_annotation=genes, use_rep="X_iterative_lsi", n_metacells=500,
                                    k_neighbors=100, max_distance=250_000, seed=1, show_progress=False)
        p2g.io.write_links(links, context / "links.parquet")
    return inputs, context


@pytest.fixture(scope="module")
def docs_client():
    """The session's ``client``: a real in-process LocalCluster (2 single-threaded workers)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


def working_folder(folder: Path, docs_context, *, session: bool) -> Path:
    """``folder`` with the inputs linked in, and (for a doc continuing the README) the session's store."""
    inputs, context = docs_context
    for path in inputs.iterdir():
        (folder / path.name).symlink_to(path)
    if session:
        shutil.copytree(context / "pbmc.zarr", folder / "pbmc.zarr")
        shutil.copyfile(context / "links.parquet", folder / "links.parquet")
    return folder


def run_doc(doc: str, folder: Path, client, caplog) -> list[Block]:
    """Run ``doc``'s blocks in ``folder``; fail on any warning. Returns the skipped blocks."""
    import matplotlib.pyplot as plt

    import mudata

    namespace: dict = {"__name__": "__doc__"}
    skipped = []
    cwd = os.getcwd()
    os.chdir(folder)
    # A doc may set mudata's options (docs/links.md does, as a reader should): not for later tests.
    mudata_options = dict(mudata._core.config.OPTIONS)
    try:
        if doc != "README.md":
            exec(compile(SESSION, "SESSION", "exec"), namespace)  # noqa: S102
            namespace["client"] = client
        for block in doc_blocks(doc):
            if block.skip:
                skipped.append(block)
                continue
            caplog.clear()
            with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="p2g_dask"):
                warnings.simplefilter("always")
                run_block(block, namespace)
            shown = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
            shown += [f"p2g_dask log {r.levelname}: {r.getMessage()}" for r in caplog.records
                      if r.name.startswith("p2g_dask") and r.levelno >= logging.WARNING]
            assert not shown, f"{block.doc}:{block.line} warned:\n" + "\n".join(shown)
    finally:
        os.chdir(cwd)
        plt.close("all")
        mudata._core.config.OPTIONS.update(mudata_options)
    return skipped


# No file's blocks take 20 s (README.md ~10 s, the shared inputs ~8 s, all ~50 s on 2 cores), so
# none is marked slow.
@pytest.mark.parametrize("doc", [d for d in DOC_FILES if doc_blocks(d)])
def test_docs_code__runs_without_warnings(doc, docs_context, docs_client, tmp_path, monkeypatch, caplog):
    inputs, _ = docs_context
    serve_registry(monkeypatch, inputs)
    folder = working_folder(tmp_path, docs_context, session=doc != "README.md")
    skipped = run_doc(doc, folder, docs_client, caplog)
    assert all(b.skip.strip() for b in skipped)


#: The blocks that do not run here, and why: keep this short (adding one is a decision).
KNOWN_SKIPS = {
    ("docs/cluster.md", "needs a SLURM controller and a running scheduler at 127.0.0.1:8786"),
    ("docs/cluster.md", "needs a network interface with the address 10.1.2.3 (TLS beyond loopback)"),
}


def test_docs_code__every_block_runs_but_the_known_skips():
    blocks = [b for doc in DOC_FILES for b in doc_blocks(doc)]
    assert {(b.doc, b.skip) for b in blocks if b.skip} == KNOWN_SKIPS
    assert len(blocks) - len(KNOWN_SKIPS) >= 25     # 25 blocks in 13 files run at the time of writing
    assert {b.doc for b in blocks} >= {"README.md", "docs/links.md", "docs/plots.md", "docs/real_data.md"}


def test_docs_code__skip_markers_stand_before_python_blocks():
    """A skip marker must sit right before a ```python block (a stray one would hide nothing)."""
    for doc in DOC_FILES:
        lines = (ROOT / doc).read_text().splitlines()
        for i, line in enumerate(lines):
            if SKIP_MARKER.match(line.strip()):
                following = next((ln.strip() for ln in lines[i + 1:] if ln.strip()), "")
                assert following == "```python", f"{doc}:{i + 1}: a skip marker not followed by a python block"


def test_doc_blocks__reads_fences_and_markers(tmp_path):
    text = "x\n```python\na = 1\n```\n<!-- test: skip needs SLURM -->\n\n```python\nb = 2\n```\n```bash\nls\n```\n"
    (tmp_path / "d.md").write_text(text)
    blocks = doc_blocks("d.md", root=tmp_path)
    assert [(b.line, b.source, b.skip) for b in blocks] == [(2, "a = 1\n", None), (7, "b = 2\n", "needs SLURM")]


def test_plot_link_calibration__links_per_group_without_group():
    """Found by the README's code: null p-values per group drawn together (no ``group=``) failed
    on the per-group permutation record; all groups share the call's ``permute`` and N."""
    import numpy as np
    import pandas as pd

    import p2g_dask as p2g

    rng = np.random.default_rng(0)
    links = pd.DataFrame({"group": np.repeat(["B", "T"], 200), "pval": rng.uniform(size=400),
                          "perm_pval": rng.uniform(size=400)})
    links["fdr"] = links["perm_fdr"] = 1.0
    links.attrs["permutation"] = {g: {"permute": "cells", "n_permutations": 10} for g in ("B", "T")}
    _, axes = p2g.pl.plot_link_calibration(links)
    labels = {line.get_gid(): line.get_label() for line in axes[0].lines if line.get_gid()}
    assert labels["qq:perm_pval"].endswith("(cells, N=10)")
    assert len(axes[0].lines[0].get_xdata()) == 400   # every group's rows


def test_tutorial_notebook__ran_without_warnings():
    """The saved tutorial (tests/test_notebook.py: it is what notebooks/make_tutorial.py writes and
    executes) shows no warning: no Python warning and no WARNING record of the package."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "notebooks" / "peak_to_gene_tutorial.ipynb", as_version=4)
    shown = [f"cell {i}: {out['text'].strip()[:300]}" for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             for out in cell.get("outputs", []) if out.get("output_type") == "stream"
             and re.search(r"Warning\b|\bWARNING\b", out["text"])]
    assert not shown, "\n".join(shown)
