"""The table schemas: the columns (and meaning) of every table the package reads or writes.

As sgkit's ``variables.py``: the links table, co-accessibility pairs, genes, exons and fragments
are declared once here, each column with its dtype kind and meaning, and every public entry point
checks a table it is given with :func:`require_columns` before any graph is built, so a wrong
table fails at once with the argument's name, the columns it lacks and the fix. The checks of
values (counts, parameters) are in :mod:`p2g_dask._variables`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd


@dataclass(frozen=True)
class Column:
    """One column of a table schema: its name, numpy dtype kind and meaning."""

    name: str
    kind: str  # numpy dtype kind: "O" text, "i" integer, "f" float
    meaning: str


@dataclass(frozen=True)
class TableSchema:
    """The columns of one kind of table and how to obtain a valid one (used in errors)."""

    name: str
    columns: tuple[Column, ...]
    fix: str

    @property
    def names(self) -> list[str]:
        """Column names in schema order."""
        return [c.name for c in self.columns]


LINKS = TableSchema("links", (
    Column("peak", "O", "peak name chrom:start-end"),
    Column("gene", "O", "gene name of the annotation"),
    Column("chrom", "O", "chromosome of both the peak and the gene"),
    Column("peak_start", "i", "peak start, 0-based"),
    Column("peak_end", "i", "peak end, half-open"),
    Column("tss", "i", "transcription start site, 0-based"),
    Column("distance", "i", "peak centre - TSS in bp"),
    Column("correlation", "f", "Pearson r over metacells (NaN for a constant feature)"),
    Column("t", "f", "t statistic of r"),
    Column("pval", "f", "two-sided p-value of r"),
    Column("fdr", "f", "Benjamini-Hochberg FDR over all tested pairs"),
    Column("var_q_atac", "f", "variance quantile of the peak"),
    Column("var_q_rna", "f", "variance quantile of the gene"),
), fix="pass the table returned by p2g.tl.peak_to_gene (or read by p2g.io.read_links)")
#: Columns of the links table of :func:`p2g_dask.tl.links.peak_to_gene`, in order.
LINK_COLUMNS = LINKS.names
#: Links per group (``peak_to_gene(..., groupby=...)``): a ``group`` column, then the links columns.
GROUP_LINKS = TableSchema("group links", (Column("group", "O", "the group (obs value) whose metacells gave r"),)
                          + LINKS.columns,
                          fix="pass the table returned by p2g.tl.peak_to_gene(..., groupby=...)")

COACCESSIBILITY = TableSchema("co-accessibility", (
    Column("peak1", "O", "first peak name"),
    Column("peak2", "O", "second peak name"),
    Column("chrom", "O", "chromosome of both peaks"),
    Column("centre1", "i", "centre of peak1, 0-based"),
    Column("centre2", "i", "centre of peak2, 0-based"),
    Column("distance", "i", "centre2 - centre1 in bp"),
    Column("correlation", "f", "Pearson r over metacells"),
    Column("t", "f", "t statistic of r"),
    Column("pval", "f", "two-sided p-value of r"),
    Column("fdr", "f", "Benjamini-Hochberg FDR over all tested pairs"),
    Column("var_q1", "f", "variance quantile of peak1"),
    Column("var_q2", "f", "variance quantile of peak2"),
), fix="pass the table returned by the co-accessibility tool")

GENES = TableSchema("genes", (
    Column("gene_name", "O", "gene name"),
    Column("chrom", "O", "chromosome"),
    Column("start", "i", "gene start, 0-based"),
    Column("end", "i", "gene end, half-open"),
    Column("strand", "O", "'+' or '-' (the TSS is start on '+', end - 1 on '-')"),
), fix="0-based half-open start/end and a +/- strand; rename the columns, or pass a GFF3/GTF path "
       "(p2g.io.read_gene_annotation)")
#: Columns of a gene table, in order.
GENE_COLUMNS = GENES.names

EXONS = TableSchema("exons", (
    Column("gene_name", "O", "name of the exon's gene"),
    Column("chrom", "O", "chromosome"),
    Column("start", "i", "exon start, 0-based"),
    Column("end", "i", "exon end, half-open"),
), fix="rename the columns, or pass a GFF3/GTF path or an exon BED (p2g.io.read_gene_annotation)")

FRAGMENTS = TableSchema("fragments", (
    Column("chrom", "O", "chromosome"),
    Column("start", "i", "fragment start, 0-based"),
    Column("end", "i", "fragment end, half-open"),
    Column("barcode", "O", "cell barcode"),
    Column("count", "i", "PCR duplicates of the fragment"),
), fix="pass a 10x fragments file (p2g.io.read_fragments)")

#: Every table schema by name.
TABLES = {schema.name: schema for schema in (LINKS, COACCESSIBILITY, GENES, EXONS, FRAGMENTS)}


def require_columns(table: Any, schema: TableSchema, *, argument: str,
                    columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Return ``table`` if it is a DataFrame with the schema's columns; else raise naming them.

    Parameters
    ----------
    table
        The table a user passed.
    schema
        One of the schemas above (:data:`LINKS`, :data:`GENES`, ...).
    argument
        The argument's name (or a longer description such as ``"links (format='bedpe')"``), for
        the error.
    columns
        The subset of the schema's columns needed here; all of them by default.

    Returns
    -------
    pandas.DataFrame
        ``table`` itself.

    Raises
    ------
    TypeError
        ``table`` is not a DataFrame.
    ValueError
        Columns are missing: the message names them, the columns present and the fix.

    Examples
    --------
    >>> links = pd.DataFrame({"gene": ["A"], "correlation": [0.5]})
    >>> require_columns(links, LINKS, argument="links", columns=["gene", "correlation"]) is links
    True
    >>> require_columns(links, LINKS, argument="links", columns=["gene", "fdr"])
    Traceback (most recent call last):
    ...
    ValueError: links is missing columns ['fdr']; it has ['gene', 'correlation']. The links table needs gene, fdr: pass the table returned by p2g.tl.peak_to_gene (or read by p2g.io.read_links).
    """
    needed = schema.names if columns is None else list(columns)
    unknown = [c for c in needed if c not in schema.names]
    if unknown:  # a programming error in the caller, not a user error
        raise KeyError(f"columns {unknown} are not in the {schema.name} schema {schema.names}")
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{argument} must be a pandas DataFrame with columns {needed}; got "
                        f"{type(table).__name__}: {schema.fix}.")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{argument} is missing columns {missing}; it has {list(table.columns)}. The "
                         f"{schema.name} table needs {', '.join(needed)}: {schema.fix}.")
    return table
