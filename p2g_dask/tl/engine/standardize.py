"""Each feature's log-normalised metacell values, centred and scaled to unit norm, feature-major.

What the correlations are computed from (``r`` of two such rows is their dot product): ArchR's
``log2(x / total * scale_to + 1)`` of each metacell's sums, then each feature's values centred
and divided by their norm, written as one contiguous row per feature for the pair dot products.
"""

from __future__ import annotations

import math

import numba
import numpy as np


#: Small integer sums whose log2(x / total * scale_to + 1) is looked up, not computed, per metacell.
_LOG_TABLE = 256


@numba.njit(cache=True, nogil=True)
def _log_table(safe_totals, scale_to, table):  # pragma: no cover - jit
    # Sums of counts are mostly small integers: a per-metacell table of their logs, computed by
    # the same expression as the kernel's (so bit-identical), replaces ~10 ns of log2 by a lookup.
    # A kernel of its own: allocated by the caller, the table costs the main kernel no compiling.
    for i in range(table.shape[0]):
        for c in range(table.shape[1]):
            table[i, c] = math.log2(float(c) / safe_totals[i] * scale_to + 1.0)


@numba.njit(cache=True, nogil=True)
def _standardized_features_kernel(sums, safe_totals, scale_to, columns, out_t, variances, table):  # pragma: no cover - jit
    m = sums.shape[0]
    # Values in the table (small integer sums) are looked up; others (large or fractional sums)
    # take log2. Conditional expressions, not min(): fewer overloads to compile on a first run.
    for t0 in range(0, columns.size, 64):
        t1 = t0 + 64 if t0 + 64 < columns.size else columns.size
        # Tiles of 64 features x 8 metacells: each metacell row of sums is read in short
        # contiguous runs and each feature's output row is written 8 values (a cache line) at a time.
        for i0 in range(0, m, 8):
            i1 = i0 + 8 if i0 + 8 < m else m
            for j in range(t0, t1):
                column = columns[j]
                row = out_t[j]
                for i in range(i0, i1):
                    value = sums[i, column]
                    if 0 <= value < _LOG_TABLE and int(value) == value:
                        row[i] = table[i, int(value)]
                    else:
                        row[i] = math.log2(value / safe_totals[i] * scale_to + 1.0)
        # Four features side by side: each sum is still added in order (the same bits), but four
        # independent chains of additions keep the core busy instead of waiting on one.
        j = t0
        while j + 4 <= t1:
            _standardize_four(out_t[j], out_t[j + 1], out_t[j + 2], out_t[j + 3], variances, j, m)
            j += 4
        for k in range(j, t1):
            _standardize_row(out_t[k], variances, k, m)


@numba.njit(cache=True, nogil=True)
def _standardize_row(row, variances, j, m):  # pragma: no cover - jit
    total = 0.0
    constant = True
    first = row[0]
    for i in range(m):
        total += row[i]
        if row[i] != first:
            constant = False
    mean = total / m if m else 0.0
    sum_squares = 0.0
    for i in range(m):
        d = 0.0 if constant else row[i] - mean
        row[i] = d
        sum_squares += d * d
    _unit_norm(row, sum_squares, variances, j, m)


@numba.njit(cache=True, nogil=True)
def _unit_norm(row, sum_squares, variances, j, m):  # pragma: no cover - jit
    norm = math.sqrt(sum_squares)
    for i in range(m):
        row[i] = row[i] / norm if norm > 0 else np.nan
    variances[j] = sum_squares / (m - 1 if m > 1 else 1)


@numba.njit(cache=True, nogil=True)
def _standardize_four(r0, r1, r2, r3, variances, j, m):  # pragma: no cover - jit
    # _standardize_row of four rows at once, each value computed by the same operations in the
    # same order (the counts of values unlike the first replace the constant flags).
    f0, f1, f2, f3 = r0[0], r1[0], r2[0], r3[0]
    t0 = t1 = t2 = t3 = 0.0
    u0 = u1 = u2 = u3 = 0
    for i in range(m):
        a, b, c, e = r0[i], r1[i], r2[i], r3[i]
        t0 += a
        t1 += b
        t2 += c
        t3 += e
        u0 += a != f0
        u1 += b != f1
        u2 += c != f2
        u3 += e != f3
    m0 = t0 / m if m else 0.0
    m1 = t1 / m if m else 0.0
    m2 = t2 / m if m else 0.0
    m3 = t3 / m if m else 0.0
    q0 = q1 = q2 = q3 = 0.0
    for i in range(m):
        d0 = 0.0 if u0 == 0 else r0[i] - m0
        d1 = 0.0 if u1 == 0 else r1[i] - m1
        d2 = 0.0 if u2 == 0 else r2[i] - m2
        d3 = 0.0 if u3 == 0 else r3[i] - m3
        r0[i], r1[i], r2[i], r3[i] = d0, d1, d2, d3
        q0 += d0 * d0
        q1 += d1 * d1
        q2 += d2 * d2
        q3 += d3 * d3
    _unit_norm(r0, q0, variances, j, m)
    _unit_norm(r1, q1, variances, j + 1, m)
    _unit_norm(r2, q2, variances, j + 2, m)
    _unit_norm(r3, q3, variances, j + 3, m)


def standardized_features(sums: np.ndarray, totals: np.ndarray, scale_to: float = 1e4,
                          columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`normalize_log2` then :func:`standardize_columns` in one pass, feature-major.

    Reads ``sums`` (metacells x features, any strides: a column-block view needs no copy) and
    writes each feature's standardised values as one contiguous row, the layout the pair dot
    products read.

    Parameters
    ----------
    sums
        Metacells x features sums (float, or exact-count uint16).
    totals
        Each metacell's total over all features of the matrix.
    scale_to
        Total each metacell is scaled to before ``log2(x + 1)``.
    columns
        Column positions of ``sums`` to standardise (all when None), in output order.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(n_columns, n_metacells)`` float64 centred unit-norm rows (NaN for a constant
        feature) and each feature's sample variance (``ddof=1``).

    Examples
    --------
    >>> std_t, var = standardized_features(np.array([[1.0, 2.0], [3.0, 2.0]]), np.array([1e4, 1e4]))
    >>> std_t.round(3).tolist(), var.round(3).tolist()
    ([[-0.707, 0.707], [nan, nan]], [0.5, 0.0])
    """
    if sums.dtype not in (np.float32, np.float64, np.uint16):  # uint16: exact-count lanes, read as they are
        sums = np.asarray(sums, dtype=np.float64)
    totals = np.asarray(totals, dtype=np.float64)
    # The same scale factor as normalize_log2 (x / total * scale_to), so constants stay exact.
    safe = np.where(totals > 0, totals, 1.0)
    columns = np.arange(sums.shape[1], dtype=np.int64) if columns is None else np.asarray(columns, dtype=np.int64)
    out_t = np.empty((columns.size, sums.shape[0]), dtype=np.float64)
    variances = np.empty(columns.size, dtype=np.float64)
    table = np.empty((sums.shape[0], _LOG_TABLE))
    _log_table(safe, float(scale_to), table)
    _standardized_kernel_for(sums.dtype)(sums, safe, float(scale_to), columns, out_t, variances, table)
    return out_t, variances


def _standardized_kernel_for(dtype: np.dtype):
    """:func:`_standardized_features_kernel` compiled once for sums of ``dtype`` in any memory layout.

    numba compiles a new specialisation for each layout it meets (C, F, strided); the column
    blocks of the sums come in several, so a first run after install compiled the kernel twice
    (~0.3 s). The entry point of the declared 'A' (any layout) signature takes them all.
    """
    from numba import types

    vector = types.float64[::1]
    signature = (types.Array(numba.from_dtype(np.dtype(dtype)), 2, "A"), vector, types.float64, types.int64[::1],
                 types.float64[:, ::1], vector, types.float64[:, ::1])
    return _standardized_features_kernel.compile(signature)
