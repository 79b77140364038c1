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

from p2g_dask._deprecations import renamed_arguments
from p2g_dask._logging import logger
from p2g_dask._variables import GROUP_LINKS, LINKS, require_columns
from p2g_dask.pl import _tracks
from p2g_dask.tl.links.filters import passing_links

# Track heights in inches; a figsize= rescales them proportionally.
_COVERAGE_IN, _PEAKS_IN, _ARCS_IN, _GENE_ROW_IN, _AXIS_IN = 0.42, 0.2, 1.1, 0.34, 0.55
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


@renamed_arguments(atac="data", fdr_thresh="fdr_cutoff", min_abs_r="cor_cutoff", group_by="groupby")
def plot_peak2gene(
    data: Any = None,
    *,
    gene: str,
    links: pd.DataFrame,
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
    gene_annotation, exon_annotation
        DataFrames with ``gene_name, chrom, start, end, strand`` (0-based half-open) or paths
        read by :func:`p2g_dask.io.read_gene_annotation`. Without exons, each gene is one block.
    fdr_cutoff, cor_cutoff, positive_only
        Links drawn, as :func:`p2g_dask.tl.filter_links` keeps them (without its variance
        cut-offs): ``fdr <= fdr_cutoff`` and ``|correlation| >= cor_cutoff`` (``correlation >=
        cor_cutoff`` with ``positive_only``). The old names ``fdr_thresh`` / ``min_abs_r`` (and
        ``atac`` for ``data``) still work for one release, with a FutureWarning.
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
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if groupby is not None and bigwig_files is not None:
        raise ValueError("pass either groupby= (coverage from the peak matrix) or bigwig_files=, not both.")
    if data is None and bigwig_files is None:
        raise ValueError("data is None: pass the peak matrix (AnnData/MuData/store) or bigwig_files={group: path}.")
    require_columns(links, LINKS, argument="links", columns=_DRAWN)
    genes, exons = load_annotations(gene_annotation, exon_annotation)
    gene_links = links[links["gene"] == gene]
    if groups is not None:
        require_columns(links, GROUP_LINKS, argument="links (groups=)", columns=["group"])
        missing = sorted(set(map(str, groups)) - set(links["group"].astype(str)))
        if missing:
            raise ValueError(f"groups={list(groups)}: {missing} are not groups of the links; "
                             f"choose from {sorted(links['group'].astype(str).unique())}.")
        gene_links = gene_links[gene_links["group"].astype(str).isin(list(map(str, groups)))]
    arc_groups = [str(g) for g in groups] if groups is not None else [None]
    gene_row = locate_gene(genes, gene)
    chrom = str(gene_row["chrom"])
    sel = gene_links[passing_links(gene_links, cor_cutoff=cor_cutoff, fdr_cutoff=fdr_cutoff, var_cutoff_atac=None,
                                   var_cutoff_rna=None, positive_only=positive_only)]
    if len(sel) and (sel["chrom"] != chrom).any():
        raise ValueError(f"links of gene={gene!r} are on {sorted(sel['chrom'].unique())} but gene_annotation "
                         f"places it on {chrom}; use the annotation the links were computed with.")
    if sel.empty:
        logger.warning("gene %s has no links with fdr <= %g and |r| >= %g (of %d tested): drawing no arcs",
                       gene, fdr_cutoff, cor_cutoff, len(gene_links))
    lo, hi = _region(gene_row, sel, int(pad_bp))
    modality = None
    if data is not None:
        from p2g_dask.io.inputs import resolve_input

        modality = resolve_input(data, None, mod_atac=mod_atac)[0]
    peaks, cols = _region_peaks(modality, gene_links, chrom, lo, hi)
    near = genes[(genes["chrom"] == chrom) & (genes["end"] > lo) & (genes["start"] < hi)].sort_values("start")
    region_exons = None if exons is None else exons[(exons["chrom"] == chrom)
                                                    & exons["gene_name"].isin(near["gene_name"])]
    group_names = list(bigwig_files) if bigwig_files is not None else (
        _tracks.group_labels(modality.obs, groupby)[1] if groupby is not None else ["all cells"])

    # Layout: heights in inches, then the figure (or the given axes' area) split into rows.
    width = 8.0 if figsize is None else figsize[0]
    label_in = 0.075 * max(len(str(g)) for g in [*group_names, "Genes"]) + 0.25
    left, right = min(0.35, label_in / width), 0.89
    axes_w_in = (right - left) * width if ax is None else ax.get_position().width * ax.figure.get_figwidth()
    # Label widths in bp: 7 pt italic is ~0.68 em per character.
    bp_per_char = (hi - lo) / axes_w_in * (7.0 * 0.68 / 72)
    n_gene_rows = int(_tracks.pack_genes(near, (lo, hi), bp_per_char=bp_per_char).max()) + 1 if len(near) else 1
    n_coaccess = 0 if coaccessibility is None else 1
    heights = ([_COVERAGE_IN] * len(group_names) + [_PEAKS_IN] + [_ARCS_IN] * len(arc_groups)
               + [_ARCS_IN] * n_coaccess
               + [_GENE_ROW_IN * n_gene_rows + 0.1])
    fig_h = sum(heights) + _AXIS_IN + 0.35 if figsize is None else figsize[1]
    if ax is None:
        fig = plt.figure(figsize=(width, fig_h))
        grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.1, left=left, right=right,
                                top=1 - 0.35 / fig_h, bottom=_AXIS_IN / fig_h)
    else:
        fig = ax.figure
        grid = ax.get_subplotspec().subgridspec(len(heights), 1, height_ratios=heights, hspace=0.1)
        ax.remove()
    gene_ax = fig.add_subplot(grid[-1])
    rows = [fig.add_subplot(grid[i], sharex=gene_ax) for i in range(len(heights) - 1)]
    coaccess_ax = rows.pop() if n_coaccess else None
    n_arcs = len(arc_groups)
    cov_axes, peak_ax, arc_axes = rows[:-1 - n_arcs], rows[-1 - n_arcs], rows[-n_arcs:]
    arc_ax = arc_axes[0]
    gene_ax.set_xlim(lo, hi)

    # Coverage rows, one shared y scale.
    n_bins = max(50, min(hi - lo, int(gene_ax.get_position().width * fig.get_figwidth() * fig.dpi)))
    signal = _coverage(modality, bigwig_files, groupby, depth_col, peaks, cols, chrom, lo, hi, n_bins)
    ymax = max([float(np.max(v[2])) if np.size(v[2]) else 0.0 for v in signal.values()] + [0.0]) or 1.0
    palette = plt.get_cmap("tab10" if len(signal) <= 10 else "tab20")
    for i, (cax, (group, (kind, x, values))) in enumerate(zip(cov_axes, signal.items())):
        color = palette(i % palette.N)
        if kind == "bars":
            _tracks.draw_coverage_bars(cax, x[0], x[1], values, color=color, group=group)
        else:
            _tracks.draw_coverage_steps(cax, x, values, color=color, group=group)
        cax.set_ylim(0, ymax * 1.05)
        cax.set_ylabel(group, rotation=0, ha="right", va="center", fontsize=8, color=color)
        cax.text(0.004, 0.93, f"[0 - {ymax:.3g}]", transform=cax.transAxes, ha="left", va="top", fontsize=6.5,
                 color="#444444")
    if cov_axes:
        unit = "BigWig signal" if bigwig_files is not None else "mean CP10k"
        cov_axes[0].set_title(f"{gene}   {chrom}:{lo:,}-{hi:,}   ({unit})", fontsize=9, loc="left")

    # Peaks, arcs, genes.
    _tracks.draw_peaks(peak_ax, peaks, np.asarray(peaks.index.isin(sel["peak"]), dtype=bool))
    norm, colormap = Normalize(-1.0, 1.0), plt.get_cmap(cmap)
    for a, arc_group in zip(arc_axes, arc_groups):
        drawn = sel if arc_group is None else sel[sel["group"].astype(str) == arc_group]
        centre = (drawn["tss"] + drawn["distance"]).to_numpy(dtype=float)
        _tracks.draw_arcs(a, centre, drawn["tss"].to_numpy(dtype=float), drawn["correlation"].to_numpy(dtype=float),
                          cmap=colormap, norm=norm)
    if sel.empty:
        arc_ax.text(0.5, 0.5, f"no links of {gene} with FDR \u2264 {fdr_cutoff:g} and |r| \u2265 {cor_cutoff:g}",
                    transform=arc_ax.transAxes, ha="center", va="center", fontsize=8, color="#555555", gid="note")
    cbar_ax = arc_ax.inset_axes([1.015, 0.12, 0.014, 0.76])
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=colormap), cax=cbar_ax, ticks=[-1, 0, 1])
    cbar.ax.tick_params(labelsize=7, length=2)
    cbar.set_label("r", fontsize=8, rotation=0, labelpad=4)
    if coaccess_ax is not None:
        _draw_coaccessibility(coaccess_ax, coaccessibility, chrom, lo, hi, colormap, norm)
        rows.append(coaccess_ax)
    _tracks.draw_gene_models(gene_ax, near, region_exons, region=(lo, hi), highlight=gene, bp_per_char=bp_per_char)

    arc_labels = [("Links" if g is None else f"Links\n{g}", a) for g, a in zip(arc_groups, arc_axes)]
    for label, a in (("Peaks", peak_ax), *arc_labels, ("Genes", gene_ax)):
        a.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    for a in rows + [gene_ax]:
        a.set_yticks([])
        for side in ("top", "right", "left"):
            a.spines[side].set_visible(False)
        if a is not gene_ax:
            a.spines["bottom"].set_visible(a in cov_axes)
            a.spines["bottom"].set_color("#bbbbbb")
            a.tick_params(axis="x", which="both", bottom=False, labelbottom=False)
    decimals = 2 if hi - lo > 100_000 else 3
    gene_ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    gene_ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:.{decimals}f}"))
    gene_ax.tick_params(axis="x", labelsize=8)
    gene_ax.set_xlabel(f"{chrom} (Mb)", fontsize=8)
    if show:
        plt.show()
    axes = {"coverage": cov_axes, "peaks": peak_ax, "links": arc_ax, "genes": gene_ax, "colorbar": cbar_ax}
    if groups is not None:
        axes["links_by_group"] = dict(zip(arc_groups, arc_axes))
    if coaccess_ax is not None:
        axes["coaccessibility"] = coaccess_ax
    return fig, axes


def _draw_coaccessibility(ax: Any, loops: pd.DataFrame, chrom: str, lo: int, hi: int, cmap: Any, norm: Any) -> None:
    """The co-accessibility arc track: loops with both ends in ``[lo, hi)``, gid ``coaccess-arc``."""
    if not isinstance(loops, pd.DataFrame) or not {"chrom", "start", "end", "correlation"} <= set(loops.columns):
        raise ValueError("coaccessibility= must be a loops table with chrom, start, end, correlation columns; "
                         "pass p2g_dask.tl.coaccessibility_loops(co_accessibility(...)).")
    inside = loops[(loops["chrom"].astype(str) == chrom) & (loops["start"] >= lo) & (loops["end"] < hi)]
    arcs = _tracks.draw_arcs(ax, inside["start"].to_numpy(dtype=float), inside["end"].to_numpy(dtype=float),
                             inside["correlation"].to_numpy(dtype=float), cmap=cmap, norm=norm)
    for arc in arcs:
        arc.set_gid("coaccess-arc")
    ax.set_ylabel("Co-access.", rotation=0, ha="right", va="center", fontsize=8)
