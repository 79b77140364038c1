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
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

import p2g_dask
from p2g_dask._lazy import LazyModule
from p2g_dask._atomic import atomic_path
from p2g_dask.io._frames import read_element, read_frame
from p2g_dask.io.blocks import StoreRange, chunk_cells_for, row_bounds, store_array
from p2g_dask._logging import logger, timed
from p2g_dask._variables import check_counts
from p2g_dask._errors import InputFileError, InputFileNotFoundError
from p2g_dask.io.barcodes import common_cells
from p2g_dask.io._integrity import INTEGRITY_ATTR, check_store_chunks, first_indptr_ok
from p2g_dask.io.modality import Modality
from p2g_dask.io._sources import open_sources
from p2g_dask.io._write import (  # noqa: F401 - re-exported for the store's writers
    MODALITIES_ATTR, STAGED, create_count_arrays, replace_elem, store_attrs, write_modality,
    write_modality_tables, zarr_write_settings,
)

# Imported at first use, on the client: Dask workers importing this module never need them (~30 MiB each).
ad = LazyModule("anndata")



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
        is then a gene-score matrix (:func:`p2g_dask.tl.scores.gene_scores` with ``store=``).

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
                    write_modality(root.create_group(source.name), source, rows, int(chunk_cells))
                logger.info("stored %d cells x %d peaks x %s genes in %s", common.size, atac_src.n_vars,
                            "no" if rna_src is None else rna_src.n_vars, path)
        finally:
            for handle in handles:
                handle.close()
    return open_store(path)


def add_modality(store: "MultiomeStore", key: str, source: Modality, *, chunk_cells: int, uns: Mapping,
                 record: Mapping, overwrite: bool = False) -> "StoreModality":
    """Write ``source`` as the store's modality ``<store>/<key>``, and its X as ``atac.obsm[key]``.

    How a derived cells x features matrix (e.g. gene scores) joins a store: a modality read out
    of core like the counts, and an ``obsm`` entry for tools that take ``obsm`` keys. Both are
    written under temporary names and renamed into place when complete.

    Parameters
    ----------
    store
        An open store (:func:`open_store`).
    key
        The new modality's name (and its ``obsm`` key), e.g. ``"X_gene_score"``.
    source
        The matrix, ``obs`` (the store's cells) and ``var``, read by rows.
    chunk_cells
        Cells per written block.
    uns, record
        The modality's own ``uns``, and the record written to ``atac.uns[key]``.
    overwrite
        Replace an existing modality ``key``.

    Returns
    -------
    StoreModality
        The written modality.
    """
    import shutil
    import uuid

    target = Path(store.path) / key
    with atomic_path(target, overwrite=overwrite, argument="key_added") as tmp, zarr_write_settings():
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        write_modality(group, source, np.arange(source.n_obs), chunk_cells)
        ad.io.write_elem(group, "uns", dict(uns))
    # The same CSR (already a csr_matrix element) as atac.obsm[key]; copied under a staged name
    # that store readers skip, then renamed into place.
    obsm_dir = Path(store.path) / "atac" / "obsm"
    staged = obsm_dir / f"{STAGED}{uuid.uuid4().hex[:8]}_{key}"
    try:
        shutil.copytree(target / "X", staged)
        if (obsm_dir / key).exists():
            shutil.rmtree(obsm_dir / key)
        os.replace(staged, obsm_dir / key)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    store.atac.write_uns(key, dict(record))
    return StoreModality(store.path, key)


def _read_csr_rows(path: str, modality: str, start: int, stop: int, n_vars: int) -> sp.csr_matrix:
    return StoreRange(path, modality, start, stop, n_vars).read().to_csr()


#: obs/var tables already read in this process, by (store, modality, table) -> (file stamp, table).
_FRAMES: dict[tuple[str, str, str], tuple[tuple, pd.DataFrame]] = {}


def _read_frame(path: str, name: str, group, table: str) -> pd.DataFrame:
    """``obs``/``var`` of a modality; a second open of an unchanged store reuses the first read.

    Reading the ~100k peak names costs ~0.1 s per open; every tool opens the store. The stamp (inode and modification time of the table's metadata) changes whenever the
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
    frame = read_frame(group[table])
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
            # obs is read on first use: an atlas's cell names are ~70 B each in pandas (1.7 GiB
            # for 10M cells in two modalities), and peak_to_gene on a store never needs them.
            self._obs: pd.DataFrame | None = None
            if "obs" not in group:
                raise KeyError("obs")
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
    def obs(self) -> pd.DataFrame:
        """The cell table, read from the store on first use."""
        if self._obs is None:
            try:
                self._obs = _read_frame(self.path, self.name, self._group, "obs")
            except (KeyError, OSError, ValueError, TypeError) as err:
                raise InputFileError("store", self.path, f"is damaged: its {self.name} obs table cannot be read "
                                     f"({err!s})", "re-ingest the data with p2g.io.ingest (p2g ingest)") from err
        return self._obs

    def obs_names_blocks(self, block: int = 1_000_000):
        """The cell names in consecutive blocks (numpy arrays of str), read without the table."""
        if self._obs is not None:
            yield from (self._obs.index[i:i + block].to_numpy() for i in range(0, self.n_obs, block))
            return
        names = self._group["obs"][self._group["obs"].attrs.get("_index", "_index")]
        for i in range(0, self.n_obs, block):
            yield np.asarray(names[i:min(i + block, self.n_obs)])

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
        return {key: read_element(group[key]) for key in group.keys() if not key.startswith(STAGED)}

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
        replace_elem(Path(self.path) / self.name / "obsm", group, key, value)

    def write_uns(self, key: str, value: Mapping) -> None:
        """Store a JSON-like mapping under ``uns[key]``."""
        group = zarr.open_group(self.path, mode="r+")[f"{self.name}/uns"]
        replace_elem(Path(self.path) / self.name / "uns", group, key, dict(value))

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
