"""Write a simulated case as the input files the command line and `p2g run` read."""

from __future__ import annotations

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
