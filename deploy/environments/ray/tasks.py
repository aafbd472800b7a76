"""What runs on the Ray cluster: one chunk of a job as one Ray task.

The task runs deploy's own task runner (deploy.worker.engine_task) with the Ray node's
address as the host column. With a shared store it also keeps a heartbeat in the job
directory while it runs (so a reader sees which worker runs which claim); without one it
returns the chunk's payload, which the client publishes.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any


def node_ip() -> str:
    """The address of the Ray node this process runs on (the host column)."""
    import ray
    try:
        return ray.util.get_node_ip_address()
    except Exception:
        return os.uname().nodename


def chunk_task(job: dict[str, Any], chunk: int, inputs: bytes | None) -> bytes | None:
    """Run chunk `chunk` of `job` (engine_task.engine_job) here; its payload, or None when
    it published into the shared store itself."""
    from deploy.worker import engine_task
    host = node_ip()
    if not job.get("store"):
        return engine_task.run_chunk(job, chunk, 0, inputs, host=host)
    from deploy.jobdir import layout
    if _opened(job)[1].exists(layout.CANCEL):
        return None                     # canceled before it started: the driver sweeps it
    beat = _Heartbeat(job, f"{host}-{os.getpid()}", host)
    try:
        return engine_task.run_chunk(job, chunk, 0, inputs, should_stop=beat, host=host)
    finally:
        beat.end()


class _Heartbeat:
    """heartbeats/<worker> in the shared job directory, renewed while the chunk's tasks run
    (the worker name is the one engine_task writes into the chunk's claim)."""

    def __init__(self, job: dict[str, Any], worker: str, host: str) -> None:
        self.seconds, self.store = _opened(job)
        self.worker, self.host, self.seq, self.next = worker, host, 0, 0.0
        self()

    def __call__(self) -> bool:
        """Renew the heartbeat when due; never asks the chunk to stop (ray.cancel does)."""
        now = time.monotonic()
        if now >= self.next:
            from deploy.jobdir import layout
            self.seq += 1
            self.store.put(layout.heartbeat(self.worker), json.dumps(
                {"worker": self.worker, "host": self.host, "pid": os.getpid(), "time": time.time(),
                 "seq": self.seq}).encode())
            self.next = now + self.seconds
        return False

    def end(self) -> None:
        from deploy.jobdir import layout
        try:
            self.store.delete(layout.heartbeat(self.worker))
        except OSError:
            pass


_jobs: dict[str, tuple[float, Any]] = {}


def _opened(job: dict[str, Any]) -> tuple[float, Any]:
    """(heartbeat interval, shared store) of a job, once per process."""
    got = _jobs.get(job["id"])
    if got is None:
        from deploy.store import open_store
        spec = json.loads(job["spec"])
        got = _jobs[job["id"]] = (float(spec.get("heartbeat_seconds", 2.0)), open_store(job["store"]))
    return got
