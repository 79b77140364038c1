"""Write outputs under a temporary name and rename them only when complete.

An interrupted run (exception, SIGINT, SIGTERM, killed worker) then never leaves a file or
folder that looks complete but is not: the temporary sibling is removed on error, and a stale
one from a killed process carries a ``.p2g-tmp-`` marker that nothing else reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_MARKER = ".p2g-tmp-"


def check_overwrite(path: str | os.PathLike, overwrite: bool, *, argument: str = "path") -> Path:
    """Raise ``FileExistsError`` naming ``argument`` when ``path`` exists and not ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{argument}={str(path)!r} already exists; pass overwrite=True (CLI: --overwrite) "
            "to replace it, or choose another path."
        )
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False, argument: str = "path") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write to; rename it to ``path`` on success.

    Works for files and folders (e.g. a Zarr store). On any exception, including
    ``KeyboardInterrupt``, the temporary output is deleted and ``path`` is left untouched.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "table.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text()
    'done'
    """
    path = Path(path)
    check_overwrite(path, overwrite, argument=argument)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_MARKER}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise RuntimeError(f"nothing was written to the temporary output for {str(path)!r}")
    if path.exists():
        # Move the old output aside first so that a failure here never loses both.
        old = path.with_name(f"{TMP_MARKER}old-{uuid.uuid4().hex[:8]}-{path.name}")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)
