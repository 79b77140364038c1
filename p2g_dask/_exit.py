"""A process that imported p2g_dask exits without Python's last full garbage collection.

At exit, CPython runs a full collection over every object still alive while it tears the modules
down. With pandas, anndata, h5py, numba and dask loaded that is ~1 M objects: 0.3 s for
``import anndata`` alone and 0.55 s after an ``iterative_lsi`` call, ~7 % of a whole PBMC10k
LSI process, spent after the user's last line. Freezing the survivors when the ``atexit``
handlers run (:func:`gc.freeze`) leaves them out of that collection; their memory goes back to
the system with the process, as it does for any object alive at exit.

What still happens at exit: every ``atexit`` handler (logging flushes and closes its files,
Dask closes its clusters), and objects freed by reference counting are finalised as modules are
cleared. What no longer happens: ``__del__`` of objects that only a cycle held, which Python does
not promise at exit either ("It is not guaranteed that __del__() methods are called for objects
that still exist when the interpreter exits", the data model reference). ``P2G_DASK_EXIT_GC=1``
keeps Python's collection.
"""

from __future__ import annotations

import atexit
import gc
import os

#: Environment variable: "1" keeps Python's full collection at exit.
KEEP_EXIT_GC = "P2G_DASK_EXIT_GC"


def freeze_survivors() -> bool:
    """Move every tracked object to the permanent generation, unless ``P2G_DASK_EXIT_GC=1``.

    Returns
    -------
    bool
        True when the objects were frozen.

    Examples
    --------
    >>> import os
    >>> os.environ[KEEP_EXIT_GC] = "1"  # as a user keeping Python's collection (a freeze here would
    >>> freeze_survivors()              # change when this process collects for the rest of its life)
    False
    >>> del os.environ[KEEP_EXIT_GC]
    """
    if os.environ.get(KEEP_EXIT_GC, "").strip() not in ("", "0"):
        return False
    gc.freeze()
    return True


atexit.register(freeze_survivors)
