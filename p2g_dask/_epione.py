"""epione's conventions, kept by the functions p2g_dask shares with it (``iterative_lsi``,
``peak_to_gene``, ``pseudobulk_with_fragments``, ``plot_peak2gene``), so its tutorials run as
written: ``verbose=`` on the tools, and the links kept in ``uns`` of the ATAC AnnData, where
``plot_peak2gene`` finds them without ``links=``.

epione's argument names themselves are :func:`p2g_dask._deprecations.argument_aliases`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

from p2g_dask._lazy import imported_instance
from p2g_dask._logging import logger

#: Where ``peak_to_gene`` keeps its links and ``plot_peak2gene`` looks for them (epione's key).
LINKS_KEY = "peak_to_gene"


def _shown_at(level: int) -> bool:
    """Would a record of ``level`` from the ``p2g_dask`` logger reach a handler that prints it?"""
    current: logging.Logger | None = logger
    while current is not None:
        if any(h.level <= level and not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


@contextlib.contextmanager
def verbosity(verbose: bool | None) -> Iterator[None]:
    """The ``p2g_dask`` log records of the block: INFO and up (``True``), WARNING and up
    (``False``), or as logging is configured (``None``); restored afterwards.

    With ``True`` and no handler that would print INFO records, a stderr handler is added for the
    block (epione prints its progress). The level is the logger's: calls running at the same
    time in other threads share it.

    Examples
    --------
    >>> with verbosity(False):
    ...     logger.isEnabledFor(logging.INFO)
    False
    """
    if verbose is None:
        yield
        return
    level = logging.INFO if verbose else logging.WARNING
    previous = logger.level
    added = None
    if verbose and not _shown_at(logging.INFO):
        added = logging.StreamHandler()
        added.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(added)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
        if added is not None:
            logger.removeHandler(added)


def accepts_verbose(func: Callable) -> Callable:
    """Decorate a tool so it takes epione's ``verbose=`` (see :func:`verbosity`).

    The signature shows ``verbose`` as a keyword-only argument with default ``None``.

    Examples
    --------
    >>> @accepts_verbose
    ... def step(x):
    ...     logger.info("step %s", x)
    ...     return x
    >>> step(1, verbose=False), "verbose" in inspect.signature(step).parameters
    (1, True)
    """

    @functools.wraps(func)
    def wrapper(*args, verbose: bool | None = None, **kwargs):
        if verbose is not None and not isinstance(verbose, bool):
            raise TypeError(f"{func.__name__}(): verbose={verbose!r} must be True, False or None.")
        with verbosity(verbose):
            return func(*args, **kwargs)

    signature = inspect.signature(func)
    parameters = list(signature.parameters.values())
    at = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    parameters.insert(at, inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation="bool | None"))
    wrapper.__signature__ = signature.replace(parameters=parameters)
    return wrapper


def _atac_anndata(data: Any, mod_atac: str):
    """The in-memory AnnData of the ATAC cells of ``data`` (an AnnData, or a MuData's
    ``mod_atac``), or None for a store, a path or anything else."""
    # Checked without importing anndata (~0.8 s): no AnnData exists before it is imported.
    if imported_instance(data, "anndata", "AnnData"):
        return data
    found = getattr(data, "mod", {}).get(mod_atac) if hasattr(getattr(data, "mod", None), "get") else None
    return found if imported_instance(found, "anndata", "AnnData") else None


def keep_links(data: Any, links, *, key_added: str | None, inplace: bool, mod_atac: str = "atac") -> None:
    """Keep ``links`` in ``uns[key_added]`` of ``data``'s in-memory ATAC AnnData (epione's
    ``inplace=True``); a store, a path, a view (``atac[cells]``: writing would only make it a copy,
    with anndata's warning) or ``inplace=False`` / ``key_added=None`` keep nothing.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> atac = ad.AnnData(np.zeros((2, 1)))
    >>> keep_links(atac, pd.DataFrame({"gene": ["A"]}), key_added="peak_to_gene", inplace=True)
    >>> list(atac.uns)
    ['peak_to_gene']
    """
    if not inplace or key_added is None:
        return
    adata = _atac_anndata(data, mod_atac)
    if adata is None or adata.is_view:
        logger.debug("peak_to_gene: data is not an in-memory AnnData; the links are returned only (not kept in uns)")
        return
    adata.uns[key_added] = links


def kept_links(data: Any, *, links_key: str, mod_atac: str = "atac"):
    """The links ``peak_to_gene`` kept in ``uns[links_key]`` of ``data`` (for ``links=None``).

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> atac = ad.AnnData(np.zeros((2, 1)), uns={"peak_to_gene": pd.DataFrame({"gene": ["A"]})})
    >>> kept_links(atac, links_key="peak_to_gene")["gene"].tolist()
    ['A']
    """
    import pandas as pd

    adata = _atac_anndata(data, mod_atac)
    if adata is None:
        raise ValueError(
            "links=None: pass links= (the table of p2g.tl.peak_to_gene); only an in-memory AnnData or MuData "
            f"keeps its links in uns (here data is {type(data).__name__})."
        )
    if links_key not in adata.uns:
        raise KeyError(
            f"links=None and uns[{links_key!r}] is not in the data (uns has {sorted(adata.uns)}): pass links=, or "
            f"run p2g.tl.peak_to_gene(data, ...) first, which keeps its links there (key_added={links_key!r})."
        )
    links = adata.uns[links_key]
    return links if isinstance(links, pd.DataFrame) else pd.DataFrame(links)
