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


@numba.njit(cache=True, nogil=True)
def _hits(start, end, peak_start, peak_end, reach, strategy, out_peak, out_cell, cell, write):  # pragma: no cover
    """Walk every fragment once; count (``write`` False) or write its (peak, cell) hits.

    ``reach[j]`` is the largest end of peaks ``0..j`` (peaks sorted by start), so the walk back
    from the last peak starting at or before a position stops at the first peak that cannot
    reach it: one step for non-overlapping peaks.
    """
    n = 0
    for i in range(start.size):
        a = np.int64(start[i])
        b = np.int64(end[i]) - 1  # the second insertion; the fragment's last base
        if strategy == 2:  # fragment: every peak overlapping [a, b]
            j = _last_start_at_or_before(peak_start, b)
            while j >= 0 and reach[j] > a:
                if peak_end[j] > a:
                    if write:
                        out_peak[n] = j
                        out_cell[n] = cell[i]
                    n += 1
                j -= 1
            continue
        j = _last_start_at_or_before(peak_start, a)
        while j >= 0 and reach[j] > a:
            if peak_end[j] > a:
                if write:
                    out_peak[n] = j
                    out_cell[n] = cell[i]
                n += 1
            j -= 1
        j = _last_start_at_or_before(peak_start, b)
        while j >= 0 and reach[j] > b:
            # paired-insertion: a peak already holding the first insertion (start <= a, and
            # a <= b < end) is not counted again.
            if peak_end[j] > b and not (strategy == 1 and peak_start[j] <= a):
                if write:
                    out_peak[n] = j
                    out_cell[n] = cell[i]
                n += 1
            j -= 1
    return n


@numba.njit(cache=True, nogil=True)
def _capped_csr(hit_peak, hit_cell, n_peaks, n_cells, ceiling):  # pragma: no cover - numba
    """Cells x peaks CSR (columns sorted) of the hit counts, capped at ``ceiling`` (<= 0: none).

    A counting sort of the hits by peak, then per peak a per-cell counter (touched cells only),
    emitting entries in peak order; a second counting sort by cell keeps that order in each row.
    """
    ptr = np.zeros(n_peaks + 1, np.int64)
    for k in range(hit_peak.size):
        ptr[hit_peak[k] + 1] += 1
    for j in range(n_peaks):
        ptr[j + 1] += ptr[j]
    fill = ptr[:-1].copy()
    by_peak = np.empty(hit_peak.size, np.int32)
    for k in range(hit_peak.size):
        j = hit_peak[k]
        by_peak[fill[j]] = hit_cell[k]
        fill[j] += 1
    counter = np.zeros(n_cells, np.int32)
    touched = np.empty(max(1, n_cells), np.int32)
    entry_peak = np.empty(hit_peak.size, np.int32)
    entry_cell = np.empty(hit_peak.size, np.int32)
    entry_count = np.empty(hit_peak.size, np.int32)
    row_nnz = np.zeros(n_cells + 1, np.int64)
    m = 0
    for j in range(n_peaks):
        n_touched = 0
        for k in range(ptr[j], ptr[j + 1]):
            c = by_peak[k]
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
            entry_peak[m], entry_cell[m], entry_count[m] = j, c, v
            row_nnz[c + 1] += 1
            m += 1
    for c in range(n_cells):
        row_nnz[c + 1] += row_nnz[c]
    fill_row = row_nnz[:-1].copy()
    indices = np.empty(m, np.int32)
    data = np.empty(m, np.int32)
    for k in range(m):  # peaks were emitted in order, so each row's columns come out sorted
        c = entry_cell[k]
        indices[fill_row[c]] = entry_peak[k]
        data[fill_row[c]] = entry_count[k]
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
    return _capped_csr(hit_peak, hit_cell, int(peak_start.size), int(n_cells), -1 if ceiling is None else int(ceiling))
