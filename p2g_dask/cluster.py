"""Start or connect to a Dask cluster: a LocalCluster, SLURM jobs (dask-jobqueue), or a scheduler address.

Defaults come from dask config (``p2g.cluster.*`` and ``jobqueue.slurm.*``, see
``p2g_dask/cluster_defaults.yaml``); options passed to :func:`start_cluster` override them. Every
scheduler that p2g starts listens on 127.0.0.1 unless ``host=`` or ``interface=`` says otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import shutil
import socket
import subprocess
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

from p2g_dask._logging import logger

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


def _underscore(mapping: Mapping[str, Any]) -> dict[str, Any]:
    # dask config keys use hyphens, Python keywords underscores; accept both everywhere.
    return {str(k).replace("-", "_"): v for k, v in mapping.items()}


def _section(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Config ``p2g.cluster.<kind>`` overridden by ``options``."""
    merged = _underscore(dask.config.get(f"p2g.cluster.{kind}", default={}) or {})
    merged.update(_underscore(options))
    return merged


def _default_host() -> str:
    return dask.config.get("p2g.cluster.host", default="127.0.0.1") or "127.0.0.1"


def _dashboard_address(host: str) -> str:
    # 8787 is what users expect to tunnel to; fall back to a random port rather than fail.
    port = int(dask.config.get("p2g.cluster.dashboard-port", default=8787))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return f"{host}:0"
    return f"{host}:{port}"


def _positive_int(name: str, value: Any, *, allow_none: bool = True, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not valid; pass an integer >= {minimum}.")
    return value


def dashboard_link(client: Client) -> str | None:
    """Return the link to the Dask dashboard of ``client``'s scheduler, or ``None`` without one.

    Parameters
    ----------
    client
        A connected ``distributed.Client``.

    Returns
    -------
    The dashboard URL (e.g. ``http://127.0.0.1:8787/status``), or ``None`` when the scheduler
    serves no HTTP at all.

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
    return link or None


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


def slurm_cluster_options(config: str | os.PathLike | Mapping | None = None, **options: Any) -> dict[str, Any]:
    """Keyword arguments for ``dask_jobqueue.SLURMCluster``: dask config, then ``config``, then ``options``.

    Parameters
    ----------
    config
        A YAML file (or the equivalent mapping) with ``jobqueue: slurm: {...}`` keys, such as
        ``deploy/slurm/jobqueue.yaml``. It overrides the dask config ``jobqueue.slurm``.
    **options
        SLURMCluster keywords (``cores``, ``memory``, ``queue``, ``walltime``,
        ``job_extra_directives``, ...); they override both. Hyphenated config spellings work too.

    Returns
    -------
    The merged keywords with Python names; unset (``None``) values are left out, deprecated
    dask-jobqueue names are mapped to their replacements, and the job name is ``job_name``.

    Examples
    --------
    >>> kw = slurm_cluster_options(cores=2, memory="4GiB", queue="debug")
    >>> kw["cores"], kw["memory"], kw["queue"]
    (2, '4GiB', 'debug')
    """
    from dask_jobqueue import SLURMCluster
    from dask_jobqueue.core import Job
    from dask_jobqueue.slurm import SLURMJob

    merged = copy.deepcopy(dict(dask.config.get("jobqueue.slurm", default={}) or {}))
    if config is not None:
        merged = dask.config.merge(merged, _read_jobqueue_config(config))
    kwargs = _underscore(merged)
    # In jobqueue config `name` is the job name; as a SLURMCluster keyword it names the cluster.
    if "name" in kwargs:
        kwargs["job_name"] = kwargs.pop("name")
    kwargs.update(_underscore(options))
    for old, new in [("extra", "worker_extra_args"), ("env_extra", "job_script_prologue"),
                     ("job_extra", "job_extra_directives"), ("header_skip", "job_directives_skip"),
                     ("project", "account")]:
        value = kwargs.pop(old, None)
        if value and not kwargs.get(new):
            kwargs[new] = value
    kwargs = {k: v for k, v in kwargs.items() if v is not None}

    accepted = set()
    for fn in (SLURMCluster.__init__, SLURMJob.__init__, Job.__init__):
        accepted |= set(inspect.signature(fn).parameters)
    # Handled by start_cluster (host/dashboard go to scheduler_options) or set internally.
    accepted -= {"self", "scheduler", "job_cls", "loop", "dashboard_address", "host",
                 "job_kwargs", "base_class_kwargs", "extra", "env_extra", "job_extra", "header_skip",
                 "project"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"unknown SLURMCluster option(s) {unknown} (values {[kwargs[k] for k in unknown]}); "
            f"valid options are {sorted(accepted)}."
        )
    return kwargs


def _read_jobqueue_config(config: str | os.PathLike | Mapping) -> dict:
    if isinstance(config, Mapping):
        data, where = config, "the config mapping"
    else:
        path = Path(config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"config={str(config)!r} does not exist; pass a YAML file with 'jobqueue: slurm:' "
                "keys, e.g. deploy/slurm/jobqueue.yaml."
            )
        data, where = yaml.safe_load(path.read_text()) or {}, f"config={str(config)!r}"
    jobqueue = data.get("jobqueue") if isinstance(data, Mapping) else None
    section = jobqueue.get("slurm") if isinstance(jobqueue, Mapping) else None
    if not isinstance(section, Mapping):
        raise ValueError(
            f"{where} has no 'jobqueue: slurm:' section; write the SLURM job options under "
            "jobqueue.slurm (see deploy/slurm/jobqueue.yaml)."
        )
    # null in the file means "not set here", as in dask-jobqueue's own YAML: it must not clear a
    # value set elsewhere (e.g. DASK_JOBQUEUE__SLURM__INTERFACE).
    return dask.config.expand_environment_variables({k: v for k, v in section.items() if v is not None})


def _start_local(opts: dict[str, Any]) -> Client:
    from dask.system import CPU_COUNT
    from distributed import LocalCluster, Nanny, Worker
    from distributed.deploy.utils import nprocesses_nthreads
    from distributed.system import MEMORY_LIMIT

    host = opts.pop("host", None) or _default_host()
    n_workers = _positive_int("n_workers", opts.pop("n_workers", None))
    threads = _positive_int("threads_per_worker", opts.pop("threads_per_worker", None))
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
    dashboard = opts.pop("dashboard_address") if "dashboard_address" in opts else _dashboard_address(host)
    for key in ("timeout", "wait_for_workers"):
        opts.pop(key, None)  # LocalCluster returns with all its workers up
    processes = opts.pop("processes", True)
    if not processes:
        # In-process workers default to the inproc protocol, which cannot bind 127.0.0.1 and
        # whose address would make the dashboard link point at the machine's public IP.
        opts.setdefault("protocol", "tcp://")
    _check_keywords(opts, "local", LocalCluster.__init__, Worker.__init__, Nanny.__init__)
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads, memory_limit=memory_limit,
                           processes=processes, host=host, dashboard_address=dashboard, **opts)
    shown = format_bytes(memory_limit) if isinstance(memory_limit, int) else memory_limit
    logger.info("LocalCluster: %d worker(s) x %d thread(s), memory_limit=%s each, scheduler %s",
                n_workers, threads, shown, cluster.scheduler_address)
    return Client(cluster)


def _check_keywords(opts: Mapping[str, Any], kind: str, *functions) -> None:
    # Catch a misspelt option here, by name, rather than as a TypeError deep inside a worker.
    accepted = set().union(*(inspect.signature(fn).parameters for fn in functions))
    accepted -= {"self", "args", "kwargs", "worker_kwargs", "scheduler_ip", "scheduler_file", "address"}
    unknown = sorted(set(opts) - accepted)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} (values {[opts[k] for k in unknown]}) for "
                         f"kind={kind!r}; valid options include {sorted(accepted)}.")


def _normalise_address(address: Any) -> str:
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    if not isinstance(address, str) or not address:
        raise ValueError(f"address={address!r} is not a scheduler address; pass 'tcp://host:port'.")
    full = address if "://" in address else f"tcp://{address}"
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
    for key in ("host", "dashboard_address"):
        opts.pop(key, None)  # nothing is started here
    if address is None and scheduler_file is None:
        raise ValueError(
            "kind='address' needs address='tcp://host:port' or scheduler_file='scheduler.json' "
            "(deploy/local/start-local-cluster.sh starts a scheduler and writes both)."
        )
    if address is not None:
        address = _normalise_address(address)
    elif not Path(scheduler_file).is_file():
        raise FileNotFoundError(f"scheduler_file={str(scheduler_file)!r} does not exist; pass the file "
                                "written by `dask scheduler --scheduler-file`.")
    _check_keywords(opts, "address", Client.__init__)
    where = address or f"scheduler_file={str(scheduler_file)!r}"
    try:
        client = Client(address, scheduler_file=scheduler_file, timeout=timeout, **opts)
    except (OSError, TimeoutError) as err:
        raise OSError(
            f"could not connect to the Dask scheduler at {where} within {timeout:g} s ({err}); check "
            "that it is running and the host and port are right, or raise timeout=."
        ) from err
    logger.info("connected to the scheduler at %s", client.scheduler.address)
    return client


def _squeue(job_ids: list[str]) -> str:
    cmd = ["squeue", "-j", ",".join(job_ids)] if job_ids else ["squeue"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"({' '.join(cmd)} failed: {err})"
    return (done.stdout + done.stderr).strip() or f"({' '.join(cmd)}: no jobs listed)"


def _start_slurm(opts: dict[str, Any]) -> Client:
    from dask_jobqueue import SLURMCluster
    from distributed.deploy.utils import nprocesses_nthreads

    if shutil.which("sbatch") is None:
        raise RuntimeError(
            "kind='slurm' needs SLURM's sbatch on PATH (run on a SLURM login node); for a one-node "
            "test SLURM on this machine run deploy/slurm/local-slurm.sh."
        )
    host = opts.pop("host", None)
    jobs = _positive_int("jobs", opts.pop("jobs", 1), minimum=0)
    adapt = bool(opts.pop("adapt", False))
    minimum_jobs = _positive_int("minimum_jobs", opts.pop("minimum_jobs", 0) or 0, minimum=0)
    maximum_jobs = _positive_int("maximum_jobs", opts.pop("maximum_jobs", None))
    if adapt and maximum_jobs is None:
        raise ValueError("adapt=True needs maximum_jobs=N (the most SLURM jobs to run at once).")
    wait = _positive_int("wait_for_workers", opts.pop("wait_for_workers", None), minimum=0)
    timeout = parse_timedelta(opts.pop("timeout", "600s"))
    no_dashboard = "dashboard_address" in opts and opts["dashboard_address"] is None
    dashboard = opts.pop("dashboard_address", None)

    kwargs = slurm_cluster_options(opts.pop("config", None), **opts)
    scheduler_options = dict(kwargs.pop("scheduler_options", None) or {})
    # Bind to 127.0.0.1 unless told: an explicit host wins, then an interface from options/config.
    if host is not None:
        scheduler_options["host"] = host
    elif not (kwargs.get("interface") or "interface" in scheduler_options):
        scheduler_options.setdefault("host", _default_host())
    if no_dashboard:
        scheduler_options["dashboard"] = False
    elif dashboard is not None or "dashboard_address" not in scheduler_options:
        scheduler_options["dashboard_address"] = dashboard or _dashboard_address(
            "127.0.0.1" if scheduler_options.get("host") in (None, "0.0.0.0", "") else scheduler_options["host"])
    cluster = SLURMCluster(scheduler_options=scheduler_options, **kwargs)
    client = None
    try:
        # Workers per job, as dask-jobqueue derives it when `processes` is unset.
        per_job = kwargs.get("processes") or nprocesses_nthreads(kwargs.get("cores") or 1)[0]
        if adapt:
            cluster.adapt(minimum_jobs=minimum_jobs, maximum_jobs=maximum_jobs)
            n_wait = minimum_jobs * per_job if wait is None else wait
        else:
            cluster.scale(jobs=jobs)
            n_wait = min(1, jobs) if wait is None else wait
        logger.info("SLURMCluster: scheduler %s, %s; job script:\n%s", cluster.scheduler_address,
                    f"adapt {minimum_jobs}..{maximum_jobs} jobs" if adapt else f"{jobs} job(s)",
                    cluster.job_script())
        client = Client(cluster)
        if n_wait:
            client.wait_for_workers(n_wait, timeout=timeout)
    except TimeoutError:
        ids = [str(job.job_id) for job in cluster.workers.values() if getattr(job, "job_id", None)]
        report = _squeue(ids)
        n_now = len(client.scheduler_info(n_workers=-1)["workers"]) if client is not None else 0
        script = cluster.job_script()
        _close_quietly(client, cluster)
        raise TimeoutError(
            f"only {n_now} of wait_for_workers={n_wait} SLURM worker(s) connected within timeout={timeout:g} s "
            f"(jobs {ids or 'none submitted'}). squeue says:\n{report}\n"
            "The jobs may still be queued or may have failed: raise timeout=, ask for less (cores=, "
            "memory=, walltime=), check the partition (queue=), or set log_directory= to keep the "
            f"workers' logs. The job script was:\n{script}"
        ) from None
    except BaseException:
        _close_quietly(client, cluster)
        raise
    return client


def _close_quietly(client: Client | None, cluster: Any) -> None:
    with contextlib.suppress(Exception):
        if client is not None:
            client.close()
    with contextlib.suppress(Exception):
        cluster.close()


_STARTERS = {"local": _start_local, "slurm": _start_slurm, "address": _start_address}


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
        ``'address'``: connect to a running scheduler, ``address='tcp://host:port'`` or
        ``scheduler_file=``; ``wait_for_workers`` workers (default 0) are awaited.
        Default: dask config ``p2g.cluster.kind`` (``'local'``).
    **options
        Options of that kind (see above); defaults come from dask config ``p2g.cluster.<kind>``.
        ``host`` (default ``127.0.0.1``) is where a scheduler started here listens; for SLURM on
        several nodes pass ``interface='ib0'`` (or the node's ``host=``) so workers can reach it.
        ``dashboard_address`` defaults to port 8787 on that host when free, else a random port.
        ``warm`` (default True): every worker, now and later, imports the package and loads its
        numba kernels when it starts (:class:`p2g_dask._warm.WarmWorker`), so the first call
        does not pay that warm-up.

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
    wait = _positive_int("wait_for_workers", opts.pop("wait_for_workers", None), minimum=0) if kind == "address" else None
    timeout = parse_timedelta(opts.get("timeout", "30s"))
    client = _STARTERS[kind](dict(opts))
    if wait:
        try:
            client.wait_for_workers(wait, timeout=timeout)
        except TimeoutError as err:
            client.close()
            raise TimeoutError(f"wait_for_workers={wait}: {err}; start more workers or lower it.") from None
    if warm_workers:
        _warm_workers(client)
    if "dashboard_address" in opts and opts["dashboard_address"] is None:
        logger.info("Dask dashboard: disabled (dashboard_address=None)")
    else:
        logger.info("Dask dashboard: %s", dashboard_link(client) or "(none: the scheduler serves no HTTP)")
    return client


def _warm_workers(client: Client) -> None:
    # Registered once: the scheduler runs it on the workers up now and on each one that joins.
    from p2g_dask._warm import WarmWorker

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
