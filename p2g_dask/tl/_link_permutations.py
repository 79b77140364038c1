"""Permutation null of peak-to-gene links: ``perm_pval`` and a pooled ``perm_fdr`` that stays valid
when metacells overlap (``permute="cells"``), and ArchR's metacell-order shuffle (``"metacells"``).

``permute="cells"``: permutation ``k`` gives cell ``c`` the RNA profile of cell ``pi_k(c)``; metacell
``j`` then sums the RNA rows ``pi_k(members(j))``, i.e. the RNA matrix summed over the membership
mapped through ``pi_k``. The RNA matrix is read ONCE: each row block, restricted to the annotated
genes plus one column of each cell's total over all genes (the normalisation's denominator), feeds
both the real metacell sums (:func:`p2g_dask.tl.aggregate.membership_sums`) and one piece per
chromosome. Each chromosome task (``p2g-permute-*``) stacks its pieces (that chromosome's genes only)
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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import delayed

from p2g_dask import _graph
from p2g_dask.tl._kernels import metacell_sum_block, pair_correlation_t, standardized_features
from p2g_dask.tl.aggregate import ColumnBlock, lane_columns, membership_sums
from p2g_dask.tl.metacells import metacell_membership
from p2g_dask.tl.pairs import pairs_within

PERMUTE = ("cells", "metacells")
#: Permuted sums a chromosome task holds at once (a batch of permutations): bounds memory whatever N.
BATCH_BYTES = 32 * 2**20


def permuted_neighbours(neighbours: np.ndarray, n_cells: int, n_permutations: int, seed: int) -> list[np.ndarray]:
    """The membership mapped through ``n_permutations`` seeded cell permutations: ``pi_k[neighbours]``.

    Examples
    --------
    >>> [p.shape for p in permuted_neighbours(np.array([[0, 1], [1, 2]]), 3, 2, seed=1)]
    [(2, 2), (2, 2)]
    """
    return [nb for batch in permutation_batches(neighbours, n_cells, n_permutations, seed, 1) for nb in batch]


def permutation_batches(neighbours: np.ndarray, n_cells: int, n_permutations: int, seed: int, batch: int):
    """:func:`permuted_neighbours` made ``batch`` at a time (the same sequence, never all N at once)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    neighbours = np.asarray(neighbours, dtype=np.int64)
    for first in range(0, int(n_permutations), int(batch)):
        yield [rng.permutation(n_cells)[neighbours] for _ in range(min(int(batch), int(n_permutations) - first))]


def metacell_orders(n_metacells: int, n_permutations: int, seed: int) -> list[np.ndarray]:
    """ArchR's null: ``n_permutations`` seeded shuffles of the ATAC metacell order (shared by all chromosomes)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    return [rng.permutation(n_metacells) for _ in range(int(n_permutations))]


def _select_columns(block, columns: np.ndarray):
    """A row block restricted to ``columns``, plus a last column: each row's total over all features."""
    rows = _graph.load(block).to_csr()
    selected = rows[:, columns]
    selected.sort_indices()
    dtype = selected.data.dtype if selected.data.dtype.kind in "iuf" else np.float64
    totals = np.asarray(rows.sum(axis=1, dtype=np.float64)).ravel().astype(dtype)
    # The totals go in as one more entry at the end of each row (one pass, no sparse hstack).
    ends = selected.indptr[1:]
    data = np.insert(selected.data.astype(dtype, copy=False), ends, totals)
    indices = np.insert(selected.indices.astype(np.int32, copy=False), ends, np.int32(columns.size))
    indptr = selected.indptr.astype(np.int64) + np.arange(selected.shape[0] + 1)
    return _graph.Rows(data, indices, indptr, int(columns.size) + 1)


class GeneColumns:
    """A modality seen through :func:`_select_columns`: what ``membership_sums`` needs of it.

    Its row blocks are made once and kept, so the real sums and the chromosome pieces of the
    permutations read the same tasks: one pass over the RNA matrix.
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
                                                                 dask_key_name=f"p2g-permute-columns-{token}-{i}")
                             for i, b in enumerate(blocks)], bounds)
        return self._blocks


def _last_column(sums: np.ndarray) -> np.ndarray:
    return sums[:, -1].astype(np.float64)


def rna_sums(rna_mod: Any, rna_columns: np.ndarray, neighbours: np.ndarray, *, chunk_cells: int | None = None,
             **options: Any) -> tuple[list[ColumnBlock], Any, GeneColumns]:
    """The real RNA metacell sums over the row blocks the permutations re-use (one pass).

    Returns ``(blocks, totals, rows)``: column blocks whose columns are positions in
    ``rna_columns`` (the annotated genes; one more, last, column holds the totals), the metacell
    totals over all genes, and the :class:`GeneColumns` whose blocks were summed. ``options`` go
    to :func:`membership_sums` (``split_every``, ``client``).
    """
    rows = GeneColumns(rna_mod, np.asarray(rna_columns), chunk_cells)
    membership = metacell_membership(np.asarray(neighbours), rna_mod.n_obs)
    blocks, _ = membership_sums(rows, membership, chunk_cells=chunk_cells, token=tokenize(neighbours), **options)
    totals = delayed(_last_column, pure=True)(blocks[-1].sums,
                                             dask_key_name=f"p2g-permute-totals-{tokenize(blocks[-1].sums.key)}")
    return blocks, totals, rows


def _score(correlation) -> np.ndarray:
    """``-|r|``: ordered as the p values are (smaller is more significant), NaN where r is."""
    return -np.abs(np.asarray(correlation, dtype=np.float64))


def _sorted_scores(links: pd.DataFrame) -> np.ndarray:
    """The scores of the links with a defined r, ascending."""
    score = _score(links["correlation"])
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
    by_column = _graph.load(block).to_csr().tocsc()
    totals = by_column[:, by_column.shape[1] - 1].toarray().ravel().astype(np.float64)
    return [by_column[:, cols].tocsr() for cols in columns], totals


def _piece(split: tuple, index: int) -> sp.csr_matrix:
    # Its own task, so only this chromosome's piece moves to the worker that needs it.
    return split[0][index]


def _count_cells_chromosome(atac_sums, atac_totals, centres, tss, max_distance: int, scale_to: float,
                            neighbours: np.ndarray, n_permutations: int, seed: int, observed: np.ndarray,
                            batch_bytes: int, cell_totals: np.ndarray, *pieces: sp.csr_matrix) -> np.ndarray:
    """Permuted-r counts of one chromosome under ``n_permutations`` cell permutations, from its RNA columns."""
    counts = np.zeros(observed.size + 1, dtype=np.int64)
    local_peak, local_gene = pairs_within(centres, tss, max_distance)
    if local_peak.size == 0:
        return counts
    m = neighbours.shape[0]
    atac_t, _ = standardized_features(atac_sums, atac_totals, scale_to)
    rows = _graph.Rows.of(sp.vstack(pieces, format="csr"))
    n_cells, n_genes = rows.n_rows, rows.n_vars
    # A batch of permutations summed in one kernel call: batch_bytes of sums, whatever N.
    batch = max(1, min(n_permutations, int(batch_bytes // max(1, m * n_genes * 4))))
    for permuted in permutation_batches(neighbours, n_cells, n_permutations, seed, batch):
        members = sp.vstack([metacell_membership(nb, n_cells) for nb in permuted], format="csr")
        members.sort_indices()
        sums = metacell_sum_block(rows, members.indptr, members.indices, members.shape[0], np.float32)
        totals = members @ cell_totals
        for k in range(members.shape[0] // m):
            rna_t, _ = standardized_features(sums[k * m:(k + 1) * m], totals[k * m:(k + 1) * m], scale_to)
            counts += _bin_counts(pair_correlation_t(atac_t, rna_t, local_peak, local_gene), observed)
    return counts


def _count_metacells_chromosome(atac_sums, atac_totals, rna_sums_, rna_totals, centres, tss, max_distance: int,
                                scale_to: float, orders: list, observed: np.ndarray) -> np.ndarray:
    """Permuted-r counts of one chromosome with the ATAC metacells shuffled (ArchR's null)."""
    counts = np.zeros(observed.size + 1, dtype=np.int64)
    local_peak, local_gene = pairs_within(centres, tss, max_distance)
    if local_peak.size == 0:
        return counts
    atac_t, _ = standardized_features(atac_sums, atac_totals, scale_to)
    rna_t, _ = standardized_features(rna_sums_, rna_totals, scale_to)
    for order in orders:
        counts += _bin_counts(pair_correlation_t(np.ascontiguousarray(atac_t[:, order]), rna_t, local_peak,
                                                 local_gene), observed)
    return counts


def _block_totals(split: tuple) -> np.ndarray:
    return split[1]


def _cell_totals(*block_totals: np.ndarray) -> np.ndarray:
    return np.concatenate(block_totals)


def permutation_null(links, atac_blocks, atac_totals, rna_blocks, rna_totals, *, peak_chrom, centres, gene_chrom,
                     tss, rna_columns, neighbours: np.ndarray, n_permutations: int, permute: str, max_distance: int,
                     scale_to: float, seed: int, token: str, rna_rows: GeneColumns | None = None,
                     split_every: int = 4, batch_bytes: int | None = None):
    """Lazy ``links`` with ``perm_pval``, ``perm_fdr`` and ``attrs['permutation']`` (see the module docstring).

    ``rna_rows`` (``"cells"``) are the row blocks the real RNA sums came from (:func:`rna_sums`);
    ``rna_blocks``/``rna_columns`` are the real sums and their column positions.
    """
    observed = delayed(_sorted_scores, pure=True)(links, dask_key_name=f"p2g-permute-observed-{token}")
    batch_bytes = BATCH_BYTES if batch_bytes is None else int(batch_bytes)
    neighbours = np.asarray(neighbours)
    chromosomes = []
    for chrom in pd.unique(peak_chrom):
        p_idx, g_idx = np.flatnonzero(peak_chrom == chrom), np.flatnonzero(gene_chrom == chrom)
        if pairs_within(centres[p_idx], tss[g_idx], max_distance)[0].size:
            chromosomes.append((chrom, p_idx, g_idx))
    if permute == "cells":
        row_blocks, _ = rna_rows.blocks()
        cut = [rna_columns[g_idx] for _, _, g_idx in chromosomes]
        split = [delayed(_chromosome_pieces, pure=True)(block, cut, dask_key_name=f"p2g-permute-split-{tokenize(token, i)}")
                 for i, block in enumerate(row_blocks)]
        # Each block's totals are taken where the block was split: only those vectors move.
        cell_totals = delayed(_cell_totals, pure=True)(
            *[delayed(_block_totals, pure=True)(s, dask_key_name=f"p2g-permute-blocktotals-{tokenize(token, i)}")
              for i, s in enumerate(split)], dask_key_name=f"p2g-permute-celltotals-{token}")
    else:
        orders = metacell_orders(neighbours.shape[0], n_permutations, seed)
    parts = []
    for index, (chrom, p_idx, g_idx) in enumerate(chromosomes):
        chrom_token = tokenize(token, chrom, permute, n_permutations, seed)
        atac = lane_columns(atac_blocks, p_idx, f"p2g-permute-atac-{chrom_token}")
        if permute == "cells":
            pieces = [delayed(_piece, pure=True)(pieces_of_block, index,
                                                 dask_key_name=f"p2g-permute-piece-{tokenize(chrom_token, i)}")
                      for i, pieces_of_block in enumerate(split)]
            part = delayed(_count_cells_chromosome, pure=True)(
                atac, atac_totals, centres[p_idx], tss[g_idx], max_distance, scale_to, neighbours, n_permutations,
                seed, observed, batch_bytes, cell_totals, *pieces, dask_key_name=f"p2g-permute-{chrom_token}")
        else:
            rna = lane_columns(rna_blocks, rna_columns[g_idx], f"p2g-permute-rna-{chrom_token}")
            part = delayed(_count_metacells_chromosome, pure=True)(
                atac, atac_totals, rna, rna_totals, centres[p_idx], tss[g_idx], max_distance, scale_to, orders,
                observed, dask_key_name=f"p2g-permute-{chrom_token}")
        parts.append(part)
    counts = _graph.tree_sum(parts, "permute-counts", token, split_every=split_every)
    return delayed(add_permutation_columns, pure=True)(links, counts, n_permutations, permute,
                                                       dask_key_name=f"p2g-permute-links-{token}")


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


def add_permutation_columns(links: pd.DataFrame, counts: np.ndarray, n_permutations: int, permute: str) -> pd.DataFrame:
    """``links`` with ``perm_pval``, ``perm_fdr`` and ``attrs['permutation']``."""
    links = links.copy()
    links["perm_pval"], links["perm_fdr"] = pooled_permutation_fdr(_score(links["correlation"]), counts,
                                                                   n_permutations)
    links.attrs["permutation"] = {"permute": permute, "n_permutations": int(n_permutations),
                                  "n_null_pvalues": int(np.sum(counts))}
    return links
