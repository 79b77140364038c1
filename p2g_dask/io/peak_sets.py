"""One peak set for many samples: read a BED, or merge the samples' own peak sets.

Peaks called per sample never line up (``chr1:1000-1500`` in one sample, ``chr1:1020-1490`` in
the next), so an atlas needs one common set before it can count. Two ways in:

- a BED the user gives (:func:`read_peaks`), used as it is;
- the samples' own peaks merged (:func:`merge_peaks`): the **union rule** of Signac's
  ``reduce`` (GenomicRanges ``reduce``, ``min.gapwidth = 1``): on each chromosome, intervals that
  overlap or touch (0-based half-open ``[a, b)`` and ``[c, d)`` with ``c <= b``) are joined
  into one ``[min start, max end)``, repeatedly, until no two intervals overlap or touch.

The peaks from Cell Ranger ARC (``peaks.bed`` or the ``Peaks`` features ``chr1:start-end`` of
``filtered_feature_bc_matrix.h5``) carry no summit or score, so ArchR's and SnapATAC2's rules
(fixed-width peaks around summits, iterative removal of the weaker of two overlapping peaks)
cannot be applied to them; docs/atlas.md compares the three rules on a worked example.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._errors import InputFileNotFoundError, check_input_file, reading
from p2g_dask._logging import logger
from p2g_dask.io.peaks import peak_table

PEAK_COLUMNS = ("chrom", "start", "end")


def chrom_order_key(name: str) -> tuple:
    """Karyotype order: ``chr1..chr22`` numerically, then X, Y, M/MT, then the rest by name.

    Examples
    --------
    >>> sorted(["chr10", "chrX", "chr2", "chrUn_1"], key=chrom_order_key)
    ['chr2', 'chr10', 'chrX', 'chrUn_1']
    """
    core = re.sub(r"^chr", "", str(name), flags=re.IGNORECASE)
    if core.isdigit():
        return (0, int(core), "")
    special = {"X": 1, "Y": 2, "M": 3, "MT": 3}
    return (1, special[core.upper()], "") if core.upper() in special else (2, 0, str(name))


def sort_peaks(peaks: pd.DataFrame) -> pd.DataFrame:
    """``chrom, start, end`` (plus any other columns) sorted by karyotype, start, end; new index."""
    ranks = {c: i for i, c in enumerate(sorted(pd.unique(peaks["chrom"]), key=chrom_order_key))}
    order = np.lexsort((peaks["end"].to_numpy(), peaks["start"].to_numpy(), peaks["chrom"].map(ranks).to_numpy()))
    return peaks.iloc[order].reset_index(drop=True)


def peak_names(peaks: pd.DataFrame) -> pd.Index:
    """``chrom:start-end`` names (the 10x form, 0-based half-open as in the BED).

    Examples
    --------
    >>> peak_names(pd.DataFrame({"chrom": ["chr1"], "start": [10], "end": [20]})).tolist()
    ['chr1:10-20']
    """
    return pd.Index(peaks["chrom"].astype(str) + ":" + peaks["start"].astype(str) + "-" + peaks["end"].astype(str))


def read_peaks(peaks: Any, *, argument: str = "peaks") -> pd.DataFrame:
    """A peak set as a clean table ``chrom, start, end`` (0-based half-open), karyotype-sorted.

    Parameters
    ----------
    peaks
        A BED path (plain or gzip; the first three columns are used, ``#``/``track``/``browser``
        lines skipped), a DataFrame with ``chrom, start, end`` (or the aliases of
        :func:`p2g_dask.io.peak_table`), or a sequence of peak names (``chr1:100-200``).
    argument
        The argument name used in errors.

    Returns
    -------
    pandas.DataFrame
        ``chrom`` (str), ``start``, ``end`` (int64), one row per distinct peak, sorted by
        karyotype then start; the index is the ``chrom:start-end`` name.

    Examples
    --------
    >>> read_peaks(["chr2:50-80", "chr1:10-20", "chr1:10-20"]).index.tolist()
    ['chr1:10-20', 'chr2:50-80']
    """
    if isinstance(peaks, (str, os.PathLike)):
        table = _read_bed(Path(peaks), argument)
    elif isinstance(peaks, pd.DataFrame):
        table = peak_table(peaks)
    elif isinstance(peaks, Sequence) or isinstance(peaks, (np.ndarray, pd.Index)):
        table = peak_table(list(peaks))
    else:
        raise TypeError(f"{argument}={type(peaks).__name__} is not a peak set; pass a BED path, a DataFrame with "
                        "chrom/start/end or a list of 'chr1:100-200' names.")
    if table.empty:
        raise ValueError(f"{argument} holds no peaks; pass a BED with at least one 'chrom start end' line.")
    table = pd.DataFrame({c: table[c].to_numpy() for c in PEAK_COLUMNS})
    table["chrom"] = table["chrom"].astype(str)
    table = sort_peaks(table.drop_duplicates(list(PEAK_COLUMNS)))
    table.index = peak_names(table)
    return table


def _read_bed(path: Path, argument: str) -> pd.DataFrame:
    if not path.exists():
        raise InputFileNotFoundError(argument, path, "does not exist", "check the path of the BED file")
    check_input_file(path, argument=argument, kind="text")
    with reading(path, argument=argument, kind="text"):
        raw = pd.read_csv(path, sep="\t", header=None, comment="#", usecols=[0, 1, 2], dtype={0: str},
                          names=["chrom", "start", "end"], skip_blank_lines=True)
    raw = raw[~raw["chrom"].str.startswith(("track", "browser"))]
    start, end = (pd.to_numeric(raw[c], errors="coerce") for c in ("start", "end"))
    bad = start.isna() | end.isna()
    if bad.any():
        row = raw[bad].iloc[0]
        raise ValueError(f"{argument}={str(path)!r}: {int(bad.sum())} lines have non-integer start/end, e.g. "
                         f"{row.tolist()}; a BED line is 'chrom<TAB>start<TAB>end' (0-based, half-open).")
    return peak_table(pd.DataFrame({"chrom": raw["chrom"].to_numpy(), "start": start.to_numpy(np.int64),
                                    "end": end.to_numpy(np.int64)}, index=np.arange(len(raw)).astype(str)))


def union_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join overlapping or touching half-open intervals of one chromosome (Signac's ``reduce``).

    Returns the merged ``(start, end)`` arrays, sorted, and for each input interval the index of
    the merged interval that holds it.

    Examples
    --------
    >>> s, e, of = union_intervals(np.array([0, 5, 10, 30]), np.array([6, 10, 12, 40]))
    >>> s.tolist(), e.tolist(), of.tolist()
    ([0, 30], [12, 40], [0, 0, 0, 1])
    """
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    order = np.lexsort((ends, starts))
    s, e = starts[order], ends[order]
    # A new merged interval begins where the start is past every earlier end (a gap of >= 1 bp).
    reach = np.maximum.accumulate(e)
    new = np.ones(s.size, bool)
    new[1:] = s[1:] > reach[:-1]
    group = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    merged_start = s[first]
    merged_end = np.maximum.reduceat(e, first) if s.size else e
    of = np.empty(s.size, np.int64)
    of[order] = group
    return merged_start, merged_end, of


def merge_peaks(peak_sets: Mapping[str, Any] | Sequence[Any], *, min_samples: int = 1) -> pd.DataFrame:
    """One peak set from the samples' own: the union of overlapping or touching peaks.

    The rule of Signac's ``reduce`` (GenomicRanges ``reduce``): on each chromosome, peaks of all
    samples that overlap or touch (``[a, b)`` then ``[c, d)`` with ``c <= b``) are joined into
    one ``[min start, max end)``, repeatedly. A merged peak keeps ``n_samples``, the number of
    samples with a peak inside it; ``min_samples`` drops merged peaks seen in fewer samples
    (ArchR keeps peaks reproduced in at least 2 of its pseudo-replicates; 1 keeps all).

    Parameters
    ----------
    peak_sets
        ``{sample: peaks}`` or a list of peak sets; each as :func:`read_peaks` accepts (BED path,
        DataFrame, list of ``chr:start-end`` names).
    min_samples
        Keep merged peaks holding peaks of at least this many samples.

    Returns
    -------
    pandas.DataFrame
        ``chrom, start, end, n_samples``, karyotype-sorted, indexed by ``chrom:start-end``.

    Examples
    --------
    >>> merged = merge_peaks({"s1": ["chr1:100-600", "chr1:1000-1500"],
    ...                       "s2": ["chr1:550-900", "chr1:1600-2000"]})
    >>> merged.index.tolist(), merged["n_samples"].tolist()
    (['chr1:100-900', 'chr1:1000-1500', 'chr1:1600-2000'], [2, 1, 1])
    """
    items = list(peak_sets.items()) if isinstance(peak_sets, Mapping) else list(enumerate(peak_sets))
    if not items:
        raise ValueError("peak_sets is empty; pass one peak set per sample.")
    if isinstance(min_samples, bool) or not isinstance(min_samples, (int, np.integer)) or not 1 <= min_samples <= len(items):
        raise ValueError(f"min_samples={min_samples!r} must be an integer from 1 to the number of samples ({len(items)}).")
    tables = []
    for i, (name, peaks) in enumerate(items):
        table = read_peaks(peaks, argument=f"peak_sets[{name!r}]")
        tables.append(pd.DataFrame({"chrom": table["chrom"].to_numpy(), "start": table["start"].to_numpy(),
                                    "end": table["end"].to_numpy(), "sample": i}))
    every = pd.concat(tables, ignore_index=True)
    parts = []
    for chrom, part in every.groupby("chrom", sort=False):
        start, end, of = union_intervals(part["start"].to_numpy(), part["end"].to_numpy())
        pairs = np.unique(np.stack([of, part["sample"].to_numpy()]), axis=1)
        n_samples = np.bincount(pairs[0], minlength=start.size)
        parts.append(pd.DataFrame({"chrom": chrom, "start": start, "end": end, "n_samples": n_samples}))
    merged = sort_peaks(pd.concat(parts, ignore_index=True))
    n_all = len(merged)
    merged = merged[merged["n_samples"] >= min_samples].reset_index(drop=True)
    merged.index = peak_names(merged)
    logger.info("merged %d peaks of %d samples into %d peaks (union of overlapping or touching peaks%s)",
                len(every), len(items), len(merged),
                f"; {n_all - len(merged)} seen in fewer than {min_samples} samples dropped" if min_samples > 1 else "")
    return merged
