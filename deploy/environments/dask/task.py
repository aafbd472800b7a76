"""What runs in a Dask worker: one chunk of a job as one Dask task, through deploy's own
task runner (deploy.worker.engine_task). Imports distributed and the worker only."""
from __future__ import annotations

import os
import time
from typing import Any

from ...worker import engine_task

_STOPPED = ("cancelled", "released", "forgotten")
ATTEMPTS = "deploy-attempts"      # scheduler metadata: starts of each task key, across workers


def topic(job_id: str) -> str:
    """The Dask event topic on which a job's tasks say that they started."""
    return f"deploy-{job_id}"


def run(job: dict[str, Any], chunk: int, attempt: int, inputs: bytes | None) -> bytes | None:
    """Run the chunk in this worker; stops its tasks when the scheduler cancels this one.
    A start after a lost worker counts as the next attempt (the scheduler keeps the count).
    The host column is the worker's address (its host part)."""
    from distributed import get_worker
    from distributed.utils import sync
    worker = get_worker()
    key = worker.get_current_task()
    address = worker.address.partition("://")[2] or worker.address
    host = address.rpartition(":")[0].strip("[]") or address

    def should_stop() -> bool:
        state = worker.state.tasks.get(key)
        return state is None or state.state in _STOPPED
    meta = [ATTEMPTS, key]
    before = sync(worker.loop, worker.scheduler.get_metadata, keys=meta, default=0)
    sync(worker.loop, worker.scheduler.set_metadata, keys=meta, value=before + 1)
    worker.log_event(topic(job["id"]), {"key": key, "chunk": chunk, "host": host,
                                        "pid": os.getpid(), "time": time.time()})
    return engine_task.run_chunk(job, chunk, attempt + before, inputs, should_stop, host)


def combine(job: dict[str, Any], chunk: int, *payloads: bytes | None) -> bytes | None:
    """The combiner, once the map chunks (`payloads`, their results) are done; with a
    shared store it reads the values from the job directory. Nothing when a task failed."""
    inputs = engine_task.combiner_inputs(job, payloads)
    if inputs is None:
        return None
    return run(job, chunk, 0, inputs)
