"""The docstring examples of every module run and pass (what ``pytest --doctest-modules p2g_dask``
runs), and this test fails if examples stop being found or are skipped without a reason."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re

import matplotlib
import pytest

import p2g_dask

matplotlib.use("Agg")

FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
MODULES = sorted(["p2g_dask"] + [m.name for m in pkgutil.walk_packages(p2g_dask.__path__, prefix="p2g_dask.")])


def _doctests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    # The finder keeps only objects defined in this module, so re-exports are not run twice.
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    return [t for t in tests if t.examples]


def _skipped(example: doctest.Example) -> bool:
    return bool(example.options.get(doctest.SKIP))


ALL = {name: _doctests(name) for name in MODULES}


def test_doctests__examples_found_across_the_package():
    examples = [e for tests in ALL.values() for t in tests for e in t.examples]
    modules_with_examples = [name for name, tests in ALL.items() if tests]
    # Numbers at the time of writing: ~290 examples in ~55 modules; a finder that silently finds
    # nothing (or a package that loses its examples) fails here.
    assert len(examples) > 200, len(examples)
    assert len(modules_with_examples) > 40, modules_with_examples
    for name in ("p2g_dask.tl.links.filters", "p2g_dask.pl.summary", "p2g_dask.io.annotation", "p2g_dask._variables",
                 "p2g_dask._tables"):
        assert ALL[name], f"{name} has no examples"


def _reason_above(lines: list[str], lineno: int) -> bool:
    """Is there a ``>>> # ...`` comment line above the run of skipped examples that ends here?"""
    i = lineno - 1
    while i >= 0 and ("doctest: +SKIP" in lines[i] or lines[i].strip().startswith("...")):
        i -= 1
    return i >= 0 and lines[i].strip().startswith(">>> #")


def test_doctests__skips_say_why():
    """A skipped example carries a comment or follows a comment line saying why it is not run."""
    unexplained = []
    for tests in ALL.values():
        for test in tests:
            lines = test.docstring.splitlines() if test.docstring else []
            for example in test.examples:
                if not _skipped(example):
                    continue
                code = re.sub(r"#\s*doctest:.*$", "", example.source, flags=re.MULTILINE)
                if "#" not in code and not _reason_above(lines, example.lineno):
                    unexplained.append(f"{test.name}: {example.source.strip()}")
    assert not unexplained, unexplained


@pytest.mark.parametrize("name", [name for name, tests in ALL.items() if tests])
def test_doctests__module_examples_pass(name):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    expected = 0
    for test in ALL[name]:
        runner.run(test, out=report.append)
        expected += sum(not _skipped(e) for e in test.examples)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
    assert result.attempted == expected > 0 or expected == 0
