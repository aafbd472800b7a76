"""The one way a job's workers are started, for a new job (map_job.submit) and for
resume(): the environment starts them, and launch.json records how (jobdir/launch.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..jobdir import launch as record, layout
from ..jobdir.spec import JobSpec
from ..store import Storage

if TYPE_CHECKING:
    from ..environments.base import Environment


def worker_count(available: int, spec: JobSpec, chunks: int) -> int:
    """Workers for `chunks` chunks: no more than the environment has, the job allows
    (max_concurrent_tasks) or there are chunks to take."""
    return max(1, min(available, spec.max_concurrent_tasks or available, chunks))


def start(env: "Environment", store: Storage, spec: JobSpec, functions: dict[str, Callable] | None,
          workers: int, write: Callable[[], None] | None = None) -> dict[str, Any]:
    """Start `workers` workers (writing the job directory first with `write`, for a new
    job), record the handle in launch.json, and return it."""
    from ..environments.base import Launch
    if write is None and spec.resources:    # resume(): the machines may have changed since
        workers = max(1, min(workers, env.task_slots(spec.resources)))
    launch = Launch(store, spec, functions, workers)
    handle = env.start(launch, write) if write is not None else env.launch(launch)
    store.put(layout.LAUNCH, record.encode(env.to_dict(), handle))
    return handle
