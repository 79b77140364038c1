"""The check registry: every value check of the package, and the one record of its parameters.

Each public entry point validates its inputs here once, before any graph is built, so a wrong
input fails at once with the argument's name, the value and the fix, and no check is written
twice. Sections:

- Counts: cells x features matrices (finite, non-negative; CSR invariants of a block).
- Parameters: scalar arguments (positive distances, metacell memberships, cut-offs), and
  ``params_record`` / ``params_token``, the record and checkpoint key of a tool's parameters.

The columns of tables (links, genes, ...) are checked by :mod:`p2g_dask._tables`.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Counts
# ---------------------------------------------------------------------------------------------

_RAW_COUNTS_FIX = "p2g_dask needs raw counts, not scaled or centred data (use adata.layers['counts'])."


def check_counts(x, subject: str, *, obs_names=None, first_row: int = 0) -> None:
    """Raise when counts hold NaN, inf or negative values, naming the first cell that does.

    The one count check of the package: in-memory inputs are checked by the resolver before any
    graph is built, store inputs block by block while ingested.

    Parameters
    ----------
    x
        A scipy sparse matrix, a :class:`p2g_dask.io.blocks.Rows` block or a numpy array; other
        (lazy, backed) matrices are not checked here.
    subject
        Starts the message, e.g. ``"atac counts contain"`` or ``"X holds"``.
    obs_names
        Cell names, to name the first bad cell.
    first_row
        Row of the block's first cell in the whole matrix (for blocks).

    Examples
    --------
    >>> import numpy as np
    >>> check_counts(np.array([[0, 2], [-1, 0]]), "rna counts contain")
    Traceback (most recent call last):
    ...
    ValueError: rna counts contain negative values (min -1), first in cell row 1; p2g_dask needs raw counts, not scaled or centred data (use adata.layers['counts']).
    """
    import numpy as np
    import scipy.sparse as sp

    if sp.issparse(x) or hasattr(x, "indptr"):
        values, indptr = np.asarray(x.data), np.asarray(x.indptr)

        def row_of(i: int) -> int:
            return int(np.searchsorted(indptr, i, side="right") - 1)
    elif isinstance(x, np.ndarray):
        values = x.ravel()

        def row_of(i: int) -> int:
            return int(i // max(1, x.shape[-1]))
    else:
        return
    if values.size == 0 or values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        return

    def where(i: int) -> str:
        row = row_of(i)
        cell = f" ({obs_names[row]!r})" if obs_names is not None and row < len(obs_names) else ""
        return f"first in cell row {first_row + row}{cell}"

    # Two reductions and no temporary array (NaN propagates through min, inf shows in min/max);
    # the slower search for the first bad cell runs only when there is one.
    lowest, highest = values.min(), values.max()
    if np.issubdtype(values.dtype, np.floating) and not (np.isfinite(lowest) and np.isfinite(highest)):
        raise ValueError(
            f"{subject} non-finite values (NaN or inf), {where(int(np.argmin(np.isfinite(values))))}; "
            "p2g_dask needs raw counts: replace them (e.g. X.data[~np.isfinite(X.data)] = 0)."
        )
    if lowest < 0:
        raise ValueError(
            f"{subject} negative values (min {lowest}), {where(int(np.argmax(values < 0)))}; {_RAW_COUNTS_FIX}"
        )


def csr_block_problem(indptr, indices, n_vars: int, nnz: int) -> str | None:
    """What breaks the CSR invariants of a block read from a store, in plain words, or None.

    ``indptr`` (rebased to start at 0) must be non-decreasing and end at ``nnz`` (the entries
    read); ``indices`` sorted and unique within each row, and in ``[0, n_vars)``. One pass of
    numpy over the block, so a damaged or misplaced chunk is caught before it is used.

    Examples
    --------
    >>> import numpy as np
    >>> csr_block_problem(np.array([0, 2, 3]), np.array([1, 4, 0]), 5, 3) is None
    True
    >>> csr_block_problem(np.array([0, 2, 3]), np.array([1, 1, 0]), 5, 3)
    'indices not sorted and unique within a row (row 0 of the block)'
    """
    import numpy as np

    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    if indptr.size == 0 or indptr[0] != 0:
        return "indptr does not start at the block's first entry"
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        return f"indptr decreases (row {int(np.argmax(steps < 0))} of the block)"
    if int(indptr[-1]) != nnz or indices.size != nnz:
        return f"indptr ends at {int(indptr[-1])}, but the block holds {indices.size} entries"
    if nnz == 0:
        return None
    if int(indices.min()) < 0 or int(indices.max()) >= n_vars:
        return f"feature indices out of range (min {int(indices.min())}, max {int(indices.max())}, n_vars {n_vars})"
    rising = np.diff(indices) > 0
    # Positions where a new row starts may go down; inside a row indices must rise.
    starts = indptr[1:-1]
    starts = starts[(starts > 0) & (starts < nnz)]
    rising[starts - 1] = True
    if not rising.all():
        bad = int(np.argmin(rising)) + 1
        return f"indices not sorted and unique within a row (row {int(np.searchsorted(indptr, bad, side='right')) - 1} of the block)"
    return None


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

def check_max_distance(max_distance) -> int:
    """``max_distance`` as a positive int, else a ``ValueError`` naming ArchR's default.

    Examples
    --------
    >>> check_max_distance(0)
    Traceback (most recent call last):
    ...
    ValueError: max_distance=0 must be a positive number of bp (ArchR: 250000).
    """
    if max_distance is None or max_distance <= 0:
        raise ValueError(f"max_distance={max_distance} must be a positive number of bp (ArchR: 250000).")
    return int(max_distance)


def check_metacell_params(n_metacells: int, k_neighbors: int, overlap_cutoff: float) -> None:
    """ArchR's metacell parameters: ``n_metacells >= 1``, ``k_neighbors >= 2``, overlap in (0, 1].

    Examples
    --------
    >>> check_metacell_params(10, 1, 0.8)
    Traceback (most recent call last):
    ...
    ValueError: k_neighbors=1 must be >= 2.
    """
    check_params([
        (n_metacells >= 1, f"n_metacells={n_metacells} must be >= 1."),
        (k_neighbors >= 2, f"k_neighbors={k_neighbors} must be >= 2."),
        (0 < overlap_cutoff <= 1, f"overlap_cutoff={overlap_cutoff} must be in (0, 1]."),
    ])


#: Above this mean number of metacells per cell the metacells overlap so much that they are
#: nearly copies of each other (ArchR's defaults, 500 x 100, are meant for >= ~10,000 cells).
SMALL_DATA_OVERLAP = 10.0


#: ArchR's ``addPeak2GeneLinks`` defaults: 500 metacells of 100 cells each.
ARCHR_METACELLS = (500, 100)


def small_data_metacells(n_cells: int) -> tuple[int, int]:
    """``(n_metacells, k_neighbors)`` for data too small for ArchR's 500 x 100.

    ``n_metacells ~ n_cells / 10`` (at least 3) and ``k_neighbors`` 20 below 5,000 cells, else
    50: the small end of 20-50 keeps each cell in ~2-5 metacells.

    Examples
    --------
    >>> small_data_metacells(3000), small_data_metacells(8000)
    ((300, 20), (800, 50))
    """
    return max(3, round(n_cells / 10)), 20 if n_cells < 5_000 else 50


def metacells_for(n_cells: int) -> tuple[int, int]:
    """The rule for choosing ``(n_metacells, k_neighbors)`` from the number of cells.

    ArchR's 500 x 100 where they leave each cell in at most ``SMALL_DATA_OVERLAP`` (10) metacells
    on average (5,000 cells or more), else :func:`small_data_metacells`; values from this rule
    never trigger :func:`warn_small_data`.

    Examples
    --------
    >>> metacells_for(3000), metacells_for(10_000)
    ((300, 20), (500, 100))
    """
    n_metacells, k_neighbors = ARCHR_METACELLS
    if n_metacells * k_neighbors / max(1, n_cells) <= SMALL_DATA_OVERLAP:
        return ARCHR_METACELLS
    return small_data_metacells(n_cells)


def warn_small_data(n_cells: int, n_metacells: int, k_neighbors: int, *, tool: str = "peak_to_gene") -> bool:
    """Log a warning with advice when ``n_metacells * k_neighbors`` exceeds ~10x the cells.

    Each cell then sits in ``n_metacells * k_neighbors / n_cells`` metacells on average: the
    metacells share most of their cells, the correlations are computed over near-duplicates
    and look stronger than they are. Suggested: ``n_metacells ~ n_cells / 10`` and
    ``k_neighbors`` 20-50. Shared by every tool that builds kNN metacells.

    Parameters
    ----------
    n_cells, n_metacells, k_neighbors
        The data's cells and the requested metacells and cells per metacell.
    tool
        Names the caller in the warning.

    Returns
    -------
    bool
        True when the warning was logged.

    Examples
    --------
    >>> warn_small_data(1000, 500, 100)
    True
    >>> warn_small_data(1000, 100, 20)
    False
    """
    per_cell = n_metacells * k_neighbors / max(1, n_cells)
    if per_cell <= SMALL_DATA_OVERLAP:
        return False
    import logging

    suggested_n, suggested_k = small_data_metacells(n_cells)
    logging.getLogger("p2g_dask").warning(
        "%s: small data for n_metacells=%d x k_neighbors=%d: each of the %d cells is in %.1f metacells on "
        "average (more than %g), so metacells are near-copies and correlations look stronger than they are. "
        "For %d cells use n_metacells ~ %d (cells / 10) and k_neighbors ~ 20-50 (e.g. n_metacells=%d, "
        "k_neighbors=%d).", tool, n_metacells, k_neighbors, n_cells, per_cell, SMALL_DATA_OVERLAP, n_cells,
        suggested_n, suggested_n, suggested_k,
    )
    return True


def check_metacells(neighbours, n_cells: int):
    """A ``(n_metacells, k)`` membership of cells ``0..n_cells - 1`` as an int64 array.

    Examples
    --------
    >>> check_metacells([[0, 1], [1, 2]], 3).shape
    (2, 2)
    >>> check_metacells([[0, 5]], 3)
    Traceback (most recent call last):
    ...
    ValueError: metacells index cells outside 0..2: they were made for other cells.
    """
    import numpy as np

    array = np.asarray(neighbours, dtype=np.int64)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"metacells must be a (n_metacells, k) array of cell indices; got shape {array.shape}.")
    if array.max() >= n_cells or array.min() < 0:
        raise ValueError(f"metacells index cells outside 0..{n_cells - 1}: they were made for other cells.")
    return array


def check_params(checks) -> None:
    """Raise the message of the first ``(ok, message)`` pair that is not ok.

    Examples
    --------
    >>> check_params([(True, "fine"), (1 > 2, "x=1 must exceed 2.")])
    Traceback (most recent call last):
    ...
    ValueError: x=1 must exceed 2.
    """
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def params_record(params, *, uns: bool = False) -> dict:
    """A parameters dataclass as a plain dict: the one record of every tool's parameters.

    Parameters
    ----------
    params
        A tool's parameters dataclass.
    uns
        Make it storable in an AnnData / store ``uns`` (which cannot hold None or ragged
        tuples): None values are left out, tuples of numbers become arrays and other tuples
        lists of strings (e.g. ``("chr1", 0, 10)`` -> ``"chr1:0-10"`` for intervals).

    Returns
    -------
    dict
        ``field -> value`` in field order.

    Examples
    --------
    >>> import dataclasses
    >>> P = dataclasses.make_dataclass("P", [("seed", int), ("chunk", object), ("q", tuple)], frozen=True)
    >>> params_record(P(1, None, (0.1, 0.9)))
    {'seed': 1, 'chunk': None, 'q': (0.1, 0.9)}
    >>> params_record(P(1, None, (0.1, 0.9)), uns=True)
    {'seed': 1, 'q': array([0.1, 0.9])}
    """
    import dataclasses

    record = dataclasses.asdict(params)
    if not uns:
        return record
    import numpy as np

    def storable(value):
        if not isinstance(value, (tuple, list)):
            return value
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value):
            return np.asarray(value, dtype=float if any(isinstance(v, (float, np.floating)) for v in value) else int)
        return [f"{v[0]}:{v[1]}-{v[2]}" if isinstance(v, (tuple, list)) and len(v) == 3 else str(v) for v in value]

    return {k: storable(v) for k, v in record.items() if v is not None}


def params_token(params, stage: str | None = None) -> str:
    """A hash of every field of a parameters dataclass (its class name too), for checkpoint keys.

    A field is left out of the key of ``stage`` only when its metadata says so
    (``field(metadata={"not_in": ("sums",)})``): a new field is in every key unless told
    otherwise, so it can never be forgotten and make a resumed run reuse stale results.

    Examples
    --------
    >>> import dataclasses
    >>> P = dataclasses.make_dataclass("P", [("seed", int)], frozen=True)
    >>> params_token(P(1)) != params_token(P(2))
    True
    """
    import dataclasses

    from dask.base import tokenize

    fields = {
        f.name: getattr(params, f.name)
        for f in dataclasses.fields(params)
        if stage is None or stage not in f.metadata.get("not_in", ())
    }
    return tokenize(type(params).__qualname__, sorted(fields.items(), key=lambda kv: kv[0]))
