"""Exact Euclidean k nearest neighbours, by brute force in chunks of points (numpy + BLAS).

What the metacells (and iterative LSI's clustering) need: exact neighbours of a few hundred
seeds among all cells, or of every cell among the cells of a sample. scikit-learn's brute-force
search computes the same squared distances (``|q|^2 - 2 q.p + |p|^2``) but costs ~0.5 s of
import in every fresh process, more than the search itself at PBMC10k's size.
"""

from __future__ import annotations

import numpy as np

#: Bytes of one distance block (queries x a chunk of points, float64).
CHUNK_BYTES = 64 * 2**20


def nearest_neighbours(points: np.ndarray, queries: np.ndarray, k: int, *,
                       chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest ``points`` of each query (Euclidean, exact), nearest first.

    Parameters
    ----------
    points
        ``(n_points, dims)`` coordinates searched.
    queries
        ``(n_queries, dims)`` coordinates whose neighbours are wanted.
    k
        Neighbours per query (at most ``n_points``).
    chunk_bytes
        Largest distance block held at once: memory stays bounded for millions of points.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(n_queries, k)`` int64 point positions and their squared distances, sorted by
        distance (ties by position).

    Examples
    --------
    >>> points = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [0.5, 0.0]])
    >>> index, distance = nearest_neighbours(points, points[:1], 3)
    >>> index.tolist(), distance.round(2).tolist()
    ([[0, 3, 1]], [[0.0, 0.25, 1.0]])
    """
    points = np.ascontiguousarray(points, dtype=np.float64)
    queries = np.ascontiguousarray(queries, dtype=np.float64)
    n_points, n_queries = points.shape[0], queries.shape[0]
    k = int(k)
    if not 1 <= k <= n_points:
        raise ValueError(f"k={k} must be between 1 and the number of points ({n_points}).")
    query_norms = np.einsum("ij,ij->i", queries, queries)[:, None]
    best_index = np.empty((n_queries, 0), dtype=np.int64)
    best_distance = np.empty((n_queries, 0))
    step = max(k, int(chunk_bytes // max(1, 8 * n_queries)))
    for first in range(0, n_points, step):
        chunk = points[first:first + step]
        distance = queries @ chunk.T
        distance *= -2.0
        distance += query_norms
        distance += np.einsum("ij,ij->i", chunk, chunk)[None, :]
        np.maximum(distance, 0.0, out=distance)
        index = np.broadcast_to(np.arange(first, first + chunk.shape[0], dtype=np.int64), distance.shape)
        # Candidates: the best so far and this chunk's; keep the k smallest.
        candidates = np.concatenate([best_distance, distance], axis=1)
        positions = np.concatenate([best_index, index], axis=1)
        if candidates.shape[1] > k:
            keep = np.argpartition(candidates, k - 1, axis=1)[:, :k]
            candidates = np.take_along_axis(candidates, keep, axis=1)
            positions = np.take_along_axis(positions, keep, axis=1)
        best_distance, best_index = candidates, positions
    order = np.lexsort((best_index, best_distance), axis=-1)
    return np.take_along_axis(best_index, order, axis=1), np.take_along_axis(best_distance, order, axis=1)
