"""Tools: metacells, peak-to-gene links, co-accessibility, link filters, iterative LSI, pseudobulk
coverage, gene scores.

One folder per tool, the shared engine below them (arrows point down only)::

    tl/engine/       metacells, metacell sums (any stacked membership, one pass), pairs,
                     correlation and their kernels: what every metacell-correlation tool runs on
    tl/links/        peak_to_gene (plan -> sums -> correlate -> layers), co_accessibility,
                     link filters, differential links
    tl/lsi/          iterative_lsi          tl/pseudobulk/   pseudobulk_with_fragments
    tl/scores/       gene_scores

Public names resolve lazily to their module (``_EXPORTS``), so a tool's imports (and their
libraries) load only when it is first used.
"""

from p2g_dask._deprecations import moved_modules
from p2g_dask._lazy import lazy_exports

_EXPORTS = {
    "metacells": "engine.metacells",
    "metacell_membership": "engine.metacells",
    "overlap_filter": "engine.metacells",
    "candidate_pairs": "engine.pairs",
    "correlate_pairs": "engine.correlate",
    "benjamini_hochberg": "engine.kernels",
    "peak_to_gene": "links.peak_to_gene",
    "co_accessibility": "links.coaccess",
    "coaccessibility_loops": "links.coaccess",
    "filter_links": "links.filters",
    "links_per_gene": "links.filters",
    "links_per_peak": "links.filters",
    "differential_links": "links.differential",
    "group_metacells": "links.groups",
    "iterative_lsi": "lsi.lsi",
    "tfidf": "lsi.lsi",
    "pseudobulk_with_fragments": "pseudobulk.pseudobulk",
    "gene_scores": "scores.gene_scores",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

# The modules of the flat layout (up to 0.1) keep working for one release, with a FutureWarning.
moved_modules(__name__, {
    "aggregate": "p2g_dask.tl.engine.accumulate",
    "correlate": "p2g_dask.tl.engine.correlate",
    "pairs": "p2g_dask.tl.engine.pairs",
    "metacells": "p2g_dask.tl.engine.metacells",
    "peak_to_gene": "p2g_dask.tl.links.peak_to_gene",
    "group_links": "p2g_dask.tl.links.groups",
    "link_nulls": "p2g_dask.tl.links.empirical",
    "coaccess": "p2g_dask.tl.links.coaccess",
    "differential": "p2g_dask.tl.links.differential",
    "gene_scores": "p2g_dask.tl.scores.gene_scores",
})
