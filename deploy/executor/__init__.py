"""deploy.Executor: the standard `concurrent.futures` Executor on any deploy environment.

A drop-in for ProcessPoolExecutor: `submit` returns a real `concurrent.futures.Future`
(`wait`, `as_completed`, callbacks, `cancel()` of a task not yet started), exceptions are
re-raised with the worker's traceback attached as `__cause__`, `map(timeout=, chunksize=)`,
`shutdown(wait=, cancel_futures=)` and the context manager behave as the standard library's.

Each batch of calls is one ordinary deploy job (`ex.jobs`). The package: `remote` runs in
the task process (standard library only), `batching` queues calls and sends and watches
the jobs, `outcomes` turns a task's row back into its value or exception. This module
loads the others on first use, so a worker unpickling a call stays light.
"""
from __future__ import annotations

import threading
import time
import uuid
import weakref
from concurrent import futures
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from ..jobs.job import Job
    from .batching import Engine

__all__ = ["Executor", "TaskLost"]

BATCH_SECONDS = 0.002       # submissions arriving this close together share a job
BATCH_SIZE = 10000          # a batch is sent at once when this many submissions wait

_exiting = threading.Event()            # set at interpreter exit: no new submission
_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def __getattr__(name: str) -> Any:
    """TaskLost, loaded with the client's side (deploy.jobs) on first use."""
    if name == "TaskLost":
        from .outcomes import TaskLost
        globals()[name] = TaskLost
        return TaskLost
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _python_exit() -> None:
    """At interpreter exit, as the standard executors do: let queued and running work
    finish (no new submission is accepted)."""
    _exiting.set()
    for engine in list(_engines):
        engine.shutdown(wait=True)


threading._register_atexit(_python_exit)


class Executor(futures.Executor):
    """concurrent.futures' Executor over deploy jobs, on any environment.

        with deploy.Executor(max_workers=8) as ex:           # default environment: LocalAsync
            fut = ex.submit(pow, 2, 10)
            list(ex.map(abs, range(-5, 5), chunksize=100, timeout=60))
        ex.job.get_metrics()                                  # the deploy Job behind it

    `environment`: an Environment, a saved environment's name or a kind (None: the
    configured default). `max_workers`: tasks run at once (default: the environment's
    workers; on LocalAsync it sets the worker processes, like ProcessPoolExecutor's).
    `initializer(*initargs)` runs once in each process that runs tasks, before its first.
    """

    def __init__(self, max_workers: int | None = None, *, environment: Any = None,
                 initializer: Callable | None = None, initargs: tuple = (),
                 name: str | None = None, batch_seconds: float = BATCH_SECONDS,
                 batch_size: int = BATCH_SIZE) -> None:
        from .. import config, map_job
        from .batching import Engine
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be an integer, got {type(max_workers).__name__}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {type(initializer).__name__}")
        if not isinstance(initargs, (tuple, list)):
            raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")
        if isinstance(batch_seconds, bool) or not isinstance(batch_seconds, (int, float)) \
                or not 0 <= batch_seconds <= 60:
            raise ValueError(f"batch_seconds must be a number of seconds in [0, 60], got {batch_seconds!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if name is not None:
            map_job._check_name(name)
        settings = config.load()
        env = map_job.resolve_environment(environment, settings["default_environment"])
        if max_workers is not None and env.kind == "local-async":
            env = type(env)(env.name, num_workers=max_workers)    # its processes, as PPE's
        workers = env.num_workers() if max_workers is None else min(max_workers, env.num_workers())
        init = None
        if initializer is not None:
            try:
                init = env.serialize((initializer, tuple(initargs)))
            except Exception as exc:
                raise TypeError(f"initializer {initializer!r} or its initargs cannot be sent to "
                                f"workers: {type(exc).__name__}: {exc}") from exc
        self._max_workers = workers
        self._engine = Engine(env, workers, init, name or f"executor-{uuid.uuid4().hex[:8]}",
                              float(batch_seconds), min(batch_size, int(settings["max_tasks"])),
                              _exiting)
        _engines.add(self._engine)
        finalizer = weakref.finalize(self, self._engine.shutdown, False)
        finalizer.atexit = False

    @property
    def environment(self) -> Any:
        """The environment the tasks run in."""
        return self._engine.env

    @property
    def _broken(self) -> str | bool:
        """Why the executor broke (an initializer failed), or False (ProcessPoolExecutor's name)."""
        return self._engine.broken or False

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:
        """The background thread (ProcessPoolExecutor's name for its own)."""
        return self._engine.thread

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedule fn(*args, **kwargs); returns a Future. An argument that cannot be
        pickled fails the returned future (at once on LocalAsync/Local, when its batch is
        sent elsewhere)."""
        return self._engine.add(fn, [(args, kwargs)], None)[0]

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """Like map(fn, *iterables), in parallel; every call is scheduled before the first
        value is asked for, results come in order, `timeout` counts from this call.
        `chunksize` > 1 runs that many calls per chunk (one round trip, results together)."""
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an integer, got {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        fs = self._engine.add(fn, ((args, {}) for args in zip(*iterables)),
                              chunksize if chunksize > 1 else None)
        return _results(fs, end_time)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new submissions; `wait`: return once every scheduled call has finished.
        `cancel_futures`: calls not started are canceled (those that fit the free workers
        at that moment start, as in ProcessPoolExecutor)."""
        self._engine.shutdown(wait, cancel_futures)

    @property
    def jobs(self) -> list[Job]:
        """The deploy jobs this executor ran, one per batch, oldest first."""
        with self._engine.lock:
            return list(self._engine.jobs)

    @property
    def job(self) -> Job | None:
        """The latest deploy job behind this executor (None before the first batch left)."""
        with self._engine.lock:
            return self._engine.jobs[-1] if self._engine.jobs else None

    def task_of(self, future: Future) -> tuple[Job, str] | None:
        """(job, task name) that runs `future`'s call, for its metrics row and logs
        (`job.get_logs(task_name)`); None while it waits to be sent."""
        with self._engine.lock:
            found = self._engine.tasks.get(future)
        if found is None:
            return None
        job, index = found
        return job, job.spec.task_name(index)

    def get_metrics(self) -> Any:
        """Every task's metrics row across this executor's jobs, with a `job` column; the
        categorical columns (status, host, worker) stay categorical."""
        import pandas
        frames = [job.get_metrics().assign(job=job.name) for job in self.jobs]
        return _concat_frames(frames) if frames else pandas.DataFrame()

    def __repr__(self) -> str:
        state = "broken" if self._engine.broken else \
            "shut down" if self._engine.shutdown_requested else "running"
        return (f"<deploy.Executor {self._engine.name!r} on {self._engine.env.name} "
                f"max_workers={self._max_workers} {state}, {len(self.jobs)} jobs>")


def _concat_frames(frames: list) -> Any:
    """pandas.concat of frames whose categorical columns may hold different categories
    (which concat would turn into plain objects): each gets the union of them first."""
    import pandas
    from pandas.api.types import union_categoricals
    dtypes = {}
    for column, dtype in frames[0].dtypes.items():
        if isinstance(dtype, pandas.CategoricalDtype) and all(
                isinstance(frame.dtypes.get(column), pandas.CategoricalDtype) for frame in frames):
            union = union_categoricals([frame[column] for frame in frames], ignore_order=True)
            dtypes[column] = pandas.CategoricalDtype(union.categories, ordered=dtype.ordered)
    if dtypes:
        frames = [frame.astype(dtypes) for frame in frames]
    return pandas.concat(frames, ignore_index=True)


def _results(fs: list[Future], end_time: float | None) -> Iterator:
    """The standard library's map iterator: in order, no reference kept to a value
    handed out, the rest canceled when it stops early."""
    try:
        fs.reverse()
        while fs:
            if end_time is None:
                yield _result_or_cancel(fs.pop())
            else:
                yield _result_or_cancel(fs.pop(), end_time - time.monotonic())
    finally:
        for future in fs:
            future.cancel()


def _result_or_cancel(future: Future, timeout: float | None = None) -> Any:
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future
