"""The parameters of :func:`p2g_dask.tl.iterative_lsi`, listed once: validation, fit arguments, record."""

from __future__ import annotations

import dataclasses

import numpy as np

from p2g_dask._variables import check_params, params_record


@dataclasses.dataclass(frozen=True)
class LSIParams:
    """Every parameter of :func:`iterative_lsi` that shapes the embedding: validated on creation,
    recorded in ``uns[key_added]['params']`` and hashable field by field.

    Examples
    --------
    >>> LSIParams(n_components=10, var_features=100).n_components
    10
    >>> LSIParams(iterations=0)
    Traceback (most recent call last):
    ...
    ValueError: iterations=0 must be at least 1 (ArchR uses 2).
    """

    n_components: int = 30
    iterations: int = 2
    var_features: int = 25_000
    resolution: float = 0.5
    n_neighbors: int = 30
    sample_cells_pre: int | None = 10_000
    sample_cells_final: int | None = None
    depth_col: str = "n_fragment"
    seed: int = 1
    scale_to: float = 1e4
    binarize: bool = True
    scale_dims: bool = True
    cor_cutoff: float = 0.75
    outlier_quantiles: tuple[float, float] | None = (0.02, 0.98)
    filter_quantile: float = 0.995
    total_features: int = 500_000
    key_added: str = "X_iterative_lsi"

    def __post_init__(self) -> None:
        n = self.n_components
        checks = [
            (n >= 2, f"n_components={n} must be at least 2 (ArchR uses 30)."),
            (self.iterations >= 1, f"iterations={self.iterations} must be at least 1 (ArchR uses 2)."),
            (self.var_features > n, f"var_features={self.var_features} must exceed n_components={n}."),
            (self.resolution > 0, f"resolution={self.resolution} must be positive, e.g. 0.5."),
            (self.n_neighbors >= 2, f"n_neighbors={self.n_neighbors} must be at least 2, e.g. 30."),
            (self.sample_cells_pre is None or self.sample_cells_pre > n,
             f"sample_cells_pre={self.sample_cells_pre} must exceed n_components (None: all cells)."),
            (0 < self.cor_cutoff <= 1, f"cor_cutoff={self.cor_cutoff} must lie in (0, 1]; ArchR uses 0.75."),
            (0 < self.filter_quantile <= 1,
             f"filter_quantile={self.filter_quantile} must lie in (0, 1]; ArchR uses 0.995."),
            (self.total_features >= self.var_features,
             f"total_features={self.total_features} must be >= var_features={self.var_features}."),
            (self.scale_to > 0, f"scale_to={self.scale_to} must be positive, e.g. 1e4."),
        ]
        quantiles = self.outlier_quantiles
        if quantiles is not None:
            lo, hi = (tuple(quantiles) + (None, None))[:2]
            checks.append((
                len(quantiles) == 2 and lo is not None and 0 <= lo < hi <= 1,
                f"outlier_quantiles={quantiles} must be (low, high) with 0 <= low < high <= 1, "
                "e.g. (0.02, 0.98), or None to fit on every sampled cell.",
            ))
        final = self.sample_cells_final
        checks.append((final is None or final > n,
                       f"sample_cells_final={final} must exceed n_components, or be None (all cells)."))
        check_params(checks)
        if quantiles is not None:
            object.__setattr__(self, "outlier_quantiles", (float(quantiles[0]), float(quantiles[1])))

    def fit_kw(self) -> dict:
        """The arguments of one fit (``lsi._fit``)."""
        return dict(n_components=self.n_components, scale_to=self.scale_to, binarize=self.binarize,
                    outlier_quantiles=self.outlier_quantiles, seed=self.seed)
