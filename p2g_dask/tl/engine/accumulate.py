"""Metacell sums: one streaming pass over cell-row chunks, tree-reduced with a bounded fan-in.

Memory is proportional to metacells x features (the partial sums), never cells x features: each
task reads one row chunk (from the store on the worker, or a scattered in-memory slice), adds its
cells into the metacells they belong to, and partials are summed ``split_every`` at a time.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, NamedTuple

import dask
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import Delayed, delayed

from p2g_dask import _graph
from p2g_dask.io.blocks import Rows, StoreRange
from p2g_dask.io.modality import Modality
from p2g_dask.tl.engine.kernels import metacell_sum_block, metacell_sums_threaded, normalize_log2
from p2g_dask.tl.engine.metacells import metacell_membership


class ColumnBlock(NamedTuple):
    """Metacell sums of the feature columns ``first:stop`` (a lazy m x (stop - first) array).

    ``lanes`` are the partial sums (accumulators, possibly exact-count uint16) whose total is
    ``sums``: a consumer of a few columns can take them from each lane where it lives and add
    them, so the whole block never moves between workers. Empty when the sums were checkpointed.
    """

    first: int
    stop: int
    sums: Delayed
    lanes: tuple = ()


#: Accumulators a failed summing task left part-added to (by id): a rerun of the task on the
#: same input (dask ``retries``) must fail, not count the rows already added twice.
_PART_ADDED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _add_block(accumulator, block, members, n_metacells, dtype, columns, max_members=None):
    # The accumulator's only dependent is this task, so adding in place is safe and saves a copy.
    member_indptr, member_cells = members
    if not isinstance(block, StoreRange):
        return metacell_sum_block(block, member_indptr, member_cells, n_metacells, dtype, out=accumulator,
                                  columns=columns, max_members=max_members)
    if accumulator is not None and _PART_ADDED.get(id(accumulator)) is accumulator:
        raise RuntimeError("a metacell sum holds rows of a failed earlier attempt of this task; compute the "
                           "result again from the start (without task retries)")
    # A store range is read and added piece by piece: the worker holds one ~16 MiB piece, not
    # the whole ~96 MiB chunk (measured: ~70 MiB less on the ATAC worker on PBMC10k, same speed).
    given, added = accumulator, False
    try:
        # Only member rows are summed, so only they need to be valid CSR.
        # Each piece is added before the next is read, so the pieces reuse one set of buffers.
        for first, stop, rows in block.pieces(used_rows=np.unique(member_cells), reuse=True):
            accumulator = metacell_sum_block(rows, *rows_of_members(member_indptr, member_cells, first, stop),
                                             n_metacells, dtype, out=accumulator, columns=columns,
                                             max_members=max_members)
            added = True
    except BaseException:
        if given is not None and added:
            _PART_ADDED[id(given)] = given
        raise
    return accumulator


def rows_of_members(member_indptr: np.ndarray, member_cells: np.ndarray, first: int,
                    stop: int) -> tuple[np.ndarray, np.ndarray]:
    """A block membership (CSR, block-local cells) restricted to the block's rows ``first:stop``,
    with cells renumbered from ``first``.

    Examples
    --------
    >>> indptr, cells = rows_of_members(np.array([0, 2, 3]), np.array([0, 3, 2]), 2, 4)
    >>> indptr.tolist(), cells.tolist()
    ([0, 1, 2], [1, 0])
    """
    keep = (member_cells >= first) & (member_cells < stop)
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    return kept_before[member_indptr].astype(np.int64), (member_cells[keep] - first).astype(np.int64)


def default_lanes(client: Any) -> int:
    """Accumulators per streaming pass: the cluster's worker threads, or the local cores up to 4."""
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a client without workers yet
            return 2
    return max(1, min(4, os.cpu_count() or 1))


def lane_workers(client: Any) -> list[str]:
    """The worker each lane's chain is pinned to: lane ``g`` on ``lane_workers(client)[g % n]``.

    The workers of a distributed ``client`` sorted by address (empty without one). A chain left
    to the scheduler started on whichever worker looked idle when it was submitted: on a fresh
    2-worker cluster both modalities' chains sometimes went to one worker, the other idle (a
    first peak_to_gene call 5.2 s instead of 4.2 s).

    Examples
    --------
    >>> lane_workers(None)
    []
    """
    if client is None or not hasattr(client, "scheduler_info"):
        return []
    try:
        return sorted(client.scheduler_info()["workers"])
    except Exception:  # noqa: BLE001 - no workers known yet: the scheduler places the chains
        return []


def nonzero_shares(*modalities: Any) -> list[float]:
    """Each modality's fraction of the nonzeros of all: its share of the cluster's lanes when
    they are summed side by side (``lane_share`` of :func:`membership_sums`).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> nonzero_shares(SimpleNamespace(nnz=30), SimpleNamespace(nnz=10))
    [0.75, 0.25]
    """
    counts = [max(0, int(m.nnz)) for m in modalities]
    total = sum(counts)
    return [c / total if total else 1 / len(counts) for c in counts]


def block_membership(membership: sp.csc_matrix, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """The membership restricted to cells ``start:stop`` as CSR arrays with block-local cell indices."""
    block = sp.csr_matrix(membership[:, start:stop])
    block.sort_indices()
    return block.indptr.astype(np.int64), block.indices.astype(np.int64)


def metacell_sums(modality: Modality, neighbours: np.ndarray, **options: Any) -> tuple[list[ColumnBlock], Delayed]:
    """Lazy metacell sums of a modality and their per-metacell totals.

    Parameters
    ----------
    modality
        Counts in memory or in a store (see ``p2g_dask.io.inputs.resolve_input``).
    neighbours
        ``(n_metacells, k)`` cell indices (from :func:`p2g_dask.tl.engine.metacells`).
    **options
        ``chunk_cells``, ``split_every``, ``lanes``, ``lane_share``, ``block_bytes``, ``dtype``,
        ``client``: see :func:`membership_sums`.

    Returns
    -------
    (list of ColumnBlock, Delayed)
        The column blocks of the sums (metacells x features) and the metacell ``totals`` over
        all features, in float64.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, dask
    >>> from p2g_dask.io.inputs import Modality
    >>> import pandas as pd
    >>> X = sp.csr_matrix(np.arange(12).reshape(4, 3))
    >>> mod = Modality("atac", pd.DataFrame(index=list("abcd")), pd.DataFrame(index=list("xyz")), X=X)
    >>> blocks, totals = metacell_sums(mod, np.array([[0, 1], [2, 3]]), chunk_cells=2)
    >>> dask.compute(blocks[0].sums, totals, scheduler="sync")
    (array([[ 3.,  5.,  7.],
           [15., 17., 19.]], dtype=float32), array([15., 51.]))
    """
    neighbours = np.asarray(neighbours)
    membership = metacell_membership(neighbours, modality.n_obs)
    return membership_sums(modality, membership, token=tokenize(neighbours), **options)


def membership_sums(
    modality: Modality,
    membership: sp.spmatrix,
    *,
    chunk_cells: int | None = None,
    split_every: int = 4,
    lanes: int | None = None,
    lane_share: float = 1.0,
    block_bytes: int = 256 * 2**20,
    dtype=None,
    client: Any = None,
    token: str | None = None,
    first_lane: int = 0,
) -> tuple[list[ColumnBlock], Delayed]:
    """Lazy ``membership @ X`` (groups x features) in one streaming pass over the cell rows.

    ``membership`` is any groups x cells 0/1 matrix: the metacells of one run, or several
    memberships stacked by rows (``scipy.sparse.vstack``), which are then summed in the same
    single pass and split by row ranges afterwards.

    Parameters
    ----------
    modality
        Counts in memory or in a store (see ``p2g_dask.io.inputs.resolve_input``).
    membership
        Groups x cells sparse matrix.
    chunk_cells
        Cells per task; from ~96 MiB of CSR per chunk when None. In memory without a client,
        None (and ``lanes`` None) sums the whole matrix on all cores into one buffer per
        column block instead of chunks and lanes.
    split_every
        Fan-in of the tree reduction of the lanes' accumulators.
    lanes
        Accumulators that chunks are folded into (default: the cluster's worker threads, or
        the local cores up to 4); memory is ``lanes x groups x features``.
    lane_share
        This modality's share of those default lanes when others are summed at the same time
        (:func:`nonzero_shares`; at least one lane): peak_to_gene's ATAC and RNA then each take
        about half the workers, and each sum is held once or twice instead of once per worker.
    block_bytes
        Largest accumulator: features are summed in column blocks of about this many bytes.
    dtype
        Accumulator dtype. None: exact counts in uint16 (half float32's memory, and faster) while
        every value is a count of at most ``65535 // cells of the largest group`` (655 for
        metacells of 100 cells), so no sum can pass 65,535; promoted to float32 (exactly) before
        the first chunk that has a larger or non-count value; float32 in memory without a
        client. The sums are float32 either way (exact for integer sums up to 2**24).
    client
        The ``distributed.Client`` the graph will run on (sets the default lanes), or None.
    token
        Names the membership in the task keys (hashed from it when None).
    first_lane
        The cluster-wide number of this modality's first lane: lane ``first_lane + l`` runs on
        worker ``(first_lane + l) % n_workers`` (:func:`lane_workers`; another worker only if that
        one is gone), so modalities summed side by side start on different workers.

    Returns
    -------
    (list of ColumnBlock, Delayed)
        The column blocks of the sums (groups x features) and the group ``totals`` over all
        features, in float64.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, pandas as pd
    >>> from p2g_dask.io.inputs import Modality
    >>> mod = Modality("rna", pd.DataFrame(index=list("abc")), pd.DataFrame(index=["g"]), X=sp.csr_matrix(np.ones((3, 1))))
    >>> blocks, totals = membership_sums(mod, sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]])))
    >>> totals.compute(scheduler="sync").tolist()
    [2.0, 2.0]
    """
    n_metacells, n_features = int(membership.shape[0]), modality.n_vars
    membership = sp.csc_matrix(membership)
    # Exact uint16 sums add values up to 65535 // (the largest group's cells) only.
    max_members = int(np.diff(sp.csr_matrix(membership).indptr).max(initial=0))
    # Sizes are planned at float32's (what a promoted accumulator holds).
    planned = np.dtype(dtype if dtype is not None else np.float32)
    # Column blocks bound the size of every accumulator (so the scheduler can hold or spill
    # them one by one), however many metacells there are.
    width = max(1, min(n_features, int(block_bytes // max(1, n_metacells * planned.itemsize))))
    column_blocks = [(c, min(c + width, n_features)) for c in range(0, n_features, width)] or [(0, 0)]
    # In memory on the local scheduler, unless chunks or lanes are asked for: all cores on
    # one buffer per column block (nothing to stream, so nothing to chunk).
    if client is None and lanes is None and chunk_cells is None and modality.store is None and modality.X is not None:
        return _memory_sums(modality, membership, column_blocks, n_metacells, planned.type, token)
    dtype = np.uint16 if dtype is None else dtype
    # One column block: the summing task reads its rows itself, so no chunk waits in worker
    # memory between a read task and its sum (memory stays flat with cells).
    chunks, bounds = modality.blocks(chunk_cells, fused=len(column_blocks) == 1)
    token = tokenize(modality.name, token if token is not None else membership, bounds, str(dtype),
                     column_blocks, [c.key for c in chunks])
    # Chunks are folded into a few accumulators ("lanes") per column block, each a chain of
    # tasks that adds one chunk in place: memory is lanes x metacells x features at most,
    # whatever the number of cells.
    if not lanes:
        # One accumulator per worker thread (this modality's share of them), fewer when they
        # would hold over ~1 GiB in all.
        matrix_bytes = n_metacells * n_features * planned.itemsize
        shared = max(1, round(default_lanes(client) * lane_share))
        lanes = max(1, min(shared, int(max(matrix_bytes, 2**30) // max(1, matrix_bytes))))
    n_lanes = max(1, min(len(chunks), int(lanes)))
    accumulators = [[None] * n_lanes for _ in column_blocks]
    inline = len(column_blocks) == 1
    workers = lane_workers(client)
    for i, (chunk, (start, stop)) in enumerate(zip(chunks, bounds)):
        members = block_membership(membership, start, stop)
        if inline and modality.store is not None:
            # The rows' reference and the membership travel inside the task: the chain's next
            # task never waits to fetch them from a worker busy with its own sum (measured:
            # 0.4 s stalls on PBMC10k, 0.3 s faster first calls).
            chunk = StoreRange(modality.store.path, modality.store.name, start, stop, modality.n_vars)
        elif not inline:
            # The chunk's membership is one graph value shared by the tasks of every column block.
            members = delayed(members, name=f"p2g-members-{token}-{i}")
        lane = i % n_lanes
        pinned = {"workers": [workers[(first_lane + lane) % len(workers)]], "allow_other_workers": True} if workers else {}
        with dask.annotate(**pinned):
            for b, columns in enumerate(column_blocks):
                accumulators[b][lane] = delayed(_add_block, pure=True)(
                    accumulators[b][lane], chunk, members, n_metacells, dtype, columns, max_members,
                    dask_key_name=f"p2g-metacell-sum-{tokenize(token, b, i)}",
                )
    blocks = [
        ColumnBlock(first, stop, _lanes_total(accumulators[b], tokenize(token, b), split_every), tuple(accumulators[b]))
        for b, (first, stop) in enumerate(column_blocks)
    ]
    # Totals from each accumulator's row sums where it lives (m values move, not the sums).
    lane_totals = [delayed(_row_totals, pure=True)(acc, dask_key_name=f"p2g-metacell-rowtotals-{tokenize(token, b, lane)}")
                   for b, lanes_of_block in enumerate(accumulators) for lane, acc in enumerate(lanes_of_block)]
    totals = delayed(_graph.add_arrays, pure=True)(*lane_totals, dask_key_name=f"p2g-metacell-totals-{token}")
    return blocks, totals


def _lanes_total(lanes: list, token: str, split_every: int) -> Delayed:
    # One lane is made float32 too: consumers of a block's sums never see uint16 counts.
    if len(lanes) == 1:
        return delayed(add_sums, pure=True)(lanes[0], dask_key_name=f"p2g-metacell-sum-combine-{token}-1-0")
    return _graph.tree_sum(lanes, "metacell-sum-combine", token, split_every=split_every, combine=add_sums)


def add_sums(*parts: np.ndarray) -> np.ndarray:
    """The total of partial sums in float32 or wider (exact-count uint16 parts are converted).

    Examples
    --------
    >>> add_sums(np.array([65535], dtype=np.uint16), np.array([1], dtype=np.uint16))
    array([65536.], dtype=float32)
    """
    dtype = np.result_type(np.float32, *(part.dtype for part in parts))
    total = parts[0] if len(parts) == 1 and parts[0].dtype == dtype else parts[0].astype(dtype)
    for part in parts[1:]:
        total += part
    return total


def _row_totals(sums: np.ndarray) -> np.ndarray:
    return sums.sum(axis=1, dtype=np.float64)


def _memory_sums(modality: Modality, membership: sp.csc_matrix, column_blocks: list[tuple[int, int]],
                 n_metacells: int, dtype, token: Any) -> tuple[list[ColumnBlock], Delayed]:
    """In memory on the local scheduler: one task per column block sums every metacell straight
    into one buffer, its threads on disjoint metacells (no lanes, no partial sums to add)."""
    token = tokenize(modality.name, id(modality.X), modality.X.shape, modality.nnz,
                     token if token is not None else membership, str(dtype), column_blocks)
    # The whole matrix as one graph literal (a view of the caller's CSR arrays, not a copy).
    rows = delayed(Rows.of(modality.X), name=f"p2g-input-{token}")
    members = delayed(block_membership(membership, 0, modality.n_obs), name=f"p2g-members-{token}")
    blocks = [
        ColumnBlock(first, stop, delayed(_sum_memory_block, pure=True)(
            rows, members, n_metacells, dtype, (first, stop),
            dask_key_name=f"p2g-metacell-sum-{tokenize(token, b)}"))
        for b, (first, stop) in enumerate(column_blocks)
    ]
    totals = delayed(_total_of_blocks, pure=True)(*[block.sums for block in blocks],
                                                 dask_key_name=f"p2g-metacell-totals-{token}")
    return blocks, totals


def _sum_memory_block(rows, members, n_metacells, dtype, columns):
    member_indptr, member_cells = members
    return metacell_sums_threaded(rows, member_indptr, member_cells, n_metacells, dtype, columns=columns)


def _total_of_blocks(*block_sums: np.ndarray) -> np.ndarray:
    return np.sum([s.sum(axis=1, dtype=np.float64) for s in block_sums], axis=0)


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
    member_indptr, member_cells = block_membership(
        sp.csc_matrix(metacell_membership(neighbours, X.shape[0])), 0, X.shape[0]
    )
    sums = metacell_sum_block(X if sp.issparse(X) else np.asarray(X), member_indptr, member_cells,
                              neighbours.shape[0], np.float64)
    return normalize_log2(sums, sums.sum(axis=1), scale_to)
