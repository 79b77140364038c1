"""ArchR's gene scores (``addGeneScoreMatrix``) from fragment files: ``gene_scores``."""

from p2g_dask._lazy import lazy_exports

_EXPORTS = {"gene_scores": "gene_scores", "GeneScoreParams": "_model"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
