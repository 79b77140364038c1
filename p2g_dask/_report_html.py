"""``report.html``: one self-contained page (inline CSS, PNG figures as base64, no scripts)."""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._atomic import atomic_path
from p2g_dask._logging import logger

_GIB = 2**30
_CSS = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; margin: 24px 40px; color: #222; max-width: 1280px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 30px; border-bottom: 1px solid #ccc; }
p.meta { color: #555; margin-top: 0; } img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; } td.num { text-align: right; }
pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; }
.failed { color: #b00; font-weight: bold; } figure { margin: 12px 0; } figcaption { font-size: 13px; color: #444; }
"""


def _png(figure: Any) -> str:
    """A Figure (closed after) or a PNG file, as base64."""
    if isinstance(figure, (str, Path)):
        return base64.b64encode(Path(figure).read_bytes()).decode()
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _figure_html(title: str, figure: Any) -> str:
    return (f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{_png(figure)}">'
            f"<figcaption>{html.escape(title, quote=False)}</figcaption></figure>")


def _table(rows: list[list[Any]], header: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return f'<td class="num">{value:,}</td>'
        if isinstance(value, (float, np.floating)):
            return f'<td class="num">{value:,.2f}</td>'
        return f"<td>{html.escape(str(value), quote=False)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _stage_figure(stages: list[tuple[str, float, float]], t0: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(stages) + 1.0))
    for row, (name, start, end) in enumerate(stages):
        ax.barh(row, end - start, left=start - t0, color="#4C72B0")
        ax.text(end - t0, row, f"  {end - start:.1f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(stages)), [name for name, _, _ in stages])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run started")
    ax.set_title("Stages")
    return fig


def _memory_figure(memory: pd.DataFrame, stages: list[tuple[str, float, float]], t0: float):
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_spill) = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True,
                                           gridspec_kw={"height_ratios": [3, 1.3]})
    for number, (name, start, end) in enumerate(stages):
        for ax in (ax_mem, ax_spill):
            ax.axvspan(start - t0, end - t0, color="#000000", alpha=0.04 + 0.04 * (number % 2), lw=0)
        ax_mem.text((start + end) / 2 - t0, 1.0, name, transform=ax_mem.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=7, rotation=20)
    for worker, rows in memory.groupby("worker", sort=True):
        seconds = rows["time"] - t0
        line, = ax_mem.plot(seconds, rows["memory"] / _GIB, lw=1.4, label=f"{worker}: process")
        if rows["managed"].notna().any():
            ax_mem.plot(seconds, rows["managed"] / _GIB, lw=1, ls="--", color=line.get_color(),
                        label=f"{worker}: Dask-managed")
        ax_spill.plot(seconds, rows["spilled"] / _GIB, lw=1.4, color=line.get_color(), label=str(worker))
    limits = memory.groupby("worker")["memory_limit"].max()
    if len(limits) and limits.max() > 0 and limits.max() < 4 * memory["memory"].max():
        ax_mem.axhline(limits.max() / _GIB, color="#C44E52", ls=":", lw=1, label="memory limit per worker")
    ax_mem.set_ylabel("memory (GiB)")
    ax_mem.set_ylim(bottom=0)
    ax_mem.legend(fontsize=7, loc="upper left", ncol=2)
    ax_spill.set_ylabel("spilled to disk (GiB)")
    ax_spill.set_ylim(bottom=0, top=max(0.01, float(memory["spilled"].max()) / _GIB * 1.2))
    ax_spill.set_xlabel("seconds since the run started")
    fig.suptitle("Memory per worker over time", y=1.02)
    return fig


def _memory_rows(memory: pd.DataFrame) -> list[list[Any]]:
    rows = []
    for worker, part in memory.groupby("worker", sort=True):
        limit = part["memory_limit"].max()
        rows.append([worker, f"{part['memory'].max() / _GIB:.2f} GiB",
                     f"{part['managed'].max() / _GIB:.2f} GiB" if part["managed"].notna().any() else "-",
                     f"{part['spilled'].max() / _GIB:.2f} GiB", f"{limit / _GIB:.1f} GiB" if limit else "-"])
    return rows


def _given_figures(report: Any) -> list[str]:
    """The figures given to the report (links' figures drawn by :mod:`p2g_dask.report`, others)."""
    return [_figure_html(title, fig) for title, fig in report.figures]


def _summary_rows(report: Any) -> list[list[Any]]:
    summary = dict((report.record or {}).get("summary") or {})
    if not summary and report.links is not None:
        links = report.links
        summary = {"cells": links.attrs.get("n_cells"), "pairs": len(links)}
        summary.update({f"significant_{c}_0.05": int((links[c] < 0.05).sum())
                        for c in ("fdr", "perm_fdr", "emp_fdr") if c in links.columns})
    rows = []
    for key, value in summary.items():
        if isinstance(value, dict):  # recall and precision of planted links
            value = (f"{value['recovered']:,} of {value['planted']:,} planted (recall {value['recall']:.2f}), "
                     f"precision {value['precision']:.3f} of {value['significant']:,}")
        rows.append([key.replace("_", " "), value])
    return rows


def _body(report: Any) -> str:
    from p2g_dask._versions import versions

    record = report.record or {}
    memory = report.memory if report.memory is not None else pd.DataFrame()
    t0 = min([report.started] + ([float(memory["time"].min())] if len(memory) else []))
    started = datetime.datetime.fromtimestamp(report.started).strftime("%Y-%m-%d %H:%M:%S")
    status_class = "failed" if report.status.startswith("failed") else ""
    total = (record.get("timings") or {}).get("total") or (max([e for _, _, e in report.stages] or [t0]) - t0)
    perf = (f'<a href="{html.escape(report.performance_report.name)}">Dask performance report</a> '
            "(task stream, worker profiles, bandwidth, scheduler logs)" if report.performance_report else
            "no Dask performance report: the run used no distributed client (threaded scheduler), so the "
            "memory below is this process's")
    parts = [f"<h1>p2g_dask run report</h1><p class='meta'><span class='{status_class}'>{html.escape(report.status, quote=False)}"
             f"</span> &middot; started {started} &middot; {total:.1f} s &middot; {perf}</p>"]
    rows = _summary_rows(report)
    if rows:
        parts += ["<h2>Summary</h2>", _table(rows, ["", "value"])]
    if report.stages:
        stage_rows = [[name, round(end - start, 2)] for name, start, end in report.stages]
        steps = (report.links.attrs.get("timings") or {}) if report.links is not None else {}
        stage_rows += [[f"  peak_to_gene: {k}", float(v)] for k, v in steps.items()]
        parts += ["<h2>Stages</h2>", _table(stage_rows, ["stage", "seconds"]),
                  _figure_html("Stages on the run's time axis", _stage_figure(report.stages, t0))]
    if len(memory):
        parts += ["<h2>Memory per worker over time</h2>",
                  _figure_html("Process memory (solid), Dask-managed memory (dashed) and bytes spilled to disk per "
                               "worker, sampled from the scheduler; shaded: the stages", _memory_figure(
                                   memory, report.stages, t0)),
                  _table(_memory_rows(memory), ["worker", "peak process memory", "peak Dask-managed",
                                                "peak spilled to disk", "memory limit"])]
    figures = _given_figures(report)
    if figures:
        parts += ["<h2>Links</h2>", *figures]
    params = record.get("parameters") or ({"peak_to_gene": report.links.attrs.get("params")}
                                          if report.links is not None else {})
    if record.get("config"):
        params = {"config": record["config"], **params}
    parts += ["<h2>Parameters</h2>", f"<pre>{html.escape(json.dumps(params, indent=2, default=str), quote=False)}</pre>",
              "<h2>Versions</h2>", _table([[k, v] for k, v in (record.get("versions") or versions()).items()],
                                          ["package", "version"])]
    return "\n".join(parts)


def write_report_html(report: Any) -> Path:
    """Write ``report.path`` atomically (matplotlib's global rcParams are left as they are)."""
    import matplotlib

    with matplotlib.rc_context({"figure.dpi": 100, "font.size": 9, "axes.spines.top": False,
                                "axes.spines.right": False}):
        body = _body(report)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>p2g_dask run report</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")
    with atomic_path(report.path, overwrite=True, argument="report") as tmp:
        tmp.write_text(page, encoding="utf-8")
    logger.info("report: %s (%.1f MB)%s", report.path, report.path.stat().st_size / 1e6,
                f"; Dask's performance report: {report.performance_report}" if report.performance_report else "")
    return report.path
