"""The links engine's numba kernels readied on a thread while a call plans its work.

An in-memory ``peak_to_gene`` or ``co_accessibility`` runs four kernels in the calling process,
one after another: the metacells' nearest neighbours, the metacell sums, the standardisation and
the pair dot products. In a first run after install each is compiled when first called (1.5 s
in all, the standardisation alone 0.66 s, while nothing else runs); later runs load them from the
on-disk cache. :func:`prepare_in_background` calls each once on a tiny input of the same types,
in that order, on a daemon thread: compiling or loading them overlaps the plan, the metacells
and the sums (whose kernels release the GIL, and llvmlite releases it while LLVM optimises). A
call that reaches a kernel first simply compiles it itself; numba's compiler lock serialises the
two, so nothing is compiled twice.
"""

from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp

from p2g_dask._logging import logger


def prepare_in_background(matrix_dtypes: tuple) -> threading.Thread:
    """Compile (or load from cache) the in-memory links kernels for counts of ``matrix_dtypes``.

    Parameters
    ----------
    matrix_dtypes
        ``(values dtype, column indices dtype)`` of each count matrix as the sums read it
        (:func:`csr_dtypes`): numba compiles one kernel per pair.

    Returns
    -------
    threading.Thread
        The daemon thread doing it (already started).

    Examples
    --------
    >>> prepare_in_background(((np.float32, np.int32),)).join()
    """
    dtypes = tuple(dict.fromkeys((np.dtype(values), np.dtype(indices)) for values, indices in matrix_dtypes))
    thread = threading.Thread(target=_prepare, args=(dtypes,), name="p2g-prepare-kernels", daemon=True)
    thread.start()
    return thread


def _prepare(dtypes: tuple) -> None:
    # Imported here: the caller's thread has imported them already (importing in two threads at
    # once can meet the import-deadlock guard); these are lookups.
    from p2g_dask.tl.engine.kernels import metacell_sums_threaded, pair_correlation_t, standardized_features
    from p2g_dask.tl.engine.knn import nearest_neighbours

    try:
        points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        nearest_neighbours(points, points[:1], 2)
        members = (np.array([0, 2], dtype=np.int64), np.array([0, 1], dtype=np.int64))
        for values, indices in dtypes:
            counts = sp.csr_matrix(np.array([[1, 0], [2, 3]], dtype=values))
            counts.indices = counts.indices.astype(indices)
            metacell_sums_threaded(counts, *members, 1, threads=1)
        sums = np.array([[1.0, 2.0], [3.0, 5.0]], dtype=np.float32)
        standardized_t, _ = standardized_features(sums, sums.sum(1))
        pair_correlation_t(standardized_t, standardized_t, np.array([0]), np.array([1]))
    except Exception as err:  # noqa: BLE001 - an optimisation: the call compiles what it needs itself
        logger.debug("links kernels not prepared in the background: %s", err)


def prepare_for_plan(plan, client) -> threading.Thread | None:
    """:func:`prepare_in_background` when ``plan``'s kernels run in this process, else None.

    They do for in-memory counts without a distributed ``client``; a store's sums and
    correlations run on the workers (warmed by :func:`p2g_dask.cluster.start_cluster`).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> prepare_for_plan(SimpleNamespace(atac=SimpleNamespace(store="s.zarr"), rna=None), None) is None
    True
    """
    modalities = [m for m in (plan.atac, plan.rna) if m is not None]
    if client is not None or any(m.store is not None or getattr(m, "X", None) is None for m in modalities):
        return None
    return prepare_in_background(tuple(csr_dtypes(m.X) for m in modalities))


def csr_dtypes(matrix) -> tuple:
    """``(values dtype, column indices dtype)`` of ``matrix`` as CSR rows (``p2g_dask.io.blocks.Rows.of``):
    a CSR matrix keeps its own; anything else is converted, and scipy then picks int32 indices.

    Examples
    --------
    >>> csr_dtypes(np.zeros((2, 2), dtype=np.float32))
    (dtype('float32'), dtype('int32'))
    """
    if sp.issparse(matrix) and matrix.format == "csr":
        return matrix.dtype, matrix.indices.dtype
    return matrix.dtype, np.dtype(np.int32)
