"""Barcodes: pairing ATAC and RNA cells (one check for every input path), and matching a fragment
file's barcodes to the cells' obs names (as they are, or with the sample name as prefix/suffix)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from p2g_dask._logging import logger

# Tried in this order when obs_names carry the sample name (longest separators first).
_SEPARATORS = ("___", "__", "#", ":", "|", "_", "-", ".", "+")


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


def _strip_rules(sample: str):
    yield "as is", lambda names: names
    for sep in _SEPARATORS:
        pre, suf = f"{sample}{sep}", f"{sep}{sample}"
        yield f"prefix {pre!r}", lambda names, pre=pre: [n[len(pre):] if n.startswith(pre) else None for n in names]
        yield f"suffix {suf!r}", lambda names, suf=suf: [n[: -len(suf)] if n.endswith(suf) else None for n in names]


def match_barcodes(cells: pd.DataFrame, sample: str, file_barcodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map a file's barcodes to group codes (-1: not a grouped cell of this sample) and obs names.

    The obs names of the sample's cells are matched to the file's barcodes as they are, or with
    the sample name stripped as a prefix or suffix; the rule that matches most cells wins.
    """
    mine = cells[cells["sample"] == sample]
    names = list(mine.index)
    index = pd.Index(file_barcodes)
    best = ("as is", np.full(len(names), -1))
    for rule, strip in _strip_rules(sample):
        raw = strip(names)
        hits = index.get_indexer([r if r is not None else "\0" for r in raw])
        if (hits >= 0).sum() > (best[1] >= 0).sum():
            best = (rule, hits)
    rule, hits = best
    dtype = np.int16 if len(cells["group"].cat.categories) < 2**15 else np.int32
    lookup = np.full(len(file_barcodes), -1, dtype=dtype)
    obs_names = np.full(len(file_barcodes), "", dtype=object)
    found = hits >= 0
    lookup[hits[found]] = mine["group"].cat.codes.to_numpy()[found]
    obs_names[hits[found]] = np.asarray(names, dtype=object)[found]
    if not found.any() and names:
        logger.warning(
            "sample %r: none of its %d cells is in its fragment file (obs names like %r, file barcodes like %r)",
            sample, len(names), names[0], file_barcodes[0] if len(file_barcodes) else None,
        )
    else:
        logger.info("sample %r: %d of %d cells found in the fragment file (obs names matched %s)",
                    sample, int(found.sum()), len(names), rule)
    return lookup, obs_names
