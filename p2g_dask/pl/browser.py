"""ArchR-style browser track of one gene's peak-to-gene links (``plot_peak2gene``).

Rows, top to bottom, on one genomic x axis: coverage per group (from BigWigs or from the peak
matrix), the peaks of the region, the links as arcs, the gene models. Everything is drawn on the
client from collected results; only the region's peak columns are read from the matrix.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._deprecations import argument_aliases, renamed_arguments
from p2g_dask._epione import LINKS_KEY, kept_links
from p2g_dask._logging import logger
from p2g_dask._tables import GROUP_LINKS, LINKS, require_columns
from p2g_dask.pl import _browser_axes, _tracks
from p2g_dask.tl.links.filters import passing_links

# Links columns the browser track draws.
_DRAWN = ["peak", "gene", "chrom", "peak_start", "peak_end", "tss", "distance", "correlation", "fdr"]


# ---------------------------------------------------------------------------------------------
# Inputs: annotation tables, links, and the region's columns of the peak matrix.


def load_annotations(gene_annotation: Any, exon_annotation: Any = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Genes and exons (or None) through the one annotation reader (:func:`p2g_dask.io.read_gene_annotation`).

    DataFrames, paths (GFF3/GTF/gene table, or an exon BED for ``exon_annotation``) and genome
    objects are all accepted; a GFF's own exons are used when no ``exon_annotation`` is given.

    Examples
    --------
    >>> genes = pd.DataFrame({"gene_name": ["A"], "chrom": ["chr1"], "start": [10], "end": [90], "strand": ["+"]})
    >>> genes_read, exons = load_annotations(genes)
    >>> genes_read["end"].tolist(), exons
    ([90], None)
    """
    from p2g_dask.io.annotation import read_annotation_tables

    genes, exons = read_annotation_tables(gene_annotation, exons=exon_annotation, argument="gene_annotation",
                                          exon_argument="exon_annotation", sort=False)
    return genes, (None if exon_annotation is None and exons.empty else exons)


def close_names(name: str, names: pd.Series | np.ndarray, n: int = 5) -> list[str]:
    """Up to ``n`` names close to ``name`` (case-insensitive), for 'did you mean' errors."""
    names = [str(nm) for nm in pd.unique(np.asarray(names, dtype=str))]
    lower = {}
    for nm in names:
        lower.setdefault(nm.lower(), nm)
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)
    return [lower[h] for h in hits]


def locate_gene(genes: pd.DataFrame, gene: str) -> pd.Series:
    """The annotation row of ``gene`` (names are unique after the reader); a ``ValueError`` with
    close names when it is absent."""
    rows = genes[genes["gene_name"] == gene]
    if rows.empty:
        hint = close_names(gene, genes["gene_name"])
        raise ValueError(
            f"gene={gene!r} is not in gene_annotation ({len(genes)} genes)"
            + (f"; close names: {hint}" if hint else "")
            + ". Pass a gene_name of the annotation used for peak_to_gene."
        )
    return rows.iloc[0]




def _region(gene_row: pd.Series, sel: pd.DataFrame, pad_bp: int) -> tuple[int, int]:
    lo = [int(gene_row["start"])] + ([int(sel["peak_start"].min()), int(sel["tss"].min())] if len(sel) else [])
    hi = [int(gene_row["end"])] + ([int(sel["peak_end"].max()), int(sel["tss"].max()) + 1] if len(sel) else [])
    return max(0, min(lo) - pad_bp), max(hi) + pad_bp


def _region_peaks(modality: Any, region_links: pd.DataFrame, chrom: str,
                  lo: int, hi: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Peaks overlapping the region and their column numbers (-1 without a matrix)."""
    if modality is not None:
        from p2g_dask.io.peaks import peak_table

        table = peak_table(modality.var)
        keep = ((table["chrom"] == chrom) & (table["end"] > lo) & (table["start"] < hi)).to_numpy()
        return table[keep], np.flatnonzero(keep)
    # BigWig-only plot: the peaks known from the links table are all there is to show.
    table = region_links.drop_duplicates("peak").set_index("peak")[["peak_start", "peak_end"]]
    table = table.rename(columns={"peak_start": "start", "peak_end": "end"}).sort_values("start")
    table.insert(0, "chrom", chrom)
    return table, np.full(len(table), -1)


def _coverage(modality, bigwig_files, groupby, depth_col, peaks, cols, chrom, lo, hi, n_bins):
    """``{group: (kind, x, values)}`` for the coverage rows, in display order."""
    if bigwig_files is not None:
        return {str(g): ("steps", *_tracks.bigwig_signal(path, chrom, lo, hi, n_bins))
                for g, path in bigwig_files.items()}
    if groupby is None:
        labels, groups = np.full(modality.n_obs, "all cells", dtype=object), ["all cells"]
    else:
        labels, groups = _tracks.group_labels(modality.obs, groupby)
    counts, totals = _tracks.read_columns(modality, cols, totals=depth_col is None)
    if depth_col is not None:
        if depth_col not in modality.obs.columns:
            raise KeyError(f"depth_col={depth_col!r} is not an obs column; obs has {list(modality.obs.columns)}.")
        totals = modality.obs[depth_col].to_numpy(dtype=float)
    means = _tracks.group_mean_cp10k(counts, totals, labels, groups)
    edges = (peaks["start"].to_numpy(), peaks["end"].to_numpy())
    return {g: ("bars", edges, means[i]) for i, g in enumerate(groups)}


@renamed_arguments(atac="data")
# epione's names, as its tutorials write them (also this package's own names before 0.2): no warning.
@argument_aliases(adata="data", fdr_thresh="fdr_cutoff", min_abs_r="cor_cutoff", group_by="groupby")
def plot_peak2gene(
    data: Any = None,
    *,
    gene: str,
    links: pd.DataFrame | None = None,
    links_key: str = LINKS_KEY,
    gene_annotation: pd.DataFrame | str | os.PathLike,
    exon_annotation: pd.DataFrame | str | os.PathLike | None = None,
    fdr_cutoff: float = 0.01,
    cor_cutoff: float = 0.3,
    positive_only: bool = False,
    coaccessibility: pd.DataFrame | None = None,
    pad_bp: int = 80_000,
    groupby: str | None = None,
    groups: Sequence[str] | None = None,
    bigwig_files: Mapping[str, str | os.PathLike] | None = None,
    depth_col: str | None = None,
    mod_atac: str = "atac",
    cmap: str = "RdBu_r",
    figsize: tuple[float, float] | None = None,
    ax: Any = None,
    show: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Browser track of one gene's peak-to-gene links, in the style of ArchR's ``plotBrowserTrack``.

    Rows, top to bottom, on one genomic x axis spanning the gene and its passing links
    ``+- pad_bp``: coverage per group (shared y scale, ``[0 - max]`` written in each row), the
    region's peaks (linked ones highlighted), the links as half-ellipse arcs from peak centre to
    TSS (``ry = R_MAX * rx / max_rx``, coloured by correlation, colorbar at the right), and the
    gene models (intron line, exon blocks, strand chevrons, names; genes stacked on rows so
    labels do not collide).

    Parameters
    ----------
    data
        Cells x peaks counts: AnnData, MuData (``mod_atac``), a p2g store or its path. Only the
        region's peak columns are read. May be None with ``bigwig_files``.
    gene
        Gene name as in ``gene_annotation``. A name not in the annotation raises ``ValueError``
        with close names; a gene without passing links gives an empty arc track with a note and a
        logged warning.
    links
        Table from :func:`p2g_dask.tl.links.peak_to_gene`. Only the links of ``gene`` are drawn.
        None: the table ``peak_to_gene`` kept in ``uns[links_key]`` of an in-memory ``data``
        (as epione's ``plot_peak2gene`` reads it).
    links_key
        The ``uns`` key of the links when ``links`` is None (``peak_to_gene``'s ``key_added``).
    gene_annotation, exon_annotation
        DataFrames with ``gene_name, chrom, start, end, strand`` (0-based half-open) or paths
        read by :func:`p2g_dask.io.read_gene_annotation`. Without exons, each gene is one block.
    fdr_cutoff, cor_cutoff, positive_only
        Links drawn, as :func:`p2g_dask.tl.filter_links` keeps them (without its variance
        cut-offs): ``fdr <= fdr_cutoff`` and ``|correlation| >= cor_cutoff`` (``correlation >=
        cor_cutoff`` with ``positive_only``). epione's names ``fdr_thresh`` / ``min_abs_r`` (and
        ``group_by``, ``adata``) work too, without a warning; ``atac`` for ``data`` works for one
        release, with a FutureWarning.
    coaccessibility
        Co-accessibility loops (:func:`p2g_dask.tl.coaccessibility_loops`) drawn as a second arc
        track below the links, as ArchR's browser does (loops with both ends in the region).
    pad_bp
        Padding around the gene and its passing links, in bp.
    groupby
        obs column: one coverage row per group, the group's mean CP10k of each peak painted
        across the peak's width. Without ``groupby`` and ``bigwig_files``: one row of all cells.
    groups
        Links per group (``peak_to_gene(..., groupby=...)``): one arc track per listed group,
        each with that group's passing links (``axes["links_by_group"]``).
    bigwig_files
        ``{group: path}``: coverage rows from BigWigs (e.g. from ``pseudobulk_with_fragments``),
        binned to the axes' pixel width. Exclusive with ``groupby``.
    depth_col
        obs column of per-cell depth for CP10k; None uses each cell's total peak counts.
    mod_atac
        ATAC modality name in a MuData.
    cmap
        Diverging colormap of the arcs, fixed to r in [-1, 1] so figures compare.
    figsize
        Figure size in inches; None sizes the height from the number of rows (width 8).
    ax
        Draw into this axes' area of an existing figure (it is split into the rows).
    show
        Call ``matplotlib.pyplot.show()``.

    Returns
    -------
    (matplotlib.figure.Figure, dict)
        The figure and its axes: ``"coverage"`` (list, one per group), ``"peaks"``, ``"links"``,
        ``"genes"``, ``"colorbar"``. Artists carry gids (``"arc"``, ``"exon:<gene>"``, ...).

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=300, n_peaks=3000, n_genes=300, n_linked_genes=20, seed=2)
    >>> t = sim.truth.merge(sim.genes, left_on="gene", right_on="gene_name")
    >>> links = pd.DataFrame({"peak": t.peak, "gene": t.gene, "chrom": t.chrom,
    ...     "peak_start": t.peak.str.split("[:-]").str[1].astype(int),
    ...     "peak_end": t.peak.str.split("[:-]").str[2].astype(int),
    ...     "tss": np.where(t.strand == "+", t.start, t.end - 1), "distance": t.distance,
    ...     "correlation": 0.8, "fdr": 1e-5})
    >>> fig, axes = plot_peak2gene(sim.atac, gene=links.gene[0], links=links,
    ...     gene_annotation=sim.genes, exon_annotation=sim.exons, groupby="lineage")
    >>> len(axes["coverage"]) == sim.atac.obs["lineage"].nunique()
    True
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    _check_coverage_source(data, groupby, bigwig_files)
    if links is None:
        links = kept_links(data, links_key=links_key, mod_atac=mod_atac)
    require_columns(links, LINKS, argument="links", columns=_DRAWN)
    genes, exons = load_annotations(gene_annotation, exon_annotation)
    gene_links, arc_groups = _links_of_gene(links, gene, groups)
    gene_row = locate_gene(genes, gene)
    chrom = str(gene_row["chrom"])
    sel = _drawn_links(gene_links, gene, chrom, fdr_cutoff=fdr_cutoff, cor_cutoff=cor_cutoff,
                       positive_only=positive_only)
    lo, hi = _region(gene_row, sel, int(pad_bp))
    modality = None
    if data is not None:
        from p2g_dask.io.inputs import resolve_input

        modality = resolve_input(data, None, mod_atac=mod_atac)[0]
    peaks, cols = _region_peaks(modality, gene_links, chrom, lo, hi)
    near, region_exons = _region_genes(genes, exons, chrom, lo, hi)
    group_names = list(bigwig_files) if bigwig_files is not None else (
        _tracks.group_labels(modality.obs, groupby)[1] if groupby is not None else ["all cells"])

    track = _browser_axes.layout_rows(near, (lo, hi), group_names=group_names, n_arc_tracks=len(arc_groups),
                                      coaccessibility=coaccessibility is not None, figsize=figsize, ax=ax)
    gene_ax = track.genes
    n_bins = max(50, min(hi - lo, int(gene_ax.get_position().width * track.fig.get_figwidth() * track.fig.dpi)))
    signal = _coverage(modality, bigwig_files, groupby, depth_col, peaks, cols, chrom, lo, hi, n_bins)
    unit = "BigWig signal" if bigwig_files is not None else "mean CP10k"
    _browser_axes.draw_coverage(track.coverage, signal, title=f"{gene}   {chrom}:{lo:,}-{hi:,}   ({unit})")

    _tracks.draw_peaks(track.peaks, peaks, np.asarray(peaks.index.isin(sel["peak"]), dtype=bool))
    norm, colormap = Normalize(-1.0, 1.0), plt.get_cmap(cmap)
    _browser_axes.draw_links(track.arcs, arc_groups, sel, cmap=colormap, norm=norm,
                             note=f"no links of {gene} with FDR \u2264 {fdr_cutoff:g} and |r| \u2265 {cor_cutoff:g}")
    arc_ax = track.arcs[0]
    cbar_ax = _browser_axes.draw_colorbar(track.fig, arc_ax, cmap=colormap, norm=norm)
    if track.coaccessibility is not None:
        _browser_axes.draw_coaccessibility(track.coaccessibility, coaccessibility, chrom, lo, hi, colormap, norm)
    _tracks.draw_gene_models(gene_ax, near, region_exons, region=(lo, hi), highlight=gene,
                             bp_per_char=track.bp_per_char)
    _browser_axes.finish_axes(track, arc_groups, chrom, lo, hi)
    if show:
        plt.show()
    axes = {"coverage": track.coverage, "peaks": track.peaks, "links": arc_ax, "genes": gene_ax, "colorbar": cbar_ax}
    if groups is not None:
        axes["links_by_group"] = dict(zip(arc_groups, track.arcs))
    if track.coaccessibility is not None:
        axes["coaccessibility"] = track.coaccessibility
    return track.fig, axes


# ---------------------------------------------------------------------------------------------
# What plot_peak2gene draws: the coverage source, the gene's links, the region's genes.


def _check_coverage_source(data: Any, groupby: str | None, bigwig_files: Mapping | None) -> None:
    """The coverage rows come from the peak matrix or from BigWigs: exactly one source."""
    if groupby is not None and bigwig_files is not None:
        raise ValueError("pass either groupby= (coverage from the peak matrix) or bigwig_files=, not both.")
    if data is None and bigwig_files is None:
        raise ValueError("data is None: pass the peak matrix (AnnData/MuData/store) or bigwig_files={group: path}.")


def _links_of_gene(links: pd.DataFrame, gene: str,
                   groups: Sequence[str] | None) -> tuple[pd.DataFrame, list[str | None]]:
    """The links of ``gene`` (of the ``groups`` only, when given) and the arc tracks' groups
    (``[None]``: one track of all links)."""
    gene_links = links[links["gene"] == gene]
    if groups is None:
        return gene_links, [None]
    require_columns(links, GROUP_LINKS, argument="links (groups=)", columns=["group"])
    missing = sorted(set(map(str, groups)) - set(links["group"].astype(str)))
    if missing:
        raise ValueError(f"groups={list(groups)}: {missing} are not groups of the links; "
                         f"choose from {sorted(links['group'].astype(str).unique())}.")
    gene_links = gene_links[gene_links["group"].astype(str).isin(list(map(str, groups)))]
    return gene_links, [str(g) for g in groups]


def _drawn_links(gene_links: pd.DataFrame, gene: str, chrom: str, *, fdr_cutoff: float, cor_cutoff: float,
                 positive_only: bool) -> pd.DataFrame:
    """The passing links of ``gene``, checked to be on the annotation's chromosome; warns when none pass."""
    sel = gene_links[passing_links(gene_links, cor_cutoff=cor_cutoff, fdr_cutoff=fdr_cutoff, var_cutoff_atac=None,
                                   var_cutoff_rna=None, positive_only=positive_only)]
    if len(sel) and (sel["chrom"] != chrom).any():
        raise ValueError(f"links of gene={gene!r} are on {sorted(sel['chrom'].unique())} but gene_annotation "
                         f"places it on {chrom}; use the annotation the links were computed with.")
    if sel.empty:
        logger.warning("gene %s has no links with fdr <= %g and |r| >= %g (of %d tested): drawing no arcs",
                       gene, fdr_cutoff, cor_cutoff, len(gene_links))
    return sel


def _region_genes(genes: pd.DataFrame, exons: pd.DataFrame | None, chrom: str, lo: int,
                  hi: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The genes overlapping ``[lo, hi)`` by start, and their exons (None without an exon table)."""
    near = genes[(genes["chrom"] == chrom) & (genes["end"] > lo) & (genes["start"] < hi)].sort_values("start")
    region_exons = None if exons is None else exons[(exons["chrom"] == chrom)
                                                    & exons["gene_name"].isin(near["gene_name"])]
    return near, region_exons
