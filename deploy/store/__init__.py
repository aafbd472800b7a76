"""Where job directories live: `open_store(uri)` picks the backend by the URI's scheme."""
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


def register_backend(scheme: str, target: str) -> None:
    """Let `open_store` handle `scheme://...` with the factory named by 'module:callable'."""
    _BACKENDS[scheme] = target


def open_store(uri: str) -> Storage:
    """Open the store named by `uri` (`file:///path`, a plain path, or a registered scheme)."""
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
    return factory(rest) if scheme in ("file", "") else factory(uri)


__all__ = ["Storage", "StorageError", "open_store", "register_backend"]
