"""Write coverage runs to a BigWig, safely.

The runs are checked first (sorted, non-overlapping, finite, inside the chromosome), written by
:func:`p2g_dask.io._bigwig_writer.write_runs_bigwig` (numpy arrays straight to the bbi format,
much faster than pybigtools' writer, which takes one Python tuple per interval) under a
temporary name, re-opened with pybigtools and compared with what was meant to be written, and
only then renamed to the final path.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pybigtools

from p2g_dask._atomic import atomic_path
from p2g_dask.io.annotation import read_chrom_sizes
from p2g_dask.io._bigwig_writer import runs_summary, write_runs_bigwig
from p2g_dask.tl.pseudobulk._coverage import Runs

WRITERS = ("p2g", "pybigtools")


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


def bigwig_chrom_sizes(chrom_sizes) -> dict[str, int]:
    """Chromosome sizes for a BigWig (:func:`p2g_dask.io.read_chrom_sizes` forms), checked to fit
    BigWig's 32-bit positions.

    Examples
    --------
    >>> bigwig_chrom_sizes({"chr1": 2**32})
    Traceback (most recent call last):
    ...
    ValueError: chrom_sizes: {'chr1': 4294967296} are 2**32 bp or longer, which BigWig's 32-bit positions cannot hold; split those sequences or leave them out of chrom_sizes.
    """
    sizes = read_chrom_sizes(chrom_sizes, argument="chrom_sizes")
    too_long = {c: n for c, n in sizes.items() if n >= 2**32}
    if too_long:
        raise ValueError(
            f"chrom_sizes: {dict(list(too_long.items())[:3])} are 2**32 bp or longer, which BigWig's 32-bit "
            "positions cannot hold; split those sequences or leave them out of chrom_sizes."
        )
    return sizes


def write_bigwig(
    path: str | os.PathLike,
    chrom_sizes: Mapping[str, int],
    runs_by_chrom: Mapping[str, Runs],
    *,
    scale: float = 1.0,
    overwrite: bool = False,
    writer: str = "p2g",
) -> dict:
    """Write runs (values multiplied by ``scale``) to a BigWig and check the written file.

    Only chromosomes with runs go into the file's header (readers treat the others as
    uncovered). When there are no runs at all, every chromosome gets one interval of value 0,
    so that the file still lists the genome and reads as zeros.

    Parameters
    ----------
    path
        Output ``.bw`` file, written under a temporary name and renamed when checked.
    chrom_sizes
        Chromosome lengths (the file lists chromosomes in sorted name order, as UCSC's tools do).
    runs_by_chrom
        :class:`~p2g_dask.tl.pseudobulk._coverage.Runs` per chromosome (missing chromosomes have none).
    scale
        Factor applied to every value (e.g. ``1e6 / total`` for CPM).
    overwrite
        Replace an existing ``path``.
    writer
        ``'p2g'``: :func:`~p2g_dask.io._bigwig_writer.write_runs_bigwig` (numpy; zoom levels as
        ``bedGraphToBigWig`` picks them). ``'pybigtools'``: pybigtools' writer, one Python tuple
        per interval (about 6x slower at base-pair resolution); the same intervals and values.

    Returns
    -------
    dict
        ``n_intervals``, ``bases_covered``, ``sum`` (value x length) of what was written and
        ``zoom_levels`` (the zoom reductions, in bases).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bw"
    >>> r = Runs(np.array([10]), np.array([20]), np.array([3]))
    >>> write_bigwig(p, {"chr1": 100}, {"chr1": r}, scale=0.5)["sum"]
    15.0
    """
    if writer not in WRITERS:
        raise ValueError(f"writer={writer!r} is not known; use one of {WRITERS}.")
    chroms = {str(c): int(n) for c, n in chrom_sizes.items()}
    unknown = set(runs_by_chrom) - set(chroms)
    if unknown:
        raise RuntimeError(f"coverage runs for chromosomes not in chrom_sizes: {sorted(unknown)[:5]}")
    present = [c for c in chroms if c in runs_by_chrom and len(runs_by_chrom[c].start)]
    for c in present:
        _check_runs(c, runs_by_chrom[c], chroms[c])
    if present:
        runs = {c: (runs_by_chrom[c].start, runs_by_chrom[c].end, _scaled(runs_by_chrom[c].value, scale))
                for c in present}
        header = {c: chroms[c] for c in present}
        min_width = int(min(int((r.end - r.start).min()) for r in (runs_by_chrom[c] for c in present)))
    else:
        runs = {c: (np.array([0]), np.array([n]), np.array([0.0])) for c, n in chroms.items()}
        header, min_width = chroms, 1
    path = Path(path)
    with atomic_path(path, overwrite=overwrite, argument="bigwig_path") as tmp:
        if writer == "p2g":
            summary = write_runs_bigwig(tmp, header, runs, min_width=min_width)
        else:
            _write_with_pybigtools(tmp, header, runs)
            summary = runs_summary(runs)
        zooms = _verify(tmp, header, summary["bases_covered"], summary["sum"])
    return {"n_intervals": summary["n_intervals"], "bases_covered": summary["bases_covered"], "sum": summary["sum"],
            "zoom_levels": zooms}


def _write_with_pybigtools(path: Path, header: dict[str, int], runs: dict) -> None:
    names = sorted(header, key=str.encode)
    # Python ints/floats only: numpy scalars make pybigtools write a corrupt file.
    items = itertools.chain.from_iterable(
        zip(itertools.repeat(c), runs[c][0].tolist(), runs[c][1].tolist(), runs[c][2].astype(np.float64).tolist())
        for c in names)
    pybigtools.open(str(path), "w").write({c: header[c] for c in names}, items)


def _scaled(value: np.ndarray, scale: float) -> np.ndarray:
    # Values are stored as float32; scale in float64 first so CPM is not rounded twice.
    return (value * scale).astype(np.float32) if scale != 1.0 else value.astype(np.float32)


def _verify(path: Path, chroms: dict[str, int], covered: int, total: float) -> list[int]:
    """Check the written file's chromosomes, bases covered and sum; return its zoom reductions."""
    try:
        bw = pybigtools.open(str(path))
        header = dict(bw.chroms())
        summary = bw.info()["summary"]
        zooms = list(bw.zooms())
        bw.close()
    except Exception as err:  # pybigtools raises its own error types
        raise RuntimeError(f"pybigtools wrote an unreadable BigWig ({path.name}): {err}") from err
    if header != chroms:
        raise RuntimeError(f"the written BigWig {path.name} has chromosomes {header}, expected {chroms}")
    if int(summary["basesCovered"]) != covered or not np.isclose(summary["sum"], total, rtol=1e-5, atol=1e-3):
        raise RuntimeError(
            f"the written BigWig {path.name} covers {summary['basesCovered']} bases with sum "
            f"{summary['sum']}, expected {covered} and {total}: the writer failed to write it."
        )
    return zooms
