"""ArchR's kNN metacells: seeded seed cells, their k nearest neighbours, and an overlap filter."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.sparse as sp

from p2g_dask._logging import logger
from p2g_dask.io.inputs import get_obsm
from p2g_dask._variables import check_metacell_params, check_metacells, warn_small_data
from p2g_dask.io.links import MetacellMembership  # noqa: F401 - the membership as links keep it
from p2g_dask.tl.engine.knn import nearest_neighbours


def overlap_filter(neighbours: np.ndarray, max_shared: int) -> np.ndarray:
    """Keep metacells, in order, that share at most ``max_shared`` cells with every earlier kept one.

    Parameters
    ----------
    neighbours
        ``(n_metacells, k)`` cell indices of each metacell (ArchR's kNN table).
    max_shared
        ArchR's ``floor(overlapCutoff * k)``: a metacell sharing more cells than this with an
        earlier *kept* metacell is dropped.

    Returns
    -------
    numpy.ndarray
        Boolean mask of kept metacells.

    Examples
    --------
    >>> import numpy as np
    >>> overlap_filter(np.array([[0, 1, 2], [0, 1, 3], [4, 5, 6], [0, 1, 2]]), max_shared=1)
    array([ True, False,  True, False])
    """
    neighbours = np.asarray(neighbours)
    n_metacells, k = neighbours.shape
    membership = sp.csr_matrix(
        (np.ones(neighbours.size, dtype=np.int32), neighbours.ravel(), np.arange(0, neighbours.size + 1, k)),
        shape=(n_metacells, int(neighbours.max()) + 1 if neighbours.size else 0),
    )
    membership.data[:] = 1
    membership.sum_duplicates()
    membership.data = np.minimum(membership.data, 1)
    shared = (membership @ membership.T).toarray()
    keep = np.zeros(n_metacells, dtype=bool)
    kept: list[int] = []
    for i in range(n_metacells):
        if not kept or (shared[i, kept] <= max_shared).all():
            keep[i] = True
            kept.append(i)
    return keep


def metacells(
    embedding: np.ndarray,
    *,
    n_metacells: int = 500,
    k_neighbors: int = 100,
    overlap_cutoff: float = 0.8,
    seed: int = 1,
) -> np.ndarray:
    """ArchR's metacells: ``n_metacells`` seeds, each with its ``k_neighbors`` nearest cells.

    Seeds are drawn with ``numpy.random.default_rng(seed)`` (with replacement only when there
    are fewer cells than metacells, as ArchR does); each metacell is the seed's ``k_neighbors``
    nearest cells in ``embedding`` (Euclidean, exact, the seed included); metacells sharing more
    than ``floor(overlap_cutoff * k_neighbors)`` cells with an earlier kept one are dropped.

    Parameters
    ----------
    embedding
        Cells x dimensions (e.g. ``obsm['X_iterative_lsi']``).
    n_metacells
        Seeds to draw (ArchR's ``knnIteration``, default 500).
    k_neighbors
        Cells per metacell (ArchR's ``k``, default 100).
    overlap_cutoff
        ArchR's ``overlapCutoff`` (0.8).
    seed
        Random seed.

    Returns
    -------
    numpy.ndarray
        ``(n_kept, k_neighbors)`` int64 cell row indices; row ``i`` is metacell ``i``, its
        first entry the seed cell.

    Examples
    --------
    >>> import numpy as np
    >>> emb = np.random.default_rng(0).normal(size=(300, 5))
    >>> membership = metacells(emb, n_metacells=20, k_neighbors=10, seed=1)
    >>> membership.shape[1], membership.shape[0] <= 20
    (10, True)
    """
    embedding = np.asarray(embedding, dtype=np.float64)
    if embedding.ndim != 2:
        raise ValueError(f"the embedding must be cells x dimensions; got shape {embedding.shape}.")
    n_cells = embedding.shape[0]
    if not np.isfinite(embedding).all():
        raise ValueError("the embedding (use_rep) contains NaN or inf; recompute it or drop those cells.")
    check_metacell_params(n_metacells, k_neighbors, overlap_cutoff)
    if k_neighbors > n_cells:
        logger.warning(
            "k_neighbors=%d exceeds the %d cells; using k_neighbors=%d (every metacell is then all cells)",
            k_neighbors, n_cells, n_cells,
        )
        k_neighbors = n_cells
    replace = n_metacells > n_cells
    if replace:
        logger.warning(
            "n_metacells=%d exceeds the %d cells; seeds are drawn with replacement as ArchR does "
            "(duplicates are removed by the overlap filter)", n_metacells, n_cells,
        )
    rng = np.random.default_rng(seed)
    seeds = rng.choice(n_cells, size=n_metacells, replace=replace)
    neighbours, _ = nearest_neighbours(embedding, embedding[seeds], k_neighbors)
    # The seed is its own nearest neighbour; put it first even when duplicated points tie at 0.
    for row, cell in enumerate(seeds):
        if neighbours[row, 0] != cell:
            where = np.flatnonzero(neighbours[row] == cell)
            position = where[0] if where.size else k_neighbors - 1
            neighbours[row, 1 : position + 1] = neighbours[row, :position].copy()
            neighbours[row, 0] = cell
    keep = overlap_filter(neighbours, math.floor(overlap_cutoff * k_neighbors))
    logger.info(
        "metacells: %d of %d seeds kept (overlap <= %d of %d cells)",
        int(keep.sum()), n_metacells, math.floor(overlap_cutoff * k_neighbors), k_neighbors,
    )
    return neighbours[keep].astype(np.int64)


def resolve_metacells(modality, extra_obsm, params, given: np.ndarray | None, *, tool: str) -> np.ndarray:
    """The ``(n_metacells, k)`` neighbours a tool correlates over: given (checked) or built.

    Shared by every metacell tool so the small-data warning, the checks of a given membership and
    the at-least-3 rule are the same everywhere.

    Parameters
    ----------
    modality
        The ATAC :class:`p2g_dask.io.modality.Modality` (its ``obsm`` holds ``params.use_rep``).
    extra_obsm
        A MuData's own ``obsm`` (from :func:`p2g_dask.io.inputs.resolve_input`), or None.
    params
        The tool's parameter dataclass (``use_rep``, ``n_metacells``, ``k_neighbors``,
        ``overlap_cutoff``, ``seed``).
    given
        A precomputed membership (the tool's ``metacells=``), or None to build one with
        :func:`metacells`.
    tool
        Names the caller in the warning.

    Returns
    -------
    numpy.ndarray
        ``(n_metacells, k)`` int64 cell positions.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from p2g_dask.io.modality import Modality
    >>> mod = Modality("atac", pd.DataFrame(index=[f"c{i}" for i in range(6)]), pd.DataFrame(index=["p"]))
    >>> resolve_metacells(mod, None, None, np.array([[0, 1], [2, 3], [4, 5]]), tool="doc").shape
    (3, 2)
    """
    n_cells = modality.n_obs
    if given is None:
        warn_small_data(n_cells, params.n_metacells, params.k_neighbors, tool=tool)
        neighbours = metacells(
            get_obsm(modality, params.use_rep, extra_obsm), n_metacells=params.n_metacells,
            k_neighbors=params.k_neighbors, overlap_cutoff=params.overlap_cutoff, seed=params.seed,
        )
    else:
        neighbours = check_metacells(given, n_cells)
    if neighbours.shape[0] < 3:
        raise ValueError(f"only {neighbours.shape[0]} metacells; correlations need at least 3. "
                         "Lower k_neighbors or raise n_metacells.")
    return neighbours


def metacell_membership(neighbours: np.ndarray, n_cells: int) -> sp.csr_matrix:
    """Sparse 0/1 membership, metacells x cells, from the ``(n_metacells, k)`` index table.

    Examples
    --------
    >>> metacell_membership(np.array([[0, 2], [1, 2]]), 3).toarray()
    array([[1., 0., 1.],
           [0., 1., 1.]], dtype=float32)
    """
    neighbours = check_metacells(neighbours, n_cells)
    n_metacells, k = neighbours.shape
    matrix = sp.csr_matrix(
        (np.ones(neighbours.size, dtype=np.float32), neighbours.ravel(), np.arange(0, neighbours.size + 1, k)),
        shape=(n_metacells, n_cells),
    )
    matrix.sum_duplicates()
    return matrix


@dataclasses.dataclass(frozen=True, eq=False)
class MetacellStack:
    """Every metacell of a run stacked by rows, and the units correlated over them.

    A metacell is only a membership, so the metacells of all groups (and of all samples within
    them) are one ``(n, k)`` table, summed in ONE pass per matrix; a unit (a group, or the whole
    run) is a range of its rows, and a sample is a set of rows within a unit.

    Attributes
    ----------
    neighbours
        ``(n_metacells, k)`` cell positions, all units stacked in order.
    groups
        One name per unit; ``(None,)`` for an ungrouped run (its tables have no group column).
    offsets
        Unit ``i`` holds rows ``offsets[i]:offsets[i + 1]``.
    samples
        Per unit, sample -> its rows (global row positions), or None without samples.
    strata
        Per cell, the stratum a cell-level permutation keeps it in (its group, and sample), or
        None when permutations run over all cells.

    Examples
    --------
    >>> stack = MetacellStack.of({"a": np.array([[0, 1], [1, 2]]), "b": np.array([[3, 4]])})
    >>> stack.groups, stack.unit_slices()
    (('a', 'b'), [slice(0, 2, None), slice(2, 3, None)])
    """

    neighbours: np.ndarray
    groups: tuple
    offsets: np.ndarray
    samples: tuple | None = None
    strata: np.ndarray | None = None

    @classmethod
    def of(cls, memberships: dict | np.ndarray, *, samples: dict | None = None,
           strata: np.ndarray | None = None) -> "MetacellStack":
        """A stack of one membership (ungrouped) or of a dict group -> membership."""
        if not isinstance(memberships, dict):
            neighbours = np.asarray(memberships, dtype=np.int64)
            return cls(neighbours, (None,), np.array([0, neighbours.shape[0]]), None, strata)
        names = tuple(memberships)
        sizes = [np.asarray(memberships[g]).shape[0] for g in names]
        neighbours = np.concatenate([np.asarray(memberships[g], dtype=np.int64) for g in names])
        offsets = np.cumsum([0, *sizes])
        rows = None if samples is None else tuple(
            {s: offsets[i] + r for s, r in samples[g].items()} for i, g in enumerate(names))
        return cls(neighbours, names, offsets, rows, strata)

    @property
    def grouped(self) -> bool:
        return self.groups != (None,)

    def unit_slices(self) -> list[slice]:
        """Each unit's rows of the stack (slices: a unit's sums are views, never copies)."""
        return [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in range(len(self.groups))]

    def membership(self, n_cells: int) -> sp.csr_matrix:
        """The stacked metacells x cells 0/1 matrix that is summed in one pass."""
        return metacell_membership(self.neighbours, n_cells)

    def record(self):
        """The memberships as ``links.attrs['metacells']`` keeps them (one, or a dict per group)."""
        if not self.grouped:
            return MetacellMembership(self.neighbours)
        return {g: MetacellMembership(self.neighbours[self.offsets[i]:self.offsets[i + 1]])
                for i, g in enumerate(self.groups)}
