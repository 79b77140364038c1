"""The ``p2g_dask`` logger and a timer that logs a step's start and ``finished (0:00:12)``."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Iterator

logger = logging.getLogger("p2g_dask")


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


def enable_console_logging(level: int = logging.INFO) -> None:
    """Send ``p2g_dask`` log records to stderr (for the CLI and notebooks)."""
    if not any(getattr(h, "_p2g_console", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._p2g_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
