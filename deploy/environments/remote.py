"""What environments whose workers run on other machines share (SSH, EC2, Dask, Ray): the
caller's own modules travel by value, and a job lives on the client unless `store` names a
store every worker reaches."""
from __future__ import annotations

from typing import Callable

from ..store import Storage, open_store
from ..store.local import home_job_store
from . import by_value
from .base import Environment


class RemoteEnvironment(Environment):
    """An Environment with a `store` setting (None: jobs relayed to the client)."""

    store: str | None = None

    @property
    def needs_client(self) -> bool:
        """True when jobs live on the client, which must then outlive them."""
        return self.store is None

    def serialize(self, fn: Callable) -> bytes:
        """Workers lack the caller's own modules: those travel by value."""
        return by_value.dumps(fn)

    def job_store(self, job_id: str) -> Storage:
        if self.store is None:
            return home_job_store(job_id)
        return open_store(f"{self.store}/{job_id}")
