"""Iterative LSI (ArchR's ``addIterativeLSI``) on AnnData, MuData or an out-of-core p2g store.

Each iteration selects features, fits a TF-IDF + truncated SVD on a sample of cells, clusters the
sample, and picks the next iteration's features by their variance across those clusters. The
last model is projected onto every cell, one row chunk at a time; components correlated with
sequencing depth are dropped. See ``docs/lsi.md`` for the exact recipe and where it follows ArchR.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from dask.base import tokenize

from p2g_dask._deprecations import argument_aliases, renamed_arguments
from p2g_dask._epione import accepts_verbose
from p2g_dask._lazy import imported_instance
from p2g_dask.io.inputs import resolve_input
from p2g_dask._logging import logger, timed
from p2g_dask._variables import check_counts, params_record
from p2g_dask._report import reported
from p2g_dask.tl.lsi import _kernels as K
from p2g_dask.tl.lsi._clusters import import_igraph_in_background, leiden_clusters
from p2g_dask.tl.lsi._params import LSIParams
from p2g_dask.tl.lsi._stream import DaskRows, LSIModel, MemoryRows



def tfidf(X: Any, *, idf: np.ndarray | None = None, scale_to: float = 1e4, binarize: bool = True) -> Any:
    """ArchR's log(TF-IDF) (``LSIMethod = 2``) of a cells x features count matrix.

    ``TF = x / (cell total)``, ``IDF = n_cells / (feature total)`` and the value is
    ``log(TF * IDF * scale_to + 1)`` (natural log), with counts binarized first by default.

    Parameters
    ----------
    X
        Counts, cells x features: a scipy sparse matrix, a numpy array, or a dask array of scipy
        CSR row chunks (as ``store.atac.X``), which gives a lazy dask array of CSR chunks.
    idf
        Inverse document frequency per feature; computed from ``X`` when None. Features with a
        zero total get IDF 0 (their entries are all zero anyway).
    scale_to
        Scale factor inside the log (ArchR's ``scaleTo``).
    binarize
        Set every nonzero count to 1 first (ArchR's default).

    Returns
    -------
    scipy.sparse.csr_matrix or dask.array.Array
        float64 TF-IDF, same shape as ``X``; a cell without counts gives an empty row.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> X = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 1]]))
    >>> np.round(tfidf(X).toarray(), 3)
    array([[9.21 , 0.   , 8.517],
           [0.   , 9.21 , 8.517]])
    """
    if scale_to <= 0:
        raise ValueError(f"scale_to={scale_to} must be positive, e.g. 1e4 (ArchR's scaleTo).")
    if imported_instance(X, "dask.array", "Array"):  # dask.array (~0.3 s) is not imported for the others
        rows = DaskRows.from_dask_array(X)
        n_obs, n_vars = X.shape
        if idf is None:
            idf = _idf(n_obs, rows.feature_sums(binarize=binarize))
        idf = _check_idf(idf, n_vars)
        col_pos = np.arange(n_vars, dtype=np.int64)
        name = f"p2g-lsi-tfidf-{tokenize(X.name, idf, scale_to, binarize)}"
        return X.map_blocks(
            K.tfidf_block, col_pos, idf, scale_to=scale_to, binarize=binarize, dtype=np.float64,
            meta=sp.csr_matrix((0, 0), dtype=np.float64), name=name,
        )
    X = _as_csr(X, "X")
    if idf is None:
        idf = _idf(X.shape[0], K.feature_sums(X, binarize=binarize)[0])
    idf = _check_idf(idf, X.shape[1])
    return K.tfidf_block(X, np.arange(X.shape[1], dtype=np.int64), idf, scale_to=scale_to, binarize=binarize)


def _idf(n_obs: int, sums: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(sums > 0, n_obs / np.where(sums > 0, sums, 1.0), 0.0)


def _check_idf(idf: Any, n_vars: int) -> np.ndarray:
    idf = np.asarray(idf, dtype=np.float64)
    if idf.shape != (n_vars,):
        raise ValueError(f"idf has shape {idf.shape}; it needs one value per feature, shape ({n_vars},).")
    return idf


def _as_csr(X: Any, argument: str) -> sp.csr_matrix:
    if sp.issparse(X):
        X = sp.csr_matrix(X)
    elif isinstance(X, np.ndarray) and X.ndim == 2:
        X = sp.csr_matrix(X)
    else:
        raise TypeError(
            f"{argument} must be a scipy sparse matrix, a 2-D numpy array or a dask array of CSR "
            f"chunks; got {type(X).__name__}."
        )
    check_counts(X, f"{argument} holds")
    return X


def _fit(sample, features, *, n_components, scale_to, binarize, outlier_quantiles, seed):
    """One ArchR ``.computeLSI`` on the sampled cells over ``features`` (sorted column indices)."""
    totals = sample.row_totals(K.column_positions(features, sample.n_vars), binarize=binarize)
    fit = K.fit_cells(totals, outlier_quantiles)
    # As ArchR: IDF over the fit cells, features without counts in them dropped.
    fsums = sample.feature_sums(binarize=binarize, wanted=fit)[features]
    features = features[fsums > 0]
    n_fit = int(fit.sum())
    if n_fit <= n_components or features.size <= n_components:
        raise ValueError(
            f"only {n_fit} sampled cells and {features.size} features are left to fit "
            f"n_components={n_components}; lower n_components or pass outlier_quantiles=None."
        )
    idf = n_fit / fsums[fsums > 0]
    col_pos = K.column_positions(features, sample.n_vars)
    loadings, d, fitted = sample.svd(fit, col_pos, idf, n_components, scale_to=scale_to, binarize=binarize, seed=seed)
    return LSIModel(features, idf, loadings, d, fit, fitted, scale_to, binarize)


def _sample_coordinates(sample, model: LSIModel) -> np.ndarray:
    """Coordinates of all sampled cells: the SVD's own for the fit cells, projected for the rest.

    Both are the same numbers (the loadings reproduce the fitted coordinates); taking the fitted
    ones saves projecting the sample again.
    """
    coords = sample.project(model, wanted=~model.fit) if not model.fit.all() else np.empty(model.fitted.shape)
    coords[model.fit] = model.fitted
    return coords


def _kept_components(coords, log_depth, *, scale_dims, cor_cutoff):
    scaled = K.row_zscores(coords) if scale_dims else coords
    corr = K.depth_correlation(scaled, log_depth)
    kept = np.flatnonzero(corr <= cor_cutoff)
    if kept.size < 2:
        raise ValueError(
            f"only {kept.size} LSI components have |r| <= cor_cutoff={cor_cutoff} with log10 depth; "
            "raise cor_cutoff or n_components."
        )
    return scaled, corr, kept


def _iterate(source, log_depth, params: LSIParams, *, max_sample_bytes):
    """ArchR's iteration loop; returns the last model, every cell's coordinates and a history."""
    p, fit_kw = params, params.fit_kw()
    totals = source.feature_sums(binarize=False)
    candidates = K.candidate_features(totals, p.total_features)
    features = K.top_accessible(totals, p.var_features, filter_quantile=p.filter_quantile,
                                total_features=p.total_features)
    iterations = p.iterations
    rng = np.random.default_rng(p.seed)
    history = {"n_features": [], "n_cells_sampled": [], "n_cells_fit": [], "n_clusters": []}
    if iterations > 1:
        import_igraph_in_background()
    for it in range(1, iterations + 1):
        last = it == iterations
        # A new sample every iteration, as ArchR; the last one takes all cells unless limited.
        n_sample = (p.sample_cells_final if last else p.sample_cells_pre) or source.n_obs
        rows = K.sample_cells(rng, log_depth, n_sample, fit_kw["outlier_quantiles"])
        sample = source.take(rows, max_bytes=max_sample_bytes)
        model = _fit(sample, features, **fit_kw)
        for key, value in (("n_features", model.features.size), ("n_cells_sampled", rows.size),
                           ("n_cells_fit", model.n_cells_fit)):
            history[key].append(int(value))
        if last:
            history["n_clusters"].append(0)
            logger.info("iterative_lsi %d/%d: %d features, %d of %d sampled cells fit", it, iterations,
                        model.features.size, model.n_cells_fit, rows.size)
            break
        coords = _sample_coordinates(sample, model)
        scaled, _, kept = _kept_components(coords, log_depth[rows], scale_dims=p.scale_dims, cor_cutoff=p.cor_cutoff)
        labels = leiden_clusters(scaled[:, kept], n_neighbors=p.n_neighbors, resolution=p.resolution, seed=p.seed)
        n_clusters = int(labels.max()) + 1
        history["n_clusters"].append(n_clusters)
        if n_clusters > 1:
            features = K.variable_features(sample.group_sums(labels, n_clusters), candidates, p.var_features,
                                           scale_to=p.scale_to)
        else:  # as ArchR: carry on with the same features
            logger.warning("iterative_lsi %d/%d: one cluster only, keeping the features; raise resolution "
                           "or lower n_neighbors for more clusters", it, iterations)
        logger.info(
            "iterative_lsi %d/%d: %d features, %d of %d sampled cells fit, %d clusters found, "
            "%d variable features kept", it, iterations, model.features.size, model.n_cells_fit,
            rows.size, n_clusters, features.size,
        )
    # Every cell gets coordinates from the last model; those the SVD was fit on are known already.
    if rows.size == source.n_obs:
        return model, _sample_coordinates(sample, model), history
    return model, source.project(model), history


@renamed_arguments(atac="data")
@argument_aliases(adata="data", cor_cut_off="cor_cutoff")  # epione's names, as its tutorials write them
@accepts_verbose
@reported
def iterative_lsi(
    data: Any,
    *,
    n_components: int = 30,
    iterations: int = 2,
    var_features: int = 25_000,
    resolution: float = 0.5,
    n_neighbors: int = 30,
    sample_cells_pre: int | None = 10_000,
    sample_cells_final: int | None = None,
    depth_col: str = "n_fragment",
    seed: int = 1,
    scale_to: float = 1e4,
    binarize: bool = True,
    scale_dims: bool = True,
    cor_cutoff: float = 0.75,
    outlier_quantiles: tuple[float, float] | None = (0.02, 0.98),
    filter_quantile: float = 0.995,
    total_features: int = 500_000,
    key_added: str = "X_iterative_lsi",
    mod_atac: str = "atac",
    chunk_cells: int | None = None,
    max_sample_bytes: float | None = None,
    client: Any = None,
    show_progress: bool | None = None,
    overwrite: bool = False,
    report: Any = None,
) -> np.ndarray:
    """Iterative LSI embedding of scATAC cells, as ArchR's ``addIterativeLSI``.

    Iteration 1 takes the ``var_features`` most accessible features (after skipping the top
    ``1 - filter_quantile`` share), fits log(TF-IDF) + truncated SVD on at most
    ``sample_cells_pre`` cells and clusters them (Leiden on a shared-nearest-neighbour graph);
    each later iteration refits on the ``var_features`` features most variable across the
    previous clusters. The last model is projected onto all cells; the per-cell z-scored
    components (``scale_dims``) whose |correlation| with log10(depth + 1) exceeds ``cor_cutoff``
    are dropped.

    Parameters
    ----------
    data
        Cells x peaks counts: an AnnData, a MuData (modality ``mod_atac``), a p2g store
        (:func:`p2g_dask.io.open_store`) or the path of one. A store is read chunk by chunk.
    n_components
        SVD components per iteration (ArchR's ``dimsToUse = 1:30``).
    iterations
        Number of LSI rounds.
    var_features
        Features per iteration: most accessible (iteration 1), most variable (later ones).
    resolution, n_neighbors
        Leiden resolution and neighbours of the clustering graph between iterations.
    sample_cells_pre
        Cells sampled to fit each iteration before the last (a new sample each time, drawn
        within the half-width ``outlier_quantiles`` of log depth), as ArchR's ``sampleCellsPre``;
        None samples all cells (epione's ``sample_cells_pre=None``).
    sample_cells_final
        Cells sampled to fit the last iteration; None fits it on all cells (ArchR's default).
        The cells outside a sample are projected with the fitted model.
    depth_col
        ``obs`` column with each cell's fragment count; its row sums are used when absent.
    seed
        Seed for the cell sample, the SVD and Leiden; the same seed gives the same embedding.
    scale_to, binarize
        TF-IDF scale factor and binarization (ArchR's ``scaleTo``, ``binarize``).
    scale_dims
        Z-score each cell's components before the depth filter and clustering (ArchR's default).
    cor_cutoff
        Drop components with |r| above this with log10(depth + 1) (epione's ``cor_cut_off=``).
    outlier_quantiles
        Sampled cells at or beyond these quantiles of their feature total are projected, not fit
        (ArchR's ``outlierQ``); None fits every sampled cell.
    filter_quantile, total_features
        ArchR's ``filterQuantile`` (skip the most accessible share in iteration 1) and
        ``totalFeatures`` (the candidates for variable features).
    key_added
        ``obsm`` key of the embedding; the run's details go to ``uns[key_added]`` (so two embeddings keep
        their own records).
    mod_atac
        ATAC modality of a MuData.
    chunk_cells
        Cells per row chunk when reading a store (the store's own chunking when None).
    max_sample_bytes
        Largest sample gathered into memory from a store; a larger one stays chunked and its SVD
        runs with ``dask.array.linalg.svd_compressed``. Default: a quarter of free memory.
    client
        A ``distributed.Client`` for the store passes (else the current or threaded scheduler).
    show_progress
        Show a progress bar while each pass over a store runs (None: the dask config
        ``p2g.show-progress``, True unless set); in memory there are no graphs to show.
    overwrite
        Replace an existing ``obsm[key_added]`` in a store (in-memory objects are always updated).
    verbose
        epione's: True shows this call's progress (the ``p2g_dask`` logger's INFO records, on
        stderr when logging shows none), False only its warnings, None (default) leaves logging as
        configured.

    report
        A path (e.g. ``"out/report.html"``): write a run report of this call there (stages,
        memory per worker over time, spilled bytes, the results' numbers, parameters, versions)
        and Dask's performance report beside it (with a ``distributed`` client); see
        docs/report.md.

    Returns
    -------
    numpy.ndarray
        The embedding, cells x kept components, also stored in ``obsm[key_added]``.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> sim = p2g.datasets.simulate_multiome(n_cells=300, n_peaks=3000, n_genes=100, n_linked_genes=10)
    >>> emb = p2g.tl.iterative_lsi(sim.atac, n_components=10, var_features=1000, n_neighbors=15)
    >>> sim.atac.obsm["X_iterative_lsi"].shape[0], emb.shape[1] <= 10
    (300, True)
    """
    params = LSIParams(
        n_components=n_components, iterations=iterations, var_features=var_features, resolution=resolution,
        n_neighbors=n_neighbors, sample_cells_pre=sample_cells_pre, sample_cells_final=sample_cells_final,
        depth_col=depth_col, seed=seed, scale_to=scale_to, binarize=binarize, scale_dims=scale_dims,
        cor_cutoff=cor_cutoff, outlier_quantiles=outlier_quantiles, filter_quantile=filter_quantile,
        total_features=total_features, key_added=key_added,
    )
    modality, _, _ = resolve_input(data, None, mod_atac=mod_atac)
    if modality.store is not None:
        if not overwrite and key_added in modality.store.obsm:
            raise FileExistsError(
                f"key_added={key_added!r} already exists in the store's atac obsm; pass overwrite=True "
                "to replace it, or choose another key_added."
            )
        source = DaskRows.from_dask_array(modality.store.lazy_X(chunk_cells), client, show_progress)
    else:
        source = MemoryRows(sp.csr_matrix(modality.X))  # counts checked by resolve_input
    if max_sample_bytes is None:
        import psutil

        max_sample_bytes = psutil.virtual_memory().available / 4
    timings: dict = {}
    with timed("iterative_lsi", timings):
        log_depth = np.log10(_depth(modality.obs, depth_col, source) + 1.0)
        model, coords, history = _iterate(source, log_depth, params, max_sample_bytes=max_sample_bytes)
        scaled, corr, kept = _kept_components(coords, log_depth, scale_dims=scale_dims, cor_cutoff=cor_cutoff)
        embedding = scaled[:, kept]
        if kept.size < n_components:
            dropped = np.setdiff1d(np.arange(n_components), kept) + 1
            logger.info("iterative_lsi: dropped component(s) %s with |r| > %s to log10(depth + 1)",
                        dropped.tolist(), cor_cutoff)
    info = {
        "params": params_record(params, uns=True),
        "components_kept": kept,
        "kept_dims": kept,  # epione's name of the same (its tutorial reads uns[key_added]["kept_dims"])
        "depth_correlation": corr,
        "features": np.asarray(modality.var.index[model.features], dtype=str),
        "idf": model.idf,
        "loadings": model.loadings,
        "singular_values": model.singular_values,
        **{f"iteration_{key}": np.asarray(value) for key, value in history.items()},
        "seconds": timings["iterative_lsi"],
    }
    if modality.store is not None:
        modality.store.write_obsm(key_added, embedding, overwrite=True)
        modality.store.write_uns(key_added, info)
    else:
        modality.adata.obsm[key_added] = embedding
        modality.adata.uns[key_added] = info
    logger.info("iterative_lsi: stored obsm[%r] with shape %s", key_added, embedding.shape)
    return embedding


def _depth(obs, depth_col: str, source) -> np.ndarray:
    if depth_col in obs.columns:
        depth = np.asarray(obs[depth_col], dtype=np.float64)
        if not np.isfinite(depth).all() or (depth < 0).any():
            raise ValueError(
                f"depth_col={depth_col!r} holds missing or negative values; fill them, or pass "
                "depth_col= naming another column (row sums are used when the column is absent)."
            )
        return depth
    logger.info("iterative_lsi: obs has no %r column; using the row sums of the counts as depth", depth_col)
    return source.row_totals(None, binarize=False)
