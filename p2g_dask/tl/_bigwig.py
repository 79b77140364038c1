"""Write coverage runs to a BigWig with pybigtools, safely.

pybigtools' writer fails silently (it prints to stderr, returns None and leaves a small corrupt
file) on numpy scalars, unsorted or overlapping intervals, unknown chromosomes, ends past the
chromosome length and on an empty input. So the runs are checked first, passed as Python
ints/floats, written under a temporary name, re-opened and compared with what was meant to be
written, and only then renamed to the final path.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pybigtools

from p2g_dask._atomic import atomic_path
from p2g_dask.tl._coverage import Runs


def _check_runs(chrom: str, runs: Runs, length: int) -> None:
    s, e, v = runs
    if not (len(s) == len(e) == len(v)):
        raise RuntimeError(f"coverage runs of {chrom} have unequal lengths")
    if len(s) == 0:
        return
    if s[0] < 0 or e[-1] > length or np.any(e <= s) or np.any(s[1:] < e[:-1]) or not np.all(np.isfinite(v)):
        raise RuntimeError(
            f"coverage runs of {chrom} are not sorted, non-overlapping, finite intervals inside "
            f"[0, {length}]; this is a bug in p2g_dask, please report it."
        )


def write_bigwig(
    path: str | os.PathLike,
    chrom_sizes: Mapping[str, int],
    runs_by_chrom: Mapping[str, Runs],
    *,
    scale: float = 1.0,
    overwrite: bool = False,
) -> dict:
    """Write runs (values multiplied by ``scale``) to a BigWig and check the written file.

    Chromosomes are written in the order of ``chrom_sizes``. pybigtools puts only chromosomes
    with intervals into the header, so a chromosome without coverage is absent from the file
    (readers should treat it as zero). When there are no runs at all, every chromosome gets one
    interval of value 0, because pybigtools cannot write a BigWig without intervals (it leaves
    an unreadable file).

    Parameters
    ----------
    path
        Output ``.bw`` file, written under a temporary name and renamed when checked.
    chrom_sizes
        Chromosome lengths, in the order they should appear.
    runs_by_chrom
        :class:`~p2g_dask.tl._coverage.Runs` per chromosome (missing chromosomes have none).
    scale
        Factor applied to every value (e.g. ``1e6 / total`` for CPM).
    overwrite
        Replace an existing ``path``.

    Returns
    -------
    dict
        ``n_intervals``, ``bases_covered`` and ``sum`` (value x length) of what was written.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bw"
    >>> r = Runs(np.array([10]), np.array([20]), np.array([3]))
    >>> write_bigwig(p, {"chr1": 100}, {"chr1": r}, scale=0.5)["sum"]
    15.0
    """
    chroms = {str(c): int(n) for c, n in chrom_sizes.items()}
    unknown = set(runs_by_chrom) - set(chroms)
    if unknown:
        raise RuntimeError(f"coverage runs for chromosomes not in chromsizes: {sorted(unknown)[:5]}")
    present = [c for c in chroms if c in runs_by_chrom and len(runs_by_chrom[c].start)]
    for c in present:
        _check_runs(c, runs_by_chrom[c], chroms[c])
    if present:
        items = itertools.chain.from_iterable(_items(c, runs_by_chrom[c], scale) for c in present)
        n_intervals = sum(len(runs_by_chrom[c].start) for c in present)
        covered = sum(int((runs_by_chrom[c].end - runs_by_chrom[c].start).sum()) for c in present)
        # Sum of what the file holds: values are stored as float32.
        total = sum(
            float(((runs_by_chrom[c].end - runs_by_chrom[c].start)
                   * (runs_by_chrom[c].value * scale).astype(np.float32).astype(np.float64)).sum())
            for c in present
        )
    else:
        items = iter([(c, 0, n, 0.0) for c, n in chroms.items()])
        n_intervals, covered, total = len(chroms), sum(chroms.values()), 0.0
    path = Path(path)
    with atomic_path(path, overwrite=overwrite, argument="bigwig_path") as tmp:
        pybigtools.open(str(tmp), "w").write(chroms, items)
        _verify(tmp, {c: chroms[c] for c in present} if present else chroms, covered, total)
    return {"n_intervals": n_intervals, "bases_covered": covered, "sum": total}


def _items(chrom: str, runs: Runs, scale: float):
    # Python ints/floats only: numpy scalars make pybigtools write a corrupt file.
    values = (runs.value * scale).astype(np.float64) if scale != 1.0 else runs.value.astype(np.float64)
    return zip(itertools.repeat(chrom), runs.start.tolist(), runs.end.tolist(), values.tolist())


def _verify(path: Path, chroms: dict[str, int], covered: int, total: float) -> None:
    try:
        bw = pybigtools.open(str(path))
        header = dict(bw.chroms())
        summary = bw.info()["summary"]
        bw.close()
    except Exception as err:  # pybigtools raises its own error types
        raise RuntimeError(f"pybigtools wrote an unreadable BigWig ({path.name}): {err}") from err
    if header != chroms:
        raise RuntimeError(f"the written BigWig {path.name} has chromosomes {header}, expected {chroms}")
    if int(summary["basesCovered"]) != covered or not np.isclose(summary["sum"], total, rtol=1e-5, atol=1e-3):
        raise RuntimeError(
            f"the written BigWig {path.name} covers {summary['basesCovered']} bases with sum "
            f"{summary['sum']}, expected {covered} and {total}: pybigtools failed to write it."
        )
