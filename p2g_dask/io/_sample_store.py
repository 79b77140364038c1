"""The last step of :func:`p2g_dask.io.ingest_samples`: the store from every sample's staged units.

Written under a temporary name and renamed when complete (:func:`p2g_dask._atomic.atomic_path`):
the count arrays are created with their final shapes, filled by the ``p2g-ingest-assemble``
tasks (:mod:`p2g_dask.io._sample_assemble`), then obs/var and the store's attributes follow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from p2g_dask import _graph
from p2g_dask._atomic import atomic_path
from p2g_dask._logging import logger, timed
from p2g_dask.io._sample_assemble import assemble_tasks
from p2g_dask.io._sample_plan import SamplePlan
from p2g_dask.io._write import (
    _ARRAY_CONFIG, _ZARR_ELEMENT_CHUNK, _compressors, create_count_arrays, store_attrs, write_modality_tables,
    zarr_write_settings,
)
from p2g_dask.io.blocks import chunk_cells_for
from p2g_dask.io.store import open_store

MODALITIES = ("atac", "rna")


def _obs(plan: SamplePlan, records: list[dict], name: str) -> pd.DataFrame:
    """All cells' obs of one modality: ``<sample>_<barcode>`` names, ``sample`` and ``barcode`` first."""
    parts = []
    for row, record in zip(plan.rows, records):
        folder = Path(record["units"][0]).parent if record["units"] else None
        obs = pd.read_parquet(folder / f"obs_{name}.parquet") if folder is not None else pd.DataFrame()
        obs.insert(0, "sample", row["sample"])
        obs.index = pd.Index((row["sample"] + "_" + obs["barcode"].astype(str)).to_numpy(), name=None)
        parts.append(obs)
    obs = pd.concat(parts)
    obs["sample"] = pd.Categorical(obs["sample"], categories=[r["sample"] for r in plan.rows])
    if obs.index.has_duplicates:
        raise ValueError(f"obs names <sample>_<barcode> repeat, e.g. {obs.index[obs.index.duplicated()][0]!r}: two "
                         "sample names combine with barcodes into the same name; rename the samples.")
    return obs


def _vars(plan: SamplePlan) -> dict[str, pd.DataFrame]:
    rna = pd.DataFrame({"gene_ids": np.asarray(plan.gene_ids, dtype=object)},
                       index=pd.Index(plan.gene_names.astype(str), name=None))
    rna["n_samples"] = _samples_per_gene(plan)  # samples that measured the gene
    atac = plan.peaks.copy()
    atac.index = atac.index.astype(str)
    return {"atac": atac, "rna": rna}


def _samples_per_gene(plan: SamplePlan) -> np.ndarray:
    counts = np.zeros(len(plan.gene_ids), np.int64)
    for gene_map in plan.gene_maps:
        counts[gene_map[gene_map >= 0]] += 1
    return counts


def write_store(plan: SamplePlan, records: list[dict], path: Path, client, show_progress: bool, overwrite: bool):
    """Assemble the staged units into the store at ``path`` and open it."""

    units = [u for record in records for u in record["units"]]
    rows = np.array([b["rows"] for record in records for b in record["blocks"]], np.int64)
    nnz = {m: np.array([b[m] for record in records for b in record["blocks"]], np.int64) for m in MODALITIES}
    n_obs = int(rows.sum())
    var = _vars(plan)
    store_chunk = chunk_cells_for(nnz["atac"].sum() / max(1, n_obs))
    with timed(f"ingest_samples: assembling {n_obs} cells from {len(units)} blocks"):
        with atomic_path(path, overwrite=overwrite, argument="path") as tmp, zarr_write_settings():
            root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            for name in MODALITIES:
                group = root.create_group(name)
                x_group, _, _ = create_count_arrays(group, n_obs, len(var[name]), np.dtype(plan.dtypes[name]),
                                                    int(nnz[name].sum()))
                x_group.create_array("indptr", shape=(n_obs + 1,), chunks=(_ZARR_ELEMENT_CHUNK,), dtype=np.int64,
                                     compressors=_compressors(), config=_ARRAY_CONFIG)
            _graph.compute(assemble_tasks(str(tmp), units, rows, nnz, _ZARR_ELEMENT_CHUNK), client, show_progress)
            for name in MODALITIES:
                write_modality_tables(root[name], name, _obs(plan, records, name), var[name], {}, store_chunk)
            attrs = store_attrs(n_obs, list(MODALITIES))
            attrs["p2g_samples"] = [{"sample": r["sample"], "n_cells": int(r["n_cells"]),
                                     "genes_absent": int(r["genes_absent"]),
                                     "atac": "counted" if plan.count_atac else "copied"} for r in records]
            attrs["p2g_peak_matrix"] = ({"ceiling": plan.ceiling, "counting_strategy": plan.counting_strategy}
                                        if plan.count_atac else None)
            root.attrs.update(attrs)
    logger.info("ingest_samples: stored %d cells x %d peaks x %d genes of %d samples in %s", n_obs, len(var["atac"]),
                len(var["rna"]), len(records), path)
    return open_store(path)
