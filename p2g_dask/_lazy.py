"""Lazy attribute export for the namespaces, so each stage's module is imported on first use, and
lazy stand-ins for heavy dependencies that only some code paths need."""

from __future__ import annotations

import importlib
import sys
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]):
    """Return ``(__getattr__, __dir__)`` resolving ``name -> f"{package}.{module}".name``."""

    def __getattr__(name: str):
        if name in exports:
            module = importlib.import_module(f"{package}.{exports[name]}")
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__


class LazyModule:
    """A stand-in for the module ``name``, imported at the first attribute access.

    Dask workers import the tool modules but run only their numeric tasks: reading
    AnnData/HDF5 files is the client's job, so ``anndata`` and ``h5py`` (~30 MiB per process)
    are imported where they are first used, not when a worker imports the package.

    Examples
    --------
    >>> json = LazyModule("json")
    >>> json.dumps([1])
    '[1]'
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def imported_instance(obj: Any, module: str, name: str) -> bool:
    """True when ``obj`` is a ``module.name`` instance, without importing ``module``.

    An object of that class can only exist once its module is imported; callers that merely
    check a type (a MuData, an AnnData, a dask array) then skip an import of 0.3-0.8 s.

    Examples
    --------
    >>> imported_instance(3, "fractions", "Fraction") or imported_instance([], "builtins", "list")
    True
    """
    found = sys.modules.get(module)
    return found is not None and isinstance(obj, getattr(found, name))
