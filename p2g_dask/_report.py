"""The run report's core: stages, memory per worker over time, spilled bytes, Dask's performance
report beside ``report.html``, and ``report=`` of the tools (:func:`reported`).

:mod:`p2g_dask.report` (``run_report`` of ``p2g run`` / ``p2g demo`` and of users) adds the links'
figures (summary, calibration, a browser track), drawn with :mod:`p2g_dask.pl`; this module
draws no link figure itself, so the tools can use it without importing the plots. A tool given
``report=PATH`` writes PATH (stages, memory, spill, the links' numbers, parameters, versions)
and Dask's performance report beside it.

While the block runs, the memory of every worker (process RSS, Dask-managed bytes, bytes spilled
to disk) is sampled from the scheduler's view of the workers (their heartbeats), every
``interval`` seconds, in a thread of the client. Both files are self-contained: images are
embedded in ``report.html`` as PNG, and Dask's performance report carries Bokeh's scripts inline
(``mode="inline"``), so they open offline.

Without a ``distributed`` client (the threaded scheduler) there is no scheduler to ask: the
report samples this process's memory instead (one "worker", nothing spilled) and no Dask
performance report is written (``report.html`` says so).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from p2g_dask import _graph
from p2g_dask._atomic import TMP_MARKER
from p2g_dask._logging import dask_records_to_log_file, logger
from p2g_dask._report_html import write_report_html

PERFORMANCE_REPORT = "performance_report.html"
_LOCAL_PROCESS = "this process (threaded scheduler)"


class _MemorySampler:
    """Per-worker memory every ``interval`` seconds, in a daemon thread, until ``stop``."""

    def __init__(self, client: Any, interval: float):
        self.client, self.interval = client, float(interval)
        self.rows: list[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="p2g-report-memory", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as err:  # a closing cluster must not break the run: stop sampling
                logger.info("report: memory sampling stopped (%s: %s)", type(err).__name__, err)
                return

    def sample(self) -> None:
        now = time.time()
        if self.client is None:
            import psutil

            rss = psutil.Process().memory_info().rss
            self.rows.append((now, _LOCAL_PROCESS, rss, float("nan"), 0, psutil.virtual_memory().total))
            return
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        for address, worker in workers.items():
            metrics = worker.get("metrics", {})
            spilled = metrics.get("spilled_bytes", {}).get("disk", 0)
            name = worker.get("name", address)
            self.rows.append((now, f"worker {name}" if name != address else address, metrics.get("memory", 0),
                              metrics.get("managed_bytes", 0), spilled, worker.get("memory_limit") or 0))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["time", "worker", "memory", "managed", "spilled", "memory_limit"])


@dataclass
class RunReport:
    """What a run report holds; filled inside :func:`run_report` and written when it ends.

    Attributes
    ----------
    path
        ``report.html``.
    performance_report
        Dask's performance report beside it, or None (no distributed client).
    stages
        ``(name, start, end)`` in seconds since the epoch, from :meth:`stage`.
    record
        A run record (``run.json``'s content) when the pipeline ran: status, timings, summary,
        parameters and versions come from it.
    """

    path: Path
    performance_report: Path | None
    started: float = field(default_factory=time.time)
    stages: list[tuple[str, float, float]] = field(default_factory=list)
    record: dict | None = None
    links: pd.DataFrame | None = None
    browser: dict = field(default_factory=dict)
    figures: list[tuple[str, Any]] = field(default_factory=list)
    memory: pd.DataFrame | None = None
    status: str = "running"
    #: Draws more figures from the report (e.g. the links') just before it is written.
    draw: Callable[["RunReport"], None] | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of the run (drawn on the timeline and over the memory plot)."""
        start = time.time()
        try:
            yield
        finally:
            self.stages.append((name, start, time.time()))

    def add_links(self, links: pd.DataFrame, *, data: Any = None, gene_annotation: Any = None,
                  exon_annotation: Any = None, groupby: str | None = None, bigwig_files: dict | None = None,
                  gene: str | None = None) -> None:
        """The links of the run: their summary and calibration figures, parameters and timings.

        With ``data`` and ``gene_annotation`` the report draws a browser figure
        (:func:`p2g_dask.pl.plot_peak2gene`) for ``gene``, by default the gene with most links at
        FDR < 0.05, unless a browser figure was added with :meth:`add_figure`.
        """
        self.links = links
        self.browser = {"data": data, "gene_annotation": gene_annotation, "exon_annotation": exon_annotation,
                        "groupby": groupby, "bigwig_files": bigwig_files, "gene": gene}

    def add_figure(self, title: str, figure: Any) -> None:
        """A figure for the report: a matplotlib Figure or the path of a PNG already written.

        Titles starting ``"Link summary"``, ``"Calibration"`` or ``"Browser"`` replace the
        figure the report would otherwise draw from the links.
        """
        self.figures.append((title, figure))


@contextlib.contextmanager
def run_report(path: str | Path, *, client: Any = None, interval: float = 0.5,
               performance_report: bool = True, draw: Callable[[RunReport], None] | None = None,
               ) -> Iterator[RunReport]:
    """Record a run and write its report (``path``, e.g. ``out/report.html``) when the block ends.

    Parameters
    ----------
    path
        The report's HTML file; Dask's performance report goes beside it
        (``performance_report.html``). Both are written under a temporary name and renamed, and
        replace earlier ones. A run that fails still gets its report, with the failure as status.
    client
        The ``distributed.Client`` of the run; None uses the current client, else the report
        samples this process (threaded scheduler) and has no Dask performance report.
    interval
        Seconds between memory samples.
    performance_report
        Also save Dask's performance report (needs a client).
    draw
        Called with the report before it is written, to add figures (:meth:`RunReport.add_figure`).

    Yields
    ------
    RunReport
        Give it the run's stages (:meth:`RunReport.stage`), links (:meth:`RunReport.add_links`)
        and figures; the pipeline also sets ``record``.

    Examples
    --------
    >>> import tempfile
    >>> import dask.array as da
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with run_report(Path(folder) / "report.html", interval=0.05) as report:
    ...         with report.stage("sum"):
    ...             total = da.ones(10_000, chunks=1_000).sum().compute(scheduler="threads")
    ...     "Memory per worker" in (Path(folder) / "report.html").read_text()
    True
    """
    client = _graph.current_client(client)
    path = Path(path)
    perf_path = path.with_name(PERFORMANCE_REPORT) if client is not None and performance_report else None
    report = RunReport(path=path, performance_report=perf_path, draw=draw)
    sampler = _MemorySampler(client, interval)
    sampler.start()
    try:
        with _dask_performance_report(client, report):
            try:
                yield report
                report.status = "finished" if report.status == "running" else report.status
            except BaseException as err:
                report.status = f"failed: {type(err).__name__}: {err}"
                raise
            finally:
                sampler.stop()
                report.memory = sampler.frame()
    finally:
        # Written after Dask's report is saved (the block above), also for a failed run, whose
        # own error is never hidden by one of the report.
        try:
            if report.draw is not None:
                report.draw(report)
            write_report_html(report)
        except Exception as err:
            if not report.status.startswith("failed"):
                raise
            logger.warning("report: %s could not be written (%s: %s)", report.path, type(err).__name__, err)


@contextlib.contextmanager
def _dask_performance_report(client: Any, report: RunReport) -> Iterator[None]:
    """Dask's performance report of the block, Bokeh inline, saved under a temporary name and
    renamed, also for a failed run; a report that cannot be saved is a warning, not a failure."""
    path = report.performance_report
    if path is None:
        yield
        return
    from distributed import performance_report

    tmp = path.with_name(f"{TMP_MARKER}{uuid.uuid4().hex[:8]}-{path.name}")
    recorder = performance_report(filename=str(tmp), mode="inline")
    with client.as_current():
        recorder.__enter__()
    try:
        yield
    finally:
        try:
            # Its "Calling Code" section shows what ran: the run's config, or its stages. The
            # profiles it fetches are call trees deep enough for distributed's message sizing to
            # give up ("Sizeof calculation ... failed", harmless) where they are sent: on the
            # workers that warning is held back, here it goes to the run log when there is one.
            with dask_records_to_log_file(), _message_sizing_quiet(client):
                client.sync(recorder.__aexit__, None, None, None, code=_what_ran(report))
            _offline(tmp)
            os.replace(tmp, path)
        except Exception as err:
            tmp.unlink(missing_ok=True)
            report.performance_report = None
            logger.warning("report: Dask's performance report could not be saved (%s: %s)", type(err).__name__, err)


@contextlib.contextmanager
def _message_sizing_quiet(client: Any) -> Iterator[None]:
    """``distributed.sizeof`` records below ERROR held back on the workers and the scheduler for
    the block; each process's own level is put back after it."""
    import logging

    try:
        # Read everywhere before setting anywhere: workers may share a process (processes=False).
        workers, scheduler = client.run(_sizeof_level), client.run_on_scheduler(_sizeof_level)
        client.run(_sizeof_level, logging.ERROR)
        client.run_on_scheduler(_sizeof_level, logging.ERROR)
    except Exception as err:  # noqa: BLE001 - quieter output is not worth failing a report for
        logger.debug("report: message sizing not quietened (%s)", err)
        yield
        return
    try:
        yield
    finally:
        by_level: dict[int, list[str]] = {}
        for address, level in workers.items():
            by_level.setdefault(level, []).append(address)
        try:
            for level, addresses in by_level.items():
                client.run(_sizeof_level, level, workers=addresses)
            client.run_on_scheduler(_sizeof_level, scheduler)
        except Exception as err:  # noqa: BLE001 - a worker gone meanwhile has no level to restore
            logger.debug("report: message sizing levels not restored everywhere (%s)", err)


def _sizeof_level(level: int | None = None) -> int:
    """The ``distributed.sizeof`` logger's level in this process (before setting ``level``)."""
    import logging

    sizing = logging.getLogger("distributed.sizeof")
    previous = sizing.level
    if level is not None:
        sizing.setLevel(level)
    return previous


def _what_ran(report: RunReport) -> str:
    if report.record and report.record.get("config"):
        import yaml

        return "p2g run, config:\n" + yaml.safe_dump(report.record["config"], sort_keys=False)
    stages = ", ".join(name for name, _, _ in report.stages) or "(no stage recorded)"
    return f"p2g_dask run report {report.path}: stages {stages}"


def _offline(html_path: Path) -> None:
    """Drop the one remote resource of Dask's report template (a favicon on docs.dask.org)."""
    text = html_path.read_text(encoding="utf-8")
    local = re.sub(r'<link rel="(?:shortcut )?icon" href="https?://[^"]*"\s*/?>', '<link rel="icon" href="data:,">',
                   text)
    if local != text:
        html_path.write_text(local, encoding="utf-8")


def reported(tool: Callable) -> Callable:
    """Decorate a tool so that ``report=PATH`` writes a run report of the call.

    The tool declares ``report=None`` in its signature (and documents it); the decorator takes it
    and, when a path is given, runs the call inside :func:`run_report` (its client: the call's
    ``client=`` or the current one) as one stage named after the tool; a links table returned is
    given to the report (:meth:`RunReport.add_links`: its numbers and parameters).

    Examples
    --------
    >>> import tempfile
    >>> @reported
    ... def add(x, *, report=None, client=None):
    ...     return x + 1
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     add(1, report=Path(folder) / "r.html"), (Path(folder) / "r.html").exists()
    (2, True)
    """
    @functools.wraps(tool)
    def wrapper(*args, report: Any = None, **kwargs):
        if report is None:
            return tool(*args, **kwargs)
        with run_report(report, client=kwargs.get("client")) as record, record.stage(tool.__name__):
            result = tool(*args, **kwargs)
            if isinstance(result, pd.DataFrame) and {"gene", "pval", "fdr"} <= set(result.columns):
                record.add_links(result)
        return result

    return wrapper
