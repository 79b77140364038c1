"""Faults: nothing half-written, existing outputs kept, killed workers survived, tight memory.

* Interrupted writes: every output (store, parquet, BigWig, PNG, run.json) is interrupted by an
  exception, SIGINT or SIGTERM at the worst moment (the temporary output complete, not yet
  renamed, or half written) and must leave nothing under its final name.
* Overwrite refusal: existing outputs are kept unless ``overwrite=True`` / ``--overwrite``.
* A worker process killed mid-run (``processes=True``): Dask reschedules, the result is identical.
* A tight ``memory_limit``: workers spill to disk instead of dying, the result is identical.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest

import p2g_dask as p2g
from p2g_dask._atomic import TMP_MARKER
from p2g_dask.datasets import simulate_multiome

ATOMIC_USERS = ("p2g_dask.io.store", "p2g_dask.io.links", "p2g_dask.tl.pseudobulk._bigwig", "p2g_dask._stages", "p2g_dask.pipeline")
OUTPUTS = {"store": "store.zarr", "parquet": "links.parquet", "bigwig": "g.bw", "png": "plot.png", "runjson": "run.json"}

# Writes each output once; the patched atomic_path stops after the temporary output is complete.
WRITER_SCRIPT = textwrap.dedent('''
    import contextlib, importlib, sys, time
    from pathlib import Path
    import numpy as np, pandas as pd
    from p2g_dask import _atomic
    from p2g_dask.cli import sigterm_as_interrupt

    out, mode, outputs = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
    real = _atomic.atomic_path

    @contextlib.contextmanager
    def stalled(path, **kwargs):
        with real(path, **kwargs) as tmp:
            yield tmp
            print("READY", flush=True)  # complete under the temporary name, not yet renamed
            time.sleep(120)

    for name in {users!r}:
        setattr(importlib.import_module(name), "atomic_path", stalled)

    def store(partial=False):
        from p2g_dask.datasets import simulate_multiome
        from p2g_dask.io import ingest
        import p2g_dask.io._write as st
        if partial:  # stop after the first block of cells is written: a half-written store
            seen, check = [], st._validate_block
            def slow_check(*a):
                seen.append(1)
                if len(seen) == 2:
                    print("READY", flush=True); time.sleep(120)
                return check(*a)
            st._validate_block = slow_check
        sim = simulate_multiome(n_cells=60, n_peaks=200, n_genes=20, n_linked_genes=3, seed=1)
        ingest(sim.atac, sim.rna, out / "store.zarr", chunk_cells=16)

    def parquet():
        from p2g_dask.io import write_links
        write_links(pd.DataFrame({{"peak": ["chr1:1-5"], "gene": ["A"], "correlation": [0.5]}}), out / "links.parquet")

    def bigwig():
        from p2g_dask.tl.pseudobulk._bigwig import write_bigwig
        from p2g_dask.tl.pseudobulk._coverage import Runs
        write_bigwig(out / "g.bw", {{"chr1": 1000}}, {{"chr1": Runs(np.array([10]), np.array([20]), np.array([3]))}})

    def png():
        import matplotlib; matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from p2g_dask._stages import _save_figure
        fig, ax = plt.subplots(); ax.plot([1, 2], [3, 4])
        _save_figure(fig, out / "plot.png", False)

    def runjson():
        from p2g_dask.pipeline import _write_json
        _write_json(out / "run.json", {{"status": "finished"}})

    writers = {{"store": store, "store-partial": lambda: store(True), "parquet": parquet, "bigwig": bigwig,
               "png": png, "runjson": runjson}}
    for name in outputs:
        guard = sigterm_as_interrupt() if mode == "sigterm-handled" else contextlib.nullcontext()
        try:
            with guard:
                writers[name]()
            print("FINISHED", name, flush=True)
        except KeyboardInterrupt as err:
            print("CLEANED", name, type(err).__name__, flush=True)
''').format(users=ATOMIC_USERS)


def _interrupt_writes(tmp_path: Path, mode: str, outputs: list[str], sig: int) -> list[str]:
    """Run the writer script, send ``sig`` at each READY; return its output lines."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(out), mode, ",".join(outputs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("READY"):
                proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines.append(f"EXIT {proc.returncode}")
    return lines


@pytest.mark.parametrize("sig, mode", [(signal.SIGINT, "sigint"), (signal.SIGTERM, "sigterm-handled")],
                         ids=["SIGINT", "SIGTERM-cli-handler"])
def test_atomic_outputs__signal_leaves_nothing(tmp_path, sig, mode):
    outputs = ["store-partial", "store", "parquet", "bigwig", "png", "runjson"]
    lines = _interrupt_writes(tmp_path, mode, outputs, sig)
    assert lines.count("READY") == len(outputs), lines
    expected = "Terminated" if mode == "sigterm-handled" else "KeyboardInterrupt"
    assert [ln for ln in lines if ln.startswith("CLEANED")] == [f"CLEANED {o} {expected}" for o in outputs]
    assert lines[-1] == "EXIT 0"
    # Not even a temporary file is left: every atomic_path removed its own.
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_atomic_outputs__raw_sigterm_leaves_only_marked_temporaries(tmp_path):
    # Without the CLI's handler SIGTERM ends Python at once, skipping cleanup: what is left must
    # carry the temporary marker, never a final name.
    runs = {}
    for name in OUTPUTS:
        (tmp_path / name).mkdir()
        runs[name] = tmp_path / name
    procs = {}
    for name, folder in runs.items():
        script = folder / "writer.py"
        script.write_text(WRITER_SCRIPT)
        (folder / "out").mkdir()
        procs[name] = subprocess.Popen([sys.executable, str(script), str(folder / "out"), "raw", name],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                       env={**os.environ, "MPLBACKEND": "Agg"})
    try:
        for name, proc in procs.items():
            assert proc.stdout.readline().strip() == "READY", name
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == -signal.SIGTERM
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, folder in runs.items():
        left = [p.name for p in (folder / "out").iterdir()]
        assert left and all(n.startswith(TMP_MARKER) for n in left), (name, left)
        assert not (folder / "out" / OUTPUTS[name]).exists()


def test_cli_main__sigterm_during_ingest(tmp_path):
    sim = simulate_multiome(n_cells=60, n_peaks=200, n_genes=20, n_linked_genes=3, seed=1)
    sim.atac.write_h5ad(tmp_path / "atac.h5ad")
    sim.rna.write_h5ad(tmp_path / "rna.h5ad")
    code = textwrap.dedent(f'''
        import sys, time
        import p2g_dask.io._write as st
        from p2g_dask import cli
        check = st._validate_block
        def slow(*a):
            print("READY", flush=True); time.sleep(120)
        st._validate_block = slow
        sys.exit(cli.main(["-q", "ingest", {str(tmp_path / "atac.h5ad")!r}, {str(tmp_path / "rna.h5ad")!r},
                           {str(tmp_path / "s.zarr")!r}]))
    ''')
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "p2g ingest: terminated (SIGTERM); no partial output" in proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atac.h5ad", "rna.h5ad"]


# --- exceptions, in process -------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def _failing_after_body(monkeypatch):
    real = importlib.import_module("p2g_dask._atomic").atomic_path

    @contextlib.contextmanager
    def failing(path, **kwargs):
        with real(path, **kwargs) as tmp:
            yield tmp
            raise Boom(f"after writing {tmp.name}")

    for name in ATOMIC_USERS:
        monkeypatch.setattr(importlib.import_module(name), "atomic_path", failing)


def _write(name, out, sim):
    if name == "store":
        p2g.io.ingest(sim.atac, sim.rna, out / OUTPUTS[name], chunk_cells=32)
    elif name == "parquet":
        p2g.io.write_links(pd.DataFrame({"peak": ["chr1:1-5"], "gene": ["A"]}), out / OUTPUTS[name])
    elif name == "bigwig":
        from p2g_dask.tl.pseudobulk._bigwig import write_bigwig
        from p2g_dask.tl.pseudobulk._coverage import Runs

        write_bigwig(out / OUTPUTS[name], {"chr1": 1000}, {"chr1": Runs(np.array([10]), np.array([20]), np.array([3]))})
    elif name == "png":
        import matplotlib.pyplot as plt

        from p2g_dask._stages import _save_figure

        _save_figure(plt.figure(), out / OUTPUTS[name], False)
    else:
        from p2g_dask.pipeline import _write_json

        _write_json(out / OUTPUTS[name], {"status": "finished"})


@pytest.fixture(scope="module")
def tiny():
    return simulate_multiome(n_cells=80, n_peaks=300, n_genes=30, n_linked_genes=4, seed=2)


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_atomic_outputs__exception_leaves_nothing(tmp_path, monkeypatch, tiny, name):
    _failing_after_body(monkeypatch)
    with pytest.raises(Boom):
        _write(name, tmp_path, tiny)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_atomic_outputs__refuse_overwrite(tmp_path, tiny, name):
    _write(name, tmp_path, tiny)
    target = tmp_path / OUTPUTS[name]
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    if name in ("png", "runjson"):
        # These writers are called with overwrite fixed by their caller: check the helper underneath.
        from p2g_dask._atomic import atomic_path

        with pytest.raises(FileExistsError, match=rf"{OUTPUTS[name]}' already exists; pass overwrite=True \(CLI: --overwrite\)"):
            with atomic_path(target, argument="output"):
                pass
    else:
        with pytest.raises(FileExistsError, match=rf"{OUTPUTS[name]}' already exists; pass overwrite=True"):
            _write(name, tmp_path, tiny)
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_run_pipeline__refuses_existing_run_and_cli_plot_needs_overwrite(tmp_path, tiny, capsys):
    from p2g_dask.cli import main
    from p2g_dask.pipeline import run_pipeline

    (tmp_path / "run.json").write_text("{}")
    config = {"inputs": {"atac": "a.h5ad"}, "output": str(tmp_path)}
    with pytest.raises(FileExistsError, match=r"already holds a run \(run.json\); pass overwrite: true \(CLI: --overwrite\)"):
        run_pipeline(config)
    assert (tmp_path / "run.json").read_text() == "{}"
    (tmp_path / "plot.png").write_bytes(b"old")
    links = tmp_path / "links.parquet"
    p2g.io.write_links(pd.DataFrame({"peak": ["chr1:1-5"], "gene": ["A"]}), links)
    code = main(["-q", "plot", "x.h5ad", "--links", str(links), "--gene", "A", "--genes", "g.tsv",
                 "--out", str(tmp_path / "plot.png")])
    assert code == 2
    # Refused before any input is read (x.h5ad and g.tsv do not even exist).
    assert "--out='" in capsys.readouterr().err
    assert (tmp_path / "plot.png").read_bytes() == b"old"


@pytest.mark.parametrize("when", ["while_staging", "at_the_swap"])
def test_write_obsm__interrupted_keeps_old_embedding(tiny, tmp_path, monkeypatch, when):
    store = p2g.io.ingest(tiny.atac, tiny.rna, tmp_path / "s.zarr", chunk_cells=32)
    old = np.arange(tiny.atac.n_obs * 2, dtype=float).reshape(-1, 2)
    store.atac.write_obsm("X_emb", old)
    real_replace = os.replace

    def failing_replace(src, dst):
        dst = Path(dst)
        staging = dst.name == "zarr.json" and "_p2g_tmp_" in str(dst)  # zarr's own atomic metadata write
        swapping = dst.parent.name == "obsm"
        if (when == "while_staging" and staging) or (when == "at_the_swap" and swapping):
            raise Boom(f"interrupted {when}")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(Boom):
        store.atac.write_obsm("X_emb", old + 100)
    monkeypatch.undo()
    # zarr's I/O threads may still finish writes after the error: into the staged folder after it
    # was removed (a staged leftover must carry the staging prefix and is never listed), and of
    # obsm/zarr.json, which zarr rewrites as the new array's parent through its own
    # "zarr.<uuid>.partial" temporary file. Wait for those in-flight renames to land.
    obsm_dir = tmp_path / "s.zarr" / "atac" / "obsm"
    deadline = time.monotonic() + 10
    while any(p.name.endswith(".partial") for p in obsm_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {p.name for p in obsm_dir.iterdir()} - {"X_emb", "X_latent", "zarr.json"}
    assert all(name.startswith("_p2g_tmp_") for name in left), left
    reopened = p2g.io.open_store(tmp_path / "s.zarr").atac.obsm
    assert sorted(reopened) == ["X_emb", "X_latent"]
    np.testing.assert_array_equal(reopened["X_emb"], old)
    store.atac.write_obsm("X_emb", old + 1)
    np.testing.assert_array_equal(p2g.io.open_store(tmp_path / "s.zarr").atac.obsm["X_emb"], old + 1)


# --- worker faults on a real multi-process cluster --------------------------------------------


def _kill_self_once(marker: str, module: str, attribute: str) -> int:
    """On a worker: make ``module.attribute`` SIGKILL its own process on its first call anywhere."""
    import importlib as il
    import os as _os
    import signal as _signal

    target = il.import_module(module)
    real = getattr(target, attribute)

    def fatal(*args, **kwargs):
        try:
            fd = _os.open(marker, _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)  # exactly one kill, cluster-wide
        except FileExistsError:
            return real(*args, **kwargs)
        _os.write(fd, str(_os.getpid()).encode())
        _os.close(fd)
        _os.kill(_os.getpid(), _signal.SIGKILL)

    setattr(target, attribute, fatal)
    return _os.getpid()


@pytest.fixture(scope="module")
def process_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


@pytest.fixture(scope="module")
def fault_sim():
    return simulate_multiome(n_cells=600, n_peaks=3000, n_genes=300, n_linked_genes=30, seed=7)


@pytest.mark.slow
def test_peak_to_gene__worker_killed_mid_run(fault_sim, tmp_path, process_client):
    store = p2g.io.ingest(fault_sim.atac, fault_sim.rna, tmp_path / "s.zarr", chunk_cells=100)
    params = dict(gene_annotation=fault_sim.genes, use_rep="X_latent", n_metacells=80, k_neighbors=30, chunk_cells=100)
    with dask.config.set(scheduler="sync"):
        undisturbed = p2g.tl.peak_to_gene(store.path, **params)
    marker = tmp_path / "killed"
    before = process_client.run(_kill_self_once, str(marker), "p2g_dask.tl.engine.accumulate", "metacell_sum_block")
    links = p2g.tl.peak_to_gene(store.path, client=process_client, **params)
    killed = int(marker.read_text())
    assert killed in before.values(), "no worker process was killed"
    process_client.wait_for_workers(2, timeout=60)
    assert killed not in process_client.run(os.getpid).values()  # the nanny started a new process
    pd.testing.assert_frame_equal(links, undisturbed, check_exact=True)


@pytest.mark.slow
def test_peak_to_gene__worker_killed_mid_run_in_memory_input(fault_sim, tmp_path, process_client):
    params = dict(rna=fault_sim.rna, gene_annotation=fault_sim.genes, use_rep="X_latent", n_metacells=80,
                  k_neighbors=30, chunk_cells=100)
    with dask.config.set(scheduler="sync"):
        undisturbed = p2g.tl.peak_to_gene(fault_sim.atac, **params)
    process_client.wait_for_workers(2, timeout=60)
    process_client.run(_kill_self_once, str(tmp_path / "killed"), "p2g_dask.tl.engine.accumulate", "metacell_sum_block")
    links = p2g.tl.peak_to_gene(fault_sim.atac, client=process_client, **params)
    pd.testing.assert_frame_equal(links, undisturbed, check_exact=True)


@pytest.mark.slow
def test_pseudobulk_with_fragments__worker_killed_while_writing_bigwig(fault_sim, tmp_path, process_client):
    import pybigtools

    from p2g_dask.datasets import simulate_fragments

    cells = fault_sim.atac[:200].copy()
    frags = simulate_fragments(cells, tmp_path / "f.tsv.gz", chrom_sizes=fault_sim.chrom_sizes, seed=1)
    kwargs = dict(chromsizes=fault_sim.chrom_sizes, cluster_key="lineage", path_to_fragments={"s": frags},
                  cache_fragments=tmp_path / "cache", show_progress=False, bin_size=500)
    expected = p2g.tl.pseudobulk_with_fragments(cells, bigwig_path=tmp_path / "expected", executor="synchronous",
                                                **kwargs)
    process_client.wait_for_workers(2, timeout=60)
    marker = tmp_path / "killed"
    # Killed after pybigtools wrote the temporary file and before it was checked and renamed.
    process_client.run(_kill_self_once, str(marker), "p2g_dask.tl.pseudobulk._bigwig", "_verify")
    written = p2g.tl.pseudobulk_with_fragments(cells, bigwig_path=tmp_path / "bw", executor="dask",
                                               client=process_client, **kwargs)
    assert marker.exists()
    left = sorted(p.name for p in (tmp_path / "bw").iterdir())
    finals = [n for n in left if not n.startswith(TMP_MARKER)]
    assert finals == sorted(Path(p).name for p in written.values())
    # The killed attempt's complete-but-unchecked file is left under a temporary name only.
    assert len(left) - len(finals) == 1
    for group, path in written.items():
        with contextlib.closing(pybigtools.open(path)) as got, contextlib.closing(pybigtools.open(expected[group])) as want:
            assert {c: list(got.records(c)) for c in dict(got.chroms())} == \
                   {c: list(want.records(c)) for c in dict(want.chroms())}


def _spill_counts(dask_worker) -> float:
    return sum(v for (label, unit), v in dask_worker.data.cumulative_metrics.items()
               if label == "disk-write" and unit == "count")


def _synthetic(n_cells: int, n_peaks: int, n_genes: int, seed: int = 0):
    """Random counts with peaks and genes on 5 chromosomes (fast to make at any size)."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    chroms = np.repeat([f"chr{i}" for i in range(1, 6)], -(-n_peaks // 5))[:n_peaks]
    starts = np.concatenate([np.sort(rng.choice(10_000_000, int((chroms == c).sum()), replace=False)) * 10
                             for c in pd.unique(chroms)])
    cells = [f"c{i}" for i in range(n_cells)]

    def counts(n_features, density, high):
        nnz = int(n_cells * n_features * density)
        X = sp.csr_matrix((rng.integers(1, high, nnz).astype(np.int32),
                           (rng.integers(0, n_cells, nnz), rng.integers(0, n_features, nnz))),
                          shape=(n_cells, n_features))
        X.sum_duplicates()
        return X

    atac = ad.AnnData(counts(n_peaks, 0.02, 4), obs=pd.DataFrame(index=cells),
                      var=pd.DataFrame(index=[f"{c}:{s}-{s + 500}" for c, s in zip(chroms, starts)]))
    atac.obsm["X_emb"] = rng.normal(size=(n_cells, 10))
    gene_start = rng.integers(0, 100_000_000, n_genes)
    genes = pd.DataFrame({"gene_name": [f"g{i}" for i in range(n_genes)],
                          "chrom": rng.choice([f"chr{i}" for i in range(1, 6)], n_genes),
                          "start": gene_start, "end": gene_start + 5000, "strand": rng.choice(["+", "-"], n_genes)})
    rna = ad.AnnData(counts(n_genes, 0.1, 10), obs=pd.DataFrame(index=cells),
                     var=pd.DataFrame(index=list(genes["gene_name"])))
    return atac, rna, genes


@pytest.mark.slow
def test_peak_to_gene__tight_memory_limit_spills(tmp_path):
    from distributed import Client, LocalCluster

    # 200 metacells x 50,000 peaks: 40 MB per partial sum, several held at once per worker.
    atac, rna, genes = _synthetic(2000, 50_000, 2000)
    store = p2g.io.ingest(atac, rna, tmp_path / "s.zarr", chunk_cells=250)
    params = dict(gene_annotation=genes, use_rep="X_emb", n_metacells=200, k_neighbors=20, chunk_cells=250)
    with dask.config.set(scheduler="sync"):
        expected = p2g.tl.peak_to_gene(store.path, **params)
    # 600 MiB per worker: a p2g worker needs ~200-300 MiB before any data (Python, numpy, numba's
    # LLVM). Spilling is triggered by the managed data (target 5% = 30 MiB, less than one 40 MB
    # partial sum),
    # so the test does not depend on how much memory the imports take.
    with dask.config.set({"distributed.worker.memory.target": 0.05}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="600MiB",
                         dashboard_address=":0") as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        links = p2g.tl.peak_to_gene(store.path, client=client, **params)
        assert client.run(os.getpid) == pids, "a worker died (was restarted) under the memory limit"
        assert sum(client.run(_spill_counts).values()) > 0, "nothing was spilled: the limit was not tight"
    pd.testing.assert_frame_equal(links, expected, check_exact=True)
