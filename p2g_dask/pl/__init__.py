"""Plots on collected results: ArchR-style browser tracks, link summaries, heatmaps, and the print
style (``plot_style`` for a block, ``plot_set`` globally)."""

from p2g_dask._lazy import lazy_exports

_EXPORTS = {
    "plot_peak2gene": "browser",
    "plot_link_summary": "summary",
    "plot_differential_links": "differential",
    "plot_link_calibration": "calibration",
    "plot_peak2gene_heatmap": "heatmap",
    "plot_set": "style",
    "plot_style": "style",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
