"""Storage: the handful of verbs every job directory backend provides.

A job directory is reached only through these verbs, so the client, the workers and
every environment share one contract whatever the backend (local disk, S3, HDFS, a relay).
"""
from __future__ import annotations

import abc


class StorageError(OSError):
    """The store could not be reached or answered something unexpected."""


class Storage(abc.ABC):
    """A tree of small files addressed by '/'-separated relative paths.

    Paths are relative to the store's root; `uri` names the root so that another process
    (or another machine) can open the same store with `deploy.store.open_store(uri)`.
    """

    uri: str
    poll_seconds: float = 0.5     # how often readers poll this store while waiting

    @abc.abstractmethod
    def get(self, path: str) -> bytes:
        """Return the whole content of `path`; FileNotFoundError when it does not exist."""

    @abc.abstractmethod
    def put(self, path: str, data: bytes) -> None:
        """Publish `data` at `path` atomically: readers see the old file or the new one, whole."""

    @abc.abstractmethod
    def create_exclusive(self, path: str, data: bytes = b"") -> bool:
        """Publish `data` at `path` whole, only if nothing is there yet; True if this call created it."""

    @abc.abstractmethod
    def list(self, path: str) -> list[str]:
        """Names directly below the directory `path` (sorted); [] when it does not exist."""

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Remove a file or a whole directory tree; no error when it does not exist."""

    def exists(self, path: str) -> bool:
        """True when `path` is a file or a non-empty directory."""
        try:
            self.get(path)
            return True
        except (FileNotFoundError, IsADirectoryError):
            parent, _, name = path.rstrip("/").rpartition("/")
            return name in self.list(parent)

    def once(self) -> "Storage":
        """This store answering each verb with one attempt (a wrapper that retries gives its
        inner store): for best-effort cleanup that must not wait out an outage."""
        return self

    def local_path(self, path: str) -> str | None:
        """The local filesystem path of `path` when the store is on this machine's disk, else None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
