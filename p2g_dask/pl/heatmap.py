"""ArchR's ``plotPeak2GeneHeatmap``: k-means clustered metacell heatmaps of linked peaks and genes."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from p2g_dask._deprecations import renamed_arguments
from p2g_dask._logging import logger
from p2g_dask._tables import LINKS, require_columns
from p2g_dask.pl import _tracks
from p2g_dask.tl.links.filters import passing_links

# ArchR's default palettes of this plot (solarExtra for accessibility, blueYellow for expression).
SOLAR_EXTRA = ["#3361A5", "#248AF3", "#14B3FF", "#88CEEF", "#C1D5DC", "#EAD397", "#FDB31A", "#E42A2A", "#A31D1D"]
BLUE_YELLOW = ["#352A86", "#343DAE", "#0262E0", "#1389D2", "#2DB7A3", "#A5BE6A", "#F8BA43", "#F6DA23", "#F8FA0D"]


def row_zscores(m: np.ndarray) -> np.ndarray:
    """Z-score each row (ddof=1, as R's ``sd``); constant rows become 0."""
    m = np.asarray(m, dtype=float)
    sd = m.std(axis=1, ddof=1, keepdims=True)
    return np.divide(m - m.mean(axis=1, keepdims=True), sd, out=np.zeros_like(m), where=sd > 0)


def majority_groups(metacells: np.ndarray, labels: np.ndarray, groups: list[str]) -> np.ndarray:
    """Most frequent group among each metacell's cells (ties: the earlier group in ``groups``)."""
    code = pd.Categorical(labels, categories=groups).codes
    counts = np.zeros((metacells.shape[0], len(groups)), dtype=np.int64)
    for j in range(metacells.shape[1]):
        np.add.at(counts, (np.arange(metacells.shape[0]), code[metacells[:, j]]), 1)
    return np.asarray(groups, dtype=object)[counts.argmax(axis=1)]


def metacell_columns(modality: Any, cols: np.ndarray, metacells: np.ndarray) -> np.ndarray:
    """``log2(CP10k + 1)`` metacell values of the matrix columns ``cols``.

    Normalised over *all* features: the columns are read with every cell's total and passed to
    :func:`p2g_dask.tl.engine.accumulate.metacell_matrix` with one extra "rest of the matrix" column, so
    each metacell is scaled by its full total exactly as in ``peak_to_gene``.
    """
    from p2g_dask.tl.engine.accumulate import metacell_matrix

    sub, totals = _tracks.read_columns(modality, cols, totals=True)
    rest = totals - np.asarray(sub.sum(axis=1)).ravel()
    augmented = sp.hstack([sub.astype(np.float64), sp.csr_matrix(rest[:, None])], format="csr")
    return metacell_matrix(augmented, metacells)[:, :-1]


def order_clusters(cluster_means: np.ndarray, *, cutoff: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """ArchR's ``.binarySort``-like order: metacell columns by hierarchical clustering of the
    cluster means, clusters by their binarised (``>= cutoff``) pattern over those columns, so the
    heatmap shows a diagonal. Returns ``(cluster_order, column_order)``.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage

    n_cols = cluster_means.shape[1]
    col_order = (leaves_list(linkage(cluster_means.T, method="average", metric="euclidean"))
                 if n_cols > 2 else np.arange(n_cols))
    binary = cluster_means[:, col_order] >= cutoff
    # First column where a cluster is high, then its mean there: descending patterns run down the diagonal.
    first_high = np.where(binary.any(axis=1), binary.argmax(axis=1), n_cols)
    strongest = cluster_means[:, col_order].argmax(axis=1)
    cluster_order = np.lexsort((strongest, first_high))
    return cluster_order, col_order


def _links_first_is_old_order(func: Callable) -> Callable:
    """Accept the old call ``(links, atac, rna)`` for one release, with a FutureWarning.

    Unambiguous: the data is never a DataFrame with the links' columns.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        first = args[0] if args else None
        if isinstance(first, pd.DataFrame) and {"peak", "gene", "correlation"} <= set(first.columns):
            if "links" in kwargs:
                raise TypeError(f"{func.__name__}() got links twice (first positional and links=); pass "
                                f"{func.__name__}(data, rna, links=links).")
            warnings.warn(f"{func.__name__}(links, atac, rna) is the old argument order; call "
                          f"{func.__name__}(data, rna, links=links). The old order will stop working in the "
                          "next release.", FutureWarning, stacklevel=3)
            kwargs["links"], args = first, args[1:]
        return func(*args, **kwargs)

    return wrapper


@renamed_arguments(atac="data", fdr="fdr_cutoff", group_by="groupby")
@_links_first_is_old_order
def plot_peak2gene_heatmap(
    data: Any,
    rna: Any = None,
    *,
    links: pd.DataFrame,
    fdr_cutoff: float = 1e-4,
    cor_cutoff: float = 0.45,
    positive_only: bool = True,
    var_cutoff_atac: float = 0.25,
    var_cutoff_rna: float = 0.25,
    k: int = 25,
    groupby: str = "cell_type",
    max_links: int = 25_000,
    limits: tuple[float, float] = (-2.0, 2.0),
    seed: int = 1,
    mod_atac: str = "atac",
    mod_rna: str = "rna",
    figsize: tuple[float, float] = (10.0, 7.0),
    return_matrices: bool = False,
    show: bool = False,
) -> tuple[Any, ...]:
    """Side-by-side heatmaps of metacell accessibility and expression for significant links.

    ArchR's ``plotPeak2GeneHeatmap``: the links :func:`p2g_dask.tl.filter_links` keeps (by
    default the positive ones with ``fdr <= fdr_cutoff``, ``correlation >= cor_cutoff`` and
    variance quantiles above the cut-offs); the metacell matrices are recomputed from
    ``links.attrs["metacells"]``; rows z-scored; k-means (``k`` clusters, seeded) on the peak
    z-scores; the same row order in both heatmaps (row i is one link: its peak left, its gene
    right); metacells ordered by clustering and annotated by their majority ``groupby`` group.

    Parameters
    ----------
    data, rna
        The data ``peak_to_gene`` ran on: AnnData pair, MuData (``mod_atac``/``mod_rna``) or a
        store (``rna=None``). Only the linked peaks' and genes' columns are read.
    links
        Table from :func:`p2g_dask.tl.links.peak_to_gene` with its ``attrs["metacells"]``. The old
        order ``(links, atac, rna)`` and the names ``atac=`` / ``fdr=`` still work for one
        release, with a FutureWarning.
    fdr_cutoff, cor_cutoff, positive_only
        Links kept: ``fdr <= fdr_cutoff`` and ``|correlation| >= cor_cutoff``; with
        ``positive_only`` (default, as ArchR draws) ``correlation >= cor_cutoff``.
    var_cutoff_atac, var_cutoff_rna
        Keep links with ``var_q_atac > var_cutoff_atac`` and ``var_q_rna > var_cutoff_rna``
        (skipped when the columns are absent).
    k
        k-means clusters (at most the number of links).
    groupby
        obs column whose majority value annotates each metacell.
    max_links
        More links than this are subsampled per cluster, proportionally (ArchR's ``nPlot``).
    limits
        Colour limits of the z-scores.
    seed
        Seed of k-means and of the subsampling.
    mod_atac, mod_rna
        Modality names in a MuData.
    figsize
        Figure size in inches.
    return_matrices
        Also return ``{"atac", "rna"}`` z-score matrices as drawn, ``"links"`` (the drawn links
        in row order with their ``cluster``), ``"groups"`` (metacell groups in column order) and
        ``"metacells"`` (row numbers of ``links.attrs["metacells"]`` in column order).
    show
        Call ``matplotlib.pyplot.show()``.

    Returns
    -------
    (Figure, dict) or (Figure, dict, dict)
        Axes ``"atac"``, ``"rna"``, ``"groups_atac"``, ``"groups_rna"``, ``"colorbar_atac"``,
        ``"colorbar_rna"``; with ``return_matrices`` the matrices as well.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=400, n_peaks=3000, n_genes=300, n_linked_genes=30, seed=4)
    >>> links = p2g.tl.peak_to_gene(sim.atac, rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent",
    ...                             n_metacells=60, k_neighbors=20, seed=1)
    >>> fig, axes = plot_peak2gene_heatmap(sim.atac, sim.rna, links=links, k=5, fdr_cutoff=1e-3, cor_cutoff=0.3)
    >>> sorted(axes)[:2]
    ['atac', 'colorbar_atac']
    """
    import matplotlib.pyplot as plt

    from p2g_dask.io.inputs import resolve_input

    require_columns(links, LINKS, argument="links", columns=["peak", "gene", "correlation", "fdr"])
    metacells = links.attrs.get("metacells")
    if metacells is None:
        raise ValueError("links.attrs has no 'metacells'; pass the table returned by p2g.tl.peak_to_gene "
                         "(read_links keeps it) so the metacells can be recomputed.")
    metacells = np.asarray(metacells, dtype=np.int64)
    atac_mod, rna_mod, _ = resolve_input(data, rna, mod_atac=mod_atac, mod_rna=mod_rna, need_rna=True)
    _check_cells(links, atac_mod, metacells)
    sel = _heatmap_links(links, fdr_cutoff=fdr_cutoff, cor_cutoff=cor_cutoff, positive_only=positive_only,
                         var_cutoff_atac=var_cutoff_atac, var_cutoff_rna=var_cutoff_rna)
    z_atac, z_rna = _link_zscores(atac_mod, rna_mod, sel, metacells)
    rows, row_clusters, col_order = _cluster_rows(z_atac, k=k, seed=seed, max_links=max_links)
    mat_atac, mat_rna = z_atac[rows][:, col_order], z_rna[rows][:, col_order]

    labels, groups = _tracks.group_labels(atac_mod.obs, groupby)
    mc_groups = majority_groups(metacells, labels, groups)[col_order]
    fig, axes = _draw_heatmaps(mat_atac, mat_rna, row_clusters, mc_groups, groups, groupby=groupby, limits=limits,
                               figsize=figsize)
    if show:
        plt.show()
    if not return_matrices:
        return fig, axes
    drawn = sel.iloc[rows].assign(cluster=row_clusters + 1).reset_index(drop=True)
    return fig, axes, {"atac": mat_atac, "rna": mat_rna, "links": drawn, "groups": mc_groups,
                       "metacells": col_order}


# ---------------------------------------------------------------------------------------------
# The steps of plot_peak2gene_heatmap: the links drawn, their z-scores, their clusters, the figure.


def _heatmap_links(links: pd.DataFrame, *, fdr_cutoff: float, cor_cutoff: float, positive_only: bool,
                   var_cutoff_atac: float, var_cutoff_rna: float) -> pd.DataFrame:
    """The passing links (at least 2, else a ``ValueError`` naming the cut-offs), numbered from 0."""
    # The variance filters are skipped for tables without the variance columns.
    keep = passing_links(links, cor_cutoff=cor_cutoff, fdr_cutoff=fdr_cutoff, positive_only=positive_only,
                         var_cutoff_atac=var_cutoff_atac if "var_q_atac" in links.columns else None,
                         var_cutoff_rna=var_cutoff_rna if "var_q_rna" in links.columns else None)
    sel = links[keep].reset_index(drop=True)
    if len(sel) < 2:
        which = "correlation" if positive_only else "|correlation|"
        raise ValueError(
            f"{len(sel)} links pass fdr <= {fdr_cutoff:g}, {which} >= {cor_cutoff:g} and the variance cut-offs; "
            "a heatmap needs at least 2: loosen fdr_cutoff= / cor_cutoff= / var_cutoff_*=."
        )
    return sel


def _link_zscores(atac_mod: Any, rna_mod: Any, sel: pd.DataFrame,
                  metacells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row z-scores of each link's peak and gene over the metacells (links x metacells, twice);
    each distinct peak or gene is read once."""
    peak_idx = _feature_index(atac_mod.var.index, sel["peak"], "peak", "atac")
    gene_idx = _feature_index(rna_mod.var.index, sel["gene"], "gene", "rna")
    upeaks, peak_inv = np.unique(peak_idx, return_inverse=True)
    ugenes, gene_inv = np.unique(gene_idx, return_inverse=True)
    z_atac = row_zscores(metacell_columns(atac_mod, upeaks, metacells).T[peak_inv])
    z_rna = row_zscores(metacell_columns(rna_mod, ugenes, metacells).T[gene_inv])
    return z_atac, z_rna


def _cluster_rows(z_atac: np.ndarray, *, k: int, seed: int,
                  max_links: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means of the links on their peak z-scores, subsampled per cluster to ``max_links``, and
    the drawing order: ``(rows, row_clusters, col_order)``, the links drawn in order, their
    cluster's place in the order (0-based) and the metacells' order."""
    from sklearn.cluster import KMeans

    n_links = len(z_atac)
    k = int(min(k, n_links))
    # One k-means++ start, as ArchR's kmeans(nstart = 1): ten starts cost 10x for the same blocks.
    clusters = KMeans(n_clusters=k, random_state=seed, n_init=1).fit_predict(z_atac)
    rows = np.arange(n_links)
    if n_links > max_links:
        rng = np.random.default_rng(seed)
        rows = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(clusters == c), int(np.floor(max_links * np.mean(clusters == c))), replace=False)
            for c in range(k)
        ]))
        logger.info("plot_peak2gene_heatmap: drawing %d of %d links (max_links)", rows.size, n_links)
    means = np.vstack([z_atac[rows][clusters[rows] == c].mean(axis=0) if np.any(clusters[rows] == c)
                       else np.zeros(z_atac.shape[1]) for c in range(k)])
    cluster_order, col_order = order_clusters(means)
    rank = np.empty(k, dtype=int)
    rank[cluster_order] = np.arange(k)
    rows = rows[np.lexsort((rows, rank[clusters[rows]]))]
    return rows, rank[clusters[rows]], col_order


def _draw_heatmaps(mat_atac: np.ndarray, mat_rna: np.ndarray, row_clusters: np.ndarray, mc_groups: np.ndarray,
                   groups: list[str], *, groupby: str, limits: tuple[float, float],
                   figsize: tuple[float, float]) -> tuple[Any, dict[str, Any]]:
    """The two heatmaps side by side, each under a strip of the metacells' groups and above its
    colorbar; white lines between clusters, their numbers left of the ATAC heatmap, a group legend."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap, ListedColormap

    palette = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    group_colors = ListedColormap([palette(i % palette.N) for i in range(len(groups))])
    group_code = pd.Categorical(mc_groups, categories=groups).codes[None, :]

    fig = plt.figure(figsize=figsize)
    grid = fig.add_gridspec(2, 2, height_ratios=[0.35, 8], hspace=0.03, wspace=0.08,
                            left=0.06, right=0.83, top=0.9, bottom=0.1)
    axes: dict[str, Any] = {}
    n_rows, n_cols = mat_atac.shape
    bounds = np.flatnonzero(np.diff(row_clusters)) + 0.5
    for j, (name, mat, colors, title) in enumerate((
        ("atac", mat_atac, SOLAR_EXTRA, f"ATAC z-scores\n{n_rows:,} P2G links x {n_cols} metacells"),
        ("rna", mat_rna, BLUE_YELLOW, f"RNA z-scores\n{n_rows:,} P2G links x {n_cols} metacells"),
    )):
        gax = fig.add_subplot(grid[0, j])
        gax.imshow(group_code, aspect="auto", cmap=group_colors, vmin=-0.5, vmax=len(groups) - 0.5,
                   interpolation="nearest")
        gax.set_xticks([])
        gax.set_yticks([])
        gax.set_title(title, fontsize=9)
        hax = fig.add_subplot(grid[1, j])
        image = hax.imshow(mat, aspect="auto", interpolation="nearest", vmin=limits[0], vmax=limits[1],
                           cmap=LinearSegmentedColormap.from_list(name, colors))
        for b in bounds:
            hax.axhline(b, color="white", linewidth=0.8)
        hax.set_xticks([])
        hax.set_yticks([])
        # A centred, narrower colorbar under each heatmap keeps the two scales' labels apart.
        cax = hax.inset_axes([0.2, -0.06, 0.6, 0.022])
        cbar = fig.colorbar(image, cax=cax, orientation="horizontal", ticks=[limits[0], 0, limits[1]])
        cbar.ax.tick_params(labelsize=7, length=2)
        cbar.set_label("row z-score", fontsize=7, labelpad=1)
        axes.update({name: hax, f"groups_{name}": gax, f"colorbar_{name}": cax})
    _number_clusters(axes["atac"], bounds, n_rows, fig_height=figsize[1])
    handles = [plt.Rectangle((0, 0), 1, 1, color=group_colors(i)) for i in range(len(groups))]
    fig.legend(handles, groups, title=groupby, loc="center left", bbox_to_anchor=(0.845, 0.5), fontsize=8,
               title_fontsize=8, frameon=False)
    return fig, axes


def _number_clusters(ax: Any, bounds: np.ndarray, n_rows: int, *, fig_height: float) -> None:
    """Cluster numbers down the left of the heatmap ``ax``, at each block's middle."""
    edges = np.concatenate([[-0.5], bounds, [n_rows - 0.5]])
    for c, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        # The heatmap is ~0.77 x the figure height; a 7 pt label needs ~0.12 in, so thinner
        # blocks stay unlabelled and neighbouring labels never overlap.
        if (b - a) / n_rows >= 0.16 / fig_height:
            ax.text(-0.01, (a + b) / 2, str(c + 1), transform=ax.get_yaxis_transform(),
                    ha="right", va="center", fontsize=7)


def _feature_index(names: pd.Index, wanted: pd.Series, what: str, modality: str) -> np.ndarray:
    idx = pd.Index(names.astype(str)).get_indexer(wanted.astype(str))
    if (idx < 0).any():
        missing = wanted[idx < 0].iloc[0]
        raise ValueError(f"{int((idx < 0).sum())} linked {what}s are not in the {modality} var names (e.g. "
                         f"{missing!r}); pass the {modality} data the links were computed from.")
    return idx


def _check_cells(links: pd.DataFrame, modality: Any, metacells: np.ndarray) -> None:
    """Refuse data whose cells are not those ``peak_to_gene`` indexed the metacells with."""
    n_cells = links.attrs.get("n_cells", modality.n_obs)
    if metacells.size and (metacells.max() >= modality.n_obs or n_cells != modality.n_obs):
        raise ValueError(f"the links' metacells index {n_cells} cells but atac has {modality.n_obs}; pass the "
                         "data peak_to_gene ran on.")
    expected = links.attrs.get("obs_names_hash")
    if expected is not None:
        from p2g_dask.io.inputs import obs_names_hash

        if obs_names_hash(modality) != expected:
            raise ValueError("atac's obs_names differ from those peak_to_gene ran on (obs_names_hash); pass the "
                             "same cells in the same order.")
