"""The ``p2g`` command line: demo, ingest, run (config file), bigwig, verify, plot, gene-scores."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import dask

from p2g_dask._logging import enable_console_logging


def cmd_demo(args: argparse.Namespace) -> int:
    from p2g_dask._demo import demo_config, summary_lines, write_demo_inputs
    from p2g_dask._logging import log_to_file
    from p2g_dask.pipeline import run_pipeline

    out = Path(args.out)
    started = time.perf_counter()
    what = ("ATAC cells and their fragments (no RNA: gene scores are the gene side)" if args.atac_only
            else "paired ATAC + RNA cells with planted peak-gene links")
    print(f"p2g demo: simulating {args.cells:,} {what} ...", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    # One log for the whole demo: the simulation, then the run (which writes into the same file).
    with log_to_file(out / "p2g.log"):
        inputs = write_demo_inputs(out / "inputs", args.cells, args.seed, rna=not args.atac_only)
        record = run_pipeline(demo_config(out, inputs, args.workers, atac_only=args.atac_only),
                              progress=not args.quiet)
    print("\n".join(summary_lines(record, out)))
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from p2g_dask.io import ingest, ingest_samples

    if args.samples is not None:  # p2g ingest --samples samples.tsv STORE: the one positional is the store
        if args.rna is not None or args.store is not None:
            raise ValueError("with --samples, give only the output store: p2g ingest --samples samples.tsv STORE")
        store = ingest_samples(args.samples, args.atac, peaks=args.peaks, chunk_cells=args.chunk_cells or 10_000,
                               ceiling=None if args.ceiling == 0 else args.ceiling,
                               counting_strategy=args.counting_strategy, cache_fragments=args.cache,
                               overwrite=args.overwrite, show_progress=not args.quiet)
        print(store)
        return 0
    if args.store is None:  # p2g ingest data.h5mu STORE
        args.rna, args.store = None, args.rna
    if args.store is None:
        raise ValueError("give the output store: p2g ingest ATAC.h5ad RNA.h5ad STORE (or data.h5mu STORE)")
    store = ingest(args.atac, args.rna, args.store, chunk_cells=args.chunk_cells, overwrite=args.overwrite,
                   mod_atac=args.mod_atac, mod_rna=args.mod_rna, atac_only=args.atac_only)
    print(store)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from p2g_dask.pipeline import load_config, run_pipeline

    config = load_config(args.config)
    if args.overwrite:
        config["overwrite"] = True
    record = run_pipeline(config, progress=not args.quiet)
    print(json.dumps({"status": record["status"], "timings": record["timings"], "summary": record["summary"],
                      "dashboard": record.get("dashboard"), "outputs": record["outputs"]}, indent=2, default=str))
    return 0


def cmd_bigwig(args: argparse.Namespace) -> int:
    from p2g_dask.tl import pseudobulk_with_fragments

    if args.groupby is None:
        raise ValueError("--groupby is required: the obs column of the groups (one BigWig each), e.g. --groupby "
                         "cell_type.")
    fragments = dict(item.split("=", 1) if "=" in item else (Path(item).name.split(".")[0], item)
                     for item in args.fragments)
    written = pseudobulk_with_fragments(
        args.input, chrom_sizes=args.chrom_sizes, groupby=args.groupby, fragments=fragments,
        bigwig_path=args.out, bigwig_strategy=args.strategy, normalize_bigwig=not args.raw,
        cache_fragments=args.cache, n_jobs=args.jobs, bin_size=args.bin_size, overwrite=args.overwrite,
        show_progress=not args.quiet, bigwig_writer=args.writer,
    )
    for group, path in written.items():
        print(f"{group}\t{path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from p2g_dask.io.verify import verify_store

    print(f"{args.store}: {verify_store(args.store)}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from p2g_dask._atomic import atomic_path, check_overwrite
    from p2g_dask._errors import check_input_file
    from p2g_dask.io import read_gene_annotation, read_links
    from p2g_dask.pl import plot_peak2gene, plot_style

    check_overwrite(args.out, args.overwrite, argument="--out")  # before the work, not after it
    bigwigs = dict(item.split("=", 1) for item in args.bigwig) if args.bigwig else None
    for path in (bigwigs or {}).values():
        check_input_file(path, argument="--bigwig", kind="bigwig")  # a cut BigWig fails before the plot
    links = read_links(args.links, argument="--links")
    genes, exons = read_gene_annotation(args.genes, **({"exons": args.exons} if args.exons else {}))
    with plot_style():
        fig, _ = plot_peak2gene(args.input, gene=args.gene, links=links, gene_annotation=genes,
                                exon_annotation=exons if len(exons) else None, groupby=args.groupby,
                                bigwig_files=bigwigs, fdr_cutoff=args.fdr_cutoff, cor_cutoff=args.cor_cutoff,
                                positive_only=args.positive_only)
        with atomic_path(args.out, overwrite=args.overwrite, argument="--out") as tmp:
            fig.savefig(tmp, format=Path(args.out).suffix.lstrip(".") or "png", dpi=150, bbox_inches="tight")
    print(args.out)
    return 0


class _RenamedOption(argparse.Action):
    """An old option name that still works for one release, with a FutureWarning naming the new one."""

    def __init__(self, *args, new: str, **kwargs):
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"p2g: the option {option_string} is renamed {self.new}; {option_string} will stop working "
                      "in the next release.", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)

def cmd_gene_scores(args: argparse.Namespace) -> int:
    import dask

    from p2g_dask._atomic import atomic_path, check_overwrite
    from p2g_dask.io import read_gene_annotation
    from p2g_dask.tl import gene_scores

    if args.store is None and args.out is None:
        raise SystemExit("p2g gene-scores: give --store STORE (written into it) or --out SCORES.h5ad.")
    if args.out is not None:
        check_overwrite(args.out, args.overwrite, argument="--out")  # before the work, not after it
    fragments = dict(item.split("=", 1) if "=" in item else (Path(item).name.split(".")[0], item)
                     for item in args.fragments)
    genes = read_gene_annotation(args.genes, **({"gene_types": args.gene_types} if args.gene_types else {}))[0]
    with dask.config.set(scheduler="threads", num_workers=args.jobs):
        result = gene_scores(fragments, genes=genes, cells=args.cells, store=args.store, key_added=args.key_added,
                             blacklist=args.blacklist, sample_id_col=args.sample_id_col,
                             chunk_cells=args.chunk_cells, cache_fragments=args.cache, overwrite=args.overwrite,
                             show_progress=not args.quiet)
    if args.out is not None:
        adata = result if args.store is None else result.to_anndata()
        with atomic_path(args.out, overwrite=args.overwrite, argument="--out") as tmp:
            adata.write_h5ad(tmp)
        print(f"{args.out}\t{adata.n_obs} cells x {adata.n_vars} genes")
    if args.store is not None:
        print(f"{args.store}/{args.key_added}\t{result.n_obs} cells x {result.n_vars} genes")
    return 0


def _add_gene_scores_parser(sub) -> None:
    gs = sub.add_parser("gene-scores", help="ArchR gene scores (cells x genes) from fragment files")
    gs.add_argument("fragments", nargs="+", help="FILE or SAMPLE=FILE (several allowed)")
    gs.add_argument("--genes", required=True, help="gene annotation (GFF3/GTF/TSV)")
    gs.add_argument("--gene-types", nargs="*", default=None, help="keep these gene types, e.g. protein_coding")
    gs.add_argument("--store", default=None, help="p2g store: write the scores into it for its ATAC cells")
    gs.add_argument("--cells", default=None, help=".h5ad/.h5mu with the cells (default: all barcodes)")
    gs.add_argument("--out", default=None, help="write the scores as .h5ad")
    gs.add_argument("--key-added", default="X_gene_score")
    gs.add_argument("--blacklist", default=None, help="BED file of regions to leave out")
    gs.add_argument("--sample-id-col", default=None)
    gs.add_argument("--chunk-cells", type=int, default=10_000)
    gs.add_argument("--cache", default=None, help="parquet fragment cache folder")
    gs.add_argument("--jobs", type=int, default=2, help="threads (default: %(default)s)")
    gs.add_argument("--overwrite", action="store_true")
    gs.set_defaults(func=cmd_gene_scores)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2g", description="Peak-to-gene links for single-cell multiome data, on Dask.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline on simulated data (offline)")
    demo.add_argument("--out", default="p2g_demo_out", help="output folder (default: %(default)s)")
    demo.add_argument("--cells", type=int, default=3000, help="cells to simulate (default: %(default)s)")
    demo.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--atac-only", action="store_true", help="no RNA: gene scores from the fragments instead")
    demo.set_defaults(func=cmd_demo)

    ing = sub.add_parser("ingest", help="write ATAC + RNA (or ATAC alone) into one chunked Zarr store")
    ing.add_argument("atac", help=".h5ad, .h5mu or 10x filtered_feature_bc_matrix.h5 (with --samples: STORE)")
    ing.add_argument("rna", nargs="?", default=None, help=".h5ad (omit for .h5mu / 10x h5)")
    ing.add_argument("store", nargs="?", default=None, help="output store folder (e.g. pbmc.zarr)")
    ing.add_argument("--samples", default=None, metavar="SAMPLES.tsv",
                     help="many samples: a TSV with sample, fragments and h5 (or atac and rna) columns; "
                          "then give only STORE (p2g ingest --samples samples.tsv STORE)")
    ing.add_argument("--peaks", default=None, help="with --samples: the one peak set (BED), counted from the fragments")
    ing.add_argument("--ceiling", type=int, default=4, help="with --samples: cap of a cell's count in a peak "
                     "(ArchR: %(default)s; 0: no cap)")
    ing.add_argument("--counting-strategy", default="insertion", choices=["insertion", "paired-insertion", "fragment"],
                     help="with --samples: insertion (ArchR, default) or SnapATAC2's paired-insertion / fragment")
    ing.add_argument("--cache", default=None, help="with --samples: parquet fragment cache folder (kept)")
    ing.add_argument("--chunk-cells", type=int, default=None)
    ing.add_argument("--mod-atac", default="atac")
    ing.add_argument("--mod-rna", default="rna")
    ing.add_argument("--overwrite", action="store_true")
    ing.add_argument("--atac-only", action="store_true",
                     help="no RNA: an ATAC-only store (then p2g gene-scores --store for the gene side)")
    ing.set_defaults(func=cmd_ingest)

    run = sub.add_parser("run", help="run the pipeline from a YAML config (see deploy/example-config.yaml)")
    run.add_argument("config")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.set_defaults(func=cmd_run)

    bw = sub.add_parser("bigwig", help="per-group coverage BigWigs from fragment files")
    bw.add_argument("input", help="store, .h5ad or .h5mu with the groups in obs")
    bw.add_argument("--fragments", nargs="+", required=True, help="FILE or SAMPLE=FILE (several allowed)")
    bw.add_argument("--chrom-sizes", required=True)
    bw.add_argument("--groupby", default=None, help="obs column of the groups (one BigWig each; required)")
    bw.add_argument("--cluster-key", dest="groupby", action=_RenamedOption, new="--groupby", help=argparse.SUPPRESS)
    bw.add_argument("--out", required=True, help="BigWig folder")
    bw.add_argument("--strategy", choices=["cutsite", "fragment"], default="cutsite")
    bw.add_argument("--raw", action="store_true", help="raw counts instead of CPM")
    bw.add_argument("--bin-size", type=int, default=1)
    bw.add_argument("--cache", default=None, help="parquet fragment cache folder")
    bw.add_argument("--jobs", type=int, default=2)
    bw.add_argument("--writer", choices=["p2g", "pybigtools"], default="p2g",
                    help="BigWig writer: p2g_dask's (fast, default) or pybigtools'")
    bw.add_argument("--overwrite", action="store_true")
    bw.set_defaults(func=cmd_bigwig)

    ver = sub.add_parser("verify", help="check a store's chunks (presence, checksums, CSR) and print its state")
    ver.add_argument("store")
    ver.set_defaults(func=cmd_verify)

    plot = sub.add_parser("plot", help="browser track of one gene's links (PNG/PDF/SVG)")
    plot.add_argument("input", help="store, .h5ad or .h5mu (peak matrix for --groupby)")
    plot.add_argument("--links", required=True, help="links.parquet")
    plot.add_argument("--gene", required=True)
    plot.add_argument("--genes", required=True, help="gene annotation (GFF3/GTF/TSV)")
    plot.add_argument("--exons", default=None)
    plot.add_argument("--groupby", default=None, help="obs column: one coverage row per group")
    plot.add_argument("--group-by", dest="groupby", action=_RenamedOption, new="--groupby", help=argparse.SUPPRESS)
    plot.add_argument("--bigwig", nargs="*", help="GROUP=FILE.bw ...")
    plot.add_argument("--fdr-cutoff", type=float, default=0.01, help="largest FDR of a drawn link (default: %(default)s)")
    plot.add_argument("--cor-cutoff", type=float, default=0.3,
                      help="smallest |r| of a drawn link (default: %(default)s)")
    plot.add_argument("--positive-only", action="store_true", help="draw only positive links")
    # Old spellings, for one release: they warn and set the new option.
    plot.add_argument("--fdr", type=float, dest="fdr_cutoff", action=_RenamedOption, new="--fdr-cutoff",
                      help=argparse.SUPPRESS)
    plot.add_argument("--min-abs-r", type=float, dest="cor_cutoff", action=_RenamedOption, new="--cor-cutoff",
                      help=argparse.SUPPRESS)
    plot.add_argument("--out", required=True)
    plot.add_argument("--overwrite", action="store_true")
    plot.set_defaults(func=cmd_plot)
    _add_gene_scores_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``atomic_path`` removes its temporary output."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (``kill``, SLURM ``scancel``, a container stop) into :class:`Terminated`.

    Python's default on SIGTERM is to exit at once, skipping ``finally`` blocks: temporary
    outputs would stay behind and the cluster would not be closed. Only the main thread can
    install handlers, so elsewhere this does nothing.

    Examples
    --------
    >>> import os, signal
    >>> with sigterm_as_interrupt():
    ...     try:
    ...         os.kill(os.getpid(), signal.SIGTERM)
    ...     except Terminated:
    ...         print("cleaned up")
    cleaned up
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``p2g`` console script."""
    args = build_parser().parse_args(argv)
    # demo and run show one line per stage and its progress bar; their details go to the log
    # file in the output folder, so the terminal gets warnings only, like -q everywhere.
    detail_in_log_file = args.command in ("demo", "run")
    enable_console_logging(logging.WARNING if args.quiet or detail_in_log_file else logging.INFO)
    try:
        # Each stage of a command is announced on its own line: its progress bar follows at once.
        with sigterm_as_interrupt(), dask.config.set({"p2g.progress-after": 0}):
            return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, TypeError) as err:
        if args.debug:
            import traceback

            traceback.print_exc()
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        # One line: the error, never a traceback (``--debug`` shows it).
        print(f"p2g {args.command}: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"p2g {args.command}: {how}; no partial output was left under a final name.", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
