"""Per-group coverage BigWigs (and fragment BED files) from 10x fragment files, as Dask tasks.

Graph: one ``p2g-fragcache-*`` task per fragment file (parse once into a parquet cache by
chromosome), one ``p2g-split-*`` task per chromosome that reads it from every cache once and
splits its fragments by group, then one ``p2g-pileup-*`` task per (group, chromosome) that
piles up that group's fragments into runs, and one
``p2g-bigwig-*`` task per group that normalises the runs and writes the BigWig (``p2g-bed-*``
for the optional BED files). Group and chromosome names go into the token, never the prefix, so
the dashboard shows one progress bar per step.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
from dask.base import tokenize

from p2g_dask import _graph
from p2g_dask._deprecations import argument_aliases
from p2g_dask._epione import accepts_verbose
from p2g_dask._atomic import TMP_MARKER, _remove, check_overwrite
from p2g_dask._checkpoint import as_checkpoint, checkpointed
from p2g_dask._logging import logger, timed
from p2g_dask.io.fragment_cache import FragmentCache, build_fragment_cache, read_cache_file
from p2g_dask.io.fragments import fragment_files
from p2g_dask.tl.pseudobulk._bigwig import write_bigwig
from p2g_dask.tl.pseudobulk._coverage import coverage_runs
from p2g_dask.io.inputs import get_obs
from p2g_dask._variables import params_token
from p2g_dask._report import reported
from p2g_dask.io.barcodes import match_barcodes
from p2g_dask.io.fragment_blocks import safe_name
from p2g_dask.tl.pseudobulk._bigwig import bigwig_chrom_sizes
from p2g_dask.tl.pseudobulk._cell_groups import sample_table
from p2g_dask.tl.pseudobulk._params import EXECUTORS, STRATEGIES, PseudobulkParams  # noqa: F401 - public names
from p2g_dask.tl.pseudobulk._group_bed import write_group_bed

# epione's names (its tutorial: input_data=, chromsizes=, cluster_key=, path_to_fragments=) work as they are.
@argument_aliases(input_data="data", chromsizes="chrom_sizes", cluster_key="groupby", path_to_fragments="fragments",
                  random_state="seed")
@accepts_verbose
@reported
def pseudobulk_with_fragments(
    data: Any,
    *,
    chrom_sizes: Any,
    groupby: str,
    fragments: Mapping[str, str | os.PathLike] | str | os.PathLike,
    bigwig_path: str | os.PathLike,
    bed_path: str | os.PathLike | None = None,
    bigwig_strategy: str = "cutsite",
    normalize_bigwig: bool = True,
    cache_fragments: str | os.PathLike | None = None,
    executor: str = "dask",
    n_jobs: int = 1,
    balance_clusters: bool = False,
    sample_id_col: str | None = None,
    show_progress: bool | None = None,
    shift: tuple[int, int] = (0, 0),
    bin_size: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    client: Any = None,
    mod_atac: str = "atac",
    checkpoint: str | os.PathLike | None = None,
    bigwig_writer: str = "p2g",
    report: Any = None,
) -> dict[str, str]:
    """Write one coverage BigWig per cell group from 10x fragment files.

    Parameters
    ----------
    data
        The cells: an AnnData (its ``obs``), a MuData (``mod[mod_atac].obs``), a p2g store path
        or object (its ATAC ``obs``), or an ``obs`` DataFrame. ``obs_names`` are the barcodes,
        optionally with the sample name as prefix or suffix (``s1_AAAC-1``, ``AAAC-1___s1``).
    chrom_sizes
        Chromosome lengths: a dict, a two-column file (``chrom  length``), a DataFrame
        (``Chromosome/Start/End`` or ``chrom/size``) or a PyRanges. Fragments on other
        chromosomes, or that run past a chromosome's end, are skipped and counted in the log.
    groupby
        ``obs`` column with the groups. Cells with a missing group are left out.
    fragments
        ``{sample: fragment file}`` (gzip, bgzip or plain 10x ``chrom, start, end, barcode,
        count``, ``#`` header lines allowed), or one file. Every line counts as one fragment
        (the count column, PCR duplicates, is not used), as in ArchR and SnapATAC2.
    bigwig_path
        Folder for ``<group>.bw`` (group names made file-safe).
    bed_path
        Optional folder for ``<group>.bed.gz`` (bgzip): the group's fragments as in the files
        (unshifted), barcodes as in ``obs_names``, on chromosomes of ``chrom_sizes``.
    bigwig_strategy
        ``'cutsite'``: each fragment ``[start, end)`` (0-based, half-open) gives two 1-bp Tn5
        insertions, at ``start`` and at ``end - 1``. ``'fragment'``: every base of the fragment is
        covered.
    normalize_bigwig
        True: CPM, coverage x 1e6 / the group's total insertions (``'cutsite'``) or fragments
        (``'fragment'``), counted after the chromosome filter. False: raw counts.
    cache_fragments
        Folder for the parquet cache of each fragment file (``<folder>/<sample>/``), reused while
        the file's path, size and mtime are unchanged, rebuilt otherwise. None (or epione's
        ``False``): a temporary cache inside ``bigwig_path``, deleted at the end.
    executor
        ``'dask'``: the current ``distributed`` client (or ``client``), else a
        ``LocalCluster(n_workers=1, threads_per_worker=n_jobs, processes=False)`` closed at
        the end (the heavy steps release the GIL, and threads share the pileups);
        ``'thread'`` / ``'process'``: dask's local schedulers with ``n_jobs`` workers;
        ``'synchronous'``: one thread, for debugging. Workers must see the files and folders.
    n_jobs
        Workers for the local cluster or scheduler.
    balance_clusters
        Down-sample every group to the cell count of the smallest group (seeded by ``seed``).
    sample_id_col
        ``obs`` column naming each cell's key in ``fragments``; needed with several files.
    show_progress
        Show a progress bar while the graph runs (None: the dask config ``p2g.show-progress``,
        True unless set).
    shift
        ``(left, right)`` added to every fragment's start and end before the pileup. The default
        ``(0, 0)`` is right for Cell Ranger ATAC/ARC fragment files, which are already
        Tn5-adjusted (start +4, end -5 from the alignment); use ``(4, -5)`` only for fragments
        taken straight from alignments. Fragments left empty by the shift are skipped.
    bin_size
        1 = base-pair resolution; larger sums the coverage in fixed bins (fewer intervals).
    seed
        Seed of the down-sampling (``numpy.random.default_rng``; epione's ``random_state=``).
    overwrite
        Replace existing BigWig/BED files; otherwise an existing one is an error.
    client
        A ``distributed.Client`` to use with ``executor='dask'``.
    mod_atac
        MuData modality with the ATAC cells.
    checkpoint
        Folder keeping each (group, chromosome) pileup, keyed by the fragment files, the cells'
        groups and the parameters: a rerun after a crash (with ``overwrite=True``) loads the
        finished pileups and computes only the missing ones (see docs/reliability.md).
    bigwig_writer
        ``'p2g'``: p2g_dask's numpy BigWig writer (fast; UCSC-style zoom levels).
        ``'pybigtools'``: pybigtools' writer (one Python tuple per interval, about 6x slower at
        base-pair resolution). Both files hold the same intervals and values, and both are
        re-opened with pybigtools and checked before they get their final name.

    report
        A path (e.g. ``"out/report.html"``): write a run report of this call there (stages,
        memory per worker over time, spilled bytes, parameters, versions) and Dask's performance
        report beside it (with a ``distributed`` client); see docs/report.md.
    verbose
        epione's: True shows this call's progress (the ``p2g_dask`` logger's INFO records, on
        stderr when logging shows none), False only its warnings, None (default) leaves logging as
        configured. ``show_progress`` is the progress bar.

    Returns
    -------
    dict
        ``{group: path of its BigWig}``, in group order. A group whose cells have no fragments
        gets a valid BigWig of zeros (value 0 over every chromosome) and a ``UserWarning``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from p2g_dask.datasets import simulate_multiome, simulate_fragments
    >>> sim = simulate_multiome(n_cells=60, n_peaks=300, n_genes=40, n_linked_genes=5, seed=0)
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> frags = simulate_fragments(sim.atac, out / "fragments.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=0)
    >>> bws = pseudobulk_with_fragments(sim.atac, chrom_sizes=sim.chrom_sizes, groupby="lineage",
    ...     fragments={"sim": frags}, bigwig_path=out / "bw", executor="synchronous",
    ...     show_progress=False)
    >>> sorted(bws) == sorted(sim.atac.obs["lineage"].unique())
    True
    """
    if isinstance(cache_fragments, bool):  # epione's: False keeps no cache; True (beside the file) has no folder
        if cache_fragments:
            raise ValueError("cache_fragments=True (epione: a cache beside each fragment file) is not supported; "
                             "pass a folder for the caches, or None for a temporary one.")
        cache_fragments = None
    params = PseudobulkParams(
        groupby=groupby, sample_id_col=sample_id_col, balance_clusters=balance_clusters, seed=seed,
        bigwig_strategy=bigwig_strategy, shift=shift, bin_size=bin_size, normalize_bigwig=normalize_bigwig,
        bigwig_writer=bigwig_writer, executor=executor, n_jobs=n_jobs,
    )
    chrom_sizes = bigwig_chrom_sizes(chrom_sizes)
    files = fragment_files(fragments, argument="fragments")
    obs = get_obs(data, mod_atac=mod_atac)
    cells = sample_table(obs, groupby=groupby, sample_id_col=sample_id_col, samples=list(files))
    if balance_clusters:
        cells = _balance(cells, seed)
    groups = list(cells["group"].cat.categories)
    names = _file_names(groups)
    bigwig_dir = Path(bigwig_path)
    bw_files = {g: bigwig_dir / f"{names[g]}.bw" for g in groups}
    bed_files = {g: Path(bed_path) / f"{names[g]}.bed.gz" for g in groups} if bed_path is not None else {}
    for p in [*bw_files.values(), *bed_files.values()]:
        check_overwrite(p, overwrite, argument="bed_path" if p.suffix == ".gz" else "bigwig_path")
    bigwig_dir.mkdir(parents=True, exist_ok=True)
    cache_names = _file_names(list(files), argument="fragments")
    tmp_cache = None
    if cache_fragments is None:
        tmp_cache = Path(tempfile.mkdtemp(prefix=f"{TMP_MARKER}fragcache-", dir=bigwig_dir))
    cache_root = Path(cache_fragments) if cache_fragments is not None else tmp_cache
    try:
        with _graph.executor(executor, n_jobs=n_jobs, client=client, progress=show_progress) as run:
            with timed("pseudobulk: fragment caches"):
                cache_tasks = [
                    dask.delayed(build_fragment_cache, pure=False)(
                        path, cache_root / cache_names[sample],
                        dask_key_name=f"p2g-fragcache-{tokenize(sample, str(path), str(cache_root))}",
                    )
                    for sample, path in files.items()
                ]
                caches = dict(zip(files, run(cache_tasks)))
            lookups = {s: match_barcodes(cells, s, caches[s].barcodes()) for s in files}
            with timed(f"pseudobulk: {len(groups)} group BigWigs ({bigwig_strategy}, bin_size={bin_size})"):
                tasks = _tasks(groups, bw_files, bed_files, caches, lookups, chrom_sizes, params,
                               overwrite=overwrite, checkpoint=as_checkpoint(checkpoint))
                stats = run(tasks)
        # Reads the cache (off-chromosome counts), so before a temporary cache is removed.
        _report(stats, groups, caches, lookups, chrom_sizes, bigwig_strategy)
    finally:
        if tmp_cache is not None:
            _remove(tmp_cache)
    return {g: str(bw_files[g]) for g in groups}


def _file_names(groups: list[str], argument: str = "groupby") -> dict[str, str]:
    names = {g: safe_name(g, fallback="group") for g in groups}
    seen: dict[str, str] = {}
    for g, n in names.items():
        if n.lower() in seen:
            raise ValueError(
                f"{argument}: {seen[n.lower()]!r} and {g!r} give the same file name {n!r}; "
                "rename one of them."
            )
        seen[n.lower()] = g
    return names


def _balance(cells: pd.DataFrame, seed: int) -> pd.DataFrame:
    sizes = cells["group"].value_counts()
    sizes = sizes[sizes > 0]
    n_min = int(sizes.min())
    rng = np.random.default_rng(seed)
    keep = []
    for g in cells["group"].cat.categories:
        rows = np.flatnonzero((cells["group"] == g).to_numpy())
        keep.append(np.sort(rng.choice(rows, size=min(n_min, rows.size), replace=False)))
    logger.info("balance_clusters: down-sampled every group to %d cells (seed=%d)", n_min, seed)
    return cells.iloc[np.sort(np.concatenate(keep))]


def _split_task(sources, n_groups):
    """Read one chromosome of every cache once; return each group's (start, end) arrays."""
    starts, ends, codes = [], [], []
    for file, lookup in sources:
        data = read_cache_file(file)
        code = lookup[data["barcode_id"]]
        keep = code >= 0
        starts.append(data["start"][keep])
        ends.append(data["end"][keep])
        codes.append(code[keep])
    start, end, code = (np.concatenate(x) for x in (starts, ends, codes))
    # A stable sort by group keeps file order (sorted by start) within each group.
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(n_groups + 1))
    return [(start[order[lo:hi]], end[order[lo:hi]]) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _coverage_task(split, group_code, chrom, chrom_length, strategy, shift, bin_size):
    start, end = split[group_code]
    runs, units, skipped = coverage_runs(start, end, strategy=strategy, chrom_length=chrom_length,
                                         shift=shift, bin_size=bin_size)
    return {"chrom": chrom, "runs": runs, "units": units, "n_fragments": int(start.size) - skipped,
            "n_skipped": skipped}


def _bigwig_task(path, chrom_sizes, coverages, normalize, overwrite, writer="p2g"):
    units = sum(c["units"] for c in coverages)
    scale = 1e6 / units if normalize and units > 0 else 1.0
    written = write_bigwig(path, chrom_sizes, {c["chrom"]: c["runs"] for c in coverages if len(c["runs"].start)},
                           scale=scale, overwrite=overwrite, writer=writer)
    return {"kind": "bigwig", "path": str(path), "units": units, "scale": scale,
            "n_fragments": sum(c["n_fragments"] for c in coverages),
            "n_skipped": sum(c["n_skipped"] for c in coverages), **written}


def _tasks(groups, bw_files, bed_files, caches: dict[str, FragmentCache], lookups, chrom_sizes,
           params: PseudobulkParams, *, overwrite, checkpoint=None):
    strategy, shift, bin_size = params.bigwig_strategy, params.shift, params.bin_size
    normalize, writer = params.normalize_bigwig, params.bigwig_writer
    # The barcode -> group lookups become graph keys, so each is sent to a worker once.
    lookup_keys = {s: dask.delayed(lk, name=f"p2g-barcodes-{tokenize(lk)}") for s, (lk, _) in lookups.items()}
    names_keys = {s: dask.delayed(nm, name=f"p2g-barcodenames-{tokenize(nm)}") for s, (_, nm) in lookups.items()}
    cache_ids = {s: (c.manifest["source"], c.manifest["size"], c.manifest["mtime_ns"]) for s, c in caches.items()}
    chroms = [c for c in chrom_sizes if any(c in cache.chroms for cache in caches.values())]
    # One read of each chromosome serves all groups: p2g-split tasks feed the coverage tasks.
    splits = {}
    for chrom in chroms:
        sources = [(caches[s].chrom_file(chrom), lookup_keys[s]) for s in caches if chrom in caches[s].chroms]
        token = tokenize(chrom, [cache_ids[s] for s in caches], [lookups[s][0] for s in caches], len(groups))
        splits[chrom] = dask.delayed(_split_task, pure=True)(sources, len(groups), dask_key_name=f"p2g-split-{token}")
    tasks = []
    for code, group in enumerate(groups):
        coverages = []
        for chrom in chroms:
            # Every parameter field but those marked as not changing the pileups.
            token = tokenize(group, chrom, splits[chrom].key, chrom_sizes[chrom], params_token(params, "pileup"))
            pileup = dask.delayed(_coverage_task, pure=True)(
                splits[chrom], code, chrom, chrom_sizes[chrom], strategy, shift, bin_size,
                dask_key_name=f"p2g-pileup-{token}")
            # The token covers the fragment files (path, size, mtime), the groups and the parameters.
            coverages.append(checkpointed(pileup, checkpoint, checkpoint.key("pileup", token), "tree")
                             if checkpoint is not None else pileup)
        token = tokenize(group, str(bw_files[group]), [c.key for c in coverages], normalize, overwrite, writer)
        tasks.append(dask.delayed(_bigwig_task, pure=False)(
            str(bw_files[group]), chrom_sizes, coverages, normalize, overwrite, writer,
            dask_key_name=f"p2g-bigwig-{token}"))
        if group in bed_files:
            per_chrom = [(chrom, chrom_sizes[chrom],
                          [(caches[s].chrom_file(chrom), lookup_keys[s], names_keys[s])
                           for s in caches if chrom in caches[s].chroms]) for chrom in chroms]
            token = tokenize(group, str(bed_files[group]), per_chrom, [lookups[s][0] for s in caches])
            tasks.append(dask.delayed(write_group_bed, pure=False)(
                str(bed_files[group]), per_chrom, code, overwrite, dask_key_name=f"p2g-bed-{token}"))
    return tasks


def _report(stats, groups, caches, lookups, chrom_sizes, strategy) -> None:
    bw_stats = [s for s in stats if s["kind"] == "bigwig"]
    skipped_bounds = sum(s["n_skipped"] for s in bw_stats)
    off = {}
    for sample, cache in caches.items():
        lookup = lookups[sample][0]
        for chrom in cache.chroms:
            if chrom not in chrom_sizes:
                ids = read_cache_file(cache.chrom_file(chrom), ("barcode_id",))["barcode_id"]
                n = int(np.count_nonzero(lookup[ids] >= 0))
                if n:
                    off[chrom] = off.get(chrom, 0) + n
    if off:
        logger.warning("skipped %d fragments of grouped cells on %d chromosomes not in chrom_sizes: %s",
                       sum(off.values()), len(off), ", ".join(f"{c} ({n})" for c, n in list(off.items())[:10]))
    if skipped_bounds:
        logger.warning("skipped %d fragments that (after the shift) run past a chromosome end or are empty",
                       skipped_bounds)
    for group, s in zip(groups, bw_stats):
        logger.info("%s: %d fragments, %d %s, %d intervals -> %s", group, s["n_fragments"], s["units"],
                    "insertions" if strategy == "cutsite" else "fragments", s["n_intervals"], s["path"])
        if s["n_fragments"] == 0:
            warnings.warn(
                f"group {group!r} has no fragments on the chromosomes of chrom_sizes (are its barcodes in "
                f"the fragment files?); its BigWig {s['path']} holds zeros only.",
                UserWarning, stacklevel=3,
            )
