"""Three-panel summary of a links table: correlations, distances to the TSS, links per gene."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._deprecations import renamed_arguments
from p2g_dask._logging import logger
from p2g_dask._tables import LINKS, require_columns
from p2g_dask.tl.links.filters import passing_links

_ALL_COLOR, _SIG_COLOR = "#b0b0b0", "#d1495b"


@renamed_arguments(fdr="fdr_cutoff", min_abs_r="cor_cutoff")
def plot_link_summary(
    links: pd.DataFrame,
    *,
    fdr_cutoff: float = 0.05,
    cor_cutoff: float = 0.0,
    positive_only: bool = False,
    bins: int = 40,
    log_counts: bool | None = None,
    figsize: tuple[float, float] = (12.0, 3.4),
    show: bool = False,
) -> tuple[Any, list[Any]]:
    """Summarise a links table in three panels, in one call.

    1. Histogram of the correlation of all tested pairs and of the significant ones
       (kept by :func:`p2g_dask.tl.filter_links` without its variance cut-offs: ``fdr <=
       fdr_cutoff`` and ``|r| >= cor_cutoff``) on the same bins.
    2. Signed distance peak centre - TSS of the significant links, in kb.
    3. Number of significant links per gene (genes with at least one).

    Parameters
    ----------
    links
        Table from :func:`p2g_dask.tl.links.peak_to_gene` (``correlation``, ``fdr``, ``distance``,
        ``gene`` are used). Pairs with a NaN correlation (constant features) are counted in the
        legend, not in the histogram.
    fdr_cutoff, cor_cutoff, positive_only
        What counts as significant (:func:`p2g_dask.tl.filter_links`'s meaning). The old names
        ``fdr`` / ``min_abs_r`` still work for one release, with a FutureWarning.
    bins
        Bins of the correlation and distance histograms.
    log_counts
        Log-scale counts in panel 1; None chooses it when all pairs outnumber the significant
        ones more than 50-fold (so the significant bars stay visible).
    figsize
        Figure size in inches.
    show
        Call ``matplotlib.pyplot.show()``.

    Returns
    -------
    (matplotlib.figure.Figure, list of matplotlib.axes.Axes)
        The figure and its three panels in the order above.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> rng = np.random.default_rng(0)
    >>> links = pd.DataFrame({"gene": rng.choice(list("ABCDE"), 200), "correlation": rng.uniform(-1, 1, 200),
    ...                       "fdr": rng.uniform(0, 0.2, 200), "distance": rng.integers(-2e5, 2e5, 200)})
    >>> fig, axes = plot_link_summary(links, fdr_cutoff=0.05)
    >>> len(axes)
    3
    """
    import matplotlib.pyplot as plt

    require_columns(links, LINKS, argument="links", columns=["gene", "correlation", "fdr", "distance"])
    r = links["correlation"].to_numpy(dtype=float)
    finite = np.isfinite(r)
    sig = passing_links(links, cor_cutoff=cor_cutoff, fdr_cutoff=fdr_cutoff, var_cutoff_atac=None,
                        var_cutoff_rna=None, positive_only=positive_only)
    n_nan = int((~finite).sum())
    if not sig.any():
        logger.warning("plot_link_summary: no link has fdr <= %g and |r| >= %g; panels 2-3 are empty",
                       fdr_cutoff, cor_cutoff)

    fig, axes = plt.subplots(1, 3, figsize=figsize)
    edges = np.linspace(-1, 1, bins + 1)
    ax = axes[0]
    ax.hist(r[finite], bins=edges, color=_ALL_COLOR, label=f"all tested (n={int(finite.sum()):,})", gid="hist-all")
    ax.hist(r[sig], bins=edges, color=_SIG_COLOR, label=f"FDR \u2264 {fdr_cutoff:g} (n={int(sig.sum()):,})", gid="hist-sig")
    if log_counts is None:
        log_counts = finite.sum() > 50 * max(1, sig.sum())
    if log_counts:
        ax.set_yscale("log")
    # Headroom above the tallest bar keeps the legend off the bars.
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * 12 if log_counts else top * 1.35)
    ax.set_xlabel("correlation (r)")
    ax.set_ylabel("pairs")
    title = "Correlation" + (f"  ({n_nan:,} NaN not shown)" if n_nan else "")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="upper left")

    ax = axes[1]
    dist_kb = links["distance"].to_numpy(dtype=float)[sig] / 1e3
    span = np.abs(links["distance"].to_numpy(dtype=float)).max() / 1e3 if len(links) else 1.0
    span = span if np.isfinite(span) and span > 0 else 1.0
    ax.hist(dist_kb, bins=np.linspace(-span, span, bins + 1), color=_SIG_COLOR, gid="hist-distance")
    ax.axvline(0, color="#333333", linewidth=0.8, linestyle="--")
    ax.set_xlabel("peak centre \u2212 TSS (kb)")
    ax.set_ylabel("significant links")
    ax.set_title("Distance to TSS", fontsize=10)

    ax = axes[2]
    per_gene = links.loc[sig, "gene"].value_counts()
    counts = np.bincount(per_gene.to_numpy(), minlength=2)[1:] if len(per_gene) else np.zeros(1, dtype=int)
    ax.bar(np.arange(1, counts.size + 1), counts, width=0.85, color=_SIG_COLOR, gid="bar-per-gene")
    ax.set_xlabel("significant links per gene")
    ax.set_ylabel("genes")
    ax.set_title(f"Links per gene ({len(per_gene):,} genes)", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)

    for ax in axes:
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    if show:
        plt.show()
    return fig, list(axes)
