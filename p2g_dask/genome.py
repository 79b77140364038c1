"""Reference genomes: primary chromosome lengths (shipped) and the GENCODE annotation (fetched).

``p2g.genome.hg38`` and ``p2g.genome.mm10`` give what the pipeline needs from an assembly:
``chrom_sizes`` for BigWig headers and coordinate checks, and ``annotation``, the local path of
the GENCODE basic GFF3 (downloaded once through :mod:`p2g_dask.datasets.registry`), which
``p2g.io.read_gene_annotation``, ``peak_to_gene`` and ``plot_peak2gene`` accept directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import pandas as pd

from p2g_dask.io._genome_tables import GENOME_ANNOTATIONS, GENOME_SIZES
from p2g_dask.io.annotation import read_gene_annotation

@dataclass(frozen=True, eq=False)
class Genome:
    """A reference assembly: its name, primary chromosome lengths and annotation file name.

    Attributes
    ----------
    name
        UCSC assembly name (``"hg38"``, ``"mm10"``).
    annotation_name
        Registry name of the assembly's GENCODE basic GFF3.
    """

    name: str
    annotation_name: str
    _sizes: MappingProxyType

    @property
    def chrom_sizes(self) -> dict[str, int]:
        """Primary chromosome lengths in bp, in karyotype order (a fresh dict on each access).

        Examples
        --------
        >>> import p2g_dask as p2g
        >>> p2g.genome.hg38.chrom_sizes["chr1"]
        248956422
        >>> len(p2g.genome.mm10.chrom_sizes)
        22
        """
        return dict(self._sizes)

    @property
    def annotation(self) -> Path:
        """Local path of the GENCODE basic GFF3, downloaded (once, hash-checked) on first access.

        Examples
        --------
        >>> import p2g_dask as p2g
        >>> # Not run: downloads GENCODE's hg38 annotation (~50 MB) on first use.
        >>> gff = p2g.genome.hg38.annotation  # doctest: +SKIP
        >>> genes, exons = p2g.io.read_gene_annotation(gff)  # doctest: +SKIP
        """
        from p2g_dask.datasets.registry import fetch

        return fetch(self.annotation_name)

    def gene_annotation(self, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Read :attr:`annotation` into ``(genes, exons)`` restricted to the primary chromosomes.

        Parameters
        ----------
        **kwargs
            Passed to :func:`p2g_dask.io.read_gene_annotation` (e.g. ``gene_types=``).

        Returns
        -------
        genes, exons
            DataFrames with ``gene_name, chrom, start, end, strand`` (0-based half-open).

        Examples
        --------
        >>> import p2g_dask as p2g
        >>> # Not run: downloads GENCODE's hg38 annotation (~50 MB) on first use.
        >>> genes, exons = p2g.genome.hg38.gene_annotation(gene_types=["protein_coding"])  # doctest: +SKIP
        """
        kwargs.setdefault("chromosomes", list(self._sizes))
        return read_gene_annotation(self.annotation, **kwargs)

    def __repr__(self) -> str:
        return f"Genome({self.name!r}, {len(self._sizes)} chromosomes, annotation={self.annotation_name!r})"


#: GRCh38 / hg38 with GENCODE v41 basic annotation.
hg38 = Genome("hg38", GENOME_ANNOTATIONS["hg38"], MappingProxyType(GENOME_SIZES["hg38"]))
#: GRCm38 / mm10 with GENCODE vM25 basic annotation.
mm10 = Genome("mm10", GENOME_ANNOTATIONS["mm10"], MappingProxyType(GENOME_SIZES["mm10"]))

GENOMES = {"hg38": hg38, "mm10": mm10}

__all__ = ["Genome", "hg38", "mm10", "GENOMES"]
