"""Working with links: ArchR's ``getPeak2GeneLinks`` filter (the one link filter of the package,
used by every plot) and tidy per-gene / per-peak summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd

from p2g_dask._tables import LINKS, require_columns


def _check_range(name: str, value, low: float, high: float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not np.isfinite(value) or not low <= value <= high:
        extra = " or None to skip it" if allow_none else ""
        raise ValueError(f"{name}={value!r} is outside its valid range [{low}, {high}]; give a number in it{extra}.")


def passing_links(
    links: pd.DataFrame,
    *,
    cor_cutoff: float = 0.45,
    fdr_cutoff: float = 1e-4,
    var_cutoff_atac: float | None = 0.25,
    var_cutoff_rna: float | None = 0.25,
    positive_only: bool = False,
    argument: str = "links",
) -> np.ndarray:
    """Boolean mask of the links :func:`filter_links` keeps (same arguments); checks them first.

    Plots use the mask to draw kept and dropped links apart. The variance columns are needed only
    when their cut-off is not None.

    Examples
    --------
    >>> import pandas as pd
    >>> links = pd.DataFrame({"correlation": [0.5, -0.6], "fdr": [1e-5, 0.5]})
    >>> passing_links(links, var_cutoff_atac=None, var_cutoff_rna=None).tolist()
    [True, False]
    """
    needed = ["correlation", "fdr"] + [col for col, cut in (("var_q_atac", var_cutoff_atac),
                                                           ("var_q_rna", var_cutoff_rna)) if cut is not None]
    require_columns(links, LINKS, argument=argument, columns=needed)
    _check_range("cor_cutoff", cor_cutoff, 0.0, 1.0)
    _check_range("fdr_cutoff", fdr_cutoff, 0.0, 1.0)
    _check_range("var_cutoff_atac", var_cutoff_atac, 0.0, 1.0, allow_none=True)
    _check_range("var_cutoff_rna", var_cutoff_rna, 0.0, 1.0, allow_none=True)
    correlation = links["correlation"].to_numpy(dtype=np.float64)
    fdr = links["fdr"].to_numpy(dtype=np.float64)
    # Comparisons with NaN are False, so NaN never passes.
    keep = (np.abs(correlation) >= cor_cutoff) & (fdr <= fdr_cutoff)
    if var_cutoff_atac is not None:
        keep &= links["var_q_atac"].to_numpy(dtype=np.float64) > var_cutoff_atac
    if var_cutoff_rna is not None:
        keep &= links["var_q_rna"].to_numpy(dtype=np.float64) > var_cutoff_rna
    if positive_only:
        keep &= correlation > 0
    return keep


def filter_links(
    links: pd.DataFrame,
    *,
    cor_cutoff: float = 0.45,
    fdr_cutoff: float = 1e-4,
    var_cutoff_atac: float | None = 0.25,
    var_cutoff_rna: float | None = 0.25,
    positive_only: bool = False,
) -> pd.DataFrame:
    """Keep the confident links, with ArchR's ``getPeak2GeneLinks`` semantics and defaults.

    A pair is kept when ``|correlation| >= cor_cutoff`` and ``fdr <= fdr_cutoff``, then
    ``var_q_atac > var_cutoff_atac`` and ``var_q_rna > var_cutoff_rna``. NaN never passes.

    Parameters
    ----------
    links
        Output of :func:`p2g_dask.tl.links.peak_to_gene`.
    cor_cutoff
        Smallest absolute correlation (ArchR's ``corCutOff``, 0.45), in [0, 1].
    fdr_cutoff
        Largest FDR (ArchR's ``FDRCutOff``, 1e-4), in [0, 1].
    var_cutoff_atac, var_cutoff_rna
        Variance quantile cut-offs (ArchR's ``varCutOffATAC`` / ``varCutOffRNA``, 0.25), in
        [0, 1]; ``None`` skips that filter (and the column is then not needed).
    positive_only
        Keep only positive correlations (then ``correlation >= cor_cutoff``).

    Returns
    -------
    pandas.DataFrame
        The kept rows (index kept), with ``attrs`` kept and the cut-offs in
        ``attrs['filter_links']``.

    Examples
    --------
    >>> import pandas as pd
    >>> links = pd.DataFrame({"correlation": [0.5, -0.6, 0.44, float("nan")], "fdr": [1e-5, 1e-6, 1e-9, 0.0],
    ...                       "var_q_atac": [0.9, 0.9, 0.9, 0.9], "var_q_rna": [0.5, 0.5, 0.5, 0.5]})
    >>> filter_links(links).index.tolist(), filter_links(links, positive_only=True).index.tolist()
    ([0, 1], [0])
    """
    cutoffs = {"cor_cutoff": cor_cutoff, "fdr_cutoff": fdr_cutoff, "var_cutoff_atac": var_cutoff_atac,
               "var_cutoff_rna": var_cutoff_rna, "positive_only": positive_only}
    kept = links.loc[passing_links(links, **cutoffs)].copy()
    kept.attrs = dict(links.attrs)
    kept.attrs["filter_links"] = cutoffs
    return kept


def _summary(links: pd.DataFrame, by: str) -> pd.DataFrame:
    require_columns(links, LINKS, argument="links", columns=[by, "correlation", "distance"])
    if links.empty:
        return pd.DataFrame(columns=["n_links", "max_correlation", "strongest_r", "nearest_distance"]).rename_axis(by)
    table = links[[by, "correlation", "distance"]].copy()
    table["abs_r"] = table["correlation"].abs()
    table["abs_distance"] = table["distance"].abs()
    grouped = table.groupby(by, sort=True, observed=True)
    strongest = table.loc[grouped["abs_r"].idxmax().dropna(), [by, "correlation"]].set_index(by)["correlation"]
    out = pd.DataFrame(
        {
            "n_links": grouped.size(),
            "max_correlation": grouped["correlation"].max(),
            "strongest_r": strongest,
            "nearest_distance": grouped["abs_distance"].min().astype(np.int64),
        }
    )
    return out.sort_values(["n_links", "max_correlation"], ascending=[False, False])


def links_per_gene(links: pd.DataFrame) -> pd.DataFrame:
    """Per gene: ``n_links``, ``max_correlation``, ``strongest_r`` (largest \\|r\\|, signed) and
    ``nearest_distance`` (smallest \\|peak centre - TSS\\| in bp), most linked genes first.

    Pass a filtered table (:func:`filter_links`) to summarise confident links.

    Examples
    --------
    >>> import pandas as pd
    >>> links = pd.DataFrame({"gene": ["A", "A", "B"], "peak": ["p1", "p2", "p1"],
    ...                       "correlation": [0.5, -0.7, 0.6], "distance": [100, -50, 2000]})
    >>> links_per_gene(links).loc["A"].tolist()
    [2.0, 0.5, -0.7, 50.0]
    """
    return _summary(links, "gene")


def links_per_peak(links: pd.DataFrame) -> pd.DataFrame:
    """Per peak: the same summary as :func:`links_per_gene`, most linked peaks first.

    Examples
    --------
    >>> import pandas as pd
    >>> links = pd.DataFrame({"gene": ["A", "B"], "peak": ["p1", "p1"],
    ...                       "correlation": [0.5, 0.6], "distance": [100, -50]})
    >>> int(links_per_peak(links).loc["p1", "n_links"])
    2
    """
    return _summary(links, "peak")
