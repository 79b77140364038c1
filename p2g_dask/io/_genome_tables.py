"""Primary chromosome lengths and annotation files of the shipped genomes (data only).

:mod:`p2g_dask.genome` builds its ``Genome`` objects from these; the readers of
:mod:`p2g_dask.io.annotation` resolve a genome's name (``"hg38"``) with them.
"""

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

#: Genome name -> primary chromosome lengths, in karyotype order.
GENOME_SIZES = {"hg38": _HG38_SIZES, "mm10": _MM10_SIZES}
#: Genome name -> registry name of its GENCODE basic GFF3.
GENOME_ANNOTATIONS = {"hg38": "gencode_v41_GRCh38.gff3.gz", "mm10": "gencode_vM25_GRCm38.gff3.gz"}


def is_genome(obj) -> bool:
    """Whether ``obj`` is a :class:`p2g_dask.genome.Genome` (recognised by what its class has;
    reading ``annotation`` itself would download the annotation)."""
    kind = type(obj)
    return all(hasattr(kind, name) for name in ("annotation", "chrom_sizes", "gene_annotation"))
