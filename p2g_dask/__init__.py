"""p2g_dask: ArchR-compatible peak-to-gene links for single-cell multiome data, on Dask.

Namespaces follow scanpy: ``p2g.io`` (store, links, annotation, fragments), ``p2g.tl``
(metacells, peak_to_gene, iterative_lsi, pseudobulk), ``p2g.pl`` (browser tracks, summaries),
``p2g.datasets`` (simulator, registry), ``p2g.genome`` and ``p2g.cluster``.
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"
#: Version of the on-disk store layout; a store with another major version is refused.
STORE_FORMAT_VERSION = 1

logging.getLogger("p2g_dask").addHandler(logging.NullHandler())

from p2g_dask._errors import InputFileError  # noqa: E402 - the error type of damaged input files
from p2g_dask import _exit  # noqa: E402,F401 - exits without the last full collection (see _exit.py)

_SUBMODULES = {"io", "tl", "pl", "datasets", "genome", "cluster", "cli"}


def __getattr__(name: str):
    # Lazy submodules keep `import p2g_dask` fast and avoid importing matplotlib for the CLI.
    if name in _SUBMODULES:
        return importlib.import_module(f"p2g_dask.{name}")
    raise AttributeError(f"module 'p2g_dask' has no attribute {name!r}")


__all__ = ["__version__", "STORE_FORMAT_VERSION", "InputFileError", *sorted(_SUBMODULES)]
