"""The samples table of :func:`p2g_dask.io.ingest_samples` and the plan the client makes from it.

The plan is small: per sample the gene map (sample gene -> store gene), the peak map (when the
samples share their peak set and ATAC is copied) and a fingerprint of everything that shapes the
sample's rows; for the store the genes, the peak set and the dtypes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dask.base import tokenize

from p2g_dask._logging import logger
from p2g_dask.io._sample_tasks import MARKER_VERSION, SampleInfo
from p2g_dask.io.fragment_blocks import safe_name
from p2g_dask.io.peak_counts import check_counting
from p2g_dask.io.peak_sets import merge_peaks, peak_names, read_peaks

REQUIRED = ("sample", "fragments")
_FIX = "a samples table has columns sample, fragments and either h5 (10x filtered_feature_bc_matrix.h5) or atac and rna (.h5ad)"


def read_sample_table(table: Any) -> list[dict]:
    """The samples table as checked rows: every column and file present, sample names unique.

    Parameters
    ----------
    table
        A DataFrame, or a TSV path (relative paths in it are relative to its folder).

    Returns
    -------
    list of dict
        One ``{"sample", "fragments", "h5"}`` or ``{"sample", "fragments", "atac", "rna"}`` per
        row, with absolute paths.

    Examples
    --------
    >>> read_sample_table(pd.DataFrame({"sample": ["s1"], "h5": ["x.h5"]}))
    Traceback (most recent call last):
    ...
    ValueError: table is missing the column(s) ['fragments']; a samples table has columns sample, fragments and either h5 (10x filtered_feature_bc_matrix.h5) or atac and rna (.h5ad).
    """
    base = Path.cwd()
    if isinstance(table, (str, os.PathLike)):
        source = Path(table)
        if not source.is_file():
            raise FileNotFoundError(f"table={str(source)!r} does not exist; pass the samples TSV (or a DataFrame).")
        table = pd.read_csv(source, sep="\t", dtype=str, comment=None).fillna("")
        base = source.resolve().parent
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table={type(table).__name__} is not a samples table; pass a DataFrame or a TSV path.")
    table = table.copy()
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"table is missing the column(s) {missing}; {_FIX}.")
    if "h5" not in table.columns and not {"atac", "rna"} <= set(table.columns):
        raise ValueError(f"table has neither an 'h5' column nor 'atac' and 'rna' columns; {_FIX}.")
    if table.empty:
        raise ValueError("table has no rows; give one row per sample.")
    names = table["sample"].astype(str).str.strip()
    if (names == "").any() or table["sample"].isna().any():
        raise ValueError(f"table: row {int(np.flatnonzero((names == '') | table['sample'].isna())[0])} has no sample "
                         "name; give every row a sample name.")
    duplicated = names[names.duplicated()].unique().tolist()
    if duplicated:
        raise ValueError(f"table: sample names {duplicated[:5]} appear more than once; each sample needs a unique "
                         "name (it prefixes its cells' obs names).")

    clashes = pd.Index([safe_name(n).lower() for n in names])
    if clashes.duplicated().any():
        raise ValueError(f"table: sample names {names[clashes.duplicated(keep=False)].tolist()[:4]} give the same "
                         "folder name; rename one of them.")
    return [_row(record, name, base) for record, name in zip(table.to_dict("records"), names)]


def _path(value: Any, base: Path) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    p = Path(str(value).strip()).expanduser()
    return str(p if p.is_absolute() else base / p)


def _row(record: dict, name: str, base: Path) -> dict:
    row = {"sample": name, "fragments": _path(record.get("fragments"), base)}
    h5 = _path(record.get("h5"), base)
    if h5 is not None:
        row["h5"] = h5
    else:
        row["atac"], row["rna"] = _path(record.get("atac"), base), _path(record.get("rna"), base)
        if row["atac"] is None or row["rna"] is None:
            raise ValueError(f"table: sample {name!r} has neither an h5 path nor both atac and rna paths; {_FIX}.")
    for column in ("h5", "atac", "rna", "fragments"):
        value = row.get(column)
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"table: sample {name!r}: {column}={value!r} does not exist; fix the path "
                                    "(relative paths are relative to the table's folder).")
    return row


def _signature(row: dict) -> list:
    out = []
    for column in ("h5", "atac", "rna", "fragments"):
        value = row.get(column)
        if value is not None:
            st = Path(value).stat()
            out.append((column, str(Path(value).resolve()), st.st_size, st.st_mtime_ns))
    return out


@dataclass
class SamplePlan:
    rows: list[dict]
    scans: list[SampleInfo]
    gene_ids: pd.Index
    gene_names: np.ndarray
    gene_maps: list[np.ndarray]
    genes_absent: list[int]
    peaks: pd.DataFrame
    peak_maps: list[np.ndarray | None]
    count_atac: bool
    dtypes: dict[str, str]
    ceiling: int | None
    counting_strategy: str
    chunk_cells: int
    fingerprints: list[str] = field(default_factory=list)

    def sample_maps(self, i: int) -> dict:
        """What the block tasks of sample ``i`` need (a small dict, one graph key per sample)."""
        return {"gene_map": self.gene_maps[i], "n_genes": len(self.gene_ids), "peak_map": self.peak_maps[i],
                "n_peaks": len(self.peaks), "dtypes": self.dtypes}


def _genes(scans: list[SampleInfo], genes: Any) -> tuple[pd.Index, np.ndarray]:
    first_name: dict[str, str] = {}
    for info in scans:
        for gene_id, name in zip(info.gene_ids, info.gene_names):
            first_name.setdefault(gene_id, name)
    if genes is None:
        ids = pd.Index(list(first_name), dtype=object)
    else:
        ids = pd.Index(np.asarray(list(genes), dtype=object).astype(str))
        if ids.has_duplicates:
            raise ValueError(f"genes has {int(ids.duplicated().sum())} duplicate ids, e.g. {ids[ids.duplicated()][0]!r};"
                             " give each gene id once.")
        unknown = ids[~ids.isin(list(first_name))]
        if unknown.size == ids.size:
            raise ValueError(f"genes: none of the {ids.size} ids (e.g. {ids[0]!r}) is a gene id of the samples (e.g. "
                             f"{next(iter(first_name), None)!r}); pass 10x feature ids such as 'ENSG00000141510'.")
        if unknown.size:
            logger.warning("genes: %d of %d ids are in no sample (all zeros), e.g. %r", unknown.size, ids.size, unknown[0])
    names = np.array([first_name.get(g, g) for g in ids], dtype=object)
    return ids, names


def _peak_set(scans: list[SampleInfo], peaks: Any, min_samples: int) -> tuple[pd.DataFrame, bool]:
    """The store's peaks and whether ATAC is counted from the fragments."""

    if peaks is not None:
        return read_peaks(peaks), True
    unparsed = [s.sample for s in scans if s.peaks is None]
    if unparsed:
        raise ValueError(f"samples {unparsed[:5]}: their ATAC features are not peaks named 'chr:start-end' (or with "
                         "var chrom/start/end); pass peaks= (a BED) to count every sample's fragments over it.")
    first = scans[0].peaks

    def same_set(peaks: pd.DataFrame) -> bool:
        if len(peaks) != len(first):
            return False
        a, b = (p.astype({"chrom": str}).sort_values(["chrom", "start", "end"]).to_numpy() for p in (first, peaks))
        return bool((a == b).all())

    if all(same_set(s.peaks) for s in scans[1:]):
        table = first.astype({"chrom": str})
        table.index = peak_names(table)
        return table, False
    logger.info("the samples' peak sets differ: merging them (union of overlapping peaks) and counting fragments")
    return merge_peaks({s.sample: s.peaks for s in scans}, min_samples=min_samples), True


def make_plan(rows: list[dict], scans: list[SampleInfo], *, peaks: Any, genes: Any, min_samples: int,
              ceiling: int | None, counting_strategy: str, chunk_cells: int) -> SamplePlan:
    """Genes aligned by id, the one peak set, dtypes and each sample's fingerprint."""

    check_counting(ceiling, counting_strategy)
    gene_ids, gene_names = _genes(scans, genes)
    gene_maps, absent = [], []
    for info in scans:
        gene_maps.append(gene_ids.get_indexer(info.gene_ids).astype(np.int32))
        absent.append(int(len(gene_ids) - (gene_maps[-1] >= 0).sum()))
        if absent[-1]:
            logger.info("sample %r: %d of %d genes absent (zeros in its rows)", info.sample, absent[-1], len(gene_ids))
    table, count_atac = _peak_set(scans, peaks, min_samples)
    no_fragments = [r["sample"] for r in rows if r.get("fragments") is None]
    if count_atac and no_fragments:
        raise ValueError(f"samples {no_fragments[:5]} have no fragments path, but ATAC is counted from the fragments "
                         "(peaks= given or the samples' peak sets differ); fill the table's 'fragments' column.")
    peak_maps: list[np.ndarray | None] = [None] * len(scans)
    if not count_atac:
        index = pd.MultiIndex.from_frame(table[["chrom", "start", "end"]])
        peak_maps = [index.get_indexer(pd.MultiIndex.from_frame(s.peaks.astype({"chrom": str}))).astype(np.int32)
                     for s in scans]
    dtypes = {"atac": "int32" if count_atac or all(s.atac_integer for s in scans) else "float32",
              "rna": "int32" if all(s.rna_integer for s in scans) else "float32"}
    # The plan keeps what the tasks need; the samples' own gene and peak tables are dropped here,
    # so the client's memory does not grow with them while the samples are written.
    light = [dataclasses.replace(info, gene_ids=None, gene_names=None, peaks=None) for info in scans]
    plan = SamplePlan(rows, light, gene_ids, gene_names, gene_maps, absent, table, peak_maps, count_atac, dtypes,
                      ceiling, counting_strategy, chunk_cells)
    shared = tokenize(MARKER_VERSION, gene_ids.tolist(), table[["chrom", "start", "end"]].to_numpy(), count_atac,
                      ceiling, counting_strategy, chunk_cells, dtypes)
    plan.fingerprints = [tokenize(shared, row, _signature(row)) for row in rows]
    logger.info("ingest_samples: %d samples, %d cells, %d genes, %d peaks (%s)", len(rows),
                sum(s.n_cells for s in scans), len(gene_ids), len(table),
                "counted from the fragments" if count_atac else "the samples' shared peak set, counts copied")
    return plan
