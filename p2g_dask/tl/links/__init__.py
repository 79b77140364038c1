"""Links: ``peak_to_gene`` (the engine's plan, sums and correlation plus layers: empirical null,
cell-level permutation null, groups, replication across samples), ``co_accessibility``, the link
filters and ``differential_links``."""

from p2g_dask._lazy import lazy_exports

_EXPORTS = {
    "peak_to_gene": "peak_to_gene",
    "co_accessibility": "coaccess",
    "coaccessibility_loops": "coaccess",
    "filter_links": "filters",
    "links_per_gene": "filters",
    "links_per_peak": "filters",
    "passing_links": "filters",
    "differential_links": "differential",
    "group_metacells": "groups",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
