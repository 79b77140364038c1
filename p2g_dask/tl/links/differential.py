"""``differential_links``: is a peak-gene link stronger in one group than in another?

Fisher's z test of two independent correlations, ``z = (atanh r1 - atanh r2) /
sqrt(1 / (n1 - 3) + 1 / (n2 - 3))``, with an *effective* number of metacells per group: kNN
metacells overlap (ArchR keeps metacells sharing up to 80 % of their cells), so their count
overstates the independent observations. The effective size is the number of distinct cells in
the group's metacells divided by the metacell size k (how many disjoint metacells those cells
could form), capped at the number of metacells. docs/groups.md shows it calibrated.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from p2g_dask._tables import GROUP_LINKS, require_columns
from p2g_dask.tl.engine.kernels import benjamini_hochberg


def effective_metacells(neighbours) -> float:
    """Effective number of independent metacells: distinct cells / k, at most the metacell count.

    Parameters
    ----------
    neighbours
        ``(n_metacells, k)`` cell positions of one group's metacells.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> effective_metacells(np.array([[0, 1], [1, 2], [2, 3], [0, 3]]))
    2.0
    """
    neighbours = np.asarray(neighbours)
    n_metacells, k = neighbours.shape
    return float(min(n_metacells, np.unique(neighbours).size / k))


def differential_links(
    data: pd.DataFrame,
    group1: str,
    group2: str,
    *,
    n_effective: dict | None = None,
) -> pd.DataFrame:
    """Fisher z-test of r in ``group1`` versus r in ``group2`` for every pair tested in both.

    Parameters
    ----------
    data
        Links with a ``group`` column from ``peak_to_gene(..., groupby=...)``; its
        ``attrs['metacells']`` (dict group -> membership) gives each group's effective size.
    group1, group2
        The two groups compared (``delta_r = r1 - r2``).
    n_effective
        Optional dict group -> effective number of metacells, overriding
        :func:`effective_metacells` of ``attrs['metacells']``.

    Returns
    -------
    pandas.DataFrame
        ``peak, gene, chrom, distance, correlation_1, correlation_2, delta_r, z, pval, fdr``
        (BH over the compared pairs), sorted by ``pval``; ``attrs['n_effective']`` holds the two
        effective sizes used.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> links = pd.DataFrame({"group": ["a", "a", "b", "b"], "peak": ["p1", "p2", "p1", "p2"],
    ...                       "gene": ["g", "g", "g", "g"], "chrom": "chr1", "distance": [5, 9, 5, 9],
    ...                       "correlation": [0.8, 0.1, 0.0, 0.1]})
    >>> out = differential_links(links, "a", "b", n_effective={"a": 50, "b": 50})
    >>> out["peak"].tolist(), bool(out["pval"].iloc[0] < 1e-5)
    (['p1', 'p2'], True)
    """
    require_columns(data, GROUP_LINKS, argument="data",
                    columns=["group", "peak", "gene", "chrom", "distance", "correlation"])
    present = set(data["group"].astype(str))
    for name, value in (("group1", group1), ("group2", group2)):
        if str(value) not in present:
            raise ValueError(f"{name}={value!r} is not a group of the links; choose one of {sorted(present)}.")
    if str(group1) == str(group2):
        raise ValueError(f"group1 and group2 are both {group1!r}; compare two different groups.")
    sizes = {}
    for g in (str(group1), str(group2)):
        if n_effective is not None and g in n_effective:
            sizes[g] = float(n_effective[g])
        else:
            memberships = data.attrs.get("metacells")
            if not isinstance(memberships, dict) or g not in memberships:
                raise ValueError(f"no metacells for group {g!r} in data.attrs['metacells']; "
                                 f"pass n_effective={{{g!r}: n}}.")
            sizes[g] = effective_metacells(memberships[g])
        if sizes[g] <= 3:
            raise ValueError(f"group {g!r} has {sizes[g]:.1f} effective metacells; the z test needs more than 3.")
    keys = ["peak", "gene"]
    first = data.loc[data["group"].astype(str) == str(group1), keys + ["chrom", "distance", "correlation"]].copy()
    second = data.loc[data["group"].astype(str) == str(group2), keys + ["correlation"]].copy()
    # Plain tables: attrs with arrays (memberships) make pandas' attrs comparison in merge fail.
    first.attrs, second.attrs = {}, {}
    table = first.merge(second, on=keys, suffixes=("_1", "_2"))
    r1, r2 = (np.clip(table[c].to_numpy(dtype=np.float64), -1 + 1e-12, 1 - 1e-12)
              for c in ("correlation_1", "correlation_2"))
    se = np.sqrt(1 / (sizes[str(group1)] - 3) + 1 / (sizes[str(group2)] - 3))
    table["delta_r"] = r1 - r2
    table["z"] = (np.arctanh(r1) - np.arctanh(r2)) / se
    table["pval"] = 2 * stats.norm.sf(np.abs(table["z"].to_numpy()))
    table["fdr"] = benjamini_hochberg(table["pval"].to_numpy())
    table = table.sort_values("pval", kind="stable").reset_index(drop=True)
    table.attrs = {"n_effective": sizes, "group1": str(group1), "group2": str(group2)}
    return table
