"""Permutation null of peak-to-gene links: ``perm_pval`` and a pooled ``perm_fdr`` that stays valid
when metacells overlap (``permute="cells"``), and ArchR's metacell-order shuffle (``"metacells"``).

``permute="cells"``: permutation ``k`` gives cell ``c`` the RNA profile of cell ``pi_k(c)``; metacell
``j`` then sums the RNA rows ``pi_k(members(j))``, i.e. the RNA matrix summed over the membership
mapped through ``pi_k``. The real membership and the N permuted ones are stacked and summed in the
SAME single streaming pass over the RNA matrix (:func:`p2g_dask.tl.aggregate.membership_sums`),
restricted to the annotated genes plus one column of each cell's total over all genes (the
normalisation's denominator). The cost is ``(N + 1) x metacells x (annotated genes + 1)`` float32
sums (e.g. N = 100, 500 metacells, 20,000 genes: 4 GB), held in column blocks of ``block_bytes``.

Each chromosome task (``p2g-permute-*``) recomputes r, t, p of every candidate pair under each
permutation and only COUNTS, per observed p, how many permuted p are <= it (one int64 array of
length pairs + 1): memory does not grow with N. Then, with ``C(p)`` that count, ``n(p)`` the
observed p-values <= p and ``N x P`` the pooled permuted p-values (``P`` pairs with a defined
permuted p per permutation)::

    perm_pval = (1 + C(p)) / (1 + N * P)
    perm_fdr  = min over p' >= p of (C(p') / N) / n(p'), capped at 1
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import delayed

from p2g_dask import _graph
from p2g_dask.tl._kernels import normalize_log2, pair_correlation, standardize_columns, t_and_pvalue
from p2g_dask.tl.aggregate import ColumnBlock, blocks_for, membership_sums, take_block_columns
from p2g_dask.tl.metacells import metacell_membership
from p2g_dask.tl.pairs import pairs_within

PERMUTE = ("cells", "metacells")


def permuted_neighbours(neighbours: np.ndarray, n_cells: int, n_permutations: int, seed: int) -> list[np.ndarray]:
    """The membership mapped through ``n_permutations`` seeded cell permutations: ``pi_k[neighbours]``.

    Examples
    --------
    >>> [p.shape for p in permuted_neighbours(np.array([[0, 1], [1, 2]]), 3, 2, seed=1)]
    [(2, 2), (2, 2)]
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    neighbours = np.asarray(neighbours, dtype=np.int64)
    return [rng.permutation(n_cells)[neighbours] for _ in range(int(n_permutations))]


def metacell_orders(n_metacells: int, n_permutations: int, seed: int) -> list[np.ndarray]:
    """ArchR's null: ``n_permutations`` seeded shuffles of the ATAC metacell order (shared by all chromosomes)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    return [rng.permutation(n_metacells) for _ in range(int(n_permutations))]


def _select_columns(block, columns: np.ndarray):
    """A row block restricted to ``columns``, plus a last column: each row's total over all features."""
    rows = _graph.load(block).to_csr()
    totals = sp.csr_matrix(np.asarray(rows.sum(axis=1), dtype=np.float64).reshape(-1, 1))
    return _graph.Rows.of(sp.hstack([rows[:, columns], totals], format="csr"))


class _GeneColumns:
    """A modality seen through :func:`_select_columns` (what ``membership_sums`` needs of it)."""

    def __init__(self, modality: Any, columns: np.ndarray):
        self.name, self.n_obs = modality.name, modality.n_obs
        self.n_vars = int(columns.size) + 1
        self._modality, self._columns = modality, np.asarray(columns, dtype=np.int64)

    def blocks(self, chunk_cells: int | None = None, *, fused: bool = False):
        blocks, bounds = self._modality.blocks(chunk_cells, fused=True)
        token = tokenize(self.name, self._columns, bounds, [getattr(b, "key", None) for b in blocks])
        return [delayed(_select_columns, pure=True)(b, self._columns, dask_key_name=f"p2g-permute-columns-{token}-{i}")
                for i, b in enumerate(blocks)], bounds


def _rows(sums: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(sums[start:stop])


def _last_column(sums: np.ndarray) -> np.ndarray:
    return sums[:, -1].astype(np.float64)


def stacked_rna_sums(rna_mod: Any, rna_columns: np.ndarray, neighbours: np.ndarray, n_permutations: int, seed: int,
                     **options: Any) -> tuple[list[ColumnBlock], Any, list[ColumnBlock], Any]:
    """One pass over the RNA matrix: the real metacell sums and those of the N permuted memberships.

    Returns ``(real_blocks, real_totals, stacked_blocks, stacked_totals)``; columns are positions
    in ``rna_columns`` (the annotated genes), stacked rows are the real metacells then each
    permutation's. ``options`` go to :func:`membership_sums` (``chunk_cells``, ``split_every``, ``client``).
    """
    m = int(np.asarray(neighbours).shape[0])
    members = [neighbours, *permuted_neighbours(neighbours, rna_mod.n_obs, n_permutations, seed)]
    stacked = sp.vstack([metacell_membership(nb, rna_mod.n_obs) for nb in members], format="csr")
    view = _GeneColumns(rna_mod, np.asarray(rna_columns))
    blocks, _ = membership_sums(view, stacked, token=tokenize(neighbours, n_permutations, seed), **options)
    token = tokenize([b.sums.key for b in blocks], m)
    real = [ColumnBlock(b.first, b.stop, delayed(_rows, pure=True)(b.sums, 0, m,
                                                                   dask_key_name=f"p2g-permute-real-{token}-{i}"))
            for i, b in enumerate(blocks)]
    stacked_totals = delayed(_last_column, pure=True)(blocks[-1].sums, dask_key_name=f"p2g-permute-totals-{token}")
    real_totals = delayed(_rows, pure=True)(stacked_totals, 0, m, dask_key_name=f"p2g-permute-realtotals-{token}")
    return real, real_totals, blocks, stacked_totals


def _sorted_pvalues(links: pd.DataFrame) -> np.ndarray:
    p = links["pval"].to_numpy(dtype=np.float64)
    return np.sort(p[np.isfinite(p)])


def _count_chromosome(atac_sums, atac_totals, rna_sums, rna_totals, centres, tss, max_distance: int,
                      scale_to: float, n_metacells: int, permutations: list, observed: np.ndarray) -> np.ndarray:
    """Per sorted observed p, how many permuted p of this chromosome fall in ``(observed[i-1], observed[i]]``."""
    counts = np.zeros(observed.size + 1, dtype=np.int64)
    local_peak, local_gene = pairs_within(centres, tss, max_distance)
    if local_peak.size == 0:
        return counts
    atac_std, _ = standardize_columns(normalize_log2(atac_sums, atac_totals, scale_to), overwrite=True)
    real_rna = None
    for k, order in enumerate(permutations):
        if order is None:  # cells: the k-th permuted aggregate, rows (k + 1) m .. (k + 2) m
            rows = slice((k + 1) * n_metacells, (k + 2) * n_metacells)
            rna_std, _ = standardize_columns(normalize_log2(rna_sums[rows], rna_totals[rows], scale_to), overwrite=True)
            atac = atac_std
        else:  # metacells: the real aggregate, the ATAC metacells in a shuffled order
            if real_rna is None:
                real_rna, _ = standardize_columns(normalize_log2(rna_sums[:n_metacells], rna_totals[:n_metacells],
                                                                 scale_to), overwrite=True)
            rna_std, atac = real_rna, atac_std[order]
        _, pval = t_and_pvalue(pair_correlation(atac, rna_std, local_peak, local_gene), n_metacells)
        pval = pval[np.isfinite(pval)]
        counts += np.bincount(np.searchsorted(observed, pval, side="left"), minlength=counts.size)
    return counts


def permutation_null(links, atac_blocks, atac_totals, rna_blocks, rna_totals, *, peak_chrom, centres, gene_chrom,
                     tss, rna_columns, n_metacells: int, n_permutations: int, permute: str, max_distance: int,
                     scale_to: float, seed: int, token: str, split_every: int = 4):
    """Lazy ``links`` with ``perm_pval``, ``perm_fdr`` and ``attrs['permutation']`` (see the module docstring).

    ``rna_blocks``/``rna_totals`` are the stacked sums (real then permuted rows) for ``"cells"``,
    the real sums for ``"metacells"``; ``rna_columns`` index their columns.
    """
    observed = delayed(_sorted_pvalues, pure=True)(links, dask_key_name=f"p2g-permute-observed-{token}")
    orders = ([None] * n_permutations if permute == "cells"
              else metacell_orders(n_metacells, n_permutations, seed))
    parts = []
    for chrom in pd.unique(peak_chrom):
        p_idx, g_idx = np.flatnonzero(peak_chrom == chrom), np.flatnonzero(gene_chrom == chrom)
        if not pairs_within(centres[p_idx], tss[g_idx], max_distance)[0].size:
            continue
        chrom_token = tokenize(token, chrom, permute, n_permutations, seed)
        columns = []
        for name, blocks, cols in (("atac", atac_blocks, p_idx), ("rna", rna_blocks, rna_columns[g_idx])):
            needed = blocks_for(blocks, cols)
            columns.append(delayed(take_block_columns, pure=True)(
                cols, [b.first for b in needed], *[b.sums for b in needed],
                dask_key_name=f"p2g-permute-columns-{tokenize(chrom_token, name)}"))
        parts.append(delayed(_count_chromosome, pure=True)(
            columns[0], atac_totals, columns[1], rna_totals, centres[p_idx], tss[g_idx], max_distance, scale_to,
            n_metacells, orders, observed, dask_key_name=f"p2g-permute-{chrom_token}"))
    counts = _graph.tree_sum(parts, "permute-counts", token, split_every=split_every)
    return delayed(add_permutation_columns, pure=True)(links, counts, n_permutations, permute,
                                                       dask_key_name=f"p2g-permute-links-{token}")


def pooled_permutation_fdr(pval: np.ndarray, counts: np.ndarray, n_permutations: int) -> tuple[np.ndarray, np.ndarray]:
    """``perm_pval`` and ``perm_fdr`` of observed ``pval`` from the binned permuted counts.

    ``counts[i]`` is the number of permuted p in ``(sorted_p[i-1], sorted_p[i]]`` over the sorted
    defined observed p; NaN p give NaN.

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


def add_permutation_columns(links: pd.DataFrame, counts: np.ndarray, n_permutations: int, permute: str) -> pd.DataFrame:
    """``links`` with ``perm_pval``, ``perm_fdr`` and ``attrs['permutation']``."""
    links = links.copy()
    links["perm_pval"], links["perm_fdr"] = pooled_permutation_fdr(links["pval"].to_numpy(), counts, n_permutations)
    links.attrs["permutation"] = {"permute": permute, "n_permutations": int(n_permutations),
                                  "n_null_pvalues": int(np.sum(counts))}
    return links
