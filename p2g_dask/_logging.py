"""The ``p2g_dask`` logger, a timer that logs a step's start and ``finished (0:00:12)``, and where
the records go: the terminal (``enable_console_logging``) and a run's log file (``log_to_file``)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("p2g_dask")

_FILE_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def timed(step: str, timings: dict | None = None) -> Iterator[None]:
    """Log ``step`` at info level, then ``finished (h:mm:ss)``; record seconds in ``timings``."""
    logger.info("%s ...", step)
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        if timings is not None:
            timings[step] = round(elapsed, 4)
        logger.info("%s finished (%s)", step, datetime.timedelta(seconds=round(elapsed)))


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a record comes (as logging's
    last resort does): a notebook, a test's capture or a CLI that swaps stderr later still gets
    the records, and a stream closed since is never written to."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ assigns it
        pass


def enable_console_logging(level: int = logging.INFO) -> None:
    """Send ``p2g_dask`` log records of ``level`` and above to stderr (for the CLI and notebooks).

    Called again, it changes the level of the one console handler (never adds a second one).
    """
    handlers = [h for h in logger.handlers if getattr(h, "_p2g_console", False)]
    if not handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._p2g_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        handlers = [handler]
    for handler in handlers:
        handler.setLevel(level)
    logger.setLevel(level)


@contextlib.contextmanager
def log_to_file(path: str | os.PathLike, *, level: int = logging.INFO, mode: str = "w") -> Iterator[Path]:
    """Write ``p2g_dask`` records of ``level`` and above to ``path`` while the block runs.

    The console keeps its own level (``p2g run`` / ``p2g demo`` show warnings there and the
    details here). Nested blocks for the same file share one handler, so nothing is written
    twice and an outer ``mode="w"`` is not repeated. The file is written as the run goes (not
    under a temporary name): a failed run keeps the log of what it did.

    Parameters
    ----------
    path
        The log file; its folder must exist.
    level
        The least level written.
    mode
        ``"w"`` starts a new file, ``"a"`` appends.

    Yields
    ------
    pathlib.Path
        The log file's path.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with log_to_file(Path(folder) / "p2g.log") as log:
    ...         logger.info("written to the file only")
    ...     "written to the file only" in log.read_text()
    True
    """
    path = Path(path).resolve()
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path:
            yield path
            return
    handler = logging.FileHandler(path, mode=mode, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(_FILE_FORMAT)
    previous = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(previous)


@contextlib.contextmanager
def dask_records_to_log_file() -> Iterator[None]:
    """While the block runs, ``distributed``'s log records go to the run's log file, not stderr.

    For a cluster's shutdown after a finished run: a slow machine's nanny warns that it killed a
    worker still exiting, which asks nothing of the user. Outside ``log_to_file`` it does nothing.
    """
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    dask_logger = logging.getLogger("distributed")
    if not files:
        yield
        return
    consoles = [(h, h.level) for h in dask_logger.handlers if not isinstance(h, logging.FileHandler)]
    for handler, _ in consoles:
        handler.setLevel(logging.CRITICAL + 1)
    for handler in files:
        dask_logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in files:
            dask_logger.removeHandler(handler)
        for handler, level in consoles:
            handler.setLevel(level)
