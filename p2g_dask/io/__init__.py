"""Input and output: the Zarr multiome store, links tables, gene annotation, fragment files."""

from p2g_dask._lazy import lazy_exports

_EXPORTS = {
    "ingest": "store",
    "add_modality": "store",
    "open_store": "store",
    "MultiomeStore": "store",
    "parse_peak_names": "peaks",
    "peak_table": "peaks",
    "write_links": "links",
    "read_links": "links",
    "read_gene_annotation": "annotation",
    "read_chrom_sizes": "annotation",
    "read_fragments": "fragments",
    "verify_store": "verify",
    "ingest_samples": "samples",
    "read_sample_table": "samples",
    "peak_matrix": "peak_counts",
    "merge_peaks": "peak_sets",
    "read_peaks": "peak_sets",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
