"""Following one job's Ray tasks from submission to the end (the job's Ray driver).

`Scheduler` submits each chunk as a Ray task, publishes what the tasks return (when the
job directory is on the client), gives the chunks Ray could not finish their Failed rows,
stops everything on cancel or fail_fast, and runs the combiner as one more task. It runs
in a thread of the client (job directory on the client) or in `JobDriver`, a detached
actor on the head node (shared store), so that such a job outlives the client.
"""
from __future__ import annotations

import json
import os
import pickle
import threading
import time
from typing import Any

from ...jobdir import cancel, layout
from ...jobdir.results import canceled
from ...jobdir.spec import JobSpec
from ...store import Storage, open_store
from ...worker import engine_task
from ...worker.runner import HOST
from .tasks import chunk_task, node_ip

TICK = 0.2                      # seconds between looks at the cancel marker while waiting


class Scheduler:
    """One job's chunks as Ray tasks; see the module docstring. `store`: the job directory
    (on the client, or the shared store); `shared`: the tasks publish into it themselves."""

    def __init__(self, ray: Any, job: dict[str, Any], store: Storage, shared: bool,
                 options: dict[str, Any], chunks: list[int], combine: bool,
                 window: int | None, host: str = HOST) -> None:
        self.ray, self.job, self.store, self.shared = ray, job, store, shared
        self.spec = JobSpec.from_json(job["spec"].encode())
        self.options = options
        self.todo = list(chunks)            # chunks not submitted yet, in order
        self.combine = combine
        self.window = window                # at most this many tasks at once (None: all)
        self.pending: dict[Any, int] = {}   # ObjectRef -> chunk
        self.finished = False
        self.stopped: str | None = None     # why the job stopped early (cancel, fail_fast)
        self.error: str | None = None
        self.changed = threading.Condition()
        self.version = 0
        self.lock = threading.Lock()
        self.worker = f"ray-driver-{host}-{os.getpid()}"
        self.host = host
        self.beats = 0
        self.next_beat = 0.0
        self.job_ref = None
        self.remote = _remote_chunk(ray)

    # -- submitting --------------------------------------------------------------------

    def _submit(self, chunk: int, inputs: bytes | None) -> None:
        if self.job_ref is None:
            self.job_ref = self.ray.put(self.job)
        ref = self.remote.options(name=f"{self.spec.name}:{chunk}", **self.options).remote(
            self.job_ref, chunk, inputs)
        self.pending[ref] = chunk

    def _submit_more(self) -> None:
        with self.lock:
            while self.todo and self.stopped is None and \
                    (self.window is None or len(self.pending) < self.window):
                chunk = self.todo.pop(0)
                inputs = None if self.shared else self.store.get(layout.inputs(chunk))
                self._submit(chunk, inputs)

    # -- following ---------------------------------------------------------------------

    def run(self) -> None:
        """Follow the job to its end (the body of the client's thread or of the actor)."""
        try:
            self._beat(force=True)
            self._submit_more()
            self._follow()
            if self.combine and self.stopped is None:
                self._run_combiner()
        except Exception as exc:            # recorded for describe_failure; the job stalls
            self.error = f"the job's Ray driver failed: {type(exc).__name__}: {exc}"
            self.stop("the job's Ray driver failed")
        finally:
            self.finished = True
            try:
                self.store.delete(layout.heartbeat(self.worker))
            except OSError:
                pass
            self._notify()

    def _follow(self) -> None:
        ray = self.ray
        while self.pending:
            refs = list(self.pending)
            ready, _ = ray.wait(refs, num_returns=1, timeout=TICK)
            if ready and len(refs) > 1:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self._finish(ref)
            self._beat()
            if self.stopped is None and self.store.exists(layout.CANCEL):
                self.stop(cancel.reason(self.store))
            self._submit_more()

    def _finish(self, ref: Any) -> None:
        with self.lock:
            chunk = self.pending.pop(ref, None)
        if chunk is None:
            return
        try:
            payload = self.ray.get(ref)
        except Exception as exc:
            if self.stopped is None:
                self._lost(chunk, exc)
            return
        if payload is not None:
            if self.stopped is not None and pickle.loads(payload)["failed"] is not None:
                return                  # killed by the cancel: its tasks get Canceled rows
            info = engine_task.publish(self.store, payload)
            if info["failed"] is not None and self.spec.fail_fast and self.stopped is None \
                    and chunk < self.spec.chunk_count:
                self.stop(f"fail_fast: task {info['failed']} failed")
        self._notify()

    def _lost(self, chunk: int, exc: Exception) -> None:
        """Failed rows for a chunk Ray gave up on: its node or worker was lost past
        max_retries (WorkerLost), or the task could not start or run deploy's runner: its
        runtime_env failed, or the job's function cannot be loaded there (ChunkError)."""
        errors = getattr(self.ray, "exceptions", None)
        kind = type(exc).__name__
        text = _brief(exc)
        if errors is not None and isinstance(exc, getattr(errors, "RuntimeEnvSetupError", ())):
            engine_task.lost(self.store, chunk, 1, f"Ray could not set up the tasks' runtime_env "
                             f"(additional_packages): {text}", exception="ChunkError")
        elif errors is not None and isinstance(exc, errors.RayTaskError):
            engine_task.lost(self.store, chunk, 1, f"the Ray task could not run the chunk: {text}",
                             exception="ChunkError")
        else:
            engine_task.lost(self.store, chunk, self.spec.worker_retries + 1,
                             f"Ray lost the task's worker or node {self.spec.worker_retries + 1} "
                             f"times (max_retries={self.spec.worker_retries}): {kind}: {text}")
        self._notify()

    def _run_combiner(self) -> None:
        n = self.spec.chunk_count
        if self.store.exists(layout.COMBINED):
            return
        if self.shared:
            inputs = None               # the task reads the map results from the store
        else:
            payloads = []
            for chunk in range(n):
                try:
                    payloads.append(pickle.dumps({"result": self.store.get(layout.result(chunk))}))
                except FileNotFoundError:
                    return
            inputs = engine_task.combiner_inputs(self.job, payloads)
            if inputs is None:
                return                  # a task did not complete: the combiner does not run
        with self.lock:
            if self.stopped is not None:
                return
            self._submit(n, inputs)
        self._follow()

    # -- stopping ----------------------------------------------------------------------

    def stop(self, why: str, wait: float = 30.0) -> None:
        """Cancel every task (running ones are killed: ray.cancel(force=True)), wait until
        Ray reports them ended, and give the chunks without a result Canceled rows."""
        with self.lock:
            if self.stopped is None:
                self.stopped = why
            refs = list(self.pending)
            self.todo.clear()
        if refs and self.shared and self.store.exists(layout.CANCEL):
            # the tasks see the marker themselves and end with Canceled rows; killing one
            # whose task process Ray ends first could publish that process's death instead
            _, refs = self.ray.wait(refs, num_returns=len(refs), timeout=1.0 + self.store.poll_seconds)
        for ref in refs:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass                    # finished meanwhile
        if refs:
            try:
                self.ray.wait(refs, num_returns=len(refs), timeout=wait)
            except Exception:
                pass
        done = set(self.store.list(layout.RESULTS))
        for chunk in range(self.spec.chunk_count):
            if layout.chunk_name(chunk) not in done:
                tasks = self.spec.chunk_tasks(chunk)
                rows = canceled(tasks, [1] * len(tasks), self.stopped, self.host, self.worker)
                self.store.create_exclusive(layout.result(chunk), pickle.dumps(rows.to_dict()))
        self._notify()

    # -- news --------------------------------------------------------------------------

    def _beat(self, force: bool = False) -> None:
        """The driver's heartbeat in the job directory: the job is Running while it is fresh."""
        now = time.monotonic()
        if force or now >= self.next_beat:
            self.beats += 1
            self.store.put(layout.heartbeat(self.worker), json.dumps(
                {"worker": self.worker, "host": self.host, "pid": os.getpid(),
                 "time": time.time(), "seq": self.beats}).encode())
            self.next_beat = now + self.spec.heartbeat_seconds

    def _notify(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until something was published after version `seen` (or `timeout`)."""
        with self.changed:
            self.changed.wait_for(lambda: self.version != seen or self.finished, timeout)
            return self.version


def _brief(exc: Exception) -> str:
    """An engine error in a line or two: its first line and, for a traceback, its last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text[:1000]


_remote: Any = None


def _remote_chunk(ray: Any) -> Any:
    """chunk_task as a Ray remote function, made once per process (Ray exports it once)."""
    global _remote
    if _remote is None:
        _remote = ray.remote(chunk_task)
    return _remote


class JobDriver:
    """A job's detached Ray actor (shared store): runs its Scheduler in a thread, so that
    the job outlives the client, and ends itself when the job is done."""

    def __init__(self, job: dict[str, Any], options: dict[str, Any], chunks: list[int],
                 combine: bool, window: int | None) -> None:
        import ray
        self.scheduler = Scheduler(ray, job, open_store(job["store"]), True, options, chunks,
                                   combine, window, host=node_ip())
        self.thread = threading.Thread(target=self._run, daemon=True, name="deploy-ray-driver")
        self.thread.start()

    def _run(self) -> None:
        import ray
        self.scheduler.run()
        ray.get_runtime_context().current_actor.__ray_terminate__.remote()

    def ready(self) -> bool:
        return True

    def cancel(self) -> None:
        self.scheduler.stop("the job was canceled")

    def state(self) -> dict[str, Any]:
        return {"finished": self.scheduler.finished, "error": self.scheduler.error,
                "pending": len(self.scheduler.pending)}
