"""Clustering of cells between LSI iterations: Leiden on a shared-nearest-neighbour graph.

ArchR clusters with Seurat (``FindNeighbors`` + ``FindClusters``): a kNN graph in the scaled LSI
dimensions, edges weighted by the Jaccard overlap of the two cells' neighbourhoods (pruned below
1/15), then modularity optimisation at ``resolution``. Here the same graph is built with
scikit-learn and partitioned with Leiden (``leidenalg`` on ``igraph``; modularity with a
resolution parameter is its ``RBConfigurationVertexPartition``), which is seeded.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

#: Seurat's default ``prune.SNN``: edges with a Jaccard index below this are dropped.
PRUNE_SNN = 1 / 15


def snn_graph(coords: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    """Symmetric shared-nearest-neighbour graph (Jaccard weights, Seurat's pruning), no self loops."""
    n_obs = coords.shape[0]
    k = min(n_neighbors, n_obs)
    # Exact neighbours (the cell itself first), so the graph does not depend on a random tree.
    _, neighbours = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(coords).kneighbors(coords)
    knn = sp.csr_matrix(
        (np.ones(neighbours.size), neighbours.ravel(), np.arange(0, neighbours.size + 1, k)), shape=(n_obs, n_obs)
    )
    shared = (knn @ knn.T).tocoo()
    jaccard = shared.data / (2 * k - shared.data)
    keep = (jaccard >= PRUNE_SNN) & (shared.row != shared.col)
    graph = sp.csr_matrix((jaccard[keep], (shared.row[keep], shared.col[keep])), shape=(n_obs, n_obs))
    return graph.maximum(graph.T).tocsr()


def leiden_clusters(coords: np.ndarray, *, n_neighbors: int, resolution: float, seed: int) -> np.ndarray:
    """Cluster labels ``0..c-1`` (0 = largest cluster) of the rows of ``coords``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> pts = np.vstack([rng.normal(0, 0.1, (50, 3)), rng.normal(5, 0.1, (50, 3))])
    >>> labels = leiden_clusters(pts, n_neighbors=10, resolution=0.5, seed=1)
    >>> len(set(labels[:50])), len(set(labels[50:])), labels[0] != labels[99]
    (1, 1, True)
    """
    try:
        import igraph
        import leidenalg
    except ImportError as err:  # pragma: no cover - both are dependencies
        raise ImportError(
            "iterative_lsi clusters cells with Leiden: install it with `pip install leidenalg igraph`."
        ) from err
    graph = snn_graph(coords, n_neighbors).tocoo()
    upper = graph.row < graph.col
    g = igraph.Graph(n=coords.shape[0], edges=np.column_stack([graph.row[upper], graph.col[upper]]).tolist())
    g.es["weight"] = graph.data[upper].tolist()
    partition = leidenalg.find_partition(
        g, leidenalg.RBConfigurationVertexPartition, weights="weight",
        resolution_parameter=float(resolution), n_iterations=-1, seed=int(seed),
    )
    labels = np.asarray(partition.membership)
    # Relabel by decreasing size (ties by first cell) so labels do not depend on Leiden's ids.
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    relabel = np.empty(ids.size, dtype=np.int64)
    relabel[order] = np.arange(ids.size)
    return relabel[np.searchsorted(ids, labels)]
