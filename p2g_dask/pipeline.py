"""``p2g run CONFIG.yaml``: the whole pipeline from one config, with timings in ``run.json``.

Config sections (all but ``inputs`` and ``output`` optional)::

    inputs:        atac, rna, store, gene_annotation, exon_annotation, fragments, chrom_sizes,
                   mod_atac, mod_rna, truth; or samples (a samples TSV for ingest_samples) and peaks
    output:        folder for store.zarr (when ingesting), links.parquet, bigwig/, plots, run.json
    overwrite:     replace existing outputs (default false)
    cluster:       start_cluster options: kind (local | slurm | address) and that kind's options
    ingest:        ingest options (chunk_cells, atac_only: an ATAC-only store, with gene_scores for the gene side;
                   with inputs.samples: chunk_cells, ceiling, counting_strategy, min_samples, cache_fragments)
    iterative_lsi: iterative_lsi parameters, or false to skip (then peak_to_gene.use_rep must exist)
    peak_to_gene:  peak_to_gene parameters
    filter_links:  filter_links cutoffs (writes links_filtered.parquet)
    pseudobulk:    pseudobulk_with_fragments parameters (needs inputs.fragments, inputs.chrom_sizes)
    gene_scores:   gene_scores parameters (needs inputs.fragments and inputs.gene_annotation); written
                   into the store; peak_to_gene uses them with peak_to_gene.gene_obsm: <key_added>
    plots:         genes (list), groupby, summary / heatmap / calibration (true or false: which
                   figures besides the browser tracks), and plot_peak2gene options
    report:        true (default): report.html and Dask's performance_report.html (see
                   p2g_dask.report); false: neither

The run's details (every INFO record of the ``p2g_dask`` logger) go to ``p2g.log`` in the output
folder; the terminal shows one line per stage, its progress bar and the warnings.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

import p2g_dask
from p2g_dask._atomic import atomic_path
from p2g_dask._versions import VERSIONED, versions  # noqa: F401 - run.json's versions
from p2g_dask._logging import dask_records_to_log_file, log_to_file, logger

SECTIONS = ("inputs", "output", "overwrite", "cluster", "ingest", "iterative_lsi", "peak_to_gene",
            "filter_links", "pseudobulk", "plots", "gene_scores", "report")
INPUT_KEYS = ("atac", "rna", "store", "gene_annotation", "exon_annotation", "fragments", "chrom_sizes",
              "mod_atac", "mod_rna", "truth", "samples", "peaks")
INGEST_KEYS = ("chunk_cells", "atac_only")
SAMPLES_INGEST_KEYS = ("chunk_cells", "ceiling", "counting_strategy", "min_samples", "cache_fragments")
_SET_BY_PIPELINE = {"data", "atac", "rna", "input_data", "links", "client", "gene_annotation", "exon_annotation",
                    "path_to_fragments", "chromsizes", "fragments", "chrom_sizes", "bigwig_path", "show", "ax", "gene", "overwrite",
                    "show_progress", "mod_atac", "mod_rna", "report"}
_PLOT_KEYS = ("genes", "groupby", "group_by", "summary", "heatmap", "calibration")


def _check_keys(section: str, given: Mapping, allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"config section {section!r} has unknown key(s) {unknown}; allowed: {sorted(allowed)}."
        )


def _function_keys(function: Callable) -> set[str]:
    # Old names of renamed arguments stay valid config keys for one release (they warn when used);
    # epione's aliases stay valid for good.
    old_names = set(getattr(function, "renamed_arguments", {})) | set(getattr(function, "argument_aliases", {}))
    return (set(inspect.signature(function).parameters) | old_names) - _SET_BY_PIPELINE


def load_config(config: str | os.PathLike | Mapping) -> dict:
    """Read and validate a run config (YAML path or mapping); errors name the bad key."""
    if not isinstance(config, Mapping):
        path = Path(config)
        if not path.exists():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist.")
        # safe_load: a config is data; tags such as !!python/object are refused, never run.
        try:
            with open(path) as handle:
                config = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            detail = " ".join(str(err).split())
            raise ValueError(f"config file {str(path)!r} is not a plain YAML mapping ({detail}); "
                             "write plain YAML (no !!python tags).") from None
        base = path.resolve().parent
    else:
        base = Path.cwd()
    if not isinstance(config, Mapping):
        raise ValueError("the config must be a YAML mapping of sections (inputs:, output:, ...).")
    config = dict(config)
    _check_keys("top level", config, SECTIONS)
    for required in ("inputs", "output"):
        if required not in config:
            raise ValueError(f"config needs a {required!r} section.")
    inputs = dict(config["inputs"] or {})
    _check_keys("inputs", inputs, INPUT_KEYS)
    if not inputs.get("atac") and not inputs.get("store") and not inputs.get("samples"):
        raise ValueError("config inputs needs 'atac' (h5ad / h5mu / 10x h5), 'samples' (a samples TSV) or 'store' "
                         "(a p2g store).")
    if inputs.get("samples") and inputs.get("atac"):
        raise ValueError("config inputs has both 'samples' and 'atac'; give one: samples (many samples) or atac.")
    # Relative paths are relative to the config file; paths are never shell-interpolated.
    for key in ("atac", "rna", "store", "gene_annotation", "exon_annotation", "chrom_sizes", "truth", "samples",
                "peaks"):
        value = inputs.get(key)
        if isinstance(value, str) and not os.path.isabs(value) and (base / value).exists():
            inputs[key] = str(base / value)
    if isinstance(inputs.get("fragments"), Mapping):
        inputs["fragments"] = {k: str(base / v) if not os.path.isabs(v) else v for k, v in inputs["fragments"].items()}
    config["inputs"] = inputs
    output = Path(config["output"])
    config["output"] = str(output if output.is_absolute() else base / output)
    from p2g_dask.tl import filter_links, iterative_lsi, peak_to_gene, pseudobulk_with_fragments

    checks = {"iterative_lsi": iterative_lsi, "peak_to_gene": peak_to_gene, "filter_links": filter_links,
              "pseudobulk": pseudobulk_with_fragments}
    for section, function in checks.items():
        value = config.get(section)
        if isinstance(value, Mapping):
            _check_keys(section, value, _function_keys(function))
    if isinstance(config.get("ingest"), Mapping):
        _check_keys("ingest", config["ingest"], SAMPLES_INGEST_KEYS if inputs.get("samples") else INGEST_KEYS)
    if isinstance(config.get("plots"), Mapping):
        from p2g_dask.pl import plot_peak2gene

        _check_keys("plots", config["plots"], set(_PLOT_KEYS) | _function_keys(plot_peak2gene))
    if isinstance(config.get("gene_scores"), Mapping):
        from p2g_dask.tl import gene_scores

        allowed = _function_keys(gene_scores) - {"fragments", "genes", "store", "cells"}
        _check_keys("gene_scores", config["gene_scores"], allowed)
    if config.get("gene_scores") and not (inputs.get("fragments") and inputs.get("gene_annotation")):
        raise ValueError("config section 'gene_scores' needs inputs.fragments and inputs.gene_annotation.")
    if not isinstance(config.get("report", True), bool):
        raise ValueError(f"config 'report: {config['report']!r}' must be true or false.")
    if config.get("pseudobulk") and not (inputs.get("fragments") and inputs.get("chrom_sizes")):
        raise ValueError("config section 'pseudobulk' needs inputs.fragments and inputs.chrom_sizes.")
    return config


def _write_json(path: Path, payload: dict, overwrite: bool = True) -> None:
    with atomic_path(path, overwrite=overwrite, argument="run.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))


def run_pipeline(config: str | os.PathLike | Mapping, *, client: Any = None, progress: bool = False) -> dict:
    """Run the configured stages and write their outputs plus ``run.json``.

    Parameters
    ----------
    config
        A YAML path or a mapping with the sections in this module's docstring.
    client
        A ``distributed.Client`` to use; otherwise one is started from the ``cluster`` section
        (LocalCluster by default) and closed at the end.
    progress
        Announce each stage on its own line (stderr) and show the Dask progress of its graphs.
        Either way the details go to ``p2g.log`` in the output folder.

    Returns
    -------
    dict
        The content of ``run.json``: parameters, versions, timings per stage, dashboard link,
        output paths and a summary.

    Examples
    --------
    >>> # Not run: the example config runs the whole pipeline on a cluster (minutes).
    >>> run_pipeline("deploy/example-config.yaml")["timings"]  # doctest: +SKIP
    """
    config = load_config(config)
    out = Path(config["output"])
    overwrite = bool(config.get("overwrite", False))
    out.mkdir(parents=True, exist_ok=True)
    run_json = out / "run.json"
    if run_json.exists() and not overwrite:
        raise FileExistsError(f"output={str(out)!r} already holds a run (run.json); pass overwrite: true (CLI: --overwrite).")
    record: dict[str, Any] = {
        "p2g_dask_version": p2g_dask.__version__, "config": config, "versions": versions(),
        "timings": {}, "outputs": {}, "summary": {}, "status": "running",
    }
    with log_to_file(out / "p2g.log") as log:
        record["outputs"]["log"] = str(log)
        _run_with_client(config, client, record, progress)
    return record


def _report(config: dict, client: Any):
    """The run's report (report.html and Dask's performance report in the output folder), unless
    the config says ``report: false``."""
    if config.get("report", True) is False:
        return contextlib.nullcontext()
    from p2g_dask.report import run_report

    return run_report(Path(config["output"]) / "report.html", client=client)


def _run_with_client(config: dict, client: Any, record: dict, progress: bool) -> None:
    from p2g_dask import _stages

    out = Path(config["output"])
    started = time.perf_counter()
    own_client = client is None
    if own_client:
        from p2g_dask.cluster import start_cluster

        cluster_options = dict(config.get("cluster") or {})
        client = start_cluster(cluster_options.pop("kind", None), **cluster_options)
    from p2g_dask.cluster import dashboard_link

    record["dashboard"] = dashboard_link(client)
    if progress and record["dashboard"]:
        _stages.show_line(f"Dask dashboard: {record['dashboard']}")
    report = None
    try:
        with _report(config, client) as report:
            try:
                _stages.run_all(config, client, record, progress=progress, report=report)
                record["status"] = "finished"
            except BaseException as err:
                record["status"] = f"failed: {type(err).__name__}: {err}"
                # The terminal shows the error once (the CLI's error line); the log keeps it.
                logger.info("run %s", record["status"])
                raise
            finally:
                record["timings"]["total"] = round(time.perf_counter() - started, 3)
    finally:
        if report is not None:
            # The report's own time: Dask's performance report fetched, report.html drawn.
            record["timings"]["report"] = round(time.perf_counter() - started - record["timings"]["total"], 3)
            record["outputs"]["report"] = str(report.path)
            if report.performance_report is not None:
                record["outputs"]["performance_report"] = str(report.performance_report)
        if own_client:
            from p2g_dask.cluster import close_cluster

            # A finished run's shutdown chatter goes to the log; a failed run's shows as it was.
            with dask_records_to_log_file() if record["status"] == "finished" else contextlib.nullcontext():
                close_cluster(client)
        # A failed run's record is kept apart so that run.json always means a finished run.
        target = out / "run.json" if record["status"] == "finished" else out / "run.failed.json"
        _write_json(target, record)
    logger.info("run finished in %.1f s; outputs in %s", record["timings"]["total"], out)
