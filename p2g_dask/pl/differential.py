"""``plot_differential_links``: r in one group against r in another, differential links highlighted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._variables import check_params

_ALL_COLOR, _UP_COLOR, _DOWN_COLOR = "#b0b0b0", "#b2182b", "#2166ac"


def plot_differential_links(
    data: pd.DataFrame,
    *,
    fdr_cutoff: float = 0.05,
    label_top: int = 5,
    ax: Any = None,
    figsize: tuple[float, float] = (4.2, 4.0),
    show: bool = False,
) -> tuple[Any, Any]:
    """Scatter of r in group 1 (x) against r in group 2 (y); pairs with ``fdr <= fdr_cutoff`` coloured.

    Parameters
    ----------
    data
        Table from :func:`p2g_dask.tl.differential_links` (``correlation_1``, ``correlation_2``,
        ``delta_r``, ``fdr``; ``attrs`` name the groups).
    fdr_cutoff
        Pairs at or below this FDR are highlighted: red when stronger in group 1, blue in group 2.
    label_top
        Label the ``label_top`` most significant highlighted pairs ``gene|peak``.
    ax
        Draw into this axes (a new figure when None).
    figsize
        Size of a new figure.
    show
        Call ``matplotlib.pyplot.show()``.

    Returns
    -------
    (matplotlib.figure.Figure, matplotlib.axes.Axes)

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> diff = pd.DataFrame({"peak": ["p1", "p2"], "gene": ["A", "B"], "correlation_1": [0.8, 0.1],
    ...                      "correlation_2": [0.0, 0.1], "delta_r": [0.8, 0.0], "fdr": [0.001, 0.9]})
    >>> fig, ax = plot_differential_links(diff)
    >>> ax.get_xlabel()
    'r in group 1'
    """
    import matplotlib.pyplot as plt

    missing = [c for c in ("peak", "gene", "correlation_1", "correlation_2", "delta_r", "fdr") if c not in data]
    check_params([
        (not missing, f"data is missing columns {missing}; pass the table of p2g.tl.differential_links."),
        (0 < fdr_cutoff <= 1, f"fdr_cutoff={fdr_cutoff} must be in (0, 1], e.g. 0.05."),
    ])
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    r1, r2 = data["correlation_1"].to_numpy(dtype=float), data["correlation_2"].to_numpy(dtype=float)
    hit = (data["fdr"] <= fdr_cutoff).to_numpy()
    up = hit & (data["delta_r"].to_numpy() > 0)
    ax.scatter(r1[~hit], r2[~hit], s=4, color=_ALL_COLOR, linewidths=0, label="all pairs", gid="pairs")
    ax.scatter(r1[up], r2[up], s=9, color=_UP_COLOR, linewidths=0, label=f"stronger in 1 (FDR \u2264 {fdr_cutoff:g})",
               gid="up")
    ax.scatter(r1[hit & ~up], r2[hit & ~up], s=9, color=_DOWN_COLOR, linewidths=0,
               label=f"stronger in 2 (FDR \u2264 {fdr_cutoff:g})", gid="down")
    ax.plot([-1, 1], [-1, 1], color="#666666", lw=0.6, ls="--")
    top = data[hit].sort_values("fdr").head(int(label_top))
    for row in top.itertuples():
        ax.annotate(f"{row.gene}|{row.peak}", (row.correlation_1, row.correlation_2), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    group1, group2 = data.attrs.get("group1"), data.attrs.get("group2")
    ax.set_xlabel(f"r in {group1}" if group1 else "r in group 1")
    ax.set_ylabel(f"r in {group2}" if group2 else "r in group 2")
    ax.set_xlim(-1.02, 1.02)
    ax.set_ylim(-1.02, 1.02)
    ax.set_aspect("equal")
    ax.legend(fontsize=6, loc="lower right", frameon=False)
    ax.set_title(f"{int(hit.sum())} of {len(data)} pairs differ", fontsize=8, loc="left")
    if show:
        plt.show()
    return fig, ax


__all__ = ["plot_differential_links"]
