"""Exact-count metacell sums (uint16 lanes promoted to float32), piecewise store reads, and lanes
shared between modalities: each checked against a plain scipy recomputation."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import p2g_dask as p2g
from p2g_dask import _graph
from p2g_dask.io.blocks import StoreRange
from p2g_dask._errors import InputFileError
from p2g_dask.io.inputs import Modality, resolve_input
from p2g_dask.io import _chunks, _integrity
from p2g_dask.tl.engine import accumulate as aggregate
from p2g_dask.tl.engine.columns import lane_columns
from p2g_dask.tl.engine.kernels import COUNT_MAX, metacell_sum_block
from p2g_dask.tl.engine.metacells import metacell_membership


def _neighbours(rng, n_groups: int, n_cells: int, size: int) -> np.ndarray:
    # Distinct cells per group, as kNN metacells have.
    return np.array([rng.choice(n_cells, size, replace=False) for _ in range(n_groups)])


def _membership(rng, n_groups: int, n_cells: int, size: int) -> sp.csr_matrix:
    return metacell_membership(_neighbours(rng, n_groups, n_cells, size), n_cells)


def _chained(X: sp.csr_matrix, membership: sp.csr_matrix, cuts: list[int], columns=None) -> np.ndarray:
    """metacell_sum_block over consecutive row blocks into one uint16 accumulator, as a lane does."""
    out = None
    max_members = int(np.diff(membership.indptr).max())  # over all blocks, as membership_sums gives it
    for start, stop in zip(cuts[:-1], cuts[1:]):
        indptr, cells = aggregate.block_membership(sp.csc_matrix(membership), start, stop)
        out = metacell_sum_block(X[start:stop], indptr, cells, membership.shape[0], np.uint16, out=out,
                                 columns=columns, max_members=max_members)
    return out


@pytest.mark.parametrize("high", [5, 3_000, 3_300, 70_000])
@pytest.mark.parametrize("columns", [None, (7, 61)])
def test_uint16_accumulator__equals_scipy_and_promotes_exactly(high, columns):
    rng = np.random.default_rng(high)
    X = sp.random(120, 90, density=0.2, random_state=high, format="csr", dtype=np.float64)
    X.data = rng.integers(0, high, X.data.size).astype(np.int32)
    membership = _membership(rng, 15, 120, 20)
    sums = _chained(X, membership, [0, 40, 41, 100, 120], columns)
    expected = (membership @ X.astype(np.float64)).toarray()
    if columns is not None:
        expected = expected[:, columns[0] : columns[1]]
    np.testing.assert_array_equal(sums.astype(np.float64), expected)
    # uint16 while every value is at most 65535 // 20 (20 cells per group), so that no sum can
    # pass 65,535; float32 (exact) from the first block with a larger value.
    assert sums.dtype == (np.uint16 if X.data.max() <= COUNT_MAX // 20 else np.float32)
    # Without the bound, a uint16 accumulator is promoted at once.
    indptr, cells = aggregate.block_membership(sp.csc_matrix(membership), 0, 120)
    assert metacell_sum_block(X, indptr, cells, 15, np.uint16).dtype == np.float32


@pytest.mark.parametrize("values", ["fractional", "negative", "large"])
def test_uint16_accumulator__non_counts_are_summed_in_float32(values):
    rng = np.random.default_rng(1)
    X = sp.random(60, 40, density=0.3, random_state=1, format="csr")
    X.data = {"fractional": X.data * 3, "negative": X.data * 10 - 5, "large": X.data + 70_000}[values]
    X.data = X.data.astype(np.float32)
    membership = _membership(rng, 8, 60, 10)
    sums = _chained(X, membership, [0, 30, 60])
    assert sums.dtype == np.float32
    np.testing.assert_allclose(sums, (membership @ X.astype(np.float64)).toarray(), rtol=1e-5, atol=1e-3)


def test_uint16_accumulator__only_member_values_decide_promotion():
    # Only member cells' values are added, so a non-count elsewhere in the block keeps the exact
    # uint16 accumulator; the same value in a member cell promotes it to float32.
    rng = np.random.default_rng(6)
    X = sp.random(40, 25, density=0.4, random_state=6, format="csr", dtype=np.float32)
    X.data = rng.integers(1, 6, X.data.size).astype(np.float32)
    membership = sp.csr_matrix(metacell_membership(np.array([[0, 1, 2, 3], [4, 5, 6, 7]]), 40))
    outsider, member = 30, 5
    X.data[X.indptr[outsider]] = 2.5
    sums = _chained(X, membership, [0, 20, 40])
    assert sums.dtype == np.uint16
    np.testing.assert_array_equal(sums, (membership @ X.astype(np.float64)).toarray())
    X.data[X.indptr[member]] = 0.25
    sums = _chained(X, membership, [0, 20, 40])
    assert sums.dtype == np.float32
    np.testing.assert_array_equal(sums, (membership @ X.astype(np.float64)).toarray().astype(np.float32))


def test_uint16_accumulator__unsorted_rows_of_a_column_block():
    rng = np.random.default_rng(2)
    X = sp.random(50, 30, density=0.4, random_state=2, format="csr")
    X.data = rng.integers(1, 9, X.data.size).astype(np.int32)
    # Reverse each row's entries: the kernel cannot bisect and must filter the block's columns.
    for row in range(X.shape[0]):
        a, b = X.indptr[row], X.indptr[row + 1]
        X.indices[a:b], X.data[a:b] = X.indices[a:b][::-1].copy(), X.data[a:b][::-1].copy()
    X.has_sorted_indices = False
    membership = _membership(rng, 6, 50, 9)
    sums = _chained(X, membership, [0, 50], columns=(4, 17))
    np.testing.assert_array_equal(sums, (membership @ X.astype(np.float64)).toarray()[:, 4:17])


def test_add_sums__uint16_parts_add_in_float32_without_overflow():
    parts = [np.full((2, 3), COUNT_MAX, dtype=np.uint16), np.full((2, 3), 7, dtype=np.uint16),
             np.ones((2, 3), dtype=np.float32)]
    total = aggregate.add_sums(*parts)
    assert total.dtype == np.float32 and np.all(total == COUNT_MAX + 8)
    assert all(p.dtype != np.float32 or np.all(p == 1) for p in parts)  # the inputs are not changed


def test_rows_of_members__equals_slicing_the_membership():
    rng = np.random.default_rng(3)
    membership = sp.csc_matrix(_membership(rng, 12, 200, 15))
    indptr, cells = aggregate.block_membership(membership, 40, 160)
    piece_indptr, piece_cells = aggregate.rows_of_members(indptr, cells, 30, 75)
    expected = sp.csr_matrix(membership[:, 70:115])
    expected.sort_indices()
    np.testing.assert_array_equal(piece_indptr, expected.indptr)
    np.testing.assert_array_equal(piece_cells, expected.indices)


@pytest.fixture(scope="module")
def piece_store(tmp_path_factory):
    from p2g_dask.io import _write as store_module

    sim = p2g.datasets.simulate_multiome(n_cells=400, n_peaks=3000, n_genes=80, n_linked_genes=4, seed=5)
    path = tmp_path_factory.mktemp("pieces") / "s.zarr"
    # Small chunk files, so that a range spans many of them (stores have 2**20 elements each).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "_ZARR_ELEMENT_CHUNK", 4096)
        return sim, p2g.io.ingest(sim.atac, sim.rna, path, chunk_cells=400)


def test_read_pieces__cover_the_rows_and_decode_each_chunk_once(piece_store, monkeypatch):
    sim, store = piece_store
    X = sp.csr_matrix(sim.atac.X)
    decoded = []
    real = _chunks.blosc.decompress
    monkeypatch.setattr(_chunks.blosc, "decompress", lambda *a: (decoded.append(1), real(*a))[1])
    pieces = list(_integrity.read_pieces(store.path, "atac", 17, 390, X.shape[1], max_entries=5_000))
    assert len(pieces) > 5 and pieces[0][0] == 0 and pieces[-1][1] == 390 - 17
    assert all(a[1] == b[0] for a, b in zip(pieces[:-1], pieces[1:]))
    for first, stop, (data, indices, indptr) in pieces:
        block = sp.csr_matrix((data, indices, indptr), shape=(stop - first, X.shape[1]))
        assert (block != X[17 + first : 17 + stop]).nnz == 0
    # Every chunk of data and indices the range touches is decoded once (plus indptr's).
    chunk = int(_integrity._array_meta(store.path, "atac", "data")["chunk_grid"]["configuration"]["chunk_shape"][0])
    lo, hi = X.indptr[17], X.indptr[390]
    touched = (hi - 1) // chunk - lo // chunk + 1
    indptr_chunks = len(decoded) - 2 * touched
    assert 1 <= indptr_chunks <= 2


def test_add_block__store_pieces_equal_the_whole_block_and_a_damaged_piece_is_not_counted_twice(
        piece_store, tmp_path, monkeypatch):
    import shutil

    sim, store = piece_store
    atac, _, _ = resolve_input(store.path)
    membership = sp.csc_matrix(_membership(np.random.default_rng(4), 20, atac.n_obs, 30))
    members = aggregate.block_membership(membership, 0, atac.n_obs)
    rows = StoreRange(store.path, "atac", 0, atac.n_obs, atac.n_vars)
    monkeypatch.setattr(_integrity, "PIECE_ENTRIES", 4_000)
    sums = aggregate._add_block(None, rows, members, 20, np.uint16, (0, atac.n_vars))
    expected = (membership @ sp.csr_matrix(sim.atac.X).astype(np.float64)).toarray()
    np.testing.assert_array_equal(sums, expected)

    # A chunk of the last pieces altered: the task fails naming it, and the accumulator it had
    # begun to add into refuses a second attempt instead of counting the first pieces twice.
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store.path, damaged)
    last = sorted((damaged / "atac" / "X" / "data" / "c").iterdir(), key=lambda p: int(p.name))[-1]
    raw = bytearray(last.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    last.write_bytes(bytes(raw))
    accumulator = np.zeros((20, atac.n_vars), dtype=np.uint16)
    rows = rows._replace(path=str(damaged))
    with pytest.raises(InputFileError, match=r"atac/X/data/c/\d+"):
        aggregate._add_block(accumulator, rows, members, 20, np.uint16, (0, atac.n_vars))
    with pytest.raises(RuntimeError, match="failed earlier attempt"):
        aggregate._add_block(accumulator, rows, members, 20, np.uint16, (0, atac.n_vars))


def test_membership_sums__store_lanes_hold_exact_counts_and_sums_are_float32(piece_store):
    sim, store = piece_store
    atac, _, _ = resolve_input(store.path)
    neighbours = _neighbours(np.random.default_rng(6), 25, atac.n_obs, 40)
    blocks, totals = aggregate.metacell_sums(atac, neighbours, chunk_cells=150, lanes=2)
    lanes = dask.compute(*blocks[0].lanes, scheduler="sync")
    sums, totals = dask.compute(blocks[0].sums, totals, scheduler="sync")
    expected = (metacell_membership(neighbours, atac.n_obs) @ sp.csr_matrix(sim.atac.X).astype(np.float64)).toarray()
    assert [lane.dtype for lane in lanes] == [np.uint16, np.uint16]
    assert sums.dtype == np.float32
    np.testing.assert_array_equal(sums, expected)
    np.testing.assert_array_equal(totals, expected.sum(axis=1))
    # A single lane's columns keep uint16 (no copy, half the bytes to move); normalised, they
    # give the same standardised values as float sums.
    from p2g_dask.tl.engine.kernels import standardized_features

    one, one_totals = aggregate.metacell_sums(atac, neighbours, chunk_cells=150, lanes=1)
    columns = dask.compute(lane_columns(one, np.arange(10, 50), "cols"), scheduler="sync")[0]
    assert columns.dtype == np.uint16
    np.testing.assert_array_equal(standardized_features(columns, expected.sum(axis=1))[0],
                                  standardized_features(expected[:, 10:50], expected.sum(axis=1))[0])


def test_lane_share__modalities_split_the_workers_lanes(local_client):
    X = sp.random(200, 30, density=0.2, random_state=0, format="csr")
    X.data[:] = 1
    mod = Modality("atac", pd.DataFrame(index=[f"c{i}" for i in range(200)]), pd.DataFrame(index=range(30)), X=X)
    neighbours = _neighbours(np.random.default_rng(0), 10, 200, 20)
    n_lanes = {share: len(aggregate.metacell_sums(mod, neighbours, chunk_cells=20, client=local_client,
                                                  lane_share=share)[0][0].lanes)
               for share in (1.0, 0.5, 0.01)}
    assert n_lanes == {1.0: 2, 0.5: 1, 0.01: 1}  # 2 worker threads; at least one lane each
    assert aggregate.nonzero_shares(Modality("a", None, None, X=X), Modality("b", None, None, X=X[:50])) == [
        X.nnz / (X.nnz + X[:50].nnz), X[:50].nnz / (X.nnz + X[:50].nnz)]


@pytest.mark.parametrize("max_entries", [3_000, 5_000, 9_000])
def test_read_pieces__reused_buffers_give_the_same_pieces(piece_store, max_entries):
    sim, store = piece_store
    n_vars = sim.atac.n_vars
    fresh = list(_integrity.read_pieces(store.path, "atac", 11, 397, n_vars, max_entries=max_entries))
    seen, bases = [], set()
    for first, stop, (data, indices, indptr) in _integrity.read_pieces(store.path, "atac", 11, 397, n_vars,
                                                                       max_entries=max_entries, reuse=True):
        bases.add(id(data.base))
        seen.append((first, stop, data.copy(), indices.copy(), indptr.copy()))  # valid until the next piece
    assert len(seen) == len(fresh) > 3
    for (first, stop, data, indices, indptr), (f, s, (d, i, p)) in zip(seen, fresh):
        assert (first, stop) == (f, s)
        np.testing.assert_array_equal(data, d)
        np.testing.assert_array_equal(indices, i)
        np.testing.assert_array_equal(indptr, p)
    assert len(bases) <= 2  # one buffer, grown at most once, not a new array per piece


def test_read_range__into_reused_buffers_equals_new_arrays_and_still_checks(tmp_path):
    import json

    values = np.random.default_rng(7).integers(0, 99, 10_003).astype(np.int32)
    folder = tmp_path / "values"
    import zarr
    from p2g_dask.io._write import _compressors

    zarr.create_array(str(folder), shape=values.shape, chunks=(1000,), dtype=values.dtype,
                      compressors=_compressors(), config={"write_empty_chunks": True})[:] = values
    layout = _chunks.direct_layout(folder, json.loads((folder / "zarr.json").read_text()))
    buffers, carry = _chunks.ReadBuffers(), {}
    # Consecutive ranges sharing partial chunks (the carry alternates two scratch chunks).
    cuts = [0, 450, 1450, 1999, 2000, 3501, 3502, 7777, 10_003]
    for first, stop in zip(cuts[:-1], cuts[1:]):
        np.testing.assert_array_equal(_chunks.read_range(layout, first, stop, carry, buffers), values[first:stop])
    chunk = folder / "c" / "4"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="chunk 4 fails its crc32c checksum"):
        _chunks.read_range(layout, 3900, 4100, None, buffers)
