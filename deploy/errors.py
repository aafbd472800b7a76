"""Exceptions users catch."""
from __future__ import annotations


class DeployError(Exception):
    """Base of deploy's own errors."""


class JobError(DeployError):
    """A job did not give a result: tasks failed, it was canceled, or it cannot be read."""


class ConfigError(DeployError, ValueError):
    """The configuration (file, DEPLOY_* variable, deploy home) cannot be used as it is."""


class JobNotFound(DeployError, KeyError):
    """No job by that name or index in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class EnvironmentNotFound(DeployError, KeyError):
    """No environment by that name in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "environment not found"
