"""The parameters of the metacell-correlation tools: validated on creation, recorded in
``attrs['params']`` and hashed, field by field, into the checkpoint keys.

:class:`MetacellParams` holds what every tool on the engine shares (the metacells, the
normalisation, the summing); each tool adds its own fields.
"""

from __future__ import annotations

import dataclasses

from p2g_dask._variables import check_max_distance, check_metacell_params, check_params

#: Marks a parameter that does not change the metacell sums (left out of their checkpoint key).
AFTER_SUMS = {"not_in": ("sums",)}


@dataclasses.dataclass(frozen=True)
class MetacellParams:
    """The fields of every metacell-correlation tool (ArchR's defaults).

    Examples
    --------
    >>> MetacellParams(k_neighbors=1)
    Traceback (most recent call last):
    ...
    ValueError: k_neighbors=1 must be >= 2.
    """

    use_rep: str = "X_iterative_lsi"
    n_metacells: int = 500
    k_neighbors: int = 100
    max_distance: int = dataclasses.field(default=250_000, metadata=AFTER_SUMS)
    overlap_cutoff: float = 0.8
    scale_to: float = dataclasses.field(default=1e4, metadata=AFTER_SUMS)
    seed: int = 1
    precomputed_metacells: bool = False
    chunk_cells: int | None = None
    split_every: int = 4

    #: Fields converted to their type on creation (a numpy integer becomes an int).
    _TYPES = (("n_metacells", int), ("k_neighbors", int), ("overlap_cutoff", float), ("scale_to", float),
              ("seed", int), ("split_every", int), ("precomputed_metacells", bool))

    def __post_init__(self) -> None:
        for name, kind in self._TYPES:
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "max_distance", check_max_distance(self.max_distance))
        check_metacell_params(self.n_metacells, self.k_neighbors, self.overlap_cutoff)
        check_params([
            (self.scale_to > 0, f"scale_to={self.scale_to} must be positive, e.g. 1e4 (ArchR's scaleTo)."),
            (self.split_every >= 2, f"split_every={self.split_every} must be at least 2, e.g. 4."),
            (self.chunk_cells is None or self.chunk_cells >= 1,
             f"chunk_cells={self.chunk_cells} must be a positive number of cells, or None."),
        ])


@dataclasses.dataclass(frozen=True)
class PeakToGeneParams(MetacellParams):
    """Every parameter of :func:`p2g_dask.tl.peak_to_gene` that shapes its result.

    Examples
    --------
    >>> PeakToGeneParams(max_distance=1000).max_distance
    1000
    >>> PeakToGeneParams(permute="genes")
    Traceback (most recent call last):
    ...
    ValueError: permute='genes' must be 'cells' or 'metacells'.
    """

    gene_obsm: str | None = None
    #: Links per group and sample (tl/links/groups.py).
    groupby: str | None = None
    sample_key: str | None = None
    min_group_cells: int | None = None
    min_metacells: int = 30
    #: The layers: extra columns only, the sums are unchanged (but the cell-level permutations
    #: read the RNA through its annotated genes, so ``n_permutations`` stays in the sums' key).
    replication: bool = dataclasses.field(default=False, metadata=AFTER_SUMS)
    empirical_pval: bool = dataclasses.field(default=False, metadata=AFTER_SUMS)
    n_permutations: int = 0
    permute: str = "cells"

    _TYPES = MetacellParams._TYPES + (("n_permutations", int), ("min_metacells", int), ("replication", bool),
                                      ("empirical_pval", bool))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params([
            (self.n_permutations >= 0, f"n_permutations={self.n_permutations} must be >= 0, e.g. 100."),
            (self.permute in ("cells", "metacells"), f"permute={self.permute!r} must be 'cells' or 'metacells'."),
            (not self.replication or self.sample_key is not None,
             "replication=True needs sample_key= (the obs column naming each cell's sample)."),
            (self.min_metacells >= 3, f"min_metacells={self.min_metacells} must be >= 3 (correlations need 3)."),
        ])

    @property
    def grouped(self) -> bool:
        return self.groupby is not None or self.sample_key is not None


@dataclasses.dataclass(frozen=True)
class CoAccessibilityParams(MetacellParams):
    """Every parameter of :func:`p2g_dask.tl.co_accessibility` that shapes its result.

    Examples
    --------
    >>> CoAccessibilityParams().max_distance
    100000
    >>> CoAccessibilityParams(max_distance=0)
    Traceback (most recent call last):
    ...
    ValueError: max_distance=0 must be a positive number of bp (ArchR: 250000).
    """

    max_distance: int = dataclasses.field(default=100_000, metadata=AFTER_SUMS)
