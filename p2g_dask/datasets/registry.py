"""Registry of the public data the tutorials use, downloaded on demand with pooch.

Files are identified by name, fetched from a fixed URL and checked against a known hash before
they are used. They are cached under ``pooch.os_cache("p2g_dask")`` (e.g.
``~/.cache/p2g_dask`` on Linux); set the environment variable ``P2G_DASK_DATA_DIR`` to keep them
elsewhere (a shared lab folder or a cluster scratch disk). A file is downloaded once; later
fetches only verify that the cached copy is present.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pooch

from p2g_dask._logging import logger

if TYPE_CHECKING:
    import anndata as ad

#: Environment variable that overrides the download cache folder.
DATA_DIR_ENV = "P2G_DASK_DATA_DIR"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: where it lives, its hash (``None``: not verified) and what it is."""

    url: str
    known_hash: str | None
    description: str


_MENDELEY = "https://data.mendeley.com/api/datasets/dr2z4jbcx3/draft/files"
_TENX = "https://cf.10xgenomics.com/samples/cell-arc/1.0.0/pbmc_granulocyte_sorted_10k"
_GENCODE = "https://ftp.ebi.ac.uk/pub/databases/gencode"

DATASETS: dict[str, RemoteFile] = {
    "10x-Multiome-Pbmc10k-ATAC.h5ad": RemoteFile(
        f"{_MENDELEY}/165dfb5c-c557-42a0-bd21-1276d4d7b23e?a=758c37e5-4832-4c91-af89-9a1a83a051b3",
        "sha256:24d030fb7f90453a0303b71a1e3e4e7551857d1e70072752d7fff9c918f77217",
        "10x Multiome PBMC 10k, ATAC: 9,631 cells x 107,194 peaks (AnnData)",
    ),
    "10x-Multiome-Pbmc10k-RNA.h5ad": RemoteFile(
        f"{_MENDELEY}/d079a087-2913-4e29-979e-638e5932bd8c?a=758c37e5-4832-4c91-af89-9a1a83a051b3",
        "sha256:a25327acff48b20b295c12221a84fd00f8f3f486ff3e7bd090fdef241b996a22",
        "10x Multiome PBMC 10k, RNA: 9,631 cells x 29,095 genes (AnnData)",
    ),
    "pbmc_10k_atac.tsv.gz": RemoteFile(
        f"{_TENX}/pbmc_granulocyte_sorted_10k_atac_fragments.tsv.gz",
        "md5:a959ef83dfb9cae6ff73ab0147d547d1",
        "10x Multiome PBMC 10k, ATAC fragment file (bgzip)",
    ),
    # Not in the seed's registry, so no hash was verified here: the first download logs the
    # SHA256 to paste in. The name keeps tabix's `<fragments>.tbi` convention.
    "pbmc_10k_atac.tsv.gz.tbi": RemoteFile(
        f"{_TENX}/pbmc_granulocyte_sorted_10k_atac_fragments.tsv.gz.tbi",
        None,
        "tabix index of pbmc_10k_atac.tsv.gz",
    ),
    "pbmc_10k_filtered_feature_bc_matrix.h5": RemoteFile(
        f"{_TENX}/pbmc_granulocyte_sorted_10k_filtered_feature_bc_matrix.h5",
        None,  # unverified hash, see above
        "10x Multiome PBMC 10k, Cell Ranger ARC filtered matrix (ATAC + GEX), accepted by p2g.io.ingest",
    ),
    "gencode_v41_GRCh38.gff3.gz": RemoteFile(
        f"{_GENCODE}/Gencode_human/release_41/gencode.v41.basic.annotation.gff3.gz",
        "sha256:b82a655bdb736ca0e463a8f5d00242bedf10fa88ce9d651a017f135c7c4e9285",
        "GENCODE v41 basic gene annotation, GRCh38/hg38 (GFF3)",
    ),
    # GENCODE vM25 is the last mouse release on GRCm38/mm10. Its hash could not be checked
    # offline: the first download logs the SHA256 to paste in here.
    "gencode_vM25_GRCm38.gff3.gz": RemoteFile(
        f"{_GENCODE}/Gencode_mouse/release_M25/gencode.vM25.basic.annotation.gff3.gz",
        None,
        "GENCODE vM25 basic gene annotation, GRCm38/mm10 (GFF3)",
    ),
}

#: ``pbmc10k_multiome`` modality -> registry name.
PBMC10K_FILES = {
    "ATAC": "10x-Multiome-Pbmc10k-ATAC.h5ad",
    "RNA": "10x-Multiome-Pbmc10k-RNA.h5ad",
    "fragments": "pbmc_10k_atac.tsv.gz",
}


class DatasetHashError(ValueError):
    """A downloaded file does not match the hash recorded in the registry."""


class DatasetRegistry(pooch.Pooch):
    """A :class:`pooch.Pooch` whose ``fetch`` explains failures and logs unknown hashes.

    Unknown names list the valid ones; a hash mismatch names the file, the URL, the expected and
    the downloaded hash and what to do; a network failure says where to put a manual download.
    """

    def fetch(self, fname, processor=None, downloader=None, progressbar=False):  # noqa: D102
        if fname not in self.registry:
            raise ValueError(
                f"name={fname!r} is not in the p2g_dask dataset registry; valid names: "
                f"{', '.join(sorted(self.registry))}."
            )
        import requests  # pooch's own HTTP dependency; imported lazily like pooch does

        target = Path(self.abspath) / fname
        was_cached = target.exists()
        url = self.get_url(fname)
        known_hash = self.registry[fname]
        try:
            out = super().fetch(fname, processor=processor, downloader=downloader, progressbar=progressbar)
        except ValueError as err:
            if "hash" not in str(err):
                raise
            got = re.search(r"but got (\S+?)\.? Deleted", str(err))
            raise DatasetHashError(
                f"the download of {fname!r} from {url} does not match the registry: expected "
                f"{known_hash}, got {got.group(1) if got else 'another hash'} (the download was "
                f"discarded). The server's file may have changed or the transfer was corrupted. "
                f"Retry; if it persists, check the URL, and delete any stale cached copy at "
                f"{target} (cache folder: {self.abspath}, set {DATA_DIR_ENV} to move it)."
            ) from err
        except requests.exceptions.RequestException as err:
            raise ConnectionError(
                f"could not download {fname!r} from {url}: {err}. Check the network (or proxy "
                f"settings), or download the file yourself and save it as {target} (set "
                f"{DATA_DIR_ENV} to use another cache folder)."
            ) from err
        if known_hash is None and not was_cached:
            # No hash to verify against: record the one we got so it can be pinned.
            logger.warning(
                "%s has no hash in the registry; downloaded file sha256:%s (pin it in "
                "p2g_dask/datasets/registry.py to verify future downloads)",
                fname,
                pooch.file_hash(out, alg="sha256"),
            )
        return out


def default_cache_dir() -> Path:
    """Return the download folder: ``$P2G_DASK_DATA_DIR`` if set, else the OS user cache.

    Examples
    --------
    >>> import os
    >>> from p2g_dask.datasets.registry import default_cache_dir
    >>> saved = os.environ.pop("P2G_DASK_DATA_DIR", None)
    >>> default_cache_dir().name
    'p2g_dask'
    >>> os.environ["P2G_DASK_DATA_DIR"] = "/scratch/p2g-data"
    >>> str(default_cache_dir())
    '/scratch/p2g-data'
    >>> _ = os.environ.pop("P2G_DASK_DATA_DIR") if saved is None else os.environ.update(P2G_DASK_DATA_DIR=saved)
    """
    override = os.environ.get(DATA_DIR_ENV)
    return Path(os.path.expanduser(override)) if override else Path(pooch.os_cache("p2g_dask"))


def make_registry(
    registry: Mapping[str, str | None],
    *,
    urls: Mapping[str, str] | None = None,
    base_url: str = "",
    path: str | os.PathLike | None = None,
    retry_if_failed: int = 2,
) -> DatasetRegistry:
    """Build a dataset registry; :func:`register_datasets` and the tests use this one code path.

    Parameters
    ----------
    registry
        File name -> known hash (``"sha256:..."``, ``"md5:..."``, or ``None`` to skip the check
        and log the hash of the first download).
    urls
        File name -> full URL, for files not found at ``base_url + name``.
    base_url
        Common URL prefix for the files without an entry in ``urls``.
    path
        Cache folder; default :func:`default_cache_dir` (``$P2G_DASK_DATA_DIR`` or the OS cache).
    retry_if_failed
        Download attempts after the first one fails (network error or hash mismatch).

    Returns
    -------
    DatasetRegistry
        A :class:`pooch.Pooch`; call ``.fetch(name)`` to get a local path.

    Examples
    --------
    >>> import tempfile
    >>> from p2g_dask.datasets.registry import make_registry
    >>> pup = make_registry({"a.txt": None}, base_url="https://example.org/data/",
    ...                     path=tempfile.mkdtemp())
    >>> pup.get_url("a.txt")
    'https://example.org/data/a.txt'
    """
    urls = dict(urls or {})
    unknown = sorted(set(urls) - set(registry))
    if unknown:
        raise ValueError(
            f"urls has names not in registry: {unknown}; add them to registry (with a hash or None)."
        )
    missing = [name for name in registry if name not in urls and not base_url]
    if missing:
        raise ValueError(f"no URL for {missing}: give them an entry in urls or pass base_url.")
    if base_url:
        base_url = base_url.rstrip("/") + "/"
    return DatasetRegistry(
        path=Path(path) if path is not None else default_cache_dir(),
        base_url=base_url,
        registry=dict(registry),
        urls=urls,
        retry_if_failed=retry_if_failed,
    )


def register_datasets(*, path: str | os.PathLike | None = None) -> pooch.Pooch:
    """Return the registry of the public files used by the tutorials.

    Parameters
    ----------
    path
        Cache folder; default ``$P2G_DASK_DATA_DIR`` if set, else ``pooch.os_cache("p2g_dask")``.

    Returns
    -------
    pooch.Pooch
        ``.fetch(name)`` downloads a file once (verifying its hash) and returns its local path;
        ``.registry`` lists the names. Names: ``10x-Multiome-Pbmc10k-ATAC.h5ad``,
        ``10x-Multiome-Pbmc10k-RNA.h5ad``, ``pbmc_10k_atac.tsv.gz`` (+ ``.tbi``),
        ``pbmc_10k_filtered_feature_bc_matrix.h5``, ``gencode_v41_GRCh38.gff3.gz``,
        ``gencode_vM25_GRCm38.gff3.gz``.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> DS = p2g.datasets.register_datasets()
    >>> "gencode_v41_GRCh38.gff3.gz" in DS.registry
    True
    >>> # path = DS.fetch("10x-Multiome-Pbmc10k-ATAC.h5ad")   # downloads ~ once
    """
    return make_registry(
        {name: f.known_hash for name, f in DATASETS.items()},
        urls={name: f.url for name, f in DATASETS.items()},
        path=path,
    )


def fetch(name: str, *, datasets: pooch.Pooch | None = None, progressbar: bool = False) -> Path:
    """Download (once) and return the local path of a registered file.

    Parameters
    ----------
    name
        A registry name (see :func:`register_datasets`).
    datasets
        The registry to use; default ``register_datasets()``.
    progressbar
        Show a download progress bar on stderr.

    Returns
    -------
    pathlib.Path
        Path of the verified file in the cache folder.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> # Not run: downloads the file (~50 MB) on first use.
    >>> gff = p2g.datasets.fetch("gencode_v41_GRCh38.gff3.gz")  # doctest: +SKIP
    """
    datasets = datasets if datasets is not None else register_datasets()
    return Path(datasets.fetch(name, progressbar=progressbar))


def pbmc10k_multiome(
    modality: str = "ATAC",
    *,
    datasets: pooch.Pooch | None = None,
    backed: str | None = None,
    index: bool = True,
    progressbar: bool = False,
) -> ad.AnnData | Path:
    """The 10x Multiome PBMC 10k sample: the ATAC or RNA AnnData, or the fragment file.

    Parameters
    ----------
    modality
        ``"ATAC"`` (9,631 cells x 107,194 peaks), ``"RNA"`` (9,631 x 29,095 genes) or
        ``"fragments"`` (case-insensitive).
    datasets
        The registry to use; default ``register_datasets()``.
    backed
        Passed to :func:`anndata.read_h5ad` (``"r"`` keeps the matrix on disk).
    index
        For ``"fragments"``: also fetch the tabix index next to the file.
    progressbar
        Show a download progress bar on stderr.

    Returns
    -------
    anndata.AnnData or pathlib.Path
        The AnnData for ``"ATAC"`` / ``"RNA"``; the path of the ``.tsv.gz`` for ``"fragments"``.

    Examples
    --------
    >>> import p2g_dask as p2g
    >>> # Not run: downloads 10x Genomics' PBMC 10k multiome files (GBs) on first use.
    >>> atac = p2g.datasets.pbmc10k_multiome("ATAC")  # doctest: +SKIP
    >>> fragments = p2g.datasets.pbmc10k_multiome("fragments")  # doctest: +SKIP
    """
    by_lower = {key.lower(): key for key in PBMC10K_FILES}
    key = by_lower.get(str(modality).lower())
    if key is None:
        raise ValueError(
            f"modality={modality!r} is not available; use one of {sorted(PBMC10K_FILES)}."
        )
    datasets = datasets if datasets is not None else register_datasets()
    path = fetch(PBMC10K_FILES[key], datasets=datasets, progressbar=progressbar)
    if key == "fragments":
        tbi = PBMC10K_FILES[key] + ".tbi"
        if index and tbi in datasets.registry:
            fetch(tbi, datasets=datasets, progressbar=progressbar)
        return path
    import anndata as ad

    return ad.read_h5ad(path, backed=backed)
