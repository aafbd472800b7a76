"""Where job directories live: `open_store(uri)` picks the backend by the URI's scheme.

Remote backends come wrapped in `RetryingStorage` (deploy.store.retrying): their verbs ride
out an outage of up to `store_retry_seconds`, then raise `deploy.errors.StoreUnavailable`.
Local disk needs no wrapper; neither does a relay, whose hub is on the worker's own host
and whose stream to the client is not reopened (when the client goes, the agent stops the
relayed workers: waiting would only delay that)."""
from __future__ import annotations

import importlib

from .base import Storage, StorageError

# scheme -> "module:factory"; backends load only when a URI of theirs is opened.
_BACKENDS = {
    "file": "deploy.store.local:LocalStorage",
    "": "deploy.store.local:LocalStorage",
    "s3": "deploy.store.s3:S3Storage",
    "relay": "deploy.store.relay:RelayStorage",
    "hdfs": "deploy.store.hdfs:HdfsStorage",
    "webhdfs": "deploy.store.hdfs:HdfsStorage",
    "swebhdfs": "deploy.store.hdfs:HdfsStorage",
}
_RETRIED = {"s3", "hdfs", "webhdfs", "swebhdfs"}     # schemes reached over a network
# scheme -> what a worker must be able to import to open such a store (pip name = module)
_NEEDS = {"s3": ("boto3",), "hdfs": ("hdfs",), "webhdfs": ("hdfs",), "swebhdfs": ("hdfs",)}


def register_backend(scheme: str, target: str, retry: bool = False,
                     needs: tuple[str, ...] = ()) -> None:
    """Let `open_store` handle `scheme://...` with the factory named by 'module:callable';
    `retry`: wrap its stores in RetryingStorage (a store across a network); `needs`: the
    libraries its workers must import (environments ship them to hosts that lack them)."""
    _BACKENDS[scheme] = target
    _NEEDS[scheme] = tuple(needs)
    if retry:
        _RETRIED.add(scheme)
    else:
        _RETRIED.discard(scheme)


def worker_needs(uri: str) -> tuple[str, ...]:
    """The libraries (pip names, imported under the same names) a worker needs to open the
    store at `uri`, beyond the standard library and deploy's runtime."""
    scheme, sep, _ = uri.partition("://")
    return _NEEDS.get(scheme if sep else "", ())


def open_store(uri: str, retry_seconds: float | None = None) -> Storage:
    """Open the store named by `uri` (`file:///path`, a plain path, or a registered scheme).
    A remote store retries through an outage for `retry_seconds` (default: the
    `store_retry_seconds` setting; 0: fail at the first connection error)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    try:
        target = _BACKENDS[scheme]
    except KeyError:
        raise ValueError(f"unknown store scheme {scheme!r} in {uri!r}; known: "
                         + ", ".join(sorted(s for s in _BACKENDS if s))) from None
    module, _, name = target.partition(":")
    factory = getattr(importlib.import_module(module), name)
    store = factory(rest) if scheme in ("file", "") else factory(uri)
    if scheme in _RETRIED:
        from .retrying import RetryingStorage
        store = RetryingStorage(store, retry_seconds)
    return store


__all__ = ["Storage", "StorageError", "open_store", "register_backend", "worker_needs"]
