"""Tools: metacells, peak-to-gene links, link filters, iterative LSI, pseudobulk coverage,
gene scores.

Public names resolve lazily to their module (``_EXPORTS``); the metacell aggregation of
``peak_to_gene`` (``p2g_dask.tl.aggregate``) is internal and not exported.
"""

from p2g_dask._lazy import lazy_exports

_EXPORTS = {
    "metacells": "metacells",
    "metacell_membership": "metacells",
    "overlap_filter": "metacells",
    "candidate_pairs": "pairs",
    "correlate_pairs": "correlate",
    "benjamini_hochberg": "correlate",
    "peak_to_gene": "peak_to_gene",
    "co_accessibility": "coaccess",
    "coaccessibility_loops": "coaccess",
    "iterative_lsi": "lsi",
    "tfidf": "lsi",
    "pseudobulk_with_fragments": "pseudobulk",
    "gene_scores": "gene_scores",
    "filter_links": "links",
    "links_per_gene": "links",
    "links_per_peak": "links",
    "differential_links": "differential",
    "group_metacells": "group_links",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

# These functions share their module's name: importing the submodule would bind the module to
# the package attribute, so bind the functions eagerly instead.
from p2g_dask.tl.metacells import metacells  # noqa: E402
from p2g_dask.tl.peak_to_gene import peak_to_gene  # noqa: E402
from p2g_dask.tl.gene_scores import gene_scores  # noqa: E402
__all__ = sorted(_EXPORTS)

# The numba kernels of peak_to_gene, iterative_lsi and the store reader load from numba's cache in
# the background while the caller reads its data (seconds of a fresh process's first call
# otherwise); p2g.warm-kernels: false disables.
from p2g_dask._warm import in_worker_process, warm_in_background  # noqa: E402

warm_in_background()
if not in_worker_process():
    # The metacells' and clusters' kNN (scikit-learn, ~1.5 s to import), the Leiden clustering
    # of iterative_lsi (igraph, which imports matplotlib: ~0.5 s) and the AnnData reader (~0.5 s)
    # are imported here, not inside a first call. Dask workers never run them, and skip their
    # ~130 MiB.
    import anndata  # noqa: E402, F401
    import igraph  # noqa: E402, F401
    import sklearn.neighbors  # noqa: E402, F401
