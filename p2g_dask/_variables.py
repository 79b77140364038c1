"""The check registry: every table schema and value check of the package, in one place.

As sgkit's ``variables.py``: each public entry point validates its inputs here once, before any
graph is built, so a wrong input fails at once with the argument's name, the value and the fix,
and no check is written twice. Sections:

- Tables: the columns (and meaning) of the links table, co-accessibility pairs, genes, exons and
  fragments, and ``require_columns`` to check a table against one.
- Counts: cells x features matrices (finite, non-negative; CSR invariants of a block).
- Parameters: scalar arguments (positive distances, metacell memberships, cut-offs).
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

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
#: Columns of the links table of :func:`p2g_dask.tl.peak_to_gene`, in order.
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


# ---------------------------------------------------------------------------------------------
# Counts
# ---------------------------------------------------------------------------------------------

_RAW_COUNTS_FIX = "p2g_dask needs raw counts, not scaled or centred data (use adata.layers['counts'])."


def check_counts(x, subject: str, *, obs_names=None, first_row: int = 0) -> None:
    """Raise when counts hold NaN, inf or negative values, naming the first cell that does.

    The one count check of the package: in-memory inputs are checked by the resolver before any
    graph is built, store inputs block by block while ingested.

    Parameters
    ----------
    x
        A scipy sparse matrix, a :class:`p2g_dask._graph.Rows` block or a numpy array; other
        (lazy, backed) matrices are not checked here.
    subject
        Starts the message, e.g. ``"atac counts contain"`` or ``"X holds"``.
    obs_names
        Cell names, to name the first bad cell.
    first_row
        Row of the block's first cell in the whole matrix (for blocks).

    Examples
    --------
    >>> import numpy as np
    >>> check_counts(np.array([[0, 2], [-1, 0]]), "rna counts contain")
    Traceback (most recent call last):
    ...
    ValueError: rna counts contain negative values (min -1), first in cell row 1; p2g_dask needs raw counts, not scaled or centred data (use adata.layers['counts']).
    """
    import numpy as np
    import scipy.sparse as sp

    if sp.issparse(x) or hasattr(x, "indptr"):
        values, indptr = np.asarray(x.data), np.asarray(x.indptr)

        def row_of(i: int) -> int:
            return int(np.searchsorted(indptr, i, side="right") - 1)
    elif isinstance(x, np.ndarray):
        values = x.ravel()

        def row_of(i: int) -> int:
            return int(i // max(1, x.shape[-1]))
    else:
        return
    if values.size == 0 or values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        return

    def where(i: int) -> str:
        row = row_of(i)
        cell = f" ({obs_names[row]!r})" if obs_names is not None and row < len(obs_names) else ""
        return f"first in cell row {first_row + row}{cell}"

    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            raise ValueError(
                f"{subject} non-finite values (NaN or inf), {where(int(np.argmin(finite)))}; "
                "p2g_dask needs raw counts: replace them (e.g. X.data[~np.isfinite(X.data)] = 0)."
            )
    if values.min() < 0:
        raise ValueError(
            f"{subject} negative values (min {values.min()}), {where(int(np.argmax(values < 0)))}; {_RAW_COUNTS_FIX}"
        )


def csr_block_problem(indptr, indices, n_vars: int, nnz: int) -> str | None:
    """What breaks the CSR invariants of a block read from a store, in plain words, or None.

    ``indptr`` (rebased to start at 0) must be non-decreasing and end at ``nnz`` (the entries
    read); ``indices`` sorted and unique within each row, and in ``[0, n_vars)``. One pass of
    numpy over the block, so a damaged or misplaced chunk is caught before it is used.

    Examples
    --------
    >>> import numpy as np
    >>> csr_block_problem(np.array([0, 2, 3]), np.array([1, 4, 0]), 5, 3) is None
    True
    >>> csr_block_problem(np.array([0, 2, 3]), np.array([1, 1, 0]), 5, 3)
    'indices not sorted and unique within a row (row 0 of the block)'
    """
    import numpy as np

    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    if indptr.size == 0 or indptr[0] != 0:
        return "indptr does not start at the block's first entry"
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        return f"indptr decreases (row {int(np.argmax(steps < 0))} of the block)"
    if int(indptr[-1]) != nnz or indices.size != nnz:
        return f"indptr ends at {int(indptr[-1])}, but the block holds {indices.size} entries"
    if nnz == 0:
        return None
    if int(indices.min()) < 0 or int(indices.max()) >= n_vars:
        return f"feature indices out of range (min {int(indices.min())}, max {int(indices.max())}, n_vars {n_vars})"
    rising = np.diff(indices) > 0
    # Positions where a new row starts may go down; inside a row indices must rise.
    starts = indptr[1:-1]
    starts = starts[(starts > 0) & (starts < nnz)]
    rising[starts - 1] = True
    if not rising.all():
        bad = int(np.argmin(rising)) + 1
        return f"indices not sorted and unique within a row (row {int(np.searchsorted(indptr, bad, side='right')) - 1} of the block)"
    return None


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

def check_max_distance(max_distance) -> int:
    """``max_distance`` as a positive int, else a ``ValueError`` naming ArchR's default.

    Examples
    --------
    >>> check_max_distance(0)
    Traceback (most recent call last):
    ...
    ValueError: max_distance=0 must be a positive number of bp (ArchR: 250000).
    """
    if max_distance is None or max_distance <= 0:
        raise ValueError(f"max_distance={max_distance} must be a positive number of bp (ArchR: 250000).")
    return int(max_distance)


def check_metacell_params(n_metacells: int, k_neighbors: int, overlap_cutoff: float) -> None:
    """ArchR's metacell parameters: ``n_metacells >= 1``, ``k_neighbors >= 2``, overlap in (0, 1].

    Examples
    --------
    >>> check_metacell_params(10, 1, 0.8)
    Traceback (most recent call last):
    ...
    ValueError: k_neighbors=1 must be >= 2.
    """
    check_params([
        (n_metacells >= 1, f"n_metacells={n_metacells} must be >= 1."),
        (k_neighbors >= 2, f"k_neighbors={k_neighbors} must be >= 2."),
        (0 < overlap_cutoff <= 1, f"overlap_cutoff={overlap_cutoff} must be in (0, 1]."),
    ])


#: Above this mean number of metacells per cell the metacells overlap so much that they are
#: nearly copies of each other (ArchR's defaults, 500 x 100, are meant for >= ~10,000 cells).
SMALL_DATA_OVERLAP = 10.0


#: ArchR's ``addPeak2GeneLinks`` defaults: 500 metacells of 100 cells each.
ARCHR_METACELLS = (500, 100)


def small_data_metacells(n_cells: int) -> tuple[int, int]:
    """``(n_metacells, k_neighbors)`` for data too small for ArchR's 500 x 100.

    ``n_metacells ~ n_cells / 10`` (at least 3) and ``k_neighbors`` 20 below 5,000 cells, else
    50: the small end of 20-50 keeps each cell in ~2-5 metacells.

    Examples
    --------
    >>> small_data_metacells(3000), small_data_metacells(8000)
    ((300, 20), (800, 50))
    """
    return max(3, round(n_cells / 10)), 20 if n_cells < 5_000 else 50


def metacells_for(n_cells: int) -> tuple[int, int]:
    """The rule for choosing ``(n_metacells, k_neighbors)`` from the number of cells.

    ArchR's 500 x 100 where they leave each cell in at most ``SMALL_DATA_OVERLAP`` (10) metacells
    on average (5,000 cells or more), else :func:`small_data_metacells`; values from this rule
    never trigger :func:`warn_small_data`.

    Examples
    --------
    >>> metacells_for(3000), metacells_for(10_000)
    ((300, 20), (500, 100))
    """
    n_metacells, k_neighbors = ARCHR_METACELLS
    if n_metacells * k_neighbors / max(1, n_cells) <= SMALL_DATA_OVERLAP:
        return ARCHR_METACELLS
    return small_data_metacells(n_cells)


def warn_small_data(n_cells: int, n_metacells: int, k_neighbors: int, *, tool: str = "peak_to_gene") -> bool:
    """Log a warning with advice when ``n_metacells * k_neighbors`` exceeds ~10x the cells.

    Each cell then sits in ``n_metacells * k_neighbors / n_cells`` metacells on average: the
    metacells share most of their cells, the correlations are computed over near-duplicates
    and look stronger than they are. Suggested: ``n_metacells ~ n_cells / 10`` and
    ``k_neighbors`` 20-50. Shared by every tool that builds kNN metacells.

    Parameters
    ----------
    n_cells, n_metacells, k_neighbors
        The data's cells and the requested metacells and cells per metacell.
    tool
        Names the caller in the warning.

    Returns
    -------
    bool
        True when the warning was logged.

    Examples
    --------
    >>> warn_small_data(1000, 500, 100)
    True
    >>> warn_small_data(1000, 100, 20)
    False
    """
    per_cell = n_metacells * k_neighbors / max(1, n_cells)
    if per_cell <= SMALL_DATA_OVERLAP:
        return False
    import logging

    suggested_n, suggested_k = small_data_metacells(n_cells)
    logging.getLogger("p2g_dask").warning(
        "%s: small data for n_metacells=%d x k_neighbors=%d: each of the %d cells is in %.1f metacells on "
        "average (more than %g), so metacells are near-copies and correlations look stronger than they are. "
        "For %d cells use n_metacells ~ %d (cells / 10) and k_neighbors ~ 20-50 (e.g. n_metacells=%d, "
        "k_neighbors=%d).", tool, n_metacells, k_neighbors, n_cells, per_cell, SMALL_DATA_OVERLAP, n_cells,
        suggested_n, suggested_n, suggested_k,
    )
    return True


def check_metacells(neighbours, n_cells: int):
    """A ``(n_metacells, k)`` membership of cells ``0..n_cells - 1`` as an int64 array.

    Examples
    --------
    >>> check_metacells([[0, 1], [1, 2]], 3).shape
    (2, 2)
    >>> check_metacells([[0, 5]], 3)
    Traceback (most recent call last):
    ...
    ValueError: metacells index cells outside 0..2: they were made for other cells.
    """
    import numpy as np

    array = np.asarray(neighbours, dtype=np.int64)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"metacells must be a (n_metacells, k) array of cell indices; got shape {array.shape}.")
    if array.max() >= n_cells or array.min() < 0:
        raise ValueError(f"metacells index cells outside 0..{n_cells - 1}: they were made for other cells.")
    return array


def check_params(checks) -> None:
    """Raise the message of the first ``(ok, message)`` pair that is not ok.

    Examples
    --------
    >>> check_params([(True, "fine"), (1 > 2, "x=1 must exceed 2.")])
    Traceback (most recent call last):
    ...
    ValueError: x=1 must exceed 2.
    """
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def params_record(params) -> dict:
    """A parameters dataclass as a plain dict (``dataclasses.asdict``) for attrs / uns records."""
    import dataclasses

    return dataclasses.asdict(params)


def params_token(params, stage: str | None = None) -> str:
    """A hash of every field of a parameters dataclass (its class name too), for checkpoint keys.

    A field is left out of the key of ``stage`` only when its metadata says so
    (``field(metadata={"not_in": ("sums",)})``): a new field is in every key unless told
    otherwise, so it can never be forgotten and make a resumed run reuse stale results.

    Examples
    --------
    >>> import dataclasses
    >>> P = dataclasses.make_dataclass("P", [("seed", int)], frozen=True)
    >>> params_token(P(1)) != params_token(P(2))
    True
    """
    import dataclasses

    from dask.base import tokenize

    fields = {
        f.name: getattr(params, f.name)
        for f in dataclasses.fields(params)
        if stage is None or stage not in f.metadata.get("not_in", ())
    }
    return tokenize(type(params).__qualname__, sorted(fields.items(), key=lambda kv: kv[0]))
