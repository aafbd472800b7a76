"""Where job directories live: `open_store(uri)` picks the backend by the URI's scheme.

Remote backends come wrapped in `RetryingStorage` (deploy.store.retrying): their verbs ride
out an outage of up to `store_retry_seconds`, then raise `deploy.errors.StoreUnavailable`.
Local disk needs no wrapper; neither does a relay, whose hub is on the worker's own host
and whose stream to the client is not reopened (when the client goes, the agent stops the
relayed workers: waiting would only delay that)."""
from __future__ import annotations

import importlib
from typing import NamedTuple

from .base import Storage, StorageError

class _Backend(NamedTuple):
    target: str                     # "module:factory", loaded only when a URI of it is opened
    remote: bool = False            # across a network: wrapped in RetryingStorage
    needs: tuple[str, ...] = ()     # what a worker imports to open it (pip name = module)


_HDFS = _Backend("deploy.store.hdfs:HdfsStorage", remote=True, needs=("hdfs",))
_BACKENDS = {
    "file": _Backend("deploy.store.local:LocalStorage"),
    "": _Backend("deploy.store.local:LocalStorage"),
    "s3": _Backend("deploy.store.s3:S3Storage", remote=True, needs=("boto3",)),
    "relay": _Backend("deploy.store.relay:RelayStorage"),
    "hdfs": _HDFS, "webhdfs": _HDFS, "swebhdfs": _HDFS,
}


def register_backend(scheme: str, target: str, retry: bool = False,
                     needs: tuple[str, ...] = ()) -> None:
    """Let `open_store` handle `scheme://...` with the factory named by 'module:callable';
    `retry`: wrap its stores in RetryingStorage (a store across a network); `needs`: the
    libraries its workers must import (environments ship them to hosts that lack them)."""
    _BACKENDS[scheme] = _Backend(target, retry, tuple(needs))


def worker_needs(uri: str) -> tuple[str, ...]:
    """The libraries (pip names, imported under the same names) a worker needs to open the
    store at `uri`, beyond the standard library and deploy's runtime."""
    scheme, sep, _ = uri.partition("://")
    backend = _BACKENDS.get(scheme if sep else "")
    return backend.needs if backend else ()


def open_store(uri: str, retry_seconds: float | None = None) -> Storage:
    """Open the store named by `uri` (`file:///path`, a plain path, or a registered scheme).
    A remote store retries through an outage for `retry_seconds` (default: the
    `store_retry_seconds` setting; 0: fail at the first connection error)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    try:
        backend = _BACKENDS[scheme]
    except KeyError:
        raise ValueError(f"unknown store scheme {scheme!r} in {uri!r}; known: "
                         + ", ".join(sorted(s for s in _BACKENDS if s))) from None
    module, _, name = backend.target.partition(":")
    factory = getattr(importlib.import_module(module), name)
    store = factory(rest) if scheme in ("file", "") else factory(uri)
    if backend.remote:
        from .retrying import RetryingStorage
        store = RetryingStorage(store, retry_seconds)
    return store


__all__ = ["Storage", "StorageError", "open_store", "register_backend", "worker_needs"]
