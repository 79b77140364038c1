"""Normalise what users pass (AnnData, MuData, a store or its path, h5ad paths) into modalities.

Every public entry point goes through :func:`resolve_input`, so the same input forms work for
``peak_to_gene``, ``iterative_lsi``, ``pseudobulk_with_fragments`` and the plots.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from p2g_dask._lazy import LazyModule
from p2g_dask._errors import InputFileError, InputFileNotFoundError, check_input_file, reading
from p2g_dask._variables import check_counts
from p2g_dask.io.barcodes import common_cells
from p2g_dask.io._sources import is_mudata, require_modality
from p2g_dask.io.modality import Modality
from p2g_dask.io.store import MultiomeStore, is_store, open_store

# Imported at first use, on the client: Dask workers importing this module never need them (~30 MiB each).
ad = LazyModule("anndata")


def _read_path(obj: Any, argument: str = "data") -> Any:
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if is_store(path):
            return open_store(path)
        if not os.path.exists(path):
            raise InputFileNotFoundError(argument, path, "does not exist",
                                         "check the path (relative paths start from the current folder)")
        if os.path.isdir(path) and not path.lower().endswith((".h5ad", ".h5mu")):
            if os.path.exists(os.path.join(path, "zarr.json")):
                return open_store(path)  # a damaged store: open_store names what is wrong
            raise InputFileError(argument, path, "is a folder but not a p2g store (no zarr.json)",
                                 "pass a store written by p2g.io.ingest, or an .h5ad / .h5mu file")
        if path.lower().endswith(".h5ad"):
            check_input_file(path, argument=argument, kind="hdf5")
            with reading(path, argument=argument, kind="hdf5"):
                return ad.read_h5ad(path)
        if path.lower().endswith(".h5mu"):
            import mudata as md

            check_input_file(path, argument=argument, kind="hdf5")
            with reading(path, argument=argument, kind="hdf5"):
                return md.read_h5mu(path)
        raise ValueError(
            f"input {path!r}: give an AnnData, a MuData, a p2g store (p2g.io.ingest) or a path to "
            ".h5ad / .h5mu / a store folder."
        )
    return obj


def mudata_modality(mdata: Any, mod: str, argument: str) -> ad.AnnData:
    """``mdata.mod[mod]`` with an error listing the modalities there are."""
    require_modality(mod, mdata.mod, argument=argument, where="the MuData")
    return mdata.mod[mod]


def _from_anndata(adata: ad.AnnData, name: str, rows: np.ndarray | None, validate: bool = True) -> Modality:
    x = adata.X
    if x is None:
        raise ValueError(f"the {name} AnnData has no X; put raw counts in .X.")
    if rows is not None:
        obs = adata.obs.iloc[rows]
        x = x[rows]
        obsm = {k: (v.iloc[rows] if isinstance(v, pd.DataFrame) else v[rows]) for k, v in adata.obsm.items()}
    else:
        obs, obsm = adata.obs, dict(adata.obsm)
    if sp.issparse(x) and x.format != "csr":
        x = sp.csr_matrix(x)
    if validate:
        validate_counts(x, name, obs.index)
    return Modality(name, obs, adata.var, X=x, obsm=obsm, adata=adata)


def validate_counts(x: Any, name: str, obs_names: pd.Index | None = None) -> None:
    """Raise when in-memory counts hold NaN, inf or negative values (naming the first cell).

    Checked before any graph is built (:func:`p2g_dask._variables.check_counts`), so bad input
    fails at once rather than deep inside a task. Backed matrices are checked while ingested.

    Examples
    --------
    >>> validate_counts(np.array([[0, 2], [-1, 0]]), "rna")
    Traceback (most recent call last):
    ...
    ValueError: rna counts contain negative values (min -1), first in cell row 1; p2g_dask needs raw counts, not scaled or centred data (use adata.layers['counts']).
    """
    check_counts(x, f"{name} counts contain", obs_names=obs_names)


def resolve_input(
    data: Any, rna: Any = None, *, mod_atac: str = "atac", mod_rna: str = "rna", need_rna: bool = False,
    validate: bool = True,
) -> tuple[Modality, Modality | None, dict]:
    """Return ``(atac, rna, extra_obsm)`` over the shared cells.

    ``extra_obsm`` holds a MuData's own ``obsm`` aligned to the shared cells (used when
    ``use_rep`` is not in the ATAC modality). ``validate`` checks in-memory counts
    (:func:`validate_counts`); callers that only need ``obs`` turn it off.
    """
    data = _read_path(data, "data")
    rna = _read_path(rna, "rna")
    extra_obsm: dict = {}
    if isinstance(data, MultiomeStore):
        if rna is not None:
            raise ValueError("with a store as input, leave rna=None: the store holds both modalities.")
        atac_mod = Modality("atac", None, data.atac.var, store=data.atac)
        if data.rna is None:  # an ATAC-only store
            if need_rna:
                raise ValueError(f"the store {data.path!r} holds no RNA (an ATAC-only store); pass gene_obsm= "
                                 "(e.g. 'X_gene_score' from p2g.tl.gene_scores(..., store=...)) with gene_names=.")
            return atac_mod, None, extra_obsm
        rna_mod = Modality("rna", None, data.rna.var, store=data.rna)
        return atac_mod, rna_mod, extra_obsm
    if is_mudata(data):
        mdata = data
        data = mudata_modality(mdata, mod_atac, "mod_atac")
        if rna is None and mod_rna in mdata.mod:
            rna = mdata.mod[mod_rna]
        elif rna is None and need_rna:
            mudata_modality(mdata, mod_rna, "mod_rna")
        names = data.obs_names if rna is None else data.obs_names.intersection(rna.obs_names, sort=False)
        position = mdata.obs_names.get_indexer(names)
        for key, value in mdata.obsm.items():
            if (position >= 0).all():
                extra_obsm[key] = value.iloc[position] if isinstance(value, pd.DataFrame) else value[position]
    if not isinstance(data, ad.AnnData):
        raise TypeError(
            f"atac must be an AnnData, a MuData, a p2g store or a path to one; got {type(data).__name__}."
        )
    if rna is None:
        if need_rna:
            raise ValueError("rna is required: pass rna=<AnnData of the same cells> (or a store, or a MuData "
                             "with an RNA modality), or gene_obsm= with gene_names=.")
        return _from_anndata(data, "atac", None, validate), None, extra_obsm
    if not isinstance(rna, ad.AnnData):
        raise TypeError(f"rna must be an AnnData or a path to an .h5ad; got {type(rna).__name__}.")
    atac_names, rna_names = pd.Index(data.obs_names), pd.Index(rna.obs_names)
    if atac_names.equals(rna_names):
        return _from_anndata(data, "atac", None, validate), _from_anndata(rna, "rna", None, validate), extra_obsm
    common = common_cells(atac_names, rna_names)
    atac_rows = None if common.equals(atac_names) else atac_names.get_indexer(common)
    return (
        _from_anndata(data, "atac", atac_rows, validate),
        _from_anndata(rna, "rna", rna_names.get_indexer(common), validate),
        extra_obsm,
    )


def obs_names_hash(obs_names: Any) -> str:
    """A hash of the cell names in order, kept in ``links.attrs`` to recognise the same cells.

    ``obs_names``: the names (an Index or array), or a :class:`Modality` (a store's names are
    then read block by block, never all at once). The same names give the same hash either way.

    Examples
    --------
    >>> obs_names_hash(pd.Index(["c1", "c2"])) == obs_names_hash(np.array(["c1", "c2"]))
    True
    """
    import hashlib

    digest = hashlib.sha256()
    blocks = obs_names.obs_names_blocks() if isinstance(obs_names, Modality) else [obs_names]
    for block in blocks:
        # Each name and a NUL: the hash does not depend on how the names are split into blocks.
        digest.update("".join(f"{name}\0" for name in map(str, block)).encode())
    return digest.hexdigest()[:32]


def get_obs(data: Any, *, mod_atac: str = "atac") -> pd.DataFrame:
    """The cell table of a DataFrame (itself), an AnnData, a MuData's ATAC modality, or a store.

    For an ``.h5ad`` / ``.h5mu`` path only the ``obs`` table is read, not the matrices.

    Examples
    --------
    >>> get_obs(ad.AnnData(obs=pd.DataFrame({"g": [1]}, index=["c1"]))).index.tolist()
    ['c1']
    """
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, ad.AnnData):
        return data.obs
    if is_mudata(data):
        return mudata_modality(data, mod_atac, "mod_atac").obs
    if isinstance(data, (str, os.PathLike)) and os.fspath(data).lower().endswith((".h5ad", ".h5mu")):
        return _read_obs_only(os.fspath(data), mod_atac)
    atac, _, _ = resolve_input(data, None, mod_atac=mod_atac, validate=False)
    return atac.obs


def _read_obs_only(path: str, mod_atac: str) -> pd.DataFrame:
    import h5py

    check_input_file(path, argument="data", kind="hdf5")
    with reading(path, argument="data", kind="hdf5"), h5py.File(path, "r") as f:
        if path.lower().endswith(".h5mu"):
            require_modality(mod_atac, list(f["mod"]) if "mod" in f else [], argument="mod_atac", where=path)
            return ad.io.read_elem(f[f"mod/{mod_atac}/obs"])
        return ad.io.read_elem(f["obs"])


def get_obsm(modality: Modality, key: str, extra_obsm: dict | None = None, argument: str = "use_rep") -> np.ndarray:
    """``obsm[key]`` of a modality (then of a MuData) as an array; lists the keys there are."""
    obsm = modality.store.obsm if modality.store is not None else modality.obsm
    if key in obsm:
        value = obsm[key]
    elif extra_obsm and key in extra_obsm:
        value = extra_obsm[key]
    else:
        keys = sorted(set(obsm) | set(extra_obsm or {}))
        raise KeyError(
            f"{argument}={key!r} is not in obsm; obsm has {keys}. Compute it first "
            "(e.g. p2g.tl.iterative_lsi) or pass one of those keys."
        )
    if isinstance(value, pd.DataFrame):
        value = value.to_numpy()
    return value
