"""deploy.map(fn, iterable, ...): builtin `map` semantics over workers, output streamed."""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Iterator

from .errors import JobError
from .jobs.job import FINAL, Job


def map(function: Callable, *iterables: Iterable, ordered: bool = True, stream: bool = True,
        environment: Any = None, name: str | None = None, **options: Any) -> list | Iterator:
    """Like builtin map(function, *iterables), run in parallel.

    ordered=True returns the list of results; ordered=False returns a generator yielding
    results as their tasks complete. Task output is printed as it arrives, prefixed by the
    task name (stream=False turns that off). A failed task raises JobError; leaving the
    generator early cancels the rest, and so does Ctrl-C while waiting for the list.
    No items: [] (or an empty generator) and no job, as builtin map.
    Other options go to map_job.create, per-task resources among them: cpu=, memory_gb=, gpu=.
    """
    from . import map_job
    if not iterables:
        raise TypeError("deploy.map() needs at least one iterable")
    if len(iterables) == 1:
        job = map_job.submit(function, iterables[0], "arg", name=name, environment=environment,
                             **options)
    else:
        job = map_job.submit(function, zip(*iterables), "args", name=name,
                             environment=environment, **options)
    if job is None:
        return [] if ordered else iter(())
    printer = _print_line if stream else None
    if ordered:
        try:
            status = job.wait(stream=printer)
        except BaseException:
            job.cancel()                # Ctrl-C: stop the job rather than leave it unowned
            raise
        if status != "Completed":
            raise JobError(job.get_error() or f"job {job.name!r} {status}")
        return job.get_map_results()
    return _as_completed(job, printer)


def _print_line(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def _as_completed(job: Job, printer: Callable[[str], None] | None) -> Iterator:
    """Yield values chunk by chunk as chunks are published; raise at the first failure."""
    finished = False
    try:
        while True:
            status = job.wait(timeout=0.05, stream=printer, progress=False)
            for indices, values, failed in job.completed_chunks():
                if failed:
                    pos = min(failed)
                    kind, message, _ = failed[pos]
                    raise JobError(f"task {job.spec.task_name(indices[pos])} failed: {kind}: {message}")
                yield from values
            if status in FINAL or status == "Unknown":
                finished = True
                if status not in ("Completed", "Failed"):
                    raise JobError(job.get_error() or f"job {job.name!r} {status}")
                return
    finally:
        if not finished:
            job.cancel()
