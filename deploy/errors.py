"""Exceptions users catch."""
from __future__ import annotations

from .store.base import StorageError


class DeployError(Exception):
    """Base of deploy's own errors."""


class JobError(DeployError):
    """A job did not give a result: tasks failed, it was canceled, or it cannot be read."""


class ConfigError(DeployError, ValueError):
    """The configuration (file, DEPLOY_* variable, deploy home) cannot be used as it is."""


class ResourceError(DeployError, ValueError):
    """Per-task resources (cpu, memory_gb, gpu) that no machine of the environment can meet."""


class JobNotFound(DeployError, KeyError):
    """No job by that name or index in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class EnvironmentNotFound(DeployError, KeyError):
    """No environment by that name in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "environment not found"


class StoreUnavailable(DeployError, StorageError):
    """A remote job store stayed unreachable for the whole retry budget (store_retry_seconds).

    The message names the store, the verb, the path, how long it was tried and the last
    error; the same facts are attributes, for code that reacts to an outage.
    """

    def __init__(self, message: str, *, uri: str = "", verb: str = "", path: str = "",
                 seconds: float = 0.0, attempts: int = 0,
                 cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.uri, self.verb, self.path = uri, verb, path
        self.seconds, self.attempts, self.cause = seconds, attempts, cause

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the job store is unavailable"
