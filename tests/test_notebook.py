"""The tutorial notebook: it runs top to bottom, and it is what its generator script writes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "peak_to_gene_tutorial.ipynb"
GENERATOR = ROOT / "notebooks" / "make_tutorial.py"


def load_generator():
    # Loaded from its path under a unique name: there is no `notebooks` package to import from.
    spec = importlib.util.spec_from_file_location("p2g_make_tutorial", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_outputs(nb) -> str:
    """All text the code cells printed or returned, joined."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def test_notebook__matches_its_generator():
    saved = nbformat.read(NOTEBOOK, as_version=4)
    built = load_generator().build()
    assert [(c.cell_type, c.source) for c in saved.cells] == [(c.cell_type, c.source) for c in built.cells], (
        "notebooks/peak_to_gene_tutorial.ipynb is out of date: run `python notebooks/make_tutorial.py`"
    )
    # The saved notebook was executed: every code cell ran, in order, and the figures are in it.
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        "the saved notebook was not executed top to bottom: run `python notebooks/make_tutorial.py`"
    )
    assert not any(out.get("output_type") == "error" for c in code for out in c.outputs)
    n_figures = sum("image/png" in out.get("data", {}) for c in code for out in c.outputs)
    assert n_figures >= 5
    text = code_outputs(saved)
    assert "Dask dashboard: http" in text and "MuData links identical" in text


def test_notebook__mentions_filter_links_and_mudata():
    sources = "\n".join(c.source for c in load_generator().build().cells if c.cell_type == "code")
    for call in ("p2g.tl.filter_links(links)", "p2g.tl.links_per_gene(", "md.MuData(", "p2g.tl.peak_to_gene(mdata",
                 "p2g.datasets.register_datasets()", "p2g.datasets.pbmc10k_multiome(", "p2g.genome.hg38",
                 "RUN_REAL_DATA = False"):
        assert call in sources, call


@pytest.mark.slow
def test_notebook__executes_without_errors(tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # run from scratch: no stale outputs can hide a failure
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    env_backend = os.environ.get("MPLBACKEND")
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    assert not any(out.get("output_type") == "error" for c in nb.cells for out in c.get("outputs", []))
    text = code_outputs(nb)
    assert "Dask dashboard: http" in text
    assert "MuData links identical to the store's" in text
    assert "RUN_REAL_DATA is False" in text
    # It wrote into the temporary working folder, not into the repository.
    assert (tmp_path / "p2g_tutorial_out" / "links.parquet").is_file()
    assert not (ROOT / "notebooks" / "p2g_tutorial_out").exists()
    # The figures are rendered inline even when the environment asks for Agg (as .ci/run does).
    n_figures = sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))
    assert n_figures >= 5, f"only {n_figures} figures (MPLBACKEND={env_backend!r})"
