"""The one graph module: tree sums and running a graph; it builds graphs and reads no data.

Every tool and plot builds its Dask graph with these pieces (the row blocks they read are
:mod:`p2g_dask.io.blocks`), so they share one way to

- sum partial results with a bounded fan-in (:func:`tree_sum`), and
- run a graph on a ``distributed`` client or a local scheduler, with or without a progress bar
  (:func:`compute`, :func:`executor`).

Task keys are ``p2g-<step>-<token>``: the step is alphabetic words, everything else (modality,
chromosome, group) goes into the token, so the dashboard groups tasks by step.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import dask
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import Delayed, delayed


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
    """``client``, else the current ``distributed`` client, else None (the local scheduler).

    A scheduler the caller chose in dask's config (``dask.config.set(scheduler="sync")``,
    "threads", ...) wins over a default client, as it does for ``dask.compute``; a closed client
    is no client.
    """
    if client is not None:
        return client
    if "distributed" not in sys.modules:  # no client can exist; importing distributed costs ~1 s
        return None
    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    try:
        from distributed import get_client

        found = get_client()
    except (ImportError, ValueError):
        return None
    return None if getattr(found, "status", "running") in ("closing", "closed") else found


#: Seconds a graph runs before its progress bar appears (dask config ``p2g.progress-after``):
#: short work stays silent. The command line sets 0: its stages are announced on lines of their own.
PROGRESS_AFTER = 3.0


def _progress_after() -> float:
    return float(dask.config.get("p2g.progress-after", PROGRESS_AFTER))


def _finished_within(futures: list, seconds: float) -> bool:
    from distributed import wait

    if seconds <= 0:
        return False
    try:
        wait(futures, timeout=seconds)
    except TimeoutError:
        return False
    return True


def _cluster_progress(client: Any, futures: list, *, interval: float = 0.2,
                      width: int = 40, stream: Any = None) -> None:
    """A text progress bar (stderr) of a graph running on a cluster, until its results are ready.

    It polls the scheduler for the graph's tasks still to run (waiting, queued, processing),
    from this thread: unlike ``distributed.progress`` nothing runs in an event loop of its own,
    so it cannot hang when the graph finishes before the bar starts listening.
    """
    from distributed import wait

    root_keys = [future.key for future in futures]
    stream = sys.stderr if stream is None else stream
    started = time.perf_counter()
    total = 0

    def remaining(dask_scheduler, root_keys=root_keys) -> int:
        # Walk down from the results through tasks still to run: a finished task's inputs are
        # finished too. The scheduler's keys, not the graph's: optimization may have renamed them.
        pending, seen, stack = 0, set(), list(root_keys)
        while stack:
            ts = dask_scheduler.tasks.get(stack.pop())
            if ts is None or ts.key in seen or ts.state not in ("waiting", "queued", "processing", "no-worker"):
                continue
            seen.add(ts.key)
            pending += 1
            stack.extend(dep.key for dep in ts.dependencies)
        return pending

    def draw(done: int) -> None:
        filled = int(width * done / max(1, total))
        stream.write(f"\r[{'#' * filled}{' ' * (width - filled)}] | {100 * done // max(1, total):3d}% Completed "
                     f"| {time.perf_counter() - started:5.1f}s")
        stream.flush()

    while True:
        try:
            wait(futures, timeout=interval)
            total = max(total, 1)
            draw(total)
            break
        except TimeoutError:
            try:
                left = client.run_on_scheduler(remaining)
                total = max(total, left)
                draw(total - left)
            except Exception:  # noqa: BLE001 - a bar that cannot be drawn never stops the work
                pass
    stream.write("\n")
    stream.flush()


def show_progress_default(progress: bool | None) -> bool:
    """``progress``, or the dask config ``p2g.show-progress`` (True unless set) when None: the one
    default of every tool's ``show_progress``.

    Examples
    --------
    >>> show_progress_default(False), show_progress_default(None)
    (False, True)
    >>> with dask.config.set({"p2g.show-progress": False}):
    ...     show_progress_default(None)
    False
    """
    return bool(dask.config.get("p2g.show-progress", True)) if progress is None else bool(progress)


def compute(graph: Any, client: Any = None, progress: bool | None = False, *, scheduler: str | None = None,
            num_workers: int | None = None) -> Any:
    """Run a graph: on ``client`` (or the current client), else the local Dask scheduler.

    Parameters
    ----------
    graph
        A Dask collection / delayed object, or a list or tuple of them.
    client
        A ``distributed.Client``; None uses the current client if there is one.
    progress
        Show a progress bar on stderr (the scheduler polled for tasks left on a client, else Dask's
        ``ProgressBar``) once the graph has run ``p2g.progress-after`` (3) seconds; None:
        :func:`show_progress_default`.
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
    progress = show_progress_default(progress)
    client = current_client(client) if scheduler is None else None
    if client is not None:
        with warnings.catch_warnings():
            # In-memory inputs travel in the graph on purpose (a lost worker can be replayed).
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            futures = client.compute(tasks)
        if progress and not _finished_within(futures, _progress_after()):
            _cluster_progress(client, futures)
        with quiet_known_failures():
            results = client.gather(futures)
    else:
        from dask.diagnostics import ProgressBar

        chosen = scheduler or local_scheduler()
        options = {k: v for k, v in (("scheduler", chosen), ("num_workers", num_workers)) if v is not None}
        bar = ProgressBar(minimum=_progress_after(), out=sys.stderr) if progress else contextlib.nullcontext()
        with bar, _own_thread_pool(chosen, num_workers) as pool:
            results = dask.compute(*tasks, **options, **pool)
    return list(results) if many else results[0]


@contextlib.contextmanager
def _own_thread_pool(chosen: Any, num_workers: int | None) -> Iterator[dict]:
    """A thread pool of this compute's own for the threaded scheduler, shut down (waiting) on exit.

    Dask's threaded scheduler raises a task's error at once while the other running tasks go on
    in its shared pool; with a pool of its own, a failed call returns only when every task it
    started has stopped, so nothing keeps writing (e.g. into a folder the caller then removes).
    """
    from dask import threaded

    if chosen is not threaded.get and chosen not in ("threads", "threading"):
        yield {}
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(num_workers or dask.config.get("num_workers", None) or os.cpu_count() or 1)
    try:
        yield {"pool": pool}
    finally:
        pool.shutdown(wait=True)


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
def executor(name: str, *, n_jobs: int, client: Any = None, progress: bool | None = None) -> Iterator[Callable]:
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
