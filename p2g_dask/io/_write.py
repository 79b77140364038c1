"""Writing a store's elements: a modality's count matrix block by block (checksummed chunks),
and any other element under a staged name that is renamed into place when complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

import p2g_dask
from p2g_dask._lazy import LazyModule
from p2g_dask._variables import check_counts
from p2g_dask.io._integrity import INTEGRITY_ATTR
from p2g_dask.io.modality import Modality
from p2g_dask.io.peaks import peak_table

ad = LazyModule("anndata")

#: Elements per chunk file of the count arrays (data, indices, indptr).
_ZARR_ELEMENT_CHUNK = 2**20
#: Root attribute: the modalities a store holds (an ATAC-only store has no "rna").
MODALITIES_ATTR = "p2g_modalities"


@contextlib.contextmanager
def zarr_write_settings():
    """anndata's settings for writing a store (Zarr v3, no auto-sharding), only while writing.

    Applied as a context, not at import, so importing p2g_dask leaves the process's anndata
    settings as the user set them. Deciding ``auto_shard_zarr_v3`` explicitly silences its warning.
    """
    with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
        yield


def _validate_block(block: sp.csr_matrix, name: str, first_row: int) -> None:
    # One block of an ingested modality; a module-level step so fault tests can stall it.
    check_counts(block, f"{name} counts contain", first_row=first_row)


def _compressors():
    # Blosc-LZ4 with byte shuffle reads ~3x faster than zarr's default zstd on CSR arrays
    # (measured: 161 vs 47 M nonzeros/s) and is smaller too. crc32c after it: zarr checks each
    # chunk's checksum while decoding, so altered bytes fail the read (io._integrity).
    from zarr.codecs import BloscCodec, Crc32cCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()]


# Every chunk written, even one equal to the fill value, so a missing chunk file means damage.
_ARRAY_CONFIG = {"write_empty_chunks": True}


def _storage_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.int32) if np.issubdtype(dtype, np.integer) else np.dtype(np.float32)


def write_modality(group: zarr.Group, source: Modality, rows: np.ndarray, chunk_cells: int) -> None:
    """Write one modality's X block by block, then obs/var/obsm with anndata's encoders."""
    n_obs, n_vars = rows.size, source.n_vars
    probe = source.read_rows(rows[: min(rows.size, 16)])
    dtype = _storage_dtype(probe.dtype)
    x_group, data, indices = create_count_arrays(group, n_obs, n_vars, dtype)
    indptr = np.zeros(n_obs + 1, dtype=np.int64)
    for start in range(0, n_obs, chunk_cells):
        stop = min(start + chunk_cells, n_obs)
        wanted = rows[start:stop]
        order = np.argsort(wanted, kind="stable")
        block = source.read_rows(wanted[order])
        block = sp.csr_matrix(block[np.argsort(order, kind="stable")])
        block.sum_duplicates()
        block.sort_indices()
        _validate_block(block, source.name, start)
        if block.dtype != dtype:
            if dtype == np.int32 and block.data.size and block.data.max() > np.iinfo(np.int32).max:
                raise ValueError(f"{source.name} counts exceed the int32 range; store them as float.")
            block = block.astype(dtype)
        indptr[start + 1 : stop + 1] = indptr[start] + np.cumsum(np.diff(block.indptr))
        data.append(block.data)
        indices.append(block.indices.astype(np.int32, copy=False))
    ptr = x_group.create_array("indptr", shape=indptr.shape, chunks=(_ZARR_ELEMENT_CHUNK,), dtype=np.int64,
                               compressors=_compressors(), config=_ARRAY_CONFIG)
    ptr[:] = indptr
    write_modality_tables(group, source.name, source.obs.iloc[rows], source.var,
                          {k: _take_rows(v, rows) for k, v in source.obsm.items()}, chunk_cells)


def create_count_arrays(group: zarr.Group, n_obs: int, n_vars: int, dtype: np.dtype, nnz: int = 0):
    """The CSR ``X`` group of a modality and its ``data``/``indices`` arrays (``nnz`` long), as
    every store writer makes them (chunks, Blosc-LZ4 + crc32c, every chunk written)."""
    x_group = group.create_group("X")
    x_group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_obs, n_vars]})
    data = x_group.create_array("data", shape=(nnz,), chunks=(_ZARR_ELEMENT_CHUNK,), dtype=dtype,
                                compressors=_compressors(), config=_ARRAY_CONFIG)
    indices = x_group.create_array("indices", shape=(nnz,), chunks=(_ZARR_ELEMENT_CHUNK,), dtype=np.int32,
                                   compressors=_compressors(), config=_ARRAY_CONFIG)
    return x_group, data, indices


def write_modality_tables(group: zarr.Group, name: str, obs: pd.DataFrame, var: pd.DataFrame, obsm: Mapping,
                          chunk_cells: int) -> None:
    """obs/var/obsm (and the empty elements) of a modality with anndata's encoders, once ``X`` is written."""
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    ad.io.write_elem(group, "obs", obs)
    var = var.copy()
    var.index = var.index.astype(str)
    if name == "atac" and not {"chrom", "start", "end"} <= set(var.columns):
        # Parse peak names once here so readers of the store need not.
        try:
            coords = peak_table(var.index)
            for column in ("chrom", "start", "end"):
                var[column] = coords[column].to_numpy()
        except ValueError:
            pass  # unparseable names are reported where peaks are needed
    ad.io.write_elem(group, "var", var)
    ad.io.write_elem(group, "obsm", dict(obsm))
    for empty in ("layers", "varm", "obsp", "varp"):
        ad.io.write_elem(group, empty, {})
    ad.io.write_elem(group, "uns", {})
    group.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0", "p2g_chunk_cells": int(chunk_cells)})


def store_attrs(n_obs: int, modalities: list[str]) -> dict:
    """The root attributes of a store: format and package versions, cells, checksums, modalities.

    Examples
    --------
    >>> store_attrs(3, ["atac"])[MODALITIES_ATTR]
    ['atac']
    """
    return {"p2g_format_version": p2g_dask.STORE_FORMAT_VERSION, "p2g_dask_version": p2g_dask.__version__,
            "n_obs": int(n_obs), INTEGRITY_ATTR: "crc32c", MODALITIES_ATTR: list(modalities)}


def _take_rows(value, rows):
    if isinstance(value, pd.DataFrame):
        return value.iloc[rows]
    return value[rows]


#: Prefix of elements being written (renamed into place when complete; readers skip them).
STAGED = "_p2g_tmp_"


def replace_elem(folder: Path, group: zarr.Group, key: str, value: Any) -> None:
    """Write ``group[key]`` under a staged key, then rename its folder into place.

    The rename is one filesystem step, so an interruption leaves the old element or the new
    one, never a partly written array under ``key`` (which would read as complete, with zeros).
    """
    if not key or "/" in key or key.startswith(STAGED) or key in (".", ".."):
        raise ValueError(f"key={key!r} is not a valid element name; use a plain name such as 'X_lsi'.")
    import shutil
    import uuid

    staged = f"{STAGED}{uuid.uuid4().hex[:8]}_{key}"
    target = folder / key
    try:
        with zarr_write_settings():
            ad.io.write_elem(group, staged, value)
        if target.exists():
            old = folder / f"{STAGED}old_{uuid.uuid4().hex[:8]}_{key}"
            os.replace(target, old)
            os.replace(folder / staged, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(folder / staged, target)
    except BaseException:
        shutil.rmtree(folder / staged, ignore_errors=True)
        raise
