"""Links tables on disk: parquet that keeps parameters and metacells, plus genome-browser formats."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from p2g_dask._atomic import atomic_path
from p2g_dask._errors import check_input_file, reading

_META_KEY = b"p2g_dask"
FORMATS = ("parquet", "bedpe", "interact", "longrange", "10x")


class MetacellMembership(list):
    """An immutable ``(n_metacells, k)`` table of cell indices, kept in ``links.attrs``.

    pandas deep-copies and compares ``attrs`` on many operations; a plain numpy array there
    breaks ``pd.concat`` and a list of lists is slow to copy. This wrapper copies in O(1),
    compares by value and converts with ``numpy.asarray(membership)``. It is a list of the rows
    for JSON alone: ``links.to_parquet`` (pandas) writes ``attrs`` with ``json.dumps``, which
    writes a list's items and refuses other objects (pandas then drops all ``attrs`` with a
    ``UserWarning``).

    Examples
    --------
    >>> import json, numpy as np
    >>> m = MetacellMembership(np.array([[0, 1], [2, 3]]))
    >>> np.asarray(m).tolist(), m.shape, json.dumps({"metacells": m})
    ([[0, 1], [2, 3]], (2, 2), '{"metacells": [[0, 1], [2, 3]]}')
    """

    __slots__ = ("_buffer", "shape")

    def __init__(self, neighbours) -> None:
        array = np.ascontiguousarray(np.asarray(neighbours), dtype=np.int64)
        if array.ndim != 2:
            raise ValueError(f"metacells must be a 2-D (n_metacells, k) array; got shape {array.shape}.")
        super().__init__(array.tolist())
        self._buffer = array.tobytes()
        self.shape = tuple(int(s) for s in array.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = np.frombuffer(self._buffer, dtype=np.int64).reshape(self.shape)
        return array.astype(dtype) if dtype is not None else array

    def __eq__(self, other) -> bool:
        return isinstance(other, MetacellMembership) and self.shape == other.shape and self._buffer == other._buffer

    def __hash__(self) -> int:
        return hash((self.shape, self._buffer))

    def __deepcopy__(self, memo) -> "MetacellMembership":
        return self

    def __copy__(self) -> "MetacellMembership":
        return self

    def __ne__(self, other) -> bool:
        return not self == other

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item):
        return np.asarray(self)[item]

    def _immutable(self, *args, **kwargs):
        raise TypeError("a MetacellMembership is immutable; make a new one from numpy.asarray(membership).")

    append = extend = insert = pop = remove = clear = sort = reverse = _immutable
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _immutable

    def tolist(self) -> list:
        return np.asarray(self).tolist()

    def __reduce__(self):
        return (MetacellMembership, (np.asarray(self),))

    def __repr__(self) -> str:
        return f"MetacellMembership({self.shape[0]} metacells x {self.shape[1]} cells)"


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):  # before list: a membership is one
        return {"__ndarray__": np.asarray(value).tolist()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            array = np.asarray(value["__ndarray__"])
            if key == "metacells":
                return MetacellMembership(array.astype(np.int64))
            return array
        if key == "metacells":  # links per group: a dict group -> membership
            return {k: _from_json(v, "metacells") for k, v in value.items()}
        return {k: _from_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def write_links(
    links: pd.DataFrame, path: str | os.PathLike, *, format: str = "parquet", overwrite: bool = False, **options: Any
) -> Path:
    """Write a links table; parquet keeps ``links.attrs`` (parameters, metacells, timings).

    Parameters
    ----------
    links
        Output of :func:`p2g_dask.tl.links.peak_to_gene` (or a filtered subset).
    path
        Output file.
    format
        ``'parquet'`` (lossless), ``'bedpe'``, ``'interact'`` (UCSC), ``'longrange'`` (WashU) or
        ``'10x'`` (Cell Ranger ARC's feature_linkage.bedpe, read by MultiVelo).
    overwrite
        Replace an existing file.
    options
        Passed to the browser-format writer (e.g. ``header=False`` for bedpe, ``track_line=False``
        for interact); filter the table first (:func:`p2g_dask.tl.filter_links`).

    Returns
    -------
    pathlib.Path
        The written path.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> links = pd.DataFrame({"peak": ["chr1:1-5"], "gene": ["A"], "correlation": [0.5]})
    >>> links.attrs["params"] = {"seed": 1}
    >>> out = write_links(links, tempfile.mkdtemp() + "/links.parquet")
    >>> read_links(out).attrs["params"]
    {'seed': 1}
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not supported; use one of {FORMATS}.")
    path = Path(path)
    if format != "parquet":
        from p2g_dask.io import links_formats

        writer = getattr(links_formats, f"write_links_{format}")
        with atomic_path(path, overwrite=overwrite, argument="path") as tmp:
            writer(links, tmp, **options)
        return path
    plain = links.copy(deep=False)
    plain.attrs = {}
    table = pa.Table.from_pandas(plain, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[_META_KEY] = json.dumps(_to_json(dict(links.attrs))).encode()
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path, overwrite=overwrite, argument="path") as tmp:
        pq.write_table(table, tmp)
    return path


def read_links(path: str | os.PathLike, *, argument: str = "links") -> pd.DataFrame:
    """Read a parquet links table written by :func:`write_links`, with its ``attrs``.

    ``argument`` names the file in errors (:class:`p2g_dask.InputFileError` for a missing,
    empty, cut or wrong-format file).

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> out = write_links(pd.DataFrame({"gene": ["A"]}), tempfile.mkdtemp() + "/l.parquet")
    >>> read_links(out)["gene"].tolist()
    ['A']
    """
    # Head and footer checked first: a cut or mixed-up file is an InputFileError naming the path.
    check_input_file(path, argument=argument, kind="parquet")
    with reading(path, argument=argument, kind="parquet"):
        table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    links = table.to_pandas()
    if _META_KEY in metadata:
        links.attrs = _from_json(json.loads(metadata[_META_KEY]))
    return links
