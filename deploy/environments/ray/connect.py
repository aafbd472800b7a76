"""Reaching a Ray cluster from this process.

ray.init waits minutes for a head that is not there, so the address is checked first (a
TCP connection and a gRPC greeting, within seconds). Ray connects a process to one cluster
only: the first connection is kept and reused. Once connected, one small task reports the
cluster's Python, cloudpickle, Ray and deploy versions, compared with this process's.
"""
from __future__ import annotations

import socket
import threading
from typing import Any

from ...errors import DeployError

INSTALL = "pip install deploy[ray]"
NAMESPACE = "deploy"            # Ray namespace of the drivers of jobs that outlive the client
CLIENT_PORT, GCS_PORT = 10001, 6379
# what a gRPC (HTTP/2) client sends first: the preface and an empty SETTINGS frame
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


class RayClusterError(DeployError):
    """The Ray cluster cannot be used: unreachable, not Ray, or incompatible with this client."""


def import_ray() -> Any:
    """The ray module, or ImportError saying which extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"the Ray environment needs the ray package on this machine "
                          f"({exc}): {INSTALL}") from None
    return ray


def split_address(address: str) -> tuple[str, str, int]:
    """('ray://' or '', host, port) of 'host:port' (a head's GCS) or 'ray://host[:port]'
    (Ray Client); ValueError for anything else."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"address must be 'host:port' or 'ray://host:port', got {address!r}")
    text = address.strip()
    scheme = ""
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "ray":
            raise ValueError(f"address {address!r}: only 'host:port' (the head's GCS) or "
                             "'ray://host:port' (Ray Client) are understood")
        scheme = "ray://"
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(CLIENT_PORT if scheme else GCS_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise ValueError(f"address must be 'host:port' or 'ray://host:port', got {address!r}")
    return scheme, host, int(port)


def check_reachable(address: str, timeout: float) -> None:
    """RayClusterError unless a gRPC server (a Ray head or Ray Client server) answers at
    `address` within `timeout` seconds."""
    _, host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_H2_PREFACE)
            head = _read(sock, 9)
    except OSError as exc:
        where = address if address == f"{host}:{port}" else f"{address} ({host}:{port})"
        raise RayClusterError(f"no Ray head answers at {where}: "
                              f"{exc.strerror or exc} (is the cluster running, and the "
                              "address its head's GCS port or ray:// client port?)") from None
    if len(head) < 9 or head[3] != 0x04:          # an HTTP/2 server greets with SETTINGS
        raise RayClusterError(f"{address} answers but is not a Ray head: no gRPC server there "
                              "(give the head's GCS address host:6379, or ray://host:10001)")


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        try:
            got = sock.recv(n - len(data))
        except socket.timeout:
            break
        if not got:
            break
        data += got
    return data


_lock = threading.Lock()
_connected: list[str] = []              # the addresses naming the cluster this process is connected to
_checked: dict[str, dict[str, Any]] = {}


def connect(address: str, timeout: float = 10.0) -> Any:
    """This process's connection to the cluster at `address` (made on first use); the
    ray module. RayClusterError when the head does not answer, or this process is
    connected to another cluster already."""
    ray = import_ray()
    with _lock:
        if ray.is_initialized():
            if not _connected:
                _connected[:] = _cluster_names(ray, None)      # the caller ran ray.init itself
            if any(_same(name, address) for name in _connected):
                return ray
            check_reachable(address, timeout)           # a wrong address says so first
            where = _connected[0] if _connected else "an address given to ray.init"
            raise RayClusterError(f"this process is connected to the Ray cluster at {where}; "
                                  f"Ray connects a process to one cluster only, so use another "
                                  f"process for {address}")
        check_reachable(address, timeout)
        import logging
        for attempt in range(3):
            try:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                         logging_level=logging.ERROR)
                break
            except ConnectionAbortedError:
                # the Ray Client server's per-client server died while starting (seen under
                # load): a new connection gets a new one
                if attempt == 2 or not address.startswith("ray://"):
                    _init_failed(address)
                ray.shutdown()
            except Exception:
                _init_failed(address)
        _connected[:] = _cluster_names(ray, address)
    return ray


def _init_failed(address: str) -> None:
    """RayClusterError for the exception ray.init raised (called in its except clause)."""
    import sys
    exc = sys.exc_info()[1]
    text = str(exc).strip().splitlines()
    raise RayClusterError(f"cannot connect to the Ray cluster at {address}: "
                          f"{type(exc).__name__}: {' '.join(text)[:800]}") from None


def _cluster_names(ray: Any, given: str | None) -> list[str]:
    """The addresses naming the cluster this process is connected to: the one it was given,
    the head's GCS address and, through Ray Client, the ray:// address; so that either of
    them reaches the same connection."""
    names = [given] if given else []
    try:
        from ray.util.client import ray as client
        if client.is_connected():                       # what ray.init('ray://...') was given
            names.append("ray://" + client.get_context().client_worker._conn_str)
    except Exception:
        pass
    try:
        names.append(ray.get_runtime_context().gcs_address)
    except Exception:
        pass
    return [name for name in names if name]


def _same(a: str, b: str) -> bool:
    try:
        return split_address(a) == split_address(b)
    except ValueError:
        return a == b


def local_versions() -> dict[str, Any]:
    """This process's Python, cloudpickle, Ray and deploy versions."""
    return _versions_function()()


def _versions_function() -> Any:
    """A function reporting the versions where it runs; made inside a function, so that it
    is pickled by value (a cluster without deploy runs it too)."""
    def deploy_versions() -> dict[str, Any]:
        import importlib
        import sys as _sys
        found: dict[str, Any] = {"python": "%d.%d.%d" % _sys.version_info[:3]}
        for name in ("cloudpickle", "ray", "deploy"):
            try:
                found[name] = getattr(importlib.import_module(name), "__version__", "unknown")
            except Exception:
                found[name] = None
        return found
    return deploy_versions


def cluster_versions(ray: Any, address: str, timeout: float = 120.0) -> dict[str, Any]:
    """The versions a task on the cluster sees (asked once per process and cluster)."""
    got = _checked.get(address)
    if got is None:
        probe = ray.remote(num_cpus=0, max_retries=1)(_versions_function())
        try:
            got = ray.get(probe.remote(), timeout=timeout)
        except Exception as exc:
            raise RayClusterError(f"the Ray cluster at {address} did not run a probe task within "
                                  f"{timeout:g} s: {type(exc).__name__}: {exc}") from None
        _checked[address] = got
    return got


def check_versions(here: dict[str, Any], there: dict[str, Any], address: str) -> None:
    """RayClusterError when functions pickled here could not run on the cluster: another
    Python minor version, or another cloudpickle major version (or none)."""
    problems = []
    if here["python"].split(".")[:2] != str(there.get("python")).split(".")[:2]:
        problems.append(f"Python {here['python']} here but {there.get('python')} on the cluster "
                        "(bytecode and pickles differ between Python versions)")
    if there.get("cloudpickle") is None:
        problems.append("cloudpickle is not installed on the cluster")
    elif str(here["cloudpickle"]).split(".")[0] != str(there["cloudpickle"]).split(".")[0]:
        problems.append(f"cloudpickle {here['cloudpickle']} here but {there['cloudpickle']} on "
                        "the cluster (functions pickled here may not load there)")
    if problems:
        raise RayClusterError(f"the Ray cluster at {address} cannot run this client's functions: "
                              + "; ".join(problems) + ": use the same Python and cloudpickle "
                              "versions on both sides")
