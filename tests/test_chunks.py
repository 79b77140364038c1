"""Direct chunk reads (p2g_dask/io/_chunks.py) against zarr's own reads of the same arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import p2g_dask as p2g
from p2g_dask.io import _integrity
from p2g_dask.io._chunks import direct_layout, read_range
from p2g_dask.io._write import _compressors


def _array(tmp_path, values: np.ndarray, chunk: int, compressors=None):
    folder = tmp_path / "values"
    array = zarr.create_array(str(folder), shape=values.shape, chunks=(chunk,), dtype=values.dtype,
                              compressors=_compressors() if compressors is None else compressors,
                              config={"write_empty_chunks": True})
    array[:] = values
    return folder, array


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_read_range__equals_zarr_on_every_kind_of_range(tmp_path, dtype):
    values = np.random.default_rng(0).integers(0, 50, 10_007).astype(dtype)
    folder, array = _array(tmp_path, values, chunk=1000)
    layout = direct_layout(folder, json.loads((folder / "zarr.json").read_text()))
    assert layout is not None and layout.checksum and layout.chunk == 1000
    # Whole chunks, partial first/last chunks, inside one chunk, the ragged last chunk, empty.
    for first, stop in [(0, 10_007), (0, 1000), (999, 1001), (1500, 1600), (2500, 7300), (9999, 10_007), (42, 42)]:
        np.testing.assert_array_equal(read_range(layout, first, stop), array[first:stop])
    # The last chunk is padded to its full size: reading past the end is refused, not padded.
    with pytest.raises(ValueError, match="outside the array"):
        read_range(layout, 10_000, 10_008)


def test_read_range__altered_chunk_fails_its_checksum(tmp_path):
    folder, _ = _array(tmp_path, np.arange(5000, dtype=np.int32), chunk=1000)
    layout = direct_layout(folder, json.loads((folder / "zarr.json").read_text()))
    chunk = folder / "c" / "2"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    np.testing.assert_array_equal(read_range(layout, 0, 2000), np.arange(2000))  # other chunks still read
    with pytest.raises(ValueError, match="chunk 2 fails its crc32c checksum"):
        read_range(layout, 1500, 2500)


def test_direct_layout__other_codecs_are_left_to_zarr(tmp_path):
    from zarr.codecs import ZstdCodec

    folder, _ = _array(tmp_path, np.arange(100, dtype=np.int32), chunk=10, compressors=[ZstdCodec()])
    assert direct_layout(folder, json.loads((folder / "zarr.json").read_text())) is None


def test_read_block__decodes_the_store_directly_and_matches_the_counts(tmp_path, monkeypatch):
    sim = p2g.datasets.simulate_multiome(n_cells=300, n_peaks=4000, n_genes=100, n_linked_genes=5, seed=3)
    store = p2g.io.ingest(sim.atac, sim.rna, tmp_path / "s.zarr")

    def no_zarr(*args):
        raise AssertionError("the direct reader fell back to zarr on an intact store")

    monkeypatch.setattr(_integrity, "_read_through_zarr", no_zarr)
    X = sim.atac.X.tocsr()
    for start, stop in [(0, 300), (17, 211), (299, 300)]:
        data, indices, indptr = _integrity.read_block(store.path, "atac", start, stop, X.shape[1])
        block = X[start:stop]
        np.testing.assert_array_equal(indptr, block.indptr)
        np.testing.assert_array_equal(indices, block.indices)
        np.testing.assert_array_equal(data, block.data)
