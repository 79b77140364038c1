"""Where the LSI passes run: on an in-memory CSR matrix, or as Dask tasks over row chunks.

Both classes offer the same operations (feature sums, per-cell totals, row subsets, projection,
per-cluster sums, SVD of the fit cells) built from the kernels in ``_lsi_kernels``, so a store
and an AnnData give the same numbers. Dask task keys start with ``p2g-lsi-<step>-``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize

from p2g_dask import _graph
from p2g_dask.tl.lsi import _kernels as K
from p2g_dask.tl.lsi._svd import project_rows, svd_of_rows

#: Fan-in of the tree sums over chunks (bounds the partial results held at once).
SPLIT_EVERY = 8
#: Bytes of one dense TF-IDF piece fed to ``svd_compressed`` on the out-of-core SVD path.
DENSE_PIECE_BYTES = 64 * 2**20
#: The randomized SVD of a sample in memory: power iterations and oversamples (docs/lsi.md, step 5).
N_POWER_ITERATIONS = 7
N_OVERSAMPLES = 20


@dataclass
class LSIModel:
    """A fitted LSI: the features (column indices), their IDF, loadings and singular values.

    ``fit`` marks the sampled cells the SVD was fit on and ``fitted`` holds their coordinates.
    """

    features: np.ndarray
    idf: np.ndarray
    loadings: np.ndarray
    singular_values: np.ndarray
    fit: np.ndarray
    fitted: np.ndarray
    scale_to: float
    binarize: bool

    @property
    def n_cells_fit(self) -> int:
        return int(self.fit.sum())

    def col_pos(self, n_vars: int) -> np.ndarray:
        return K.column_positions(self.features, n_vars)


class MemoryRows:
    """Cells x features counts held in memory (scipy CSR)."""

    def __init__(self, X: sp.csr_matrix):
        self.X = X
        self.n_obs, self.n_vars = X.shape
        self._feature_sums: dict[bool, np.ndarray] = {}

    def feature_sums(self, *, binarize: bool, wanted: np.ndarray | None = None) -> np.ndarray:
        threads = K.default_threads()
        if wanted is not None:
            return K.feature_sums(self.X, binarize=binarize, wanted=wanted, n_threads=threads)[0]
        if binarize not in self._feature_sums:
            self._feature_sums[binarize] = K.feature_sums(self.X, binarize=binarize, n_threads=threads)[0]
        return self._feature_sums[binarize]

    def row_totals(self, col_pos: np.ndarray | None, *, binarize: bool) -> np.ndarray:
        return K.row_totals(self.X, col_pos, binarize=binarize, n_threads=K.default_threads())

    def take(self, rows: np.ndarray, *, max_bytes: float) -> MemoryRows:
        if rows.size == self.n_obs:
            return self
        return MemoryRows(K.take_rows(self.X, rows))

    def project(self, model: LSIModel, wanted: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(self.n_obs) if wanted is None else np.flatnonzero(wanted)
        out = np.zeros((self.n_obs, model.loadings.shape[1]))
        out[rows] = project_rows(self.X, rows, model.col_pos(self.n_vars), model.idf, model.loadings,
                                 scale_to=model.scale_to, binarize=model.binarize)
        return out

    def group_sums(self, labels: np.ndarray, n_groups: int) -> np.ndarray:
        return K.group_sums(self.X, labels, n_groups, n_threads=K.default_threads())

    def svd(self, fit: np.ndarray, col_pos: np.ndarray, idf: np.ndarray, n_components: int, *,
            scale_to: float, binarize: bool, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(loadings, singular values, fitted coordinates)`` of the cells where ``fit``."""
        return svd_of_rows(self.X, np.flatnonzero(fit), col_pos, n_components, seed=seed, idf=idf, scale_to=scale_to,
                           binarize=binarize, n_iter=N_POWER_ITERATIONS, n_oversamples=N_OVERSAMPLES)


def _tfidf_dense(block, local_rows, col_pos, idf, scale_to, binarize):
    return K.tfidf_block(K.take_rows(block, local_rows), col_pos, idf, scale_to=scale_to,
                         binarize=binarize).toarray().astype(np.float32)


class DaskRows:
    """Cells x features counts as Dask tasks: one delayed CSR block per row chunk."""

    def __init__(self, blocks: list, sizes: list[int], n_vars: int, token: str, client: Any = None,
                 progress: bool | None = False):
        self.blocks, self.sizes, self.n_vars, self.token, self.client = blocks, list(sizes), n_vars, token, client
        self.progress = progress
        self.n_obs = int(sum(sizes))
        self.bounds = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self._feature_sums: dict[bool, np.ndarray] = {}

    @classmethod
    def from_dask_array(cls, X: da.Array, client: Any = None, progress: bool | None = False) -> DaskRows:
        if len(X.chunks[1]) != 1:
            raise ValueError(f"the ATAC matrix must have one chunk along features; it has {len(X.chunks[1])}.")
        return cls(list(X.to_delayed().ravel()), list(X.chunks[0]), X.shape[1], X.name, client, progress)

    def _compute(self, *tasks) -> list:
        return _graph.compute(list(tasks), self.client, self.progress)

    def _map(self, func, prefix: str, *args, per_row: dict | None = None, **kwargs) -> tuple[list, str]:
        """One task ``func(block, *args, **kwargs)`` per block, keys ``p2g-lsi-<prefix>-<token>``.

        ``per_row`` maps keyword names to cell-aligned arrays, passed sliced to each block.
        """
        per_row = per_row or {}
        token = tokenize(self.token, prefix, args, kwargs, per_row)
        tasks = []
        for i, block in enumerate(self.blocks):
            sliced = {name: None if value is None else value[self.bounds[i] : self.bounds[i + 1]]
                      for name, value in per_row.items()}
            tasks.append(dask.delayed(func, pure=True)(
                block, *args, dask_key_name=f"p2g-lsi-{prefix}-{tokenize(token, i)}", **kwargs, **sliced
            ))
        return tasks, token

    def feature_sums(self, *, binarize: bool, wanted: np.ndarray | None = None) -> np.ndarray:
        if wanted is None and binarize in self._feature_sums:
            return self._feature_sums[binarize]
        parts, token = self._map(K.feature_sums, "colsum", binarize=binarize, per_row={"wanted": wanted})
        total = self._compute(_graph.tree_sum(parts, "lsi-colsum-total", token, split_every=SPLIT_EVERY))[0][0]
        if wanted is None:
            self._feature_sums[binarize] = total
        return total

    def row_totals(self, col_pos: np.ndarray | None, *, binarize: bool) -> np.ndarray:
        col_pos_d = None if col_pos is None else dask.delayed(col_pos, traverse=False)
        parts, _ = self._map(K.row_totals, "rowsum", col_pos_d, binarize=binarize)
        return np.concatenate(self._compute(*parts))

    def _local_rows(self, rows: np.ndarray) -> list[np.ndarray]:
        which = np.searchsorted(self.bounds, rows, side="right") - 1
        return [rows[which == i] - self.bounds[i] for i in range(len(self.blocks))]

    def take(self, rows: np.ndarray, *, max_bytes: float) -> MemoryRows | DaskRows:
        """Gather ``rows`` (sorted) into memory, or keep them as lazy row chunks when too large."""
        local = self._local_rows(rows)
        token = tokenize(self.token, rows)
        picked = [
            dask.delayed(K.take_rows, pure=True)(block, sel, dask_key_name=f"p2g-lsi-sample-{tokenize(token, i)}")
            for i, (block, sel) in enumerate(zip(self.blocks, local)) if sel.size
        ]
        sizes = [sel.size for sel in local if sel.size]
        # Raw totals (already computed by the caller) bound the nonzeros from above.
        totals = self._feature_sums.get(False, None)
        if totals is None:
            totals = self.feature_sums(binarize=True)
        nnz_per_row = totals.sum() / max(1, self.n_obs)
        if rows.size * nnz_per_row * 12 <= max_bytes:
            return MemoryRows(sp.vstack(self._compute(*picked), format="csr"))
        return DaskRows(picked, sizes, self.n_vars, token, self.client, self.progress)

    def project(self, model: LSIModel, wanted: np.ndarray | None = None) -> np.ndarray:
        # The model's arrays become one task each, shipped once to a worker, not once per block.
        arrays = [dask.delayed(a, traverse=False) for a in (model.col_pos(self.n_vars), model.idf, model.loadings)]
        parts, _ = self._map(K.project_block, "project", *arrays, scale_to=model.scale_to, binarize=model.binarize,
                             per_row={"wanted": wanted})
        return np.vstack(self._compute(*parts))

    def group_sums(self, labels: np.ndarray, n_groups: int) -> np.ndarray:
        parts, token = self._map(_group_sums, "groupsum", n_groups, per_row={"labels": labels})
        return self._compute(_graph.tree_sum(parts, "lsi-groupsum-total", token, split_every=SPLIT_EVERY))[0]

    def svd(self, fit: np.ndarray, col_pos: np.ndarray, idf: np.ndarray, n_components: int, *,
            scale_to: float, binarize: bool, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``dask.array.linalg.svd_compressed`` on dense float32 TF-IDF pieces of the fit cells."""
        import dask.array as da  # here only: its import (~0.3 s, with xarray's) is not paid in memory

        n_features = idf.size
        piece_rows = max(1, int(DENSE_PIECE_BYTES // (4 * n_features)))
        col_pos_d = dask.delayed(col_pos, traverse=False)
        idf_d = dask.delayed(idf, traverse=False)
        token = tokenize(self.token, fit, col_pos, idf, scale_to, binarize)
        pieces = []
        for i, block in enumerate(self.blocks):
            local = np.flatnonzero(fit[self.bounds[i] : self.bounds[i + 1]])
            for start in range(0, local.size, piece_rows):
                sel = local[start : start + piece_rows]
                task = dask.delayed(_tfidf_dense, pure=True)(
                    block, sel, col_pos_d, idf_d, scale_to, binarize,
                    dask_key_name=f"p2g-lsi-tfidf-{tokenize(token, i, start)}",
                )
                pieces.append(da.from_delayed(task, shape=(sel.size, n_features), dtype=np.float32))
        matrix = da.concatenate(pieces, axis=0)
        u, s, v = da.linalg.svd_compressed(matrix, n_components, n_power_iter=4, n_oversamples=20, seed=seed)
        u, s, v = self._compute(u, s, v)
        loadings = np.asarray(v, dtype=np.float64).T
        signs = K.component_signs(loadings)
        s = np.asarray(s, dtype=np.float64)
        return loadings * signs, s, np.asarray(u, dtype=np.float64) * s * signs


def _group_sums(block, n_groups, *, labels):
    return K.group_sums(block, labels, n_groups)
