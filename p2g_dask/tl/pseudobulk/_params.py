"""The parameters of :func:`p2g_dask.tl.pseudobulk_with_fragments`, validated once."""

from __future__ import annotations

import dataclasses

import numpy as np

from p2g_dask import _graph
from p2g_dask._variables import check_params
from p2g_dask.tl.pseudobulk._bigwig import WRITERS

STRATEGIES = ("cutsite", "fragment")
EXECUTORS = tuple(_graph.EXECUTORS)

#: Marks a parameter that does not change the pileups (left out of their checkpoint key).
_AFTER_PILEUP = {"not_in": ("pileup",)}


@dataclasses.dataclass(frozen=True)
class PseudobulkParams:
    """The parameters of :func:`pseudobulk_with_fragments` that shape its BigWigs: validated on
    creation and hashed, field by field, into the pileups' checkpoint keys.

    Examples
    --------
    >>> PseudobulkParams(groupby="lineage", shift=[4, -5]).shift
    (4, -5)
    >>> PseudobulkParams(groupby="lineage", bin_size=0)
    Traceback (most recent call last):
    ...
    ValueError: bin_size=0 must be a positive integer (1 = base-pair resolution).
    """

    groupby: str
    sample_id_col: str | None = None
    balance_clusters: bool = False
    seed: int = 0
    bigwig_strategy: str = "cutsite"
    shift: tuple[int, int] = (0, 0)
    bin_size: int = 1
    normalize_bigwig: bool = dataclasses.field(default=True, metadata=_AFTER_PILEUP)
    bigwig_writer: str = dataclasses.field(default="p2g", metadata=_AFTER_PILEUP)
    executor: str = dataclasses.field(default="dask", metadata=_AFTER_PILEUP)
    n_jobs: int = dataclasses.field(default=1, metadata=_AFTER_PILEUP)

    def __post_init__(self) -> None:
        check_params([
            (self.bigwig_strategy in STRATEGIES,
             f"bigwig_strategy={self.bigwig_strategy!r} is not known; use one of {STRATEGIES}."),
            (self.executor in EXECUTORS, f"executor={self.executor!r} is not known; use one of {EXECUTORS}."),
            (self.bigwig_writer in WRITERS, f"bigwig_writer={self.bigwig_writer!r} is not known; use one of {WRITERS}."),
            (isinstance(self.bin_size, (int, np.integer)) and self.bin_size >= 1,
             f"bin_size={self.bin_size!r} must be a positive integer (1 = base-pair resolution)."),
            (isinstance(self.n_jobs, (int, np.integer)) and self.n_jobs >= 1,
             f"n_jobs={self.n_jobs!r} must be a positive integer."),
        ])
        try:
            if len(self.shift) != 2:
                raise ValueError
            shift = (int(self.shift[0]), int(self.shift[1]))
        except (TypeError, ValueError):
            raise ValueError(f"shift={self.shift!r} must be two integers (left, right), e.g. (0, 0) or (4, -5).") from None
        object.__setattr__(self, "shift", shift)
