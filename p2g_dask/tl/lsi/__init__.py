"""Iterative LSI (ArchR's ``addIterativeLSI``): the embedding that metacells are built in."""

from p2g_dask._lazy import lazy_exports

_EXPORTS = {"iterative_lsi": "lsi", "tfidf": "lsi", "LSIParams": "_params"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
