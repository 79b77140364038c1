"""The one graph module: the block type, store reads, tree sums and running a graph.

Every tool and plot builds its Dask graph from these pieces, so they share one way to

- hold a block of cell rows (:class:`Rows`: CSR arrays and the number of features),
- read row blocks of a store (:func:`store_blocks`, keys ``p2g-read-<token>-<i>``, or lazy
  :class:`StoreRange` references that the consuming task reads itself: "fused" reads),
- sum partial results with a bounded fan-in (:func:`tree_sum`), and
- run a graph on a ``distributed`` client or a local scheduler, with or without a progress bar
  (:func:`compute`).

Task keys are ``p2g-<step>-<token>``: the step is alphabetic words, everything else (modality,
chromosome, group) goes into the token, so the dashboard groups tasks by step.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import dask
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import Delayed, delayed


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
        from p2g_dask.io._integrity import read_block

        data, indices, indptr = read_block(self.path, self.modality, self.start, self.stop, self.n_vars)
        return Rows(data, indices, indptr, self.n_vars)

    def pieces(self) -> Iterator[tuple[int, int, Rows]]:
        """The rows as consecutive verified pieces ``(first, stop, rows)`` (rows relative to
        ``start``): a consumer folding each piece in holds one piece at a time, not the range."""
        from p2g_dask.io._integrity import read_pieces

        for first, stop, (data, indices, indptr) in read_pieces(self.path, self.modality, self.start, self.stop,
                                                                self.n_vars):
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


def add_arrays(*parts: np.ndarray) -> np.ndarray:
    """The sum of the parts (a new array; the inputs are not changed)."""
    if len(parts) == 1:
        return parts[0]
    total = parts[0] + parts[1]
    for part in parts[2:]:
        total += part
    return total


def tree_sum(parts: Sequence[Any], step: str, token: str, *, split_every: int = 8,
             combine: Callable[..., Any] = add_arrays) -> Any:
    """Sum delayed parts in a tree with at most ``split_every`` inputs per task.

    Parameters
    ----------
    parts
        Delayed arrays of one shape (or values ``combine`` accepts).
    step, token
        Keys are ``p2g-<step>-<token>-<level>-<i>``.
    split_every
        Fan-in: bounds how many partial results one task holds at once.
    combine
        ``combine(*parts)`` of one tree node; elementwise ``+`` by default.

    Returns
    -------
    dask.delayed.Delayed
        The total (the single part itself when there is one).

    Examples
    --------
    >>> parts = [delayed(np.full(2, i)) for i in range(5)]
    >>> tree_sum(parts, "demo", "abc", split_every=2).compute().tolist()
    [10, 10]
    """
    parts, level = list(parts), 0
    split_every = max(2, int(split_every))
    while len(parts) > 1:
        level += 1
        parts = [
            delayed(combine, pure=True)(*parts[i : i + split_every], dask_key_name=f"p2g-{step}-{token}-{level}-{i}")
            for i in range(0, len(parts), split_every)
        ]
    return parts[0]


def current_client(client: Any = None) -> Any:
    """``client``, else the current ``distributed`` client, else None (the local scheduler)."""
    if client is not None:
        return client
    if "distributed" not in sys.modules:  # no client can exist; importing distributed costs ~1 s
        return None
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def compute(graph: Any, client: Any = None, progress: bool = False, *, scheduler: str | None = None,
            num_workers: int | None = None) -> Any:
    """Run a graph: on ``client`` (or the current client), else the local Dask scheduler.

    Parameters
    ----------
    graph
        A Dask collection / delayed object, or a list or tuple of them.
    client
        A ``distributed.Client``; None uses the current client if there is one.
    progress
        Show a progress bar (``distributed.progress`` on a client, else Dask's ``ProgressBar``).
    scheduler, num_workers
        The local scheduler (``"threads"``, ``"processes"``, ``"sync"``) and its workers when no
        client runs the graph; Dask's defaults when None.

    Returns
    -------
    The result, or a list of results for a list or tuple.

    Examples
    --------
    >>> compute([delayed(sum)([1, 2]), delayed(max)([1, 2])], scheduler="sync")
    [3, 2]
    """
    many = isinstance(graph, (list, tuple))
    tasks = list(graph) if many else [graph]
    client = current_client(client) if scheduler is None else None
    if client is not None:
        with warnings.catch_warnings():
            # In-memory inputs travel in the graph on purpose (a lost worker can be replayed).
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            futures = client.compute(tasks)
        if progress:
            from distributed import progress as show

            show(futures)
        with quiet_known_failures():
            results = client.gather(futures)
    else:
        from dask.diagnostics import ProgressBar

        options = {k: v for k, v in (("scheduler", scheduler or local_scheduler()), ("num_workers", num_workers))
                   if v is not None}
        with ProgressBar() if progress else contextlib.nullcontext():
            results = dask.compute(*tasks, **options)
    return list(results) if many else results[0]


def local_scheduler() -> Any:
    """The configured local scheduler (default threads), resolved without importing ``distributed``.

    ``dask.compute`` imports ``distributed`` to look for a client (~0.5 s in a fresh process);
    with no client possible (see :func:`current_client`) the named schedulers are enough.
    """
    from dask.base import named_schedulers

    chosen = dask.config.get("scheduler", None)
    if "distributed" in sys.modules or chosen is None and dask.config.get("get", None) is not None:
        return chosen
    if chosen is None:
        return named_schedulers["threads"]
    if isinstance(chosen, str) and chosen.lower() in named_schedulers:
        return named_schedulers[chosen.lower()]
    return chosen


class _KnownFailureFilter:
    """Drops the worker's "Compute Failed" log of a task that raised an InputFileError.

    The error reaches the caller (and the CLI prints it as one line); the worker's multi-line
    copy of it, with a traceback, on stderr is noise. Other task failures are still logged.
    """

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not (message.startswith("Compute Failed") and "InputFileError" in message)


@contextlib.contextmanager
def quiet_known_failures() -> Iterator[None]:
    """While running a graph: no worker log of a task failing on a damaged input file (in-process workers)."""
    import logging

    target, known = logging.getLogger("distributed.worker"), _KnownFailureFilter()
    target.addFilter(known)
    try:
        yield
    finally:
        target.removeFilter(known)


@contextlib.contextmanager
def _quiet_shutdown() -> Iterator[None]:
    # Closing a cluster while tasks of a failed run still run logs CancelledError / comm
    # errors: after a failure they say nothing the caller's error does not.
    import logging

    names = ("distributed", "asyncio", "tornado")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


#: Local schedulers by the executor names of the tools (``"dask"``: a ``distributed`` client).
EXECUTORS = {"dask": None, "thread": "threads", "process": "processes", "synchronous": "sync"}


@contextlib.contextmanager
def executor(name: str, *, n_jobs: int, client: Any = None, progress: bool = True) -> Iterator[Callable]:
    """Yield ``run(list of delayed) -> list of results`` on the executor ``name``.

    ``"dask"`` runs on ``client``, else the current client, else a LocalCluster started here
    (one in-process worker with ``n_jobs`` threads, closed on exit); the others run Dask's local
    scheduler of that name with ``n_jobs`` workers. Every run goes through :func:`compute`.

    Examples
    --------
    >>> with executor("synchronous", n_jobs=1, progress=False) as run:
    ...     run([delayed(sum)([1, 2])])
    [3]
    """
    scheduler, own = EXECUTORS[name], None
    if scheduler is None:
        client = current_client(client)
        if client is None:
            import distributed

            from p2g_dask._logging import logger

            # One in-process worker with n_jobs threads: the parquet reads, sorts, pileup
            # kernels and deflate all release the GIL, and threads share the pileups instead
            # of sending them between processes (30 M fragments: 7 s instead of 14 s cached).
            # tcp on 127.0.0.1 (not inproc://, whose dashboard link shows the public IP).
            cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=n_jobs, processes=False,
                                               protocol="tcp://", host="127.0.0.1",
                                               dashboard_address="127.0.0.1:0")
            own = client = distributed.Client(cluster)
            logger.info("started a LocalCluster (1 in-process worker, %d threads); dashboard %s", n_jobs,
                        client.dashboard_link)

    def run(tasks: list) -> list:
        return compute(list(tasks), client, progress, scheduler=scheduler, num_workers=n_jobs if scheduler else None)

    failed = False
    try:
        yield run
    except BaseException:
        failed = True
        raise
    finally:
        if own is not None:
            cluster = own.cluster
            with _quiet_shutdown() if failed else contextlib.nullcontext():
                own.close()
                cluster.close()
