"""Simulated Cell Ranger ARC samples for the ingest_samples tests: h5ad pairs or 10x h5, fragments,
and the in-memory reference (plain numpy) of the store they should give."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from p2g_dask.datasets import simulate_fragments
from p2g_dask.io.fragments import read_fragments


def numpy_counts(frags: pd.DataFrame, peaks: pd.DataFrame, cells: list[str], *, strategy="insertion", ceiling=4):
    """Cells x peaks by brute force: every fragment against every peak (0-based half-open)."""
    row = {c: i for i, c in enumerate(cells)}
    out = np.zeros((len(cells), len(peaks)), np.int64)
    for chrom, part in frags.groupby("chrom", observed=True):
        on = (peaks["chrom"] == chrom).to_numpy()
        if not on.any():
            continue
        s, e = peaks["start"].to_numpy()[on][None, :], peaks["end"].to_numpy()[on][None, :]
        a = part["start"].to_numpy().astype(np.int64)[:, None]
        b = part["end"].to_numpy().astype(np.int64)[:, None] - 1
        in_a, in_b = (s <= a) & (a < e), (s <= b) & (b < e)
        if strategy == "insertion":
            hits = in_a.astype(int) + in_b
        elif strategy == "paired-insertion":
            hits = (in_a | in_b).astype(int)
        else:
            hits = ((s <= b) & (e > a)).astype(int)
        rows = np.array([row.get(c, -1) for c in part["barcode"]])
        keep = rows >= 0
        block = np.zeros((len(cells), int(on.sum())), np.int64)
        np.add.at(block, rows[keep], hits[keep])
        out[:, on] += block
    return np.minimum(out, ceiling) if ceiling is not None else out


def write_10x_h5(path, atac: ad.AnnData, rna: ad.AnnData) -> None:
    """A minimal Cell Ranger ARC filtered_feature_bc_matrix.h5 (features x barcodes, CSC); gene ids
    from ``rna.var['gene_ids']``, else ``ENSG00000, ENSG00001, ...``."""
    combined = sp.hstack([rna.X, atac.X]).tocsr()
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.asarray(atac.obs_names, dtype="S")
        m["data"], m["indices"], m["indptr"] = combined.data, combined.indices, combined.indptr
        m["shape"] = np.array([combined.shape[1], combined.shape[0]])
        feats = m.create_group("features")
        ids = rna.var["gene_ids"] if "gene_ids" in rna.var.columns else [f"ENSG{i:05d}" for i in range(rna.n_vars)]
        feats["id"] = np.asarray(list(ids) + list(atac.var_names), dtype="S")
        feats["name"] = np.asarray(list(rna.var_names) + list(atac.var_names), dtype="S")
        feats["feature_type"] = np.asarray(["Gene Expression"] * rna.n_vars + ["Peaks"] * atac.n_vars, dtype="S")


def write_sample_files(folder: Path, sim, *, n_samples: int = 3, shift: int = 30, h5: bool = False,
                  drop_genes: int = 5, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Split ``sim``'s cells into samples written as files; returns the table and the truth.

    Sample ``k`` has barcodes ``BC00000-1...`` (the same barcodes recur across samples, as in 10x
    runs), its peaks shifted by ``k * shift`` bp (``shift=0``: one shared peak set), sample 1
    lacks the first ``drop_genes`` genes and sample 2 lists its genes in reverse order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gene_ids = np.array([f"ENSG{i:05d}" for i in range(sim.rna.n_vars)], dtype=object)
    bounds = np.linspace(0, sim.atac.n_obs, n_samples + 1).astype(int)
    rows, truth = [], {"cells": [], "fragments": [], "peak_sets": {}, "atac": [], "rna": []}
    for k in range(n_samples):
        idx = np.arange(bounds[k], bounds[k + 1])
        name = f"s{k}"
        barcodes = [f"BC{j:05d}-1" for j in range(idx.size)]
        atac = ad.AnnData(sim.atac.X[idx].copy(), var=sim.atac.var[["chrom", "start", "end"]].copy())
        atac.obs_names = barcodes
        frag_path = simulate_fragments(atac, folder / f"{name}.fragments.tsv.gz", chrom_sizes=sim.chrom_sizes,
                                       seed=seed + k)
        peaks = atac.var.assign(start=atac.var["start"] + k * shift, end=atac.var["end"] + k * shift)
        atac.var = pd.DataFrame(index=(peaks["chrom"].astype(str) + ":" + peaks["start"].astype(str) + "-"
                                       + peaks["end"].astype(str)).to_numpy())
        rna = ad.AnnData(sim.rna.X[idx].copy(), var=pd.DataFrame({"gene_ids": gene_ids}, index=sim.rna.var_names))
        rna.obs_names = barcodes
        if k == 1 and drop_genes:
            rna = rna[:, drop_genes:].copy()
        if k == 2:
            rna = rna[:, ::-1].copy()
        row = {"sample": name, "fragments": frag_path.name}
        if h5:
            write_10x_h5(folder / f"{name}.h5", atac, rna)
            row["h5"] = f"{name}.h5"
        else:
            atac.write_h5ad(folder / f"{name}.atac.h5ad")
            rna.write_h5ad(folder / f"{name}.rna.h5ad")
            row.update(atac=f"{name}.atac.h5ad", rna=f"{name}.rna.h5ad")
        rows.append(row)
        frags = read_fragments(frag_path)
        frags["barcode"] = name + "_" + frags["barcode"].astype(str)
        frags["chrom"] = frags["chrom"].astype(str)
        truth["fragments"].append(frags)
        truth["cells"] += [f"{name}_{b}" for b in barcodes]
        truth["peak_sets"][name] = peaks[["chrom", "start", "end"]].reset_index(drop=True)
        truth["atac"].append(atac)
        truth["rna"].append(rna)
    table = pd.DataFrame(rows)
    table.to_csv(folder / "samples.tsv", sep="\t", index=False)
    truth["fragments"] = pd.concat(truth["fragments"], ignore_index=True)
    return table, truth


def aligned_rna(truth: dict, gene_ids: list[str]) -> np.ndarray:
    """All samples' RNA as cells x ``gene_ids`` (absent genes zero), by plain pandas alignment."""
    parts = []
    for rna in truth["rna"]:
        frame = pd.DataFrame(rna.X.toarray(), columns=list(rna.var["gene_ids"]))
        parts.append(frame.reindex(columns=gene_ids, fill_value=0).to_numpy())
    return np.vstack(parts)
