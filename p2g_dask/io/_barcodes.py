"""Pairing ATAC and RNA cells by barcode: one check for every input path."""

from __future__ import annotations

import pandas as pd

from p2g_dask._logging import logger


def check_unique_barcodes(names: pd.Index, argument: str) -> None:
    """Raise when ``names`` (a modality's barcodes) has duplicates: cells could not be paired."""
    duplicated = names.duplicated()
    if duplicated.any():
        raise ValueError(
            f"{argument} has {int(duplicated.sum())} duplicate barcodes (obs_names), e.g. "
            f"{names[duplicated][0]!r}; ATAC and RNA cells are paired by barcode, so each must be unique: "
            "drop the duplicates (adata = adata[~adata.obs_names.duplicated()])."
        )


def common_cells(atac_names: pd.Index, rna_names: pd.Index) -> pd.Index:
    """Barcodes of both modalities, in ATAC order; errors on none, warns on a partial overlap.

    One check for every input path (in-memory AnnData/MuData and :func:`ingest`).

    Examples
    --------
    >>> common_cells(pd.Index(["a", "b", "c"]), pd.Index(["c", "a"])).tolist()
    ['a', 'c']
    """
    check_unique_barcodes(atac_names, "atac")
    check_unique_barcodes(rna_names, "rna")
    common = atac_names.intersection(rna_names, sort=False)
    if common.size == 0:
        raise ValueError(
            f"atac ({atac_names.size} cells, e.g. {atac_names[:1].tolist()}) and rna ({rna_names.size} "
            f"cells, e.g. {rna_names[:1].tolist()}) share no barcodes; check both come from the same "
            "run and use the same barcode form (e.g. the '-1' suffix)."
        )
    if common.size < max(atac_names.size, rna_names.size):
        logger.warning(
            "atac has %d cells and rna %d; using the %d barcodes they share",
            atac_names.size, rna_names.size, common.size,
        )
    return common
