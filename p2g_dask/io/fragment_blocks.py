"""Reading a block of cells from fragment caches: the task-side reads shared by the counting tools.

Every tool that counts fragments per cell out of core (gene scores, the peak matrix, ingest of
many samples) runs one task per chromosome x block of cells over the parquet fragment caches
(:mod:`p2g_dask.io.fragment_cache`). The pieces they share live here, in ``io``:

- :func:`cell_lookups`: per sample, ``lookup[barcode_id] -> cell row`` (-1: not a cell), the
  cells' names matched to each file's barcodes as they are or with the sample name as a
  prefix/suffix (:func:`p2g_dask.io.barcodes.match_barcodes`);
- :func:`read_block_fragments`: one chromosome's fragments of the cells ``first:stop``, read
  one 1 M-row parquet row group at a time, so a task keeps only its block's fragments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from p2g_dask.io.barcodes import match_barcodes


def safe_name(name: str, fallback: str = "sample") -> str:
    """A file-name-safe form of a sample or group name (letters, digits, ``._+-``); ``fallback``
    when nothing is left.

    Examples
    --------
    >>> safe_name("donor 1/run#2"), safe_name("//", fallback="group")
    ('donor_1_run_2', 'group')
    """
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("._") or fallback


def fragment_cells(cells: Any, caches: Mapping, sample_id_col: str | None) -> tuple[pd.DataFrame, np.ndarray]:
    """The cells a counting tool reports and each one's sample (a key of ``caches``).

    Parameters
    ----------
    cells
        None (every barcode of the files, named ``<sample>#<barcode>`` with several files), an
        ``obs`` DataFrame, an object with ``obs`` (AnnData, a store's modality) or cell names.
    caches
        ``{sample: FragmentCache}`` (their ``barcodes()``).
    sample_id_col
        The obs column naming each cell's sample; needed with several files.

    Returns
    -------
    (pandas.DataFrame, numpy.ndarray)
        The cells' obs (unique string names) and each cell's sample.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> caches = {"s1": SimpleNamespace(barcodes=lambda: np.array(["AAAC-1", "TTTG-1"]))}
    >>> obs, sample = fragment_cells(None, caches, None)
    >>> obs.index.tolist(), sample.tolist()
    (['AAAC-1', 'TTTG-1'], ['s1', 's1'])
    """
    samples = list(caches)
    if cells is None:
        barcodes = {s: caches[s].barcodes().astype(str) for s in samples}
        names = [b if len(samples) == 1 else np.char.add(f"{s}#", b) for s, b in barcodes.items()]
        sample = np.repeat(samples, [len(b) for b in barcodes.values()])
        return pd.DataFrame({"sample": sample}, index=pd.Index(np.concatenate(names))), sample
    if hasattr(cells, "obs"):
        obs = cells.obs
    elif isinstance(cells, pd.DataFrame):
        obs = cells
    else:
        obs = pd.DataFrame(index=pd.Index(np.asarray(list(cells)).astype(str)))
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    if obs.index.has_duplicates:
        raise ValueError(f"cells: {int(obs.index.duplicated().sum())} duplicate cell names; cells must be unique.")
    if sample_id_col is None:
        if len(samples) > 1:
            raise ValueError(f"fragments has {len(samples)} files; pass sample_id_col, the obs column naming "
                             "each cell's key in fragments.")
        return obs, np.full(len(obs), samples[0], dtype=object)
    if sample_id_col not in obs.columns:
        raise ValueError(f"sample_id_col={sample_id_col!r} is not an obs column; available: {list(obs.columns)[:20]}.")
    sample = obs[sample_id_col].astype(str).to_numpy()
    unknown = sorted(set(sample) - set(samples))
    if unknown:
        raise ValueError(f"sample_id_col={sample_id_col!r} has samples {unknown[:10]} that are not keys of fragments "
                         f"({samples}); add their files or fix the keys.")
    return obs, sample


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
    >>> from p2g_dask.io.fragment_cache import build_fragment_cache
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "f.tsv").write_text("chr1\\t10\\t60\\tA\\t1\\nchr1\\t20\\t80\\tB\\t1\\n")
    >>> cache = build_fragment_cache(d / "f.tsv", d / "cache")
    >>> start, end, cell = read_block_fragments([(cache.chrom_file("chr1"), np.array([-1, 0]))], 0, 1)
    >>> start.tolist(), cell.tolist()
    ([20], [0])
    """

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
