"""The rows of ``plot_peak2gene``'s browser track: laid out, drawn into, finished.

:func:`p2g_dask.pl.browser.plot_peak2gene` decides what to draw (the region, its links, peaks,
genes and coverage); this module lays the figure out into rows and draws each row with the
primitives of :mod:`p2g_dask.pl._tracks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from p2g_dask.pl import _tracks

# Track heights in inches; a figsize= rescales them proportionally.
_COVERAGE_IN, _PEAKS_IN, _ARCS_IN, _GENE_ROW_IN, _AXIS_IN = 0.42, 0.2, 1.1, 0.34, 0.55


@dataclass
class TrackAxes:
    """The browser's figure and its rows, top to bottom (``arcs``: one per arc track)."""

    fig: Any
    coverage: list[Any]
    peaks: Any
    arcs: list[Any]
    coaccessibility: Any | None
    genes: Any
    bp_per_char: float  # the width of a gene label's character, in bp

    @property
    def rows(self) -> list[Any]:
        """Every row above the gene models."""
        below_arcs = [] if self.coaccessibility is None else [self.coaccessibility]
        return [*self.coverage, self.peaks, *self.arcs, *below_arcs]


def layout_rows(near: pd.DataFrame, region: tuple[int, int], *, group_names: Sequence[str], n_arc_tracks: int,
                coaccessibility: bool, figsize: tuple[float, float] | None, ax: Any) -> TrackAxes:
    """Row heights in inches from what is drawn, then the figure (or ``ax``'s area) split into the rows."""
    import matplotlib.pyplot as plt

    lo, hi = region
    width = 8.0 if figsize is None else figsize[0]
    label_in = 0.075 * max(len(str(g)) for g in [*group_names, "Genes"]) + 0.25
    left, right = min(0.35, label_in / width), 0.89
    axes_w_in = (right - left) * width if ax is None else ax.get_position().width * ax.figure.get_figwidth()
    # Label widths in bp: 7 pt italic is ~0.68 em per character.
    bp_per_char = (hi - lo) / axes_w_in * (7.0 * 0.68 / 72)
    n_gene_rows = int(_tracks.pack_genes(near, (lo, hi), bp_per_char=bp_per_char).max()) + 1 if len(near) else 1
    n_coaccess = int(coaccessibility)
    heights = ([_COVERAGE_IN] * len(group_names) + [_PEAKS_IN] + [_ARCS_IN] * n_arc_tracks
               + [_ARCS_IN] * n_coaccess
               + [_GENE_ROW_IN * n_gene_rows + 0.1])
    fig_h = sum(heights) + _AXIS_IN + 0.35 if figsize is None else figsize[1]
    if ax is None:
        fig = plt.figure(figsize=(width, fig_h))
        # The margins are the figure's (not the grid's own): plt.tight_layout() can still move them,
        # as epione's tutorials call it after plot_peak2gene.
        fig.subplots_adjust(left=left, right=right, top=1 - 0.35 / fig_h, bottom=_AXIS_IN / fig_h, hspace=0.1)
        grid = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    else:
        fig = ax.figure
        grid = ax.get_subplotspec().subgridspec(len(heights), 1, height_ratios=heights, hspace=0.1)
        ax.remove()
    gene_ax = fig.add_subplot(grid[-1])
    rows = [fig.add_subplot(grid[i], sharex=gene_ax) for i in range(len(heights) - 1)]
    coaccess_ax = rows.pop() if n_coaccess else None
    gene_ax.set_xlim(lo, hi)
    return TrackAxes(fig, coverage=rows[:-1 - n_arc_tracks], peaks=rows[-1 - n_arc_tracks],
                      arcs=rows[-n_arc_tracks:], coaccessibility=coaccess_ax, genes=gene_ax, bp_per_char=bp_per_char)


def draw_coverage(cov_axes: list[Any], signal: dict[str, tuple], *, title: str) -> None:
    """The coverage rows on one shared y scale, ``[0 - max]`` written in each, the title above the first."""
    import matplotlib.pyplot as plt

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
        cov_axes[0].set_title(title, fontsize=9, loc="left")


def draw_links(arc_axes: list[Any], arc_groups: list[str | None], sel: pd.DataFrame, *, cmap: Any,
               norm: Any, note: str) -> None:
    """Each arc track's links (all, or its group's) as arcs from peak centre to TSS; without any
    link, ``note`` across the first track (gid ``note``)."""
    for a, arc_group in zip(arc_axes, arc_groups):
        drawn = sel if arc_group is None else sel[sel["group"].astype(str) == arc_group]
        centre = (drawn["tss"] + drawn["distance"]).to_numpy(dtype=float)
        _tracks.draw_arcs(a, centre, drawn["tss"].to_numpy(dtype=float), drawn["correlation"].to_numpy(dtype=float),
                          cmap=cmap, norm=norm)
    if sel.empty:
        arc_ax = arc_axes[0]
        arc_ax.text(0.5, 0.5, note, transform=arc_ax.transAxes, ha="center", va="center", fontsize=8,
                    color="#555555", gid="note")


def draw_colorbar(fig: Any, arc_ax: Any, *, cmap: Any, norm: Any) -> Any:
    """The correlation colorbar just right of the first arc track; returns its axes."""
    from matplotlib.cm import ScalarMappable

    cbar_ax = arc_ax.inset_axes([1.015, 0.12, 0.014, 0.76])
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cbar_ax, ticks=[-1, 0, 1])
    cbar.ax.tick_params(labelsize=7, length=2)
    cbar.set_label("r", fontsize=8, rotation=0, labelpad=4)
    return cbar_ax


def finish_axes(track: TrackAxes, arc_groups: list[str | None], chrom: str, lo: int, hi: int) -> None:
    """Row labels, no y ticks or frames (a faint rule under coverage rows), the Mb axis under the genes."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    gene_ax = track.genes
    arc_labels = [("Links" if g is None else f"Links\n{g}", a) for g, a in zip(arc_groups, track.arcs)]
    for label, a in (("Peaks", track.peaks), *arc_labels, ("Genes", gene_ax)):
        a.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    for a in track.rows + [gene_ax]:
        a.set_yticks([])
        for side in ("top", "right", "left"):
            a.spines[side].set_visible(False)
        if a is not gene_ax:
            a.spines["bottom"].set_visible(a in track.coverage)
            a.spines["bottom"].set_color("#bbbbbb")
            a.tick_params(axis="x", which="both", bottom=False, labelbottom=False)
    decimals = 2 if hi - lo > 100_000 else 3
    gene_ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    gene_ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:.{decimals}f}"))
    gene_ax.tick_params(axis="x", labelsize=8)
    gene_ax.set_xlabel(f"{chrom} (Mb)", fontsize=8)


def draw_coaccessibility(ax: Any, loops: pd.DataFrame, chrom: str, lo: int, hi: int, cmap: Any, norm: Any) -> None:
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
