"""Reading a block of cells from fragment caches: the task-side reads shared by the counting tools.

Every tool that counts fragments per cell out of core (gene scores, the peak matrix, ingest of
many samples) runs one task per chromosome x block of cells over the parquet fragment caches
(:mod:`p2g_dask.io._fragment_cache`). The pieces they share live here, in ``io``:

- :func:`fragment_files`: ``{sample: fragment file}`` from a path or a dict, every file checked;
- :func:`cell_lookups`: per sample, ``lookup[barcode_id] -> cell row`` (-1: not a cell), the
  cells' names matched to each file's barcodes as they are or with the sample name as a
  prefix/suffix (:func:`p2g_dask.io._barcodes.match_barcodes`);
- :func:`read_block_fragments`: one chromosome's fragments of the cells ``first:stop``, read
  one 1 M-row parquet row group at a time, so a task keeps only its block's fragments.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd


def fragment_files(path_to_fragments: Any, *, argument: str = "path_to_fragments") -> dict[str, Path]:
    """``{sample: Path}`` from a fragment file or a ``{sample: file}`` dict, every file checked.

    A single path is keyed by its name up to the first dot. Missing, empty, damaged or
    wrong-format files raise before any work (:func:`p2g_dask.io.fragments.check_fragment_file`).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s1.tsv"
    >>> _ = p.write_text("chr1\\t10\\t60\\tAAAC-1\\t1\\n")
    >>> list(fragment_files(p))
    ['s1']
    """
    from p2g_dask.io.fragments import check_fragment_file

    if isinstance(path_to_fragments, (str, os.PathLike)):
        p = Path(path_to_fragments)
        path_to_fragments = {p.name.split(".")[0] or "sample": p}
    if not isinstance(path_to_fragments, Mapping) or not path_to_fragments:
        raise ValueError(f"{argument}={path_to_fragments!r} must be a fragment file or a non-empty "
                         "{sample: fragment file} dict.")
    files = {str(k): Path(v) for k, v in path_to_fragments.items()}
    missing = {k: str(v) for k, v in files.items() if not v.is_file()}
    if missing:
        raise FileNotFoundError(f"{argument}: these files do not exist: {missing}; check the paths.")
    for path in files.values():
        check_fragment_file(path)
    return files


def safe_name(name: str) -> str:
    """A file-name-safe form of a sample or group name (letters, digits, ``._+-``).

    Examples
    --------
    >>> safe_name("donor 1/run#2")
    'donor_1_run_2'
    """
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("._") or "sample"


def cell_lookups(obs_names: pd.Index, sample: np.ndarray, barcodes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per sample, ``lookup[barcode_id] -> row of the cell in obs_names`` (-1: not one of the cells).

    Parameters
    ----------
    obs_names
        The cells' names, one per row.
    sample
        Each cell's sample (a key of ``barcodes``).
    barcodes
        ``{sample: the fragment file's barcodes}`` (``FragmentCache.barcodes()``).

    Examples
    --------
    >>> lk = cell_lookups(pd.Index(["s1#A", "s1#C"]), np.array(["s1", "s1"]), {"s1": np.array(["C", "B", "A"])})
    >>> lk["s1"].tolist()
    [1, -1, 0]
    """
    from p2g_dask.io._barcodes import match_barcodes

    # match_barcodes maps barcodes to "group" codes: one group per cell makes the code the cell row.
    n = len(obs_names)
    table = pd.DataFrame({"group": pd.Categorical.from_codes(np.arange(n), categories=pd.RangeIndex(n)),
                          "sample": np.asarray(sample)}, index=pd.Index(obs_names).astype(str))
    return {s: match_barcodes(table, s, np.asarray(b))[0].astype(np.int64) for s, b in barcodes.items()}


@numba.njit(cache=True, nogil=True)
def _select_cells(start, end, barcode_id, lookup, first, stop):  # pragma: no cover - numba
    """The fragments whose cell row ``lookup[barcode_id]`` is in ``[first, stop)``, rows made local."""
    n = 0
    for i in range(barcode_id.size):
        c = lookup[barcode_id[i]]
        if c >= first and c < stop:
            n += 1
    out_start, out_end, out_cell = np.empty(n, start.dtype), np.empty(n, end.dtype), np.empty(n, np.int32)
    n = 0
    for i in range(barcode_id.size):
        c = lookup[barcode_id[i]]
        if c >= first and c < stop:
            out_start[n], out_end[n], out_cell[n] = start[i], end[i], c - first
            n += 1
    return out_start, out_end, out_cell


def read_block_fragments(sources, first: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fragments of cells ``first <= cell < stop`` from one chromosome of every cache.

    Parameters
    ----------
    sources
        ``(parquet file of the chromosome, lookup)`` pairs, one per cache; ``lookup[barcode_id]``
        is the cell's row (-1: not a cell).
    first, stop
        The block of cell rows.

    Returns
    -------
    tuple of numpy.ndarray
        ``start``, ``end`` (uint32) and ``cell`` (int32, relative to ``first``), in file order.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from p2g_dask.io._fragment_cache import build_fragment_cache
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "f.tsv").write_text("chr1\\t10\\t60\\tA\\t1\\nchr1\\t20\\t80\\tB\\t1\\n")
    >>> cache = build_fragment_cache(d / "f.tsv", d / "cache")
    >>> start, end, cell = read_block_fragments([(cache.chrom_file("chr1"), np.array([-1, 0]))], 0, 1)
    >>> start.tolist(), cell.tolist()
    ([20], [0])
    """
    import pyarrow.parquet as pq

    starts, ends, cells = [], [], []
    for file, lookup in sources:
        parquet = pq.ParquetFile(file, memory_map=True)
        for group in range(parquet.num_row_groups):  # the cache writes 1 M-row groups
            batch = parquet.read_row_group(group, columns=["start", "end", "barcode_id"], use_threads=False)
            start, end, cell = _select_cells(batch.column(0).to_numpy(), batch.column(1).to_numpy(),
                                             batch.column(2).to_numpy(), np.asarray(lookup), first, stop)
            starts.append(start)
            ends.append(end)
            cells.append(cell)
    if not starts:
        return np.empty(0, np.uint32), np.empty(0, np.uint32), np.empty(0, np.int32)
    if len(starts) == 1:
        return starts[0], ends[0], cells[0]
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(cells)
