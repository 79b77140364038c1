"""Coverage kernels: fragments of one chromosome -> run-length intervals (bedGraph runs).

Pure numpy/numba, no Dask: the pseudobulk graph calls :func:`coverage_runs` once per
(group, chromosome) task. Positions are 0-based, half-open, as in fragment files.

- ``'cutsite'``: fragment ``[start, end)`` gives two 1-bp Tn5 insertions, at ``start`` and at
  ``end - 1`` (Cell Ranger fragments are already Tn5-adjusted; see ``shift``).
- ``'fragment'``: every base of ``[start, end)`` is covered once.

Runs are maximal intervals of equal, nonzero value; zero stretches are left out (a BigWig reads
them as missing). With ``bin_size > 1`` the value of a bin is the sum of the per-base values
inside it (insertions, or covered bases), the last bin cut at the chromosome end.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np


class Runs(NamedTuple):
    """Sorted, non-overlapping intervals ``[start, end)`` with their (integer) value."""

    start: np.ndarray
    end: np.ndarray
    value: np.ndarray


@numba.njit(cache=True, nogil=True)
def _emit(out_s, out_e, out_v, k, a, z, v):
    # Extend the previous run when it touches this one with the same value.
    if k >= 0 and out_e[k] == a and out_v[k] == v:
        out_e[k] = z
        return k
    k += 1
    out_s[k] = a
    out_e[k] = z
    out_v[k] = v
    return k


@numba.njit(cache=True, nogil=True)
def _count_runs(pos, bin_size, chrom_length):
    n = pos.size
    out_s = np.empty(n, np.int64)
    out_e = np.empty(n, np.int64)
    out_v = np.empty(n, np.int64)
    k = -1
    i = 0
    while i < n:
        b = pos[i] // bin_size
        j = i + 1
        while j < n and pos[j] // bin_size == b:
            j += 1
        a = b * bin_size
        k = _emit(out_s, out_e, out_v, k, a, min(a + bin_size, chrom_length), j - i)
        i = j
    return out_s[: k + 1], out_e[: k + 1], out_v[: k + 1]


@numba.njit(cache=True, nogil=True)
def _sweep(starts, ends):
    # starts and ends sorted separately; coverage changes only at their positions.
    n = starts.size
    out_s = np.empty(2 * n, np.int64)
    out_e = np.empty(2 * n, np.int64)
    out_v = np.empty(2 * n, np.int64)
    k = -1
    i = 0
    j = 0
    cov = 0
    prev = 0
    while j < n:
        p = ends[j]
        if i < n and starts[i] < p:
            p = starts[i]
        if cov > 0 and p > prev:
            k = _emit(out_s, out_e, out_v, k, prev, p, cov)
        while i < n and starts[i] == p:
            cov += 1
            i += 1
        while j < n and ends[j] == p:
            cov -= 1
            j += 1
        prev = p
    return out_s[: k + 1], out_e[: k + 1], out_v[: k + 1]


@numba.njit(cache=True, nogil=True)
def _bin_runs(seg_s, seg_e, seg_v, bin_size, chrom_length):
    n_out = 0
    for r in range(seg_s.size):
        n_out += (seg_e[r] - 1) // bin_size - seg_s[r] // bin_size + 1
    out_s = np.empty(n_out, np.int64)
    out_e = np.empty(n_out, np.int64)
    out_v = np.empty(n_out, np.int64)
    k = -1
    cur = -1
    acc = 0
    for r in range(seg_s.size):
        for b in range(seg_s[r] // bin_size, (seg_e[r] - 1) // bin_size + 1):
            if b != cur:
                if cur >= 0 and acc > 0:
                    a = cur * bin_size
                    k = _emit(out_s, out_e, out_v, k, a, min(a + bin_size, chrom_length), acc)
                cur = b
                acc = 0
            lo = max(seg_s[r], b * bin_size)
            hi = min(seg_e[r], (b + 1) * bin_size)
            acc += seg_v[r] * (hi - lo)
    if cur >= 0 and acc > 0:
        a = cur * bin_size
        k = _emit(out_s, out_e, out_v, k, a, min(a + bin_size, chrom_length), acc)
    return out_s[: k + 1], out_e[: k + 1], out_v[: k + 1]


def shift_and_filter(
    start: np.ndarray, end: np.ndarray, *, shift: tuple[int, int], chrom_length: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Add ``shift`` to start and end; drop fragments that leave ``[0, chrom_length]`` or get empty.

    Returns the kept starts and ends (int64) and the number dropped.

    Examples
    --------
    >>> s, e, dropped = shift_and_filter(np.array([0, 10]), np.array([50, 60]), shift=(4, -5), chrom_length=100)
    >>> s.tolist(), e.tolist(), dropped
    ([4, 14], [45, 55], 0)
    """
    s = np.asarray(start, dtype=np.int64) + int(shift[0])
    e = np.asarray(end, dtype=np.int64) + int(shift[1])
    ok = (s >= 0) & (e <= chrom_length) & (e > s)
    n_bad = int(ok.size - np.count_nonzero(ok))
    if n_bad:
        s, e = s[ok], e[ok]
    return s, e, n_bad


def insertion_runs(start: np.ndarray, end: np.ndarray, *, chrom_length: int, bin_size: int = 1) -> Runs:
    """Runs of Tn5 insertion counts: one insertion at ``start`` and one at ``end - 1`` per fragment.

    Examples
    --------
    >>> r = insertion_runs(np.array([10, 11]), np.array([20, 12]), chrom_length=100)
    >>> r.start.tolist(), r.end.tolist(), r.value.tolist()
    ([10, 11, 19], [11, 12, 20], [1, 2, 1])
    """
    pos = np.concatenate([np.asarray(start, np.int64), np.asarray(end, np.int64) - 1])
    # Two nearly sorted halves: the stable sort (timsort) merges them in about linear time.
    pos.sort(kind="stable")
    return Runs(*_count_runs(pos, np.int64(bin_size), np.int64(chrom_length)))


def fragment_runs(start: np.ndarray, end: np.ndarray, *, chrom_length: int, bin_size: int = 1) -> Runs:
    """Runs of fragment coverage: each fragment covers every base of ``[start, end)``.

    Examples
    --------
    >>> r = fragment_runs(np.array([10, 15]), np.array([20, 30]), chrom_length=100)
    >>> r.start.tolist(), r.end.tolist(), r.value.tolist()
    ([10, 15, 20], [15, 20, 30], [1, 2, 1])
    """
    s = np.sort(np.asarray(start, np.int64), kind="stable")
    e = np.sort(np.asarray(end, np.int64), kind="stable")
    runs = _sweep(s, e)
    if bin_size > 1:
        runs = _bin_runs(*runs, np.int64(bin_size), np.int64(chrom_length))
    return Runs(*runs)


def coverage_runs(
    start: np.ndarray,
    end: np.ndarray,
    *,
    strategy: str,
    chrom_length: int,
    shift: tuple[int, int] = (0, 0),
    bin_size: int = 1,
) -> tuple[Runs, int, int]:
    """Shift, filter and pile up one chromosome's fragments.

    Returns
    -------
    runs, n_units, n_skipped
        The coverage runs; the group's normalisation units on this chromosome (insertions for
        ``'cutsite'``, fragments for ``'fragment'``); fragments dropped by the bounds check.

    Examples
    --------
    >>> runs, units, skipped = coverage_runs(np.array([10]), np.array([20]), strategy="cutsite", chrom_length=15)
    >>> len(runs.start), units, skipped
    (0, 0, 1)
    """
    s, e, n_skipped = shift_and_filter(start, end, shift=shift, chrom_length=chrom_length)
    if strategy == "cutsite":
        runs, units = insertion_runs(s, e, chrom_length=chrom_length, bin_size=bin_size), 2 * s.size
    elif strategy == "fragment":
        runs, units = fragment_runs(s, e, chrom_length=chrom_length, bin_size=bin_size), s.size
    else:
        raise ValueError(f"bigwig_strategy={strategy!r} is not known; use 'cutsite' or 'fragment'.")
    return compact_runs(runs), units, n_skipped


def compact_runs(runs: Runs) -> Runs:
    """The same runs in 12 bytes per interval (uint32 positions, as BigWig stores them; int32
    counts), half of what the kernels return: pileups travel between workers and into checkpoints.

    Examples
    --------
    >>> compact_runs(Runs(np.array([5]), np.array([9]), np.array([2]))).start.dtype
    dtype('uint32')
    """
    if runs.value.size and runs.value.max() > np.iinfo(np.int32).max:
        return Runs(runs.start.astype(np.uint32), runs.end.astype(np.uint32), runs.value)
    return Runs(runs.start.astype(np.uint32), runs.end.astype(np.uint32), runs.value.astype(np.int32))
