"""A run report: ``report.html`` (stages, memory per worker over time, spilled bytes, links,
calibration, a browser figure, parameters, versions) and Dask's performance report beside it.

``p2g run`` and ``p2g demo`` write both next to ``run.json``. In Python::

    with run_report("out/report.html", client=client) as report:
        with report.stage("peak_to_gene"):
            links = p2g.tl.peak_to_gene(store, gene_annotation=genes, client=client)
        report.add_links(links, data=store, gene_annotation=genes)

A single tool call takes ``report="out/report.html"`` (``p2g.tl.peak_to_gene(..., report=...)``):
the same page without the links' figures (their numbers are in it), and Dask's performance
report. The recording (stages, memory sampled from the scheduler, Dask's report) is
:mod:`p2g_dask._report`'s; this module adds the links' figures, drawn with :mod:`p2g_dask.pl`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2g_dask._report import PERFORMANCE_REPORT, RunReport
from p2g_dask._report import run_report as _record
from p2g_dask.pl import plot_link_calibration, plot_link_summary, plot_peak2gene, plot_style

__all__ = ["PERFORMANCE_REPORT", "RunReport", "run_report"]


def run_report(path: str | Path, *, client: Any = None, interval: float = 0.5,
               performance_report: bool = True) -> Iterator[RunReport]:
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

    Returns
    -------
    contextlib.AbstractContextManager of RunReport
        Give the report the run's stages (:meth:`RunReport.stage`), links
        (:meth:`RunReport.add_links`) and figures; the pipeline also sets ``record``. The links'
        summary, calibration and a browser track are drawn when the block ends.

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
    return _record(path, client=client, interval=interval, performance_report=performance_report,
                   draw=link_figures)


def _browser_figure(report: RunReport):
    """plot_peak2gene for the chosen gene, or the gene with most links passing its default cut-offs."""
    options, links = report.browser, report.links
    gene = options.get("gene")
    if gene is None:
        passing = links[(links["fdr"] < 0.01) & (links["correlation"].abs() >= 0.3)]
        if passing.empty:
            return None, None
        gene = str(passing["gene"].value_counts().index[0])
    coverage = ({"bigwig_files": options["bigwig_files"]} if options.get("bigwig_files")
                else {"groupby": options.get("groupby")})
    fig, _ = plot_peak2gene(options["data"], gene=gene, links=links, gene_annotation=options["gene_annotation"],
                            exon_annotation=options.get("exon_annotation"), **coverage)
    return f"Browser track of {gene} (links at FDR < 0.01 and |r| >= 0.3)", fig


_KINDS = ("link", "calibration", "browser")


def _kind(title: str) -> str:
    """The first word of a title, lower case: which figure it is (``"calibration"`` ...)."""
    return re.match(r"[a-z]*", title.lower())[0]


def link_figures(report: RunReport) -> None:
    """Add the link summary, calibration and browser figures the report lacks (by title), drawn
    in the p2g style; figures given with other titles keep their place after them."""
    given = {_kind(title): (title, figure) for title, figure in report.figures}
    links, drawn = report.links, []
    with plot_style():
        _draw_missing(report, given, links, drawn)


def _draw_missing(report: RunReport, given: dict, links: Any, drawn: list) -> None:
    if "link" in given:
        drawn.append(given["link"])
    elif links is not None:
        drawn.append(("Link summary (FDR < 0.05)", plot_link_summary(links)[0]))
    if "calibration" in given:
        drawn.append(given["calibration"])
    elif links is not None and {"perm_pval", "emp_pval"} & set(links.columns):
        drawn.append(("Calibration: the t-test's p-values against the null p-values", plot_link_calibration(links)[0]))
    if "browser" in given:
        drawn.append(given["browser"])
    elif links is not None and report.browser.get("data") is not None and report.browser.get("gene_annotation") is not None:
        title, fig = _browser_figure(report)
        if fig is not None:
            drawn.append((title, fig))
    report.figures = drawn + [(title, fig) for title, fig in report.figures if _kind(title) not in _KINDS]
