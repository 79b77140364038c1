"""The cells of a pseudobulk: each grouped cell's group and sample, from ``obs``."""

from __future__ import annotations

import pandas as pd

from p2g_dask._logging import logger


def sample_table(obs: pd.DataFrame, *, groupby: str, sample_id_col: str | None, samples: list[str]) -> pd.DataFrame:
    """Cells with a group: ``group`` (categorical, observed groups only) and ``sample``, by obs name."""
    if groupby not in obs.columns:
        raise ValueError(f"groupby={groupby!r} is not an obs column; available: {list(obs.columns)[:20]}.")
    group = obs[groupby]
    has_group = group.notna().to_numpy()
    if isinstance(group.dtype, pd.CategoricalDtype):
        order = [str(c) for c in group.cat.categories if (group == c).any()]
    else:
        order = sorted(map(str, pd.unique(group[has_group])))
    if not order:
        raise ValueError(f"groupby={groupby!r} has no non-missing values; no group to make a BigWig for.")
    if sample_id_col is None:
        if len(samples) > 1:
            raise ValueError(
                f"fragments has {len(samples)} files; pass sample_id_col, the obs column that names "
                "each cell's key in fragments."
            )
        sample = pd.Series(samples[0], index=obs.index)
    else:
        if sample_id_col not in obs.columns:
            raise ValueError(f"sample_id_col={sample_id_col!r} is not an obs column; available: {list(obs.columns)[:20]}.")
        sample = obs[sample_id_col].astype(str)
        unknown = sorted(set(sample[has_group]) - set(samples))
        if unknown:
            raise ValueError(
                f"sample_id_col={sample_id_col!r} has samples {unknown[:10]} that are not keys of "
                f"fragments ({samples}); add their files or fix the keys."
            )
    cells = pd.DataFrame(
        {"group": pd.Categorical(group[has_group].astype(str), categories=order),
         "sample": sample[has_group].to_numpy()},
        index=obs.index[has_group].astype(str),
    )
    logger.info("%d cells in %d groups of %r", len(cells), len(order), groupby)
    return cells
