"""Gene tables for the tools: validated (as read_gene_annotation does), deduplicated, and
chromosome names matched to the peaks'."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from p2g_dask._logging import logger
from p2g_dask.io.annotation import GENE_COLUMNS, _standardise, read_gene_annotation

def gene_table(gene_annotation: Any) -> pd.DataFrame:
    """A validated ``gene_name, chrom, start, end, strand`` table from a DataFrame or a path."""
    if isinstance(gene_annotation, tuple) and len(gene_annotation) == 2:
        gene_annotation = gene_annotation[0]  # the (genes, exons) pair of read_gene_annotation
    elif isinstance(gene_annotation, (str, os.PathLike)) or hasattr(gene_annotation, "annotation"):
        # A GFF3/GTF/TSV path or a genome object such as p2g.genome.hg38.
        gene_annotation = read_gene_annotation(gene_annotation)[0]
    if not isinstance(gene_annotation, pd.DataFrame):
        raise TypeError(
            "gene_annotation must be a DataFrame with columns gene_name, chrom, start, end, strand, "
            f"or a GFF3/GTF path; got {type(gene_annotation).__name__}."
        )
    genes = gene_annotation
    if "gene_name" not in genes.columns and genes.index.name == "gene_name":
        genes = genes.reset_index()
    # The checks (and their messages) of read_gene_annotation, one implementation for both.
    genes = _standardise(genes, argument="gene_annotation", what="genes").loc[:, GENE_COLUMNS]
    duplicated = genes["gene_name"].duplicated(keep="first")
    if duplicated.any():
        logger.warning(
            "gene_annotation: %d duplicate gene names (e.g. %r); keeping the first of each",
            int(duplicated.sum()), genes.loc[duplicated, "gene_name"].iloc[0],
        )
        genes = genes.loc[~duplicated]
    return genes.reset_index(drop=True)


def harmonize_chromosomes(genes: pd.DataFrame, peak_chroms: pd.Series) -> pd.DataFrame:
    """Rename gene chromosomes to the peaks' style (``chr1`` vs ``1``) when only the prefix differs."""
    peak_set = set(pd.unique(peak_chroms.astype(str)))
    gene_chroms = genes["chrom"]
    if peak_set & set(pd.unique(gene_chroms)):
        return genes
    with_chr = gene_chroms.map(lambda c: c if c.startswith("chr") else f"chr{c}")
    without_chr = gene_chroms.str.replace(r"^chr", "", regex=True)
    for renamed, how in ((with_chr, "added 'chr'"), (without_chr, "removed 'chr'")):
        if peak_set & set(pd.unique(renamed)):
            logger.warning(
                "chromosome names differ between peaks (e.g. %r) and genes (e.g. %r): %s to the gene chromosomes",
                next(iter(sorted(peak_set))), gene_chroms.iloc[0], how,
            )
            genes = genes.copy()
            genes["chrom"] = renamed.to_numpy()
            return genes
    return genes

