"""Links as genome-browser files: BEDPE, UCSC interact, WashU longrange.

Coordinates are 0-based half-open throughout, as in the links table. A link has two anchors:
the peak ``[peak_start, peak_end)`` (the source) and the gene's TSS as a 1 bp interval
``[tss, tss + 1)`` (the target). Rows are sorted by chromosome name then start (the order
``bedToBigBed`` and ``tabix`` need). Pairs with a NaN correlation (a constant feature) cannot be
scored and are left out with a logged warning. The writers write what they are given: filter
the table first (e.g. ``links[links.fdr <= 0.05]``). Co-accessibility loops
(``p2g_dask.tl.coaccessibility_loops``) are written the same way, their two ends as 1 bp anchors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from p2g_dask._atomic import atomic_path
from p2g_dask._logging import logger
from p2g_dask._tables import LINKS, require_columns

# The links columns every browser format writes; fdr and distance are written when present.
_WRITTEN = ["peak", "gene", "chrom", "peak_start", "peak_end", "tss", "correlation"]
#: Arc colours of the interact format: positive links red, negative blue (RdBu ends).
POSITIVE_COLOR, NEGATIVE_COLOR = "#B2182B", "#2166AC"


def _loops_as_links(loops: pd.DataFrame) -> pd.DataFrame:
    """Co-accessibility loops (``p2g_dask.tl.coaccessibility_loops``) as links: anchor 1 the 1 bp
    ``[start, start + 1)`` named by ``peak1``, anchor 2 ``[end, end + 1)`` named by ``peak2``."""
    out = loops.rename(columns={"peak1": "peak", "peak2": "gene"})
    out["peak_start"], out["peak_end"], out["tss"] = loops["start"], loops["start"] + 1, loops["end"]
    out["distance"] = loops["end"] - loops["start"]
    return out


def _prepare(links: pd.DataFrame, fmt: str) -> pd.DataFrame:
    if isinstance(links, pd.DataFrame) and {"peak1", "peak2", "start", "end"} <= set(links.columns):
        links = _loops_as_links(links)
    require_columns(links, LINKS, argument=f"links (format={fmt!r})", columns=_WRITTEN)
    finite = np.isfinite(links["correlation"].to_numpy(dtype=float))
    if not finite.all():
        logger.warning("write_links(format=%r): leaving out %d links with a NaN correlation", fmt, int((~finite).sum()))
    out = links.loc[finite, _WRITTEN + [c for c in ("fdr", "distance", "pval", "group") if c in links.columns]].copy()
    for col in ("peak_start", "peak_end", "tss"):
        out[col] = out[col].astype(np.int64)
    out["chrom"] = out["chrom"].astype(str)
    return out


def _fmt(values: pd.Series) -> pd.Series:
    """Floats as short text (6 significant digits) so files stay small and diff-able."""
    return values.astype(float).map(lambda v: format(v, ".6g"))


def _write(table: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool, header_line: str | None = None,
           gzip_ok: bool = True) -> Path:
    path = Path(path)
    if path.suffix == ".gz" and not gzip_ok:
        raise ValueError(
            f"path={str(path)!r}: write plain text, then run `bgzip {path.with_suffix('')}` and "
            f"`tabix -p bed {path}`; plain gzip cannot be indexed by tabix."
        )
    with atomic_path(path, overwrite=overwrite, argument="path") as tmp:
        text = table.to_csv(sep="\t", header=False, index=False, lineterminator="\n")
        if header_line is not None:
            text = header_line + "\n" + text
        if path.suffix == ".gz":
            import gzip

            with gzip.open(tmp, "wt", encoding="utf-8") as handle:
                handle.write(text)
        else:
            tmp.write_text(text, encoding="utf-8")
    logger.info("wrote %d links to %s", len(table), path)
    return path


def write_links_bedpe(links: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False,
                      header: bool = True) -> Path:
    """Write links as BEDPE: peak anchor, TSS anchor, name, score = correlation.

    Columns: ``chrom1 start1 end1 chrom2 start2 end2 name score strand1 strand2 gene fdr
    distance`` with anchor 1 the peak, anchor 2 the TSS ``[tss, tss + 1)``, ``name`` =
    ``gene|peak`` (``gene|group`` for links per group), strands ``.``. ``fdr`` / ``distance``
    are ``.`` when the table lacks them.

    Parameters
    ----------
    links
        Links table (filter it first).
    path
        Output file; ``.gz`` writes gzip.
    overwrite
        Replace an existing file.
    header
        Start with a ``#chrom1 ...`` comment line naming the columns (bedtools skips it).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile
    >>> links = pd.DataFrame({"peak": ["chr1:100-601"], "gene": ["A"], "chrom": ["chr1"], "peak_start": [100],
    ...                       "peak_end": [601], "tss": [5000], "correlation": [0.5], "fdr": [0.01]})
    >>> p = write_links_bedpe(links, tempfile.mkdtemp() + "/links.bedpe", header=False)
    >>> p.read_text().split("\\t")[:8]
    ['chr1', '100', '601', 'chr1', '5000', '5001', 'A|chr1:100-601', '0.5']
    """
    t = _prepare(links, "bedpe")
    table = pd.DataFrame({
        "chrom1": t["chrom"], "start1": t["peak_start"], "end1": t["peak_end"],
        "chrom2": t["chrom"], "start2": t["tss"], "end2": t["tss"] + 1,
        # Links per group (a ``group`` column) are named gene|group, so each group's arc is told apart.
        "name": t["gene"].astype(str) + "|" + (t["group"] if "group" in t else t["peak"]).astype(str),
        "score": _fmt(t["correlation"]),
        "strand1": ".", "strand2": ".", "gene": t["gene"].astype(str),
        "fdr": _fmt(t["fdr"]) if "fdr" in t else ".",
        "distance": t["distance"].astype(np.int64).astype(str) if "distance" in t else ".",
    }).sort_values(["chrom1", "start1", "start2"], kind="stable")
    head = "#" + "\t".join(table.columns) if header else None
    return _write(table, path, overwrite=overwrite, header_line=head)


def write_links_interact(links: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False,
                         track_line: bool = True, name: str = "p2g_links",
                         description: str = "peak-to-gene links") -> Path:
    """Write links in UCSC's interact format (bed5+13), directional from peak to TSS.

    ``chromStart``/``chromEnd`` span both anchors; ``score`` = ``round(1000 * |r|)``;
    ``value`` = r; ``color`` red for r > 0, blue for r < 0; source = the peak (named by the peak),
    target = the TSS ``[tss, tss + 1)`` (named by the gene).

    Parameters
    ----------
    links
        Links table (filter it first).
    path
        Output file; ``.gz`` writes gzip.
    overwrite
        Replace an existing file.
    track_line
        Start with a ``track type=interact ...`` line for upload as a UCSC custom track; pass
        False to feed ``bedToBigBed -as=interact.as -type=bed5+13``.
    name, description
        Track name and description of the track line.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile
    >>> links = pd.DataFrame({"peak": ["chr1:100-601"], "gene": ["A"], "chrom": ["chr1"], "peak_start": [100],
    ...                       "peak_end": [601], "tss": [5000], "correlation": [-0.5]})
    >>> p = write_links_interact(links, tempfile.mkdtemp() + "/links.interact", track_line=False)
    >>> p.read_text().rstrip().split("\\t")[:8]
    ['chr1', '100', '5001', 'A/chr1:100-601', '500', '-0.5', '.', '#2166AC']
    """
    for label, value in (("name", name), ("description", description)):
        if '"' in value:
            raise ValueError(f"{label}={value!r} must not contain double quotes (they delimit it in the track line).")
    t = _prepare(links, "interact")
    r = t["correlation"].to_numpy(dtype=float)
    table = pd.DataFrame({
        "chrom": t["chrom"],
        "chromStart": np.minimum(t["peak_start"], t["tss"]),
        "chromEnd": np.maximum(t["peak_end"], t["tss"] + 1),
        "name": t["gene"].astype(str) + "/" + t["peak"].astype(str),
        "score": np.rint(1000 * np.minimum(np.abs(r), 1.0)).astype(np.int64),
        "value": _fmt(t["correlation"]),
        "exp": ".",
        "color": np.where(r < 0, NEGATIVE_COLOR, POSITIVE_COLOR),
        "sourceChrom": t["chrom"], "sourceStart": t["peak_start"], "sourceEnd": t["peak_end"],
        "sourceName": t["peak"].astype(str), "sourceStrand": ".",
        "targetChrom": t["chrom"], "targetStart": t["tss"], "targetEnd": t["tss"] + 1,
        "targetName": t["gene"].astype(str), "targetStrand": ".",
    }).sort_values(["chrom", "chromStart", "chromEnd"], kind="stable")
    head = (f'track type=interact name="{name}" description="{description}" interactDirectional=true '
            "maxHeightPixels=200:100:50 visibility=full") if track_line else None
    return _write(table, path, overwrite=overwrite, header_line=head)


def write_links_longrange(links: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write links in the WashU Epigenome Browser's longrange text format.

    Two lines per link, one per anchor: ``chrom start end chrom:start-end,score`` where the
    fourth column names the *other* anchor and the score is the correlation. Sorted, ready for
    ``bgzip`` and ``tabix -p bed`` (the browser loads the indexed ``.gz``).

    Parameters
    ----------
    links
        Links table (filter it first).
    path
        Output text file (not ``.gz``: compress it with ``bgzip``).
    overwrite
        Replace an existing file.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile
    >>> links = pd.DataFrame({"peak": ["chr1:100-601"], "gene": ["A"], "chrom": ["chr1"], "peak_start": [100],
    ...                       "peak_end": [601], "tss": [5000], "correlation": [0.5]})
    >>> text = write_links_longrange(links, tempfile.mkdtemp() + "/links.longrange").read_text()
    >>> [line.split() for line in text.splitlines()]
    [['chr1', '100', '601', 'chr1:5000-5001,0.5'], ['chr1', '5000', '5001', 'chr1:100-601,0.5']]
    """
    t = _prepare(links, "longrange")
    score = _fmt(t["correlation"])
    chrom = t["chrom"]
    peak_side = pd.DataFrame({"chrom": chrom, "start": t["peak_start"], "end": t["peak_end"],
                              "other": chrom + ":" + t["tss"].astype(str) + "-" + (t["tss"] + 1).astype(str)
                              + "," + score})
    tss_side = pd.DataFrame({"chrom": chrom, "start": t["tss"], "end": t["tss"] + 1,
                             "other": chrom + ":" + t["peak_start"].astype(str) + "-" + t["peak_end"].astype(str)
                             + "," + score})
    table = pd.concat([peak_side, tss_side], ignore_index=True).sort_values(["chrom", "start", "end"], kind="stable")
    return _write(table, path, overwrite=overwrite, gzip_ok=False)


def write_links_10x(links: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write links in Cell Ranger ARC's ``feature_linkage.bedpe`` layout (read by MultiVelo).

    13 tab-separated columns, no header: ``chrom1 start1 end1`` the peak, ``chrom2 start2 end2``
    the TSS ``[tss, tss + 1)``, ``name`` = ``<GENE_promoter><GENE>`` when the peak centre lies
    within 1 kb of the TSS else ``<GENE_distal><GENE>``, ``score`` = the correlation, strands
    ``.``, ``significance`` = ``-log10(pval)`` (or of ``fdr`` without ``pval``), ``distance`` =
    ``|peak centre - TSS|``, linkage type ``peak-gene``. Write one group at a time (the layout has
    no group field).

    Parameters
    ----------
    links
        Links table (filter it first, e.g. ``fdr < 0.05`` and ``correlation > 0``).
    path
        Output file; ``.gz`` writes gzip.
    overwrite
        Replace an existing file.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile
    >>> links = pd.DataFrame({"peak": ["chr1:100-601"], "gene": ["A"], "chrom": ["chr1"], "peak_start": [100],
    ...                       "peak_end": [601], "tss": [5000], "correlation": [0.5], "pval": [0.001]})
    >>> p = write_links_10x(links, tempfile.mkdtemp() + "/feature_linkage.bedpe")
    >>> p.read_text().rstrip().split("\\t")
    ['chr1', '100', '601', 'chr1', '5000', '5001', '<A_distal><A>', '0.5', '.', '.', '3', '4650', 'peak-gene']
    """
    t = _prepare(links, "10x")
    if "group" in t and t["group"].nunique() > 1:
        logger.warning("write_links(format='10x'): %d groups in one file (the layout has no group field); "
                       "write one group at a time", t["group"].nunique())
    p = t["pval"] if "pval" in t else (t["fdr"] if "fdr" in t else pd.Series(np.nan, index=t.index))
    centre = (t["peak_start"] + t["peak_end"]) // 2
    distance = np.abs(centre - t["tss"]).astype(np.int64)
    kind = np.where(distance <= 1000, "_promoter", "_distal")
    gene = t["gene"].astype(str)
    with np.errstate(divide="ignore"):
        significance = -np.log10(np.clip(p.to_numpy(dtype=float), 1e-300, 1.0)) + 0.0
    table = pd.DataFrame({
        "chrom1": t["chrom"], "start1": t["peak_start"], "end1": t["peak_end"],
        "chrom2": t["chrom"], "start2": t["tss"], "end2": t["tss"] + 1,
        "name": "<" + gene + kind + "><" + gene + ">", "score": _fmt(t["correlation"]),
        "strand1": ".", "strand2": ".", "significance": _fmt(pd.Series(significance, index=t.index)),
        "distance": distance.astype(str), "type": "peak-gene",
    }).sort_values(["chrom1", "start1", "start2"], kind="stable")
    return _write(table, path, overwrite=overwrite)
