"""GFF3 / GTF parsing for :func:`p2g_dask.io.read_gene_annotation` (pyranges underneath).

Both formats are 1-based and closed (``start..end`` includes both ends); pyranges turns them into
0-based half-open intervals (``start - 1``, ``end``), which is what the whole package uses.

The exon model per gene: the exons of the transcript tagged ``MANE_Select``, else of the one tagged
``Ensembl_canonical``, else (untagged annotations, e.g. older GENCODE or RefSeq GTFs) the union of
the gene's exons over all its transcripts, overlapping and touching exons merged. The column
``exon_source`` says which rule gave each gene's exons.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from p2g_dask._logging import logger, timed

# Rows never needed for genes and exons; dropping them before pyranges parses the attribute
# column roughly halves the parse time of a full GENCODE file.
_SKIP_FEATURES = {
    "CDS", "UTR", "five_prime_UTR", "three_prime_UTR", "start_codon", "stop_codon",
    "Selenocysteine", "stop_codon_redefined_as_selenocysteine", "biological_region",
}
_GENE_FEATURES = {"gene", "ncRNA_gene", "pseudogene"}
_CANONICAL_TAGS = ("MANE_Select", "Ensembl_canonical")
EXON_MODELS = ("canonical", "merged")
_KEEP_COLUMNS = {
    "Chromosome", "Feature", "Start", "End", "Strand", "ID", "Parent", "Name", "gene_id", "gene_name",
    "gene_type", "gene_biotype", "biotype", "transcript_id", "tag", "exon_number", "exon_id",
}


def open_text(path: str | os.PathLike):
    """Open a plain or gzip/bgzip text file (detected from its first bytes, not its name)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt")
    return open(path, encoding="utf-8")


def sniff_format(path: Path) -> str:
    """Return ``"gff3"``, ``"gtf"`` or ``"table"`` from the file's first lines."""
    with open_text(path) as fh:
        for i, line in enumerate(fh):
            if line.startswith("##gff-version 3"):
                return "gff3"
            if line.startswith("#") or not line.strip():
                if i > 1000:
                    break
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 9 and fields[3].isdigit() and fields[4].isdigit():
                attrs = fields[8]
                if re.search(r'(^|;)\s*\w+ "', attrs) or re.search(r"(^|;)\s*\w+ \d", attrs):
                    return "gtf"
                if "=" in attrs:
                    return "gff3"
            return "table"
    suffixes = [s.lower() for s in path.suffixes]
    return "gff3" if ".gff3" in suffixes or ".gff" in suffixes else "gtf" if ".gtf" in suffixes else "table"


def _prefilter(path: Path, out: Path) -> int:
    """Copy feature rows other than CDS/UTR/codons to ``out`` (plain text); return rows kept."""
    kept = 0
    with open_text(path) as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            if line.startswith("#"):
                if line.startswith("##FASTA"):
                    break  # GFF3 may end with sequences; no features after this line
                continue
            parts = line.split("\t", 3)
            if len(parts) < 4 or parts[2] in _SKIP_FEATURES:
                continue
            dst.write(line)
            kept += 1
    return kept


def _fill_missing(values: pd.Series, other: pd.Series) -> pd.Series:
    """``values`` with its missing entries taken from ``other``, as text/object (never downcast).

    ``Series.fillna`` on object columns downcasts (e.g. to float when every value is numeric),
    which pandas deprecates with a FutureWarning; ids must stay objects either way.
    """
    left = values.to_numpy(dtype=object)
    # Same index (possibly with repeats after an explode): align by position, else by label.
    right = (other if other.index.equals(values.index) else other.reindex(values.index)).to_numpy(dtype=object)
    take = pd.isna(left) & ~pd.isna(right)
    out = left.copy()
    out[take] = right[take]
    out[pd.isna(out)] = pd.NA
    return pd.Series(out, index=values.index, dtype=object)


def _first_of(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Per row, the first non-missing value among ``columns`` (missing columns are skipped)."""
    out = pd.Series(pd.NA, index=df.index, dtype=object)
    for col in columns:
        if col in df.columns:
            out = _fill_missing(out, df[col])
    return out


def _parse_raw(path: Path, kind: str) -> pd.DataFrame:
    import pyranges  # 0.1.x imports slowly and pulls in a top-level `tests` package: keep local

    with tempfile.TemporaryDirectory(prefix="p2g-annotation-") as tmp:
        plain = Path(tmp) / "features.txt"
        if _prefilter(path, plain) == 0:
            raise ValueError(f"path_or_df={str(path)!r} has no feature rows; is it a {kind.upper()} file?")
        if kind == "gff3":
            df = pyranges.read_gff3(str(plain), as_df=True)
        else:
            # GENCODE writes one `tag "..."` pair per tag: keep them all, comma-joined.
            df = pyranges.read_gtf(str(plain), as_df=True, duplicate_attr=True)
    # Only these attributes are used; dropping the other ~15 early makes every later copy cheap.
    df = df[[c for c in df.columns if c in _KEEP_COLUMNS]]
    df = df.rename(columns={"Chromosome": "chrom", "Start": "start", "End": "end", "Strand": "strand"})
    df["chrom"] = df["chrom"].astype(str)
    df["strand"] = df["strand"].astype(str)
    df["Feature"] = df["Feature"].astype(str)
    return df.reset_index(drop=True)


def _genes_and_exons(df: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a parsed annotation into gene rows and exon rows that carry a ``gene_key``."""
    is_gene = df["Feature"].isin(_GENE_FEATURES)
    is_exon = df["Feature"].eq("exon")
    exons = df[is_exon].copy()
    missing = pd.Series(pd.NA, index=df.index, dtype=object)
    if kind == "gff3":
        ids = df["ID"].astype(object) if "ID" in df.columns else missing
        gene_key = _first_of(df, ["ID", "gene_id"])
        is_tx = ~is_gene & ~is_exon & ids.notna()
        parent = df["Parent"].astype(object) if "Parent" in df.columns else missing
        # exon -Parent-> transcript -Parent-> gene; GFF3 allows several parents per exon.
        tx_parent = parent[is_tx]
        if tx_parent.str.contains(",", regex=False).any():
            tx_parent = tx_parent.str.split(",").str[0]
        tx_gene = pd.Series(tx_parent.to_numpy(), index=ids[is_tx].to_numpy())
        tx_gene = tx_gene[~tx_gene.index.duplicated()]
        exons["transcript_id"] = parent[is_exon]
        if exons["transcript_id"].str.contains(",", regex=False).any():
            exons["transcript_id"] = exons["transcript_id"].str.split(",")
            exons = exons.explode("transcript_id")
        gene_ids = set(gene_key[is_gene].dropna())
        direct = exons["transcript_id"].where(exons["transcript_id"].isin(gene_ids))
        exons["gene_key"] = _fill_missing(exons["transcript_id"].map(tx_gene), direct)
        if "gene_id" in exons.columns:
            exons["gene_key"] = _fill_missing(exons["gene_key"], exons["gene_id"])
        tags = pd.Series(df.loc[is_tx, "tag"].to_numpy(), index=ids[is_tx].to_numpy()) if "tag" in df.columns else None
    else:
        gene_key = df["gene_id"].astype(object) if "gene_id" in df.columns else missing
        exons["gene_key"] = gene_key[is_exon]
        if "transcript_id" not in exons.columns:
            exons["transcript_id"] = pd.NA
        is_tx = df["Feature"].eq("transcript")
        tags = None
        if {"transcript_id", "tag"} <= set(df.columns):
            tags = pd.Series(df.loc[is_tx, "tag"].to_numpy(), index=df.loc[is_tx, "transcript_id"].to_numpy())
    if tags is not None:
        tags = tags[tags.index.notna() & ~tags.index.duplicated()].dropna()
        exons["tags"] = exons["transcript_id"].map(tags)
    else:
        exons["tags"] = pd.NA
    if "tag" in exons.columns:
        exons["tags"] = _fill_missing(exons["tags"], exons["tag"])
    exons = exons[exons["gene_key"].notna()]

    genes = df[is_gene].copy()
    genes["gene_key"] = gene_key[is_gene]
    if genes.empty:
        # Some GTFs (UCSC, RefSeq exports) have no gene rows: a gene spans its exons.
        logger.info("annotation has no gene rows; gene extents are taken from their exons")
        first = exons.groupby("gene_key", sort=False).first()
        genes = first.assign(start=exons.groupby("gene_key", sort=False)["start"].min(),
                             end=exons.groupby("gene_key", sort=False)["end"].max()).reset_index()
    genes["gene_name"] = _first_of(genes, ["gene_name", "Name", "gene_id", "gene_key"])
    genes["gene_id"] = _first_of(genes, ["gene_id", "gene_key"])
    genes["gene_type"] = _first_of(genes, ["gene_type", "gene_biotype", "biotype"])
    cols = ["gene_key", "gene_name", "chrom", "start", "end", "strand", "gene_id", "gene_type"]
    genes = genes[cols]
    if genes["gene_type"].isna().all():
        genes = genes.drop(columns="gene_type")
    exon_cols = ["gene_key", "chrom", "start", "end", "strand", "transcript_id", "tags"]
    exon_cols += [c for c in ("exon_number", "exon_id") if c in exons.columns]
    return genes.reset_index(drop=True), exons[exon_cols].reset_index(drop=True)


def merge_exons(exons: pd.DataFrame) -> pd.DataFrame:
    """Union of each gene's exons: overlapping or touching intervals become one."""
    if exons.empty:
        return exons[["gene_key", "chrom", "start", "end", "strand"]].copy()
    df = exons.sort_values(["gene_key", "start", "end"], kind="stable")
    key = df["gene_key"].to_numpy()
    start = df["start"].to_numpy()
    reach = df.groupby("gene_key", sort=False)["end"].cummax().to_numpy()
    new = np.ones(len(df), dtype=bool)
    new[1:] = (key[1:] != key[:-1]) | (start[1:] > reach[:-1])
    cluster = np.cumsum(new)
    out = df.groupby(cluster, sort=False).agg(
        gene_key=("gene_key", "first"), chrom=("chrom", "first"), start=("start", "min"),
        end=("end", "max"), strand=("strand", "first"),
    )
    return out.reset_index(drop=True)


def select_exons(exons: pd.DataFrame, exon_model: str) -> pd.DataFrame:
    """Apply the exon model (module docstring) to exons with ``gene_key, transcript_id, tags``."""
    if exon_model not in EXON_MODELS:
        raise ValueError(f"exon_model={exon_model!r} is not valid; use one of {list(EXON_MODELS)}.")
    if exons.empty:  # e.g. a gene-only GFF: keep the columns so callers can merge and sort
        empty = {c: pd.Series(dtype=np.int64 if c in ("start", "end") else object)
                 for c in ["gene_key", "chrom", "start", "end", "strand", "transcript_id", "exon_source"]}
        return pd.DataFrame(empty)
    chosen = pd.DataFrame(columns=["gene_key", "transcript_id", "exon_source"])
    if exon_model == "canonical" and exons["tags"].notna().any():
        tx = exons.drop_duplicates(["gene_key", "transcript_id"])[["gene_key", "transcript_id", "tags"]]
        rank = pd.Series(len(_CANONICAL_TAGS), index=tx.index)
        for i, tag in reversed(list(enumerate(_CANONICAL_TAGS))):
            has = tx["tags"].astype(object).where(tx["tags"].notna(), "").astype(str).str.contains(rf"(?:^|,){tag}(?:,|$)", regex=True)
            rank[has] = i
        tx = tx.assign(rank=rank)[rank < len(_CANONICAL_TAGS)]
        chosen = tx.sort_values(["rank"], kind="stable").drop_duplicates("gene_key")
        chosen = chosen.assign(exon_source=[_CANONICAL_TAGS[r] for r in chosen["rank"]])
        chosen = chosen[["gene_key", "transcript_id", "exon_source"]]
    picked = exons.merge(chosen, on=["gene_key", "transcript_id"], how="inner")
    rest = exons[~exons["gene_key"].isin(chosen["gene_key"])]
    merged = merge_exons(rest).assign(transcript_id=pd.NA, exon_source="merged")
    out = pd.concat([picked.drop(columns="tags"), merged], ignore_index=True)
    if "exon_number" in out.columns:
        out["exon_number"] = pd.to_numeric(out["exon_number"], errors="coerce").astype("Int64")
    return out


@functools.lru_cache(maxsize=2)
def _parse_cached(path: str, mtime_ns: int, size: int, kind: str, exon_model: str):
    # peak_to_gene and plot_peak2gene both take the path: parse a full GENCODE file once.
    with timed(f"reading {kind.upper()} {Path(path).name}"):
        raw = _parse_raw(Path(path), kind)
        genes, exons = _genes_and_exons(raw, kind)
        return genes, select_exons(exons, exon_model)


def parse_gff(path: Path, kind: str, exon_model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Genes (file order) and model exons of a GFF3/GTF file, both with a ``gene_key`` column."""
    st = path.stat()
    genes, exons = _parse_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, kind, exon_model)
    return genes.copy(), exons.copy()
