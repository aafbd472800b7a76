"""deploy.job.create(fn, **kwargs): one task, the same Job API (GraphLab's `deploy.job`)."""
from __future__ import annotations

from typing import Any, Callable

from .environments.base import Environment
from .jobs.job import Job


def create(function: Callable, name: str | None = None,
           environment: Environment | str | None = None, **kwargs: Any) -> Job:
    """Run `function(**kwargs)` once where `environment` says; `get_results()` is its value."""
    from . import map_job
    return map_job.submit(function, [kwargs], "kwargs", name=name, environment=environment,
                          single=True)
