"""Start or connect to a Dask cluster: a LocalCluster, SLURM jobs (dask-jobqueue), or a scheduler address.

Defaults come from dask config (``p2g.cluster.*`` and ``jobqueue.slurm.*``, see
``p2g_dask/cluster_defaults.yaml``); options passed to :func:`start_cluster` override them. Every
scheduler that p2g starts listens on 127.0.0.1 unless ``host=`` or ``interface=`` says otherwise,
and its dashboard on 127.0.0.1 unless ``dashboard_address=`` says otherwise. A scheduler that
listens beyond loopback, and every SLURM scheduler, uses TLS with temporary credentials
(``security=False`` opts out, with a warning); see :mod:`p2g_dask._cluster_security`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask
import dask.config
# Imported before our defaults are registered: dask-jobqueue registers its own `jobqueue.*`
# defaults at import, which would otherwise reset the p2g values set below.
import dask_jobqueue  # noqa: F401
import yaml
from dask.utils import format_bytes, parse_timedelta
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.security import Security

from p2g_dask._cluster_options import check_keywords, default_host, free_dashboard_address, positive_int, underscore_keys
from p2g_dask._cluster_security import binds_beyond_loopback, load_credentials, resolve_security, write_credentials
from p2g_dask._cluster_slurm import remove_job_credentials, start_slurm, slurm_cluster_options
from p2g_dask._logging import logger
from p2g_dask._warm import warm, warm_in_background

__all__ = ["VALID_KINDS", "close_cluster", "cluster_session", "dashboard_link", "load_credentials",
           "register_defaults", "slurm_cluster_options", "start_cluster", "write_credentials"]

VALID_KINDS = ("local", "slurm", "address")
_DEFAULTS_FILE = Path(__file__).with_name("cluster_defaults.yaml")


def register_defaults() -> bool:
    """Register the package's dask config defaults, as dask documents for downstream libraries.

    ``dask.config.update_defaults`` with ``p2g_dask/cluster_defaults.yaml``: values a user set
    (``~/.config/dask/*.yaml``, ``DASK_*`` variables, ``dask.config.set``) are kept; the file is
    registered once per process, even if this module is reloaded.

    Returns
    -------
    bool
        True when this call registered the file, False when it was registered already.

    Examples
    --------
    >>> register_defaults()  # done when p2g_dask.cluster was imported
    False
    >>> dask.config.get("p2g.cluster.host")
    '127.0.0.1'
    """
    with open(_DEFAULTS_FILE) as f:
        defaults = yaml.safe_load(f)
    if defaults in dask.config.defaults:
        return False
    dask.config.update_defaults(defaults)
    return True


register_defaults()


def _section(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Config ``p2g.cluster.<kind>`` overridden by ``options``."""
    merged = underscore_keys(dask.config.get(f"p2g.cluster.{kind}", default={}) or {})
    merged.update(underscore_keys(options))
    return merged


def dashboard_link(client: Client) -> str | None:
    """Return the link to the Dask dashboard of ``client``'s scheduler, or ``None`` without one.

    Parameters
    ----------
    client
        A connected ``distributed.Client``.

    Returns
    -------
    The dashboard URL (e.g. ``http://127.0.0.1:8787/status``), or ``None`` when the scheduler
    serves no HTTP at all. For a scheduler started here, the host is where the dashboard really
    listens (127.0.0.1 by default, also when the scheduler listens on a network address).

    Examples
    --------
    >>> client = start_cluster("local", n_workers=1, processes=False)
    >>> dashboard_link(client).startswith("http://127.0.0.1:")
    True
    >>> close_cluster(client)
    """
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError, OSError):
        return None
    return _served_link(client, link) if link else None


def _served_link(client: Client, link: str) -> str:
    # distributed builds the link from the scheduler's host; the dashboard of a scheduler that
    # p2g started may listen elsewhere (127.0.0.1). Its scheduler runs in this process: ask it.
    from urllib.parse import urlparse

    scheduler = getattr(getattr(client, "cluster", None), "scheduler", None)
    sockets = getattr(getattr(scheduler, "http_server", None), "_sockets", None)
    if not sockets:
        return link
    try:
        hosts = {sock.getsockname()[0] for sock in sockets.values()}
        parsed = urlparse(link)
    except (OSError, ValueError):
        return link
    if not hosts or parsed.hostname in hosts or hosts & {"0.0.0.0", "::"}:
        return link
    host = "127.0.0.1" if "127.0.0.1" in hosts else sorted(hosts)[0]
    host = f"[{host}]" if ":" in host else host
    return parsed._replace(netloc=f"{host}:{parsed.port}").geturl()


def close_cluster(client: Client, *, shutdown_scheduler: bool = False) -> None:
    """Close ``client`` and the cluster it was started with (cancelling SLURM jobs).

    Parameters
    ----------
    client
        A client from :func:`start_cluster`.
    shutdown_scheduler
        For a client connected by address: also shut the remote scheduler and its workers down.
        By default they are left running, since p2g did not start them.

    Examples
    --------
    >>> client = start_cluster("local", n_workers=1, processes=False)
    >>> close_cluster(client)
    >>> client.status
    'closed'
    """
    cluster = getattr(client, "cluster", None)
    if cluster is None and shutdown_scheduler:
        client.shutdown()
        return
    client.close()
    if cluster is not None:
        cluster.close()
        remove_job_credentials(cluster)


def _start_local(opts: dict[str, Any]) -> Client:
    from dask.system import CPU_COUNT
    from distributed import LocalCluster, Nanny, Worker
    from distributed.deploy.utils import nprocesses_nthreads
    from distributed.system import MEMORY_LIMIT

    # An interface alone decides the address (LocalCluster refuses neither, but binds `host`).
    interface = opts.get("interface")
    host = opts.pop("host", None) or (None if interface else default_host())
    security = opts.pop("security", None)
    n_workers = positive_int("n_workers", opts.pop("n_workers", None))
    threads = positive_int("threads_per_worker", opts.pop("threads_per_worker", None))
    # Size to the machine the way distributed does, but explicitly, so it can be logged.
    if n_workers is None and threads is None:
        n_workers, threads = nprocesses_nthreads(CPU_COUNT)
    elif n_workers is None:
        n_workers = max(1, CPU_COUNT // threads)
    elif threads is None:
        threads = max(1, CPU_COUNT // n_workers)
    memory_limit = opts.pop("memory_limit", None)
    if memory_limit is None:
        memory_limit = int(MEMORY_LIMIT // n_workers)
    # dashboard_address=None given explicitly means no dashboard, as in LocalCluster.
    dashboard = opts.pop("dashboard_address") if "dashboard_address" in opts else free_dashboard_address()
    for key in ("timeout", "wait_for_workers"):
        opts.pop(key, None)  # LocalCluster returns with all its workers up
    processes = opts.pop("processes", True)
    if not processes:
        # In-process workers default to the inproc protocol, which cannot bind 127.0.0.1 and
        # whose address would make the dashboard link point at the machine's public IP.
        opts.setdefault("protocol", "tcp://")
    check_keywords(opts, "local", LocalCluster.__init__, Worker.__init__, Nanny.__init__)
    security = resolve_security(security, default_tls=binds_beyond_loopback(host, interface),
                                where=host or f"interface {interface!r}")
    if security is not None:
        opts.update(security=security, protocol="tls://")
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads, memory_limit=memory_limit,
                           processes=processes, host=host, dashboard_address=dashboard, **opts)
    shown = format_bytes(memory_limit) if isinstance(memory_limit, int) else memory_limit
    logger.info("LocalCluster: %d worker(s) x %d thread(s), memory_limit=%s each, scheduler %s",
                n_workers, threads, shown, cluster.scheduler_address)
    return Client(cluster)


def _scheduler_file_address(scheduler_file: Any) -> str:
    import json

    try:
        return str(json.loads(Path(scheduler_file).read_text()).get("address", ""))
    except (OSError, TypeError, ValueError, AttributeError):
        return ""


def _normalise_address(address: Any, *, tls: bool = False) -> str:
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    if not isinstance(address, str) or not address:
        raise ValueError(f"address={address!r} is not a scheduler address; pass 'tcp://host:port'.")
    full = address if "://" in address else f"{'tls' if tls else 'tcp'}://{address}"
    try:
        scheme, loc = parse_address(full)
        if scheme in ("tcp", "tls"):
            parse_host_port(loc)  # raises when the port is missing
    except ValueError as err:
        raise ValueError(f"address={address!r} is not a scheduler address ({err}); pass 'tcp://host:port'.") from None
    return full


def _start_address(opts: dict[str, Any]) -> Client:
    address, scheduler_file = opts.pop("address", None), opts.pop("scheduler_file", None)
    timeout = parse_timedelta(opts.pop("timeout", "30s"))
    security = opts.pop("security", None)
    if security is not None:
        # None keeps distributed's own TLS config (distributed.comm.tls.*), as Client does.
        security = resolve_security(security, default_tls=False, where=str(address or scheduler_file))
    for key in ("host", "dashboard_address"):
        opts.pop(key, None)  # nothing is started here
    if address is None and scheduler_file is None:
        raise ValueError(
            "kind='address' needs address='tcp://host:port' or scheduler_file='scheduler.json' "
            "(deploy/local/start-local-cluster.sh starts a scheduler and writes both)."
        )
    if address is not None:
        address = _normalise_address(address, tls=security is not None and security.require_encryption)
    elif not Path(scheduler_file).is_file():
        raise FileNotFoundError(f"scheduler_file={str(scheduler_file)!r} does not exist; pass the file "
                                "written by `dask scheduler --scheduler-file`.")
    check_keywords(opts, "address", Client.__init__)
    where = address or f"scheduler_file={str(scheduler_file)!r}"
    target = address or _scheduler_file_address(scheduler_file)
    if security is None and target.startswith("tls://") and not Security().tls_ca_file:
        raise ValueError(
            f"the scheduler at {target} uses TLS and no credentials were given: pass security= (the "
            "folder written by p2g_dask.cluster.write_credentials, or a distributed.security.Security), "
            "or set distributed.comm.tls.* in your dask config."
        )
    try:
        client = Client(address, scheduler_file=scheduler_file, timeout=timeout, security=security, **opts)
    except (OSError, TimeoutError) as err:
        raise OSError(
            f"could not connect to the Dask scheduler at {where} within {timeout:g} s ({err}); check "
            "that it is running, that the host and port are right and, for a tls:// scheduler, that "
            "security= holds its credentials; or raise timeout=."
        ) from err
    logger.info("connected to the scheduler at %s", client.scheduler.address)
    return client


_STARTERS = {"local": _start_local, "slurm": start_slurm, "address": _start_address}


def start_cluster(kind: str | None = None, **options: Any) -> Client:
    """Start a Dask cluster (or connect to one) and return a client to it.

    Parameters
    ----------
    kind
        ``'local'``: a ``distributed.LocalCluster`` on this machine, sized to it unless
        ``n_workers`` / ``threads_per_worker`` / ``memory_limit`` are given (other LocalCluster
        keywords such as ``processes=False`` pass through).
        ``'slurm'``: a ``dask_jobqueue.SLURMCluster`` built from dask config ``jobqueue.slurm``,
        then the YAML file ``config=`` (e.g. ``deploy/slurm/jobqueue.yaml``), then the SLURMCluster
        keywords given here (``cores``, ``memory``, ``queue``, ``walltime``,
        ``job_extra_directives``, ...); ``jobs=N`` scales to N jobs, or ``adapt=True`` with
        ``minimum_jobs`` / ``maximum_jobs`` scales with the load. Waits for ``wait_for_workers``
        workers (default 1) up to ``timeout`` and shows ``squeue`` when they do not come.
        ``'address'``: connect to a running scheduler, ``address='tcp://host:port'`` (or
        ``'tls://...'``) or ``scheduler_file=``; ``wait_for_workers`` workers (default 0) are
        awaited. Default: dask config ``p2g.cluster.kind`` (``'local'``).
    **options
        Options of that kind (see above); defaults come from dask config ``p2g.cluster.<kind>``.
        ``host`` (default ``127.0.0.1``) is where a scheduler started here listens; for SLURM on
        several nodes pass ``interface='ib0'`` (or the node's ``host=``) so workers can reach it.
        ``dashboard_address`` defaults to port 8787 on 127.0.0.1 when free, else a random port,
        whatever the scheduler's host: pass it to show the dashboard elsewhere.
        ``security``: for a scheduler started here that listens beyond loopback (``host=``,
        ``interface=``) and for every SLURM scheduler, the default (None) is TLS with temporary
        credentials that only this client and its workers hold (SLURM workers read them from
        ``credentials_directory``, default ``~/.p2g_dask/tls``, files removed when the cluster
        closes); loopback LocalClusters keep plain TCP. ``False`` turns TLS off and logs a
        WARNING (anyone who can reach the port can run code as you); ``True`` forces temporary
        credentials; a ``distributed.security.Security`` is used as given. For
        ``kind='address'``: a ``Security`` or a folder written by :func:`write_credentials`.
        ``warm`` (default True): every worker, now and later, imports the package and loads its
        numba kernels when it starts (:class:`WarmWorker`), and the client loads the kernels it
        runs itself in a background thread, so the first call does not pay that warm-up.

    Returns
    -------
    A ``distributed.Client``, also set as the default client. The dashboard link is logged.
    Close it with :func:`close_cluster`, which also stops the cluster.

    Examples
    --------
    >>> client = start_cluster("local", n_workers=1, threads_per_worker=1, processes=False)
    >>> client.submit(sum, [1, 2, 3]).result()
    6
    >>> close_cluster(client)
    """
    kind = dask.config.get("p2g.cluster.kind", default="local") if kind is None else kind
    if kind not in _STARTERS:
        raise ValueError(f"kind={kind!r} is not a cluster kind; use one of {', '.join(map(repr, VALID_KINDS))}.")
    opts = _section(kind, options)
    warm_workers = bool(opts.pop("warm", True))
    # SLURM waits for its workers itself (it must report squeue); a remote scheduler is awaited here.
    wait = positive_int("wait_for_workers", opts.pop("wait_for_workers", None), minimum=0) if kind == "address" else None
    timeout = parse_timedelta(opts.get("timeout", "30s"))
    client = _STARTERS[kind](dict(opts))
    if wait:
        try:
            client.wait_for_workers(wait, timeout=timeout)
        except TimeoutError as err:
            client.close()
            raise TimeoutError(f"wait_for_workers={wait}: {err}; start more workers or lower it.") from None
    if warm_workers:
        # The workers import the package and load their kernels (~0.9 s on a fresh LocalCluster)
        # while the client imports the tools and starts loading its own kernels (~1 s; the first
        # call's imports took 0.4 s, its metacells 0.29 s instead of 0.04 s): start_cluster waits
        # for the longer of the two, and the first call for neither. The thread only waits on
        # the workers' replies; the imports stay in this thread.
        workers_warmed = threading.Thread(target=_warm_workers, args=(client,), name="p2g-warm-workers", daemon=True)
        workers_warmed.start()
        warm_in_background()
        workers_warmed.join()
    if "dashboard_address" in opts and opts["dashboard_address"] is None:
        logger.info("Dask dashboard: disabled (dashboard_address=None)")
    else:
        logger.info("Dask dashboard: %s", dashboard_link(client) or "(none: the scheduler serves no HTTP)")
    return client


def _warm_workers(client: Client) -> None:
    # Registered once: the scheduler runs it on the workers up now and on each one that joins.
    try:
        register = getattr(client, "register_plugin", None) or client.register_worker_plugin
        register(WarmWorker())
    except Exception as err:  # noqa: BLE001 - warming is an optimisation, never a failure
        logger.warning("workers not warmed (%s); the first call imports the package itself", err)


@contextlib.contextmanager
def cluster_session(kind: str | None = None, **options: Any) -> Iterator[Client]:
    """Context manager around :func:`start_cluster` that closes the client and cluster on exit.

    Parameters
    ----------
    kind, **options
        As for :func:`start_cluster`.

    Examples
    --------
    >>> with cluster_session("local", n_workers=1, processes=False) as client:
    ...     client.submit(max, [4, 2]).result()
    4
    """
    client = start_cluster(kind, **options)
    try:
        yield client
    finally:
        close_cluster(client)


class WarmWorker(WorkerPlugin):
    """A worker plugin running :func:`warm` when a worker starts (and on workers already up).

    Examples
    --------
    >>> WarmWorker().name
    'p2g-warm'
    """

    name = "p2g-warm"

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed.Worker
        seconds = warm()
        logger.debug("warm: worker %s ready in %.2f s", getattr(worker, "address", "?"), sum(seconds.values()))
