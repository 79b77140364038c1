"""The p2g multiome store: one Zarr (v3) folder holding ATAC and RNA of the same cells.

Layout (each modality is a complete AnnData Zarr group, readable with ``anndata.read_zarr``)::

    store.zarr/                 attrs: p2g_format_version, p2g_dask_version, n_obs
      atac/  X (CSR: data, indices, indptr), obs, var, obsm, uns
      rna/   X (CSR), obs, var, obsm, uns

Cells are the barcode intersection of the inputs, in the ATAC input's order. ``X`` is written
one block of cells at a time, so a backed h5ad or a 10x h5 is never loaded whole. Row chunks
of the lazy ``X`` are logical (any chunking can be read), chosen by a target of bytes per chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

import p2g_dask
from p2g_dask._lazy import LazyModule
from p2g_dask._atomic import atomic_path
from p2g_dask._graph import StoreRange, row_bounds, store_array
from p2g_dask._logging import logger, timed
from p2g_dask._variables import check_counts
from p2g_dask._errors import InputFileError, InputFileNotFoundError
from p2g_dask.io._barcodes import common_cells
from p2g_dask.io._integrity import INTEGRITY_ATTR, check_store_chunks, first_indptr_ok
from p2g_dask._modality import Modality
from p2g_dask.io._sources import open_sources

# Imported at first use, on the client: Dask workers importing this module never need them (~30 MiB each).
ad = LazyModule("anndata")

#: Bytes of CSR (data + indices) per row chunk when none is given.
DEFAULT_CHUNK_BYTES = 96 * 2**20
_ZARR_ELEMENT_CHUNK = 2**20



@contextlib.contextmanager
def zarr_write_settings():
    """anndata's settings for writing a store (Zarr v3, no auto-sharding), only while writing.

    Applied as a context, not at import, so importing p2g_dask leaves the process's anndata
    settings as the user set them. Deciding ``auto_shard_zarr_v3`` explicitly silences its warning.
    """
    with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
        yield


def chunk_cells_for(row_nnz_mean: float, chunk_bytes: int = DEFAULT_CHUNK_BYTES, bytes_per_nnz: int = 8) -> int:
    """Cells per row chunk so that one chunk holds about ``chunk_bytes`` of CSR data."""
    return int(max(256, min(200_000, chunk_bytes // max(1.0, row_nnz_mean * bytes_per_nnz))))


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


def _write_modality(group: zarr.Group, source: Modality, rows: np.ndarray, chunk_cells: int) -> None:
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
        from p2g_dask.io.peaks import peak_table

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
    """The root attributes of a store: format and package versions, cells, checksums, modalities."""
    return {"p2g_format_version": p2g_dask.STORE_FORMAT_VERSION, "p2g_dask_version": p2g_dask.__version__,
            "n_obs": int(n_obs), INTEGRITY_ATTR: "crc32c", MODALITIES_ATTR: list(modalities)}


def _take_rows(value, rows):
    if isinstance(value, pd.DataFrame):
        return value.iloc[rows]
    return value[rows]


def ingest(
    atac: Any,
    rna: Any = None,
    path: str | os.PathLike | None = None,
    *,
    chunk_cells: int | None = None,
    mod_atac: str = "atac",
    mod_rna: str = "rna",
    overwrite: bool = False,
    atac_only: bool = False,
) -> "MultiomeStore":
    """Write paired ATAC and RNA counts (or ATAC alone) into one chunked Zarr store.

    Parameters
    ----------
    atac
        Cells x peaks: an AnnData, a path to ``.h5ad``; or a combined input (a MuData, an
        ``.h5mu`` path, or a 10x multiome ``filtered_feature_bc_matrix.h5``) with ``rna=None``.
    rna
        Cells x genes: an AnnData or an ``.h5ad`` path. With a combined input, ``rna`` may be
        the output path (``ingest(mdata, "store.zarr")``).
    path
        Output folder of the store (``.zarr`` by convention).
    chunk_cells
        Cells per written block and default row chunk; chosen from ~96 MiB of CSR data if None.
    mod_atac, mod_rna
        Modality names in a MuData / ``.h5mu`` input.
    overwrite
        Replace an existing store at ``path``.
    atac_only
        Write the ATAC counts alone (``rna=None``): a store for data without RNA, whose gene side
        is then a gene-score matrix (:func:`p2g_dask.tl.gene_scores` with ``store=``).

    Returns
    -------
    MultiomeStore
        The opened store.

    Examples
    --------
    >>> import tempfile, p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=100, n_peaks=500, n_genes=50, n_linked_genes=5)
    >>> store = p2g.io.ingest(sim.atac, sim.rna, tempfile.mkdtemp() + "/demo.zarr")
    >>> store.atac.X.shape
    (100, 500)
    """
    if path is None and rna is not None and str(rna).endswith(".zarr") and not hasattr(rna, "obs"):
        path, rna = rna, None
    if path is None:
        raise ValueError("path is required: the output folder of the store, e.g. 'pbmc.zarr'.")
    with timed("ingest"):
        atac_src, rna_src, handles = open_sources(atac, rna, mod_atac=mod_atac, mod_rna=mod_rna, atac_only=atac_only)
        try:
            atac_names = pd.Index(atac_src.obs.index.astype(str))
            rna_names = atac_names if rna_src is None else pd.Index(rna_src.obs.index.astype(str))
            common = common_cells(atac_names, rna_names)
            atac_rows = atac_names.get_indexer(common)
            rna_rows = rna_names.get_indexer(common)
            sources = [(atac_src, atac_rows)] + ([] if rna_src is None else [(rna_src, rna_rows)])
            if chunk_cells is None:
                nnz = atac_src.row_nnz
                mean_nnz = float(nnz.mean()) if nnz is not None and nnz.size else 2_000.0
                chunk_cells = chunk_cells_for(mean_nnz)
            if chunk_cells < 1:
                raise ValueError(f"chunk_cells={chunk_cells} must be a positive number of cells.")
            with atomic_path(path, overwrite=overwrite, argument="path") as tmp, zarr_write_settings():
                root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
                root.attrs.update(store_attrs(int(common.size), [source.name for source, _ in sources]))
                for source, rows in sources:
                    _write_modality(root.create_group(source.name), source, rows, int(chunk_cells))
                logger.info("stored %d cells x %d peaks x %s genes in %s", common.size, atac_src.n_vars,
                            "no" if rna_src is None else rna_src.n_vars, path)
        finally:
            for handle in handles:
                handle.close()
    return open_store(path)


_STAGED = "_p2g_tmp_"


def _replace_elem(folder: Path, group: zarr.Group, key: str, value: Any) -> None:
    """Write ``group[key]`` under a staged key, then rename its folder into place.

    The rename is one filesystem step, so an interruption leaves the old element or the new
    one, never a partly written array under ``key`` (which would read as complete, with zeros).
    """
    if not key or "/" in key or key.startswith(_STAGED) or key in (".", ".."):
        raise ValueError(f"key={key!r} is not a valid element name; use a plain name such as 'X_lsi'.")
    import shutil
    import uuid

    staged = f"{_STAGED}{uuid.uuid4().hex[:8]}_{key}"
    target = folder / key
    try:
        with zarr_write_settings():
            ad.io.write_elem(group, staged, value)
        if target.exists():
            old = folder / f"{_STAGED}old_{uuid.uuid4().hex[:8]}_{key}"
            os.replace(target, old)
            os.replace(folder / staged, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(folder / staged, target)
    except BaseException:
        shutil.rmtree(folder / staged, ignore_errors=True)
        raise


def _read_csr_rows(path: str, modality: str, start: int, stop: int, n_vars: int) -> sp.csr_matrix:
    return StoreRange(path, modality, start, stop, n_vars).read().to_csr()


#: obs/var tables already read in this process, by (store, modality, table) -> (file stamp, table).
_FRAMES: dict[tuple[str, str, str], tuple[tuple, pd.DataFrame]] = {}


def _read_frame(path: str, name: str, group, table: str) -> pd.DataFrame:
    """``obs``/``var`` of a modality; a second open of an unchanged store reuses the first read.

    Reading the ~100k peak names through anndata costs ~0.1 s per open; every tool opens the
    store. The stamp (inode and modification time of the table's metadata) changes whenever the
    table is rewritten (ingest replaces it by a rename), and callers get a copy.
    """
    meta = Path(path) / name / table / "zarr.json"
    try:
        info = meta.stat()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
    except OSError:
        stamp = None
    key = (str(path), name, table)
    cached = _FRAMES.get(key)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1].copy()
    frame = ad.io.read_elem(group[table])
    if stamp is not None:
        if len(_FRAMES) >= 16:
            _FRAMES.pop(next(iter(_FRAMES)))
        _FRAMES[key] = (stamp, frame.copy())
    return frame


class StoreModality:
    """One modality of a store: lazy ``X``, in-memory ``obs``/``var``, and ``obsm`` on demand."""

    def __init__(self, path: str, name: str, chunk_cells: int | None = None):
        self.path, self.name = path, name
        try:
            group = zarr.open_group(path, mode="r")[name]
            self._group = group
            self.obs: pd.DataFrame = _read_frame(path, name, group, "obs")
            self.var: pd.DataFrame = _read_frame(path, name, group, "var")
            shape = tuple(group["X"].attrs["shape"])
            self.shape = (int(shape[0]), int(shape[1]))
            self.dtype = group["X/data"].dtype
            self.nnz = int(group["X/data"].shape[0])
        except (KeyError, OSError, ValueError, TypeError) as err:
            raise InputFileError("store", path, f"is damaged: its {name} modality cannot be read ({err!s})",
                                 "re-ingest the data with p2g.io.ingest (p2g ingest)") from err
        if chunk_cells is None:
            chunk_cells = group.attrs.get("p2g_chunk_cells") or chunk_cells_for(self.nnz / max(1, self.shape[0]))
        self.chunk_cells = int(chunk_cells)

    @property
    def n_obs(self) -> int:
        return self.shape[0]

    @property
    def n_vars(self) -> int:
        return self.shape[1]

    def row_chunks(self, chunk_cells: int | None = None) -> list[tuple[int, int]]:
        """``(start, stop)`` cell-row ranges of the chunks."""
        return row_bounds(self.n_obs, chunk_cells or self.chunk_cells)

    @property
    def X(self) -> da.Array:
        """Cells x features as a dask array of scipy CSR row chunks (read lazily from Zarr)."""
        return self.lazy_X()

    def lazy_X(self, chunk_cells: int | None = None) -> da.Array:
        """Cells x features as a dask array of scipy CSR row chunks of ``chunk_cells`` rows."""
        return store_array(self.path, self.name, self.n_vars, self.row_chunks(chunk_cells), self.dtype)

    @property
    def obsm(self) -> dict[str, np.ndarray]:
        group = zarr.open_group(self.path, mode="r")[f"{self.name}/obsm"]
        # A key staged by an interrupted write_obsm is not an embedding.
        return {key: ad.io.read_elem(group[key]) for key in group.keys() if not key.startswith(_STAGED)}

    @property
    def uns(self) -> dict:
        return ad.io.read_elem(zarr.open_group(self.path, mode="r")[f"{self.name}/uns"])

    def write_obsm(self, key: str, value: np.ndarray, *, overwrite: bool = True) -> None:
        """Store a cells x d array (e.g. an embedding) under ``obsm[key]``."""
        value = np.asarray(value)
        if value.shape[0] != self.n_obs:
            raise ValueError(f"obsm[{key!r}] has {value.shape[0]} rows; the store has {self.n_obs} cells.")
        group = zarr.open_group(self.path, mode="r+")[f"{self.name}/obsm"]
        if key in group and not overwrite:
            raise FileExistsError(f"obsm[{key!r}] exists in {self.path}; pass overwrite=True.")
        _replace_elem(Path(self.path) / self.name / "obsm", group, key, value)

    def write_uns(self, key: str, value: Mapping) -> None:
        """Store a JSON-like mapping under ``uns[key]``."""
        group = zarr.open_group(self.path, mode="r+")[f"{self.name}/uns"]
        _replace_elem(Path(self.path) / self.name / "uns", group, key, dict(value))

    def to_memory(self, rows: np.ndarray | slice | None = None) -> sp.csr_matrix:
        """Read X (or some rows of it) into memory as CSR."""
        if rows is None:
            return _read_csr_rows(self.path, self.name, 0, self.n_obs, self.n_vars)
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.n_obs)
            return _read_csr_rows(self.path, self.name, start, stop, self.n_vars)
        rows = np.asarray(rows)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return _read_csr_rows(self.path, self.name, lo, hi, self.n_vars)[rows - lo]

    def to_anndata(self) -> ad.AnnData:
        """The whole modality in memory as AnnData."""
        return ad.read_zarr(os.path.join(self.path, self.name))

    def __repr__(self) -> str:
        return f"StoreModality({self.name!r}, {self.n_obs} cells x {self.n_vars} features, nnz={self.nnz})"


#: Root attribute listing the count modalities of a store (["atac"] for an ATAC-only store).
MODALITIES_ATTR = "p2g_modalities"


class MultiomeStore:
    """An opened p2g store: ``.atac`` and ``.rna`` modalities over the same cells (``.rna`` None
    in an ATAC-only store)."""

    def __init__(self, path: str | os.PathLike, chunk_cells: int | None = None):
        self.path = str(Path(path).resolve())
        try:
            root = zarr.open_group(self.path, mode="r")
            version = root.attrs.get("p2g_format_version")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputFileError("store", path, f"is not a p2g_dask store (not a readable Zarr group: {err!s})",
                                 "pass a folder written by p2g.io.ingest (p2g ingest)") from err
        if version is None:
            raise InputFileError("store", path, "is not a p2g_dask store (no p2g_format_version attribute)",
                                 "create one with p2g.io.ingest (p2g ingest)")
        if int(version) != p2g_dask.STORE_FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} was written with store format {version} (p2g_dask "
                f"{root.attrs.get('p2g_dask_version')}); this p2g_dask reads format "
                f"{p2g_dask.STORE_FORMAT_VERSION}: re-ingest the data with this version."
            )
        self.attrs = dict(root.attrs)
        # Zarr would read a missing chunk as zeros: check they are all there before any work.
        # Stores written before ATAC-only stores existed hold both modalities.
        self.modalities = tuple(root.attrs.get(MODALITIES_ATTR, ("atac", "rna")))
        self.n_chunks = check_store_chunks(self.path, self.modalities)
        for modality in self.modalities:
            first_indptr_ok(self.path, modality)
        self.atac = StoreModality(self.path, "atac", chunk_cells)
        self.rna = StoreModality(self.path, "rna", chunk_cells) if "rna" in self.modalities else None

    @property
    def obs_names(self) -> pd.Index:
        return self.atac.obs.index

    def __repr__(self) -> str:
        rna = "no RNA (ATAC-only)" if self.rna is None else repr(self.rna)
        return f"MultiomeStore({self.path!r}: {self.atac!r}, {rna})"


def open_store(path: str | os.PathLike, *, chunk_cells: int | None = None) -> MultiomeStore:
    """Open a p2g store lazily.

    Parameters
    ----------
    path
        Folder written by :func:`ingest`.
    chunk_cells
        Cells per row chunk of the lazy matrices; chosen from ~96 MiB of CSR data if None.

    Returns
    -------
    MultiomeStore
        ``store.atac.X`` / ``store.rna.X`` are dask arrays of CSR row chunks.

    Examples
    --------
    >>> import tempfile, p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=100, n_peaks=500, n_genes=50, n_linked_genes=5)
    >>> path = tempfile.mkdtemp() + "/demo.zarr"
    >>> _ = p2g.io.ingest(sim.atac, sim.rna, path)
    >>> p2g.io.open_store(path).rna.X.shape
    (100, 50)
    """
    if not Path(path).exists():
        raise InputFileNotFoundError("store path", path, "does not exist", "create it with p2g.io.ingest")
    if not Path(path).is_dir():
        raise InputFileError("store path", path, "is a file, not a p2g store folder",
                             "pass the folder written by p2g.io.ingest (p2g ingest)")
    return MultiomeStore(path, chunk_cells)


def is_store(obj: Any) -> bool:
    """True for a MultiomeStore or a path to a folder holding one."""
    if isinstance(obj, MultiomeStore):
        return True
    if isinstance(obj, (str, os.PathLike)):
        meta = Path(obj) / "zarr.json"
        if meta.exists():
            try:
                return "p2g_format_version" in json.loads(meta.read_text()).get("attributes", {})
            except (OSError, ValueError):
                return False
    return False
