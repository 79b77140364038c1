"""The table schemas of p2g_dask._tables and their one check, as every user of a table sees it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from p2g_dask import _tables as T


def test_schemas__registry_lists_each_table_once_with_kinds_and_meanings():
    assert set(T.TABLES) == {"links", "co-accessibility", "genes", "exons", "fragments"}
    for schema in T.TABLES.values():
        assert len(schema.names) == len(set(schema.names)), schema.name
        assert all(c.kind in "Oif" and c.meaning for c in schema.columns), schema.name
    assert T.COACCESSIBILITY.names == ["peak1", "peak2", "chrom", "centre1", "centre2", "distance", "correlation",
                                       "t", "pval", "fdr", "var_q1", "var_q2"]
    assert T.GENE_COLUMNS == ["gene_name", "chrom", "start", "end", "strand"]
    assert T.FRAGMENTS.names == ["chrom", "start", "end", "barcode", "count"]


def test_require_columns__error_names_argument_missing_present_and_fix():
    table = pd.DataFrame({"gene": ["A"], "correlation": [0.1]})
    with pytest.raises(ValueError) as err:
        T.require_columns(table, T.LINKS, argument="my_links", columns=["gene", "fdr", "tss"])
    message = str(err.value)
    for part in ("my_links", "missing columns ['fdr', 'tss']", "it has ['gene', 'correlation']",
                 "p2g.tl.peak_to_gene"):
        assert part in message, message
    with pytest.raises(TypeError, match=r"my_links must be a pandas DataFrame .* got dict"):
        T.require_columns(table.to_dict(), T.LINKS, argument="my_links")
    with pytest.raises(KeyError, match="not in the links schema"):
        T.require_columns(table, T.LINKS, argument="x", columns=["colour"])
    assert T.require_columns(table, T.LINKS, argument="x", columns=["gene"]) is table


@pytest.fixture(scope="module")
def links() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 20
    return pd.DataFrame({"peak": [f"chr1:{i}-{i + 500}" for i in range(n)], "gene": "A", "chrom": "chr1",
                         "peak_start": np.arange(n), "peak_end": np.arange(n) + 500, "tss": 5000,
                         "distance": np.arange(n) + 250 - 5000, "correlation": rng.uniform(-1, 1, n),
                         "t": 1.0, "pval": 0.01, "fdr": rng.uniform(0, 0.1, n), "var_q_atac": 0.5,
                         "var_q_rna": 0.5})


@pytest.mark.parametrize("call", ["filter_links", "links_per_gene", "write_links_bedpe", "plot_link_summary",
                                  "plot_peak2gene", "plot_peak2gene_heatmap"])
def test_require_columns__every_links_user_reports_the_same_way(links, call, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import p2g_dask as p2g
    from p2g_dask.io.links_formats import write_links_bedpe

    broken = links.drop(columns=["fdr"] if call != "links_per_gene" else ["distance"])
    calls = {
        "filter_links": lambda: p2g.tl.filter_links(broken),
        "links_per_gene": lambda: p2g.tl.links_per_gene(broken),
        "write_links_bedpe": lambda: write_links_bedpe(broken.drop(columns="tss"), tmp_path / "x.bedpe"),
        "plot_link_summary": lambda: p2g.pl.plot_link_summary(broken),
        "plot_peak2gene": lambda: p2g.pl.plot_peak2gene(None, gene="A", links=broken, gene_annotation="x",
                                                       bigwig_files={}),
        "plot_peak2gene_heatmap": lambda: p2g.pl.plot_peak2gene_heatmap(object(), links=broken),
    }
    with pytest.raises(ValueError, match=r"is missing columns \[.*\]; it has \[.*\]\. The links table needs"):
        calls[call]()


def test_annotation_checks__same_message_from_reader_tools_and_plots(links):
    import p2g_dask as p2g
    from p2g_dask.io.genes import gene_table

    genes = pd.DataFrame({"gene_name": ["A"], "chrom": ["chr1"], "start": [100], "end": [9000]})
    expected = r"gene_annotation is missing columns \['strand'\]; it has .* The genes table needs"
    with pytest.raises(ValueError, match=expected):
        gene_table(genes)
    with pytest.raises(ValueError, match=expected):
        p2g.pl.plot_peak2gene(None, gene="A", links=links, gene_annotation=genes, bigwig_files={})
    with pytest.raises(ValueError, match=r"path_or_df is missing columns \['strand'\]"):
        p2g.io.read_gene_annotation(genes)
    bad_exons = pd.DataFrame({"gene_name": ["A"], "chrom": ["chr1"], "start": [100]})
    with pytest.raises(ValueError, match=r"exon_annotation is missing columns \['end'\].*The exons table needs"):
        p2g.pl.plot_peak2gene(None, gene="A", links=links, gene_annotation=genes.assign(strand="+"),
                              exon_annotation=bad_exons, bigwig_files={})
