"""Write a simulated case as the input files the command line and `p2g run` read; run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def write_sim_inputs(sim, folder: Path, *, rna: bool = True, truth: bool = False) -> Path:
    """``atac.h5ad``, ``rna.h5ad`` (unless ``rna=False``), ``genes.tsv`` and, with ``truth``, ``truth.tsv``."""
    folder = Path(folder)
    sim.atac.write_h5ad(folder / "atac.h5ad")
    if rna:
        sim.rna.write_h5ad(folder / "rna.h5ad")
    sim.genes.to_csv(folder / "genes.tsv", sep="\t", index=False)
    if truth:
        sim.truth.to_csv(folder / "truth.tsv", sep="\t", index=False)
    return folder


def run_cli_terminal(argv: list[str], cwd: Path) -> str:
    """Run ``p2g ARGV`` in a fresh process; its terminal output (stdout and stderr in one stream)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-m", "p2g_dask.cli", *argv], env=env, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout
