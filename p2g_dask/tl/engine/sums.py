"""The sums step of a plan: every metacell of a stack summed over the plan's modalities, one
streaming pass per matrix (:func:`p2g_dask.tl.engine.accumulate.membership_sums`).

A stack holds all units' metacells (one run, every group, every sample), so K groups cost one
pass; the units are rows of the sums. :class:`SelectedColumns` lets the RNA pass keep its row
blocks for a later use of the same rows (the cell-level permutations).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed, delayed

from p2g_dask._checkpoint import as_checkpoint, checkpointed_sums, modality_token
from p2g_dask.io.blocks import Rows, load
from p2g_dask.tl.engine.accumulate import membership_sums, nonzero_shares


def _select_columns(block, columns: np.ndarray):
    """A row block restricted to ``columns``, plus a last column: each row's total over all features."""
    rows = load(block).to_csr()
    selected = rows[:, columns]
    selected.sort_indices()
    dtype = selected.data.dtype if selected.data.dtype.kind in "iuf" else np.float64
    totals = np.asarray(rows.sum(axis=1, dtype=np.float64)).ravel().astype(dtype)
    # The totals go in as one more entry at the end of each row (one pass, no sparse hstack).
    ends = selected.indptr[1:]
    data = np.insert(selected.data.astype(dtype, copy=False), ends, totals)
    indices = np.insert(selected.indices.astype(np.int32, copy=False), ends, np.int32(columns.size))
    indptr = selected.indptr.astype(np.int64) + np.arange(selected.shape[0] + 1)
    return Rows(data, indices, indptr, int(columns.size) + 1)


class SelectedColumns:
    """A modality seen through :func:`_select_columns` (some columns, then each cell's total over
    all columns): what ``membership_sums`` needs of it.

    Its row blocks are made once and kept, so the real sums and any later use of the same rows
    (the cell-level permutations' chromosome pieces) read the same tasks: one pass over the matrix.
    """

    store = None
    X = None

    def __init__(self, modality: Any, columns: np.ndarray, chunk_cells: int | None = None):
        self.name, self.n_obs = modality.name, modality.n_obs
        self.n_vars = int(np.asarray(columns).size) + 1
        self._modality, self._columns, self._chunk_cells = modality, np.asarray(columns, dtype=np.int64), chunk_cells
        self._blocks = None

    def blocks(self, chunk_cells: int | None = None, *, fused: bool = False):
        if self._blocks is None:
            blocks, bounds = self._modality.blocks(self._chunk_cells, fused=True)
            token = tokenize(self.name, self._columns, bounds, [getattr(b, "key", None) for b in blocks])
            self._blocks = ([delayed(_select_columns, pure=True)(b, self._columns,
                                                                 dask_key_name=f"p2g-selected-rows-{token}-{i}")
                             for i, b in enumerate(blocks)], bounds)
        return self._blocks




def last_column(sums: np.ndarray) -> np.ndarray:
    """The last column of sums over :class:`SelectedColumns`: each metacell's total over all columns."""
    return sums[:, -1].astype(np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class PlanSums:
    """The metacell sums of a plan's modalities over a stacked membership (one pass each).

    ``atac``/``rna`` are column blocks (:class:`ColumnBlock`) with their per-metacell totals over
    all features; ``rna_columns`` are the right-side features' columns in ``rna`` (for a
    peak-peak plan, ``rna`` is None and the right side is ``atac``); ``rna_rows`` are the RNA
    row blocks kept for a later pass-free use (:class:`~p2g_dask.tl.engine.columns.SelectedColumns`),
    or None.
    """

    atac: list
    atac_totals: Delayed
    rna: list | None = None
    rna_totals: Delayed | None = None
    rna_columns: np.ndarray | None = None
    rna_rows: Any = None
    #: Names the sums' content in checkpoint keys (stable across runs when checkpointed).
    identity: str = ""

    @property
    def right(self) -> tuple[list, Delayed]:
        return (self.atac, self.atac_totals) if self.rna is None else (self.rna, self.rna_totals)

    def key(self) -> str:
        """A token of the sums in this graph (both modalities' totals keys)."""
        return tokenize(self.atac_totals.key, None if self.rna_totals is None else self.rna_totals.key)


def plan_sums(plan: Any, stack: Any, *, chunk_cells: int | None = None, split_every: int = 4, client: Any = None,
              keep_rna_rows: bool = False, checkpoint: Any = None, key: Any = None) -> PlanSums:
    """Sum a plan's modalities over every metacell of ``stack`` (one streaming pass per matrix).

    Parameters
    ----------
    plan
        A :class:`~p2g_dask.tl.engine.plan.Plan` (peak-gene: ATAC and RNA; peak-peak: ATAC).
    stack
        A :class:`~p2g_dask.tl.engine.metacells.MetacellStack`: all units' metacells are
        summed together and split by rows later.
    chunk_cells, split_every, client
        As for :func:`membership_sums`.
    keep_rna_rows
        Sum the RNA over its annotated genes plus a totals column, from row blocks that are
        kept (``rna_rows``) for a later use of the same rows, so the matrix is read once.
    checkpoint, key
        A :class:`p2g_dask._checkpoint.Checkpoint` and the parameters' part of its keys: the
        sums are saved per column block and loaded by a rerun.

    Returns
    -------
    PlanSums

    Examples
    --------
    >>> import dask, p2g_dask as p2g
    >>> from p2g_dask.tl.engine.plan import peak_peak_plan
    >>> from p2g_dask.tl.engine.metacells import MetacellStack
    >>> sim = p2g.datasets.simulate_multiome(n_cells=60, n_peaks=100, n_genes=10, n_linked_genes=1, seed=1)
    >>> sums = plan_sums(peak_peak_plan(sim.atac, max_distance=10_000), MetacellStack.of(np.array([[0, 1], [2, 3]])))
    >>> dask.compute(sums.atac_totals, scheduler="sync")[0].tolist() == [sim.atac.X[:2].sum(), sim.atac.X[2:4].sum()]
    True
    """
    membership = stack.membership(plan.n_cells)
    token = tokenize(stack.neighbours)
    options = dict(chunk_cells=chunk_cells, split_every=split_every, client=client, token=token)
    if plan.peak_peak:
        atac, atac_totals = membership_sums(plan.atac, membership, **options)
        rna = rna_totals = rna_columns = rna_rows = None
    else:
        # ATAC and RNA share the workers' lanes by their nonzeros: each sum is then held about once
        # across the cluster, not once per worker (half the memory on 2 workers, same speed).
        atac_share, rna_share = nonzero_shares(plan.atac, plan.rna)
        atac, atac_totals = membership_sums(plan.atac, membership, lane_share=atac_share, **options)
        options["first_lane"] = len(atac[0].lanes)  # RNA's lanes start on the workers after ATAC's
        rna_columns, rna_rows = plan.gene_columns, None
        if keep_rna_rows:
            # One pass: the row blocks give the real sums (columns = positions among the annotated
            # genes, then the totals) and are kept for the permutations' chromosome pieces.
            rna_rows = SelectedColumns(plan.rna, plan.gene_columns, chunk_cells)
            rna, _ = membership_sums(rna_rows, membership, lane_share=rna_share, **options)
            rna_totals = delayed(last_column, pure=True)(
                rna[-1].sums, dask_key_name=f"p2g-metacell-totals-{tokenize(rna[-1].sums.key)}")
            rna_columns = np.arange(plan.gene_columns.size)
        else:
            rna, rna_totals = membership_sums(plan.rna, membership, lane_share=rna_share, **options)
    ckpt = as_checkpoint(checkpoint)
    identity = tokenize(atac_totals.key, None if rna_totals is None else rna_totals.key)
    if ckpt is not None:
        # Keys from the data's content (not the graph's keys): a rerun in a new process finds them.
        identity = sums_key = ckpt.key(modality_token(plan.atac), None if plan.rna is None else modality_token(plan.rna),
                            stack.neighbours, key, bool(keep_rna_rows))
        atac, atac_totals = checkpointed_sums(atac, atac_totals, ckpt, ckpt.key(sums_key, "atac"))
        if rna is not None:
            rna, rna_totals = checkpointed_sums(rna, rna_totals, ckpt, ckpt.key(sums_key, "rna"))
    return PlanSums(atac, atac_totals, rna, rna_totals, rna_columns, rna_rows, identity)
