"""Resume: with ``checkpoint=DIR`` a rerun after a crash recomputes only what is missing.

Recomputation is measured by counting calls of the chunk kernel (``metacell_sum_block``) and of
the per-chromosome task (``correlate_rows``) under the synchronous scheduler (and an in-process
cluster), then the resumed result is compared with an undisturbed run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import subprocess
import sys

import dask
import numpy as np
import pandas as pd
import pytest

import p2g_dask as p2g
import p2g_dask.tl.engine.accumulate as aggregate
from p2g_dask._checkpoint import Checkpoint, as_checkpoint, checkpointed, checkpointed_sums, modality_token
from p2g_dask.datasets import simulate_multiome

# The engine's correlate step builds its per-chromosome tasks from this module's correlate_rows.
correlate_module = importlib.import_module("p2g_dask.tl.engine.correlate")

PARAMS = dict(use_rep="X_latent", n_metacells=50, k_neighbors=20, max_distance=250_000, seed=1)
CHUNK = 60


class Crash(RuntimeError):
    """The injected fault."""


@pytest.fixture(scope="module")
def sim():
    return simulate_multiome(n_cells=300, n_peaks=1200, n_genes=120, n_linked_genes=15, seed=11)


@pytest.fixture(scope="module")
def store(sim, tmp_path_factory):
    return p2g.io.ingest(sim.atac, sim.rna, tmp_path_factory.mktemp("resume") / "s.zarr", chunk_cells=CHUNK)


@pytest.fixture(scope="module")
def baseline(sim, store):
    with dask.config.set(scheduler="sync"):
        return p2g.tl.peak_to_gene(store.path, gene_annotation=sim.genes, chunk_cells=CHUNK, **PARAMS)


class Counter:
    """Count (and optionally fail) kernel and per-chromosome calls."""

    def __init__(self, monkeypatch, *, fail_kernel=None, fail_correlate=None):
        self.kernel: list[int] = []  # n_features of each aggregated block
        self.correlate = 0
        real_kernel, real_correlate = aggregate.metacell_sum_block, correlate_module.correlate_rows

        def kernel(block, *args, **kwargs):
            n_features = block[3] if isinstance(block, tuple) else block.shape[1]
            if fail_kernel is not None and fail_kernel(n_features, self.kernel):
                raise Crash("injected fault in the aggregation")
            self.kernel.append(int(n_features))
            return real_kernel(block, *args, **kwargs)

        @functools.wraps(real_correlate)
        def correlate(*args, **kwargs):
            if fail_correlate is not None and self.correlate == fail_correlate:
                raise Crash("injected fault in a chromosome task")
            self.correlate += 1
            return real_correlate(*args, **kwargs)

        monkeypatch.setattr(aggregate, "metacell_sum_block", kernel)
        monkeypatch.setattr(correlate_module, "correlate_rows", correlate)


def _run(monkeypatch, source, genes, checkpoint, client=None, **overrides):
    params = {**PARAMS, "chunk_cells": CHUNK, **overrides}
    with contextlib.ExitStack() as stack:
        # Undo the counters (patched just before this call) and the wiring after each run.
        stack.callback(monkeypatch.undo)
        extra = {"checkpoint": checkpoint}
        if client is None:
            stack.enter_context(dask.config.set(scheduler="sync"))
        return p2g.tl.peak_to_gene(source, gene_annotation=genes, client=client, **params, **extra)


def _n_chromosome_tasks(sim) -> int:
    return len(set(sim.atac.var["chrom"]) | set(sim.genes["chrom"]))


def _assert_same(links, baseline):
    pd.testing.assert_frame_equal(links, baseline, check_exact=True)
    np.testing.assert_array_equal(np.asarray(links.attrs["metacells"]), np.asarray(baseline.attrs["metacells"]))


def _entries(path):
    return sorted(p.name for p in path.iterdir())


def test_peak_to_gene__resume_after_crash_in_chromosome_task(sim, store, baseline, tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "ckpt"
    Counter(monkeypatch, fail_correlate=2)
    with pytest.raises(Crash):
        _run(monkeypatch, store.path, sim.genes, ckpt_dir)
    saved = _entries(ckpt_dir)
    assert not [n for n in saved if n.startswith(".p2g-tmp-")], "a temporary entry survived the crash"
    # Sums are arrays (.npz), chromosome results trees (.tree); all sums finished before any
    # chromosome task could start.
    n_tables = len([n for n in saved if n.endswith(".tree")])
    assert len([n for n in saved if n.endswith(".npz")]) >= 2
    assert 0 <= n_tables < _n_chromosome_tasks(sim)

    counter = Counter(monkeypatch)
    links = _run(monkeypatch, store.path, sim.genes, ckpt_dir)
    assert counter.kernel == [], "metacell sums were recomputed although they were saved"
    assert counter.correlate == _n_chromosome_tasks(sim) - n_tables
    _assert_same(links, baseline)

    counter = Counter(monkeypatch)
    again = _run(monkeypatch, store.path, sim.genes, ckpt_dir)
    assert (counter.kernel, counter.correlate) == ([], 0)
    _assert_same(again, baseline)


def test_peak_to_gene__resume_after_crash_in_aggregation(sim, store, baseline, tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "ckpt"
    n_chunks = -(-sim.atac.n_obs // CHUNK)
    # Fail on the very last chunk: the modality aggregated first is finished (and saved) by then.
    Counter(monkeypatch, fail_kernel=lambda n_features, done: len(done) == 2 * n_chunks - 1)
    with pytest.raises(Crash):
        _run(monkeypatch, store.path, sim.genes, ckpt_dir)
    # A finished modality has two entries: its totals and its one column block of sums.
    finished = len(_entries(ckpt_dir)) // 2
    assert finished in (0, 1)

    counter = Counter(monkeypatch)
    links = _run(monkeypatch, store.path, sim.genes, ckpt_dir)
    assert len(counter.kernel) == n_chunks * (2 - finished)
    if finished:  # only the unfinished modality's chunks ran again
        assert len(set(counter.kernel)) == 1
    assert counter.correlate == _n_chromosome_tasks(sim)
    _assert_same(links, baseline)


def test_peak_to_gene__changed_parameters_invalidate(sim, store, tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "ckpt"
    n_chunks = -(-sim.atac.n_obs // CHUNK)
    _run(monkeypatch, store.path, sim.genes, ckpt_dir)

    # max_distance changes the pair tables only: sums are reused, every chromosome recomputed.
    counter = Counter(monkeypatch)
    near = _run(monkeypatch, store.path, sim.genes, ckpt_dir, max_distance=50_000)
    assert (len(counter.kernel), counter.correlate) == (0, _n_chromosome_tasks(sim))
    with dask.config.set(scheduler="sync"):
        expected = p2g.tl.peak_to_gene(store.path, gene_annotation=sim.genes,
                                       **{**PARAMS, "chunk_cells": CHUNK, "max_distance": 50_000})
    _assert_same(near, expected)
    assert near["distance"].abs().max() <= 50_000

    # Another seed gives other metacells: everything is recomputed.
    counter = Counter(monkeypatch)
    _run(monkeypatch, store.path, sim.genes, ckpt_dir, seed=2)
    assert (len(counter.kernel), counter.correlate) == (2 * n_chunks, _n_chromosome_tasks(sim))

    # Other counts (a re-ingested store at the same path) invalidate too.
    changed = sim.atac.copy()
    changed.X = changed.X.copy()
    changed.X.data[:50] += 1
    p2g.io.ingest(changed, sim.rna, store.path + "-changed.zarr", chunk_cells=CHUNK)
    counter = Counter(monkeypatch)
    _run(monkeypatch, store.path + "-changed.zarr", sim.genes, ckpt_dir)
    assert len([n for n in counter.kernel if n == sim.atac.n_vars]) == n_chunks


def test_peak_to_gene__resume_in_memory_and_on_local_cluster(sim, tmp_path, monkeypatch, local_client):
    ckpt_dir = tmp_path / "ckpt"
    with dask.config.set(scheduler="sync"):
        expected = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes,
                                       **{**PARAMS, "chunk_cells": CHUNK})
    first = _run(monkeypatch, sim.atac, sim.genes, ckpt_dir, client=local_client, rna=sim.rna)
    _assert_same(first, expected)
    counter = Counter(monkeypatch)  # in-process workers: the patched functions are the ones they run
    again = _run(monkeypatch, sim.atac.copy(), sim.genes, ckpt_dir, client=local_client, rna=sim.rna.copy())
    assert (counter.kernel, counter.correlate) == ([], 0)
    _assert_same(again, expected)


# --- the checkpoint store itself --------------------------------------------------------------


def test_checkpoint__round_trip_kinds(tmp_path):
    from p2g_dask.tl.pseudobulk._coverage import Runs

    ckpt = Checkpoint(tmp_path)
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    table = pd.DataFrame({"peak_index": np.arange(3), "pval": [0.1, np.nan, 1e-300], "name": ["a", "b", "c"]})
    tree = {"runs": Runs(np.array([1, 5]), np.array([3, 9]), np.array([2.0, 0.5])), "chrom": "chr1",
            "n": 7, "none": None, "pair": (array, table), "list": [np.nan, "x"]}
    for value, kind in ((array, "array"), (table, "table"), (tree, "tree")):
        key = ckpt.key(kind)
        ckpt.save(key, value, kind)
        loaded = ckpt.load(key)
        if kind == "array":
            np.testing.assert_array_equal(loaded, value)
            assert loaded.dtype == value.dtype
        elif kind == "table":
            pd.testing.assert_frame_equal(loaded, value)
        else:
            assert isinstance(loaded["runs"], Runs) and isinstance(loaded["pair"], tuple)
            np.testing.assert_array_equal(loaded["runs"].end, [3, 9])
            pd.testing.assert_frame_equal(loaded["pair"][1], table)
            assert (loaded["chrom"], loaded["n"], loaded["none"], loaded["list"][1]) == ("chr1", 7, None, "x")
            assert np.isnan(loaded["list"][0])
    assert len(ckpt.keys()) == 3 and ckpt.saves == 3


def test_checkpoint__failed_save_leaves_no_entry(tmp_path):
    ckpt = Checkpoint(tmp_path)
    key = ckpt.key("bad")
    with pytest.raises(TypeError, match="cannot save a set"):
        ckpt.save(key, {"a": np.arange(3), "b": {1, 2}}, "tree")
    assert not ckpt.has(key) and list(tmp_path.iterdir()) == []


def test_checkpoint__corrupt_entry_names_file_and_fix(tmp_path):
    ckpt = Checkpoint(tmp_path)
    key = ckpt.key("x")
    ckpt.save(key, np.arange(4))
    path = tmp_path / f"{key}.npz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"{key}.npz' cannot be read .* delete it .* recompute"):
        ckpt.load(key)


def test_checkpoint__refuses_foreign_types(tmp_path):
    ckpt = Checkpoint(tmp_path)
    key = ckpt.key("evil")
    folder = tmp_path / f"{key}.tree"
    folder.mkdir()
    np.savez(folder / "arrays.npz")
    spec = {"format": 1, "value": {"namedtuple": "os:system", "items": [{"value": "touch pwned"}]}}
    (folder / "tree.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="'os:system', which is not a p2g_dask type"):
        ckpt.load(key)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint__key_is_stable_across_processes_and_sensitive(tmp_path):
    code = ("import numpy as np, pandas as pd; from p2g_dask._checkpoint import Checkpoint; "
            f"c = Checkpoint({str(tmp_path)!r}); "
            "print(c.key(np.arange(10), pd.DataFrame({'a': [1, 2]}), {'seed': 1, 'max_distance': 250000}, 'x'))")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}
    ckpt = Checkpoint(tmp_path)
    here = ckpt.key(np.arange(10), pd.DataFrame({"a": [1, 2]}), {"max_distance": 250000, "seed": 1}, "x")
    assert keys == {here}
    assert ckpt.key(np.arange(10), pd.DataFrame({"a": [1, 2]}), {"max_distance": 250001, "seed": 1}, "x") != here
    with pytest.raises(RuntimeError):
        ckpt.key(object())  # an object without a stable hash must not give a random key


def test_modality_token__store_identity(sim, store, tmp_path):
    from p2g_dask.io.inputs import resolve_input

    first = resolve_input(store.path)[0]
    again = resolve_input(p2g.io.open_store(store.path))[0]
    assert modality_token(first) == modality_token(again)
    other = p2g.io.ingest(sim.atac, sim.rna, tmp_path / "copy.zarr", chunk_cells=CHUNK)
    assert modality_token(resolve_input(other)[0]) != modality_token(first)


# --- per-group coverage of pseudobulk_with_fragments ------------------------------------------


class _DaskWithCheckpoint:
    """``dask`` as seen by pseudobulk.py, with each coverage task checkpointed (test-only wiring)."""

    def __init__(self, real, ckpt):
        self._real, self._ckpt = real, ckpt

    def __getattr__(self, name):
        return getattr(self._real, name)

    def delayed(self, func, *args, **kwargs):
        made = self._real.delayed(func, *args, **kwargs)
        if getattr(func, "__name__", "") != "_coverage_task":
            return made

        def call(*cargs, dask_key_name=None, **ckwargs):
            # The coverage key is p2g-coverage-<tokenize(group, chrom, fragment caches, lookups, params)>.
            task = made(*cargs, dask_key_name=dask_key_name, **ckwargs)
            return checkpointed(task, self._ckpt, self._ckpt.key(dask_key_name), "tree")

        return call


def _bigwig_records(path):
    import pybigtools

    with contextlib.closing(pybigtools.open(str(path))) as bw:
        return {c: list(bw.records(c)) for c in dict(bw.chroms())}


def test_pseudobulk_with_fragments__coverage_resume_after_crash(sim, tmp_path, monkeypatch):
    pseudobulk = importlib.import_module("p2g_dask.tl.pseudobulk.pseudobulk")
    from p2g_dask.datasets import simulate_fragments

    small = sim.atac[:120].copy()
    sizes = sim.chrom_sizes
    frags = simulate_fragments(small, tmp_path / "f.tsv.gz", chrom_sizes=sizes, seed=3)
    kwargs = dict(chromsizes=sizes, cluster_key="lineage", bin_size=1_000, path_to_fragments={"s": frags},
                  cache_fragments=tmp_path / "cache", executor="synchronous", show_progress=False, overwrite=True)
    expected_paths = pseudobulk.pseudobulk_with_fragments(small, bigwig_path=tmp_path / "expected", **kwargs)
    n_groups, n_chroms = len(expected_paths), len(sizes)

    calls = []
    real_task = pseudobulk._coverage_task

    def counted(*args, **kw):
        if fail_at is not None and len(calls) == fail_at:
            raise Crash("injected fault in a coverage task")
        calls.append(1)
        return real_task(*args, **kw)

    def run(out):
        calls.clear()
        native = "checkpoint" in inspect.signature(pseudobulk.pseudobulk_with_fragments).parameters
        with monkeypatch.context() as patch:
            patch.setattr(pseudobulk, "_coverage_task", functools.wraps(real_task)(counted))
            extra = {"checkpoint": tmp_path / "ckpt"} if native else {}
            if not native:
                patch.setattr(pseudobulk, "dask", _DaskWithCheckpoint(dask, Checkpoint(tmp_path / "ckpt")))
            return pseudobulk.pseudobulk_with_fragments(small, bigwig_path=out, **kwargs, **extra)

    fail_at = n_groups * n_chroms // 2
    with pytest.raises(Crash):
        run(tmp_path / "bw")
    saved = len(Checkpoint(tmp_path / "ckpt").keys())
    assert 0 < saved < n_groups * n_chroms
    fail_at = None
    written = run(tmp_path / "bw")
    assert len(calls) == n_groups * n_chroms - saved
    for group, path in written.items():
        records = _bigwig_records(path)
        assert sum(len(r) for r in records.values()) > 10  # real coverage, not an empty track
        assert records == _bigwig_records(expected_paths[group])
    run(tmp_path / "bw")
    assert calls == []


def test_checkpointed_sums__column_blocks_saved_and_loaded_one_by_one(sim, tmp_path, monkeypatch):
    from p2g_dask.io.inputs import resolve_input

    atac = resolve_input(sim.atac)[0]
    members = np.arange(300).reshape(30, 10)
    # ~16 KB per block: 1,200 peaks x 30 metacells in several column blocks.
    blocks, totals = aggregate.metacell_sums(atac, members, chunk_cells=CHUNK, block_bytes=16_000)
    assert len(blocks) > 3
    with dask.config.set(scheduler="sync"):
        expected = dask.compute([b.sums for b in blocks], totals)
    ckpt = Checkpoint(tmp_path)
    key = ckpt.key(modality_token(atac), members)
    saved_blocks, saved_totals = checkpointed_sums(blocks, totals, ckpt, key)
    with dask.config.set(scheduler="sync"):
        first = dask.compute([b.sums for b in saved_blocks], saved_totals)
    assert len(ckpt.keys()) == len(blocks) + 1
    # Lose one block: only its columns are aggregated again, the others and the totals load.
    lost = saved_blocks[2]
    (tmp_path / f"{ckpt.key(key, 'block', lost.first, lost.stop)}.npz").unlink()
    counter = Counter(monkeypatch)
    blocks, totals = aggregate.metacell_sums(atac, members, chunk_cells=CHUNK, block_bytes=16_000)
    again_blocks, again_totals = checkpointed_sums(blocks, totals, ckpt, key)
    with dask.config.set(scheduler="sync"):
        again = dask.compute([b.sums for b in again_blocks], again_totals)
    assert len(counter.kernel) == -(-sim.atac.n_obs // CHUNK)  # one column block, every chunk
    assert [(b.first, b.stop) for b in again_blocks] == [(b.first, b.stop) for b in blocks]
    for got in (first, again):
        for g, e in zip(got[0], expected[0]):
            np.testing.assert_array_equal(g, e)
        np.testing.assert_array_equal(got[1], expected[1])
