"""Gene annotation checks shared by the tools: columns, strands, duplicates, chromosome names."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._logging import logger

GENE_COLUMNS = ("gene_name", "chrom", "start", "end", "strand")


def gene_table(gene_annotation: Any) -> pd.DataFrame:
    """A validated ``gene_name, chrom, start, end, strand`` table from a DataFrame or a path."""
    if isinstance(gene_annotation, tuple) and len(gene_annotation) == 2:
        gene_annotation = gene_annotation[0]  # the (genes, exons) pair of read_gene_annotation
    elif isinstance(gene_annotation, (str, os.PathLike)) or hasattr(gene_annotation, "annotation"):
        # A GFF3/GTF/TSV path or a genome object such as p2g.genome.hg38.
        from p2g_dask.io.annotation import read_gene_annotation

        gene_annotation = read_gene_annotation(gene_annotation)[0]
    if not isinstance(gene_annotation, pd.DataFrame):
        raise TypeError(
            "gene_annotation must be a DataFrame with columns gene_name, chrom, start, end, strand, "
            f"or a GFF3/GTF path; got {type(gene_annotation).__name__}."
        )
    genes = gene_annotation
    if "gene_name" not in genes.columns and genes.index.name == "gene_name":
        genes = genes.reset_index()
    missing = [c for c in GENE_COLUMNS if c not in genes.columns]
    if missing:
        raise ValueError(
            f"gene_annotation is missing columns {missing}; it has {list(genes.columns)}. Give "
            "gene_name, chrom, start, end, strand (0-based half-open), e.g. from p2g.io.read_gene_annotation."
        )
    genes = genes.loc[:, list(GENE_COLUMNS)].copy()
    strand = genes["strand"].astype(str)
    bad = ~strand.isin(["+", "-"])
    if bad.any():
        raise ValueError(
            f"gene_annotation has {int(bad.sum())} genes with strand not '+' or '-', e.g. "
            f"{genes.loc[bad, 'gene_name'].iloc[0]!r} with strand {strand[bad].iloc[0]!r}; drop them or set the strand."
        )
    genes["strand"] = strand
    genes["gene_name"] = genes["gene_name"].astype(str)
    genes["chrom"] = genes["chrom"].astype(str)
    for column in ("start", "end"):
        values = pd.to_numeric(genes[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"gene_annotation[{column!r}] has {int(bad.sum())} missing or non-integer values, e.g. "
                f"{_shown(genes[column].iloc[i])} for gene {genes['gene_name'].iloc[i]!r}; fill them or drop those genes."
            )
        genes[column] = values.astype(np.int64)
    inverted = (genes["end"] <= genes["start"]) | (genes["start"] < 0)
    if inverted.any():
        row = genes.loc[inverted].iloc[0]
        raise ValueError(
            f"gene_annotation has {int(inverted.sum())} genes with end <= start or a negative start, e.g. "
            f"{row['gene_name']!r} ({row['chrom']}:{row['start']}-{row['end']}); genes must be 0-based "
            "half-open intervals with start < end: fix or drop them."
        )
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


def _shown(value) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)
