"""Runs tasks: calls the function, retries what raised, times each call, attributes output.

This is the hot path of every worker, so it records into columns (`ChunkResult`) and does
per-task work only where a task needs it: a log marker only for tasks that print, a memory
sample only for tasks longer than a millisecond. Standard library only (cloudpickle lazily).
"""
from __future__ import annotations

import io
import os
import pickle
import re
import resource
import socket
import sys
import time
import traceback
from typing import Any, Callable

from .results import C_FAILED, C_OK, ChunkResult

LOG_MARK = b"\x1e"   # a log line starting with this names the task whose output follows
HOST = os.environ.get("DEPLOY_HOST_LABEL") or socket.gethostname()
_MARKER = re.compile(rb"\x1e(-?\d+) (\d+)(?: @(\d+))?\n")
_SLOW = 0.001        # tasks longer than this get their own memory sample

Call = tuple         # (task_index, kwargs, attempt, last_attempt)


def dumps(obj: Any) -> bytes:
    """Pickle; cloudpickle only for what plain pickle cannot carry (lambdas, local classes)."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def dumps_result(result: ChunkResult) -> bytes:
    """Pickle a chunk's result; a value that cannot be pickled fails its task, not the chunk."""
    try:
        return dumps(result.to_dict())
    except Exception:
        for pos, value in enumerate(result.values):
            try:
                dumps(value)
            except Exception as exc:
                result.values[pos] = None
                result.status[pos] = C_FAILED
                result.errors[pos] = (type(exc).__name__, f"the task's return value cannot be "
                                      f"pickled: {exc}", traceback.format_exc())
        return dumps(result.to_dict())


def peak_memory_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def worker_id() -> str:
    return f"{HOST}-{os.getpid()}"


def run_calls(fn: Callable, calls: list[Call], result: ChunkResult,
              before: Callable[[int, int, int], None], after: Callable[[int], None]) -> None:
    """Run each call (re-running it while it raises and attempts remain) into `result`.
    `before(pos, index, attempt)` runs before each attempt, `after(pos)` after each call."""
    now = time.time
    memory = peak_memory_mb()
    for pos, (index, kwargs, attempt, last) in enumerate(calls):
        while True:
            before(pos, index, attempt)
            start = now()
            try:
                value = fn(**kwargs)
            except Exception as exc:
                end = now()
                if attempt < last:
                    attempt += 1
                    continue
                memory = peak_memory_mb()
                result.add(index, C_FAILED, start, end, attempt, memory, None,
                           (type(exc).__name__, str(exc), traceback.format_exc()))
            else:
                end = now()
                if end - start > _SLOW:
                    memory = peak_memory_mb()
                result.add(index, C_OK, start, end, attempt, memory, value)
            break
        after(pos)


# ---------------------------------------------------------------------------- output

def marker(index: int, attempt: int, began_at: int | None = None) -> bytes:
    at = f" @{began_at}" if began_at is not None else ""
    return LOG_MARK + f"{index} {attempt}{at}\n".encode()


class TaskOutput:
    """The task process's stdout/stderr while it runs a chunk: both go to one log file, and
    a marker line names the task before the first output of each task that has any."""

    def __init__(self, fd: int, err_fd: int | None = None) -> None:
        self.fd = fd
        self.task: tuple[int, int] | None = None
        self.marked = True
        self.pos = os.lseek(fd, 0, os.SEEK_END)
        self.stdout = _MarkingStream(self, fd)
        self.stderr = _MarkingStream(self, fd if err_fd is None else err_fd)

    def begin(self, index: int, attempt: int) -> None:
        self.task, self.marked = (index, attempt), False

    def _mark(self, at_end: bool = False) -> None:
        """Write the marker; output that reached the fd without Python (os.write, child
        processes) since the last marker is claimed by offset."""
        self.marked = True
        pos = os.lseek(self.fd, 0, os.SEEK_END)
        began = self.pos if pos != self.pos else None
        if at_end and began is None:
            return
        data = marker(*self.task, began)
        os.write(self.fd, data)
        self.pos = pos + len(data)

    def end(self) -> None:
        """After a task: flush, and claim any output it wrote around Python."""
        self.stdout.flush_raw()
        self.stderr.flush_raw()
        if self.marked:
            self.pos = os.lseek(self.fd, 0, os.SEEK_END)
        else:
            self._mark(at_end=True)


class _MarkingStream(io.TextIOBase):
    """A line-buffered text stream on fd 1 or 2 that writes the task marker first."""

    def __init__(self, owner: TaskOutput, fd: int) -> None:
        self.owner, self._fd = owner, fd
        self.raw = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), line_buffering=True)

    def write(self, text: str) -> int:
        owner = self.owner
        if not owner.marked and owner.task is not None and text:
            owner.stdout.flush_raw()
            owner.stderr.flush_raw()
            owner._mark()
        return self.raw.write(text)

    def flush_raw(self) -> None:
        self.raw.flush()

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return self.raw.encoding

    @property
    def buffer(self):
        return self.raw.buffer


def split_log(raw: bytes) -> list[tuple[int, int, bytes]]:
    """Cut a chunk's log into (task_index, attempt, output) pieces, in order of appearance.
    Output before any marker belongs to task -1 (the worker itself)."""
    marks = list(_MARKER.finditer(raw))
    pieces: list[tuple[int, int, bytes]] = []
    owner, cursor = (-1, 0), 0
    for m in marks:
        index, attempt = int(m.group(1)), int(m.group(2))
        began = int(m.group(3)) if m.group(3) is not None else m.start()
        began = max(cursor, min(began, m.start()))
        if began > cursor:
            pieces.append((*owner, raw[cursor:began]))
        if m.start() > began:
            pieces.append((index, attempt, raw[began:m.start()]))
        owner, cursor = (index, attempt), m.end()
    if cursor < len(raw):
        pieces.append((*owner, raw[cursor:]))
    return [p for p in pieces if p[2]]
