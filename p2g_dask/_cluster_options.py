"""Option helpers shared by the cluster starters (p2g_dask.cluster, p2g_dask._cluster_slurm)."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Mapping
from typing import Any

import dask


def underscore_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping with hyphens in its keys made underscores (dask config spelling -> keywords).

    Examples
    --------
    >>> underscore_keys({"n-workers": 2})
    {'n_workers': 2}
    """
    return {str(k).replace("-", "_"): v for k, v in mapping.items()}


def default_host() -> str:
    """Where schedulers p2g starts listen unless told: dask config ``p2g.cluster.host``.

    Examples
    --------
    >>> default_host()
    '127.0.0.1'
    """
    return dask.config.get("p2g.cluster.host", default="127.0.0.1") or "127.0.0.1"


def free_dashboard_address(host: str = "127.0.0.1") -> str:
    """``host:8787`` (dask config ``p2g.cluster.dashboard-port``) when free, else ``host:0``.

    Loopback unless the caller names a host: the dashboard has no authentication.

    Examples
    --------
    >>> free_dashboard_address().startswith("127.0.0.1:")
    True
    """
    # 8787 is what users expect to tunnel to; fall back to a random port rather than fail.
    port = int(dask.config.get("p2g.cluster.dashboard-port", default=8787))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return f"{host}:0"
    return f"{host}:{port}"


def positive_int(name: str, value: Any, *, allow_none: bool = True, minimum: int = 1) -> int | None:
    """``value`` checked to be an integer >= ``minimum`` (or None); the error names ``name``.

    Examples
    --------
    >>> positive_int("jobs", 2)
    2
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not valid; pass an integer >= {minimum}.")
    return value


def check_keywords(opts: Mapping[str, Any], kind: str, *functions) -> None:
    """Raise ``ValueError`` naming every option of ``opts`` that none of ``functions`` accepts.

    Catches a misspelt option by name, rather than as a TypeError deep inside a worker.

    Examples
    --------
    >>> check_keywords({"n_workers": 2}, "local", lambda n_workers=1: None)
    """
    accepted = set().union(*(inspect.signature(fn).parameters for fn in functions))
    accepted -= {"self", "args", "kwargs", "worker_kwargs", "scheduler_ip", "scheduler_file", "address"}
    unknown = sorted(set(opts) - accepted)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} (values {[opts[k] for k in unknown]}) for "
                         f"kind={kind!r}; valid options include {sorted(accepted)}.")
