"""``p2g demo``: simulated inputs written as a user's files, the run config the demo runs, and
the summary it prints.

The demo is a ``p2g run`` of :func:`demo_config` on simulated data: metacells chosen by the
package's own rule for its cell count (:func:`p2g_dask._variables.metacells_for`, so it never
warns about small data), a cell-level permutation null next to the t-test, and every figure of
the pipeline, the calibration figure among them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2g_dask._variables import metacells_for

#: Cell-level permutations of the demo's null. Pooled over ~100,000 pairs each, 20 give the same
#: selection as 100 (3,000 cells, 300 x 20 metacells: 7,802 vs 7,804 pairs at perm_fdr < 0.05)
#: for ~1 s instead of ~3 s on 2 workers.
DEMO_PERMUTATIONS = 20

_FDR = 0.05


def write_demo_inputs(folder: Path, n_cells: int, seed: int, *, rna: bool = True) -> dict[str, Any]:
    """Simulate the demo data and write it as files, as a user's inputs would be (``rna=False``:
    no ``rna.h5ad``, for the ATAC-only demo).

    Returns ``{"paths": {name: path}, "gene": the planted gene with most links, "n_cells": n_cells}``.
    """
    from p2g_dask.datasets import simulate_fragments, simulate_multiome

    folder.mkdir(parents=True, exist_ok=True)
    sim = simulate_multiome(n_cells=n_cells, seed=seed)
    paths = {name: folder / name for name in ("atac.h5ad", "rna.h5ad", "genes.tsv", "exons.tsv", "truth.tsv",
                                              "chrom.sizes", "fragments.tsv.gz")}
    for path in paths.values():
        if path.exists():
            path.unlink()  # the demo's own inputs, rewritten on every run
    sim.atac.write_h5ad(paths["atac.h5ad"])
    if rna:
        sim.rna.write_h5ad(paths["rna.h5ad"])
    sim.genes.to_csv(paths["genes.tsv"], sep="\t", index=False)
    sim.exons.to_csv(paths["exons.tsv"], sep="\t", index=False)
    sim.truth.to_csv(paths["truth.tsv"], sep="\t", index=False)
    paths["chrom.sizes"].write_text("".join(f"{c}\t{n}\n" for c, n in sim.chrom_sizes.items()))
    simulate_fragments(sim.atac, paths["fragments.tsv.gz"], chrom_sizes=sim.chrom_sizes, seed=seed)
    # The browser track shows the planted gene with the most links.
    demo_gene = sim.truth["gene"].value_counts().index[0]
    return {"paths": {k: str(v) for k, v in paths.items()}, "gene": demo_gene, "n_cells": n_cells}


def demo_config(out: Path, inputs: dict, workers: int, *, atac_only: bool = False) -> dict:
    """The run config of ``p2g demo`` (also a worked example of the config format).

    ``n_metacells`` and ``k_neighbors`` come from :func:`~p2g_dask._variables.metacells_for` for
    the demo's cell count: ArchR's 500 x 100 from 5,000 cells, ``cells / 10`` x 20 below (300 x 20
    on the default 3,000 cells). With ``atac_only`` the gene side is ArchR's gene scores from the
    fragment file (an ATAC-only store; no RNA is read).

    Examples
    --------
    >>> inputs = {"paths": {k: k for k in ("atac.h5ad", "rna.h5ad", "genes.tsv", "exons.tsv", "truth.tsv",
    ...                                    "chrom.sizes", "fragments.tsv.gz")}, "gene": "G1", "n_cells": 3000}
    >>> config = demo_config(Path("out"), inputs, 2)
    >>> {k: config["peak_to_gene"][k] for k in ("n_metacells", "k_neighbors", "n_permutations")}
    {'n_metacells': 300, 'k_neighbors': 20, 'n_permutations': 20}
    """
    paths = inputs["paths"]
    n_metacells, k_neighbors = metacells_for(inputs["n_cells"])
    config: dict[str, Any] = {
        "inputs": {
            "atac": paths["atac.h5ad"], "rna": paths["rna.h5ad"], "gene_annotation": paths["genes.tsv"],
            "exon_annotation": paths["exons.tsv"], "fragments": {"demo": paths["fragments.tsv.gz"]},
            "chrom_sizes": paths["chrom.sizes"], "truth": paths["truth.tsv"],
        },
        "output": str(out),
        "overwrite": True,
        "cluster": {"kind": "local", "n_workers": workers, "threads_per_worker": 1},
        "iterative_lsi": {"n_components": 30, "var_features": 10_000, "sample_cells_pre": 10_000, "seed": 1},
        "peak_to_gene": {"n_metacells": n_metacells, "k_neighbors": k_neighbors, "max_distance": 250_000,
                         "n_permutations": DEMO_PERMUTATIONS, "seed": 1},
        "filter_links": {"cor_cutoff": 0.45, "fdr_cutoff": 1e-4},
        "pseudobulk": {"groupby": "cell_type", "executor": "dask"},
        "plots": {"genes": [inputs["gene"]], "groupby": "cell_type"},
    }
    if atac_only:
        del config["inputs"]["rna"], config["filter_links"], config["pseudobulk"]
        config["ingest"] = {"atac_only": True}
        config["gene_scores"] = {"key_added": "X_gene_score"}
        config["peak_to_gene"]["gene_obsm"] = "X_gene_score"
        config["plots"]["heatmap"] = False  # the heatmap's rows are RNA
    return config


def _recall_row(label: str, counts: dict | None) -> str:
    if counts is None:
        return f"  {label:<40}{'-':>12}"
    return (f"  {label:<40}{counts['significant']:>12,}{counts['recovered']:>11,}{counts['recall']:>8.2f}"
            f"{counts['precision']:>11.3f}")


def summary_lines(record: dict, out: Path) -> list[str]:
    """What ``p2g demo`` prints after the run: links, planted-link recall and precision per test,
    BigWigs, every figure, the log and the run record."""
    summary, outputs = record["summary"], record["outputs"]
    params = record["parameters"]["peak_to_gene"]
    lines = [f"metacells: {params['n_metacells']} x {params['k_neighbors']} for {summary['cells']:,} cells "
             "(p2g_dask's rule: ArchR's 500 x 100 from 5,000 cells, else cells / 10 x 20)"]
    if outputs.get("gene_scores"):
        lines.append(f"gene scores (the gene side of the links): {outputs['gene_scores']}")
    lines.append(f"links: {outputs['links']} ({summary['pairs']:,} pairs tested)")
    planted = summary.get("planted_links")
    if planted:
        lines += [f"planted links recovered ({planted['planted']} planted):",
                  f"  {'selection':<40}{'significant':>12}{'recovered':>11}{'recall':>8}{'precision':>11}",
                  _recall_row(f"fdr < {_FDR} (t-test)", planted),
                  _recall_row(f"perm_fdr < {_FDR} ({params['n_permutations']} permutations)",
                              summary.get("planted_links_perm_fdr"))]
        if summary.get("planted_links_filtered"):
            lines.append(_recall_row("ArchR's filter (|r|>=0.45, fdr<=1e-4)", summary["planted_links_filtered"]))
        if outputs.get("gene_scores"):
            lines.append("  (a gene score is made from the same fragments as the peaks around the gene: links to it "
                         "are co-accessibility with the gene's\n   neighbourhood, not expression; see "
                         "docs/gene_scores.md)")
        else:
            lines.append("  (most other significant pairs co-vary through cell type, as in real data; the t-test on "
                         "overlapping metacells\n   is anti-conservative, perm_fdr is calibrated: see "
                         "link_calibration.png)")
    if outputs.get("bigwigs"):
        lines.append(f"bigwigs: {', '.join(map(str, outputs['bigwigs'].values()))}")
    figures = outputs.get("plots") or []
    lines.append(f"figures ({len(figures)}):")
    lines += [f"  {path}" for path in figures]
    if outputs.get("report"):
        dask_report = outputs.get("performance_report")
        lines.append(f"report: {outputs['report']}" + (f" (and Dask's performance report: {dask_report})"
                                                       if dask_report else ""))
    lines.append(f"log (details of every stage): {outputs['log']}")
    lines.append(f"run record: {Path(out).resolve() / 'run.json'}")
    return lines
