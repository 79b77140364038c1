"""Versions of p2g_dask, Python and the libraries that shape results (run records and reports)."""

from __future__ import annotations

import platform
from importlib import metadata

VERSIONED = ("p2g_dask", "dask", "distributed", "dask-jobqueue", "zarr", "anndata", "mudata", "numpy", "scipy",
             "pandas", "scikit-learn", "pybigtools", "pyarrow", "numba", "matplotlib")


def versions() -> dict[str, str]:
    """Versions of p2g_dask, Python and the libraries that shape results.

    Examples
    --------
    >>> import p2g_dask
    >>> found = versions()
    >>> found["p2g_dask"] == p2g_dask.__version__, "python" in found
    (True, True)
    """
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
