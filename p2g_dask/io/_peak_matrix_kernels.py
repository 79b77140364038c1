"""Peak matrix kernels: one chromosome's fragments of a block of cells -> cells x peaks counts.

Pure numpy/numba, no Dask. Coordinates are 0-based half-open, as in the 10x fragment file and
a BED: a fragment ``[start, end)`` has its two Tn5 insertions at ``start`` and ``end - 1`` (the
``start + 1`` and ``end`` of ArchR's 1-based ranges), and an insertion at ``p`` is in the peak
``[s, e)`` when ``s <= p < e``. Peaks may overlap (a user's BED): an insertion counts in every
peak that holds it, as ArchR's ``findOverlaps`` does.

Counting strategies (the names are SnapATAC2's ``counting_strategy``):

- ``"insertion"``: every insertion counts 1 in every peak holding it (ArchR's
  ``addPeakMatrix``; a fragment with both ends in one peak counts 2),
- ``"paired-insertion"``: a fragment counts 1 in every peak holding either of its insertions
  (SnapATAC2's default; both ends in one peak count 1),
- ``"fragment"``: a fragment counts 1 in every peak it overlaps (``s < end`` and ``start < e``;
  a fragment spanning a peak with both ends outside counts too).

The (cell, peak) count is then capped at ``ceiling`` (ArchR: 4; <= 0: no cap).
"""

from __future__ import annotations

import numba
import numpy as np

#: counting_strategy name -> kernel code.
STRATEGIES = {"insertion": 0, "paired-insertion": 1, "fragment": 2}


@numba.njit(cache=True, nogil=True, inline="always")
def _last_start_at_or_before(peak_start, p):  # pragma: no cover - numba
    """Index of the last peak with ``start <= p`` (-1: none); peaks sorted by start."""
    lo, hi = 0, peak_start.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if peak_start[mid] <= p:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@numba.njit(cache=True, nogil=True, inline="always")
def _walk(peak_start, peak_end, reach, lo, hi, skip_from, out_peak, out_cell, c, n, write):  # pragma: no cover
    """Add the peaks ``[s, e)`` with ``s <= hi`` and ``e > lo`` as hits of cell ``c`` (from index ``n``),
    except peaks starting at or before ``skip_from``; returns the new number of hits.

    Walking back from the last peak starting at or before ``hi``, ``reach[j]`` (the largest end
    of peaks ``0..j``, peaks sorted by start) stops the walk at the first peak that cannot reach
    ``lo``: one step for non-overlapping peaks.
    """
    j = _last_start_at_or_before(peak_start, hi)
    while j >= 0 and reach[j] > lo:
        if peak_end[j] > lo and peak_start[j] > skip_from:
            if write:
                out_peak[n] = j
                out_cell[n] = c
            n += 1
        j -= 1
    return n


@numba.njit(cache=True, nogil=True)
def _hits(start, end, peak_start, peak_end, reach, strategy, out_peak, out_cell, cell, write):  # pragma: no cover
    """Walk every fragment once; count (``write`` False) or write its (peak, cell) hits."""
    n = 0
    none = np.int64(-1)  # no peak start is <= -1: nothing skipped
    for i in range(start.size):
        a = np.int64(start[i])
        b = np.int64(end[i]) - 1  # the second insertion; the fragment's last base
        if strategy == 2:  # fragment: every peak overlapping [a, b]
            n = _walk(peak_start, peak_end, reach, a, b, none, out_peak, out_cell, cell[i], n, write)
            continue
        n = _walk(peak_start, peak_end, reach, a, a, none, out_peak, out_cell, cell[i], n, write)
        # paired-insertion: a peak already holding the first insertion (start <= a, and a <= b < end)
        # is not counted again for the second.
        n = _walk(peak_start, peak_end, reach, b, b, a if strategy == 1 else none, out_peak, out_cell, cell[i], n,
                  write)
    return n


@numba.njit(cache=True, nogil=True)
def capped_counts_by_key(hit_key, hit_cell, n_keys, n_cells, ceiling):  # pragma: no cover - numba
    """Counts of (key, cell) pairs as CSR by key: ``(ptr, cell, count)``, capped at ``ceiling`` (<= 0: none).

    A counting sort of the pairs by key (a peak, a tile), then per key a per-cell counter over
    the touched cells only; cells come out in first-seen order within a key. The shared core of
    the peak matrix and of tile counts (gene scores).
    """
    ptr = np.zeros(n_keys + 1, np.int64)
    for k in range(hit_key.size):
        ptr[hit_key[k] + 1] += 1
    for j in range(n_keys):
        ptr[j + 1] += ptr[j]
    fill = ptr[:-1].copy()
    by_key = np.empty(hit_key.size, np.int32)
    for k in range(hit_key.size):
        j = hit_key[k]
        by_key[fill[j]] = hit_cell[k]
        fill[j] += 1
    counter = np.zeros(n_cells, np.int32)
    touched = np.empty(max(1, n_cells), np.int32)
    out_ptr = np.zeros(n_keys + 1, np.int64)
    out_cell = np.empty(hit_key.size, np.int32)
    out_count = np.empty(hit_key.size, np.int32)
    m = 0
    for j in range(n_keys):
        n_touched = 0
        for k in range(ptr[j], ptr[j + 1]):
            c = by_key[k]
            if counter[c] == 0:
                touched[n_touched] = c
                n_touched += 1
            counter[c] += 1
        for t in range(n_touched):
            c = touched[t]
            v = counter[c]
            counter[c] = 0
            if ceiling > 0 and v > ceiling:
                v = ceiling
            out_cell[m] = c
            out_count[m] = v
            m += 1
        out_ptr[j + 1] = m
    return out_ptr, out_cell[:m], out_count[:m]


@numba.njit(cache=True, nogil=True)
def _by_cell(key_ptr, key_cell, key_count, n_cells):  # pragma: no cover - numba
    """CSR by key -> CSR by cell (a counting sort by cell keeps the keys sorted in each row)."""
    m = key_cell.size
    row_nnz = np.zeros(n_cells + 1, np.int64)
    for k in range(m):
        row_nnz[key_cell[k] + 1] += 1
    for c in range(n_cells):
        row_nnz[c + 1] += row_nnz[c]
    fill_row = row_nnz[:-1].copy()
    indices = np.empty(m, np.int32)
    data = np.empty(m, np.int32)
    for j in range(key_ptr.size - 1):
        for k in range(key_ptr[j], key_ptr[j + 1]):
            c = key_cell[k]
            indices[fill_row[c]] = j
            data[fill_row[c]] = key_count[k]
            fill_row[c] += 1
    return data, indices, row_nnz


def count_peaks(start, end, cell, n_cells: int, peak_start, peak_end, *, ceiling: int | None = 4,
                counting_strategy: str = "insertion") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells x peaks counts of one chromosome as CSR arrays ``(data, indices, indptr)`` (int32 data).

    Parameters
    ----------
    start, end, cell
        The fragments (0-based half-open) and each one's cell row (``0 <= cell < n_cells``).
    n_cells
        Rows of the result.
    peak_start, peak_end
        The chromosome's peaks (0-based half-open), sorted by start (then end); may overlap.
    ceiling
        Cap of each (cell, peak) count; None: no cap.
    counting_strategy
        ``"insertion"`` (ArchR), ``"paired-insertion"`` (SnapATAC2's default) or ``"fragment"``;
        see the module docstring.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> peaks = np.array([100, 300]), np.array([200, 400])
    >>> start, end = np.array([110, 150, 190]), np.array([160, 350, 390])  # inside; across; across
    >>> d, i, p = count_peaks(start, end, np.zeros(3, np.int32), 1, *peaks)
    >>> sp.csr_matrix((d, i, p), shape=(1, 2)).toarray().tolist()
    [[4, 2]]
    >>> d, i, p = count_peaks(start, end, np.zeros(3, np.int32), 1, *peaks, counting_strategy="paired-insertion")
    >>> sp.csr_matrix((d, i, p), shape=(1, 2)).toarray().tolist()
    [[3, 2]]
    """
    code = STRATEGIES[counting_strategy]
    peak_start = np.ascontiguousarray(peak_start, dtype=np.int64)
    peak_end = np.ascontiguousarray(peak_end, dtype=np.int64)
    reach = np.maximum.accumulate(peak_end) if peak_end.size else peak_end
    start = np.ascontiguousarray(start)
    end = np.ascontiguousarray(end)
    cell = np.ascontiguousarray(cell, dtype=np.int32)
    empty = np.empty(0, np.int32)
    n_hits = _hits(start, end, peak_start, peak_end, reach, code, empty, empty, cell, False)
    hit_peak, hit_cell = np.empty(n_hits, np.int32), np.empty(n_hits, np.int32)
    _hits(start, end, peak_start, peak_end, reach, code, hit_peak, hit_cell, cell, True)
    by_peak = capped_counts_by_key(hit_peak, hit_cell, int(peak_start.size), int(n_cells),
                                   -1 if ceiling is None else int(ceiling))
    return _by_cell(*by_peak, int(n_cells))
