# ENGINE-API-READY
"""One chunk of a job as one task of someone else's engine (Dask, Ray): no worker loop.

The engine schedules, places, retries and cancels; each of its tasks calls `run_chunk`,
which runs the chunk's tasks through deploy's own executor (a forked task process:
timeouts, per-task retries, output capture, metrics, exactly as every other worker) and

- with a shared store (`job["store"]` a URI every engine worker opens): writes the chunk's
  log and result into the job directory itself (exclusive creates, first publisher wins)
  and returns None;
- without one (the job directory stays on the client): returns the chunk's log and rows
  as one opaque `bytes` payload, which the client writes with `publish(store, payload)`.

The chunk numbered `spec.chunk_count` is the combiner; its input is `combiner_inputs(...)`.
The client side builds the job with `engine_job(...)`. Imports: jobdir, store, the worker.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

from ..jobdir import cancel, layout
from ..jobdir.results import C_FAILED, C_OK, ChunkResult, PackedResult, canceled, unfinished
from ..jobdir.spec import JobSpec
from . import executor as ex
from . import runner

PAYLOAD_VERSION = 1
_IDLE_SECONDS = 60.0          # a job's task processes not used for this long are ended


# ---------------------------------------------------------------------------- the job

def engine_job(spec: JobSpec, function: bytes | None, combiner: bytes | None = None,
               store: str | None = None) -> dict[str, Any]:
    """The plain data every engine task of a job gets (the engine shares one copy: Dask
    scatter, ray.put): the spec, the pickled function and combiner, and the shared store's
    URI, or None when the job directory is on the client. With a shared store the pickles
    may be None: the tasks read them from the job directory."""
    return {"version": PAYLOAD_VERSION, "id": spec.id, "spec": spec.to_json().decode(),
            "function": function, "combiner": combiner, "store": store}


def combiner_inputs(job: dict[str, Any], payloads: Sequence[bytes | None]) -> bytes | None:
    """The combiner's input (`inputs=` of run_chunk for chunk `spec.chunk_count`), built from
    the map chunks' payloads in chunk order, or None when some task did not complete (the
    combiner does not run then). With a shared store the payloads are None and the values
    are read from the job directory."""
    spec = _job_spec(job)
    values: dict[str, Any] = {}
    store = _store(job)
    for chunk in range(spec.chunk_count):
        payload = payloads[chunk] if chunk < len(payloads) else None
        if payload is not None:
            raw = pickle.loads(payload)["result"]
        elif store is not None:
            try:
                raw = store.get(layout.result(chunk))
            except FileNotFoundError:
                return None
        else:
            return None
        result = ChunkResult.from_dict(pickle.loads(raw))
        if result.status.count(C_OK) != len(result):
            return None
        values.update(zip(map(spec.task_name, result.index), result.values))
    return runner.dumps([values])


# ---------------------------------------------------------------------------- the task

def run_chunk(job: dict[str, Any], chunk: int, attempt: int = 0, inputs: bytes | None = None,
              should_stop: Callable[[], bool] | None = None,
              host: str | None = None) -> bytes | None:
    """Run chunk `chunk` of `job` (from `engine_job`) in this engine worker; see the module
    docstring for what it returns. `attempt`: how many times the chunk was started before
    (a lost engine worker), counted into the rows' attempts; with a shared store the claims
    in the job directory count them instead. `inputs`: the chunk's input file (a pickled
    list of items), read from the store when None; for the combiner, combiner_inputs().
    `should_stop()`: polled while tasks run; True stops them (the engine canceled the task),
    their rows then say Canceled. `host`: the host column (default: this machine's name)."""
    state = _state(job, host)
    spec, store = state.spec, state.store
    combine = chunk == spec.chunk_count
    tasks = range(0, 1) if combine else spec.chunk_tasks(chunk)
    if store is not None:
        if _done(store, chunk, combine):
            return None                 # published already (a retried or duplicated task)
        attempt = _claim(store, chunk, attempt, state.worker)
    if attempt > spec.worker_retries:
        why = (f"the worker running this task was lost {attempt} times "
               f"(worker_retries={spec.worker_retries})")
        rows = unfinished(tasks, [attempt] * len(tasks), C_FAILED, "WorkerLost", why,
                          runner.HOST, state.worker)
        return _deliver(state, chunk, attempt, runner.dumps_result(rows), b"", rows.failed())
    why_stopped = None
    if should_stop is not None and should_stop():
        why_stopped = "the job was canceled"
    elif store is not None and state.cancel_seen(store):
        why_stopped = cancel.reason(store)
    if why_stopped is not None:          # canceled before it began: nothing runs
        rows = canceled(tasks, [attempt + 1] * len(tasks), why_stopped, runner.HOST, state.worker)
        return _deliver(state, chunk, attempt, runner.dumps_result(rows), b"", None)
    if inputs is None:
        if store is None:
            raise ValueError(f"chunk {chunk}: no inputs given and the job has no shared store")
        inputs = store.get(layout.inputs(chunk)) if not combine else combiner_inputs(job, [])
        if inputs is None:
            return None                 # a map task failed: the combiner does not run
    first = attempt + 1
    batch = (inputs, 0 if combine else tasks.start, first, first + spec.max_retries)
    fd, log_path = tempfile.mkstemp(prefix=f"deploy-{spec.id}-{chunk}-", suffix=".log")
    os.close(fd)
    stopped = [False]

    def poll() -> bool:
        if stopped[0]:
            return False
        if should_stop is not None and should_stop():
            stopped[0] = True
        elif store is not None and state.cancel_seen(store):
            stopped[0] = True
        return not stopped[0]

    executor = state.take()
    try:
        try:
            executor.submit("combine" if combine else "map", "kwargs" if combine else spec.call_style,
                            batch, log_path)
            result: ChunkResult | PackedResult = executor.collect(poll)
        except ex.BatchError as err:
            result = unfinished(tasks, [first] * len(tasks), C_FAILED, "ChunkError",
                                f"the chunk could not be started: {err}", runner.HOST, state.worker)
        except ex.Interrupted as stop:
            result = stop.result
            why = cancel.reason(store) if store is not None else cancel.CANCELED
            result.extend(ex.canceled_calls(stop.unrun, why, state.worker))
        with open(log_path, "rb") as f:
            log = f.read()
    finally:
        state.give_back(executor)
        os.unlink(log_path)
    if isinstance(result, PackedResult):
        raw, failed = bytes(result.raw), result.failed()
    else:
        result = result.sorted()
        raw, failed = runner.dumps_result(result), result.failed()
    return _deliver(state, chunk, attempt, raw, log, failed)


def _deliver(state: "_JobState", chunk: int, attempt: int, raw: bytes, log: bytes,
             failed: int | None) -> bytes | None:
    """Publish into the shared store (None), or the payload for the client's `publish`."""
    payload = {"version": PAYLOAD_VERSION, "chunk": chunk, "attempt": attempt, "result": raw,
               "log": log, "failed": failed, "host": runner.HOST, "worker": state.worker}
    if state.store is None:
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    _write(state.store, state.spec, payload)
    return None


# ---------------------------------------------------------------------------- client side

def publish(store: Any, payload: bytes) -> dict[str, Any]:
    """Write a payload returned by run_chunk into the job directory `store` (a Storage):
    the chunk's log, then its result (exclusive: the first publisher wins), and for a
    fail_fast job with a failed task the cancel marker. Returns {"chunk", "published",
    "failed": the first failed task's name or None, "host"}."""
    data = pickle.loads(payload)
    spec = JobSpec.from_json(store.get(layout.SPEC))
    return _write(store, spec, data)


def _write(store: Any, spec: JobSpec, data: dict[str, Any]) -> dict[str, Any]:
    chunk, failed = data["chunk"], data["failed"]
    combine = chunk == spec.chunk_count
    if data["log"]:
        store.create_exclusive(layout.log(chunk), data["log"])
    published = store.create_exclusive(layout.COMBINED if combine else layout.result(chunk),
                                       data["result"])
    name = None
    if failed is not None:
        name = (spec.combiner_task_name() if combine
                else spec.task_name(spec.chunk_tasks(chunk)[failed]))
    if published and name is not None and spec.fail_fast and not combine:
        store.create_exclusive(layout.CANCEL, json.dumps(
            {"reason": "fail_fast", "task": name, "time": time.time()}).encode())
    return {"chunk": chunk, "published": published, "failed": name, "host": data.get("host")}


def lost(store: Any, chunk: int, attempt: int, why: str, exception: str = "WorkerLost") -> bool:
    """Failed rows for a chunk whose engine task itself failed past the engine's retries
    (its worker was lost, or run_chunk could not run); True if they were published."""
    spec = JobSpec.from_json(store.get(layout.SPEC))
    combine = chunk == spec.chunk_count
    tasks = range(0, 1) if combine else spec.chunk_tasks(chunk)
    rows = unfinished(tasks, [attempt] * len(tasks), C_FAILED, exception, why, runner.HOST, "client")
    return store.create_exclusive(layout.COMBINED if combine else layout.result(chunk),
                                  runner.dumps_result(rows))


# ---------------------------------------------------------------------------- per process

class _JobState:
    """What an engine worker process keeps for a job between its chunks: the spec, the
    functions, the store, and idle task processes (forked once, reused chunk after chunk)."""

    def __init__(self, job: dict[str, Any], host: str | None) -> None:
        self.spec = _job_spec(job)
        self.store = _store(job)
        functions = {}
        if job.get("function") is not None:
            functions["map"] = pickle.loads(job["function"])
        elif self.store is not None and self.spec.function_stored:
            functions["map"] = pickle.loads(self.store.get(layout.FUNCTION))
        if job.get("combiner") is not None:
            functions["combine"] = pickle.loads(job["combiner"])
        elif self.spec.has_combiner and self.store is not None:
            functions["combine"] = pickle.loads(self.store.get(layout.COMBINER))
        if "map" not in functions:
            raise ValueError(f"job {self.spec.name}: the engine task got no function")
        self.functions = functions
        self.worker = f"{host or runner.HOST}-{os.getpid()}"
        self.idle: list[tuple[int, ex.ForkExecutor]] = []
        self.used = time.monotonic()
        self.busy = 0                   # chunks running now
        self.next_cancel_check = 0.0
        self.canceled = False
        self.lock = threading.Lock()

    def take(self) -> ex.ForkExecutor:
        """An idle task process forked by this thread (the kernel ends a task process when
        the thread that forked it exits), else a new one."""
        me = threading.get_ident()
        with self.lock:
            self.used = time.monotonic()
            self.busy += 1
            for pos, (owner, executor) in enumerate(self.idle):
                if owner == me:
                    del self.idle[pos]
                    return executor
        resources = getattr(self.spec, "resources", None)
        if resources:                   # memory_gb is enforced by the task process's executor
            return ex.ForkExecutor(self.functions, self.spec.task_timeout, self.worker,
                                   resources=resources)
        return ex.ForkExecutor(self.functions, self.spec.task_timeout, self.worker)

    def give_back(self, executor: ex.ForkExecutor) -> None:
        with self.lock:
            self.used = time.monotonic()
            self.busy -= 1
            self.idle.append((threading.get_ident(), executor))

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for _, executor in idle:
            executor.close()

    def cancel_seen(self, store: Any) -> bool:
        """The shared store's cancel marker, looked for at most every poll interval (not
        once for all: resume() removes it and the job's chunks run here again)."""
        now = time.monotonic()
        if now >= self.next_cancel_check:
            self.canceled = store.exists(layout.CANCEL)
            self.next_cancel_check = now + (0.0 if store.local_path("") else store.poll_seconds)
        return self.canceled


_states: dict[str, _JobState] = {}
_states_lock = threading.Lock()


def _state(job: dict[str, Any], host: str | None) -> _JobState:
    """This process's state for the job (made at its first chunk)."""
    global _reaper
    if host:
        runner.HOST = host          # the host column of rows made here and in forked task processes
    with _states_lock:
        state = _states.get(job["id"])
        if state is None:
            state = _states[job["id"]] = _JobState(job, host)
        if _reaper is None:
            _reaper = threading.Thread(target=_reap_idle, name="deploy-engine-reaper", daemon=True)
            _reaper.start()
    return state


_reaper: threading.Thread | None = None


def _reap_idle() -> None:
    """End the task processes of jobs that ran no chunk here for a minute (their job is
    over, or has gone elsewhere); a later chunk forks new ones."""
    while True:
        time.sleep(_IDLE_SECONDS / 4)
        now = time.monotonic()
        with _states_lock:
            stale = [_states.pop(k) for k, s in list(_states.items())
                     if now - s.used > _IDLE_SECONDS and not s.busy]
            for state in stale:
                _opened.pop(state.spec.id, None)
        for state in stale:
            state.close()


def close_all() -> None:
    """End every task process this module started (an engine worker shutting down)."""
    with _states_lock:
        states = list(_states.values())
        _states.clear()
    for state in states:
        state.close()


_opened: dict[str, tuple[JobSpec, Any]] = {}     # job id -> (spec, shared store or None)


def _opened_job(job: dict[str, Any]) -> tuple[JobSpec, Any]:
    """The job's spec and shared store, parsed and opened once per process (the job dict
    itself is left as the engine gave it: it may be shipped to other workers)."""
    got = _opened.get(job["id"])
    if got is None:
        raw = job["spec"]
        spec = JobSpec.from_json(raw.encode() if isinstance(raw, str) else raw)
        store = None
        if job.get("store"):
            from ..store import open_store
            store = open_store(job["store"])
        got = _opened[job["id"]] = (spec, store)
    return got


def _job_spec(job: dict[str, Any]) -> JobSpec:
    return _opened_job(job)[0]


def _store(job: dict[str, Any]) -> Any:
    return _opened_job(job)[1]


def _done(store: Any, chunk: int, combine: bool) -> bool:
    return store.exists(layout.COMBINED if combine else layout.result(chunk))


def _claim(store: Any, chunk: int, attempt: int, worker: str) -> int:
    """Record this start of the chunk as its next claim; the attempt is how many came before."""
    taken = [p[1] for p in map(layout.parse_claim, store.list(layout.CLAIMS))
             if p and p[0] == chunk]
    attempt = max(attempt, max(taken) + 1 if taken else 0)
    while not store.create_exclusive(layout.claim(chunk, attempt), worker.encode()):
        attempt += 1
    return attempt
