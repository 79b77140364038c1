"""TLS for the schedulers p2g starts: who may connect, and the credentials that say so.

A Dask scheduler runs whatever its clients send. On loopback only this machine's users reach it;
bound to a network address (``host=``, ``interface=``, SLURM), anyone who can reach the port can
run code as its owner. So a scheduler that p2g starts beyond loopback (and every SLURM scheduler)
uses mutual TLS with temporary credentials (``distributed.security.Security.temporary()``: one
self-signed key and certificate, made in memory for this cluster) unless told otherwise.
Credentials are written to disk only where another process must read them: dask-jobqueue's job
scripts (``shared-temp-directory``) and :func:`write_credentials` for a second client.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

from distributed.security import Security

from p2g_dask._atomic import atomic_path
from p2g_dask._logging import logger

#: The files of a credentials folder (:func:`write_credentials`, :func:`load_credentials`).
CREDENTIAL_FILES = {"ca": "ca.pem", "cert": "cert.pem", "key": "key.pem"}


def _is_loopback_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.split("%")[0]).is_loopback
    except ValueError:
        return False


def _host_is_loopback(host: str) -> bool:
    if host in ("", "0.0.0.0", "::", "*"):
        return False  # all interfaces
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False  # unknown here: assume it is reachable from elsewhere
    return bool(resolved) and all(_is_loopback_ip(ip) for ip in resolved)


def _interface_is_loopback(interface: str) -> bool:
    import psutil

    addresses = psutil.net_if_addrs().get(interface)
    if not addresses:
        return False  # distributed will name the missing interface; never weaken security for it
    ips = [a.address for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)]
    return bool(ips) and all(_is_loopback_ip(ip) for ip in ips)


def binds_beyond_loopback(host: str | None, interface: str | None = None) -> bool:
    """Whether a scheduler bound to ``host`` (or ``interface``) can be reached from other machines.

    Parameters
    ----------
    host
        The address or host name it listens on; ``''`` / ``'0.0.0.0'`` mean every interface.
    interface
        A network interface name (``'ib0'``, ``'eth0'``, ``'lo'``); used when ``host`` is None.

    Returns
    -------
    bool
        False only for loopback addresses (``127.0.0.0/8``, ``::1``, ``localhost``) and loopback
        interfaces; anything unknown counts as reachable.

    Examples
    --------
    >>> binds_beyond_loopback("127.0.0.1"), binds_beyond_loopback("0.0.0.0"), binds_beyond_loopback(None, "lo")
    (False, True, False)
    """
    if host is not None:
        return not _host_is_loopback(str(host))
    if interface:
        return not _interface_is_loopback(str(interface))
    return False


def resolve_security(security: Any, *, default_tls: bool, where: str) -> Security | None:
    """The ``distributed.security.Security`` a scheduler p2g starts should use, or None (plain TCP).

    Parameters
    ----------
    security
        None: temporary credentials when ``default_tls``, else plain TCP. True: temporary
        credentials. False: plain TCP; logs a WARNING when ``default_tls`` (anyone who reaches
        the port can run code as this user). A ``Security``: used as it is. A path: a folder
        written by :func:`write_credentials`.
    default_tls
        Whether this scheduler needs TLS unless the caller opts out (it listens beyond
        loopback, or it is a SLURM scheduler).
    where
        Where the scheduler listens, for the messages.

    Returns
    -------
    Security or None

    Examples
    --------
    >>> resolve_security(None, default_tls=False, where="127.0.0.1") is None
    True
    >>> resolve_security(None, default_tls=True, where="10.0.0.5").require_encryption
    True
    """
    if isinstance(security, str) and security.strip().lower() in ("true", "false"):
        security = security.strip().lower() == "true"  # from DASK_* variables, which stay strings
    if security is None:
        security = bool(default_tls)
    if security is True:
        logger.info("scheduler on %s: TLS with temporary credentials (only this process and its "
                    "workers hold them; security=False turns TLS off)", where)
        return Security.temporary()
    if security is False:
        if default_tls:
            logger.warning(
                "security=False: the Dask scheduler on %s accepts any client without credentials; "
                "anyone on the network who can reach it can run code as user %r. Leave security "
                "unset for TLS with temporary credentials.", where, _user())
        return None
    if isinstance(security, Security):
        return security
    if isinstance(security, (str, os.PathLike)):
        return load_credentials(security)
    raise ValueError(
        f"security={security!r} is not valid; pass None (TLS where needed), True, False, a "
        "distributed.security.Security, or a folder written by p2g_dask.cluster.write_credentials."
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"uid {os.getuid()}"


def _pem(value: str | None, field: str) -> str:
    # A Security field holds either PEM text (Security.temporary) or the path of a PEM file.
    if not value:
        raise ValueError(f"security has no {field}; pass a Security with TLS credentials "
                         "(e.g. distributed.security.Security.temporary()).")
    if "-----BEGIN" in value:
        return value
    return Path(value).read_text()


def write_credentials(security: Security, folder: str | os.PathLike) -> Path:
    """Write the client credentials of ``security`` as ``ca.pem``, ``cert.pem``, ``key.pem``.

    Another process (a notebook, ``p2g run``, the workers of a scheduler started by hand) then
    connects with ``start_cluster("address", address="tls://...", security=folder)``. The folder
    is made private (mode 0700) and the key file is created with mode 0600; each file is written
    under a temporary name and renamed when complete. Treat the folder like an SSH key: whoever
    reads it can run code on the cluster.

    Parameters
    ----------
    security
        A ``distributed.security.Security`` with TLS credentials, e.g. ``client.security`` of a
        client from :func:`p2g_dask.cluster.start_cluster`.
    folder
        Where to write; created if missing. Existing credential files are replaced.

    Returns
    -------
    Path
        The folder.

    Examples
    --------
    >>> import tempfile
    >>> folder = write_credentials(Security.temporary(), tempfile.mkdtemp())
    >>> sorted(p.name for p in folder.iterdir()), oct(folder.stat().st_mode & 0o777)
    (['ca.pem', 'cert.pem', 'key.pem'], '0o700')
    """
    texts = {
        "ca": _pem(security.tls_ca_file, "tls_ca_file"),
        "cert": _pem(security.tls_client_cert or security.tls_scheduler_cert, "tls_client_cert"),
        "key": _pem(security.tls_client_key or security.tls_scheduler_key
                    or security.tls_client_cert, "tls_client_key"),
    }
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for part, name in CREDENTIAL_FILES.items():
        with atomic_path(folder / name, overwrite=True, argument="folder") as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(texts[part])
    return folder


def load_credentials(folder: str | os.PathLike) -> Security:
    """A ``Security`` (TLS required) from a folder written by :func:`write_credentials`.

    The same key and certificate serve every role, as ``Security.temporary()``'s do, so the
    result works for a client and for the scheduler and workers it starts.

    Parameters
    ----------
    folder
        A folder holding ``ca.pem``, ``cert.pem`` and ``key.pem``.

    Returns
    -------
    distributed.security.Security

    Examples
    --------
    >>> import tempfile
    >>> folder = write_credentials(Security.temporary(), tempfile.mkdtemp())
    >>> load_credentials(folder).require_encryption
    True
    """
    folder = Path(folder).expanduser()
    paths = {part: folder / name for part, name in CREDENTIAL_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"security={str(folder)!r} is not a credentials folder: {', '.join(missing)} missing; "
            "write one with p2g_dask.cluster.write_credentials(client.security, folder)."
        )
    ca, cert, key = (str(paths[p]) for p in ("ca", "cert", "key"))
    return Security(require_encryption=True, tls_ca_file=ca,
                    tls_client_cert=cert, tls_client_key=key,
                    tls_scheduler_cert=cert, tls_scheduler_key=key,
                    tls_worker_cert=cert, tls_worker_key=key)


def private_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if needed and make it readable by its owner only (0700).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> oct(private_folder(pathlib.Path(tempfile.mkdtemp()) / "tls").stat().st_mode & 0o777)
    '0o700'
    """
    folder = Path(os.path.expandvars(os.fspath(path))).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder
