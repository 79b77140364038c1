"""Metacell sums: one streaming pass over cell-row chunks, tree-reduced with a bounded fan-in.

Memory is proportional to metacells x features (the partial sums), never cells x features: each
task reads one row chunk (from the store on the worker, or a scattered in-memory slice), adds its
cells into the metacells they belong to, and partials are summed ``split_every`` at a time.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import scipy.sparse as sp
from dask.delayed import Delayed, delayed

from p2g_dask._inputs import Modality
from p2g_dask.io.store import chunk_cells_for
from p2g_dask.tl._kernels import metacell_sum_block, normalize_log2
from p2g_dask.tl.metacells import metacell_membership


def _sum_partials(*partials: np.ndarray) -> np.ndarray:
    total = partials[0].copy()
    for part in partials[1:]:
        total += part
    return total


def _row_totals(sums: np.ndarray) -> np.ndarray:
    return sums.sum(axis=1, dtype=np.float64)


def cell_to_metacells(neighbours: np.ndarray, n_cells: int) -> sp.csr_matrix:
    """Cells x metacells CSR: row ``c`` lists the metacells that cell ``c`` belongs to."""
    return sp.csr_matrix(metacell_membership(neighbours, n_cells).T)


def _input_chunks(modality: Modality, chunk_cells: int | None, client: Any) -> tuple[list, list[tuple[int, int]]]:
    if modality.store is not None:
        bounds = modality.store.row_chunks(chunk_cells)
        return modality.store.lazy_X(chunk_cells).to_delayed().ravel().tolist(), bounds
    n_obs = modality.n_obs
    if chunk_cells is None:
        chunk_cells = chunk_cells_for(modality.nnz / max(1, n_obs))
    bounds = [(s, min(s + chunk_cells, n_obs)) for s in range(0, n_obs, chunk_cells)]
    slices = [modality.X[s:e] for s, e in bounds]
    token = dask.base.tokenize(id(modality.X), modality.X.shape, modality.nnz, bounds)
    if client is not None:
        # Scatter once rather than embedding matrices in the graph the scheduler must hold.
        futures = client.scatter(slices, hash=False)
        return [delayed(f) for f in futures], bounds
    return [
        delayed(x, name=f"p2g-input-{modality.name}-{token}-{i}") for i, x in enumerate(slices)
    ], bounds


def metacell_sums(
    modality: Modality,
    neighbours: np.ndarray,
    *,
    chunk_cells: int | None = None,
    split_every: int = 4,
    dtype=np.float32,
    client: Any = None,
) -> tuple[Delayed, Delayed]:
    """Lazy metacell sums of a modality and their per-metacell totals.

    Parameters
    ----------
    modality
        Counts in memory or in a store (see ``p2g_dask._inputs.resolve_input``).
    neighbours
        ``(n_metacells, k)`` cell indices (from :func:`p2g_dask.tl.metacells`).
    chunk_cells
        Cells per task; from ~96 MiB of CSR per chunk when None.
    split_every
        Fan-in of the tree reduction (bounds the partials held at once).
    dtype
        Accumulator dtype. float32 sums integer counts exactly up to 2**24 per entry.
    client
        A ``distributed.Client`` to scatter in-memory chunks to, or None.

    Returns
    -------
    (Delayed, Delayed)
        ``sums`` (metacells x features) and ``totals`` (metacells,) in float64.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, dask
    >>> from p2g_dask._inputs import Modality
    >>> import pandas as pd
    >>> X = sp.csr_matrix(np.arange(12).reshape(4, 3))
    >>> mod = Modality("atac", pd.DataFrame(index=list("abcd")), pd.DataFrame(index=list("xyz")), X=X)
    >>> sums, totals = metacell_sums(mod, np.array([[0, 1], [2, 3]]), chunk_cells=2)
    >>> dask.compute(sums, scheduler="sync")[0]
    array([[ 3.,  5.,  7.],
           [15., 17., 19.]], dtype=float32)
    """
    n_cells = modality.n_obs
    n_metacells = int(np.asarray(neighbours).shape[0])
    by_cell = cell_to_metacells(neighbours, n_cells)
    chunks, bounds = _input_chunks(modality, chunk_cells, client)
    token = dask.base.tokenize(modality.name, np.asarray(neighbours), bounds, str(dtype),
                               [c.key for c in chunks])
    prefix = f"p2g-metacell-sum-{modality.name}"
    level = []
    for i, (chunk, (start, stop)) in enumerate(zip(chunks, bounds)):
        rows = by_cell[start:stop]
        level.append(
            delayed(metacell_sum_block, pure=True)(
                chunk, rows.indptr.copy(), rows.indices.copy(), n_metacells, dtype,
                dask_key_name=f"{prefix}-{token}-{i}",
            )
        )
    depth = 0
    split_every = max(2, int(split_every))
    while len(level) > 1:
        depth += 1
        level = [
            delayed(_sum_partials, pure=True)(*level[i : i + split_every],
                                              dask_key_name=f"{prefix}-combine-{token}-{depth}-{i}")
            for i in range(0, len(level), split_every)
        ]
    sums = level[0]
    totals = delayed(_row_totals, pure=True)(sums, dask_key_name=f"p2g-metacell-totals-{modality.name}-{token}")
    return sums, totals


def metacell_matrix(X, neighbours: np.ndarray, *, scale_to: float = 1e4) -> np.ndarray:
    """In memory: normalised ``log2(CP10k + 1)`` metacells x features (for plots and checks).

    Parameters
    ----------
    X
        Cells x features counts (scipy sparse or numpy).
    neighbours
        ``(n_metacells, k)`` cell indices, e.g. ``links.attrs['metacells']``.
    scale_to
        Total each metacell is scaled to.

    Returns
    -------
    numpy.ndarray
        ``(n_metacells, n_features)`` float64.

    Examples
    --------
    >>> import numpy as np
    >>> metacell_matrix(np.array([[1, 1], [0, 2]]), np.array([[0, 1]])).round(3)
    array([[11.288, 12.873]])
    """
    neighbours = np.asarray(neighbours)
    by_cell = cell_to_metacells(neighbours, X.shape[0])
    sums = metacell_sum_block(X if sp.issparse(X) else np.asarray(X), by_cell.indptr, by_cell.indices,
                              neighbours.shape[0], np.float64)
    return normalize_log2(sums, sums.sum(axis=1), scale_to)
