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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# UCSC names, lengths of the primary assembly (GRCh38 / GRCm38 sequence reports): chr1..22/19,
# X, Y and the mitochondrion. Unplaced scaffolds, alts and decoys are left out on purpose: 10x
# and ArchR outputs only carry the primary chromosomes.
_HG38_SIZES = {
    "chr1": 248_956_422, "chr2": 242_193_529, "chr3": 198_295_559, "chr4": 190_214_555,
    "chr5": 181_538_259, "chr6": 170_805_979, "chr7": 159_345_973, "chr8": 145_138_636,
    "chr9": 138_394_717, "chr10": 133_797_422, "chr11": 135_086_622, "chr12": 133_275_309,
    "chr13": 114_364_328, "chr14": 107_043_718, "chr15": 101_991_189, "chr16": 90_338_345,
    "chr17": 83_257_441, "chr18": 80_373_285, "chr19": 58_617_616, "chr20": 64_444_167,
    "chr21": 46_709_983, "chr22": 50_818_468, "chrX": 156_040_895, "chrY": 57_227_415,
    "chrM": 16_569,
}
_MM10_SIZES = {
    "chr1": 195_471_971, "chr2": 182_113_224, "chr3": 160_039_680, "chr4": 156_508_116,
    "chr5": 151_834_684, "chr6": 149_736_546, "chr7": 145_441_459, "chr8": 129_401_213,
    "chr9": 124_595_110, "chr10": 130_694_993, "chr11": 122_082_543, "chr12": 120_129_022,
    "chr13": 120_421_639, "chr14": 124_902_244, "chr15": 104_043_685, "chr16": 98_207_768,
    "chr17": 94_987_271, "chr18": 90_702_639, "chr19": 61_431_566, "chrX": 171_031_299,
    "chrY": 91_744_698, "chrM": 16_299,
}


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
        from p2g_dask.io.annotation import read_gene_annotation

        kwargs.setdefault("chromosomes", list(self._sizes))
        return read_gene_annotation(self.annotation, **kwargs)

    def __repr__(self) -> str:
        return f"Genome({self.name!r}, {len(self._sizes)} chromosomes, annotation={self.annotation_name!r})"


#: GRCh38 / hg38 with GENCODE v41 basic annotation.
hg38 = Genome("hg38", "gencode_v41_GRCh38.gff3.gz", MappingProxyType(_HG38_SIZES))
#: GRCm38 / mm10 with GENCODE vM25 basic annotation.
mm10 = Genome("mm10", "gencode_vM25_GRCm38.gff3.gz", MappingProxyType(_MM10_SIZES))

GENOMES = {"hg38": hg38, "mm10": mm10}

__all__ = ["Genome", "hg38", "mm10", "GENOMES"]
