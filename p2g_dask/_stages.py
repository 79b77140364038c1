"""The stages of ``p2g run``, each timed into the run record, and the run's progress display."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from p2g_dask._atomic import atomic_path
from p2g_dask._logging import logger


def _save_figure(fig, path: Path, overwrite: bool) -> str:
    import matplotlib.pyplot as plt

    with atomic_path(path, overwrite=overwrite, argument="plot") as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def planted_recall(links: pd.DataFrame, truth: pd.DataFrame, fdr: float = 0.05, *,
                   column: str = "fdr") -> dict[str, float]:
    """Recall of planted links at ``column < fdr`` and the share of significant links that are planted.

    ``column`` is ``"fdr"`` (the t-test), ``"perm_fdr"`` or ``"emp_fdr"``; ``fdr=inf`` counts every row.

    Examples
    --------
    >>> links = pd.DataFrame({"peak": ["p1", "p2", "p3"], "gene": "g", "fdr": [0.01, 0.01, 0.5],
    ...                       "perm_fdr": [0.01, 0.5, 0.5]})
    >>> truth = pd.DataFrame({"peak": ["p1", "p3"], "gene": "g"})
    >>> planted_recall(links, truth)["precision"], planted_recall(links, truth, column="perm_fdr")["recall"]
    (0.5, 0.5)
    """
    significant = links.loc[links[column] < fdr, ["peak", "gene"]] if np.isfinite(fdr) else links[["peak", "gene"]]
    found = set(zip(significant["peak"], significant["gene"]))
    planted = set(zip(truth["peak"], truth["gene"]))
    hits = len(found & planted)
    return {
        "planted": len(planted), "significant": len(found), "recovered": hits,
        "recall": hits / max(1, len(planted)), "precision": hits / max(1, len(found)),
    }


class _Run:
    def __init__(self, config: dict, client: Any, record: dict, progress: bool):
        self.config, self.client, self.record, self.progress = config, client, record, progress
        self.inputs = config["inputs"]
        self.out = Path(config["output"])
        self.overwrite = bool(config.get("overwrite", False))
        self.store_path: str | None = None
        self.links: pd.DataFrame | None = None
        self.genes = self.exons = None
        self.bigwigs: dict[str, str] | None = None
        # Planted links of simulated inputs, read once for the recall of every stage.
        self.truth = pd.read_csv(self.inputs["truth"], sep="\t") if self.inputs.get("truth") else None

    # -- stages -------------------------------------------------------------------------------
    def ingest(self) -> None:
        from p2g_dask.io import ingest
        from p2g_dask.io.store import is_store

        given = self.inputs.get("store")
        if given and is_store(given):
            self.store_path = str(given)
            logger.info("using the existing store %s", given)
            return
        self.store_path = str(given or self.out / "store.zarr")
        options = dict(self.config.get("ingest") or {})
        if self.inputs.get("samples"):
            from p2g_dask.io import ingest_samples

            ingest_samples(self.inputs["samples"], self.store_path, peaks=self.inputs.get("peaks"), client=self.client,
                           overwrite=self.overwrite, show_progress=self.progress, **options)
            self.record["outputs"]["store"] = self.store_path
            return
        ingest(self.inputs["atac"], self.inputs.get("rna"), self.store_path, overwrite=self.overwrite,
               mod_atac=self.inputs.get("mod_atac", "atac"), mod_rna=self.inputs.get("mod_rna", "rna"), **options)
        self.record["outputs"]["store"] = self.store_path

    def iterative_lsi(self) -> None:
        from p2g_dask.io import open_store
        from p2g_dask.tl import iterative_lsi

        params = dict(self.config.get("iterative_lsi") or {})
        key = params.get("key_added", "X_iterative_lsi")
        if key in open_store(self.store_path).atac.obsm and not self.overwrite:
            logger.info("obsm[%r] is in the store already; reusing it (overwrite: true recomputes it)", key)
            return
        iterative_lsi(self.store_path, client=self.client, overwrite=True, **params)

    def gene_scores(self) -> None:
        from p2g_dask.io import read_gene_annotation
        from p2g_dask.tl import gene_scores

        params = dict(self.config.get("gene_scores") or {})
        params.setdefault("cache_fragments", str(self.out / "fragment_cache"))
        genes = read_gene_annotation(self.inputs["gene_annotation"])[0]
        result = gene_scores(self.inputs["fragments"], genes=genes, store=self.store_path, client=self.client,
                             overwrite=self.overwrite, show_progress=self.progress, **params)
        self.record["outputs"]["gene_scores"] = f"{self.store_path}/{result.name}"

    def peak_to_gene(self) -> None:
        from p2g_dask.io import read_gene_annotation, write_links
        from p2g_dask.tl import peak_to_gene

        params = dict(self.config.get("peak_to_gene") or {})
        if params.get("gene_obsm") and params.get("gene_names") is None:
            # Gene scores written by the gene_scores stage: their names are the modality's var.
            from p2g_dask.io.store import StoreModality

            params["gene_names"] = StoreModality(self.store_path, params["gene_obsm"]).var.index
        lsi = self.config.get("iterative_lsi")
        if lsi is not False:
            params.setdefault("use_rep", (lsi or {}).get("key_added", "X_iterative_lsi"))
        self.genes, self.exons = read_gene_annotation(
            self.inputs["gene_annotation"], **({"exons": self.inputs["exon_annotation"]}
                                               if self.inputs.get("exon_annotation") else {})
        )
        self.links = peak_to_gene(self.store_path, gene_annotation=self.genes, client=self.client,
                                  show_progress=self.progress, **params)
        path = write_links(self.links, self.out / "links.parquet", overwrite=self.overwrite)
        self.record["outputs"]["links"] = str(path)
        summary = {"cells": self.links.attrs.get("n_cells"), "pairs": len(self.links)}
        nulls = [c for c in ("fdr", "perm_fdr", "emp_fdr") if c in self.links.columns]
        summary.update({f"significant_{c}_0.05": int((self.links[c] < 0.05).sum()) for c in nulls})
        self.record["parameters"] = {"peak_to_gene": self.links.attrs["params"]}
        self.record["timings"].update({f"peak_to_gene.{k}": v for k, v in self.links.attrs["timings"].items()})
        if self.truth is not None:
            summary["planted_links"] = planted_recall(self.links, self.truth)
            summary.update({f"planted_links_{c}": planted_recall(self.links, self.truth, column=c) for c in nulls[1:]})
        self.record["summary"].update(summary)

    def filter_links(self) -> None:
        from p2g_dask.io import write_links
        from p2g_dask.tl import filter_links

        kept = filter_links(self.links, **dict(self.config.get("filter_links") or {}))
        path = write_links(kept, self.out / "links_filtered.parquet", overwrite=self.overwrite)
        self.record["outputs"]["links_filtered"] = str(path)
        self.record["summary"]["filtered_links"] = len(kept)
        if self.truth is not None:
            self.record["summary"]["planted_links_filtered"] = planted_recall(kept, self.truth, fdr=np.inf)

    def pseudobulk(self) -> None:
        from p2g_dask.tl import pseudobulk_with_fragments

        params = dict(self.config.get("pseudobulk") or {})
        params.setdefault("cache_fragments", str(self.out / "fragment_cache"))
        self.bigwigs = pseudobulk_with_fragments(
            self.store_path, chrom_sizes=self.inputs["chrom_sizes"], fragments=self.inputs["fragments"],
            bigwig_path=str(self.out / "bigwig"), client=self.client, show_progress=self.progress,
            overwrite=self.overwrite, **params,
        )
        self.record["outputs"]["bigwigs"] = self.bigwigs

    def plots(self) -> None:
        from p2g_dask.pl import plot_style

        options = dict(self.config.get("plots") or {})
        genes = options.pop("genes", []) or []
        groupby = options.pop("groupby", None)
        if "group_by" in options:  # the plots' old name of groupby (renamed in 0.2)
            logger.warning("config plots: group_by is renamed groupby; group_by will stop working in the next release")
            groupby = options.pop("group_by")
        want_summary = options.pop("summary", True)
        want_heatmap = options.pop("heatmap", True)
        want_calibration = options.pop("calibration", True)
        # The style applies to these figures only (drawn and saved inside the context), never
        # to the caller's global matplotlib rcParams.
        with plot_style():
            written = self._draw_plots(genes, groupby, want_summary, want_heatmap, want_calibration, options)
        self.record["outputs"]["plots"] = written

    def _draw_plots(self, genes: list, groupby: str | None, want_summary: bool, want_heatmap: bool,
                    want_calibration: bool, options: dict) -> list[str]:
        from p2g_dask.pl import plot_link_calibration, plot_link_summary, plot_peak2gene, plot_peak2gene_heatmap

        written = []
        if want_summary:
            fig, _ = plot_link_summary(self.links)
            written.append(_save_figure(fig, self.out / "link_summary.png", self.overwrite))
        if want_calibration and {"perm_pval", "emp_pval"} & set(self.links.columns):
            # t-test against the null p-values the run computed (n_permutations / empirical_pval).
            fig, _ = plot_link_calibration(self.links)
            written.append(_save_figure(fig, self.out / "link_calibration.png", self.overwrite))
        for gene in genes:
            coverage = {"bigwig_files": self.bigwigs} if self.bigwigs else {"groupby": groupby}
            fig, _ = plot_peak2gene(self.store_path, gene=gene, links=self.links, gene_annotation=self.genes,
                                    exon_annotation=self.exons if len(self.exons) else None, **coverage, **options)
            written.append(_save_figure(fig, self.out / f"browser_{gene}.png", self.overwrite))
        if want_heatmap and groupby:
            fig, _ = plot_peak2gene_heatmap(self.store_path, links=self.links, groupby=groupby)
            written.append(_save_figure(fig, self.out / "peak2gene_heatmap.png", self.overwrite))
        return written


def stage_line(number: int, total: int, name: str, *, seconds: float | None = None) -> str:
    """One line of the run's progress display (no newline).

    Each stage is announced on a line of its own, so a stage's Dask progress bar (drawn below it
    with carriage returns) never shares a line with it.

    Examples
    --------
    >>> stage_line(3, 5, "peak_to_gene"), stage_line(3, 5, "peak_to_gene", seconds=12.34)
    ('[3/5] peak_to_gene ...', '[3/5] peak_to_gene done (12.3 s)')
    """
    if seconds is None:
        return f"[{number}/{total}] {name} ..."
    return f"[{number}/{total}] {name} done ({seconds:.1f} s)"


def show_line(line: str) -> None:
    """Write one line of the run's terminal view (stderr), after whatever Dask drew on stdout."""
    # Dask's text progress bar draws on stdout and ends by clearing its line; flush it first so
    # the stage line (stderr, as log lines) starts at the beginning of a line of its own.
    sys.stdout.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_all(config: dict, client: Any, record: dict, *, progress: bool = False, report: Any = None) -> None:
    """Run the stages the config asks for, in order, timing each.

    With ``progress``: a ``[i/n] stage ...`` line as each stage starts and a ``done`` line when it
    ends (stderr), and the stage's own Dask progress bar between them. With a ``report``
    (:class:`p2g_dask.report.RunReport`): each stage is timed into it, and the links and figures
    go to it at the end (also when a stage fails).
    """
    run = _Run(config, client, record, progress)
    try:
        _run_stages(run, config, record, progress, report)
    finally:
        if report is not None:
            _add_to_report(report, run)


def _run_stages(run: _Run, config: dict, record: dict, progress: bool, report: Any) -> None:
    stages = ["ingest"]
    if config.get("iterative_lsi", {}) is not False:
        stages.append("iterative_lsi")
    if config.get("gene_scores"):
        stages.append("gene_scores")
    stages.append("peak_to_gene")
    stages += [name for name in ("filter_links", "pseudobulk", "plots") if config.get(name)]
    for number, name in enumerate(stages, start=1):
        # The terminal shows the stage lines (with progress); the log file always has them.
        logger.info("%s", stage_line(number, len(stages), name))
        if progress:
            show_line(stage_line(number, len(stages), name))
        started = time.perf_counter()
        with report.stage(name) if report is not None else contextlib.nullcontext():
            getattr(run, name)()
        record["timings"][name] = round(time.perf_counter() - started, 3)
        logger.info("%s", stage_line(number, len(stages), name, seconds=record["timings"][name]))
        if progress:
            show_line(stage_line(number, len(stages), name, seconds=record["timings"][name]))


# Titles of the figures the run wrote, as the report names them (a browser track per gene).
_REPORT_TITLES = {"link_summary.png": "Link summary (FDR < 0.05)",
                  "link_calibration.png": "Calibration: the t-test's p-values against the null p-values",
                  "peak2gene_heatmap.png": "Heatmap of the links (ArchR's plotPeak2GeneHeatmap)"}


def _add_to_report(report: Any, run: _Run) -> None:
    """The run's links and the figures it wrote go to the report (it draws what is missing)."""
    report.record = run.record
    if run.links is None:
        return
    plots = run.config.get("plots") or {}
    groupby = plots.get("groupby", plots.get("group_by"))
    report.add_links(run.links, data=run.store_path, gene_annotation=run.genes,
                     exon_annotation=run.exons if run.exons is not None and len(run.exons) else None,
                     groupby=groupby, bigwig_files=run.bigwigs)
    browsers = 0
    for path in run.record["outputs"].get("plots") or []:
        name = Path(path).name
        if name.startswith("browser_"):
            browsers += 1
            if browsers == 1:  # one example is enough for the report; all are in the folder
                report.add_figure(f"Browser track of {name[len('browser_'):-len('.png')]}", path)
        elif name in _REPORT_TITLES:
            report.add_figure(_REPORT_TITLES[name], path)
