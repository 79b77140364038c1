"""Clustering of cells between LSI iterations: Leiden on a shared-nearest-neighbour graph.

ArchR clusters with Seurat (``FindNeighbors`` + ``FindClusters``): a kNN graph in the scaled LSI
dimensions, edges weighted by the Jaccard overlap of the two cells' neighbourhoods (pruned below
1/15), then modularity optimisation at ``resolution``. Here the Jaccard weights are kept on the
kNN edges only (as PhenoGraph does; Seurat also links cells that merely share neighbours, which
multiplies the edges ~k-fold for little change in the partition), and the graph is partitioned
with igraph's Leiden on the modularity objective with a resolution parameter (what Seurat's
Louvain optimises; Leiden guarantees connected clusters), seeded.
"""

from __future__ import annotations

import importlib
import random
import threading

import numba
import numpy as np
import scipy.sparse as sp

from p2g_dask.tl.engine.knn import nearest_neighbours
from p2g_dask.tl.lsi._kernels import Threads

#: Seurat's default ``prune.SNN``: edges with a Jaccard index below this are dropped.
PRUNE_SNN = 1 / 15


@numba.njit(cache=True, nogil=True)
def _jaccard_of_neighbours(neighbours, sorted_nn, out, start, stop):  # pragma: no cover
    k = neighbours.shape[1]
    for i in range(start, stop):
        for a in range(k):
            j = neighbours[i, a]
            # Both neighbour lists are sorted: count the shared cells by merging them.
            p = q = shared = 0
            while p < k and q < k:
                x, y = sorted_nn[i, p], sorted_nn[j, q]
                if x == y:
                    shared += 1
                    p += 1
                    q += 1
                elif x < y:
                    p += 1
                else:
                    q += 1
            out[i, a] = shared / (2 * k - shared)


def snn_graph(coords: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    """Symmetric kNN graph weighted by the Jaccard index of the two cells' neighbourhoods.

    Each cell's neighbourhood includes itself (Seurat's convention); edges with a Jaccard index
    below 1/15 are pruned and there are no self loops.
    """
    n_obs = coords.shape[0]
    k = min(n_neighbors, n_obs)
    # Exact neighbours (the cell itself first), so the graph does not depend on a random tree.
    neighbours, _ = nearest_neighbours(coords, coords, k)
    weights = np.zeros((n_obs, k))
    with Threads(nnz=n_obs * k * k) as threads:  # a merge of two k-lists per edge, rows on threads
        threads.run(_jaccard_of_neighbours, (neighbours, np.sort(neighbours, axis=1), weights),
                    threads.ranges(np.arange(n_obs + 1)))
    rows = np.repeat(np.arange(n_obs), k)
    cols, weights = neighbours.ravel(), weights.ravel()
    keep = (weights >= PRUNE_SNN) & (rows != cols)
    graph = sp.csr_matrix((weights[keep], (rows[keep], cols[keep])), shape=(n_obs, n_obs))
    return graph.maximum(graph.T).tocsr()


def import_igraph_in_background() -> threading.Thread:
    """Start importing igraph on a thread of its own, so the first fit's SVD hides its cost.

    igraph 1.0 imports matplotlib.pyplot whenever matplotlib is installed (~0.45 s here); the
    SVD runs in numba threads with the GIL released, so the import overlaps it. A failed import
    is left to :func:`leiden_clusters`, which imports again and says what to install.

    Examples
    --------
    >>> import_igraph_in_background().join()
    """
    def load() -> None:
        try:
            importlib.import_module("igraph")
        except Exception:  # noqa: BLE001 - reported by the import in leiden_clusters
            pass

    thread = threading.Thread(target=load, name="p2g-import-igraph", daemon=True)
    thread.start()
    return thread


def leiden_clusters(coords: np.ndarray, *, n_neighbors: int, resolution: float, seed: int) -> np.ndarray:
    """Cluster labels ``0..c-1`` (0 = largest cluster) of the rows of ``coords``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> pts = np.vstack([rng.normal(0, 0.1, (50, 3)), rng.normal(5, 0.1, (50, 3))])
    >>> labels = leiden_clusters(pts, n_neighbors=10, resolution=0.5, seed=1)
    >>> set(labels[:50]).isdisjoint(labels[50:])
    True
    """
    try:
        import igraph
    except ImportError as err:  # pragma: no cover - igraph is a dependency
        raise ImportError("iterative_lsi clusters cells with Leiden: install igraph (`pip install igraph`).") from err
    graph = snn_graph(coords, n_neighbors).tocoo()
    upper = graph.row < graph.col
    g = igraph.Graph(n=coords.shape[0], edges=list(zip(graph.row[upper].tolist(), graph.col[upper].tolist())))
    g.es["weight"] = graph.data[upper].tolist()
    # python-igraph draws from a module-level generator (Python's `random` by default): give it a
    # seeded one for this call only.
    igraph.set_random_number_generator(random.Random(int(seed)))
    try:
        partition = g.community_leiden(
            objective_function="modularity", weights="weight", resolution=float(resolution), n_iterations=2
        )
    finally:
        igraph.set_random_number_generator(random)
    labels = np.asarray(partition.membership)
    # Relabel by decreasing size (ties by first cell) so labels do not depend on Leiden's ids.
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    relabel = np.empty(ids.size, dtype=np.int64)
    relabel[order] = np.arange(ids.size)
    return relabel[np.searchsorted(ids, labels)]
