"""The tasks of :func:`p2g_dask.io.ingest_samples`, each on one sample (or one block of its cells).

Every task opens the sample's own files itself (a 10x ``filtered_feature_bc_matrix.h5``, or an
ATAC and an RNA ``.h5ad``), so nothing but paths and small tables travels through the graph and
a task's memory is one block of one sample:

- :func:`scan_sample` (``p2g-ingest-scan``): cells, genes (ids and names), peaks, dtypes;
- :func:`sample_lookup` (``p2g-ingest-barcodes``): the fragment file's barcodes -> cell rows;
- :func:`write_block` (``p2g-ingest-block``): a block of cells' RNA (genes aligned by id) and
  ATAC (copied, or counted from the fragments) written as a staged unit;
- :func:`finish_sample` (``p2g-ingest-sample``): the sample's obs tables and its marker, last.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from p2g_dask._atomic import atomic_path
from p2g_dask._logging import logger
from p2g_dask._variables import check_counts
from p2g_dask.io._sources import open_sources
from p2g_dask.io._write import _compressors
from p2g_dask.io.barcodes import common_cells
from p2g_dask.io.fragment_blocks import cell_lookups
from p2g_dask.io.peak_counts import count_block
from p2g_dask.io.peaks import peak_table

#: Marker format: a marker of another version is not trusted (the sample is written again).
MARKER_VERSION = 1
STAGED_ARRAYS = ("data", "indices", "row_nnz")


@dataclass(frozen=True)
class SampleInfo:
    """What the client needs of a sample to plan the store (small: no counts, no barcodes)."""

    sample: str
    n_cells: int
    gene_ids: np.ndarray
    gene_names: np.ndarray
    peaks: pd.DataFrame | None  # chrom, start, end in the file's column order; None: names not parseable
    atac_integer: bool
    rna_integer: bool


@contextlib.contextmanager
def open_sample(row: dict):
    """The sample's ATAC and RNA row sources and the rows of the cells both hold (ATAC order)."""

    if row.get("h5"):
        atac, rna, handles = open_sources(row["h5"], None)
    else:
        atac, rna, handles = open_sources(row["atac"], row["rna"])
    try:
        atac_names = pd.Index(atac.obs.index.astype(str))
        rna_names = pd.Index(rna.obs.index.astype(str))
        try:
            common = common_cells(atac_names, rna_names)
        except ValueError as err:
            raise ValueError(f"sample {row['sample']!r}: {err}") from None
        yield atac, rna, common, atac_names.get_indexer(common), rna_names.get_indexer(common)
    finally:
        for handle in handles:
            handle.close()


def _gene_ids(var: pd.DataFrame) -> np.ndarray:
    ids = var["gene_ids"] if "gene_ids" in var.columns else var.index
    return np.asarray(ids, dtype=object).astype(str)


def _is_integer(source, rows: np.ndarray) -> bool:
    probe = source.read_rows(np.sort(rows[: min(rows.size, 16)])) if rows.size else None
    return probe is None or np.issubdtype(probe.dtype, np.integer)


def scan_sample(row: dict) -> SampleInfo:
    """One task: the sample's cells, genes and peaks (``p2g-ingest-scan``)."""

    with open_sample(row) as (atac, rna, common, atac_rows, rna_rows):
        ids = _gene_ids(rna.var)
        duplicated = pd.Index(ids).duplicated()
        if duplicated.any():
            raise ValueError(f"sample {row['sample']!r}: {int(duplicated.sum())} duplicate gene ids, e.g. "
                             f"{ids[duplicated][0]!r}; genes are aligned across samples by id (10x features "
                             "'id', or var['gene_ids'] in an h5ad): make them unique.")
        try:
            table = peak_table(atac.var)
            # Compact (categorical chromosomes): the client holds every sample's peak coordinates.
            peaks = pd.DataFrame({"chrom": pd.Categorical(table["chrom"].to_numpy()),
                                  "start": table["start"].to_numpy(), "end": table["end"].to_numpy()})
        except ValueError:
            peaks = None
        return SampleInfo(row["sample"], int(common.size), ids, np.asarray(rna.var.index, dtype=object).astype(str),
                          peaks, _is_integer(atac, atac_rows), _is_integer(rna, rna_rows))


def sample_lookup(row: dict, cache) -> np.ndarray:
    """One task: ``lookup[barcode_id of the fragment file] -> cell row`` of the sample (``p2g-ingest-barcodes``)."""

    with open_sample(row) as (_, _, common, _, _):
        barcodes = cache.barcodes()
        lookup = cell_lookups(common, np.full(common.size, row["sample"], dtype=object), {row["sample"]: barcodes})
        lookup = lookup[row["sample"]].astype(np.int32)
    found = int((lookup >= 0).sum())
    if found == 0:
        raise ValueError(
            f"sample {row['sample']!r}: none of its {common.size} cells is in fragments={str(row['fragments'])!r} "
            f"(cells like {common[0]!r}, file barcodes like {barcodes[0] if len(barcodes) else None!r}); give the "
            "fragment file of this sample in the table's 'fragments' column.")
    if found < common.size:
        logger.warning("sample %r: %d of %d cells have no fragment in %s; their ATAC rows are empty",
                       row["sample"], common.size - found, common.size, row["fragments"])
    return lookup


def _rows_in_order(source, rows: np.ndarray) -> sp.csr_matrix:
    """``rows`` of a source in the given order (the readers want sorted rows)."""
    order = np.argsort(rows, kind="stable")
    block = source.read_rows(rows[order])
    return sp.csr_matrix(block[np.argsort(order, kind="stable")])


def _remap_columns(block: sp.csr_matrix, column_map: np.ndarray, n_vars: int) -> sp.csr_matrix:
    """Columns moved to ``column_map[column]`` (-1: dropped), rows' columns sorted, duplicates summed."""
    block = sp.csr_matrix(block)
    block.sum_duplicates()
    new = column_map[block.indices]
    keep = new >= 0
    row = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    out = sp.csr_matrix((block.data[keep], (row[keep], new[keep])), shape=(block.shape[0], n_vars))
    out.sum_duplicates()
    out.sort_indices()
    return out


def _write_unit(folder: Path, name: str, block: sp.csr_matrix, dtype: np.dtype) -> None:

    group = zarr.open_group(str(folder / name), mode="w", zarr_format=3)
    arrays = {"data": block.data.astype(dtype, copy=False), "indices": block.indices.astype(np.int32, copy=False),
              "row_nnz": np.diff(block.indptr).astype(np.int64)}
    for key, values in arrays.items():
        target = group.create_array(key, shape=values.shape, chunks=(2**20,), dtype=values.dtype,
                                    compressors=_compressors()[:1])
        if values.size:
            target[:] = values


def write_block(row: dict, unit: str, first: int, stop: int, plan: dict, counting: tuple | None = None) -> dict:
    """One task: cells ``first:stop`` of the sample as a staged unit ``unit/{atac,rna}`` (``p2g-ingest-block``).

    ``plan`` holds the sample's ``gene_map`` (sample gene -> store gene, -1: not kept), ``n_genes``,
    ``peak_map`` (copy mode: sample peak -> store peak), ``n_peaks`` and the store's dtypes.
    ``counting`` is ``(cache, lookup, {chrom: (starts, ends)}, ceiling, counting_strategy)`` when
    ATAC is counted from the fragments, here, chromosome by chromosome
    (:func:`p2g_dask.io.peak_counts.count_block`), so the task holds one block of one sample and
    no count waits in memory for its writer. Written under a temporary name and renamed: a unit
    is complete or absent.
    """

    with open_sample(row) as (atac, rna, _, atac_rows, rna_rows):
        rna_block = _remap_columns(_rows_in_order(rna, rna_rows[first:stop]), plan["gene_map"], plan["n_genes"])
        if counting is None:
            atac_block = _remap_columns(_rows_in_order(atac, atac_rows[first:stop]), plan["peak_map"], plan["n_peaks"])
    if counting is not None:
        cache, lookup, peaks_by_chrom, ceiling, strategy = counting
        atac_block = count_block([(cache, lookup)], peaks_by_chrom, first, stop, ceiling, strategy)
    blocks = {"atac": atac_block, "rna": rna_block}
    for name, block in blocks.items():
        check_counts(block, f"sample {row['sample']!r}: {name} counts contain", first_row=first)
        if np.dtype(plan["dtypes"][name]) == np.int32 and block.data.size and block.data.max() > np.iinfo(np.int32).max:
            raise ValueError(f"sample {row['sample']!r}: {name} counts exceed the int32 range; store them as float.")
    with atomic_path(Path(unit), overwrite=True, argument="unit") as tmp:
        tmp.mkdir(parents=True)
        for name, block in blocks.items():
            _write_unit(tmp, name, block, np.dtype(plan["dtypes"][name]))
    return {"rows": stop - first, "atac": int(atac_block.nnz), "rna": int(rna_block.nnz)}


def finish_sample(row: dict, folder: str, marker: str, fingerprint: str, units: list[str], results: list[dict],
                  genes_absent: int) -> dict:
    """One task, after all of a sample's blocks: its obs tables, then its marker (``p2g-ingest-sample``).

    The marker is written last and atomically: a sample with a valid marker is complete.
    """
    with open_sample(row) as (atac, rna, common, atac_rows, rna_rows):
        for name, source, rows in (("atac", atac, atac_rows), ("rna", rna, rna_rows)):
            obs = source.obs.iloc[rows].copy()
            obs.index = pd.Index(common.astype(str), name=None)
            obs = obs.drop(columns=[c for c in ("sample", "barcode") if c in obs.columns])
            obs.insert(0, "barcode", np.asarray(common, dtype=object).astype(str))
            with atomic_path(Path(folder) / f"obs_{name}.parquet", overwrite=True, argument="obs") as tmp:
                obs.to_parquet(tmp)
    record = {"version": MARKER_VERSION, "sample": row["sample"], "fingerprint": fingerprint,
              "n_cells": int(common.size), "units": units, "blocks": results, "genes_absent": int(genes_absent)}
    with atomic_path(Path(marker), overwrite=True, argument="marker") as tmp:
        tmp.write_text(json.dumps(record))
    logger.info("sample %r: %d cells written (%d genes absent, zeros)", row["sample"], common.size, genes_absent)
    return record


def read_marker(marker: Path, fingerprint: str) -> dict | None:
    """The marker's record when it is complete and made for ``fingerprint``; else None."""
    try:
        record = json.loads(Path(marker).read_text())
    except (OSError, ValueError):
        return None
    if record.get("version") != MARKER_VERSION or record.get("fingerprint") != fingerprint:
        return None
    return record
