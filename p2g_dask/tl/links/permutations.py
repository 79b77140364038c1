"""Permutation null of peak-to-gene links: ``perm_pval`` and a pooled ``perm_fdr`` that stays valid
when metacells overlap (``permute="cells"``), and ArchR's metacell-order shuffle (``"metacells"``).

``permute="cells"``: permutation ``k`` gives cell ``c`` the RNA profile of cell ``pi_k(c)``; metacell
``j`` then sums the RNA rows ``pi_k(members(j))``, i.e. the RNA matrix summed over the membership
mapped through ``pi_k``. The RNA matrix is read ONCE: each row block, restricted to the annotated
genes plus one column of each cell's total over all genes (the normalisation's denominator), feeds
both the real metacell sums (:func:`p2g_dask.tl.engine.sums.plan_sums` with ``keep_rna_rows``) and
one piece per chromosome. Each chromosome task (``p2g-permute-*``) stacks its pieces (that chromosome's genes only)
and sums the permuted memberships over them with the same kernel, a batch of permutations at a
time (``batch_bytes``, 32 MiB, of sums), then recomputes r of every candidate pair under each permutation
and only COUNTS how many permuted statistics reach each observed one (one int64 array of length
pairs + 1). Memory is the annotated RNA nonzeros (held by the chromosome tasks, spillable by Dask
workers) plus one batch of sums: it does not grow with N.

The p value is a decreasing function of ``|r|`` at a fixed number of metacells, so "permuted
p <= observed p" is counted as "permuted ``|r|`` >= observed ``|r|``" (the same events, without
N x pairs p-value evaluations; exact where p underflows to 0). With ``C(p)`` that count, ``n(p)``
the observed p-values <= p and ``N x P`` the pooled permuted statistics (``P`` pairs with a defined
permuted r per permutation)::

    perm_pval = (1 + C(p)) / (1 + N * P)
    perm_fdr  = min over p' >= p of (C(p') / N) / n(p'), capped at 1

With ``groupby`` every group is a unit: the permutations shuffle cells within each group (and
sample: a permuted metacell keeps its stratum's cells), all groups' metacells are summed under
each permutation in the same kernel call, and each group counts against its own observed
statistics, so ``perm_fdr`` is pooled within the group (``attrs['permutation']`` per group).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import delayed

from p2g_dask import _graph
from p2g_dask.io.blocks import Rows, load
from p2g_dask.tl.engine.kernels import metacell_sum_block, pair_correlation_t, standardized_features
from p2g_dask.tl.engine.metacells import metacell_membership

PERMUTE = ("cells", "metacells")
#: Permuted sums a chromosome task holds at once (a batch of permutations): bounds memory whatever N.
BATCH_BYTES = 32 * 2**20


def cell_permutation(rng: np.random.Generator, n_cells: int, strata: np.ndarray | None) -> np.ndarray:
    """A permutation of the cells, within each stratum when ``strata`` are given.

    Examples
    --------
    >>> pi = cell_permutation(np.random.default_rng(0), 6, np.array([0, 0, 0, 1, 1, 1]))
    >>> sorted(pi[:3].tolist()), sorted(pi[3:].tolist())
    ([0, 1, 2], [3, 4, 5])
    """
    if strata is None:
        return rng.permutation(n_cells)
    permutation = np.arange(n_cells)
    for stratum in np.unique(strata):
        cells = np.flatnonzero(strata == stratum)
        permutation[cells] = cells[rng.permutation(cells.size)]
    return permutation


def permuted_neighbours(neighbours: np.ndarray, n_cells: int, n_permutations: int, seed: int,
                        strata: np.ndarray | None = None) -> list[np.ndarray]:
    """The membership mapped through ``n_permutations`` seeded cell permutations: ``pi_k[neighbours]``.

    Examples
    --------
    >>> [p.shape for p in permuted_neighbours(np.array([[0, 1], [1, 2]]), 3, 2, seed=1)]
    [(2, 2), (2, 2)]
    """
    return [nb for batch in permutation_batches(neighbours, n_cells, n_permutations, seed, 1, strata) for nb in batch]


def permutation_batches(neighbours: np.ndarray, n_cells: int, n_permutations: int, seed: int, batch: int,
                        strata: np.ndarray | None = None):
    """:func:`permuted_neighbours` made ``batch`` at a time (the same sequence, never all N at once)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    neighbours = np.asarray(neighbours, dtype=np.int64)
    for first in range(0, int(n_permutations), int(batch)):
        yield [cell_permutation(rng, n_cells, strata)[neighbours]
               for _ in range(min(int(batch), int(n_permutations) - first))]


def metacell_orders(n_metacells: int, n_permutations: int, seed: int, unit: int | None = None) -> list[np.ndarray]:
    """ArchR's null: ``n_permutations`` seeded shuffles of the ATAC metacell order (shared by all
    chromosomes); ``unit`` gives each group its own draws."""
    entropy = [int(seed), 2] if unit is None else [int(seed), 2, int(unit)]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    return [rng.permutation(n_metacells) for _ in range(int(n_permutations))]


def _score(correlation) -> np.ndarray:
    """``-|r|``: ordered as the p values are (smaller is more significant), NaN where r is."""
    return -np.abs(np.asarray(correlation, dtype=np.float64))


def _sorted_scores(*results: tuple) -> np.ndarray:
    """The scores of a unit's pairs with a defined r (from its correlate results), ascending."""
    score = _score(np.concatenate([r[0] for r in results])) if results else np.empty(0)
    return np.sort(score[np.isfinite(score)])


def _bin_counts(r: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Permuted scores binned between the sorted observed ones (NaN r dropped)."""
    score = _score(r)
    score = np.sort(score[np.isfinite(score)])  # sorted keys: the search walks ``observed`` in order
    return np.bincount(np.searchsorted(observed, score, side="left"), minlength=observed.size + 1)


def _chromosome_pieces(block, columns: list[np.ndarray]) -> tuple[list[sp.csr_matrix], np.ndarray]:
    """A :func:`_select_columns` block cut into one CSR piece per chromosome (``columns`` each),
    and its cells' totals (the block's last column).

    One conversion to CSC makes every cut a major-axis selection: O(nonzeros) for the block
    in all, not per chromosome.
    """
    by_column = load(block).to_csr().tocsc()
    totals = by_column[:, by_column.shape[1] - 1].toarray().ravel().astype(np.float64)
    return [by_column[:, cols].tocsr() for cols in columns], totals


def _piece(split: tuple, index: int) -> sp.csr_matrix:
    # Its own task, so only this chromosome's piece moves to the worker that needs it.
    return split[0][index]


def _unit_standardized(sums, totals, units: list[slice], scale_to: float) -> list[np.ndarray]:
    return [standardized_features(sums[rows], np.asarray(totals)[rows], scale_to)[0] for rows in units]


def _count_cells_chromosome(atac_sums, atac_totals, pairs, units: list[slice], neighbours: np.ndarray,
                            strata: np.ndarray | None, n_permutations: int, seed: int, observed: list,
                            scale_to: float, batch_bytes: int, cell_totals: np.ndarray,
                            *pieces: sp.csr_matrix) -> list[np.ndarray]:
    """Permuted-r counts of one chromosome, per unit, under ``n_permutations`` cell permutations."""
    counts = [np.zeros(o.size + 1, dtype=np.int64) for o in observed]
    local_peak, local_gene = pairs
    if local_peak.size == 0:
        return counts
    m = neighbours.shape[0]
    atac_t = _unit_standardized(atac_sums, atac_totals, units, scale_to)
    rows = Rows.of(sp.vstack(pieces, format="csr"))
    n_cells, n_genes = rows.n_rows, rows.n_vars
    # A batch of permutations summed in one kernel call: batch_bytes of sums, whatever N; every
    # unit's metacells (all rows of the stack) are summed under the same permutation.
    batch = max(1, min(n_permutations, int(batch_bytes // max(1, m * n_genes * 4))))
    for permuted in permutation_batches(neighbours, n_cells, n_permutations, seed, batch, strata):
        members = sp.vstack([metacell_membership(nb, n_cells) for nb in permuted], format="csr")
        members.sort_indices()
        sums = metacell_sum_block(rows, members.indptr, members.indices, members.shape[0], np.float32)
        totals = members @ cell_totals
        for k in range(len(permuted)):
            block, block_totals = sums[k * m:(k + 1) * m], totals[k * m:(k + 1) * m]
            for unit, unit_rows in enumerate(units):
                rna_t, _ = standardized_features(block[unit_rows], block_totals[unit_rows], scale_to)
                counts[unit] += _bin_counts(pair_correlation_t(atac_t[unit], rna_t, local_peak, local_gene),
                                            observed[unit])
    return counts


def _count_metacells_chromosome(atac_sums, atac_totals, rna_sums, rna_totals, pairs, units: list[slice],
                                orders: list[list[np.ndarray]], observed: list, scale_to: float) -> list[np.ndarray]:
    """Permuted-r counts of one chromosome, per unit, with its ATAC metacells shuffled (ArchR's null)."""
    counts = [np.zeros(o.size + 1, dtype=np.int64) for o in observed]
    local_peak, local_gene = pairs
    if local_peak.size == 0:
        return counts
    atac_t = _unit_standardized(atac_sums, atac_totals, units, scale_to)
    rna_t = _unit_standardized(rna_sums, rna_totals, units, scale_to)
    for unit in range(len(units)):
        for order in orders[unit]:
            counts[unit] += _bin_counts(pair_correlation_t(np.ascontiguousarray(atac_t[unit][:, order]), rna_t[unit],
                                                           local_peak, local_gene), observed[unit])
    return counts


def _block_totals(split: tuple) -> np.ndarray:
    return split[1]


def _cell_totals(*block_totals: np.ndarray) -> np.ndarray:
    return np.concatenate(block_totals)


def _add_counts(*parts: list) -> list:
    return [np.sum(unit, axis=0) for unit in zip(*parts)]


def _unit_counts(counts: list, unit: int) -> np.ndarray:
    return counts[unit]


class PermutationNull:
    """The permutation layer (``n_permutations=N``): ``perm_pval``, ``perm_fdr`` per unit."""

    name = "permutation"

    def __init__(self, n_permutations: int, permute: str = "cells", batch_bytes: int | None = None):
        self.n_permutations, self.permute = int(n_permutations), permute
        self.batch_bytes = BATCH_BYTES if batch_bytes is None else int(batch_bytes)
        #: The cell-level permutations re-use the RNA pass's row blocks.
        self.needs_rna_rows = permute == "cells"

    def graph(self, run: Any) -> list:
        """Per unit, the lazy binned counts of the permuted statistics (``p2g-permute-*`` tasks)."""
        plan, sums, stack, params, token = run.plan, run.sums, run.stack, run.params, run.token
        units = stack.unit_slices()
        observed = [delayed(_sorted_scores, pure=True)(*results, dask_key_name=f"p2g-permute-observed-{tokenize(token, u)}")
                    for u, results in enumerate(run.correlations)]
        chromosomes = [(c, g) for c, g in zip(plan.chromosomes, run.columns) if c.n_pairs]
        if self.permute == "cells":
            row_blocks, _ = sums.rna_rows.blocks()
            cut = [sums.rna_columns[c.right] for c, _ in chromosomes]
            split = [delayed(_chromosome_pieces, pure=True)(block, cut, dask_key_name=f"p2g-permute-split-{tokenize(token, i)}")
                     for i, block in enumerate(row_blocks)]
            # Each block's totals are taken where the block was split: only those vectors move.
            cell_totals = delayed(_cell_totals, pure=True)(
                *[delayed(_block_totals, pure=True)(s, dask_key_name=f"p2g-permute-blocktotals-{tokenize(token, i)}")
                  for i, s in enumerate(split)], dask_key_name=f"p2g-permute-celltotals-{token}")
        else:
            orders = [metacell_orders(rows.stop - rows.start, self.n_permutations, params.seed,
                                      None if not stack.grouped else u) for u, rows in enumerate(units)]
        parts = []
        for index, (chrom, gathered) in enumerate(chromosomes):
            chrom_token = tokenize(token, chrom.name, self.permute, self.n_permutations, params.seed)
            if self.permute == "cells":
                pieces = [delayed(_piece, pure=True)(pieces_of_block, index,
                                                     dask_key_name=f"p2g-permute-piece-{tokenize(chrom_token, i)}")
                          for i, pieces_of_block in enumerate(split)]
                part = delayed(_count_cells_chromosome, pure=True)(
                    gathered.left, sums.atac_totals, gathered.pairs, units, stack.neighbours, stack.strata,
                    self.n_permutations, params.seed, observed, params.scale_to, self.batch_bytes, cell_totals,
                    *pieces, dask_key_name=f"p2g-permute-{chrom_token}")
            else:
                part = delayed(_count_metacells_chromosome, pure=True)(
                    gathered.left, sums.atac_totals, gathered.right, sums.rna_totals, gathered.pairs, units, orders,
                    observed, params.scale_to, dask_key_name=f"p2g-permute-{chrom_token}")
            parts.append(part)
        counts = _graph.tree_sum(parts, "permute-counts", token, split_every=params.split_every, combine=_add_counts)
        return [delayed(_unit_counts, pure=True)(counts, u, dask_key_name=f"p2g-permute-unit-{tokenize(token, u)}")
                for u in range(len(units))]

    def add(self, stats: pd.DataFrame, counts: np.ndarray) -> pd.DataFrame:
        """``stats`` with ``perm_pval`` and ``perm_fdr`` from the unit's binned counts."""
        stats["perm_pval"], stats["perm_fdr"] = pooled_permutation_fdr(_score(stats["correlation"]), counts,
                                                                       self.n_permutations)
        return stats

    def record(self, values: list, groups: tuple) -> dict:
        """``attrs['permutation']``: the kind, N and the pooled number of null statistics (per group)."""
        records = [{"permute": self.permute, "n_permutations": self.n_permutations,
                    "n_null_pvalues": int(np.sum(counts))} for counts in values]
        return {"permutation": records[0] if groups == (None,) else dict(zip(groups, records))}


def pooled_permutation_fdr(pval: np.ndarray, counts: np.ndarray, n_permutations: int) -> tuple[np.ndarray, np.ndarray]:
    """``perm_pval`` and ``perm_fdr`` of observed ``pval`` from the binned permuted counts.

    ``pval`` is any statistic where smaller is more significant (p, or ``-|r|``); ``counts[i]`` is
    the number of permuted statistics in ``(sorted[i-1], sorted[i]]`` over the sorted defined
    observed ones; NaN gives NaN.

    Examples
    --------
    >>> pv, fdr = pooled_permutation_fdr(np.array([0.01, 0.5]), np.array([0, 2, 2]), 2)
    >>> pv.tolist(), fdr.tolist()
    ([0.2, 0.6], [0.0, 0.5])
    """
    pval = np.asarray(pval, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(pval))
    order = valid[np.argsort(pval[valid], kind="stable")]
    ranked = pval[order]
    below = np.cumsum(counts[: ranked.size])  # permuted p <= each sorted observed p
    n_observed = np.searchsorted(ranked, ranked, side="right")  # observed p <= it
    fdr = (below / n_permutations) / np.maximum(n_observed, 1)
    fdr = np.minimum(np.minimum.accumulate(fdr[::-1])[::-1], 1.0)
    out_p, out_fdr = np.full(pval.shape, np.nan), np.full(pval.shape, np.nan)
    out_p[order] = (1.0 + below) / (1.0 + np.sum(counts))
    out_fdr[order] = fdr
    return out_p, out_fdr
