"""ArchR's gene score model as plain numpy/pandas: parameters, gene regions, domains, tile weights.

Coordinates here are ArchR's: 1-based and closed (``[start, end]``), as GRanges/IRanges hold
them. Gene tables come in 0-based half-open (``read_gene_annotation``) and are converted once,
in :func:`gene_regions`. Every rule is written out in docs/gene_scores.md; the references are
``.addGeneScoreMat`` in ArchR's ``R/MatrixGeneScores.R`` and ``extendGR`` in ``R/GRangesUtils.R``.
"""

from __future__ import annotations

import ast
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

# What a gene model expression may use: x, numbers, + - * / **, comparisons, these names.
_MODEL_FUNCTIONS = {"exp": np.exp, "abs": np.abs, "log": np.log, "sqrt": np.sqrt, "minimum": np.minimum,
                    "maximum": np.maximum, "where": np.where}
_MODEL_CONSTANTS = {"pi": np.pi, "e": np.e}
_MODEL_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
                 ast.Pow: np.power}
_MODEL_COMPARE = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal}


def _model_node(node: ast.AST, x: np.ndarray):
    """Evaluate one node of a parsed gene model; anything outside the small grammar is an error."""
    if isinstance(node, ast.Expression):
        return _model_node(node.body, x)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.Name) and (node.id == "x" or node.id in _MODEL_CONSTANTS):
        return x if node.id == "x" else _MODEL_CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _MODEL_BINARY:
        return _MODEL_BINARY[type(node.op)](_model_node(node.left, x), _model_node(node.right, x))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _model_node(node.operand, x)
        return np.negative(value) if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _MODEL_COMPARE:
        return _MODEL_COMPARE[type(node.ops[0])](_model_node(node.left, x), _model_node(node.comparators[0], x))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _MODEL_FUNCTIONS
            and not node.keywords):
        return _MODEL_FUNCTIONS[node.func.id](*(_model_node(arg, x) for arg in node.args))
    raise ValueError(f"{ast.unparse(node)!r} is not allowed")


def evaluate_gene_model(gene_model: str, x: np.ndarray) -> np.ndarray:
    """Evaluate ArchR's ``geneModel`` string at signed distances ``x`` (bp) as float64.

    The string is parsed (never executed): ``x``, numbers, ``+ - * / **``, comparisons and
    ``exp, abs, log, sqrt, minimum, maximum, where, pi, e``.

    Examples
    --------
    >>> evaluate_gene_model("exp(-abs(x)/5000) + exp(-1)", np.array([0.0, 5000.0])).round(4).tolist()
    [1.3679, 0.7358]
    """
    tree = ast.parse(gene_model.strip(), mode="eval")
    value = _model_node(tree, np.asarray(x, dtype=np.float64))
    return np.broadcast_to(np.asarray(value, dtype=np.float64), np.shape(x)).copy()


def _pair(value: Any, name: str) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2 or any(float(v) != int(v) for v in value):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be two integers (minimum, maximum), e.g. (1000, 100000).") from None
    if min(pair) < 0:
        raise ValueError(f"{name}={value!r} must be non-negative base pairs.")
    return pair


def _nonneg_int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return int(value)


@dataclass(frozen=True)
class GeneScoreParams:
    """The parameters of ArchR's ``addGeneScoreMatrix``, with ArchR's defaults (snake_case names).

    Validated on construction; :meth:`as_dict` is what goes into ``uns`` and every field goes into
    the checkpoint keys. ``blacklist`` is a tuple of ``(chrom, start, end)`` (0-based half-open,
    as in a BED file) or None.

    Examples
    --------
    >>> GeneScoreParams().tile_size, GeneScoreParams(ceiling=None).ceiling
    (500, None)
    >>> GeneScoreParams(tile_size=0)
    Traceback (most recent call last):
    ...
    ValueError: tile_size=0 must be an integer >= 1.
    """

    gene_model: str = "exp(-abs(x)/5000) + exp(-1)"
    extend_upstream: tuple[int, int] = (1000, 100000)
    extend_downstream: tuple[int, int] = (1000, 100000)
    gene_upstream: int = 5000
    gene_downstream: int = 0
    use_gene_boundaries: bool = True
    use_tss: bool = False
    extend_tss: bool = True
    tile_size: int = 500
    ceiling: int | None = 4
    gene_scale_factor: float = 5.0
    scale_to: float = 10000.0
    exclude_chr: tuple[str, ...] = ("chrY", "chrM")
    blacklist: tuple[tuple[str, int, int], ...] | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise through the back door, once, here
        if not isinstance(self.gene_model, str) or not self.gene_model.strip():
            raise ValueError(f"gene_model={self.gene_model!r} must be an expression in x, e.g. "
                             "'exp(-abs(x)/5000) + exp(-1)'.")
        try:
            probe = evaluate_gene_model(self.gene_model, np.array([-10000.0, 0.0, 10000.0]))
        except Exception as err:  # noqa: BLE001 - any failure of the user's expression
            raise ValueError(f"gene_model={self.gene_model!r} cannot be evaluated ({err}); use x, numbers, "
                             "+ - * / **, exp, abs, log, sqrt, minimum, maximum, where.") from None
        if not np.isfinite(probe).all():
            raise ValueError(f"gene_model={self.gene_model!r} gives non-finite weights at x=-1e4, 0, 1e4.")
        put(self, "extend_upstream", _pair(self.extend_upstream, "extend_upstream"))
        put(self, "extend_downstream", _pair(self.extend_downstream, "extend_downstream"))
        put(self, "gene_upstream", _nonneg_int(self.gene_upstream, "gene_upstream"))
        put(self, "gene_downstream", _nonneg_int(self.gene_downstream, "gene_downstream"))
        for name in ("use_gene_boundaries", "use_tss", "extend_tss"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False.")
            put(self, name, bool(getattr(self, name)))
        put(self, "tile_size", _nonneg_int(self.tile_size, "tile_size", 1))
        if self.ceiling is not None:
            put(self, "ceiling", _nonneg_int(self.ceiling, "ceiling", 1))
        for name in ("gene_scale_factor", "scale_to"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive number.")
            put(self, name, float(value))
        exclude = (self.exclude_chr,) if isinstance(self.exclude_chr, str) else tuple(self.exclude_chr or ())
        put(self, "exclude_chr", tuple(str(c) for c in exclude))
        if self.blacklist is not None:
            put(self, "blacklist", _blacklist_tuple(self.blacklist))

    def key_parts(self) -> tuple:
        """Every field, in order, for checkpoint keys and task tokens."""
        return tuple((f.name, getattr(self, f.name)) for f in fields(self))


def _blacklist_tuple(blacklist: Any) -> tuple[tuple[str, int, int], ...]:
    """Normalise a blacklist (DataFrame with chrom/start/end, BED path, or rows) to sorted tuples."""
    import os

    if isinstance(blacklist, (str, os.PathLike)):
        blacklist = pd.read_csv(blacklist, sep="\t", header=None, comment="#", usecols=[0, 1, 2],
                                names=["chrom", "start", "end"], dtype={"chrom": str})
    if isinstance(blacklist, pd.DataFrame):
        cols = {c.lower(): c for c in blacklist.columns}
        names = [next((cols[c] for c in cands if c in cols), None)
                 for cands in (("chrom", "chromosome", "contig"), ("start",), ("end",))]
        if None in names:
            raise ValueError(f"blacklist: a DataFrame needs chrom, start, end columns; found {list(blacklist.columns)}.")
        rows = zip(blacklist[names[0]], blacklist[names[1]], blacklist[names[2]])
    else:
        rows = blacklist
    try:
        out = tuple(sorted((str(c), int(s), int(e)) for c, s, e in rows))
    except (TypeError, ValueError):
        raise ValueError("blacklist must be a BED path, a DataFrame (chrom, start, end) or (chrom, start, end) "
                         "rows, 0-based half-open.") from None
    bad = [r for r in out if r[1] < 0 or r[2] <= r[1]]
    if bad:
        raise ValueError(f"blacklist: intervals need 0 <= start < end; found {bad[:3]}.")
    return out


def gene_regions(genes: pd.DataFrame, params: GeneScoreParams) -> pd.DataFrame:
    """ArchR's gene regions: 1-based, extended, weighted, sorted by chromosome then position.

    Parameters
    ----------
    genes
        ``gene_name, chrom, start, end, strand``, 0-based half-open (e.g. from
        :func:`p2g_dask.io.read_gene_annotation`); chromosomes in the order they should appear.
    params
        The model parameters.

    Returns
    -------
    DataFrame
        One row per gene outside ``exclude_chr``: ``gene_name, chrom, strand, tss`` (1-based),
        ``region_start, region_end`` (the extended body, 1-based closed), ``weight``, sorted by
        chromosome (first appearance in ``genes``), ``region_start``, ``region_end`` as ArchR's
        ``sort(..., ignore.strand = TRUE)``.

    Examples
    --------
    >>> g = pd.DataFrame({"gene_name": ["A", "B"], "chrom": "chr1", "start": [10000, 50000],
    ...                   "end": [20000, 52000], "strand": ["+", "-"]})
    >>> gene_regions(g, GeneScoreParams())[["gene_name", "region_start", "region_end"]].values.tolist()
    [['A', 5001, 20000], ['B', 50001, 57000]]
    """
    genes = genes[~genes["chrom"].isin(params.exclude_chr) & genes["gene_name"].notna()]
    start1 = genes["start"].to_numpy(np.int64) + 1  # 0-based half-open -> 1-based closed
    end1 = genes["end"].to_numpy(np.int64)
    minus = (genes["strand"] == "-").to_numpy()
    tss = np.where(minus, end1, start1)
    up, down = params.gene_upstream, params.gene_downstream
    if params.use_tss:
        lo, hi = tss.copy(), tss.copy()
        if params.extend_tss:
            lo, hi = np.where(minus, tss - down, tss - up), np.where(minus, tss + up, tss + down)
        weight = np.full(tss.size, params.gene_scale_factor)
    else:
        # extendGR: "+" and "*" genes grow upstream on the left, "-" genes on the right.
        lo, hi = np.where(minus, start1 - down, start1 - up), np.where(minus, end1 + up, end1 + down)
        m = 1.0 / (hi - lo + 1)
        spread = m.max() - m.min() if m.size else 0.0
        # ArchR's formula as written (m, not m - min(m)); equal widths divide by zero in ArchR too,
        # here they get weight 1.
        weight = 1.0 + m * (params.gene_scale_factor - 1.0) / spread if spread > 0 else np.ones(m.size)
    out = pd.DataFrame({
        "gene_name": genes["gene_name"].astype(str).to_numpy(), "chrom": genes["chrom"].astype(str).to_numpy(),
        "strand": np.where(minus, "-", "+"), "tss": tss, "region_start": lo, "region_end": hi, "weight": weight,
    })
    chrom_rank = pd.Series(pd.unique(out["chrom"]))
    out["_rank"] = out["chrom"].map(pd.Series(np.arange(chrom_rank.size), index=chrom_rank))
    out = out.sort_values(["_rank", "region_start", "region_end"], kind="stable").drop(columns="_rank")
    return out.reset_index(drop=True)


def gene_domains(regions: pd.DataFrame, params: GeneScoreParams) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's window ``[s, e]`` (1-based) on one chromosome, ArchR's pmax/pmin rules.

    With ``use_gene_boundaries`` the window reaches ``max(extend_upstream)`` upstream and
    ``max(extend_downstream)`` downstream of the extended body, but not into the previous /
    next gene's extended body (kept one tile away), and never less than the ``min(...)``
    extensions. Without, it is the body extended by the maxima (strand-aware).

    Examples
    --------
    >>> g = pd.DataFrame({"gene_name": ["A", "B"], "chrom": "chr1", "start": [10000, 50000],
    ...                   "end": [20000, 52000], "strand": ["+", "+"]})
    >>> s, e = gene_domains(gene_regions(g, GeneScoreParams()), GeneScoreParams())
    >>> s.tolist(), e.tolist()
    ([1, 20500], [44501, 152000])
    """
    lo = regions["region_start"].to_numpy(np.int64)
    hi = regions["region_end"].to_numpy(np.int64)
    plus = (regions["strand"] != "-").to_numpy()
    up_min, up_max = min(params.extend_upstream), max(params.extend_upstream)
    down_min, down_max = min(params.extend_downstream), max(params.extend_downstream)
    if not params.use_gene_boundaries:
        return np.where(plus, lo - up_max, lo - down_max), np.where(plus, hi + down_max, hi + up_max)
    if lo.size == 0:
        return lo.copy(), hi.copy()
    tile = params.tile_size
    left_max, left_min = np.where(plus, up_max, down_max), np.where(plus, up_min, down_min)
    right_max, right_min = np.where(plus, down_max, up_max), np.where(plus, down_min, up_min)
    s = np.maximum(np.r_[1, hi[:-1] + tile], lo - left_max)
    s = np.minimum(lo - left_min, s)
    e = np.minimum(np.r_[lo[1:] - tile, hi[-1] + right_max[-1]], hi + right_max)
    e = np.maximum(hi + right_min, e)
    # ArchR stops with "minError" when the clamp below cuts a minimum extension (a gene within
    # min(extend) bp of the chromosome start); here the window is clamped instead.
    return np.maximum(1, s), np.minimum(e, 2147483647)


def tile_weights(regions: pd.DataFrame, params: GeneScoreParams, blacklist: list[tuple[int, int]] = ()) -> sp.csr_matrix:
    """Tiles x genes weights of one chromosome: ``gene_model(x) * weight``, 0 on blacklisted tiles.

    Tile ``k`` is ``[k * tile_size, k * tile_size + tile_size - 1]`` (1-based, ArchR's
    ``IRanges(start = trunc(pos / tileSize) * tileSize, width = tileSize)``). A tile belongs to
    a gene when it overlaps the gene's domain; ``x`` is its IRanges ``distance`` to the gene's
    extended body (0 when they overlap, ``start(y) - end(x) - 1`` apart), negative upstream.
    Rows run from tile 0 to the last tile of any domain; columns follow ``regions``' order.

    Examples
    --------
    >>> g = pd.DataFrame({"gene_name": ["A"], "chrom": "chr1", "start": [10000], "end": [11000],
    ...                   "strand": ["+"]})
    >>> w = tile_weights(gene_regions(g, GeneScoreParams()), GeneScoreParams(extend_upstream=(0, 0),
    ...                  extend_downstream=(0, 0)))
    >>> np.flatnonzero(w.toarray()[:, 0]).tolist()  # tiles covering [5001, 11000]
    [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    """
    tile = params.tile_size
    s, e = gene_domains(regions, params)
    n_genes = len(regions)
    if n_genes == 0:
        return sp.csr_matrix((0, 0))
    k_lo = np.maximum(s, 0) // tile  # first tile whose end k*T + T - 1 reaches s
    k_hi = np.maximum(e, 0) // tile  # last tile whose start k*T is <= e
    n_per = np.maximum(k_hi - k_lo + 1, 0)
    gene = np.repeat(np.arange(n_genes), n_per)
    k = np.arange(n_per.sum()) - np.repeat(np.cumsum(n_per) - n_per, n_per) + np.repeat(k_lo, n_per)
    t_start, t_end = k * tile, k * tile + tile - 1
    lo = regions["region_start"].to_numpy(np.int64)[gene]
    hi = regions["region_end"].to_numpy(np.int64)[gene]
    dist = np.where(t_start > hi, t_start - hi - 1, np.where(t_end < lo, lo - t_end - 1, 0))
    # Sign relative to the gene start (TSS side of the extended body), flipped for "-" genes.
    minus = (regions["strand"] == "-").to_numpy()[gene]
    sign = np.sign(t_start - np.where(minus, hi, lo))
    sign = np.where(minus, -sign, sign)
    x = dist * sign
    w = evaluate_gene_model(params.gene_model, x) * regions["weight"].to_numpy()[gene]
    n_tiles = int(k_hi.max()) + 1
    if len(blacklist):
        masked = np.zeros(n_tiles + 1, dtype=np.int64)
        for b_start, b_end in blacklist:  # 0-based half-open [b_start, b_end) -> 1-based [b_start + 1, b_end]
            first, last = (b_start + 1) // tile, min(b_end // tile, n_tiles - 1)
            if first <= last:
                masked[first] += 1
                masked[last + 1] -= 1
        w = np.where(np.cumsum(masked)[:n_tiles][k] > 0, 0.0, w)
    return sp.csr_matrix((w, (k, gene)), shape=(n_tiles, n_genes))
