"""benchmarks/_epione.py: epione's files are loaded alone, with a stub ``console``, and run.

The benchmarks compare with epione's own code by loading one file of a checkout at run time
(its package import pulls Cython extensions and dozens of dependencies). A fake checkout with
the same relative import proves the loader resolves it, the stub logs, and the function runs.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

FAKE_PEAK_TO_GENE = '''
from ..utils import console


def peak_to_gene(values, *, scale=2):
    console.info("[peak_to_gene]", len(values), "values")
    console.warn("[peak_to_gene] a warning")
    return [v * scale for v in values]
'''


@pytest.fixture
def helpers():
    spec = importlib.util.spec_from_file_location("p2g_test_epione_helpers", BENCHMARKS / "_epione.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for name in [n for n in sys.modules if n == "epione" or n.startswith("epione.")]:
        del sys.modules[name]


@pytest.fixture
def fake_checkout(tmp_path):
    (tmp_path / "epione" / "tl").mkdir(parents=True)
    (tmp_path / "epione" / "tl" / "_peak_to_gene.py").write_text(FAKE_PEAK_TO_GENE)
    (tmp_path / "epione" / "tl" / "_iterative_lsi.py").write_text("def iterative_lsi(adata):\n    return adata\n")
    return tmp_path


def test_load_epione__relative_console_import_resolves_to_a_logging_stub(helpers, fake_checkout, caplog):
    with caplog.at_level(logging.INFO, logger="epione"):
        module = helpers.load_epione(fake_checkout, "peak_to_gene")
        result = module.peak_to_gene([1, 2, 3], scale=3)
    assert result == [3, 6, 9]
    assert module.__name__ == "epione.tl._peak_to_gene"
    assert Path(module.__file__) == fake_checkout / "epione" / "tl" / "_peak_to_gene.py"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "[peak_to_gene] 3 values"), (logging.WARNING, "[peak_to_gene] a warning")]


def test_checkout__names_the_missing_file_and_commit_says_unknown_outside_git(helpers, fake_checkout):
    assert helpers.checkout(fake_checkout) == fake_checkout.resolve()
    assert helpers.commit(fake_checkout).startswith("unknown")
    (fake_checkout / "epione" / "tl" / "_iterative_lsi.py").unlink()
    with pytest.raises(SystemExit, match="_iterative_lsi.py not found"):
        helpers.checkout(fake_checkout)
    with pytest.raises(SystemExit, match="pass --epione DIR"):
        helpers.checkout(None)
