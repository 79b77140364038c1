"""obs / var tables and obsm arrays of a store, read without importing anndata when plain.

A store's modality is an AnnData Zarr group, and anndata's ``read_elem`` reads any table in it.
But importing anndata costs ~0.8 s in a process that has not (it imports dask.array and
xarray), paid inside the first call of every tool run on a store by a client that only imported
pandas. The tables p2g writes hold an index and columns that are numeric arrays, string arrays
or categoricals; those are read here with zarr alone, into what ``read_elem`` gives (object
strings, pandas categoricals), as are dense numeric arrays (``obsm`` embeddings). Anything else
(sparse ``obsm``, nullable integers, nested frames, a newer encoding) goes to anndata.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import zarr

from p2g_dask._lazy import LazyModule

ad = LazyModule("anndata")

#: The anndata encoding version of the columns read here.
ENCODING_VERSION = "0.2.0"


def read_frame(group: Any) -> pd.DataFrame:
    """The anndata-encoded dataframe ``group`` (``obs`` or ``var`` of a store's modality).

    Parameters
    ----------
    group
        A ``zarr.Group`` written by anndata's ``write_elem`` as a dataframe.

    Returns
    -------
    pandas.DataFrame
        The same table as ``anndata.io.read_elem(group)``.

    Examples
    --------
    >>> import anndata as ad, pandas as pd, zarr
    >>> from p2g_dask.io._write import zarr_write_settings
    >>> root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    >>> table = pd.DataFrame({"chrom": ["chr1", "chr2"], "start": [10, 20]}, index=["p1", "p2"])
    >>> table["kind"] = pd.Categorical(["a", "b"])
    >>> with zarr_write_settings():
    ...     ad.io.write_elem(root, "var", table)
    >>> read_frame(root["var"]).equals(ad.io.read_elem(root["var"]))
    True
    """
    frame = _plain_frame(group)
    return frame if frame is not None else ad.io.read_elem(group)


def read_element(node: Any) -> Any:
    """An anndata-encoded element of a store: a dataframe, a dense array, or anything anndata reads.

    Examples
    --------
    >>> import zarr
    >>> from p2g_dask.io._write import zarr_write_settings
    >>> root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    >>> with zarr_write_settings():
    ...     ad.io.write_elem(root, "X_lsi", np.eye(3))
    >>> read_element(root["X_lsi"]).tolist()[0]
    [1.0, 0.0, 0.0]
    """
    if isinstance(node, zarr.Group) and node.attrs.get("encoding-type") == "dataframe":
        return read_frame(node)
    attrs = node.attrs
    if (isinstance(node, zarr.Array) and attrs.get("encoding-type") == "array"
            and attrs.get("encoding-version") == ENCODING_VERSION and np.dtype(node.dtype).kind in "biuf"):
        return np.asarray(node[...])
    return ad.io.read_elem(node)


def _plain_frame(group: Any) -> pd.DataFrame | None:
    attrs = group.attrs
    if attrs.get("encoding-type") != "dataframe" or attrs.get("encoding-version") != ENCODING_VERSION:
        return None
    index_key = attrs.get("_index")
    order = list(attrs.get("column-order", []))
    if not isinstance(index_key, str) or index_key not in group:
        return None
    index = _column(group[index_key])
    columns = {name: _column(group[name]) if name in group else None for name in order}
    if index is None or any(values is None for values in columns.values()):
        return None
    # The dict holds the columns in column-order, so the frame does too.
    return pd.DataFrame(columns, index=pd.Index(index, name=None if index_key == "_index" else index_key))


def _column(node: Any) -> Any:
    """One column as read_elem gives it, or None when it is not a plain 1-D encoding."""
    attrs = node.attrs
    if attrs.get("encoding-version") != ENCODING_VERSION:
        return None
    encoding = attrs.get("encoding-type")
    if encoding == "categorical" and isinstance(node, zarr.Group) and {"codes", "categories"} <= set(node.keys()):
        codes, categories = _column(node["codes"]), _column(node["categories"])
        if codes is None or categories is None:
            return None
        return pd.Categorical.from_codes(codes, categories=categories, ordered=bool(attrs.get("ordered", False)))
    if not isinstance(node, zarr.Array) or len(node.shape) != 1:
        return None
    if encoding == "string-array":
        return np.asarray(node[...]).astype(object)
    if encoding == "array" and np.dtype(node.dtype).kind in "biuf":
        return np.asarray(node[...])
    return None
