"""The suite's warning filters (pyproject.toml): FutureWarning and DeprecationWarning attributed to
p2g_dask modules are errors; the same warning attributed to another library is not."""

from __future__ import annotations

import warnings

import pytest


def _warner(module: str):
    namespace = {"__name__": module, "warnings": warnings}
    exec("def warn(category):\n    warnings.warn('old behaviour', category, stacklevel=1)", namespace)  # noqa: S102
    return namespace["warn"]


@pytest.mark.parametrize("category", [FutureWarning, DeprecationWarning])
def test_filterwarnings__p2g_dask_warnings_are_errors(category):
    with pytest.raises(category, match="old behaviour"):
        _warner("p2g_dask.tl.example")(category)


def test_filterwarnings__other_libraries_warnings_stay_warnings():
    # record=True keeps the active (pyproject) filters; only the display is replaced.
    with warnings.catch_warnings(record=True) as caught:
        _warner("somelibrary.module")(FutureWarning)
    assert [w.category for w in caught] == [FutureWarning]
