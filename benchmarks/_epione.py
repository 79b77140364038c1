"""epione's own code in the benchmarks: its checkout, its environment, its files loaded at run time.

The peer is aristoteleo/epione as its users run it, never a restatement: ``--epione DIR`` is a
clone of its repository (``git clone https://github.com/aristoteleo/epione``), and
:func:`load_epione` loads one file of it (``epione/tl/_peak_to_gene.py``,
``epione/tl/_iterative_lsi.py``) at run time. epione's package import pulls Cython extensions and
dozens of dependencies, so the file is loaded alone: ``epione``, ``epione.tl`` and
``epione.utils`` are stub packages whose ``console`` logs through :mod:`logging`, and the file's
``from ..utils import console`` finds that stub. Nothing of epione is copied into this repository.

epione's paths run in an environment of their own (:func:`epione_python`): a virtual environment
built on first use with the packages its two functions import (its ``iterative_lsi`` clusters with
scanpy + leidenalg + igraph; pynndescent 0.7 breaks scanpy's neighbours, hence 0.6.0), or an
existing interpreter given with ``--epione-python``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

#: What epione's peak_to_gene and iterative_lsi import, plus psutil for the benchmarks' RSS meter.
EPIONE_PACKAGES = ("numpy", "scipy", "pandas", "anndata", "scikit-learn", "scanpy", "leidenalg", "igraph",
                   "pynndescent==0.6.0", "psutil")
#: The distributions whose versions the scripts print for both environments.
REPORTED = ("numpy", "scipy", "pandas", "anndata", "scikit-learn", "scanpy", "leidenalg", "igraph",
            "pynndescent", "numba")
DEFAULT_VENV = Path("~/.cache/p2g_bench/epione-venv").expanduser()
FILES = {"peak_to_gene": "epione/tl/_peak_to_gene.py", "iterative_lsi": "epione/tl/_iterative_lsi.py"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every script comparing with epione takes."""
    parser.add_argument("--epione", type=Path, help="a clone of aristoteleo/epione (its code is run, not copied)")
    parser.add_argument("--epione-python", help="an interpreter that has epione's dependencies (default: a venv "
                        "built on first use in --epione-venv)")
    parser.add_argument("--epione-venv", type=Path, default=DEFAULT_VENV,
                        help=f"where the venv for epione is built (default {DEFAULT_VENV})")


def checkout(folder: Path | None) -> Path:
    """``folder`` after checking it holds epione's two files; a clear exit otherwise."""
    if folder is None:
        raise SystemExit("pass --epione DIR, a clone of aristoteleo/epione "
                         "(git clone https://github.com/aristoteleo/epione DIR)")
    folder = Path(folder).expanduser().resolve()
    missing = [f for f in FILES.values() if not (folder / f).is_file()]
    if missing:
        raise SystemExit(f"--epione {folder}: {', '.join(missing)} not found; pass a clone of aristoteleo/epione")
    return folder


def set_up(args: argparse.Namespace, tool: str) -> tuple[Path, str]:
    """The checkout and epione's interpreter from the options; prints both; byte-compiles both tools.

    Bytecode is written as pip writes it at install (see :func:`_fresh.compile_bytecode`).
    """
    from _fresh import REPO, compile_bytecode

    folder = checkout(args.epione)
    python = epione_python(args.epione_python, args.epione_venv)
    print(describe(folder, python))
    compile_bytecode(Path(REPO) / "p2g_dask")
    compile_bytecode(folder / FILES[tool], python=python)
    return folder, python


def commit(folder: Path) -> str:
    """The checkout's commit (``git rev-parse HEAD``), or ``'unknown (not a git checkout)'``."""
    done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown (not a git checkout)"


def epione_python(explicit: str | None, venv: Path) -> str:
    """The interpreter epione's paths run in: ``explicit``, or ``venv`` (built when absent)."""
    if explicit:
        return explicit
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"building epione's environment in {venv} (once): {' '.join(EPIONE_PACKAGES)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *EPIONE_PACKAGES], check=True)
    return str(python)


def versions(python: str) -> dict[str, str]:
    """Versions of :data:`REPORTED` (and Python) in the environment of ``python``."""
    code = ("import json, sys, importlib.metadata as m\n"
            "def v(n):\n"
            "    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n        return '-'\n"
            f"print(json.dumps({{'python': sys.version.split()[0], **{{n: v(n) for n in {REPORTED!r}}}}}))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def describe(folder: Path, python: str) -> str:
    """One line naming the epione commit and the package versions of both environments."""
    def listed(python: str) -> str:
        return ", ".join(f"{name} {version}" for name, version in versions(python).items() if version != "-")

    return (f"epione {commit(folder)} ({folder})\n  epione's env ({python}): {listed(python)}\n"
            f"  p2g_dask's env ({sys.executable}): {listed(sys.executable)}")


class _Console:
    """Stands in for ``epione.utils.console``: every method (info, warn, level1, ...) logs."""

    def __init__(self) -> None:
        self._logger = logging.getLogger("epione")

    def __getattr__(self, name: str):
        level = logging.WARNING if name in {"warn", "warning", "error"} else logging.INFO
        return lambda *message, **_: self._logger.log(level, " ".join(map(str, message)))


def _stub_package(name: str, path: Path | None) -> types.ModuleType:
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__path__ = [str(path)] if path else []
        sys.modules[name] = module
    return module


def load_epione(folder: Path, tool: str) -> types.ModuleType:
    """epione's module file for ``tool`` ('peak_to_gene' or 'iterative_lsi'), loaded under its own name.

    Examples
    --------
    >>> module = load_epione(Path("/path/to/epione"), "peak_to_gene")  # doctest: +SKIP
    >>> links = module.peak_to_gene(atac, rna=rna, gene_annotation=genes)  # doctest: +SKIP
    """
    folder = Path(folder)
    _stub_package("epione", folder / "epione")
    _stub_package("epione.tl", folder / "epione" / "tl")
    utils = _stub_package("epione.utils", None)
    if not hasattr(utils, "console"):
        utils.console = _Console()
    name = "epione.tl." + Path(FILES[tool]).stem
    spec = importlib.util.spec_from_file_location(name, folder / FILES[tool])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def print_table(rows: dict[str, list[dict]], names: dict[str, str], targets: dict[str, str], *,
                reference: str = "epione", field: str = "seconds", cpu: str = "cpu") -> None:
    """One line per path: wall ``field`` (best, and range over runs), ``cpu``, peak RSS, ratio, target.

    The ratio is the reference's best wall over the path's best wall, both measured in this run.
    """
    best = {key: min(r[field] for r in runs) for key, runs in rows.items() if runs}
    print(f"{'path':<60} {'wall s':>16} {'CPU s':>7} {'peak RSS GiB':>12} {'vs epione':>9} {'target':>7}")
    for key, name in names.items():
        if key not in best:
            continue
        wall = [r[field] for r in rows[key]]
        shown = f"{min(wall):.2f}" + (f" ({min(wall):.1f}-{max(wall):.1f})" if len(wall) > 1 else "")
        ratio = f"{best[reference] / best[key]:.1f}x" if reference in best else "-"
        peak = max(r["peak"] for r in rows[key]) / 2**30
        print(f"{name:<60} {shown:>16} {min(r[cpu] for r in rows[key]):7.1f} {peak:12.2f} {ratio:>9} "
              f"{targets.get(key, ''):>7}")
