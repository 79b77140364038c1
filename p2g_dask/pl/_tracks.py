"""Browser-track primitives: the tracks' data (matrix columns, group means, BigWig bins) and
their drawing (coverage rows, peak boxes, link arcs, gene models).

Each function draws one track on one axes, in genomic (bp) x coordinates, and tags its artists
with a ``gid`` (``"arc"``, ``"peak"``, ``"peak-linked"``, ``"exon:<gene>"``, ``"intron:<gene>"``,
``"gene-block:<gene>"``, ``"chevrons:<gene>:<strand>"``, ``"coverage:<group>"``) so that tests
and users can find them again on the returned axes.
"""

from __future__ import annotations

import os
from typing import Any

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.patches import Arc, Rectangle

from p2g_dask import _graph
from p2g_dask._logging import logger
from p2g_dask.io.blocks import load, store_blocks

#: Depth of the widest arc in the arc track (ArchR's ``r``; the track's y axis runs 0 .. -R_MAX).
R_MAX = 1.0
#: Gene-track geometry in row units: exon block height, intron-less block height, label offset.
EXON_HEIGHT = 0.36
CHEVRON_HALF_HEIGHT = 0.11
LABEL_OFFSET = 0.26


def arc_geometry(x0: np.ndarray, x1: np.ndarray, *, r_max: float = R_MAX) -> pd.DataFrame:
    """Centre, x radius and y radius of ArchR-style half-ellipse arcs between ``x0`` and ``x1``.

    ArchR (``.getArchDF``) scales every arc's height by its width: ``ry = r_max * rx / max(rx)``,
    so the widest link fills the track and short links stay flat.

    Examples
    --------
    >>> arc_geometry(np.array([0, 100]), np.array([50, 300]))[["cx", "rx", "ry"]].to_numpy().tolist()
    [[25.0, 25.0, 0.25], [200.0, 100.0, 1.0]]
    """
    x0 = np.asarray(x0, dtype=float)
    x1 = np.asarray(x1, dtype=float)
    rx = np.abs(x1 - x0) / 2.0
    max_rx = rx.max() if rx.size and rx.max() > 0 else 1.0
    return pd.DataFrame({"cx": (x0 + x1) / 2.0, "rx": rx, "ry": r_max * rx / max_rx})


def draw_arcs(
    ax: Axes,
    x0: np.ndarray,
    x1: np.ndarray,
    values: np.ndarray,
    *,
    cmap: Colormap,
    norm: Normalize,
    linewidth: float = 1.6,
) -> list[Arc]:
    """Draw lower half-ellipse arcs from ``x0`` to ``x1`` coloured by ``values``; return them."""
    geometry = arc_geometry(x0, x1)
    # Draw weak links first so the strongest ones are on top where arcs cross.
    order = np.argsort(np.abs(np.asarray(values, dtype=float)))
    arcs = []
    for i in order:
        g = geometry.iloc[i]
        arc = Arc(
            (g.cx, 0.0), 2 * g.rx, 2 * g.ry, theta1=180.0, theta2=360.0,
            color=cmap(norm(values[i])), linewidth=linewidth, gid="arc",
        )
        ax.add_patch(arc)
        arcs.append(arc)
    ax.set_ylim(-1.08 * R_MAX, 0.04 * R_MAX)
    ax.set_yticks([])
    return arcs


def draw_peaks(ax: Axes, peaks: pd.DataFrame, linked: np.ndarray, *, color: str = "#9e9e9e",
               linked_color: str = "#d1495b") -> None:
    """Draw peaks as boxes; the ``linked`` ones (boolean mask) taller and highlighted."""
    for (start, end), is_linked in zip(peaks[["start", "end"]].to_numpy(), linked):
        height = 0.8 if is_linked else 0.5
        ax.add_patch(Rectangle(
            (start, 0.5 - height / 2), end - start, height, linewidth=0,
            facecolor=linked_color if is_linked else color, gid="peak-linked" if is_linked else "peak",
        ))
    ax.set_ylim(0, 1)
    ax.set_yticks([])


def draw_coverage_bars(ax: Axes, starts: np.ndarray, ends: np.ndarray, heights: np.ndarray, *,
                       color, group: str) -> None:
    """Paint a group's per-peak signal across each peak's width (one rectangle per peak)."""
    # A hairline edge in the fill colour keeps 500 bp peaks visible in a several-hundred-kb window.
    ax.bar(starts, heights, width=ends - starts, align="edge", color=color, edgecolor=color, linewidth=0.6,
           gid=f"coverage:{group}")


def draw_coverage_steps(ax: Axes, edges: np.ndarray, values: np.ndarray, *, color, group: str) -> None:
    """Draw a binned signal as a filled step curve (one ``StepPatch`` per group)."""
    ax.stairs(values, edges, fill=True, color=color, linewidth=0, gid=f"coverage:{group}")


def stack_rows(starts: np.ndarray, ends: np.ndarray, *, gap: float) -> np.ndarray:
    """Assign each interval to the first row where it does not overlap (plus ``gap``) another.

    Intervals are placed greedily in order of start, the way genome browsers pack features.

    Examples
    --------
    >>> stack_rows(np.array([0, 5, 20]), np.array([10, 15, 30]), gap=1).tolist()
    [0, 1, 0]
    """
    starts = np.asarray(starts, dtype=float)
    ends = np.asarray(ends, dtype=float)
    rows = np.zeros(starts.size, dtype=int)
    row_end: list[float] = []
    for i in np.argsort(starts, kind="stable"):
        for r, last in enumerate(row_end):
            if starts[i] >= last + gap:
                rows[i] = r
                row_end[r] = ends[i]
                break
        else:
            rows[i] = len(row_end)
            row_end.append(ends[i])
    return rows


def chevron_positions(start: int, end: int, exons: np.ndarray, *, spacing: float) -> np.ndarray:
    """Positions of strand chevrons on a gene's intron line: evenly spaced, off the exons.

    A gene too short for one spaced chevron still gets one at its middle, so every gene shows
    its strand.
    """
    n = int((end - start) // spacing)
    xs = start + spacing * (np.arange(n) + 0.5) if n > 0 else np.array([], dtype=float)
    if exons.size and xs.size:
        inside = ((xs[:, None] >= exons[None, :, 0] - spacing * 0.2)
                  & (xs[:, None] <= exons[None, :, 1] + spacing * 0.2)).any(axis=1)
        xs = xs[~inside]
    if xs.size == 0:
        xs = np.array([(start + end) / 2.0])
    return xs


def chevron_segments(xs: np.ndarray, y: float, strand: str, *, half_width: float,
                     half_height: float = CHEVRON_HALF_HEIGHT) -> np.ndarray:
    """Three-point polylines ``>`` (plus strand) or ``<`` (minus strand) with the tip at ``xs``."""
    back = -half_width if strand == "+" else half_width
    segs = np.empty((len(xs), 3, 2))
    segs[:, 0] = np.column_stack([xs + back, np.full(len(xs), y + half_height)])
    segs[:, 1] = np.column_stack([xs, np.full(len(xs), y)])
    segs[:, 2] = np.column_stack([xs + back, np.full(len(xs), y - half_height)])
    return segs


def pack_genes(genes: pd.DataFrame, region: tuple[int, int], *, bp_per_char: float) -> np.ndarray:
    """Row of each gene so that neither gene bodies nor their centred labels collide."""
    left, right = region
    starts = genes["start"].to_numpy()
    ends = genes["end"].to_numpy()
    label_half = (genes["gene_name"].str.len().to_numpy() + 1) * bp_per_char / 2.0
    mid = label_centres(genes, region, bp_per_char=bp_per_char)
    ext_start = np.minimum(np.maximum(starts, left), mid - label_half)
    ext_end = np.maximum(np.minimum(ends, right), mid + label_half)
    return stack_rows(ext_start, ext_end, gap=2 * bp_per_char)


def label_centres(genes: pd.DataFrame, region: tuple[int, int], *, bp_per_char: float) -> np.ndarray:
    """Centre of each gene's label: the middle of its visible part, kept inside the region."""
    left, right = region
    vis_mid = (np.maximum(genes["start"].to_numpy(), left) + np.minimum(genes["end"].to_numpy(), right)) / 2.0
    half = (genes["gene_name"].str.len().to_numpy() + 1) * bp_per_char / 2.0
    return np.clip(vis_mid, left + half, np.maximum(left + half, right - half))


def draw_gene_models(
    ax: Axes,
    genes: pd.DataFrame,
    exons: pd.DataFrame | None,
    *,
    region: tuple[int, int],
    highlight: str,
    bp_per_char: float,
    color: str = "#1f3b73",
    other_color: str = "#6b7a99",
    fontsize: float = 7.0,
) -> int:
    """Draw UCSC-style gene models stacked on rows; return the number of rows used.

    Each gene: a thin intron line over its body, one thick block per exon (or one block for the
    whole gene without ``exons``), strand chevrons on the line, and its name below, centred on
    the visible part of the gene. Rows are packed on the extent of the gene *and* its label so
    that no two labels collide; ``bp_per_char`` converts a label's length into bp.
    """
    left, right = region
    if genes.empty:
        ax.set_ylim(-1, 0.6)
        ax.set_yticks([])
        return 1
    rows = pack_genes(genes, region, bp_per_char=bp_per_char)
    vis_mid = label_centres(genes, region, bp_per_char=bp_per_char)
    width = right - left
    for g, row, mid in zip(genes.itertuples(index=False), rows, vis_mid):
        y = -float(row)
        is_target = g.gene_name == highlight
        c = color if is_target else other_color
        ax.plot([g.start, g.end], [y, y], color=c, linewidth=0.9, solid_capstyle="butt",
                gid=f"intron:{g.gene_name}")
        gene_exons = np.empty((0, 2))
        if exons is not None:
            sel = exons[exons["gene_name"] == g.gene_name]
            gene_exons = sel[["start", "end"]].to_numpy(dtype=float)
            for s, e in gene_exons:
                ax.add_patch(Rectangle((s, y - EXON_HEIGHT / 2), e - s, EXON_HEIGHT, facecolor=c,
                                       linewidth=0, gid=f"exon:{g.gene_name}"))
        else:
            ax.add_patch(Rectangle((g.start, y - EXON_HEIGHT / 2), g.end - g.start, EXON_HEIGHT,
                                   facecolor=c, linewidth=0, gid=f"gene-block:{g.gene_name}"))
        xs = chevron_positions(max(g.start, left), min(g.end, right), gene_exons, spacing=0.02 * width)
        segs = chevron_segments(xs, y, g.strand, half_width=0.0035 * width)
        # White chevrons stay visible where one falls on a block (gene without exon table).
        on_block = exons is None
        ax.add_collection(LineCollection(segs, colors="white" if on_block else c, linewidths=0.8,
                                         gid=f"chevrons:{g.gene_name}:{g.strand}"))
        ax.text(mid, y - LABEL_OFFSET, g.gene_name, ha="center", va="top", fontsize=fontsize,
                fontstyle="italic", fontweight="bold" if is_target else "normal", color=c,
                clip_on=True)
    n_rows = int(rows.max()) + 1
    ax.set_ylim(-n_rows + 0.1, 0.45)
    ax.set_yticks([])
    return n_rows


# ---------------------------------------------------------------------------------------------
# Track data: the region's columns of a matrix, group means, BigWig bins.


def _take_block(block, cols: np.ndarray, want_totals: bool):
    # Convert only what is not CSR yet: copying an in-memory matrix would cost more than the slice.
    if sp.issparse(block):
        block = block if block.format == "csr" else block.tocsr()
    else:
        block = np.asarray(block)
    sub = sp.csr_matrix(block[:, cols])
    totals = np.asarray(block.sum(axis=1)).ravel().astype(float) if want_totals else None
    return sub, totals


def _take_store_rows(block, cols: np.ndarray, want_totals: bool):
    return _take_block(load(block).to_csr(), cols, want_totals)


def read_columns(modality: Any, cols: np.ndarray, *, totals: bool = True,
                 client: Any = None) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """Columns ``cols`` of a modality's matrix (all cells) and, optionally, every cell's total.

    In memory this is a slice; from a store it is one pass over the row chunks
    (``p2g-trackcolumns-*`` tasks on ``client``, else the current client or the local
    scheduler), where each task reads its rows and keeps only the requested columns and the row
    sums, so memory stays ~ cells x len(cols).
    """
    cols = np.asarray(cols, dtype=np.int64)
    if modality.store is None:
        sub, tot = _take_block(modality.X, cols, totals)
        return sub, tot
    store = modality.store
    blocks = store_blocks(store.path, store.name, store.n_vars, store.row_chunks(), fused=True)
    token = dask.base.tokenize([b.key for b in blocks], cols, totals)
    parts = [dask.delayed(_take_store_rows, pure=True)(b, cols, totals, dask_key_name=f"p2g-trackcolumns-{token}-{i}")
             for i, b in enumerate(blocks)]
    results = _graph.compute(parts, client)
    sub = sp.vstack([r[0] for r in results], format="csr")
    tot = np.concatenate([r[1] for r in results]) if totals else None
    return sub, tot


def group_labels(obs: pd.DataFrame, groupby: str) -> tuple[np.ndarray, list[str]]:
    """Per-cell group labels (as str) and the groups in display order (category order if any)."""
    if groupby not in obs.columns:
        raise KeyError(f"groupby={groupby!r} is not an obs column; obs has {list(obs.columns)}.")
    col = obs[groupby]
    labels = col.astype(str).to_numpy()
    present = set(labels)
    if isinstance(col.dtype, pd.CategoricalDtype):
        order = [str(c) for c in col.cat.categories if str(c) in present]
    else:
        order = sorted(present)
    return labels, order


def group_mean_cp10k(counts: sp.csr_matrix, depth: np.ndarray, labels: np.ndarray, groups: list[str]) -> np.ndarray:
    """Mean over each group's cells of ``1e4 * count / depth`` (groups x columns)."""
    scale = np.divide(1e4, depth, out=np.zeros_like(depth, dtype=float), where=depth > 0)
    cp10k = sp.diags(scale) @ counts.astype(float)
    out = np.zeros((len(groups), counts.shape[1]))
    for i, g in enumerate(groups):
        rows = np.flatnonzero(labels == g)
        out[i] = np.asarray(cp10k[rows].mean(axis=0)).ravel()
    return out


def bigwig_signal(path: str | os.PathLike, chrom: str, start: int, end: int, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean bp-resolution signal of a BigWig in ``n_bins`` equal bins of ``[start, end)``.

    Uncovered bases count as 0 (coverage, not an average of covered bases only); a chromosome
    missing from the file (a group without fragments there) gives zeros and a warning.

    Examples
    --------
    >>> import tempfile, pybigtools
    >>> path = tempfile.mkdtemp() + "/g.bw"
    >>> pybigtools.open(path, "w").write({"chr1": 1000}, [("chr1", 0, 100, 2.0)])
    >>> bigwig_signal(path, "chr1", 0, 200, 2)[1].tolist()
    [2.0, 0.0]
    """
    import pybigtools

    from p2g_dask._errors import InputFileError, check_input_file, describe

    edges = np.linspace(start, end, n_bins + 1)
    check_input_file(path, argument="bigwig_files", kind="bigwig")
    try:
        reader = pybigtools.open(os.fspath(path))
    except Exception as err:  # noqa: BLE001 - pybigtools raises its own types on a damaged file
        raise InputFileError("bigwig_files", path, describe(err), "pass a BigWig written by p2g bigwig "
                             "(or any complete .bw); if it was copied, copy it again") from err
    try:
        sizes = reader.chroms()
        if chrom not in sizes:
            logger.warning("BigWig %s has no %s: its track is drawn empty", path, chrom)
            return edges, np.zeros(n_bins)
        values = reader.values(chrom, int(start), int(end), bins=int(n_bins), summary="mean", exact=True,
                               uncovered=0.0, oob=0.0, fillna=0.0)
    except Exception as err:  # noqa: BLE001 - a damaged data block or index of the file
        raise InputFileError("bigwig_files", path, describe(err), "pass a BigWig written by p2g bigwig "
                             "(or any complete .bw); if it was copied, copy it again") from err
    finally:
        reader.close()
    return edges, np.nan_to_num(np.asarray(values, dtype=float))
