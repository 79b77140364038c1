"""The Dask graph of :func:`p2g_dask.tl.scores.gene_scores`: weights, (chromosome, block) tasks, block tasks.

Keys: ``p2g-gene-score-weights`` (one per chromosome), ``p2g-gene-score-tiles`` (one per
chromosome x cell block), ``p2g-gene-score-block`` (one per block: join, scale, write).
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.base import tokenize

from p2g_dask._atomic import atomic_path
from p2g_dask._checkpoint import checkpointed
from p2g_dask.tl.scores._kernels import chrom_block_scores, finish_block
from p2g_dask.tl.scores._model import tile_weights


def _chrom_regions(regions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {chrom: part.reset_index(drop=True) for chrom, part in regions.groupby("chrom", sort=False, observed=True)}


def weight_tasks(regions, params) -> dict:
    """One ``p2g-gene-score-weights`` task per chromosome: its tiles x genes weight matrix."""
    blacklist = {}
    for chrom, start, end in params.blacklist or ():
        blacklist.setdefault(chrom, []).append((start, end))
    return {chrom: dask.delayed(tile_weights, pure=True)(
                part, params, blacklist.get(chrom, []),
                dask_key_name=f"p2g-gene-score-weights-{tokenize(chrom, part, params.key_parts())}")
            for chrom, part in _chrom_regions(regions).items()}


def score_graph(regions, params, weights, caches, lookups, blocks, checkpoint, parts_dir):
    lookup_keys = {s: dask.delayed(lk, name=f"p2g-gene-score-barcodes-{tokenize(lk)}") for s, lk in lookups.items()}
    cache_ids = [(c.manifest["source"], c.manifest["size"], c.manifest["mtime_ns"]) for c in caches.values()]
    lookup_token = tokenize([lookups[s] for s in caches])
    by_chrom = _chrom_regions(regions)
    chroms = list(by_chrom)
    n_genes = [len(by_chrom[c]) for c in chroms]
    per_block = [[] for _ in blocks]
    for chrom in chroms:
        sources = [(caches[s].chrom_file(chrom), lookup_keys[s]) for s in caches if chrom in caches[s].chroms]
        chrom_regions = by_chrom[chrom]
        if not sources:  # no fragment on this chromosome: its genes score 0
            for parts in per_block:
                parts.append(None)
            continue
        region_token = tokenize(chrom, chrom_regions, params.key_parts())
        weight = weights[chrom]
        if not hasattr(weight, "key"):  # a computed matrix (local scheduler), not a cluster future
            weight = dask.delayed(weight, name=f"p2g-gene-score-weights-{region_token}")
        for b, (first, stop) in enumerate(blocks):
            token = tokenize(cache_ids, lookup_token, first, stop, region_token)
            part = dask.delayed(chrom_block_scores, pure=True, nout=3)(
                sources, first, stop, weight, params.tile_size, params.ceiling,
                dask_key_name=f"p2g-gene-score-tiles-{token}")
            if checkpoint is not None:
                part = checkpointed(part, checkpoint, checkpoint.key("gene-score-tiles", token), "tree")
            per_block[b].append(part)
    tasks = []
    for b, (first, stop) in enumerate(blocks):
        token = tokenize([getattr(p, "key", None) for p in per_block[b]], first, stop, str(parts_dir))
        tasks.append(dask.delayed(_block_task, pure=False)(
            per_block[b], n_genes, stop - first, params.scale_to, None if parts_dir is None else str(parts_dir), b,
            dask_key_name=f"p2g-gene-score-block-{token}"))
    return tasks


def _block_task(parts, n_genes, n_rows, scale_to, parts_dir, index):
    empty = (np.empty(0), np.empty(0, np.int32), np.zeros(n_rows + 1, np.int64))
    matrix = finish_block([empty if p is None else p for p in parts], n_genes, scale_to)
    if parts_dir is None:
        return matrix
    Path(parts_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(parts_dir) / f"block-{index:06d}.npz", overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            sp.save_npz(fh, matrix, compressed=False)
    return matrix.nnz
