"""The data argument is first and named ``data`` in tl and pl; old names warn for one release."""

from __future__ import annotations

import pandas as pd
import pytest

import p2g_dask as p2g


@pytest.fixture(scope="module")
def sim():
    return p2g.datasets.simulate_multiome(n_cells=300, n_peaks=1500, n_genes=120, n_linked_genes=12, seed=4)


def test_peak_to_gene__atac_keyword_warns_and_gives_the_same_links(sim):
    params = dict(rna=sim.rna, gene_annotation=sim.genes, use_rep="X_latent", n_metacells=40, k_neighbors=15)
    new = p2g.tl.peak_to_gene(data=sim.atac, **params)
    with pytest.warns(FutureWarning, match=r"atac= is renamed data="):
        old = p2g.tl.peak_to_gene(atac=sim.atac, **params)
    pd.testing.assert_frame_equal(new, old)
    with pytest.raises(TypeError, match="both atac= and data="):
        p2g.tl.peak_to_gene(data=sim.atac, atac=sim.atac, **params)


def test_iterative_lsi__atac_keyword_warns_and_gives_the_same_embedding(sim):
    params = dict(n_components=5, iterations=2, var_features=500, n_neighbors=10)
    new = p2g.tl.iterative_lsi(data=sim.atac.copy(), **params)
    with pytest.warns(FutureWarning, match=r"atac= is renamed data="):
        old = p2g.tl.iterative_lsi(atac=sim.atac.copy(), **params)
    assert (new == old).all()


@pytest.mark.parametrize("function", ["peak_to_gene", "iterative_lsi", "pseudobulk_with_fragments", "gene_scores"])
def test_tl_entry_points__data_argument_first(function):
    import inspect

    first = next(iter(inspect.signature(getattr(p2g.tl, function)).parameters))
    assert first == ("fragments" if function == "gene_scores" else "data")
