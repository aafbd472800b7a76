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
_FD_CHECK = 20e-6    # tasks longer than this are checked for output written around Python

Call = tuple         # (task_index, item, attempt, last_attempt)
STYLES = ("kwargs", "arg", "args")


def inputs_to_calls(raw: bytes, base: int, first: int, last: int) -> list[Call]:
    """A published input chunk (a pickled list of items) as calls; indices start at `base`."""
    return [(base + pos, item, first, last) for pos, item in enumerate(pickle.loads(raw))]


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


class Hooks:
    """What the task loop reports to, besides the result: all optional.

    `slot`/`pack`: shared memory where the running call's position, attempt and start go
    (the worker reads it for timeouts and lost task processes); `output`: the TaskOutput
    that attributes printed output; `flush(now)`: called after a call once `flush_every`
    seconds passed since the last flush; `before(pos)`: called before each call.
    """

    def __init__(self, slot: Any = None, pack: Callable | None = None,
                 output: "TaskOutput | None" = None, flush: Callable[[], None] | None = None,
                 flush_every: float = 0.5, before: Callable[[int], None] | None = None) -> None:
        self.slot, self.pack, self.output = slot, pack, output
        self.flush, self.flush_every, self.before = flush, flush_every, before


def run_calls(fn: Callable, calls: list[Call], result: ChunkResult, style: str, hooks: Hooks) -> None:
    """Run each call as fn(**item), fn(item) or fn(*item) per `style`, re-running it while
    it raises and attempts remain, into `result`. This loop is the per-task overhead of
    every job, so the bookkeeping is inline rather than in callbacks."""
    kwargs_style, one_arg = style == "kwargs", style == "arg"
    now = time.time
    memory = peak_memory_mb()
    add_index, add_status, add_start = result.index.append, result.status.append, result.start.append
    add_end, add_attempt = result.end.append, result.attempt.append
    add_memory, add_value = result.memory.append, result.values.append
    slot, pack, output, before, flush = hooks.slot, hooks.pack, hooks.output, hooks.before, hooks.flush
    flush_every = hooks.flush_every
    flushed = now()
    for pos, (index, item, attempt, last) in enumerate(calls):
        if before is not None:
            before(pos)
        while True:
            start = now()
            if slot is not None:
                pack(slot, 0, pos, attempt, start)
            if output is not None:
                output.task, output.marked = (index, attempt), False
            try:
                value = fn(**item) if kwargs_style else fn(item) if one_arg else fn(*item)
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
                add_index(index)
                add_status(C_OK)
                add_start(start)
                add_end(end)
                add_attempt(attempt)
                add_memory(memory)
                add_value(value)
            break
        if output is not None and (output.marked or end - start > _FD_CHECK):
            output.end()
        if flush is not None and end - flushed > flush_every:
            flush()
            flushed = end


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
        if self.stdout.dirty:
            self.stdout.flush_raw()
        if self.stderr.dirty:
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
        self.dirty = False

    def write(self, text: str) -> int:
        owner = self.owner
        if not owner.marked and owner.task is not None and text:
            owner.stdout.flush_raw()
            owner.stderr.flush_raw()
            owner._mark()
        self.dirty = True
        return self.raw.write(text)

    def flush_raw(self) -> None:
        self.raw.flush()
        self.dirty = False

    def flush(self) -> None:
        self.flush_raw()

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
