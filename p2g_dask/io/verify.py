"""``p2g verify STORE``: every chunk of a store's count arrays read once and checked."""

from __future__ import annotations

import os

from p2g_dask.io._integrity import INTEGRITY_ATTR, read_block
from p2g_dask.io.store import open_store


def verify_store(path: str | os.PathLike) -> str:
    """Read every chunk of a store's count arrays once and return a one-line state.

    ``"ok: N chunks verified (crc32c checksums, CSR invariants)"`` for a store with checksums,
    ``"no checksums (written by p2g_dask <version>): ..."`` for an older one; a damaged store
    raises :class:`InputFileError` naming the chunk.

    Examples
    --------
    >>> import tempfile, p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=50, n_peaks=100, n_genes=20, n_linked_genes=2)
    >>> store = p2g.io.ingest(sim.atac, sim.rna, tempfile.mkdtemp() + "/s.zarr")
    >>> verify_store(store.path)
    'ok: 6 chunks verified (crc32c checksums, chunk presence, CSR invariants)'
    """
    store = open_store(path)  # checks every chunk file is present (store.n_chunks)
    n_chunks = store.n_chunks
    for modality in (store.atac, store.rna):
        if modality is None:  # an ATAC-only store
            continue
        for start, stop in modality.row_chunks():
            read_block(store.path, modality.name, start, stop, modality.n_vars)
    if store.attrs.get(INTEGRITY_ATTR) == "crc32c":
        return f"ok: {n_chunks} chunks verified (crc32c checksums, chunk presence, CSR invariants)"
    return (f"no checksums (written by p2g_dask {store.attrs.get('p2g_dask_version', '?')}): chunk presence and "
            f"CSR invariants checked, {n_chunks} chunks")
