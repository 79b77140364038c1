"""Warm a process before its first p2g_dask call: imports done, numba kernels loaded from cache.

A fresh process otherwise pays, inside its first call, the loading of every numba kernel from
its on-disk cache (``cache=True``: no compilation, but each signature's machine code still has
to be read and linked). A Dask worker started by :func:`p2g_dask.cluster.start_cluster` runs
:func:`warm` when it starts (``p2g_dask.cluster.WarmWorker``); :func:`warm_in_background` loads
them in a thread of a client.
"""

from __future__ import annotations

import importlib
import threading
import time
from types import ModuleType

from p2g_dask._logging import logger

#: Imported by :func:`warm` (the modules a first call of any tool would import on a worker).
WARM_MODULES = (
    "p2g_dask.tl",
    "p2g_dask.io",
    "p2g_dask.tl.engine.kernels",
    "p2g_dask.tl.lsi._kernels",
    "p2g_dask.tl.lsi._stream",
    "p2g_dask.tl.lsi._clusters",
    "p2g_dask.tl.pseudobulk._coverage",
    "p2g_dask.io._bigwig_writer",
    "p2g_dask.io._integrity",
    "p2g_dask.io._chunks",
    "scipy.special",
    "zarr",
)


def load_cached_kernels(module: ModuleType) -> int:
    """Load, without compiling, every cached signature of the module's numba kernels.

    Only signatures whose cache entry matches this machine and the current source are loaded
    (those a previous run compiled); anything else is left for the first call to compile.

    Parameters
    ----------
    module
        A module holding ``numba.njit(cache=True)`` functions.

    Returns
    -------
    int
        The number of signatures loaded.

    Examples
    --------
    >>> import p2g_dask.tl.engine.kernels as kernels
    >>> load_cached_kernels(kernels) >= 0
    True
    """
    from numba.core.registry import CPUDispatcher

    loaded = 0
    for kernel in list(vars(module).values()):
        if not isinstance(kernel, CPUDispatcher):
            continue
        try:
            cache = kernel._cache
            codegen = kernel.targetctx.codegen()
            for key in list(cache._cache_file._load_index()):
                signature = key[0]
                # The same key numba would look up: this CPU and the current source of the kernel.
                if key == cache._index_key(signature, codegen) and signature not in kernel.overloads:
                    kernel.compile(signature)
                    loaded += 1
        except Exception as err:  # noqa: BLE001 - numba internals: warming is best effort
            logger.debug("warm: kernel %s not preloaded (%s)", getattr(kernel, "__name__", kernel), err)
    return loaded


def warm(modules: tuple[str, ...] = WARM_MODULES) -> dict[str, float]:
    """Import ``modules`` and load their cached numba kernels; return seconds per module.

    Parameters
    ----------
    modules
        Module names; one that cannot be imported is skipped (logged at debug level).

    Returns
    -------
    dict
        Seconds spent per module (import and kernel loading).

    Examples
    --------
    >>> "p2g_dask.tl.engine.kernels" in warm(("p2g_dask.tl.engine.kernels",))
    True
    """
    seconds = {}
    for name in modules:
        started = time.perf_counter()
        try:
            module = importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - optional dependency missing: nothing to warm
            logger.debug("warm: %s not imported (%s)", name, err)
            continue
        if name.startswith("p2g_dask"):
            load_cached_kernels(module)
        seconds[name] = round(time.perf_counter() - started, 4)
    return seconds


#: Imported and loaded by :func:`warm_in_background` in the client when
#: :func:`p2g_dask.cluster.start_cluster` starts a cluster, while the workers warm: the tools'
#: modules (their imports were 0.4 s of a first peak_to_gene call on a store) and the kernels a
#: client runs itself (the metacells' kNN, the correlation tables, LSI's fits and clustering).
BACKGROUND_MODULES = ("p2g_dask.tl.engine.knn", "p2g_dask.tl.engine.kernels", "p2g_dask.tl.lsi._kernels",
                      "p2g_dask.tl.lsi._clusters", "p2g_dask.tl.links.peak_to_gene", "p2g_dask.tl.links.coaccess",
                      "p2g_dask.tl.lsi.lsi", "p2g_dask.tl.scores.gene_scores")


def warm_in_background(modules: tuple[str, ...] = BACKGROUND_MODULES) -> threading.Thread | None:
    """Load the cached numba kernels of ``modules`` in a daemon thread; return it (None when off).

    Called by :func:`p2g_dask.cluster.start_cluster` (with ``warm=True``): the client's kernels
    load while the workers start, so the first call on a fresh cluster does not wait for them
    (a call that comes first simply loads them itself; numba serialises the two). Off with the
    dask config ``p2g.warm-kernels: false`` (or ``DASK_P2G__WARM_KERNELS=false``).

    Examples
    --------
    >>> thread = warm_in_background(())
    >>> thread is None or thread.name == "p2g-warm"
    True
    """
    import dask

    if not dask.config.get("p2g.warm-kernels", True):
        return None

    # Imported here, in the caller's thread: two threads importing at once can meet Python's
    # import-deadlock guard and see half-initialised modules. Only the kernel loading runs behind.
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except Exception as err:  # noqa: BLE001 - optional module missing: nothing to warm
            logger.debug("warm: %s not imported (%s)", name, err)

    def run() -> None:
        for module in loaded:
            try:
                load_cached_kernels(module)
            except Exception as err:  # noqa: BLE001 - best effort: the first call loads them anyway
                logger.debug("warm: %s not preloaded (%s)", module.__name__, err)

    thread = threading.Thread(target=run, name="p2g-warm", daemon=True)
    thread.start()
    return thread


def in_worker_process() -> bool:
    """Whether this process runs a Dask worker, or is a nanny's worker process still starting:
    its tasks never need the client-side libraries (scikit-learn's kNN, igraph's Leiden), so
    :mod:`p2g_dask.tl` does not import them there.

    A starting worker process counts: a spawned process re-imports the user's script (as
    ``__mp_main__``) before its Worker exists, and that script's ``import p2g_dask.tl`` would
    otherwise add ~90 MiB to every worker.

    Examples
    --------
    >>> in_worker_process() in (True, False)  # True also beside an in-process LocalCluster's workers
    True
    """
    import multiprocessing
    import sys

    # distributed.nanny names the process it spawns for its worker (set before __mp_main__ runs).
    if multiprocessing.current_process().name.startswith("Dask Worker process"):
        return True
    worker = sys.modules.get("distributed.worker")
    return bool(worker is not None and len(getattr(worker.Worker, "_instances", ())))
