"""epione's tutorials run on p2g_dask as their users write them, without a warning.

The code cells of epione's ``t_peak_to_gene.ipynb`` and ``t_iterative_lsi.ipynb``
(github.com/aristoteleo/epione, epione_guide/tutorials/single/) are transcribed below as they are,
for the functions p2g_dask shares with epione (``tl.iterative_lsi``, ``tl.peak_to_gene``,
``pseudobulk_with_fragments``, ``pl.plot_peak2gene``), with only these substitutions:

- ``import epione as epi``: ``epi`` is :func:`epione_layout`, epione's module layout over
  p2g_dask's functions (``epi.tl`` = ``p2g.tl``, ``epi.pl`` = ``p2g.pl``,
  ``epi.single.pseudobulk_with_fragments`` = ``p2g.tl.pseudobulk_with_fragments``,
  ``epi.utils.register_datasets`` / ``epi.utils.genome`` = ``p2g.datasets.register_datasets`` /
  ``p2g.genome``). It lives in this test, never in the package.
- IPython's magics (``%matplotlib``, ``%autoreload``, ``%%time``), the cache folder in
  ``os.environ`` and ``import scanpy`` (not used by these cells) are left out; ``WORK`` is a
  temporary folder; ``display`` collects the figures (for the checks) instead of showing them.
- The data: the registry serves the simulated PBMC-like files of tests/_docs_inputs.py (6,000
  cells, cell types under PBMC 10k labels, marker genes named CD3D, MS4A1, ...) instead of
  downloading the 10x PBMC 10k files; the iterative-LSI tutorial's tile matrix (built with
  epione's own fragment importer) is replaced by the same simulated cells x peaks matrix.

Every cell runs with warnings as errors (any library's; pyranges' own DeprecationWarnings
excepted, as in pyproject.toml) and with no WARNING record of the ``p2g_dask`` logger.
"""

from __future__ import annotations

import ast
import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from _docs_inputs import docs_inputs, serve_registry, write_epione_inputs  # noqa: E402


def epione_layout():
    """``import epione as epi`` for the tutorials' cells: epione's module layout, p2g's functions."""
    import p2g_dask as p2g

    return SimpleNamespace(
        tl=p2g.tl,
        pl=p2g.pl,
        single=SimpleNamespace(pseudobulk_with_fragments=p2g.tl.pseudobulk_with_fragments),
        utils=SimpleNamespace(register_datasets=p2g.datasets.register_datasets, genome=p2g.genome),
    )


# epione_guide/tutorials/single/t_peak_to_gene.ipynb, code cells by their index in the notebook.
PEAK_TO_GENE_CELLS = {
    3: """\
import os, pathlib

import numpy as np
import pandas as pd
import anndata as ad
import matplotlib.pyplot as plt

epi.pl.plot_set()

WORK.mkdir(parents=True, exist_ok=True)
""",
    4: """\
# Load the PBMC 10k multiome ATAC + RNA h5ad files. Both are in
# the epione dataset registry; pooch downloads + caches them on
# first use.
DS = epi.utils.register_datasets()
atac = ad.read_h5ad(DS.fetch('10x-Multiome-Pbmc10k-ATAC.h5ad'))
rna  = ad.read_h5ad(DS.fetch('10x-Multiome-Pbmc10k-RNA.h5ad'))
print(atac)
print(rna)
""",
    5: """\
common = atac.obs_names.intersection(rna.obs_names)
atac = atac[common].copy()
rna  = rna[common].copy()
atac.obs['n_fragment'] = np.asarray(atac.X.sum(axis=1)).ravel()
atac.shape, rna.shape
""",
    7: """\
epi.tl.iterative_lsi(
    atac,
    n_components=30,
    iterations=2,
    var_features=25_000,
    resolution=0.5,
    n_neighbors=30,
    sample_cells_pre=10_000,
    depth_col='n_fragment',
    seed=1,
)
atac.obsm['X_iterative_lsi'].shape
""",
    9: """\
import pyranges as pr
gtf_path = epi.utils.genome.hg38.annotation
g = pr.read_gff3(str(gtf_path)).df

gene_ann = pd.DataFrame({
    'gene_name': g.loc[g.Feature == 'gene', 'gene_name'].astype(str).values,
    'chrom':     g.loc[g.Feature == 'gene', 'Chromosome'].astype(str).values,
    'start':     g.loc[g.Feature == 'gene', 'Start'].astype(int).values,
    'end':       g.loc[g.Feature == 'gene', 'End'].astype(int).values,
    'strand':    g.loc[g.Feature == 'gene', 'Strand'].astype(str).values,
}).drop_duplicates('gene_name').reset_index(drop=True)

exon_ann = pd.DataFrame({
    'gene_name': g.loc[g.Feature == 'exon', 'gene_name'].astype(str).values,
    'chrom':     g.loc[g.Feature == 'exon', 'Chromosome'].astype(str).values,
    'start':     g.loc[g.Feature == 'exon', 'Start'].astype(int).values,
    'end':       g.loc[g.Feature == 'exon', 'End'].astype(int).values,
    'strand':    g.loc[g.Feature == 'exon', 'Strand'].astype(str).values,
})

len(gene_ann), len(exon_ann)
""",
    11: """\
links = epi.tl.peak_to_gene(
    atac,
    rna=rna,
    gene_annotation=gene_ann,
    use_rep='X_iterative_lsi',
    n_metacells=500,
    k_neighbors=100,
    max_distance=250_000,
    seed=1,
)
links.to_parquet(WORK / 'peak_to_gene.parquet')
print(f'{len(links):,} pairs | {(links.fdr < 0.05).sum():,} FDR < 0.05')
""",
    12: """\
links.reindex(links['correlation'].abs().sort_values(ascending=False).index) \\
     .head(10)[['peak', 'gene', 'distance', 'correlation', 'fdr']]
""",
    14: """\
sig = links[links['fdr'] < 0.05]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))

axes[0].hist(links['correlation'],  bins=60, color='0.7', label='all')
axes[0].hist(sig['correlation'],    bins=60, color='C0',  label='FDR < 0.05')
axes[0].set_xlabel('Pearson r'); axes[0].set_ylabel('# pairs')
axes[0].legend(fontsize=8); axes[0].set_title('Correlation')

axes[1].hist(links['distance'] / 1e3, bins=60, color='0.7')
axes[1].hist(sig['distance']   / 1e3, bins=60, color='C1')
axes[1].set_xlabel('peak-centre − TSS (kb)'); axes[1].set_title('Distance')

per_gene = sig.groupby('gene').size().clip(upper=50)
axes[2].hist(per_gene, bins=np.arange(0, 52, 2), color='C2')
axes[2].set_xlabel('# sig links / gene')
axes[2].set_title(f'{per_gene.size:,} genes w/ ≥1 link')

plt.tight_layout(); display(fig); plt.close(fig)
""",
    15: """\
for gene in ['CD3D', 'CD19', 'MS4A1', 'GNLY', 'LYZ']:
    sub = sig[sig['gene'] == gene]
    if sub.empty:
        continue
    print(f'\\n{gene}: {len(sub)} significant links')
    print(sub.reindex(sub.correlation.abs().sort_values(ascending=False).index)
             .head(5)[['peak', 'distance', 'correlation']].to_string(index=False))
""",
    17: """\
# Map fine-grained cell types to broad lineages for clearer coverage
major = {
    'CD4 Naive': 'T_CD4', 'CD4 TCM': 'T_CD4', 'CD4 TEM': 'T_CD4', 'Treg': 'T_CD4',
    'CD8 Naive': 'T_CD8', 'CD8 TEM_1': 'T_CD8', 'CD8 TEM_2': 'T_CD8',
    'MAIT': 'T_CD8', 'gdT': 'T_CD8',
    'Naive B': 'B', 'Memory B': 'B', 'Intermediate B': 'B', 'Plasma': 'B',
    'NK': 'NK', 'CD14 Mono': 'Mono', 'CD16 Mono': 'Mono',
    'cDC': 'DC', 'pDC': 'DC', 'HSPC': 'HSPC',
}
atac.obs['lineage'] = atac.obs['cell_type'].map(major).astype('category')
""",
    19: """\
fig, _ = epi.pl.plot_peak2gene(
    atac, gene='CD3D',
    gene_annotation=gene_ann,
    exon_annotation=exon_ann,
    fdr_thresh=0.05, min_abs_r=0.3,
    pad_bp=80_000, figsize=(8, 4), show=False,
)
plt.tight_layout(); display(fig); plt.close(fig)
""",
    21: """\
for gene in ['CD3D', 'MS4A1', 'LYZ', 'GNLY']:
    fig, _ = epi.pl.plot_peak2gene(
        atac, gene=gene,
        group_by='lineage',
        gene_annotation=gene_ann,
        exon_annotation=exon_ann,
        fdr_thresh=0.05, min_abs_r=0.3,
        pad_bp=80_000, figsize=(8, 4), show=False,
    )
    plt.tight_layout(); display(fig); plt.close(fig)
""",
    23: """\
frag_path = epi.utils.register_datasets().fetch('pbmc_10k_atac.tsv.gz')
print('fragment file:', frag_path)
""",
    25: """\
BW_DIR = WORK / 'pseudobulk_bw'
BW_DIR.mkdir(exist_ok=True)

chrom = pr.PyRanges(pd.DataFrame({
    'Chromosome': list(epi.utils.genome.hg38.chrom_sizes.keys()),
    'Start': 0,
    'End':   list(epi.utils.genome.hg38.chrom_sizes.values()),
}))

epi.single.pseudobulk_with_fragments(
    input_data=atac,                    # AnnData with obs['lineage']
    chromsizes=chrom,
    cluster_key='lineage',
    path_to_fragments={'pbmc10k': str(frag_path)},
    bigwig_path=str(BW_DIR),
    bed_path=None,                      # skip BED — slow, rarely needed
    bigwig_strategy='cutsite',          # Tn5 insertion density (+4/-5)
    normalize_bigwig=True,              # CPM
    cache_fragments=str(WORK / 'frag_cache'),
    executor='process',                 # fork pool for true parallel writes
    n_jobs=4,
    balance_clusters=False,
    show_progress=False,
    verbose=False,
)
bigwig_files = {p.stem: str(p) for p in BW_DIR.glob('*.bw')}
bigwig_files
""",
    27: """\
for mode, kwargs in [
    ('peak-matrix (group_by)', dict(group_by='lineage')),
    ('BigWig (fragments)',     dict(bigwig_files=bigwig_files)),
]:
    print(f'\\n=== {mode} ===')
    fig, _ = epi.pl.plot_peak2gene(
        atac, gene='CD3D',
        gene_annotation=gene_ann,
        exon_annotation=exon_ann,
        fdr_thresh=0.01, min_abs_r=0.3,
        pad_bp=80_000, figsize=(8, 4), show=False,
        **kwargs,
    )
    plt.tight_layout(); display(fig); plt.close(fig)
""",
}

# epione_guide/tutorials/single/t_iterative_lsi.ipynb: its iterative_lsi cells (9, 10, and 19 on
# the cells of ``ad_archr``; its cells 12-13 are scanpy's clustering and UMAP, not shared).
ITERATIVE_LSI_CELLS = {
    9: """\
epi.tl.iterative_lsi(
    adata,
    n_components=30,
    iterations=2,
    var_features=25_000,
    resolution=0.5,
    n_neighbors=30,
    sample_cells_pre=10_000,
    depth_col='n_fragment',
    cor_cut_off=0.75,
    seed=1,
)
adata.obsm['X_iterative_lsi'].shape
""",
    10: """\
adata.uns['X_iterative_lsi']['kept_dims']
""",
    19: """\
if ARCHR_OK:
    epi.tl.iterative_lsi(
        ad_archr, n_components=30, iterations=2,
        var_features=25_000, resolution=2.0, n_neighbors=20,
        sample_cells_pre=10_000, depth_col='n_fragment', seed=1,
    )
""",
}


def run_cells(cells: dict[int, str], namespace: dict, caplog, name: str) -> dict[int, object]:
    """Run ``cells`` in order in ``namespace`` with warnings as errors; each cell's last value."""
    values = {}
    for index, source in cells.items():
        caplog.clear()
        with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="p2g_dask"):
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pyranges")
            # As a notebook runs a cell: the statements, then the value of a last expression.
            tree = ast.parse(source)
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, f"{name} cell {index}", "exec"), namespace)  # noqa: S102 - the point of the test
            values[index] = (eval(compile(ast.Expression(last.value), f"{name} cell {index}", "eval"), namespace)  # noqa: S307
                             if last is not None else None)
        logged = [f"{r.levelname}: {r.getMessage()}" for r in caplog.records
                  if r.name.startswith("p2g_dask") and r.levelno >= logging.WARNING]
        assert not logged, f"{name} cell {index} logged:\n" + "\n".join(logged)
    return values


@pytest.fixture(scope="module")
def epione_registry(tmp_path_factory):
    docs_folder = docs_inputs(tmp_path_factory)
    return write_epione_inputs(tmp_path_factory.mktemp("epione-inputs"), docs_folder)


def arcs(fig) -> int:
    return sum(p.get_gid() == "arc" for ax in fig.axes for p in ax.patches)


def passing(links: pd.DataFrame, gene: str, fdr: float, r: float) -> int:
    mine = links[links["gene"] == gene]
    return int(((mine["fdr"] <= fdr) & (mine["correlation"].abs() >= r)).sum())


def test_epione_peak_to_gene_tutorial__runs_as_written(epione_registry, tmp_path, monkeypatch, caplog):
    import pybigtools

    serve_registry(monkeypatch, tmp_path, files=epione_registry)
    figures = []
    namespace = {"__name__": "__tutorial__", "epi": epione_layout(), "WORK": tmp_path / "work",
                 "display": figures.append}
    monkeypatch.chdir(tmp_path)
    values = run_cells(PEAK_TO_GENE_CELLS, namespace, caplog, "t_peak_to_gene")
    atac, links = namespace["atac"], namespace["links"]

    # LSI: an embedding of every cell, at most 30 components.
    n_cells, n_dims = values[7]
    assert n_cells == atac.n_obs == 6000 and 2 <= n_dims <= 30
    # peak_to_gene: the links table, kept in atac.uns as epione keeps it, and the parquet file.
    assert {"peak", "gene", "chrom", "distance", "correlation", "pval", "fdr"} <= set(links.columns)
    assert atac.uns["peak_to_gene"] is links
    assert len(pd.read_parquet(tmp_path / "work" / "peak_to_gene.parquet")) == len(links)
    assert (links["distance"].abs() <= 250_000).all() and links.attrs["metacells"].shape[1] == 100
    assert values[12]["correlation"].abs().is_monotonic_decreasing
    # The figures: the summary (3 panels), then 1 + 4 + 2 browser tracks with one arc per passing link.
    summary, minimal, *by_lineage = figures[:6]
    assert len(summary.axes) == 3 and len(figures) == 8
    assert arcs(minimal) == passing(links, "CD3D", 0.05, 0.3) > 0
    lineages = sorted(atac.obs["lineage"].cat.categories)
    assert lineages == ["B", "Mono", "NK", "T_CD4", "T_CD8"]
    for gene, fig in zip(["CD3D", "MS4A1", "LYZ", "GNLY"], by_lineage):
        assert arcs(fig) == passing(links, gene, 0.05, 0.3) > 0
        assert {ax.get_ylabel() for ax in fig.axes} >= set(lineages)   # one coverage row per lineage
    peak_matrix_fig, bigwig_fig = figures[6:]
    assert arcs(peak_matrix_fig) == arcs(bigwig_fig) == passing(links, "CD3D", 0.01, 0.3)
    # BigWigs: one per lineage, CPM of Tn5 insertions (each file's signal sums to 1e6).
    bigwig_files = values[25]
    assert sorted(bigwig_files) == lineages
    for path in bigwig_files.values():
        assert os.path.getsize(path) > 0
        with pybigtools.open(path) as bw:
            total = sum((end - start) * value for chrom in bw.chroms() for start, end, value in bw.records(chrom))
        assert total == pytest.approx(1e6, rel=1e-4)


def test_epione_iterative_lsi_tutorial__runs_as_written(epione_registry, caplog):
    import anndata as ad

    adata = ad.read_h5ad(epione_registry["10x-Multiome-Pbmc10k-ATAC.h5ad"])
    adata.obs["n_fragment"] = np.asarray(adata.X.sum(axis=1)).ravel()   # as the tutorial's cell 7
    ad_archr = adata.copy()
    namespace = {"__name__": "__tutorial__", "epi": epione_layout(), "adata": adata, "ad_archr": ad_archr,
                 "ARCHR_OK": True}
    values = run_cells(ITERATIVE_LSI_CELLS, namespace, caplog, "t_iterative_lsi")
    kept = values[10]
    assert values[9] == (adata.n_obs, len(kept)) and 2 <= len(kept) <= 30
    np.testing.assert_array_equal(kept, adata.uns["X_iterative_lsi"]["components_kept"])
    # cor_cut_off= is cor_cutoff=: every kept component has |r| <= 0.75 with log10(depth + 1).
    assert (np.abs(adata.uns["X_iterative_lsi"]["depth_correlation"][kept]) <= 0.75).all()
    assert adata.uns["X_iterative_lsi"]["params"]["cor_cutoff"] == 0.75
    assert ad_archr.uns["X_iterative_lsi"]["params"]["resolution"] == 2.0
    assert ad_archr.obsm["X_iterative_lsi"].shape[0] == adata.n_obs


# ---------------------------------------------------------------------------------------------
# epione's conventions one by one, on small data.


@pytest.fixture(scope="module")
def small():
    from p2g_dask.datasets import simulate_multiome

    return simulate_multiome(n_cells=300, n_peaks=1500, n_genes=120, n_linked_genes=12, seed=4)


SMALL_P2G = dict(gene_annotation=None, use_rep="X_latent", n_metacells=30, k_neighbors=10, show_progress=False)


def _p2g(small, data, **kwargs):
    import p2g_dask as p2g

    return p2g.tl.peak_to_gene(data, **{**SMALL_P2G, "gene_annotation": small.genes, **kwargs})


def test_peak_to_gene__keeps_links_in_uns_as_epione(small, tmp_path):
    import mudata as md

    import p2g_dask as p2g

    atac = small.atac.copy()
    links = _p2g(small, atac, rna=small.rna)
    assert atac.uns["peak_to_gene"] is links            # the table itself, as epione keeps it
    other = _p2g(small, atac, rna=small.rna, key_added="p2g_links")
    pd.testing.assert_frame_equal(atac.uns["p2g_links"], links)
    assert atac.uns["peak_to_gene"] is links and other is atac.uns["p2g_links"]
    bare = small.atac.copy()
    _p2g(small, bare, rna=small.rna, inplace=False)
    _p2g(small, bare, rna=small.rna, key_added=None)
    assert "peak_to_gene" not in bare.uns and not any(isinstance(v, pd.DataFrame) for v in bare.uns.values())
    view = small.atac[: small.atac.n_obs - 1]          # a view: left as it is, without anndata's warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _p2g(small, view, rna=small.rna)
    assert view.is_view and "peak_to_gene" not in view.uns
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"atac": small.atac.copy(), "rna": small.rna.copy()})
    mdata.mod["atac"].obsm["X_latent"] = small.atac.obsm["X_latent"]
    from_mudata = _p2g(small, mdata)
    assert mdata.mod["atac"].uns["peak_to_gene"] is from_mudata and "peak_to_gene" not in mdata.uns
    # A store is never written to: the links are returned only.
    store = p2g.io.ingest(small.atac, small.rna, tmp_path / "s.zarr")
    files = lambda: sorted(p.relative_to(store.path) for p in Path(store.path).rglob("*"))  # noqa: E731
    before = files()
    from_store = _p2g(small, store.path)
    assert files() == before
    pd.testing.assert_frame_equal(from_store, links, check_exact=False, rtol=1e-6)


def test_plot_peak2gene__reads_the_links_peak_to_gene_kept(small):
    import p2g_dask as p2g

    atac = small.atac.copy()
    links = _p2g(small, atac, rna=small.rna)
    gene = small.truth["gene"].iloc[0]
    kw = dict(gene=gene, gene_annotation=small.genes, fdr_cutoff=0.5, cor_cutoff=0.0)
    fig, _ = p2g.pl.plot_peak2gene(atac, links=links, **kw)
    fig_uns, _ = p2g.pl.plot_peak2gene(atac, **kw)
    assert arcs(fig_uns) == arcs(fig) == passing(links, gene, 0.5, 0.0) > 0
    atac.uns["mine"] = atac.uns.pop("peak_to_gene")
    assert arcs(p2g.pl.plot_peak2gene(atac, links_key="mine", **kw)[0]) == arcs(fig)
    with pytest.raises(KeyError, match=r"uns\['peak_to_gene'\] is not in the data.*links="):
        p2g.pl.plot_peak2gene(atac, **kw)
    with pytest.raises(ValueError, match="pass links="):
        p2g.pl.plot_peak2gene(None, bigwig_files={"a": "a.bw"}, **kw)


def test_epione_argument_names__silent_and_the_same_results(small):
    import p2g_dask as p2g

    lsi = dict(n_components=8, iterations=2, var_features=800, n_neighbors=10, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epione = p2g.tl.iterative_lsi(adata=small.atac.copy(), cor_cut_off=0.5, **lsi)
        links_epione = _p2g(small, small.atac.copy(), rna=small.rna, inplace=False)
    canonical = p2g.tl.iterative_lsi(small.atac.copy(), cor_cutoff=0.5, **lsi)
    np.testing.assert_array_equal(epione, canonical)
    pd.testing.assert_frame_equal(links_epione, _p2g(small, small.atac.copy(), rna=small.rna, inplace=False))
    # An error names the argument as the caller wrote it.
    with pytest.raises(TypeError, match="both cor_cut_off= and cor_cutoff="):
        p2g.tl.iterative_lsi(small.atac.copy(), cor_cut_off=0.5, cor_cutoff=0.5)
    # p2g_dask's own old name keeps its FutureWarning.
    with pytest.warns(FutureWarning, match="atac= is renamed data="):
        p2g.tl.iterative_lsi(atac=small.atac.copy(), **lsi)


def test_pseudobulk_with_fragments__random_state_and_cache_fragments_as_epione(small, tmp_path):
    import pybigtools

    import p2g_dask as p2g
    from p2g_dask.datasets import simulate_fragments

    frags = simulate_fragments(small.atac, tmp_path / "f.tsv.gz", chrom_sizes=small.chrom_sizes, seed=1)
    common = dict(chrom_sizes=small.chrom_sizes, cluster_key="lineage", path_to_fragments={"s": frags},
                  balance_clusters=True, executor="synchronous", show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epione = p2g.tl.pseudobulk_with_fragments(input_data=small.atac, bigwig_path=tmp_path / "a",
                                                  random_state=3, **common)
    seeded = p2g.tl.pseudobulk_with_fragments(small.atac, bigwig_path=tmp_path / "b", seed=3, **common)
    other = p2g.tl.pseudobulk_with_fragments(small.atac, bigwig_path=tmp_path / "c", seed=4, **common)

    def signal(path):
        with pybigtools.open(str(path)) as bw:
            return [r for chrom in bw.chroms() for r in bw.records(chrom)]

    group = small.atac.obs["lineage"].value_counts().index[0]   # the largest: down-sampled by the seed
    assert signal(epione[group]) == signal(seeded[group]) != signal(other[group])
    # epione's cache_fragments=False (its default) keeps no cache, as None; True names no folder.
    uncached = p2g.tl.pseudobulk_with_fragments(small.atac, bigwig_path=tmp_path / "d", seed=3, cache_fragments=False,
                                                **common)
    assert signal(uncached[group]) == signal(seeded[group]) and sorted(os.listdir(tmp_path / "d")) == sorted(
        os.listdir(tmp_path / "b"))
    with pytest.raises(ValueError, match="cache_fragments=True .* pass a folder"):
        p2g.tl.pseudobulk_with_fragments(small.atac, bigwig_path=tmp_path / "e", cache_fragments=True, **common)


def test_verbose__shows_this_calls_progress_or_only_its_warnings(small, caplog, capsys, monkeypatch):
    import p2g_dask as p2g
    from p2g_dask._logging import logger

    lsi = dict(n_components=5, iterations=1, var_features=500, show_progress=False)
    caplog.set_level(logging.INFO, logger="p2g_dask")
    p2g.tl.iterative_lsi(small.atac.copy(), verbose=False, **lsi)
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    assert logger.level == logging.INFO                       # restored
    p2g.tl.iterative_lsi(small.atac.copy(), verbose=None, **lsi)
    assert any("iterative_lsi" in r.getMessage() for r in caplog.records)
    # With no handler that prints INFO records, verbose=True prints them on stderr for the call.
    caplog.set_level(logging.NOTSET, logger="p2g_dask")
    monkeypatch.setattr(logger, "propagate", False)
    handlers = list(logger.handlers)
    p2g.tl.iterative_lsi(small.atac.copy(), verbose=True, **lsi)
    assert "iterative_lsi: stored obsm['X_iterative_lsi']" in capsys.readouterr().err
    assert logger.handlers == handlers and logger.level == logging.NOTSET
    with pytest.raises(TypeError, match="verbose='yes' must be True, False or None"):
        p2g.tl.iterative_lsi(small.atac.copy(), verbose="yes", **lsi)


def test_iterative_lsi__sample_cells_pre_none_samples_all_cells(small):
    """epione's own tests call ``iterative_lsi(..., sample_cells_pre=None, verbose=False)`` then
    ``peak_to_gene`` without ``use_rep``: None is every cell, as ``sample_cells_pre=n_cells``."""
    import p2g_dask as p2g

    lsi = dict(n_components=10, iterations=2, var_features=400, total_features=500, seed=0)
    epione_style = small.atac.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p2g.tl.iterative_lsi(epione_style, sample_cells_pre=None, verbose=False, **lsi)
        links = p2g.tl.peak_to_gene(epione_style, rna=small.rna, gene_annotation=small.genes, n_metacells=30,
                                    k_neighbors=10, max_distance=100_000, seed=0, verbose=False)
    every_cell = p2g.tl.iterative_lsi(small.atac.copy(), sample_cells_pre=small.atac.n_obs, **lsi)
    np.testing.assert_array_equal(epione_style.obsm["X_iterative_lsi"], every_cell)
    assert epione_style.uns["X_iterative_lsi"]["iteration_n_cells_sampled"][0] == small.atac.n_obs
    assert epione_style.uns["peak_to_gene"] is links and (links["distance"].abs() <= 100_000).all()
