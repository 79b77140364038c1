"""The truncated SVD of an LSI fit: the TF-IDF built once into column slabs, products on threads.

A randomized SVD spends its time in sparse x tall-dense products, ``M @ basis`` and
``M.T @ cells`` (16 of them for 7 power iterations). Each nonzero reads one row
of the dense operand; when the dense operand exceeds the L2 cache those reads go to memory. So
the matrix is held in *column slabs* (features in ranges of ``2**shift``; one CSR per slab,
stored one after another) and every product runs slab by slab: the rows of the dense operand a
slab reads (``M @ basis``) or writes (``M.T @ cells``) stay in cache. Both products walk the
same slabs, so no transposed copy is made, and the TF-IDF of the fit cells is written into the
slabs directly from the counts, by two fused passes (:meth:`SlabMatrix.build`).

Every output element is summed in the same order whatever the thread count (``M.T @ cells``:
by increasing cell; ``M @ basis``: by increasing feature, as CSR products; only ``M @ basis``
at widths other than ``PADDED_WIDTH`` adds four nonzeros at a time within a slab), so the SVD
does not depend on it.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.linalg
import scipy.sparse as sp
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from threadpoolctl import threadpool_limits

from p2g_dask.tl.lsi._kernels import Threads, component_signs

#: Bytes of the dense rows one slab reads or writes: about a quarter of a core's L2 cache.
SLAB_BYTES = 256 * 1024
#: The width of the products' fast path (``_gather_padded``, ``_scatter_padded``): range
#: finders from 40 to 64 columns wide (30 components + 20 oversamples by default) are padded to it
#: with zero columns, which leave the other columns' results as they are.
PADDED_WIDTH = 64
#: Items between two threads' scratch slots in :meth:`SlabMatrix.build`: slots in one cache line
#: were written by both threads at every unselected nonzero (false sharing: the fill pass took
#: 1.0-2.2 s instead of 0.2-0.3 s on 30 M selected of 62 M nonzeros).
SCRATCH_STRIDE = 64


@numba.njit(cache=True, nogil=True)
def _slab_counts(indptr, indices, data, rows, col_pos, shift, binarize, counts, totals, start,
                 stop):  # pragma: no cover
    # counts[r + 1, s]: entries of row rows[r] in slab s; the last slab collects the entries not
    # selected, so the loop has no branch on them (half of the nonzeros, in random order). A
    # row's counters lie side by side (slab-major, they were pages apart: 3x slower).
    rest = counts.shape[1] - 1
    for r in range(start, stop):
        i = rows[r]
        total = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = col_pos[indices[p]]
            selected = (j >= 0) & (data[p] != 0)
            counts[r + 1, (j >> shift) if selected else rest] += 1
            total += (1.0 if binarize else data[p]) if selected else 0.0
        totals[r] = total


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _slab_fill(indptr, indices, data, rows, col_pos, shift, idf, scale_to, binarize, totals, offsets,
               out_indices, out_values, start, stop):  # pragma: no cover
    # offsets[r, s]: where row rows[r]'s next entry in slab s goes. Entries not selected are
    # written to a scratch slot past the end (offsets[r, rest] points there and never moves): no
    # branch. With idf, the value is TF * IDF * scale_to (its log is taken afterwards,
    # vectorised); without, the count itself.
    rest = offsets.shape[1] - 1
    use_idf = idf.size > 0
    for r in range(start, stop):
        i = rows[r]
        total = totals[r] if totals[r] > 0 else 1.0  # a row without selected entries writes none
        for p in range(indptr[i], indptr[i + 1]):
            j = col_pos[indices[p]]
            selected = (j >= 0) & (data[p] != 0)
            s = (j >> shift) if selected else rest
            q = offsets[r, s]
            offsets[r, s] = q + 1 if selected else q
            out_indices[q] = j
            if use_idf:
                value = 1.0 if binarize else float(data[p])
                out_values[q] = value / total * idf[j] * scale_to
            else:
                out_values[q] = data[p]


@numba.njit(cache=True, nogil=True)
def _gather(indptr, indices, values, dense, out, slab_start, slab_stop, row_start, row_stop):  # pragma: no cover
    # out[rows] += M[rows] @ dense, in out's precision (float32 products read float64 values).
    # Four nonzeros at a time: one read-modify-write of out's row per four rows of dense, not
    # per row (the chain through out's row bounded the speed; 20 % fewer CPU seconds).
    k = dense.shape[1]
    for s in range(slab_start, slab_stop):
        for i in range(row_start, row_stop):
            p, stop = indptr[s, i], indptr[s, i + 1]
            while p + 3 < stop:
                j0, j1, j2, j3 = indices[p], indices[p + 1], indices[p + 2], indices[p + 3]
                v0, v1 = out.dtype.type(values[p]), out.dtype.type(values[p + 1])
                v2, v3 = out.dtype.type(values[p + 2]), out.dtype.type(values[p + 3])
                for c in range(k):
                    out[i, c] += (v0 * dense[j0, c] + v1 * dense[j1, c]) + (v2 * dense[j2, c] + v3 * dense[j3, c])
                p += 4
            while p < stop:
                j, v = indices[p], out.dtype.type(values[p])
                for c in range(k):
                    out[i, c] += v * dense[j, c]
                p += 1


@numba.njit(cache=True, nogil=True)
def _scatter(indptr, indices, values, dense, out, slab_start, slab_stop, row_start, row_stop):  # pragma: no cover
    # out[features of the slabs] += M[:, slabs].T @ dense: each slab writes its own rows of out.
    for s in range(slab_start, slab_stop):
        for i in range(row_start, row_stop):
            for p in range(indptr[s, i], indptr[s, i + 1]):
                j, v = indices[p], out.dtype.type(values[p])
                for c in range(dense.shape[1]):
                    out[j, c] += v * dense[i, c]


@intrinsic
def _stack_array(typingctx, size, dtype):  # pragma: no cover - compiled into the kernels
    """A 1-d array of ``size`` (a literal) items on the stack: the compiler keeps it in registers.

    numba allocates arrays on the heap, and a kernel's output may alias its input as far as the
    compiler knows, so a row accumulated in ``out`` or read from ``dense`` goes through memory at
    every nonzero; a stack array does not.
    """
    if not isinstance(size, types.IntegerLiteral):
        return None
    n_items, item = size.literal_value, dtype.dtype
    array_type = types.Array(item, 1, "C")

    def codegen(context, builder, signature, args):
        item_type = context.get_data_type(item)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(item_type))
        data = cgutils.alloca_once(builder, item_type, size=context.get_constant(types.intp, n_items))
        array = context.make_array(array_type)(context, builder)
        context.populate_array(array, data=data, shape=[context.get_constant(types.intp, n_items)],
                               strides=[itemsize], itemsize=itemsize, meminfo=None)
        return array._getvalue()

    return array_type(size, dtype), codegen


@numba.njit(cache=True, nogil=True)
def _gather_padded(indptr, indices, values, dense, out, slab_start, slab_stop, row_start, row_stop):  # pragma: no cover
    # _gather for PADDED_WIDTH columns: the row of out is summed in registers, nonzero by nonzero
    # in CSR order (30 % fewer CPU seconds than _gather).
    row = _stack_array(64, out.dtype)
    for s in range(slab_start, slab_stop):
        for i in range(row_start, row_stop):
            for c in range(64):
                row[c] = out[i, c]
            for p in range(indptr[s, i], indptr[s, i + 1]):
                j, v = indices[p], out.dtype.type(values[p])
                for c in range(64):
                    row[c] += v * dense[j, c]
            for c in range(64):
                out[i, c] = row[c]


@numba.njit(cache=True, nogil=True)
def _scatter_padded(indptr, indices, values, dense, out, slab_start, slab_stop, row_start,
                    row_stop):  # pragma: no cover
    # _scatter for PADDED_WIDTH columns: the row of dense is held in registers.
    row = _stack_array(64, out.dtype)
    for s in range(slab_start, slab_stop):
        for i in range(row_start, row_stop):
            for c in range(64):
                row[c] = dense[i, c]
            for p in range(indptr[s, i], indptr[s, i + 1]):
                j, v = indices[p], out.dtype.type(values[p])
                for c in range(64):
                    out[j, c] += v * row[c]


def _padded(dense: np.ndarray) -> bool:
    return dense.shape[1] == PADDED_WIDTH


def slab_shift(width: int, itemsize: int = 4, slab_bytes: int = SLAB_BYTES) -> int:
    """log2 of the features per slab: the widest power of two whose dense rows fit ``slab_bytes``."""
    return max(0, int(np.floor(np.log2(max(1.0, slab_bytes / (width * itemsize))))))


class SlabMatrix:
    """A sparse rows x features matrix in column slabs of ``2**shift`` features, float64 values.

    ``indptr[s]`` is the CSR row pointer of slab ``s`` into the shared ``indices`` (feature
    positions) and ``values``.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> m = sp.random(40, 30, density=0.2, format="csr", random_state=0)
    >>> slabs = SlabMatrix.build(m, np.arange(40), np.arange(30), shift=2)  # slabs of 4 columns
    >>> right, left = np.ones((30, 2)), np.ones((40, 2))
    >>> bool(np.allclose(slabs.matmul(right), m @ right)), bool(np.allclose(slabs.rmatmul(left), m.T @ left))
    (True, True)
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, shape: tuple[int, int]):
        self.indptr, self.indices, self.values, self.shape = indptr, indices, values, shape
        self.row_cumsum = np.concatenate([[0], np.cumsum((indptr[:, 1:] - indptr[:, :-1]).sum(axis=0))])
        self.slab_cumsum = np.concatenate([[0], np.cumsum(indptr[:, -1] - indptr[:, 0])])

    @property
    def nnz(self) -> int:
        return int(self.row_cumsum[-1])

    @classmethod
    def build(cls, counts: sp.csr_matrix, rows: np.ndarray, col_pos: np.ndarray, *, shift: int,
              idf: np.ndarray | None = None, scale_to: float = 1e4, binarize: bool = True,
              threads: Threads | None = None) -> SlabMatrix:
        """The ``rows`` of ``counts`` over the columns where ``col_pos >= 0`` (feature ``col_pos[j]``).

        With ``idf``: ArchR's log(TF-IDF) of those rows (:func:`p2g_dask.tl.lsi._kernels.tfidf_block`'s
        values, the TF over the selected features); without, the values as they are. Two passes
        over the rows' nonzeros (count, fill; each row on its own, so over row ranges on
        ``threads``), then the log of the values.
        """
        threads = threads or Threads(1)
        rows = np.asarray(rows, dtype=np.int64)
        n_features = int(np.max(col_pos)) + 1 if len(col_pos) else 0
        # int32 positions: half the cache the random lookups col_pos[column] need (15 % faster).
        col_pos = np.asarray(col_pos, dtype=np.int32 if n_features < 2**31 else np.int64)
        n_slabs = max(1, -(-n_features // (1 << shift)))
        row_nnz = np.diff(counts.indptr)[rows]
        parts = threads.ranges(np.concatenate([[0], np.cumsum(row_nnz)]))
        per_row = np.zeros((rows.size + 1, n_slabs + 1), dtype=np.int64)
        totals = np.zeros(rows.size)
        source = (counts.indptr, counts.indices, counts.data, rows, col_pos, shift)
        threads.run(_slab_counts, (*source, bool(binarize), per_row, totals), parts)
        indptr = np.ascontiguousarray(np.cumsum(per_row, axis=0).T)  # slabs x (rows + 1)
        nnz = int(indptr[:-1, -1].sum())
        indptr[:-1] += np.concatenate([[0], np.cumsum(indptr[:-2, -1])])[:, None]
        offsets = np.ascontiguousarray(indptr[:, :-1].T)  # rows x slabs, as the fill reads it
        for part, (a, b) in enumerate(parts):  # each part's own scratch slot past the end, a cache line apart
            offsets[a:b, -1] = nnz + part * SCRATCH_STRIDE
        scratch = len(parts) * SCRATCH_STRIDE
        indices = np.empty(nnz + scratch, dtype=np.int32 if n_features < 2**31 else np.int64)
        values = np.empty(nnz + scratch)
        idf_arg = np.zeros(0) if idf is None else np.asarray(idf, dtype=np.float64)
        threads.run(_slab_fill, (*source, idf_arg, float(scale_to), bool(binarize), totals, offsets, indices,
                                 values), parts)
        values = values[:nnz]
        if idf is not None:  # numpy's vectorised log (4x faster than one at a time), in pieces on threads
            pieces = np.linspace(0, nnz, len(parts) + 1).astype(np.int64)
            threads.run(lambda a, b: np.log1p(values[a:b], out=values[a:b]), (), list(zip(pieces[:-1], pieces[1:])))
        return cls(indptr[:-1], indices[:nnz], values, (rows.size, n_features))

    def matmul(self, dense: np.ndarray, threads: Threads | None = None) -> np.ndarray:
        """``M @ dense`` in ``dense``'s precision (float32 or float64), over row ranges on ``threads``."""
        threads = threads or Threads(1)
        out = np.zeros((self.shape[0], dense.shape[1]), dtype=dense.dtype)
        args = (self.indptr, self.indices, self.values, np.ascontiguousarray(dense), out)
        n_slabs = self.indptr.shape[0]
        kernel = _gather_padded if _padded(dense) else _gather
        threads.run(kernel, args, [(0, n_slabs, a, b) for a, b in threads.ranges(self.row_cumsum)])
        return out

    def rmatmul(self, dense: np.ndarray, threads: Threads | None = None) -> np.ndarray:
        """``M.T @ dense`` in ``dense``'s precision, over ranges of slabs (each owns its rows of the result)."""
        threads = threads or Threads(1)
        out = np.zeros((self.shape[1], dense.shape[1]), dtype=dense.dtype)
        args = (self.indptr, self.indices, self.values, np.ascontiguousarray(dense), out)
        kernel = _scatter_padded if _padded(dense) else _scatter
        threads.run(kernel, args, [(a, b, 0, self.shape[0]) for a, b in threads.ranges(self.slab_cumsum)])
        return out


def randomized_svd(matrix: SlabMatrix, n_components: int, start: np.ndarray, *, n_iter: int = 7,
                   threads: Threads | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated SVD ``(loadings, singular values, fitted coordinates)`` of a rows x features matrix.

    Randomized SVD (Halko et al. 2011, LU-normalised power iterations) whose range finder works
    on the *feature* side, from ``start`` (rows x width, random): with ``Q`` an orthonormal
    feature basis, ``B = M @ Q = W S Z^T`` and ``loadings = Q Z``, so the fitted coordinates
    ``W S`` equal ``M @ loadings`` in float64 (projecting a fitted row gives its coordinates back,
    as with ArchR's irlba model). The power iterations run in float32 (half the memory traffic);
    each component's largest loading is positive.
    """
    threads = threads or Threads(1)
    width = start.shape[1]
    padded = PADDED_WIDTH if 40 <= width <= PADDED_WIDTH else width

    def lu(product: np.ndarray) -> np.ndarray:
        """The LU-normalised ``product`` (its first ``width`` columns), padded with zero columns."""
        out = np.zeros((product.shape[0], padded), dtype=np.float32)
        out[:, :width] = scipy.linalg.lu(product[:, :width], permute_l=True, check_finite=False)[0]
        return out

    # Multi-threaded BLAS on these thin matrices is slower than one thread on a busy machine
    # (a 20,000 x 50 QR: 0.1 s on 1 thread, ~1 s on 2); the sparse products use the threads.
    with threadpool_limits(1, user_api="blas"):
        basis = matrix.rmatmul(np.pad(start.astype(np.float32), ((0, 0), (0, padded - width))), threads)
        for _ in range(n_iter):
            cells = lu(matrix.matmul(lu(basis), threads))
            basis = matrix.rmatmul(cells, threads)
        basis = scipy.linalg.qr(basis[:, :width].astype(np.float64), mode="economic")[0]
        fitted = matrix.matmul(np.pad(basis, ((0, 0), (0, padded - width))), threads)[:, :width]
        w, s, zt = np.linalg.svd(fitted, full_matrices=False)
    loadings = basis @ zt[:n_components].T
    signs = component_signs(loadings)
    return loadings * signs, s[:n_components], w[:, :n_components] * s[:n_components] * signs


def svd_width(n_components: int, n_oversamples: int, n_rows: int, n_features: int) -> int:
    """Columns of the randomized range finder: components plus oversamples, at most the matrix's rank bound."""
    return min(n_components + n_oversamples, n_rows, n_features)


def svd_of_rows(counts: sp.csr_matrix, rows: np.ndarray, col_pos: np.ndarray, n_components: int, *, seed: int,
                idf: np.ndarray | None = None, scale_to: float = 1e4, binarize: bool = True, n_iter: int = 7,
                n_oversamples: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`randomized_svd` of the ``rows`` of ``counts`` (their TF-IDF with ``idf``; see
    :meth:`SlabMatrix.build`): ``(loadings, singular values, fitted coordinates of the rows)``.

    The random start is drawn for *every* row of ``counts`` from ``default_rng(seed)`` and its
    ``rows`` kept, so leaving out rows that would be empty does not change the result.
    """
    rows = np.asarray(rows, dtype=np.int64)
    width = svd_width(n_components, n_oversamples, rows.size, int(col_pos.max()) + 1)
    start = np.random.default_rng(seed).standard_normal((counts.shape[0], width))[rows]
    with Threads(nnz=int(np.diff(counts.indptr)[rows].sum())) as threads:
        matrix = SlabMatrix.build(counts, rows, col_pos, shift=slab_shift(width), idf=idf, scale_to=scale_to,
                                  binarize=binarize, threads=threads)
        return randomized_svd(matrix, n_components, start, n_iter=n_iter, threads=threads)


def sparse_svd(
    matrix: sp.spmatrix, n_components: int, *, seed: int, n_iter: int = 7, n_oversamples: int = 20,
    return_fitted: bool = False,
) -> tuple[np.ndarray, ...]:
    """Truncated SVD of a sparse rows x features matrix; returns ``(loadings, singular_values)``.

    :func:`randomized_svd` on the matrix as given, the start drawn from ``default_rng(seed)``;
    ``return_fitted`` adds the fitted coordinates ``W S`` (rows x components).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> m = sp.random(60, 40, density=0.3, format="csr", random_state=0)
    >>> loadings, d = sparse_svd(m, 3, seed=1)
    >>> bool(np.allclose(d, np.linalg.svd(m.toarray(), compute_uv=False)[:3], rtol=1e-6))
    True
    """
    matrix = sp.csr_matrix(matrix)
    if not matrix.has_sorted_indices:
        matrix = matrix.sorted_indices()
    loadings, d, fitted = svd_of_rows(matrix, np.arange(matrix.shape[0]), np.arange(matrix.shape[1]), n_components,
                                      seed=seed, n_iter=n_iter, n_oversamples=n_oversamples)
    return (loadings, d, fitted) if return_fitted else (loadings, d)


def project_rows(counts: sp.csr_matrix, rows: np.ndarray, col_pos: np.ndarray, idf: np.ndarray,
                 loadings: np.ndarray, *, scale_to: float, binarize: bool) -> np.ndarray:
    """``tfidf(counts[rows]) @ loadings`` in float64 (ArchR's ``.projectLSI``), through a :class:`SlabMatrix`.

    The same numbers as :func:`p2g_dask.tl.lsi._kernels.project_block` (to the last bit or
    two of the logs); a row without selected features gets zeros.
    """
    rows = np.asarray(rows, dtype=np.int64)
    loadings = np.asarray(loadings, dtype=np.float64)
    with Threads(nnz=int(np.diff(counts.indptr)[rows].sum())) as threads:
        matrix = SlabMatrix.build(counts, rows, col_pos, shift=slab_shift(loadings.shape[1], itemsize=8), idf=idf,
                                  scale_to=scale_to, binarize=binarize, threads=threads)
        return matrix.matmul(loadings, threads)
