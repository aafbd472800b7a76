"""The executor's engine: the queue of calls, and the one background thread that sends
them as jobs (batches) and resolves their futures as the jobs' chunks are published."""
from __future__ import annotations

import collections
import itertools
import logging
import math
import pickle
import sys
import threading
import time
import uuid
import weakref
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable

from ..jobs.job import Job
from ..worker.runner import dumps
from .outcomes import ExecutorJob, InitializerFailed, rebuild, resolve, settle
from .remote import Call

BATCH_WORK_SECONDS = 1.0    # a batch holds about this much work per free worker
CHUNK_SECONDS = 0.1         # tasks known to be short share a chunk of about this long
STALL_CHECK_SECONDS = 0.25  # how often a job without news is asked whether its workers live


class _Item:
    """A queued call: its future, the function and (args, kwargs) (pickles, or the
    objects until the batch is pickled), and the chunk size map() asked for."""

    __slots__ = ("future", "fn", "call", "chunk")

    def __init__(self, future: Future, fn: Any, call: Any, chunk: int | None) -> None:
        self.future, self.fn, self.call, self.chunk = future, fn, call, chunk


class _Batch:
    """One job in flight: its futures by task index, its workers, its unpublished chunks."""

    def __init__(self, job: Job, items: list[_Item], workers: int) -> None:
        self.job, self.workers = job, workers
        self.futures: list[Future | None] = [item.future for item in items]
        self.chunks_left = set(range(job.spec.chunk_count))
        self.checked = time.monotonic()

    def busy(self) -> int:
        return min(self.workers, len(self.chunks_left))


class Engine:
    """The executor's state and its one background thread (which never references the
    Executor itself, so an executor dropped without shutdown is collected and shut down)."""

    def __init__(self, env: Any, max_workers: int, init: bytes | None, name: str,
                 batch_seconds: float, batch_size: int, exiting: threading.Event) -> None:
        self.env, self.max_workers, self.name = env, max_workers, name
        self.exiting = exiting              # set at interpreter exit: no new submission
        self.call = Call(uuid.uuid4().hex, init)
        self.batch_seconds, self.batch_size = batch_seconds, batch_size
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.pending: collections.deque[_Item] = collections.deque()
        self.first_pending = 0.0
        self.flush = False                  # a map() group waits: send without the window
        self.active: list[_Batch] = []
        self.launching = 0                  # workers promised to a batch being launched
        self.jobs: list[ExecutorJob] = []
        self.tasks: "weakref.WeakKeyDictionary[Future, tuple[ExecutorJob, int]]" = \
            weakref.WeakKeyDictionary()
        self.shutdown_requested = False
        self.cancel_pending = False
        self.broken: str | None = None
        self.seconds_per_task: float | None = None
        self.thread: threading.Thread | None = None
        self.serial = itertools.count(1)

    # -- submitting (caller's threads) -------------------------------------------------

    def check_open(self) -> None:
        if self.broken:
            raise BrokenProcessPool(self.broken)
        if self.exiting.is_set():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self.shutdown_requested:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def add(self, fn: Callable, calls: Iterable[tuple[tuple, dict]], chunk: int | None) -> list[Future]:
        """Queue calls of `fn`. Where workers are forked from here (LocalAsync, Local) each
        call is pickled now, by reference (a call that cannot be pickled fails its own
        future at once); elsewhere the batch is pickled when it is sent (`_encode`)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        with self.lock:
            self.check_open()
        now = self.env.shares_memory
        fn_blob = exc = None
        if now:
            try:
                fn_blob = _pickle_by_reference(fn, self.env)
            except (Exception, SystemExit) as err:
                exc = err
        made, items = [], []
        for args, kwargs in calls:
            future = Future()
            made.append(future)
            if exc is not None:
                future.set_exception(exc)
                continue
            if not now:
                items.append(_Item(future, fn, (args, kwargs), chunk))
                continue
            try:
                blob = dumps((args, kwargs))
            except (Exception, SystemExit) as err:
                future.set_exception(err)
                continue
            items.append(_Item(future, fn_blob, blob, chunk))
        with self.lock:
            self.check_open()
            if items:
                if not self.pending:
                    self.first_pending = time.monotonic()
                self.pending.extend(items)
                self.flush = self.flush or chunk is not None or len(items) > 1
                if self.thread is None:
                    self.thread = threading.Thread(target=self.run, daemon=True,
                                                   name=f"deploy.Executor-{self.name}")
                    self.thread.start()
        self.wake.set()
        return made

    def _encode(self, items: list[_Item]) -> tuple[list[_Item], bytes | None]:
        """Pickle the calls of a batch not pickled at submit (workers elsewhere): each
        distinct function once, by the environment (by value where the hosts lack the
        caller's modules); arguments plainly unless they name such a module, those in one
        pickle by the environment for the whole batch (returned; the items then hold
        their position in it). A call that cannot be pickled fails its own future; the
        others are returned."""
        functions: dict[int, bytes | BaseException] = {}
        local = None
        kept, by_value = [], []
        for item in items:
            if isinstance(item.fn, bytes):
                kept.append(item)
                continue
            fn, (args, kwargs) = item.fn, item.call
            try:
                blob = functions.get(id(fn))
                if blob is None:
                    try:
                        blob = functions[id(fn)] = self.env.serialize(fn)
                    except (Exception, SystemExit) as err:
                        blob = functions[id(fn)] = err
                if isinstance(blob, BaseException):
                    raise blob
                try:
                    call = dumps((args, kwargs))
                except (Exception, SystemExit):
                    call = None
                if call is not None and local is None:
                    local = _local_module_names()
            except (Exception, SystemExit) as err:
                settle(item.future, exception=err)
                continue
            item.fn = blob
            if call is None or _mentions(call, local):
                by_value.append(item)
            else:
                item.call = call
            kept.append(item)
        if not by_value:
            return kept, None
        try:
            shared = self.env.serialize([item.call for item in by_value])
        except (Exception, SystemExit):
            shared = None
        if shared is None:              # find the calls that cannot be pickled, one by one
            for item in by_value:
                try:
                    self.env.serialize(item.call)
                except (Exception, SystemExit) as err:
                    settle(item.future, exception=err)
                    kept.remove(item)
            by_value = [item for item in by_value if item in kept]
            if not by_value:
                return kept, None
            shared = self.env.serialize([item.call for item in by_value])
        for position, item in enumerate(by_value):
            item.call = position
        return kept, shared

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self.lock:
            self.shutdown_requested = True
            self.cancel_pending = self.cancel_pending or cancel_futures
            thread = self.thread
        self.wake.set()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the background thread ---------------------------------------------------------

    def run(self) -> None:
        try:
            delay = 0.001
            while True:
                self.wake.clear()
                progressed = self.dispatch()
                progressed = self.collect() or progressed
                with self.lock:
                    dropped = []
                    if self.cancel_pending or self.broken:
                        dropped, self.pending = list(self.pending), collections.deque()
                    if (self.shutdown_requested or self.broken) and not self.pending \
                            and not self.active:
                        done = True
                    else:
                        done, timeout = False, self._timeout(delay)
                for item in dropped:        # outside the lock: callbacks may submit
                    self._drop(item.future)
                if done:
                    return
                delay = 0.001 if progressed else min(delay * 1.5, self._poll_cap())
                self.wake.wait(timeout)
        except BaseException as exc:       # a bug here must not leave futures hanging
            self._break(f"the executor's thread failed: {type(exc).__name__}: {exc}", exc)
            raise

    def _poll_cap(self) -> float:
        """The longest pause between looks at the jobs: short on local disk, the store's
        own polling interval on a remote one."""
        remote = [b.job._store.poll_seconds for b in self.active
                  if b.job._store.local_path("") is None]
        return max(0.01, min(remote)) if remote else 0.01

    def _timeout(self, delay: float) -> float | None:
        """How long the thread may sleep: until the batching window closes, or the next
        look at the jobs; forever when there is nothing to do but wait for submissions."""
        waits = []
        if self.active:
            waits.append(delay)
        if self.pending and self._free() > 0:
            waits.append(max(0.0, self.first_pending + self.batch_seconds - time.monotonic()))
        return min(waits) if waits else None

    def _free(self) -> int:
        return self.max_workers - self.launching - sum(b.busy() for b in self.active)

    def dispatch(self) -> bool:
        """Send queued calls as one job if workers are free and the batching window has
        closed (or a threshold, a map() call or shutdown says now)."""
        with self.lock:
            free = self._free()
            if not self.pending or free <= 0 or self.broken:
                return False
            urgent = (self.flush or self.shutdown_requested or self.cancel_pending
                      or len(self.pending) >= self.batch_size)
            if not urgent and time.monotonic() - self.first_pending < self.batch_seconds:
                return False
            hint = self.pending[0].chunk
            share = max(hint or 1, int(BATCH_WORK_SECONDS / self.seconds_per_task)
                        if self.seconds_per_task else 1)
            limit = min(self.batch_size, free * share)
            items: list[_Item] = []
            while self.pending and len(items) < limit and self.pending[0].chunk == hint:
                item = self.pending.popleft()
                if item.future.set_running_or_notify_cancel():   # a canceled one is dropped
                    items.append(item)
            if self.pending:
                self.first_pending = time.monotonic()
            else:
                self.flush = False
            if not items:
                return True
            workers = min(free, len(items))
            chunk = hint or self._chunk_size(len(items), workers)
            workers = min(workers, math.ceil(len(items) / chunk))
            self.launching += workers
        batch = None
        try:
            batch = self._launch(items, chunk, workers)
        except BaseException as exc:
            for item in items:
                settle(item.future, exception=exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            with self.lock:
                self.launching -= workers
                if batch is not None:
                    self.active.append(batch)
        return True

    def _chunk_size(self, tasks: int, workers: int) -> int:
        """Tasks per chunk: one while their length is unknown or long (a future is
        resolved when its chunk is published); enough for about CHUNK_SECONDS when short,
        keeping at least two chunks per worker."""
        if not self.seconds_per_task:
            return 1
        fair = math.ceil(tasks / (2 * workers))
        return max(1, min(fair, int(CHUNK_SECONDS / max(self.seconds_per_task, 1e-7))))

    def _launch(self, items: list[_Item], chunk: int, workers: int) -> _Batch | None:
        from .. import map_job
        items, shared = self._encode(items)
        if not items:
            return None
        call = self.call if shared is None else Call(self.call.key, self.call.init, shared)
        job = map_job.submit(call, [(item.fn, item.call) for item in items], "arg",
                             name=f"{self.name}-{next(self.serial)}", environment=self.env,
                             chunk_size=chunk, max_concurrent_tasks=workers)
        user_job = ExecutorJob(job._store, name=job.name, job_id=job.id, environment=self.env,
                                spec=job.spec, on_resume=job._on_resume)
        batch = _Batch(job, items, workers)
        with self.lock:
            self.jobs.append(user_job)
            for index, item in enumerate(items):
                self.tasks[item.future] = (user_job, index)
        return batch

    def collect(self) -> bool:
        """Resolve the futures of every chunk published since the last look."""
        progressed = False
        with self.lock:
            active = list(self.active)
        for batch in active:
            news = False
            for indices, values, failed in batch.job.completed_chunks():
                news = True
                self._learn(batch, indices)
                for pos, index in enumerate(indices):
                    future, batch.futures[index] = batch.futures[index], None
                    if future is None:
                        continue
                    if pos in failed:
                        self._fail(future, *failed[pos])
                    else:
                        resolve(future, values[pos])
                    future = None
            now = time.monotonic()
            if news:
                batch.checked = now
                progressed = True
            elif now - batch.checked > STALL_CHECK_SECONDS:
                batch.checked = now
                batch.job.get_status()       # no worker left: unfinished tasks get WorkerLost rows
            if not batch.chunks_left:
                with self.lock:
                    if batch in self.active:        # (a broken executor dropped it already)
                        self.active.remove(batch)
        return progressed

    def _learn(self, batch: _Batch, indices: Any) -> None:
        """Note the chunk as published, and how long its tasks took (sizes later chunks)."""
        if not len(indices):
            return
        chunk = batch.job.spec.chunk_of(indices[0])
        batch.chunks_left.discard(chunk)
        got = batch.job._chunks.get(chunk)
        times = [t for t in got.run_times() if t] if got is not None else []
        if times:
            mean = sum(times) / len(times)
            old = self.seconds_per_task
            self.seconds_per_task = mean if old is None else (old + mean) / 2

    def _fail(self, future: Future, kind: str, message: str | None, tb: str | None) -> None:
        exc = rebuild(kind, message, tb)
        if isinstance(exc, InitializerFailed):
            self._break("A process in the executor's environment could not run the "
                        f"initializer ({kind}: {message}); the executor is not usable anymore",
                        exc, tb=exc.tb)
            settle(future, exception=BrokenProcessPool(self.broken))
            return
        settle(future, exception=exc)

    def _break(self, why: str, exc: BaseException, tb: str | None = None) -> None:
        """Mark the executor broken: every queued or running future fails, jobs stop."""
        if tb is not None:
            logging.getLogger("concurrent.futures").critical("Exception in initializer:\n%s", tb)
        with self.lock:
            if self.broken:
                return
            self.broken = why
            batches = list(self.active)
            pending = list(self.pending)
            self.pending.clear()
        error = BrokenProcessPool(why)
        error.__cause__ = exc if tb is None else None
        for item in pending:
            if item.future.set_running_or_notify_cancel():
                settle(item.future, exception=error)
        for batch in batches:
            try:
                batch.job.cancel()
            except Exception:
                pass
            for i, future in enumerate(batch.futures):
                batch.futures[i] = None
                if future is not None:
                    settle(future, exception=error)
        with self.lock:
            for batch in batches:
                if batch in self.active:
                    self.active.remove(batch)

    def _drop(self, future: Future) -> None:
        """A queued call that will not be sent: canceled by shutdown(cancel_futures=True)
        (what fitted the free workers was sent first, as ProcessPoolExecutor does), or
        failed with the broken executor."""
        if self.broken:
            if future.set_running_or_notify_cancel():
                settle(future, exception=BrokenProcessPool(self.broken))
            return
        future.cancel()
        future.set_running_or_notify_cancel()


def _pickle_by_reference(fn: Callable, env: Any) -> bytes:
    """A function for workers forked from this process: by reference where plain pickle
    can (fast; the workers have its module), else by the environment (lambdas, closures)."""
    try:
        return pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return env.serialize(fn)


_local_names: tuple[int, frozenset[str], tuple[bytes, ...]] = (-1, frozenset(), ())


def _local_module_names() -> tuple[frozenset[str], tuple[bytes, ...]]:
    """Top-level names of the caller's own modules (not installed: remote hosts lack
    them) and __main__; recomputed when modules were imported since the last time."""
    global _local_names
    if _local_names[0] != len(sys.modules):
        from ..environments.by_value import local_modules
        names = {name.split(".")[0] for name in local_modules()} | {"__main__"}
        _local_names = (len(sys.modules), frozenset(names), tuple(n.encode() for n in names))
    return _local_names[1:]


def _mentions(blob: bytes, local: tuple[frozenset[str], tuple[bytes, ...]]) -> bool:
    """Whether a pickle may refer to one of the `local` modules (any string in it that
    names one: a data string that happens to is only a false alarm, costing a slower pickle)."""
    modules, encoded = local
    if not any(name in blob for name in encoded):
        return False                    # the usual case, at the speed of a bytes search
    import pickletools
    try:
        return any(isinstance(arg, str) and arg.split(".")[0] in modules
                   for _, arg, _ in pickletools.genops(blob))
    except Exception:
        return True
