"""Gene tables for the tools: read by the one annotation reader (io.annotation), in the input's
order, and chromosome names matched to the peaks'."""

from __future__ import annotations

from typing import Any

import pandas as pd

from p2g_dask._logging import logger
from p2g_dask._tables import GENE_COLUMNS
from p2g_dask.io.annotation import read_annotation_tables


def gene_table(gene_annotation: Any) -> pd.DataFrame:
    """A validated ``gene_name, chrom, start, end, strand`` table, one row per gene name.

    Parameters
    ----------
    gene_annotation
        A DataFrame (kept in its order; repeated gene names keep the first, with a warning), the
        ``(genes, exons)`` pair of :func:`p2g_dask.io.read_gene_annotation`, a GFF3/GTF/gene-table
        path or a genome such as ``p2g.genome.hg38`` (sorted by position).

    Returns
    -------
    pandas.DataFrame
        The five gene columns, int64 coordinates.

    Examples
    --------
    >>> table = pd.DataFrame({"gene_name": ["B", "A"], "chrom": ["chr2", "chr1"], "start": [5.0, 1],
    ...                       "end": [9, 4], "strand": ["+", "-"]})
    >>> gene_table(table).values.tolist()
    [['B', 'chr2', 5, 9, '+'], ['A', 'chr1', 1, 4, '-']]
    """
    if isinstance(gene_annotation, tuple) and len(gene_annotation) == 2:
        gene_annotation = gene_annotation[0]  # the (genes, exons) pair of read_gene_annotation
    user_table = isinstance(gene_annotation, pd.DataFrame)
    genes, _ = read_annotation_tables(gene_annotation, argument="gene_annotation", sort=not user_table,
                                      warn_duplicates=user_table)
    return genes.loc[:, GENE_COLUMNS]


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

