"""SLURM clusters through dask-jobqueue: the merged job options, the start, the wait, TLS.

Split from :mod:`p2g_dask.cluster` (which re-exports :func:`slurm_cluster_options` and starts
these clusters with ``start_cluster("slurm", ...)``).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask
import dask.config
import yaml
from dask.utils import parse_timedelta
from distributed import Client

from p2g_dask._cluster_options import default_host, free_dashboard_address, positive_int, underscore_keys
from p2g_dask._cluster_security import private_folder, resolve_security
from p2g_dask._logging import logger


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
    kwargs = underscore_keys(merged)
    # In jobqueue config `name` is the job name; as a SLURMCluster keyword it names the cluster.
    if "name" in kwargs:
        kwargs["job_name"] = kwargs.pop("name")
    kwargs.update(underscore_keys(options))
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


def _squeue(job_ids: list[str]) -> str:
    cmd = ["squeue", "-j", ",".join(job_ids)] if job_ids else ["squeue"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"({' '.join(cmd)} failed: {err})"
    return (done.stdout + done.stderr).strip() or f"({' '.join(cmd)}: no jobs listed)"


def start_slurm(opts: dict[str, Any]) -> Client:
    """``start_cluster("slurm", ...)``: submit the jobs, wait for their workers, return a client.

    Parameters
    ----------
    opts
        The merged options of ``kind='slurm'`` (see :func:`p2g_dask.cluster.start_cluster`).

    Returns
    -------
    distributed.Client
        Connected to the SLURMCluster (TLS unless ``security=False``); the jobs are cancelled
        when it does not come up in time.

    Examples
    --------
    >>> # Not run: needs SLURM's sbatch (deploy/slurm/local-slurm.sh makes a one-node SLURM).
    >>> client = start_slurm({"jobs": 1, "cores": 1, "memory": "1GiB"})  # doctest: +SKIP
    """
    from dask_jobqueue import SLURMCluster
    from distributed.deploy.utils import nprocesses_nthreads

    if shutil.which("sbatch") is None:
        raise RuntimeError(
            "kind='slurm' needs SLURM's sbatch on PATH (run on a SLURM login node); for a one-node "
            "test SLURM on this machine run deploy/slurm/local-slurm.sh."
        )
    host = opts.pop("host", None)
    jobs = positive_int("jobs", opts.pop("jobs", 1), minimum=0)
    adapt = bool(opts.pop("adapt", False))
    minimum_jobs = positive_int("minimum_jobs", opts.pop("minimum_jobs", 0) or 0, minimum=0)
    maximum_jobs = positive_int("maximum_jobs", opts.pop("maximum_jobs", None))
    if adapt and maximum_jobs is None:
        raise ValueError("adapt=True needs maximum_jobs=N (the most SLURM jobs to run at once).")
    wait = positive_int("wait_for_workers", opts.pop("wait_for_workers", None), minimum=0)
    timeout = parse_timedelta(opts.pop("timeout", "600s"))
    no_dashboard = "dashboard_address" in opts and opts["dashboard_address"] is None
    dashboard = opts.pop("dashboard_address", None)
    security = opts.pop("security", None)
    credentials_directory = opts.pop("credentials_directory", None)

    kwargs = slurm_cluster_options(opts.pop("config", None), **opts)
    scheduler_options = dict(kwargs.pop("scheduler_options", None) or {})
    # Bind to 127.0.0.1 unless told: an explicit host wins, then an interface from options/config.
    if host is not None:
        scheduler_options["host"] = host
    elif not (kwargs.get("interface") or "interface" in scheduler_options):
        scheduler_options.setdefault("host", default_host())
    if no_dashboard:
        scheduler_options["dashboard"] = False
    elif dashboard is not None or "dashboard_address" not in scheduler_options:
        scheduler_options["dashboard_address"] = dashboard or free_dashboard_address()
    _slurm_security(kwargs, scheduler_options, security, credentials_directory)
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


def _slurm_security(kwargs: dict[str, Any], scheduler_options: Mapping[str, Any], security: Any,
                    credentials_directory: Any) -> None:
    # Every SLURM scheduler gets TLS by default: even on 127.0.0.1 it serves jobs that run as this
    # user. dask-jobqueue writes the workers' credentials into `shared_temp_directory` (files it
    # deletes when the cluster closes) and names them in the job script.
    interface = kwargs.get("interface") or scheduler_options.get("interface")
    where = scheduler_options.get("host") or f"interface {interface!r}"
    kwargs["security"] = resolve_security(security, default_tls=True, where=where)
    if kwargs["security"] is None:
        kwargs.pop("shared_temp_directory", None)
        return
    folder = kwargs.get("shared_temp_directory") or credentials_directory or "~/.p2g_dask/tls"
    kwargs["shared_temp_directory"] = str(private_folder(folder))


def _close_quietly(client: Client | None, cluster: Any) -> None:
    with contextlib.suppress(Exception):
        if client is not None:
            client.close()
    with contextlib.suppress(Exception):
        cluster.close()
    remove_job_credentials(cluster)


def remove_job_credentials(cluster: Any) -> None:
    """Delete the workers' credential files dask-jobqueue wrote for ``cluster`` (if any).

    dask-jobqueue keeps them open as NamedTemporaryFile attributes (``_job_key``, ...) and
    deletes them only when the cluster object is collected: this deletes them now, so no key
    outlives the jobs that used it.

    Examples
    --------
    >>> import tempfile, types, os
    >>> handle = tempfile.NamedTemporaryFile()
    >>> remove_job_credentials(types.SimpleNamespace(_job_key=handle))
    >>> os.path.exists(handle.name)
    False
    """
    for name, value in list(vars(cluster).items()):
        if name.startswith("_job_") and callable(getattr(value, "close", None)) and hasattr(value, "name"):
            with contextlib.suppress(OSError):
                value.close()
