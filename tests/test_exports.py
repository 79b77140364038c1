"""Every public name the package promises in an ``__all__`` exists, and ``import *`` works."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import p2g_dask


def _modules() -> list[str]:
    names = ["p2g_dask"]
    for info in pkgutil.walk_packages(p2g_dask.__path__, prefix="p2g_dask."):
        names.append(info.name)
    return sorted(names)


MODULES = _modules()


def test_modules__walk_finds_every_namespace():
    # The walk must see the namespaces and their modules, or the test below checks nothing.
    assert {"p2g_dask.io", "p2g_dask.tl", "p2g_dask.pl", "p2g_dask.datasets", "p2g_dask.tl.links.filters"} <= set(MODULES)
    assert len(MODULES) > 40


@pytest.mark.parametrize("name", MODULES)
def test_all__every_name_resolves(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats names"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ lists {missing}, which {name} does not define"
    namespace: dict = {}
    exec(f"from {name} import *", namespace)  # noqa: S102 - the star import users would write
    assert set(exported) <= set(namespace)


def test_all__namespaces_export_something():
    for name in ("p2g_dask", "p2g_dask.io", "p2g_dask.tl", "p2g_dask.pl", "p2g_dask.datasets"):
        assert importlib.import_module(name).__all__, name


def test_tl__aggregate_metacells_is_not_promised():
    import p2g_dask.tl as tl

    assert "aggregate_metacells" not in tl.__all__
    with pytest.raises(AttributeError, match="aggregate_metacells"):
        tl.aggregate_metacells  # noqa: B018
