"""Row-streaming readers for the inputs of ``ingest``: in-memory AnnData, h5ad, h5mu and 10x h5.

Each source exposes ``obs``, ``var``, ``obsm`` and ``read_rows(sorted_rows) -> CSR`` so that
``ingest`` never holds a whole matrix: a backed file is read one block of cells at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from p2g_dask._lazy import LazyModule, imported_instance
from p2g_dask._errors import InputFileError, check_input_file, reading
from p2g_dask._logging import logger
from p2g_dask.io.modality import Modality

# Imported at first use, on the client: Dask workers importing this module never need them (~30 MiB each).
ad = LazyModule("anndata")
h5py = LazyModule("h5py")


def _h5_csr_reader(group: h5py.Group, n_vars: int):
    """Rows of a CSR matrix stored as data/indices/indptr in HDF5."""
    indptr = group["indptr"][:].astype(np.int64)
    data_ds, indices_ds = group["data"], group["indices"]

    def read_rows(rows: np.ndarray) -> sp.csr_matrix:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return sp.csr_matrix((0, n_vars), dtype=data_ds.dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        # One contiguous read of the span, then row selection in memory: HDF5 is fast at
        # contiguous reads and slow at many small ones.
        start, stop = indptr[lo], indptr[hi]
        span = sp.csr_matrix(
            (data_ds[start:stop], indices_ds[start:stop], indptr[lo : hi + 1] - start), shape=(hi - lo, n_vars)
        )
        return sp.csr_matrix(span[rows - lo])

    return read_rows, indptr


def _read_anndata_h5(path: Path, prefix: str, name: str) -> tuple[Modality, h5py.File]:
    handle = h5py.File(path, "r")
    try:
        return _anndata_h5_source(handle, path, prefix, name), handle
    except BaseException:
        handle.close()
        raise


def _anndata_h5_source(handle: h5py.File, path: Path, prefix: str, name: str) -> Modality:
    root = handle[prefix] if prefix else handle
    missing = [key for key in ("obs", "var", "X") if key not in root]
    if missing:
        where = f"{prefix}/" if prefix else ""
        raise InputFileError(name, path, f"is not an AnnData file: it lacks {', '.join(where + m for m in missing)}",
                             "pass an .h5ad written by anndata (adata.write_h5ad)")
    obs = ad.io.read_elem(root["obs"])
    var = ad.io.read_elem(root["var"])
    obsm = {k: ad.io.read_elem(root["obsm"][k]) for k in root["obsm"]} if "obsm" in root else {}
    x = root["X"]
    encoding = x.attrs.get("encoding-type", "array") if isinstance(x, h5py.Group) else "array"
    if encoding == "csr_matrix":
        for key in ("data", "indices", "indptr"):
            if key not in x:
                raise InputFileError(name, path, f"is damaged: it lacks the array {prefix + '/' if prefix else ''}X/{key}",
                                     "write the file again (adata.write_h5ad)")
        reader, indptr = _h5_csr_reader(x, var.shape[0])
        return Modality(name, obs, var, obsm=obsm, reader=reader, row_nnz=np.diff(indptr))
    if encoding == "csc_matrix":
        logger.warning(
            "%s: X of %s is stored column-major (CSC); it is loaded into memory once to read rows. "
            "Store X as CSR to stream it.", path, name,
        )
        matrix = sp.csr_matrix(ad.io.read_elem(x))
        return Modality(name, obs, var, X=matrix, obsm=obsm)

    def dense_rows(rows):
        return sp.csr_matrix(x[np.asarray(rows, dtype=np.int64)])

    return Modality(name, obs, var, obsm=obsm, reader=dense_rows)


def _read_10x_h5(path: Path) -> tuple[dict[str, Modality], h5py.File]:
    handle = h5py.File(path, "r")
    if "matrix" not in handle:
        handle.close()
        raise InputFileError("atac", path, "is not a 10x feature-barcode matrix h5 (no 'matrix' group)",
                             "pass Cell Ranger ARC's filtered_feature_bc_matrix.h5, or .h5ad / .h5mu files")
    matrix = handle["matrix"]
    n_features = int(matrix["shape"][0])
    barcodes = matrix["barcodes"][:].astype(str)
    features = matrix["features"]
    feature_type = features["feature_type"][:].astype(str)
    feature_names = features["name"][:].astype(str)
    feature_ids = features["id"][:].astype(str)
    intervals = features["interval"][:].astype(str) if "interval" in features else None
    indptr = matrix["indptr"][:].astype(np.int64)
    data_ds, indices_ds = matrix["data"], matrix["indices"]
    obs = pd.DataFrame(index=pd.Index(barcodes, name=None))
    sources = {}
    for label, name in (("Peaks", "atac"), ("Gene Expression", "rna")):
        columns = np.flatnonzero(feature_type == label)
        if columns.size == 0:
            continue
        if name == "atac":
            var = pd.DataFrame(index=pd.Index(feature_ids[columns]))
        else:
            var = pd.DataFrame({"gene_ids": feature_ids[columns]}, index=pd.Index(feature_names[columns]))
            if intervals is not None:
                var["interval"] = intervals[columns]
        column_map = np.full(n_features, -1, dtype=np.int64)
        column_map[columns] = np.arange(columns.size)

        def read_rows(rows, column_map=column_map, width=columns.size):
            rows = np.asarray(rows, dtype=np.int64)
            lo, hi = int(rows.min()), int(rows.max()) + 1
            start, stop = indptr[lo], indptr[hi]
            indices = column_map[indices_ds[start:stop].astype(np.int64)]
            data = data_ds[start:stop]
            keep = indices >= 0
            row_of = np.repeat(np.arange(hi - lo), np.diff(indptr[lo : hi + 1]))
            span = sp.csr_matrix((data[keep], (row_of[keep], indices[keep])), shape=(hi - lo, width))
            return sp.csr_matrix(span[rows - lo])

        sources[name] = Modality(name, obs.copy(), var, reader=read_rows)
    return sources, handle


def open_sources(
    atac: Any, rna: Any, *, mod_atac: str = "atac", mod_rna: str = "rna", atac_only: bool = False
) -> tuple[Modality, Modality | None, list]:
    """Resolve the inputs of ``ingest`` into row sources (RNA None with ``atac_only``); returns open handles."""
    handles: list = []

    def from_anndata(adata: ad.AnnData, name: str) -> Modality:
        x = adata.X
        if x is None:
            raise ValueError(f"the {name} AnnData has no X matrix; put the counts in .X.")
        if isinstance(x, (ad.abc.CSRDataset, ad.abc.CSCDataset)):
            x = x.to_memory()
        matrix = sp.csr_matrix(x) if not sp.issparse(x) or x.format != "csr" else x
        return Modality(name, adata.obs, adata.var, X=matrix, obsm=dict(adata.obsm), row_nnz=np.diff(matrix.indptr))

    def open_one(obj, name, mod):
        if isinstance(obj, ad.AnnData):
            return from_anndata(obj, name)
        if is_mudata(obj):
            require_modality(mod, obj.mod, argument=f"mod_{name}", where="the MuData")
            return from_anndata(obj.mod[mod], name)
        path = Path(os.fspath(obj))
        if not path.exists():
            raise FileNotFoundError(f"{name}={str(path)!r} does not exist.")
        suffix = "".join(path.suffixes[-1:]).lower()
        if suffix == ".h5ad":
            check_input_file(path, argument=name, kind="hdf5")
            with reading(path, argument=name, kind="hdf5"):
                source, handle = _read_anndata_h5(path, "", name)
            handles.append(handle)
            return source
        if suffix == ".h5mu":
            check_input_file(path, argument=name, kind="hdf5")
            with reading(path, argument=name, kind="hdf5"):
                with h5py.File(path, "r") as f:
                    mods = list(f["mod"].keys()) if "mod" in f else []
            require_modality(mod, mods, argument=f"mod_{name}", where=repr(str(path)))
            with reading(path, argument=name, kind="hdf5"):
                source, handle = _read_anndata_h5(path, f"mod/{mod}", name)
            handles.append(handle)
            return source
        raise ValueError(
            f"{name}={str(path)!r}: unsupported input; give an AnnData, a MuData, or a path to "
            ".h5ad, .h5mu or a 10x filtered_feature_bc_matrix .h5."
        )

    try:
        if atac_only:
            if rna is not None:
                raise ValueError("atac_only=True writes no RNA: leave rna=None.")
            return open_one(atac, "atac", mod_atac), None, handles
        single = rna is None
        if single:
            path = None if isinstance(atac, ad.AnnData) else atac
            if is_mudata(atac):
                return open_one(atac, "atac", mod_atac), open_one(atac, "rna", mod_rna), handles
            if path is not None and str(path).lower().endswith(".h5") and not str(path).lower().endswith(".h5ad"):
                check_input_file(path, argument="atac", kind="hdf5")
                with reading(path, argument="atac", kind="hdf5"):
                    sources, handle = _read_10x_h5(Path(path))
                handles.append(handle)
                missing = {"atac", "rna"} - set(sources)
                if missing:
                    raise ValueError(f"{str(path)!r} has no {' or '.join(sorted(missing))} features (feature_types).")
                return sources["atac"], sources["rna"], handles
            if path is not None and str(path).lower().endswith(".h5mu"):
                return open_one(path, "atac", mod_atac), open_one(path, "rna", mod_rna), handles
            raise ValueError(
                "rna=None needs a combined input: a MuData, an .h5mu path or a 10x multiome .h5; "
                "otherwise pass rna=<AnnData or .h5ad>, or atac_only=True for an ATAC-only store "
                "(gene scores from the fragments then take the RNA's place: p2g.tl.gene_scores)."
            )
        return open_one(atac, "atac", mod_atac), open_one(rna, "rna", mod_rna), handles
    except BaseException:
        for handle in handles:
            handle.close()
        raise


def is_mudata(obj: Any) -> bool:
    """True for a ``mudata.MuData``: the one MuData test of the package.

    A MuData exists only once mudata is imported, so without it the answer is False without
    paying its import (~0.5 s in a first call on AnnData).
    """
    return imported_instance(obj, "mudata", "MuData")


def require_modality(mod: str, mods, *, argument: str, where: str) -> None:
    """Raise a ``ValueError`` naming ``argument``, ``where`` and the modalities there are when
    ``mod`` is not one of ``mods``; the one check of every MuData / ``.h5mu`` reader.

    Examples
    --------
    >>> require_modality("peaks", ["rna", "atac"], argument="mod_atac", where="the MuData")
    Traceback (most recent call last):
    ...
    ValueError: mod_atac='peaks' is not a modality of the MuData; it has ['atac', 'rna']. Pass mod_atac= with one of those names.
    """
    if mod not in mods:
        raise ValueError(
            f"{argument}={mod!r} is not a modality of {where}; it has {sorted(mods)}. "
            f"Pass {argument}= with one of those names."
        )
