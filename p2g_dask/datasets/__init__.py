"""Data: the seeded multiome simulator (offline demo and tests) and the registry of real data."""

from p2g_dask._lazy import lazy_exports

_EXPORTS = {
    "simulate_multiome": "simulate",
    "simulate_fragments": "simulate_fragments",
    "register_datasets": "registry",
    "fetch": "registry",
    "pbmc10k_multiome": "registry",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

# simulate_fragments shares its module's name: bind the function eagerly (see p2g_dask.tl).
from p2g_dask.datasets.simulate_fragments import simulate_fragments  # noqa: E402
