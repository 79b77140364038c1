"""Row blocks of a count matrix, the one block type of the package, and how they are read.

- :class:`Rows`: a block of cell rows as CSR arrays and the number of features;
- :class:`StoreRange`: rows of a store matrix, read (verified) by the task that uses them
  (:func:`load`), and :func:`store_blocks` / :func:`store_array`, their graph forms;
- :func:`memory_blocks`: in-memory row blocks as graph literals.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import Delayed, delayed

from p2g_dask.io._integrity import read_block, read_pieces

#: Bytes of CSR data in a row chunk, by default (a store's chunks and in-memory blocks).
DEFAULT_CHUNK_BYTES = 96 * 2**20


def chunk_cells_for(row_nnz_mean: float, chunk_bytes: int = DEFAULT_CHUNK_BYTES, bytes_per_nnz: int = 8) -> int:
    """Cells per row chunk so that one chunk holds about ``chunk_bytes`` of CSR data."""
    return int(max(256, min(200_000, chunk_bytes // max(1.0, row_nnz_mean * bytes_per_nnz))))



class Rows(NamedTuple):
    """A block of cell rows as raw CSR arrays (``indptr`` starts at 0) and its number of features.

    The one block type of the package: store reads, in-memory slices and dense inputs all become
    ``Rows``, and kernels read the arrays without scipy's O(nnz) format check.

    Examples
    --------
    >>> block = Rows.of(np.array([[0, 2], [3, 0]]))
    >>> block.n_rows, block.n_vars, block.to_csr().toarray().tolist()
    (2, 2, [[0, 2], [3, 0]])
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    n_vars: int

    @property
    def n_rows(self) -> int:
        return int(self.indptr.size - 1)

    def to_csr(self) -> sp.csr_matrix:
        """The block as a scipy CSR matrix (no copy of the arrays)."""
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=(self.n_rows, self.n_vars))

    @classmethod
    def of(cls, matrix: Any, start: int = 0, stop: int | None = None) -> Rows:
        """Rows ``start:stop`` of a scipy sparse matrix or 2-D array (a view for CSR input)."""
        if not sp.issparse(matrix):
            matrix = sp.csr_matrix(np.asarray(matrix)[start:stop])
            start, stop = 0, None
        elif matrix.format != "csr":
            matrix = sp.csr_matrix(matrix[start:stop])
            start, stop = 0, None
        stop = matrix.shape[0] if stop is None else stop
        lo, hi = matrix.indptr[start], matrix.indptr[stop]
        return cls(matrix.data[lo:hi], matrix.indices[lo:hi], matrix.indptr[start : stop + 1] - lo,
                   int(matrix.shape[1]))


class StoreRange(NamedTuple):
    """Rows ``start:stop`` of a store matrix, read by the task that uses them (:func:`load`)."""

    path: str
    modality: str
    start: int
    stop: int
    n_vars: int

    def read(self) -> Rows:
        # Verified: chunk presence, crc32c checksums and CSR invariants (io._integrity).
        data, indices, indptr = read_block(self.path, self.modality, self.start, self.stop, self.n_vars)
        return Rows(data, indices, indptr, self.n_vars)

    def pieces(self, used_rows: np.ndarray | None = None, reuse: bool = False) -> Iterator[tuple[int, int, Rows]]:
        """The rows as consecutive verified pieces ``(first, stop, rows)`` (rows relative to
        ``start``): a consumer folding each piece in holds one piece at a time, not the range.
        ``used_rows`` (sorted, relative to ``start``): the only rows the consumer reads, and so
        the only ones whose CSR invariants are checked; ``reuse``: each piece is decoded into
        the buffers of the one before (valid until the next is asked for; see ``read_pieces``)."""
        for first, stop, (data, indices, indptr) in read_pieces(self.path, self.modality, self.start, self.stop,
                                                                self.n_vars, rows=used_rows, reuse=reuse):
            yield first, stop, Rows(data, indices, indptr, self.n_vars)


def load(block: Rows | StoreRange) -> Rows:
    """A block's rows: a :class:`StoreRange` is read here (on the worker), :class:`Rows` pass."""
    return block.read() if isinstance(block, StoreRange) else block


def _read_range(block: StoreRange) -> Rows:
    return block.read()


def row_bounds(n_obs: int, chunk_cells: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive row chunks of ``chunk_cells`` rows.

    Examples
    --------
    >>> row_bounds(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    """
    step = max(1, int(chunk_cells))
    return [(s, min(s + step, n_obs)) for s in range(0, n_obs, step)]


def _store_token(path: str, modality: str, bounds: list[tuple[int, int]], *extra: Any) -> str:
    # The store's modification time: a re-ingested store never reuses results of the old one.
    return tokenize(path, modality, bounds, os.path.getmtime(path), *extra)


def _read_csr(block: StoreRange) -> sp.csr_matrix:
    return block.read().to_csr()


def store_array(path: str, modality: str, n_vars: int, bounds: Sequence[tuple[int, int]], dtype: Any):
    """A store matrix as a dask array of scipy CSR row chunks (keys ``p2g-read-<token>``).

    The public lazy ``X`` of a store (anndata's convention for sparse dask arrays); graphs of the
    package use :func:`store_blocks`. Both read through :meth:`StoreRange.read`.
    """
    import dask.array as da

    bounds = [(int(s), int(e)) for s, e in bounds]
    name = f"p2g-read-{_store_token(path, modality, bounds, 'csr')}"
    graph = {(name, i, 0): (_read_csr, StoreRange(path, modality, s, e, int(n_vars))) for i, (s, e) in enumerate(bounds)}
    chunks = (tuple(e - s for s, e in bounds) or (0,), (int(n_vars),))
    return da.Array(graph, name, chunks, meta=sp.csr_matrix((0, 0), dtype=dtype))


def store_blocks(path: str, modality: str, n_vars: int, bounds: Sequence[tuple[int, int]], *,
                 fused: bool = False) -> list[Delayed]:
    """One delayed block per row range of a store matrix.

    Parameters
    ----------
    path, modality, n_vars
        The store folder, the modality (``"atac"``/``"rna"``) and its number of features.
    bounds
        ``(start, stop)`` row ranges.
    fused
        False: a read task per range (``p2g-read-<token>-<i>``) returning :class:`Rows`. True: a
        :class:`StoreRange` reference that the consuming task reads itself through :func:`load`,
        so no chunk waits in worker memory between a read and its use (for single consumers).

    Returns
    -------
    list of dask.delayed.Delayed
        Tokens hash the path, modality, ranges and the store's modification time.

    Examples
    --------
    >>> import tempfile, p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=50, n_peaks=100, n_genes=20, n_linked_genes=2)
    >>> store = p2g.io.ingest(sim.atac, sim.rna, tempfile.mkdtemp() + "/s.zarr")
    >>> blocks = store_blocks(store.path, "rna", 20, [(0, 30), (30, 50)])
    >>> [b.compute().n_rows for b in blocks]
    [30, 20]
    """
    bounds = [(int(s), int(e)) for s, e in bounds]
    token = _store_token(path, modality, bounds, fused)
    ranges = [StoreRange(path, modality, s, e, int(n_vars)) for s, e in bounds]
    if fused:
        return [delayed(r, name=f"p2g-rows-{token}-{i}") for i, r in enumerate(ranges)]
    # Each task reads its own rows on the worker: nothing but a path crosses the network.
    return [delayed(_read_range, pure=True)(r, dask_key_name=f"p2g-read-{token}-{i}") for i, r in enumerate(ranges)]


def memory_blocks(matrix: Any, bounds: Sequence[tuple[int, int]], token: str) -> list[Delayed]:
    """In-memory row blocks as graph literals (keys ``p2g-input-<token>-<i>``).

    Literals (not scattered data) let the scheduler re-send a block when a worker dies, so a lost
    worker never loses input data.
    """
    return [delayed(Rows.of(matrix, s, e), name=f"p2g-input-{token}-{i}") for i, (s, e) in enumerate(bounds)]
