"""Riding out a remote store's outage: every verb retried with backoff within a time budget.

`open_store` wraps the remote backends (S3, HDFS) in `RetryingStorage`, so workers and
the client alike retry a verb that failed transiently (connection refused or reset,
timeouts, 5xx answers, throttling) with exponential backoff and jitter, for at most
`store_retry_seconds` (configuration) from the verb's first attempt. Then the verb raises
`StoreUnavailable`, naming the store, the verb, the path, how long it tried and the last
error. Answers that retrying cannot change (FileNotFoundError, FileExistsError, permission
errors, bad requests) are raised at once. An attempt in flight is never interrupted, so a
verb gives up at most one attempt's timeout after the budget.

The verbs are safe to repeat: `put` and `delete` are idempotent, reads change nothing. An
exclusive create is not: an attempt whose answer was lost (the connection reset after the
store had written the file) makes the next attempt find the file and report that someone
else was first. So after a transient failure, a create that finds the file reads it back
and counts it as its own when it holds exactly the bytes this call wrote. That is sound
because every exclusive create in deploy writes content unique to its writer (a claim
holds the worker's id, a result the worker's id and host, a cancel marker its time); two
writers of identical bytes could both be told True, and nothing can tell their files apart.

Backends raise their own errors `from None` (a library's traceback helps nobody), so they
mark them with `mark(error, cause)`: whether the hidden cause was transient. Names are
matched rather than classes imported, so this module loads no client library (the worker
imports it).
"""
from __future__ import annotations

import random
import time
from typing import Any, Callable, TypeVar

from ..errors import StoreUnavailable
from .base import Storage, StorageError

T = TypeVar("T")

FIRST_DELAY = 0.2        # seconds before the first retry; doubled per retry...
MAX_DELAY = 5.0          # ...up to this; each delay is scaled by a random factor in [0.5, 1)

# answers that repeating the call cannot change
_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
              NotADirectoryError, ValueError, TypeError)

# exception class names (anywhere in the class's MRO) of network failures: the builtin
# ConnectionError family, requests' ConnectionError/Timeout/ChunkedEncodingError, urllib3's
# ProtocolError, botocore's ConnectionError family (EndpointConnectionError,
# ConnectionClosedError, ConnectTimeoutError), ReadTimeoutError and HTTPClientError.
_TRANSIENT_NAMES = frozenset({
    "ConnectionError", "TimeoutError", "Timeout", "ChunkedEncodingError", "ProtocolError",
    "IncompleteRead", "RemoteDisconnected", "EndpointConnectionError", "ConnectionClosedError",
    "ConnectTimeoutError", "ReadTimeoutError", "HTTPClientError", "ResponseStreamingError",
    "IncompleteReadError", "NewConnectionError",
})

# S3 (and AWS in general) error codes that mean "later", whatever the HTTP status
_RETRY_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequests",
    "TooManyRequestsException", "RequestThrottled", "RequestThrottledException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "PriorRequestNotComplete",
})

# Java exceptions a NameNode (or a DataNode behind it) reports for a passing condition:
# failing over, starting up, a peer not answering
_HDFS_RETRY = frozenset({
    "RetriableException", "StandbyException", "SafeModeException", "ConnectException",
    "SocketTimeoutException", "NoRouteToHostException", "ObserverRetryOnActiveException",
})


def is_transient(exc: BaseException) -> bool:
    """Whether calling again later may succeed where `exc` was raised: a network failure,
    a timeout, a 5xx or throttling answer, an HDFS NameNode failing over or in safe mode."""
    if isinstance(exc, _PERMANENT) or type(exc).__name__ == "SSLError":
        return False                    # (a bad certificate stays bad)
    marked = getattr(exc, "transient", None)
    if marked is not None:
        return bool(marked)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    response = getattr(exc, "response", None)          # botocore's ClientError
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or status == 429 or code in _RETRY_CODES
    kind = getattr(exc, "exception", None)             # hdfs.HdfsError: the Java exception
    return isinstance(kind, str) and kind in _HDFS_RETRY


def mark(error: StorageError, cause: BaseException) -> StorageError:
    """`error`, noting whether its cause (which it hides) was transient; for backends."""
    error.transient = is_transient(cause)     # type: ignore[attr-defined]
    return error


def _describe(exc: BaseException) -> str:
    """A backend's error as it reads (it names the call and the cause), another with its type."""
    return str(exc) if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"


def budget_seconds() -> float:
    """The configured retry budget (`store_retry_seconds`, DEPLOY_STORE_RETRY_SECONDS)."""
    from .. import config
    return float(config.get("store_retry_seconds"))


class RetryingStorage(Storage):
    """Another store's verbs, each retried through transient failures for up to `budget`
    seconds (default: the `store_retry_seconds` setting); other attributes pass through."""

    def __init__(self, inner: Storage, budget: float | None = None) -> None:
        self.inner = inner
        self.budget = budget_seconds() if budget is None else float(budget)
        self.uri = inner.uri
        self.poll_seconds = inner.poll_seconds
        self.retried = 0                    # transient failures retried, over this store's life
        self._down_since: float | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"RetryingStorage({self.inner!r}, budget={self.budget:g})"

    def once(self) -> Storage:
        return self.inner.once()

    # -- the retry loop ---------------------------------------------------------------

    def _call(self, verb: str, path: str, fn: Callable[[], T]) -> T:
        """`fn()`, again after each transient failure, until it succeeds or `budget` seconds
        have passed since the first attempt (then StoreUnavailable)."""
        start = time.monotonic()
        failures = 0
        while True:
            try:
                result = fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                now = time.monotonic()
                remaining = start + self.budget - now
                if remaining <= 0:
                    raise StoreUnavailable(
                        f"the job store {self.uri} is unreachable: {verb} {path!r} failed for "
                        f"{now - start:.1f} s ({failures} attempts, store_retry_seconds="
                        f"{self.budget:g}); last error: {_describe(exc)}",
                        uri=self.uri, verb=verb, path=path, seconds=now - start,
                        attempts=failures, cause=exc) from None
                self._note_down(exc)
                self.retried += 1
                delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                time.sleep(min(delay, remaining))
                continue
            if self._down_since is not None:
                self._note_up()
            return result

    def _note_down(self, exc: BaseException) -> None:
        """Say once per outage (on stderr, unless logging is set up) that the store is down."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        import logging
        logging.getLogger("deploy.store").warning(
            "deploy: the job store %s is unreachable (%s); retrying for up to %g s",
            self.uri, _describe(exc), self.budget)

    def _note_up(self) -> None:
        """Say that the outage is over, and how long it lasted for this store."""
        import logging
        down, self._down_since = time.monotonic() - (self._down_since or 0.0), None
        logging.getLogger("deploy.store").warning(
            "deploy: the job store %s answers again after %.1f s", self.uri, down)

    # -- the verbs --------------------------------------------------------------------

    def get(self, path: str) -> bytes:
        return self._call("get", path, lambda: self.inner.get(path))

    def put(self, path: str, data: bytes) -> None:
        self._call("put", path, lambda: self.inner.put(path, data))

    def create_exclusive(self, path: str, data: bytes = b"") -> bool:
        """Exclusive create; after a transient failure, a file already there holding exactly
        `data` is taken for this call's own write, whose answer was lost (module docstring)."""
        uncertain = False

        def attempt() -> bool:
            nonlocal uncertain
            try:
                if self.inner.create_exclusive(path, data):
                    return True
            except Exception as exc:
                uncertain = uncertain or is_transient(exc)
                raise
            if not uncertain:
                return False
            try:
                return self.inner.get(path) == data
            except FileNotFoundError:
                return False            # there, then removed: not ours to claim

        return self._call("create_exclusive", path, attempt)

    def list(self, path: str) -> list[str]:
        return self._call("list", path, lambda: self.inner.list(path))

    def delete(self, path: str) -> None:
        self._call("delete", path, lambda: self.inner.delete(path))

    def exists(self, path: str) -> bool:
        return self._call("exists", path, lambda: self.inner.exists(path))

    def local_path(self, path: str) -> str | None:
        return self.inner.local_path(path)
