"""Where p2g_dask's time goes in a fresh process: the import, the first call against the second, profiles.

For whoever makes the first call faster. On the cached cases of ``bench_peak_to_gene.py`` and
``bench_lsi.py`` (run those first with the same ``--workdir``), each step in a new Python process:

1. ``import p2g_dask.tl`` after numpy, pandas, scipy.sparse and anndata (what a user has imported
   once the data are read): its wall time, then the time until the background thread that loads
   the cached numba kernels is done, and ``python -X importtime`` summed by top-level package (own
   time of each module) with the slowest single modules.
2. One process per tool: read the data, ``import p2g_dask.tl``, call 1, call 2 (the default
   scheduler, wall seconds), and the tool's own stage timings where it keeps them.
3. Another process per tool: cProfile of call 1 and of call 2. cProfile sees only the thread it
   runs in, so these calls run with dask's synchronous scheduler (peak_to_gene's in-memory path
   otherwise runs its tasks in a thread pool); the wall figures of step 2 are the real ones.
   Printed: p2g_dask's functions by cumulative time (the stages), every function by own time,
   and the functions that cost more in call 1 than in call 2 (the warm-up), by own and by
   cumulative time.

Usage:  python benchmarks/profile_fresh_process.py [--workdir /tmp/p2g_bench] [--tool peak_to_gene iterative_lsi]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from _fresh import child_env, compile_bytecode, emit, REPO, run_fresh

PRE_IMPORTS = "import numpy, pandas, scipy.sparse, anndata"
MARK = "P2G-PROFILE-MARK"
IMPORTTIME = re.compile(r"import time:\s+(-?\d+) \|\s+(\d+) \| (\s*)(\S+)")


# ---------------------------------------------------------------- 1. the import
def import_seconds() -> dict:
    """Wall seconds of ``import p2g_dask.tl`` in a fresh process, and until its kernel loading ends."""
    code = (f"import json, threading, time\n{PRE_IMPORTS}\nt0 = time.perf_counter()\nimport p2g_dask.tl\n"
            "t1 = time.perf_counter()\n"
            "[t.join() for t in threading.enumerate() if t.name == 'p2g-warm']\n"
            "print(json.dumps({'import': t1 - t0, 'kernels_loaded': time.perf_counter() - t0}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def import_breakdown(top: int) -> None:
    """``python -X importtime`` of ``import p2g_dask.tl`` after :data:`PRE_IMPORTS`, summed and ranked.

    Printed: own time by top-level package; then each place where one package imports another
    (the costly edges), by cumulative time, with the chain of importers up to p2g_dask.
    """
    code = f"{PRE_IMPORTS}\nimport sys\nsys.stderr.write('{MARK}\\n')\nimport p2g_dask.tl"
    # The background kernel loading imports numba's internals in another thread, whose lines
    # would interleave with these and break the tree: it is off here (timed apart above).
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env={**child_env(), "DASK_P2G__WARM_KERNELS": "false"}, check=True)
    rows = [(int(own) / 1e6, int(cumulative) / 1e6, len(indent), name) for own, cumulative, indent, name in
            (m.groups() for m in map(IMPORTTIME.match, done.stderr.split(MARK, 1)[1].splitlines()) if m)]
    # importtime prints a module after the modules it imported, one level deeper: the importer of
    # row i is the next row with less indentation.
    importer = {}
    for i, (_, _, depth, name) in enumerate(rows):
        importer[i] = next((j for j in range(i + 1, len(rows)) if rows[j][2] < depth), None)
    by_package: dict[str, float] = defaultdict(float)
    for seconds, _, _, name in rows:
        by_package[name.split(".")[0]] += seconds
    print(f"  -X importtime (inflates a little): {sum(r[0] for r in rows):.2f} s over {len(rows)} modules; "
          "own time by package:")
    print("   " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in
                            sorted(by_package.items(), key=lambda kv: -kv[1])[:top]))
    edges = [i for i, j in importer.items() if j is not None and rows[i][3].split(".")[0] != rows[j][3].split(".")[0]]
    print("  costly imports of one package by another (cumulative s: module <- importer <- ... <- p2g_dask; "
          "background kernel loading off):")
    for i in sorted(edges, key=lambda i: -rows[i][1])[:top]:
        chain, j = [rows[i][3]], importer[i]
        while j is not None and not chain[-1].startswith("p2g_dask"):
            chain.append(rows[j][3])
            j = importer[j]
        shown = chain if len(chain) <= 4 else [*chain[:2], "...", *chain[-2:]]
        print(f"    {rows[i][1]:6.3f}  {' <- '.join(shown)}")


# ---------------------------------------------------------------- 2. and 3.: read, import, call 1, call 2
def read(tool: str, workdir: str):
    import anndata as ad

    if tool == "peak_to_gene":
        from bench_peak_to_gene import read_case

        return read_case(Path(workdir) / "peak_to_gene")
    return (ad.read_h5ad(Path(workdir) / "lsi" / "atac.h5ad"),)


def call(tool: str, data) -> dict:
    """One call of ``tool`` on the case; the stage timings it keeps (peak_to_gene's attrs)."""
    import p2g_dask as p2g

    if tool == "peak_to_gene":
        from bench_peak_to_gene import PARAMS

        atac, rna, genes = data
        return dict(p2g.tl.peak_to_gene(atac, rna=rna, gene_annotation=genes, **PARAMS).attrs["timings"])
    from bench_lsi import SETTINGS

    p2g.tl.iterative_lsi(data[0], **SETTINGS)
    return {}


def run_timeline(tool: str, workdir: str) -> None:
    started = time.perf_counter()
    data = read(tool, workdir)
    marks = {"read": time.perf_counter() - started}
    started = time.perf_counter()
    import p2g_dask.tl  # noqa: F401

    marks["import p2g_dask.tl"] = time.perf_counter() - started
    stages = {}
    for name in ("call 1", "call 2"):
        started = time.perf_counter()
        stages[name] = call(tool, data)
        marks[name] = time.perf_counter() - started
    emit(marks=marks, stages=stages)


class ThreadsProfile:
    """cProfile of the calling thread and of every thread started inside the block.

    ``threading.setprofile`` hands each new thread a hook whose first call starts a profiler of
    that thread's own (which then replaces the hook): the work of kernel threads is seen, not
    just the main thread waiting on them. Threads that outlive the block keep their profiler:
    use it where threads are started per call (here: the synchronous scheduler).
    """

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []

    def _start_in_thread(self, *_) -> None:
        profile = cProfile.Profile()
        self.profiles.append(profile)  # list.append is atomic
        profile.enable()

    def __enter__(self) -> ThreadsProfile:
        self.profiles.append(cProfile.Profile())
        threading.setprofile(self._start_in_thread)
        self.profiles[0].enable()
        return self

    def __exit__(self, *exc) -> None:
        self.profiles[0].disable()
        threading.setprofile(None)

    def stats(self) -> dict:
        """pstats' table summed over the threads: (file, line, function) -> (cc, nc, own, cumulative, callers)."""
        merged = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            merged.add(profile)
        return merged.stats


#: A thread waiting on others (their work is counted in their own threads) or for work.
WAITS = ("<method 'acquire' of", "<method '_acquire_restore' of", "of '_queue.SimpleQueue' objects>")


def run_profile(tool: str, workdir: str, top: int) -> None:
    import dask

    data = read(tool, workdir)
    import p2g_dask.tl  # noqa: F401

    stats = []
    with dask.config.set(scheduler="synchronous"):
        for name in ("call 1", "call 2"):
            started = time.perf_counter()
            with ThreadsProfile() as profile:
                call(tool, data)
            print(f"== {tool}, {name} under cProfile (synchronous scheduler, {len(profile.profiles)} threads "
                  f"profiled): {time.perf_counter() - started:.2f} s")
            stats.append(profile.stats())
    first, second = stats
    show("p2g_dask's functions, call 1, by cumulative time (summed over threads)", first, {}, 3, top,
         only="p2g_dask")
    show("every function, call 1, by own time summed over threads (waits left out)",
         first, {}, 2, top)
    show("call 1 minus call 2, by own time (the warm-up)", first, second, 2, top)
    show("call 1 minus call 2, by cumulative time, p2g_dask's functions", first, second, 3, top, only="p2g_dask")
    emit()


def where(key: tuple) -> str:
    """``package/module.py:line function`` of a pstats key, short."""
    file, line, func = key
    for anchor in ("site-packages/", "/p2g_dask/", "/lib/python3"):
        if anchor in file:
            file = ("p2g_dask/" if anchor == "/p2g_dask/" else "") + file.split(anchor, 1)[1]
            break
    return f"{file}:{line} {func}" if line else func


def show(title: str, stats: dict, minus: dict, field: int, top: int, only: str | None = None) -> None:
    """The ``top`` entries by ``field`` (2 own time, 3 cumulative), less ``minus``'s value of each."""
    rows = []
    for key, value in stats.items():
        if (only and only not in key[0]) or any(w in key[2] for w in WAITS):
            continue
        seconds = value[field] - (minus[key][field] if key in minus else 0.0)
        rows.append((seconds, value[1], key))
    print(f"-- {title}")
    print(f"   {'seconds':>8} {'calls':>9}  function")
    for seconds, calls, key in sorted(rows, key=lambda r: -r[0])[:top]:
        print(f"   {seconds:8.3f} {calls:9d}  {where(key)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/p2g_bench",
                        help="where bench_peak_to_gene.py and bench_lsi.py cached their cases")
    parser.add_argument("--tool", nargs="+", default=["peak_to_gene", "iterative_lsi"],
                        choices=["peak_to_gene", "iterative_lsi"])
    parser.add_argument("--top", type=int, default=20, help="lines per list")
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        kind, tool = args.run
        return run_timeline(tool, args.workdir) if kind == "timeline" else run_profile(tool, args.workdir, args.top)

    missing = [t for t, f in (("peak_to_gene", "peak_to_gene/ready"), ("iterative_lsi", "lsi/atac.h5ad"))
               if t in args.tool and not (Path(args.workdir) / f).exists()]
    if missing:
        raise SystemExit(f"no cached case for {missing} in {args.workdir}: run bench_peak_to_gene.py / bench_lsi.py "
                         "with the same --workdir first")
    compile_bytecode(Path(REPO) / "p2g_dask")
    seconds = import_seconds()
    print(f"== import p2g_dask.tl in a fresh process, after `{PRE_IMPORTS}`: {seconds['import']:.2f} s; its "
          f"background loading of cached numba kernels done {seconds['kernels_loaded']:.2f} s after the import began")
    import_breakdown(args.top)
    for tool in args.tool:
        result = run_fresh(__file__, "timeline", tool, "--workdir", args.workdir)
        print(f"== {tool} in a fresh process (default scheduler): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in result["marks"].items()))
        for name, stages in result["stages"].items():
            if stages:
                print(f"   {name} stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))
        done = subprocess.run([sys.executable, __file__, "--run", "profile", tool, "--workdir", args.workdir,
                               "--top", str(args.top)], capture_output=True, text=True, env=child_env())
        print("\n".join(line for line in done.stdout.splitlines() if not line.startswith("RESULT ")))
        if done.returncode:
            raise SystemExit(f"the profile of {tool} failed:\n{done.stderr[-4000:]}")


if __name__ == "__main__":
    main()
