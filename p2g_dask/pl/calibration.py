"""Calibration of link statistics: QQ plot and histograms of the t-test p-values against those
of the null models that were computed (``peak_to_gene(empirical_pval=True, n_permutations=N)``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._tables import GROUP_LINKS, LINKS, require_columns

#: (p-value column, FDR column, label, colour) of each statistic, drawn when the column exists.
STATISTICS = (
    ("pval", "fdr", "t-test", "#7f7f7f"),
    ("emp_pval", "emp_fdr", "empirical null", "#1b9e77"),
    ("perm_pval", "perm_fdr", "permutation", "#d95f02"),
)


def _label(links: pd.DataFrame, column: str, label: str, group: Any = None) -> str:
    record = links.attrs.get("permutation") if column == "perm_pval" else None
    if record and "permute" not in record:  # links per group: one record per group, all of one call
        record = record.get(str(group)) if group is not None else next(iter(record.values()), None)
    return f"{label} ({record['permute']}, N={record['n_permutations']})" if record else label


def _group_rows(links: pd.DataFrame, group: Any) -> pd.DataFrame:
    """The links of one group (``groupby`` runs), or all links when ``group`` is None."""
    if group is None:
        return links
    require_columns(links, GROUP_LINKS, argument="links (group=)", columns=["group"])
    names = links["group"].astype(str)
    if str(group) not in set(names):
        raise ValueError(f"group={group!r} is not a group of the links; choose from {sorted(names.unique())}.")
    return links[names.to_numpy() == str(group)]


def plot_link_calibration(
    links: pd.DataFrame,
    *,
    group: Any = None,
    fdr_cutoff: float = 0.05,
    bins: int = 40,
    figsize: tuple[float, float] = (12.0, 3.6),
    show: bool = False,
) -> tuple[Any, list[Any]]:
    """QQ plot, p-value histograms and selected shares of each link statistic.

    1. QQ plot: ``-log10`` of the sorted p-values against the uniform quantiles (the diagonal is
       a calibrated null; a statistic far above it on a data set without links is anti-conservative).
    2. Histograms of the p-values (density; 1 is uniform).
    3. Share of pairs with FDR ``< fdr_cutoff`` for each statistic.

    Parameters
    ----------
    links
        Table from :func:`p2g_dask.tl.peak_to_gene`; ``emp_pval``/``perm_pval`` are drawn when present.
    group
        With links per group (``peak_to_gene(groupby=...)``), the group whose statistics are drawn
        (each group has its own nulls and FDR); None draws all rows.
    fdr_cutoff
        FDR threshold of panel 3.
    bins
        Histogram bins.
    figsize
        Figure size in inches.
    show
        Call ``matplotlib.pyplot.show()``.

    Returns
    -------
    (matplotlib.figure.Figure, list of Axes)
        The figure and its three axes; lines carry gids ``qq:<column>``, bars ``hist:<column>``.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> rng = np.random.default_rng(0)
    >>> links = pd.DataFrame({"pval": rng.uniform(size=500), "perm_pval": rng.uniform(size=500)})
    >>> links["fdr"] = links["perm_fdr"] = 1.0
    >>> fig, axes = plot_link_calibration(links)
    >>> sorted(line.get_gid() for line in axes[0].lines if line.get_gid())
    ['qq:perm_pval', 'qq:pval']
    """
    import matplotlib.pyplot as plt

    require_columns(links, LINKS, argument="links", columns=["pval", "fdr"])
    links = _group_rows(links, group)
    present = [s for s in STATISTICS if s[0] in links.columns]
    fig, axes = plt.subplots(1, 3, figsize=figsize)
    qq, hist, share = axes
    top = 0.0
    for column, fdr_column, label, color in present:
        p = links[column].to_numpy(dtype=float)
        p = np.sort(p[np.isfinite(p)])
        if p.size == 0:
            continue
        expected = -np.log10((np.arange(1, p.size + 1) - 0.5) / p.size)
        observed = -np.log10(np.maximum(p, 1e-300))
        qq.plot(expected, observed, ".", markersize=2, color=color, label=_label(links, column, label, group),
                gid=f"qq:{column}")
        top = max(top, expected.max())
        hist.hist(p, bins=np.linspace(0, 1, bins + 1), density=True, histtype="step", color=color, linewidth=1.4,
                  label=label, gid=f"hist:{column}")
    qq.plot([0, top], [0, top], color="black", linewidth=0.8, linestyle="--")
    qq.set_xlabel("expected -log10 p (uniform)")
    qq.set_ylabel("observed -log10 p")
    qq.legend(fontsize=7, frameon=False)
    hist.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    hist.set_xlabel("p-value")
    hist.set_ylabel("density")
    shares = [(label, float((links[f].to_numpy(dtype=float) < fdr_cutoff).mean()), color)
              for _, f, label, color in present if f in links.columns]
    share.bar([s[0] for s in shares], [100 * s[1] for s in shares], color=[s[2] for s in shares])
    share.set_ylabel(f"% of pairs with FDR < {fdr_cutoff:g}")
    share.tick_params(axis="x", labelsize=7)
    for a in axes:
        a.spines[["top", "right"]].set_visible(False)
    if group is not None:
        fig.suptitle(f"group {group}", fontsize=9)
    fig.tight_layout()
    if show:
        plt.show()
    return fig, list(axes)
