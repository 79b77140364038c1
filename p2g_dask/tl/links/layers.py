"""Layers of a links run: each adds columns to every unit's table (with or without ``groupby``).

A layer sees the run (:class:`LinkRun`: plan, metacell stack, sums, chromosome columns and the
correlate step's results), adds its tasks to the graph (:meth:`Layer.graph`, one value per unit,
computed in the same pass as the links) and, on the client, its columns to each unit's numbers
(:meth:`Layer.add`) and its record to ``attrs`` (:meth:`Layer.record`).

| layer | option | columns |
| --- | --- | --- |
| :class:`~p2g_dask.tl.links.empirical.EmpiricalNull` | ``empirical_pval=True`` | ``emp_pval, emp_fdr`` |
| :class:`~p2g_dask.tl.links.permutations.PermutationNull` | ``n_permutations=N`` | ``perm_pval, perm_fdr`` |
| :class:`~p2g_dask.tl.links.replication.Replication` | ``replication=True`` | ``n_samples, n_samples_sig, replication_pval`` |
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import pandas as pd

from p2g_dask.tl.links.empirical import EmpiricalNull
from p2g_dask.tl.links.permutations import PermutationNull
from p2g_dask.tl.links.replication import Replication


@dataclasses.dataclass(frozen=True, eq=False)
class LinkRun:
    """What a layer builds on: the run's plan, stack, sums, columns, correlations and parameters."""

    plan: Any
    stack: Any
    sums: Any
    columns: list
    correlations: list
    params: Any
    token: str


class Layer(Protocol):
    """A layer (see the module docstring)."""

    name: str
    #: Whether the sums must keep the RNA row blocks (``plan_sums(keep_rna_rows=True)``).
    needs_rna_rows: bool

    def graph(self, run: LinkRun) -> list:
        """Lazy values, one per unit, computed with the links."""

    def add(self, stats: pd.DataFrame, value: Any) -> pd.DataFrame:
        """A unit's numbers with this layer's columns."""

    def record(self, values: list, groups: tuple) -> dict:
        """Entries for ``attrs`` from every unit's value."""


def requested_layers(params: Any, stack: Any) -> list[Layer]:
    """The layers a :class:`~p2g_dask.tl.links.params.PeakToGeneParams` asks for, in column order.

    Every layer works with and without groups; a request that cannot work raises here, before
    any heavy work, naming the argument and the fix.

    Examples
    --------
    >>> from p2g_dask.tl.links.params import PeakToGeneParams
    >>> from p2g_dask.tl.engine.metacells import MetacellStack
    >>> import numpy as np
    >>> stack = MetacellStack.of(np.array([[0, 1], [2, 3], [4, 5]]))
    >>> [layer.name for layer in requested_layers(PeakToGeneParams(empirical_pval=True, n_permutations=2), stack)]
    ['empirical', 'permutation']
    """
    layers: list[Layer] = []
    if params.empirical_pval:
        layers.append(EmpiricalNull())
    if params.n_permutations:
        layers.append(PermutationNull(params.n_permutations, params.permute))
    if params.replication:
        if stack.samples is None:
            raise ValueError("replication=True needs sample_key= (the obs column naming each cell's sample).")
        layers.append(Replication())
    return layers
