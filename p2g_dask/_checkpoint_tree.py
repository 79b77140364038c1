"""The "tree" entry of a checkpoint: nested tuples/lists/dicts of arrays, DataFrames and scalars.

A folder holding ``tree.json`` (the structure), ``arrays.npz`` and ``frame-<i>.parquet``. Nothing
is pickled: arrays load with ``allow_pickle=False`` and only p2g_dask's own namedtuple types are
rebuilt by name.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Version of the tree layout, stored in tree.json.
TREE_FORMAT_VERSION = 1



def plain_array(array: np.ndarray) -> np.ndarray:
    """``array`` in a form ``np.savez`` writes without pickle (string object arrays become unicode).

    Examples
    --------
    >>> plain_array(np.array(["a", "bc"], dtype=object)).dtype
    dtype('<U2')
    """
    if array.dtype == object:
        if all(isinstance(v, str) for v in array.ravel()):
            return array.astype(str)  # strings save without pickle as a unicode array
        raise TypeError("checkpoint: object arrays other than strings cannot be saved without pickle.")
    return array


def write_tree(folder: Path, value: Any) -> None:
    """Write ``value`` (tuples, lists, str-keyed dicts, namedtuples of arrays, DataFrames, scalars) to a new ``folder``.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "entry"
    >>> write_tree(folder, {"sums": np.ones(2), "chrom": "chr1", "pair": (1, None)})
    >>> read_tree(folder)["pair"]
    (1, None)
    """
    folder.mkdir()
    arrays: dict[str, np.ndarray] = {}
    frames: list[pd.DataFrame] = []

    def encode(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            name = f"a{len(arrays)}"
            arrays[name] = plain_array(v)
            return {"array": name}
        if isinstance(v, pd.DataFrame):
            frames.append(v)
            return {"frame": len(frames) - 1}
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            cls = type(v)
            return {"namedtuple": f"{cls.__module__}:{cls.__qualname__}", "items": [encode(x) for x in v]}
        if isinstance(v, tuple):
            return {"tuple": [encode(x) for x in v]}
        if isinstance(v, list):
            return {"list": [encode(x) for x in v]}
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise TypeError("checkpoint: only dicts with string keys can be saved.")
            return {"dict": {k: encode(x) for k, x in v.items()}}
        if isinstance(v, np.generic):
            v = v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            return {"value": v}
        raise TypeError(f"checkpoint: cannot save a {type(v).__name__} (arrays, DataFrames, scalars and "
                        "tuples/lists/dicts of them only).")

    structure = encode(value)
    with open(folder / "arrays.npz", "wb") as handle:
        np.savez(handle, **arrays)
    for i, frame in enumerate(frames):
        frame.to_parquet(folder / f"frame-{i}.parquet", index=True)
    (folder / "tree.json").write_text(json.dumps({"format": TREE_FORMAT_VERSION, "value": structure}))


def _namedtuple_class(name: str):
    module, _, qualname = name.partition(":")
    # Only p2g_dask's own result types are rebuilt: a checkpoint never names code to import.
    if module.split(".")[0] != "p2g_dask":
        raise ValueError(f"checkpoint names the type {name!r}, which is not a p2g_dask type.")
    obj = importlib.import_module(module)
    for attr in qualname.split("."):
        obj = getattr(obj, attr)
    if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")):
        raise ValueError(f"checkpoint type {name!r} is not a namedtuple.")
    return obj


def read_tree(folder: Path) -> Any:
    """Read a folder written by :func:`write_tree` (tuples stay tuples, namedtuples their type)."""
    spec = json.loads((folder / "tree.json").read_text())
    if spec.get("format") != TREE_FORMAT_VERSION:
        raise ValueError(f"tree format {spec.get('format')} != {TREE_FORMAT_VERSION}")
    with np.load(folder / "arrays.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}

    def decode(node: dict) -> Any:
        (tag, content), *rest = node.items()
        if tag == "array":
            return arrays[content]
        if tag == "frame":
            return pd.read_parquet(folder / f"frame-{content}.parquet")
        if tag == "namedtuple":
            return _namedtuple_class(content)(*[decode(x) for x in node["items"]])
        if tag == "tuple":
            return tuple(decode(x) for x in content)
        if tag == "list":
            return [decode(x) for x in content]
        if tag == "dict":
            return {k: decode(x) for k, x in content.items()}
        if tag == "value":
            return content
        raise ValueError(f"unknown tree node {tag!r}")

    return decode(spec["value"])
