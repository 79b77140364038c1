"""The one modality type of the package: what every input form resolves to.

Kept in a module of its own (no package imports at load time) so that both the input layer
(``_inputs.resolve_input``) and the ingest readers (``io._sources``) return it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.base import tokenize

from p2g_dask.io.blocks import chunk_cells_for, memory_blocks, row_bounds, store_blocks


@dataclass
class Modality:
    """One modality of the input: its cells (``obs``), features (``var``), ``obsm`` and counts.

    The counts are in memory (``X``, CSR or dense), in a p2g store (``store``, an
    ``io.store.StoreModality``), or behind a file reader (``reader(sorted_rows) -> CSR``, the
    row-streaming sources of ``ingest``). Rows are read one way: :meth:`read_rows` for a set of
    rows, :meth:`blocks` for the delayed row blocks of a graph.
    """

    name: str
    obs: pd.DataFrame
    var: pd.DataFrame
    X: Any = None
    store: Any = None
    obsm: Any = field(default_factory=dict)
    adata: Any = None
    reader: Callable[[np.ndarray], sp.csr_matrix] | None = None
    row_nnz: np.ndarray | None = None

    @property
    def n_obs(self) -> int:
        return self.store.n_obs if self._obs_unread else self.obs.shape[0]

    @property
    def _obs_unread(self) -> bool:
        # A store's cell table not read yet (see the obs property below).
        return self.__dict__.get("_obs") is None and self.store is not None

    def obs_names_blocks(self):
        """The cell names in consecutive blocks; a store's unread names are read block by block."""
        return self.store.obs_names_blocks() if self._obs_unread else [self.obs.index]

    @property
    def n_vars(self) -> int:
        return self.var.shape[0]

    @property
    def nnz(self) -> int:
        if self.store is not None:
            return self.store.nnz
        return int(self.X.nnz) if sp.issparse(self.X) else int(np.count_nonzero(self.X))

    def read_rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """The sorted ``rows`` as CSR, from the reader, the store or memory."""
        if self.reader is not None:
            return self.reader(rows)
        if self.store is not None:
            return self.store.to_memory(np.asarray(rows))
        return sp.csr_matrix(self.X[np.asarray(rows)])

    def blocks(self, chunk_cells: int | None = None, *, fused: bool = False) -> tuple[list, list[tuple[int, int]]]:
        """The rows as delayed blocks (:mod:`p2g_dask._graph`) and their ``(start, stop)``.

        The one row-block interface of every tool: a store is read by the tasks (``fused``: by
        the task that uses the rows, through :func:`p2g_dask.io.blocks.load`); in-memory counts go into the
        graph as :class:`p2g_dask.io.blocks.Rows` literals. ``chunk_cells`` defaults to the store's
        chunking, or ~96 MiB of CSR per block in memory.

        Examples
        --------
        >>> mod = Modality("rna", pd.DataFrame(index=list("abc")), pd.DataFrame(index=["g"]), X=np.ones((3, 1)))
        >>> blocks, bounds = mod.blocks(2)
        >>> bounds, [b.compute().n_rows for b in blocks]
        ([(0, 2), (2, 3)], [2, 1])
        """
        if self.store is not None:
            bounds = self.store.row_chunks(chunk_cells)
            return store_blocks(self.store.path, self.store.name, self.n_vars, bounds, fused=fused), bounds
        if chunk_cells is None:
            chunk_cells = chunk_cells_for(self.nnz / max(1, self.n_obs))
        bounds = row_bounds(self.n_obs, chunk_cells)
        token = tokenize(self.name, id(self.X), self.X.shape, self.nnz, bounds)
        return memory_blocks(self.X, bounds, token), bounds


def _get_obs(self: Modality) -> pd.DataFrame:
    if self._obs_unread:
        self.__dict__["_obs"] = self.store.obs
    return self.__dict__.get("_obs")


def _set_obs(self: Modality, obs: pd.DataFrame | None) -> None:
    self.__dict__["_obs"] = obs


# A store's cell table is read on first use (``obs=None`` with a store): the dataclass field
# stays (constructor, repr), its value lives in ``_obs``.
Modality.obs = property(_get_obs, _set_obs, doc="The cells (``obs``); a store's is read on first use.")
