"""gene_scores against an independent recomputation of ArchR's rules, written here with plain loops."""

from __future__ import annotations

import math

import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _fragment_files import write_fragment_file

from p2g_dask.tl import gene_scores
from p2g_dask.tl.scores._model import GeneScoreParams, gene_domains, gene_regions

T = 500  # tile size of the hand-made cases

# Hand-made genes (0-based half-open), chosen so every rule matters:
# G1 (+) and G2 (-) are 2 kb apart and cut each other's windows; G3 (+) starts 2.5 kb after G2,
# closer than the minimum extension, so the minimum wins; G4 (-) is alone; G5 on chr2;
# G6 on chrY is excluded.
GENES = pd.DataFrame({
    "gene_name": ["G1", "G2", "G3", "G4", "G5", "G6"],
    "chrom": ["chr1", "chr1", "chr1", "chr1", "chr2", "chrY"],
    "start": [50_000, 62_000, 71_500, 200_000, 100_000, 5_000],
    "end": [60_000, 64_000, 75_000, 230_000, 101_000, 9_000],
    "strand": ["+", "-", "+", "-", "+", "+"],
})
BLACKLIST = [("chr1", 52_100, 52_300)]  # inside G1's body: tile 52000-52499


def _reference(frags: pd.DataFrame, cells: list[str], genes: pd.DataFrame, p: GeneScoreParams,
               blacklist=()) -> np.ndarray:
    """Dense cells x genes scores, straight from the rules (loops, no vectorised helper)."""
    keep = genes[~genes["chrom"].isin(p.exclude_chr)]
    rows = []
    for g in keep.itertuples():
        s1, e1 = g.start + 1, g.end  # 1-based closed
        if g.strand == "+":
            lo, hi = s1 - p.gene_upstream, e1 + p.gene_downstream
        else:
            lo, hi = s1 - p.gene_downstream, e1 + p.gene_upstream
        rows.append({"name": g.gene_name, "chrom": g.chrom, "strand": g.strand, "lo": lo, "hi": hi})
    widths = [r["hi"] - r["lo"] + 1 for r in rows]
    m = [1 / w for w in widths]
    for r, mi in zip(rows, m):
        r["w"] = 1 + mi * (p.gene_scale_factor - 1) / (max(m) - min(m))
    # Windows per chromosome, neighbours in (lo, hi) order.
    order = sorted(range(len(rows)), key=lambda i: (list(pd.unique(keep["chrom"])).index(rows[i]["chrom"]),
                                                    rows[i]["lo"], rows[i]["hi"]))
    for chrom in pd.unique(keep["chrom"]):
        idx = [i for i in order if rows[i]["chrom"] == chrom]
        for j, i in enumerate(idx):
            r = rows[i]
            plus = r["strand"] == "+"
            left_max = max(p.extend_upstream) if plus else max(p.extend_downstream)
            left_min = min(p.extend_upstream) if plus else min(p.extend_downstream)
            right_max = max(p.extend_downstream) if plus else max(p.extend_upstream)
            right_min = min(p.extend_downstream) if plus else min(p.extend_upstream)
            prev_bound = rows[idx[j - 1]]["hi"] + T if j > 0 else 1
            next_bound = rows[idx[j + 1]]["lo"] - T if j + 1 < len(idx) else r["hi"] + right_max
            s = min(r["lo"] - left_min, max(prev_bound, r["lo"] - left_max))
            e = max(r["hi"] + right_min, min(next_bound, r["hi"] + right_max))
            r["s"], r["e"] = max(1, s), e
    names = [r["name"] for r in sorted(rows, key=lambda r: order.index(rows.index(r)))]
    out = np.zeros((len(cells), len(rows)))
    col = {r["name"]: names.index(r["name"]) for r in rows}
    for ci, cell in enumerate(cells):
        mine = frags[frags["cell"] == cell]
        counts: dict[tuple[str, int], int] = {}
        for f in mine.itertuples():
            for pos in (f.start + 1, f.end):  # ArchR's 1-based insertions
                key = (f.chrom, math.trunc(pos / T) * T)
                counts[key] = counts.get(key, 0) + 1
        for (chrom, t), n in counts.items():
            n = min(n, p.ceiling) if p.ceiling else n
            if any(c == chrom and t <= b_end and t + T - 1 >= b_start + 1 for c, b_start, b_end in blacklist):
                continue
            for r in rows:
                if r["chrom"] != chrom or not (t <= r["e"] and t + T - 1 >= r["s"]):
                    continue
                dist = t - r["hi"] - 1 if t > r["hi"] else (r["lo"] - (t + T - 1) - 1 if t + T - 1 < r["lo"] else 0)
                weight = math.exp(-abs(dist) / 5000) + math.exp(-1)
                out[ci, col[r["name"]]] += n * weight * r["w"]
    totals = out.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(totals > 0, np.round(p.scale_to * out / totals, 3), 0.0)
    return pd.DataFrame(scaled, index=cells, columns=names)


def _hand_fragments(seed: int = 0) -> pd.DataFrame:
    """Fragments of two samples; cell names are ``<sample>#<barcode>``; the same barcode in both."""
    rng = np.random.default_rng(seed)
    rows = []
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 8))}-1" for _ in range(12)]
    for sample in ("s1", "s2"):
        for b in barcodes[:10]:
            for _ in range(rng.integers(20, 60)):  # spread over all windows and beyond
                chrom = rng.choice(["chr1", "chr1", "chr1", "chr2", "chrY", "chr3"])
                start = int(rng.integers(0, 420_000 if chrom == "chr1" else 200_000))
                rows.append((sample, chrom, start, start + int(rng.integers(40, 400)), b))
        # The ceiling: 7 fragments with both insertions in tile 56000 of G1's body.
        rows += [(sample, "chr1", 56_010 + i, 56_200 + i, barcodes[10]) for i in range(7)]
        # The blacklisted tile plus one fragment next to it.
        rows += [(sample, "chr1", 52_150, 52_250, barcodes[10]), (sample, "chr1", 53_100, 53_300, barcodes[10])]
        rows += [(sample, "chr1", 210_000, 210_150, barcodes[10])]  # and one in G4's body
    # A cell whose fragments are all far from every window (chr1 beyond G4's, and chr3 without genes).
    rows += [("s1", "chr1", 400_000, 400_300, barcodes[11]), ("s1", "chr3", 1000, 1200, barcodes[11])]
    frags = pd.DataFrame(rows, columns=["sample", "chrom", "start", "end", "barcode"])
    frags["cell"] = frags["sample"] + "#" + frags["barcode"]
    return frags


@pytest.fixture(scope="module")
def hand_case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gene_scores")
    frags = _hand_fragments()
    files = {}
    for sample in ("s1", "s2"):
        part = frags[frags["sample"] == sample].sort_values(["chrom", "start"])
        part = part.assign(count=1)[["chrom", "start", "end", "barcode", "count"]]
        files[sample] = write_fragment_file(tmp / f"{sample}.tsv.gz", part)
    cells = sorted(frags["cell"].unique())
    obs = pd.DataFrame({"sample": [c.split("#")[0] for c in cells]}, index=cells)
    return frags, files, obs, tmp


def test_gene_domains__neighbours_cut_and_minimum_extension():
    p = GeneScoreParams()
    regions = gene_regions(GENES, p)
    chr1 = regions[regions["chrom"] == "chr1"].reset_index(drop=True)
    s, e = gene_domains(chr1, p)
    # G1 (+): region [45001, 60000]; window reaches the chromosome start (1) and stops one tile
    # before G2's region [62001, 69000].
    assert (s[0], e[0]) == (1, 62001 - T)
    # G2 (-): starts one tile after G1's region; G3's region starts at 66501 (< G2's end), so the
    # cut end 66001 is below G2's end + min(extend_upstream) = 70000: the minimum wins.
    assert (s[1], e[1]) == (60000 + T, 69000 + 1000)
    # G3 (+): the previous region ends at 69000 -> 69500, above 66501 - 1000: the minimum wins;
    # downstream the maximum (100 kb) ends before G4's region (200001) minus a tile.
    assert (s[2], e[2]) == (66501 - 1000, 75_000 + 100_000)
    # G4 (-) alone at the end: + max(extend_upstream) to the right (its upstream).
    assert e[3] == 230_000 + 5000 + 100_000
    assert list(regions["gene_name"]) == ["G1", "G2", "G3", "G4", "G5"]  # chrY excluded


@pytest.mark.parametrize("chunk_cells", [1, 7, 1000])
def test_gene_scores__matches_independent_recomputation(hand_case, chunk_cells):
    frags, files, obs, _ = hand_case
    with dask.config.set(scheduler="synchronous"):
        result = gene_scores(files, genes=GENES, cells=obs, sample_id_col="sample", blacklist=BLACKLIST,
                             chunk_cells=chunk_cells, show_progress=False)
    expected = _reference(frags, list(obs.index), GENES, GeneScoreParams(), BLACKLIST)
    assert list(result.var_names) == list(expected.columns)
    assert list(result.obs_names) == list(obs.index)
    assert sp.isspmatrix_csr(result.X) and result.X.dtype == np.float32
    np.testing.assert_allclose(result.X.toarray(), expected.to_numpy(), atol=1.5e-3, rtol=1e-6)
    # The cell without fragments near any gene: an empty row; every other row sums to scale_to.
    sums = np.asarray(result.X.sum(axis=1)).ravel()
    empty = obs.index.get_loc(f"s1#{frags['barcode'][frags['start'] == 400_000].iloc[0]}")
    assert result.X[empty].nnz == 0
    others = np.delete(sums, empty)
    assert np.all(np.abs(others - 1e4) <= 5e-4 * result.X.shape[1] + 1e-2)
    assert result.uns["gene_scores"]["tile_size"] == T


def test_gene_scores__ceiling_and_blacklist(hand_case):
    """7 fragments in one tile count as 4 (in the reference too); the blacklisted tile adds nothing."""
    frags, files, obs, _ = hand_case
    cell = frags[(frags["start"] == 56_010) & (frags["sample"] == "s1")]["cell"].iloc[0]
    mine = frags[frags["cell"] == cell]
    in_tile = (mine["start"] >= 56_010) & (mine["start"] < 56_017)
    four_only = pd.concat([mine[~in_tile], mine[in_tile].iloc[:4]])
    p = GeneScoreParams()
    np.testing.assert_allclose(_reference(mine, [cell], GENES, p).to_numpy(),
                               _reference(four_only, [cell], GENES, p).to_numpy())
    with dask.config.set(scheduler="synchronous"):
        kw = {"genes": GENES, "cells": obs, "sample_id_col": "sample", "show_progress": False}
        with_bl, without, no_cap = (gene_scores(files, blacklist=BLACKLIST, **kw), gene_scores(files, **kw),
                                    gene_scores(files, ceiling=None, **kw))
    row = obs.index.get_loc(cell)
    g1, g4 = list(without.var_names).index("G1"), list(without.var_names).index("G4")
    # Blacklisting the tile, or lifting the cap, changes G1's share against G4's fragment.
    assert with_bl.X[row, g1] < without.X[row, g1] < no_cap.X[row, g1]
    assert with_bl.X[row, g4] > without.X[row, g4] > no_cap.X[row, g4] > 0


def test_gene_scores__barcodes_without_cells_get_sample_prefix(hand_case):
    frags, files, obs, _ = hand_case
    with dask.config.set(scheduler="synchronous"):
        result = gene_scores(files, genes=GENES, show_progress=False)
    assert set(result.obs_names) == set(obs.index)
    again = result[obs.index]
    expected = _reference(frags, list(obs.index), GENES, GeneScoreParams())
    np.testing.assert_allclose(again.X.toarray(), expected.to_numpy(), atol=1.5e-3)


def test_gene_scores__options_match_reference(hand_case):
    """Other ArchR parameters through the same independent recomputation."""
    frags, files, obs, _ = hand_case
    p = GeneScoreParams(gene_upstream=2000, extend_upstream=(500, 20_000), extend_downstream=(2000, 30_000),
                        ceiling=2, scale_to=100.0)
    with dask.config.set(scheduler="synchronous"):
        result = gene_scores(files, genes=GENES, cells=obs, sample_id_col="sample", gene_upstream=2000,
                             extend_upstream=(500, 20_000), extend_downstream=(30_000, 2000), ceiling=2,
                             scale_to=100.0, chunk_cells=5, show_progress=False)
    expected = _reference(frags, list(obs.index), GENES, p)
    np.testing.assert_allclose(result.X.toarray(), expected.to_numpy(), atol=1.5e-3)


def test_gene_scores__store_on_local_cluster_equals_in_memory(hand_case, local_client, tmp_path):
    """Out of core into a store on a LocalCluster == in memory with the synchronous scheduler."""
    import anndata as ad

    from p2g_dask.io import ingest, open_store

    frags, files, obs, _ = hand_case
    n = len(obs)
    atac = ad.AnnData(sp.csr_matrix(np.ones((n, 3), np.float32)), obs=obs,
                      var=pd.DataFrame(index=["chr1:1-100", "chr1:200-300", "chr2:1-100"]))
    rna = ad.AnnData(sp.csr_matrix(np.ones((n, 2), np.float32)), obs=obs, var=pd.DataFrame(index=["G1", "G2"]))
    store = ingest(atac, rna, tmp_path / "s.zarr", chunk_cells=8)
    with dask.config.set(scheduler="synchronous"):
        in_memory = gene_scores(files, genes=GENES, cells=obs, sample_id_col="sample", show_progress=False)
    modality = gene_scores(files, genes=GENES, store=store, sample_id_col="sample", chunk_cells=4,
                           client=local_client, show_progress=False, cache_fragments=tmp_path / "cache")
    assert modality.shape == in_memory.shape
    np.testing.assert_array_equal(modality.to_memory().toarray(), in_memory.X.toarray())
    assert list(modality.var.index) == list(in_memory.var_names)
    reopened = open_store(tmp_path / "s.zarr")
    obsm = reopened.atac.obsm["X_gene_score"]
    assert sp.issparse(obsm)
    np.testing.assert_array_equal(obsm.toarray(), in_memory.X.toarray())
    assert reopened.atac.uns["X_gene_score"]["modality"] == "X_gene_score"
    assert reopened.atac.uns["X_gene_score"]["n_genes"] == in_memory.shape[1]
    with pytest.raises(FileExistsError, match="key_added='X_gene_score'"):
        gene_scores(files, genes=GENES, store=store, sample_id_col="sample", show_progress=False)


def test_gene_scores__checkpoint_resumes(hand_case, tmp_path):
    from p2g_dask._checkpoint import Checkpoint

    _, files, obs, _ = hand_case
    ckpt = Checkpoint(tmp_path / "ckpt")
    with dask.config.set(scheduler="synchronous"):
        first = gene_scores(files, genes=GENES, cells=obs, sample_id_col="sample", checkpoint=ckpt,
                            chunk_cells=10, show_progress=False)
        again = gene_scores(files, genes=GENES, cells=obs, sample_id_col="sample", checkpoint=ckpt,
                            chunk_cells=10, show_progress=False)
    assert ckpt.misses > 0 and ckpt.hits == ckpt.misses
    np.testing.assert_array_equal(first.X.toarray(), again.X.toarray())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"tile_size": 0}, "tile_size=0"),
    ({"extend_upstream": (1000,)}, "extend_upstream"),
    ({"gene_model": "exp(-abs(y))"}, "gene_model"),
    ({"scale_to": -1}, "scale_to=-1"),
    ({"ceiling": 0}, "ceiling=0"),
    ({"chunk_cells": 0}, "chunk_cells=0"),
    ({"blacklist": [("chr1", 10, 5)]}, "blacklist"),
    ({"key_added": "atac"}, "key_added"),
])
def test_gene_scores__bad_arguments_are_named(hand_case, kwargs, match):
    _, files, obs, _ = hand_case
    with pytest.raises(ValueError, match=match):
        gene_scores(files, genes=GENES, cells=obs, sample_id_col="sample", show_progress=False, **kwargs)


def test_gene_scores__several_files_need_sample_id_col(hand_case):
    _, files, obs, _ = hand_case
    with pytest.raises(ValueError, match="sample_id_col"):
        gene_scores(files, genes=GENES, cells=obs, show_progress=False)


def test_gene_scores__store_result_feeds_peak_to_gene(tmp_path):
    """ATAC-only: gene scores written into the store drive peak_to_gene(store, gene_obsm=...)."""
    import p2g_dask as p2g
    from p2g_dask.datasets import simulate_fragments, simulate_multiome

    sim = simulate_multiome(n_cells=200, n_peaks=800, n_genes=60, n_linked_genes=8, seed=3)
    frags = simulate_fragments(sim.atac, tmp_path / "f.tsv.gz", chrom_sizes=sim.chrom_sizes, seed=3)
    store = p2g.io.ingest(sim.atac, sim.rna, tmp_path / "s.zarr", chunk_cells=64)
    with dask.config.set(scheduler="synchronous"):
        modality = gene_scores(frags, genes=sim.genes, store=store, chunk_cells=64, show_progress=False)
        in_memory = gene_scores(frags, genes=sim.genes, cells=sim.atac, show_progress=False)
    np.testing.assert_array_equal(modality.to_memory().toarray(), in_memory.X.toarray())
    names = modality.var.index  # the gene names: the modality's var index
    kwargs = dict(gene_annotation=sim.genes, use_rep="X_latent", n_metacells=30, k_neighbors=15)
    from_store = p2g.tl.peak_to_gene(store.path, gene_obsm="X_gene_score", gene_names=names, **kwargs)
    atac = sim.atac.copy()
    atac.obsm["X_gene_score"] = in_memory.X
    from_memory = p2g.tl.peak_to_gene(atac, gene_obsm="X_gene_score", gene_names=in_memory.var_names, **kwargs)
    assert len(from_store) > 0
    pd.testing.assert_frame_equal(from_store, from_memory, check_exact=False, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.real_data("gene scores of real cells must follow their measured RNA")
def test_gene_scores__pbmc_scores_follow_rna(shared_data):
    """Real PBMC 1k: per-gene correlation across cells of gene score and log-normalised RNA."""
    import anndata as ad

    from p2g_dask.io import read_gene_annotation

    rna = ad.read_h5ad(shared_data / "pbmc_multiome_1k" / "rna.h5ad")
    genes, _ = read_gene_annotation(shared_data / "hg38" / "hg38_genes.tsv.gz",
                                    gene_types=["protein_coding", "lncRNA", "IG_C_gene", "TR_C_gene"])
    with dask.config.set(scheduler="threads"):
        scores = gene_scores(shared_data / "pbmc_multiome_1k" / "fragments.tsv.gz", genes=genes, cells=rna,
                             show_progress=False)
    counts = rna.X.toarray().astype(np.float64)
    lognorm = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    position = pd.Index(scores.var_names).get_indexer(rna.var_names)
    assert (position >= 0).all(), "every marker gene has a gene score"
    dense = scores.X[:, position].toarray()
    r = np.array([np.corrcoef(dense[:, j], lognorm[:, j])[0, 1] for j in range(len(position))])
    median = float(np.nanmedian(r))
    print(f"PBMC 1k: median r over {np.isfinite(r).sum()} genes = {median:.3f}; "
          f"{int((r > 0).sum())} positive; MS4A1 {r[list(rna.var_names).index('MS4A1')]:.2f}")
    assert np.isfinite(r).sum() == 45
    assert median > 0
