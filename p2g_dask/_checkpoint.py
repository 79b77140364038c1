"""Content-addressed checkpoints of finished stages, so that a rerun after a crash resumes.

A :class:`Checkpoint` is a folder of results keyed by a hash of everything that determines
them (the input data's identity, the metacell membership, the parameters and the checkpoint
format version)::

    DIR/
      <key>.npz       an array (kind "array")
      <key>.parquet   a DataFrame (kind "table")
      <key>.tree/     nested tuples / lists / dicts of arrays, DataFrames and scalars (kind "tree"):
                      tree.json (the structure), arrays.npz, frame-<i>.parquet

Every entry is written under a temporary name and renamed when complete (see
:mod:`p2g_dask._atomic`), so a crash mid-save leaves no entry that :meth:`Checkpoint.has`
reports. Nothing is pickled: arrays are read with ``allow_pickle=False``, tables from parquet,
and the tree structure from JSON. A changed input or parameter gives another key, so stale
entries are never used (delete the folder, or call :meth:`Checkpoint.clear`, to reclaim space).

:func:`checkpointed` wraps a :class:`dask.delayed.Delayed`: when the key is saved, the graph
loads it instead (the tasks that produced it are not in the graph at all); otherwise the value
is computed and saved as it passes through. The choice is made when the graph is built, which
is what a rerun does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import Delayed, delayed

import p2g_dask
from p2g_dask._atomic import TMP_MARKER, atomic_path
from p2g_dask._checkpoint_tree import plain_array, read_tree, write_tree
from p2g_dask._logging import logger

#: Bumped whenever the layout of saved entries or the meaning of a key changes.
CHECKPOINT_FORMAT_VERSION = 1
KINDS = ("array", "table", "tree")
_SUFFIX = {"array": ".npz", "table": ".parquet", "tree": ".tree"}


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a checkpoint kind; use one of {KINDS}.")
    return kind


def _infer_kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return "array"
    if isinstance(value, pd.DataFrame):
        return "table"
    return "tree"


def _normalise_part(part: Any) -> Any:
    """A deterministic stand-in for objects dask cannot hash deterministically."""
    if sp.issparse(part):
        part = sp.csr_matrix(part)
        return ("csr", part.shape, str(part.dtype), part.data, part.indices, part.indptr)
    if hasattr(part, "__array__") and not isinstance(part, (np.ndarray, pd.Index, pd.Series, pd.DataFrame)):
        return np.asarray(part)
    if isinstance(part, Path):
        return ("path", str(part))
    if isinstance(part, (list, tuple)):
        return type(part).__name__, [_normalise_part(p) for p in part]
    if isinstance(part, dict):
        return "dict", sorted((str(k), _normalise_part(v)) for k, v in part.items())
    return part


class Checkpoint:
    """A folder of finished stage results, keyed by a hash of their inputs and parameters.

    Parameters
    ----------
    directory
        The checkpoint folder (created when missing). Workers of a cluster must see it
        (a shared filesystem), as they do the store.

    Attributes
    ----------
    hits, misses
        Keys found / not found while graphs were built with :func:`checkpointed`.
    saves
        Entries written by this object (in this process).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> ckpt = Checkpoint(tempfile.mkdtemp())
    >>> key = ckpt.key("sums", np.arange(3), {"scale_to": 1e4})
    >>> ckpt.has(key)
    False
    >>> _ = ckpt.save(key, np.arange(3.0))
    >>> ckpt.has(key), ckpt.load(key).tolist()
    (True, [0.0, 1.0, 2.0])
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"checkpoint={str(directory)!r} is a file; pass a folder (it is created if missing).")
        self.path.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = self.saves = 0

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"

    def __reduce__(self):
        # Workers get the folder only; counters belong to the process that built the graph.
        return (Checkpoint, (str(self.path),))

    def key(self, *parts: Any) -> str:
        """A hex key from the parts (arrays, tables, parameters, other keys) and the format version.

        Raises if a part cannot be hashed deterministically (a key that changed from run to run
        would silently disable resuming).
        """
        with dask.config.set({"tokenize.ensure-deterministic": True}):
            return tokenize("p2g-checkpoint", CHECKPOINT_FORMAT_VERSION, p2g_dask.STORE_FORMAT_VERSION,
                            *[_normalise_part(p) for p in parts])

    def entry(self, key: str, kind: str) -> Path:
        """Path of the entry of ``key`` saved as ``kind``."""
        if not key or os.sep in key or key.startswith(".") or TMP_MARKER in key:
            raise ValueError(f"checkpoint key {key!r} is not valid; use Checkpoint.key(...).")
        return self.path / f"{key}{_SUFFIX[_kind(kind)]}"

    def _find(self, key: str) -> tuple[str, Path] | None:
        for kind in KINDS:
            path = self.entry(key, kind)
            if path.exists():
                return kind, path
        return None

    def has(self, key: str) -> bool:
        """True when a complete entry for ``key`` is saved."""
        return self._find(key) is not None

    def keys(self) -> list[str]:
        """The saved keys."""
        return sorted(p.name.split(".")[0] for p in self.path.iterdir() if not p.name.startswith(TMP_MARKER)
                      and p.suffix in _SUFFIX.values())

    def load(self, key: str) -> Any:
        """The saved value of ``key`` (KeyError when there is none)."""
        found = self._find(key)
        if found is None:
            raise KeyError(f"checkpoint {str(self.path)!r} has no entry {key!r}.")
        kind, path = found
        try:
            if kind == "array":
                with np.load(path, allow_pickle=False) as data:
                    return data["value"]
            if kind == "table":
                return pd.read_parquet(path)
            return read_tree(path)
        except Exception as err:
            raise ValueError(
                f"checkpoint entry {str(path)!r} cannot be read ({type(err).__name__}: {err}); delete it "
                "(or the whole checkpoint folder) and run again to recompute it."
            ) from err

    def save(self, key: str, value: Any, kind: str | None = None) -> Path:
        """Write ``value`` under ``key`` atomically; an existing entry is replaced."""
        kind = _infer_kind(value) if kind is None else _kind(kind)
        path = self.entry(key, kind)
        with atomic_path(path, overwrite=True, argument="checkpoint") as tmp:
            if kind == "array":
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"checkpoint kind 'array' needs a numpy array; got {type(value).__name__}.")
                with open(tmp, "wb") as handle:
                    np.savez(handle, value=plain_array(value))
            elif kind == "table":
                if not isinstance(value, pd.DataFrame):
                    raise TypeError(f"checkpoint kind 'table' needs a DataFrame; got {type(value).__name__}.")
                value.to_parquet(tmp, index=True)
            else:
                write_tree(tmp, value)
        self.saves += 1
        logger.debug("checkpoint: saved %s", path.name)
        return path

    def clear(self) -> None:
        """Delete every entry (and stale temporary files) of the folder."""
        for child in self.path.iterdir():
            if child.suffix in _SUFFIX.values() or child.name.startswith(TMP_MARKER):
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def as_checkpoint(checkpoint: Checkpoint | str | os.PathLike | None) -> Checkpoint | None:
    """A :class:`Checkpoint` from a folder path (None stays None).

    Examples
    --------
    >>> as_checkpoint(None) is None
    True
    """
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        return checkpoint
    if isinstance(checkpoint, (str, os.PathLike)):
        return Checkpoint(checkpoint)
    raise TypeError(f"checkpoint must be a folder path or a Checkpoint; got {type(checkpoint).__name__}.")


# --- graph wrappers -----------------------------------------------------------------------------


def _load_task(directory: str, key: str) -> Any:
    return Checkpoint(directory).load(key)


def _save_task(value: Any, directory: str, key: str, kind: str, *after: Any) -> Any:
    Checkpoint(directory).save(key, value, kind)
    return value


def checkpointed(
    delayed_obj: Any,
    checkpoint: Checkpoint | str | os.PathLike | None,
    key: str,
    kind: str = "tree",
    *,
    nout: int | None = None,
    after: Any = None,
) -> Any:
    """Load ``key`` from the checkpoint when saved, else compute ``delayed_obj`` and save it.

    Parameters
    ----------
    delayed_obj
        The :class:`~dask.delayed.Delayed` (or value) to checkpoint.
    checkpoint
        A :class:`Checkpoint`, a folder path, or None (then ``delayed_obj`` is returned as is).
    key
        From :meth:`Checkpoint.key`, covering everything the value depends on.
    kind
        ``'array'`` (npz), ``'table'`` (parquet) or ``'tree'`` (tuples/dicts of those and scalars).
    nout
        As for ``dask.delayed``: the length of a tuple value, so the result can be unpacked.
    after
        A Delayed that must have finished before this value is saved (so that a saved entry
        implies that ``after``'s entry is saved too).

    Returns
    -------
    Delayed
        ``p2g-checkpoint-load-<key>`` (the producing tasks are left out of the graph) or
        ``p2g-checkpoint-save-<key>`` (computes, saves atomically on the worker, passes the value on).

    Examples
    --------
    >>> import tempfile, dask, numpy as np
    >>> ckpt = Checkpoint(tempfile.mkdtemp())
    >>> key = ckpt.key("demo")
    >>> first = checkpointed(dask.delayed(np.arange)(3), ckpt, key, "array")
    >>> first.compute(scheduler="sync").tolist(), ckpt.misses
    ([0, 1, 2], 1)
    >>> again = checkpointed(dask.delayed(np.arange)(3), ckpt, key, "array")
    >>> again.compute(scheduler="sync").tolist(), ckpt.hits
    ([0, 1, 2], 1)
    """
    ckpt = as_checkpoint(checkpoint)
    if ckpt is None:
        return delayed_obj
    kind = _kind(kind)
    directory = str(ckpt.path)
    if ckpt.has(key):
        ckpt.hits += 1
        logger.debug("checkpoint: %s found, loading it instead of computing", key)
        return delayed(_load_task, pure=True, nout=nout)(directory, key, dask_key_name=f"p2g-checkpoint-load-{key}")
    ckpt.misses += 1
    extra = () if after is None else (after,)
    return delayed(_save_task, pure=True, nout=nout)(delayed_obj, directory, key, kind, *extra,
                                                     dask_key_name=f"p2g-checkpoint-save-{key}")


def checkpointed_sums(
    sums: Any, totals: Delayed, checkpoint: Checkpoint | str | os.PathLike | None, key: str
) -> tuple[Any, Any]:
    """Checkpoint a modality's metacell sums and their ``totals``, as :func:`metacell_sums` returns them.

    ``sums`` is one Delayed array or a list of column blocks (namedtuples with ``first``,
    ``stop`` and a Delayed ``sums``); each block is its own entry, so a rerun recomputes only
    the blocks that are missing. ``totals`` is saved first and each block only after it: a
    saved block always comes with saved totals, so loading blocks never pulls the aggregation
    back into the graph through ``totals``.

    Returns
    -------
    (sums, totals)
        In the form given, with every Delayed loading from or saving to the checkpoint.

    Examples
    --------
    >>> import tempfile, dask, numpy as np
    >>> ckpt = Checkpoint(tempfile.mkdtemp())
    >>> s, t = checkpointed_sums(dask.delayed(np.ones)((2, 3)), dask.delayed(np.full)(2, 3.0), ckpt, ckpt.key("x"))
    >>> [v.tolist() for v in dask.compute(s, t, scheduler="sync")][1]
    [3.0, 3.0]
    >>> len(ckpt.keys())
    2
    """
    ckpt = as_checkpoint(checkpoint)
    if ckpt is None:
        return sums, totals
    saved_totals = checkpointed(totals, ckpt, ckpt.key(key, "totals"), "array")
    if isinstance(sums, Delayed):
        return checkpointed(sums, ckpt, ckpt.key(key, "sums"), "array", after=saved_totals), saved_totals
    # A block's lanes (partial sums) would recompute what is saved: its columns come from the
    # saved sums instead.
    no_lanes = {"lanes": ()} if sums and "lanes" in sums[0]._fields else {}
    blocks = [
        block._replace(sums=checkpointed(block.sums, ckpt, ckpt.key(key, "block", int(block.first), int(block.stop)),
                                         "array", after=saved_totals), **no_lanes)
        for block in sums
    ]
    return blocks, saved_totals


def _mtime_ns(path: Path) -> int:
    with contextlib.suppress(OSError):
        return os.stat(path).st_mtime_ns
    return 0


def modality_token(modality: Any) -> str:
    """A content identity of a modality's counts, cells and features, for checkpoint keys.

    A store modality is identified by its path, shape, non-zeros and modification times (a
    re-ingested store is a new folder with new times); an in-memory matrix by a hash of its
    values (dask's ``tokenize`` of the CSR arrays, about 1 s per 10^8 non-zeros).

    Examples
    --------
    >>> import numpy as np, pandas as pd, scipy.sparse as sp
    >>> from p2g_dask.io.inputs import Modality
    >>> X = sp.csr_matrix(np.eye(3))
    >>> a = Modality("atac", pd.DataFrame(index=list("abc")), pd.DataFrame(index=list("xyz")), X=X)
    >>> b = Modality("atac", pd.DataFrame(index=list("abc")), pd.DataFrame(index=list("xyz")), X=X.copy())
    >>> modality_token(a) == modality_token(b)
    True
    """
    store = getattr(modality, "store", None)
    names = (pd.Index(modality.obs.index.astype(str)), pd.Index(modality.var.index.astype(str)))
    if store is not None:
        root = Path(store.path)
        identity = ("store", str(root.resolve()), store.name, tuple(store.shape), int(store.nnz),
                    _mtime_ns(root), _mtime_ns(root / "zarr.json"), _mtime_ns(root / store.name / "X" / "zarr.json"))
    else:
        X = modality.X
        identity = ("memory", _normalise_part(X) if sp.issparse(X) else np.asarray(X))
    with dask.config.set({"tokenize.ensure-deterministic": True}):
        return tokenize(modality.name, identity, *names)
