"""Helpers of :func:`p2g_dask.tl.pseudobulk_with_fragments`: inputs, barcode matching, executors, BED.

Kept apart from ``pseudobulk.py`` so that module stays the graph and its docstring.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from p2g_dask._atomic import atomic_path
from p2g_dask._inputs import get_obs
from p2g_dask._logging import logger
from p2g_dask.io._fragment_cache import read_cache_file
from p2g_dask.io._sources import require_modality
from p2g_dask.io.fragments import BgzfWriter, write_fragment_table

# Tried in this order when obs_names carry the sample name (longest separators first).
_SEPARATORS = ("___", "__", "#", ":", "|", "_", "-", ".", "+")


def chrom_sizes_dict(chromsizes: Any) -> dict[str, int]:
    """Normalise chromosome sizes (dict, two-column file, DataFrame, Series or PyRanges) to a dict.

    Uses :func:`p2g_dask.io.read_chrom_sizes` (which also knows genome names such as
    ``"hg38"``) when it is there, and a local reader otherwise.

    Examples
    --------
    >>> chrom_sizes_dict(pd.DataFrame({"Chromosome": ["chr1"], "Start": [0], "End": [1000]}))
    {'chr1': 1000}
    """
    try:
        from p2g_dask.io.annotation import read_chrom_sizes
    except ImportError:
        sizes = _chrom_sizes_dict(chromsizes)
    else:
        try:
            sizes = read_chrom_sizes(chromsizes)
        except ValueError as err:
            raise ValueError(f"chromsizes: {err}") from None
    too_long = {c: n for c, n in sizes.items() if n >= 2**32}
    if too_long:
        raise ValueError(
            f"chromsizes: {dict(list(too_long.items())[:3])} are 2**32 bp or longer, which BigWig's 32-bit "
            "positions cannot hold; split those sequences or leave them out of chromsizes."
        )
    return sizes


def _chrom_sizes_dict(chromsizes: Any) -> dict[str, int]:
    arg = chromsizes
    if isinstance(chromsizes, (str, os.PathLike)):
        path = Path(chromsizes)
        if not path.is_file():
            raise FileNotFoundError(f"chromsizes={str(path)!r} does not exist; pass a two-column file or a dict.")
        chromsizes = pd.read_csv(path, sep=r"\s+", header=None, comment="#", usecols=[0, 1],
                                 names=["chrom", "size"], dtype={"chrom": str})
    if hasattr(chromsizes, "df") and hasattr(chromsizes, "Chromosome"):  # a PyRanges
        chromsizes = chromsizes.df
    if isinstance(chromsizes, pd.Series):
        chromsizes = chromsizes.to_dict()
    if isinstance(chromsizes, pd.DataFrame):
        cols = {c.lower(): c for c in chromsizes.columns}
        name = next((cols[c] for c in ("chromosome", "chrom", "contig", "chr") if c in cols), None)
        size = next((cols[c] for c in ("end", "size", "length", "len") if c in cols), None)
        if name is None or size is None:
            raise ValueError(
                f"chromsizes: a DataFrame needs Chromosome/End or chrom/size columns, found {list(chromsizes.columns)}."
            )
        chromsizes = dict(zip(chromsizes[name].astype(str), chromsizes[size]))
    if not isinstance(chromsizes, Mapping) or not chromsizes:
        raise ValueError(
            f"chromsizes={arg!r} is not usable: pass a dict {{chrom: length}}, a two-column file, "
            "a DataFrame or a PyRanges."
        )
    out = {}
    for chrom, size in chromsizes.items():
        if not float(size).is_integer() or int(size) <= 0:
            raise ValueError(f"chromsizes: length of {chrom!r} is {size!r}; lengths must be positive integers.")
        out[str(chrom)] = int(size)
    return out


def obs_of(input_data: Any, mod_atac: str = "atac") -> pd.DataFrame:
    """The cells' ``obs``: AnnData, MuData (``mod_atac``), a store path/object, or a DataFrame."""
    if isinstance(input_data, pd.DataFrame):
        return input_data
    if hasattr(input_data, "mod") and hasattr(input_data, "obs"):  # MuData
        require_modality(mod_atac, input_data.mod, argument="mod_atac", where="input_data")
        return input_data.mod[mod_atac].obs
    if hasattr(input_data, "obs") and hasattr(input_data, "obs_names") and hasattr(input_data, "X"):
        return input_data.obs
    # Stores, store paths and .h5ad/.h5mu paths (obs only); errors name what is accepted.
    return get_obs(input_data, mod_atac=mod_atac)


def sample_table(obs: pd.DataFrame, *, cluster_key: str, sample_id_col: str | None, samples: list[str]) -> pd.DataFrame:
    """Cells with a group: ``group`` (categorical, observed groups only) and ``sample``, by obs name."""
    if cluster_key not in obs.columns:
        raise ValueError(f"cluster_key={cluster_key!r} is not an obs column; available: {list(obs.columns)[:20]}.")
    group = obs[cluster_key]
    has_group = group.notna().to_numpy()
    if isinstance(group.dtype, pd.CategoricalDtype):
        order = [str(c) for c in group.cat.categories if (group == c).any()]
    else:
        order = sorted(map(str, pd.unique(group[has_group])))
    if not order:
        raise ValueError(f"cluster_key={cluster_key!r} has no non-missing values; no group to make a BigWig for.")
    if sample_id_col is None:
        if len(samples) > 1:
            raise ValueError(
                f"path_to_fragments has {len(samples)} files; pass sample_id_col, the obs column that names "
                "each cell's key in path_to_fragments."
            )
        sample = pd.Series(samples[0], index=obs.index)
    else:
        if sample_id_col not in obs.columns:
            raise ValueError(f"sample_id_col={sample_id_col!r} is not an obs column; available: {list(obs.columns)[:20]}.")
        sample = obs[sample_id_col].astype(str)
        unknown = sorted(set(sample[has_group]) - set(samples))
        if unknown:
            raise ValueError(
                f"sample_id_col={sample_id_col!r} has samples {unknown[:10]} that are not keys of "
                f"path_to_fragments ({samples}); add their files or fix the keys."
            )
    cells = pd.DataFrame(
        {"group": pd.Categorical(group[has_group].astype(str), categories=order),
         "sample": sample[has_group].to_numpy()},
        index=obs.index[has_group].astype(str),
    )
    logger.info("%d cells in %d groups of %r", len(cells), len(order), cluster_key)
    return cells


def _strip_rules(sample: str):
    yield "as is", lambda names: names
    for sep in _SEPARATORS:
        pre, suf = f"{sample}{sep}", f"{sep}{sample}"
        yield f"prefix {pre!r}", lambda names, pre=pre: [n[len(pre):] if n.startswith(pre) else None for n in names]
        yield f"suffix {suf!r}", lambda names, suf=suf: [n[: -len(suf)] if n.endswith(suf) else None for n in names]


def match_barcodes(cells: pd.DataFrame, sample: str, file_barcodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map a file's barcodes to group codes (-1: not a grouped cell of this sample) and obs names.

    The obs names of the sample's cells are matched to the file's barcodes as they are, or with
    the sample name stripped as a prefix or suffix; the rule that matches most cells wins.
    """
    mine = cells[cells["sample"] == sample]
    names = list(mine.index)
    index = pd.Index(file_barcodes)
    best = ("as is", np.full(len(names), -1))
    for rule, strip in _strip_rules(sample):
        raw = strip(names)
        hits = index.get_indexer([r if r is not None else "\0" for r in raw])
        if (hits >= 0).sum() > (best[1] >= 0).sum():
            best = (rule, hits)
    rule, hits = best
    dtype = np.int16 if len(cells["group"].cat.categories) < 2**15 else np.int32
    lookup = np.full(len(file_barcodes), -1, dtype=dtype)
    obs_names = np.full(len(file_barcodes), "", dtype=object)
    found = hits >= 0
    lookup[hits[found]] = mine["group"].cat.codes.to_numpy()[found]
    obs_names[hits[found]] = np.asarray(names, dtype=object)[found]
    if not found.any() and names:
        logger.warning(
            "sample %r: none of its %d cells is in its fragment file (obs names like %r, file barcodes like %r)",
            sample, len(names), names[0], file_barcodes[0] if len(file_barcodes) else None,
        )
    else:
        logger.info("sample %r: %d of %d cells found in the fragment file (obs names matched %s)",
                    sample, int(found.sum()), len(names), rule)
    return lookup, obs_names


@contextlib.contextmanager
def run_tasks(executor: str, *, n_jobs: int, client: Any = None, show_progress: bool = True) -> Iterator:
    """Yield ``run(list of delayed) -> list of results`` for the chosen executor."""
    import dask

    if executor == "dask":
        import distributed

        own = None
        if client is None:
            try:
                client = distributed.get_client()
            except ValueError:
                # One in-process worker with n_jobs threads: the parquet reads, sorts, pileup
                # kernels and deflate all release the GIL, and threads share the pileups instead
                # of sending them between processes (30 M fragments: 7 s instead of 14 s cached).
                # tcp on 127.0.0.1 (not inproc://, whose dashboard link shows the public IP).
                cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=n_jobs, processes=False,
                                                   protocol="tcp://", host="127.0.0.1",
                                                   dashboard_address="127.0.0.1:0")
                own = client = distributed.Client(cluster)
                logger.info("started a LocalCluster (1 in-process worker, %d threads); dashboard %s", n_jobs,
                            client.dashboard_link)

        def run(tasks):
            futures = client.compute(tasks)
            if show_progress:
                distributed.progress(futures)
            return client.gather(futures)

        try:
            yield run
        finally:
            if own is not None:
                cluster = own.cluster
                own.close()
                cluster.close()
        return

    scheduler = {"thread": "threads", "process": "processes", "synchronous": "sync"}[executor]

    def run(tasks):
        from dask.diagnostics import ProgressBar

        with ProgressBar() if show_progress else contextlib.nullcontext():
            return list(dask.compute(*tasks, scheduler=scheduler, num_workers=n_jobs))

    yield run


def write_group_bed(path: str, per_chrom: list, group_code: int, overwrite: bool) -> dict:
    """Write one group's fragments (as in the files, barcodes as obs names) to a bgzip BED file."""
    n = 0
    with atomic_path(path, overwrite=overwrite, argument="bed_path") as tmp, BgzfWriter(tmp, level=1) as fh:
        for chrom, length, sources in per_chrom:
            parts = []
            for file, lookup, names in sources:
                data = read_cache_file(file, ("start", "end", "barcode_id", "count"))
                keep = (lookup[data["barcode_id"]] == group_code) & (data["end"] <= length)
                parts.append((data["start"][keep], data["end"][keep], names[data["barcode_id"][keep]],
                              data["count"][keep]))
            if not parts or not sum(p[0].size for p in parts):
                continue
            start, end, barcode, count = (np.concatenate([p[i] for p in parts]) for i in range(4))
            order = np.argsort(start, kind="stable")
            table = pa.table({"chrom": pa.array(np.full(order.size, chrom, dtype=object), pa.string()),
                              "start": start[order].astype(np.int64), "end": end[order].astype(np.int64),
                              "barcode": pa.array(barcode[order], pa.string()), "count": count[order]})
            write_fragment_table(table, fh)
            n += order.size
    return {"kind": "bed", "path": str(path), "n_fragments": n}
