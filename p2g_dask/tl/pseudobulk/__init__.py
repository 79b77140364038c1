"""Per-group coverage BigWigs (and BEDs) from fragment files: ``pseudobulk_with_fragments``."""

from p2g_dask._lazy import lazy_exports

_EXPORTS = {"pseudobulk_with_fragments": "pseudobulk", "PseudobulkParams": "_params"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
