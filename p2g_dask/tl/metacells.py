"""ArchR's kNN metacells: seeded seed cells, their k nearest neighbours, and an overlap filter."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from p2g_dask._logging import logger
from p2g_dask._variables import check_metacell_params, check_metacells, warn_small_data


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
    from sklearn.neighbors import NearestNeighbors  # imported with p2g_dask.tl outside workers

    index = NearestNeighbors(n_neighbors=k_neighbors, algorithm="auto").fit(embedding)
    distances, neighbours = index.kneighbors(embedding[seeds], return_distance=True)
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
        The ATAC :class:`p2g_dask._modality.Modality` (its ``obsm`` holds ``params.use_rep``).
    extra_obsm
        A MuData's own ``obsm`` (from :func:`p2g_dask._inputs.resolve_input`), or None.
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
    >>> from p2g_dask._modality import Modality
    >>> mod = Modality("atac", pd.DataFrame(index=[f"c{i}" for i in range(6)]), pd.DataFrame(index=["p"]))
    >>> resolve_metacells(mod, None, None, np.array([[0, 1], [2, 3], [4, 5]]), tool="doc").shape
    (3, 2)
    """
    from p2g_dask._inputs import get_obsm

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


class MetacellMembership:
    """An immutable ``(n_metacells, k)`` table of cell indices, kept in ``links.attrs``.

    pandas deep-copies and compares ``attrs`` on many operations; a plain numpy array there
    breaks ``pd.concat`` and a list of lists is slow to copy. This wrapper copies in O(1),
    compares by value and converts with ``numpy.asarray(membership)``.

    Examples
    --------
    >>> import numpy as np
    >>> m = MetacellMembership(np.array([[0, 1], [2, 3]]))
    >>> np.asarray(m).tolist(), m.shape
    ([[0, 1], [2, 3]], (2, 2))
    """

    __slots__ = ("_buffer", "shape")

    def __init__(self, neighbours) -> None:
        array = np.ascontiguousarray(np.asarray(neighbours), dtype=np.int64)
        if array.ndim != 2:
            raise ValueError(f"metacells must be a 2-D (n_metacells, k) array; got shape {array.shape}.")
        self._buffer = array.tobytes()
        self.shape = tuple(int(s) for s in array.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = np.frombuffer(self._buffer, dtype=np.int64).reshape(self.shape)
        return array.astype(dtype) if dtype is not None else array

    def __eq__(self, other) -> bool:
        return isinstance(other, MetacellMembership) and self.shape == other.shape and self._buffer == other._buffer

    def __hash__(self) -> int:
        return hash((self.shape, self._buffer))

    def __deepcopy__(self, memo) -> "MetacellMembership":
        return self

    def __copy__(self) -> "MetacellMembership":
        return self

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item):
        return np.asarray(self)[item]

    def tolist(self) -> list:
        return np.asarray(self).tolist()

    def __reduce__(self):
        return (MetacellMembership, (np.asarray(self),))

    def __repr__(self) -> str:
        return f"MetacellMembership({self.shape[0]} metacells x {self.shape[1]} cells)"
