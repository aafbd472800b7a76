"""Runs ONE task: calls the function, retries what raised, times it, captures the outcome.

Everything here is imported by the worker's executor, so it stays on the standard library
plus cloudpickle (only when a value needs it).
"""
from __future__ import annotations

import io
import os
import pickle
import resource
import socket
import sys
import time
import traceback
from typing import Any, Callable

LOG_MARK = b"\x1e"          # a log line starting with this opens one task attempt's output
HOST = socket.gethostname()

COMPLETED, FAILED, CANCELED = "Completed", "Failed", "Canceled"


def dumps_value(value: Any) -> bytes:
    """Pickle a task's return value; cloudpickle only for what plain pickle cannot carry."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def peak_memory_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def make_row(name: str, index: int, status: str, *, attempt: int, worker: str,
             start: float | None = None, end: float | None = None, exc_type: str | None = None,
             message: str | None = None, tb: str | None = None, value: bytes | None = None,
             memory: float | None = None) -> dict:
    """One metrics row; `_value` carries the pickled result and is not a metrics column."""
    return {
        "task_name": name, "task_index": index, "status": status,
        "start_time": start, "end_time": end,
        "run_time": None if start is None or end is None else end - start,
        "exception": exc_type, "exception_message": message, "exception_traceback": tb,
        "host": HOST, "worker": worker, "attempt": attempt, "peak_memory_mb": memory,
        "_value": value,
    }


def log_marker(index: int, attempt: int) -> bytes:
    return LOG_MARK + f"{index} {attempt}\n".encode()


def run_task(fn: Callable[..., Any], name: str, index: int, kwargs: dict, *, attempt: int,
             max_attempts: int, worker: str, begin: Callable[[int], None]) -> dict:
    """Call fn(**kwargs), re-running it while it raises and attempts remain; one row back.

    `begin(attempt)` runs before each attempt: it marks the log and tells the worker.
    """
    while True:
        begin(attempt)
        start = time.time()
        try:
            value = fn(**kwargs)
            payload = dumps_value(value)
        except Exception as exc:  # a task's failure is data, not a worker error
            end = time.time()
            if attempt < max_attempts:
                attempt += 1
                continue
            return make_row(name, index, FAILED, attempt=attempt, worker=worker, start=start,
                            end=end, exc_type=type(exc).__name__, message=str(exc),
                            tb=traceback.format_exc(), memory=peak_memory_mb())
        end = time.time()
        return make_row(name, index, COMPLETED, attempt=attempt, worker=worker, start=start,
                        end=end, value=payload, memory=peak_memory_mb())


def split_log(raw: bytes) -> list[tuple[int, int, bytes]]:
    """Cut a chunk's log into (task_index, attempt, output) pieces, in order."""
    pieces: list[tuple[int, int, bytes]] = []
    current: tuple[int, int] | None = None
    buf = io.BytesIO()
    for line in raw.splitlines(keepends=True):
        if line.startswith(LOG_MARK):
            if current is not None:
                pieces.append((*current, buf.getvalue()))
            head = line[1:].split()
            current = (int(head[0]), int(head[1])) if len(head) == 2 else (-1, 0)
            buf = io.BytesIO()
        else:
            buf.write(line)
    if current is not None:
        pieces.append((*current, buf.getvalue()))
    elif buf.getvalue():
        pieces.append((-1, 0, buf.getvalue()))
    return pieces


def worker_id() -> str:
    return f"{HOST}-{os.getpid()}"
