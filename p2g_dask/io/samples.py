"""``ingest_samples``: many Cell Ranger ARC samples into one store, as parallel tasks, resumable.

An atlas is tens to hundreds of samples, each with its own counts and its own peak set. This
module reads a table of them and writes one p2g store (the layout every tool reads: ``atac/``
and ``rna/`` CSR ``X`` chunked by cell rows, obs/var, crc32c per chunk), never holding more
than one block of one sample in a task and only small tables on the client:

1. ``p2g-ingest-scan`` (one per sample): cells, genes, peaks; the client aligns genes by id
   (the union, or ``genes=``) and picks the peak set: the samples' own when they are all the
   same and ``peaks=None`` (counts copied), otherwise ``peaks=`` or the merged set
   (:func:`p2g_dask.io.peak_sets.merge_peaks`), counted from the fragments;
2. per sample not yet finished: ``p2g-ingest-fragcache`` and ``p2g-ingest-barcodes`` (when
   counting), ``p2g-ingest-block`` (one per block of cells: its RNA, and its ATAC copied or
   counted from the fragment cache chromosome by chromosome, written as a staged unit),
   ``p2g-ingest-sample`` (obs, then the sample's marker, written last);
3. ``p2g-ingest-assemble``: the units copied into the store's chunks (see
   :mod:`p2g_dask.io._sample_assemble` for why two steps), then obs/var/attributes, and the
   store is renamed into place.

Work lives in ``.p2g-ingest-<store name>/`` beside the store until the store is complete; an
interrupted ingest rerun with the same table continues at the first sample without a valid
marker (a marker records a fingerprint of the sample's files and of every choice that shapes
its rows, so a changed input or option rewrites that sample).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import dask
import numpy as np
from dask.base import tokenize

from p2g_dask import _graph
from p2g_dask._logging import logger, timed
from p2g_dask.io import _sample_tasks as tasks_mod
from p2g_dask.io._sample_plan import SamplePlan, make_plan, read_sample_table
from p2g_dask.io._sample_store import write_store
from p2g_dask.io.blocks import row_bounds
from p2g_dask.io.fragment_blocks import safe_name
from p2g_dask.io.fragment_cache import build_fragment_cache
from p2g_dask.io.peak_counts import chrom_peaks

__all__ = ["ingest_samples", "read_sample_table"]


def ingest_samples(
    table: Any,
    path: str | os.PathLike,
    *,
    peaks: Any = None,
    genes: Any = None,
    min_samples: int = 1,
    ceiling: int | None = 4,
    counting_strategy: str = "insertion",
    chunk_cells: int = 10_000,
    cache_fragments: str | os.PathLike | None = None,
    client: Any = None,
    overwrite: bool = False,
    show_progress: bool = False,
) -> Any:
    """Write many multiome samples (10x h5 or h5ad pairs + fragment files) into one store.

    Parameters
    ----------
    table
        A DataFrame or a TSV path with columns ``sample``, ``fragments`` and either ``h5`` (a
        10x multiome ``filtered_feature_bc_matrix.h5``) or ``atac`` and ``rna`` (``.h5ad``
        paths); one row per sample. Relative paths in a TSV are relative to its folder.
    path
        The output store folder (``.zarr``).
    peaks
        The one peak set (BED path, DataFrame or ``chr:start-end`` names): ATAC is then counted
        from every sample's fragments over it. None: the samples' own peaks when they are all the
        same (counts copied), else their merge (union of overlapping peaks), counted.
    genes
        Gene ids to keep, in this order (10x features ``id``, or ``var['gene_ids']`` / the var
        names of an h5ad). None: the union of all samples' genes in order of first appearance.
        A gene absent in a sample is zeros there (logged per sample).
    min_samples
        With merged peaks: keep merged peaks seen in at least this many samples.
    ceiling, counting_strategy
        The counting rule (see :func:`p2g_dask.io.peak_counts.peak_matrix`): ArchR's
        ``addPeakMatrix`` by default (insertions, capped at 4).
    chunk_cells
        Cells per task block (writing and counting); bounds a task's memory.
    cache_fragments
        Folder for the samples' parquet fragment caches (kept and reused); None: inside the work
        folder, removed at the end.
    client
        A ``distributed.Client``; default: the current client, else dask's default scheduler.
    overwrite
        Replace an existing store at ``path``.
    show_progress
        Show progress bars.

    Returns
    -------
    MultiomeStore
        The opened store: obs names ``<sample>_<barcode>``, ``obs['sample']``, ``obs['barcode']``;
        cells of a sample are contiguous rows, samples in table order.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> # Not run here: it needs Cell Ranger ARC outputs (tests/test_ingest_samples.py simulates them).
    >>> store = p2g.io.ingest_samples("samples.tsv", "atlas.zarr")  # doctest: +SKIP
    >>> store.atac.obs["sample"].value_counts()  # doctest: +SKIP
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"path={str(path)!r} already exists; pass overwrite=True (CLI: --overwrite) to "
                              "replace it, or choose another path.")
    if isinstance(chunk_cells, bool) or not isinstance(chunk_cells, (int, np.integer)) or chunk_cells < 1:
        raise ValueError(f"chunk_cells={chunk_cells!r} must be a positive integer (cells per task).")
    rows = read_sample_table(table)
    client = _graph.current_client(client)
    work = path.with_name(f".p2g-ingest-{path.name}")
    (work / "samples").mkdir(parents=True, exist_ok=True)
    try:
        store = _ingest(rows, path, work, client, peaks=peaks, genes=genes, min_samples=min_samples, ceiling=ceiling,
                        counting_strategy=counting_strategy, chunk_cells=int(chunk_cells),
                        cache_fragments=cache_fragments, overwrite=overwrite, show_progress=show_progress)
    except BaseException:
        if not any((work / "samples").glob("*.done.json")):  # nothing finished: nothing to resume
            shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return store


def _ingest(rows: list[dict], path: Path, work: Path, client, *, peaks, genes, min_samples, ceiling,
            counting_strategy, chunk_cells, cache_fragments, overwrite, show_progress):
    """Scan, plan, write the samples, assemble the store (the steps of :func:`ingest_samples`)."""

    with timed(f"ingest_samples: {len(rows)} samples into {path}"):
        with timed("ingest_samples: scanning the samples"):
            scans = _graph.compute([dask.delayed(tasks_mod.scan_sample, pure=False)(
                row, dask_key_name=f"p2g-ingest-scan-{tokenize(row)}") for row in rows], client, show_progress)
        plan = make_plan(rows, scans, peaks=peaks, genes=genes, min_samples=min_samples, ceiling=ceiling,
                         counting_strategy=counting_strategy, chunk_cells=chunk_cells)
        del scans
        cache_root = Path(cache_fragments) if cache_fragments is not None else work / "fragment_cache"
        records = _write_samples(plan, work, cache_root, client, show_progress)
        return write_store(plan, records, path, client, show_progress, overwrite)


def _sample_graph(plan: SamplePlan, i: int, folder: Path, cache_root: Path, peaks_by_chrom: Any) -> Any:
    """The delayed ``p2g-ingest-sample`` task of sample ``i`` and everything it needs."""

    row, info = plan.rows[i], plan.scans[i]
    token = plan.fingerprints[i]
    blocks = row_bounds(info.n_cells, plan.chunk_cells)
    sample_plan = dask.delayed(plan.sample_maps(i), name=f"p2g-ingest-plan-{token}")
    counting = None
    if plan.count_atac:
        cache = dask.delayed(build_fragment_cache, pure=False)(
            row["fragments"], cache_root / safe_name(row["sample"]), dask_key_name=f"p2g-ingest-fragcache-{token}")
        lookup = dask.delayed(tasks_mod.sample_lookup, pure=True)(row, cache,
                                                                 dask_key_name=f"p2g-ingest-barcodes-{token}")
        counting = (cache, lookup, peaks_by_chrom, plan.ceiling, plan.counting_strategy)
    units, written = [], []
    for b, (first, stop) in enumerate(blocks):
        unit = str(folder / f"block-{b:06d}")
        units.append(unit)
        written.append(dask.delayed(tasks_mod.write_block, pure=True)(
            row, unit, first, stop, sample_plan, counting, dask_key_name=f"p2g-ingest-block-{token}-{b}"))
    marker = folder.with_name(folder.name + ".done.json")
    return dask.delayed(tasks_mod.finish_sample, pure=True)(
        row, str(folder), str(marker), token, units, written, plan.genes_absent[i],
        dask_key_name=f"p2g-ingest-sample-{token}")


def _write_samples(plan: SamplePlan, work: Path, cache_root: Path, client, show_progress: bool) -> list[dict]:
    """Every sample's staged units and marker: finished samples are skipped, the rest written."""

    records: list[dict | None] = []
    todo = []
    # The peak set enters the graph once, shared by every sample's block tasks.
    peaks_by_chrom = dask.delayed({c: (s, e) for c, (s, e, _) in chrom_peaks(plan.peaks).items()},
                                  name=f"p2g-ingest-peaks-{tokenize(plan.fingerprints)}")
    for i, row in enumerate(plan.rows):
        folder = work / "samples" / safe_name(row["sample"])
        record = tasks_mod.read_marker(folder.with_name(folder.name + ".done.json"), plan.fingerprints[i])
        if record is not None and all(Path(u).is_dir() for u in record["units"]):
            records.append(record)
            continue
        shutil.rmtree(folder, ignore_errors=True)  # a half-written sample is written again
        folder.mkdir(parents=True)
        records.append(None)
        todo.append((i, _sample_graph(plan, i, folder, cache_root, peaks_by_chrom)))
    done = len(plan.rows) - len(todo)
    if done:
        logger.info("ingest_samples: %d of %d samples already written (resuming); writing %d", done, len(plan.rows),
                    len(todo))
    if todo:
        with timed(f"ingest_samples: writing {len(todo)} sample(s)"):
            results = _graph.compute([task for _, task in todo], client, show_progress)
        for (i, _), record in zip(todo, results):
            records[i] = record
    return records
