"""Candidate peak-gene pairs: same chromosome and ``|peak centre - TSS| <= max_distance``.

Coordinates are 0-based half-open. A peak's centre is ``(start + end) // 2``. A gene's TSS is
``start`` on ``+`` and ``end - 1`` on ``-`` (the 0-based position of the gene's last base: the same
base as ArchR's 1-based ``end``). ``distance = centre - TSS`` in bp, signed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from p2g_dask._variables import check_max_distance


def peak_centres(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Centre of 0-based half-open peaks, ``(start + end) // 2``."""
    return (np.asarray(start, dtype=np.int64) + np.asarray(end, dtype=np.int64)) // 2


def gene_tss(start: np.ndarray, end: np.ndarray, strand: np.ndarray) -> np.ndarray:
    """TSS of 0-based half-open genes: ``start`` on ``+``, ``end - 1`` on ``-``."""
    strand = np.asarray(strand).astype(str)
    return np.where(strand == "-", np.asarray(end, dtype=np.int64) - 1, np.asarray(start, dtype=np.int64))


def pairs_within(peak_centre: np.ndarray, tss: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs on one chromosome: positions into ``peak_centre`` and ``tss``, sorted by peak then gene."""
    peak_centre = np.asarray(peak_centre, dtype=np.int64)
    tss = np.asarray(tss, dtype=np.int64)
    if peak_centre.size == 0 or tss.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(peak_centre, kind="stable")
    sorted_centres = peak_centre[order]
    lo = np.searchsorted(sorted_centres, tss - max_distance, side="left")
    hi = np.searchsorted(sorted_centres, tss + max_distance, side="right")
    counts = hi - lo
    gene_pos = np.repeat(np.arange(tss.size, dtype=np.int64), counts)
    offsets = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    peak_pos = order[np.repeat(lo, counts) + offsets]
    sort = np.lexsort((gene_pos, peak_pos))
    return peak_pos[sort], gene_pos[sort]


def peak_pairs_within(centres: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs ``i < j`` (positions into ``centres``) with ``|centre_i - centre_j| <= max_distance``.

    Each pair appears once, with ``i < j``; sorted by ``i`` then ``j``.

    Examples
    --------
    >>> [a.tolist() for a in peak_pairs_within(np.array([0, 500, 100]), 150)]
    [[0], [2]]
    """
    centres = np.asarray(centres, dtype=np.int64)
    order = np.argsort(centres, kind="stable")
    ordered = centres[order]
    # In centre order, the partners of position k are the next positions up to the window's end.
    stop = np.searchsorted(ordered, ordered + max_distance, side="right")
    counts = stop - np.arange(ordered.size) - 1
    first = np.repeat(np.arange(ordered.size, dtype=np.int64), counts)
    offsets = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    a, b = order[first], order[first + 1 + offsets]
    i, j = np.minimum(a, b), np.maximum(a, b)
    sort = np.lexsort((j, i))
    return i[sort], j[sort]


def candidate_pairs(
    peaks: pd.DataFrame, genes: pd.DataFrame, *, max_distance: int = 250_000
) -> pd.DataFrame:
    """All peak-gene pairs within ``max_distance`` of the TSS on the same chromosome.

    Parameters
    ----------
    peaks
        ``chrom, start, end`` (e.g. from :func:`p2g_dask.io.peak_table`).
    genes
        ``chrom, start, end, strand`` (e.g. from :func:`p2g_dask.io.read_gene_annotation`).
    max_distance
        Largest ``|peak centre - TSS|`` in bp (ArchR's ``maxDist``, 250 kb).

    Returns
    -------
    pandas.DataFrame
        ``peak_index, gene_index`` (row positions in the inputs) and ``distance``, sorted by
        peak then gene.

    Examples
    --------
    >>> import pandas as pd
    >>> peaks = pd.DataFrame({"chrom": ["chr1", "chr1"], "start": [100, 9000], "end": [200, 9100]})
    >>> genes = pd.DataFrame({"chrom": ["chr1"], "start": [1000], "end": [2000], "strand": ["+"]})
    >>> candidate_pairs(peaks, genes, max_distance=1000).to_dict("list")
    {'peak_index': [0], 'gene_index': [0], 'distance': [-850]}
    """
    max_distance = check_max_distance(max_distance)
    centres = peak_centres(peaks["start"].to_numpy(), peaks["end"].to_numpy())
    tss = gene_tss(genes["start"].to_numpy(), genes["end"].to_numpy(), genes["strand"].to_numpy())
    peak_chrom = peaks["chrom"].astype(str).to_numpy()
    gene_chrom = genes["chrom"].astype(str).to_numpy()
    parts_p, parts_g = [], []
    for chrom in pd.unique(peak_chrom):
        p_idx = np.flatnonzero(peak_chrom == chrom)
        g_idx = np.flatnonzero(gene_chrom == chrom)
        pp, gg = pairs_within(centres[p_idx], tss[g_idx], int(max_distance))
        parts_p.append(p_idx[pp])
        parts_g.append(g_idx[gg])
    peak_index = np.concatenate(parts_p) if parts_p else np.empty(0, np.int64)
    gene_index = np.concatenate(parts_g) if parts_g else np.empty(0, np.int64)
    sort = np.lexsort((gene_index, peak_index))
    peak_index, gene_index = peak_index[sort], gene_index[sort]
    return pd.DataFrame(
        {"peak_index": peak_index, "gene_index": gene_index, "distance": centres[peak_index] - tss[gene_index]}
    )
