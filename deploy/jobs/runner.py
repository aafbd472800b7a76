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
import sys
import time
from typing import Any, Callable, Sequence

from .results import C_FAILED, C_OK, ChunkResult

LOG_MARK = b"\x1e"   # a log line starting with this names the task whose output follows
HOST = os.environ.get("DEPLOY_HOST_LABEL") or os.uname().nodename
_MARKER = re.compile(rb"\x1e(-?\d+) (\d+)(?: @(\d+))?\n")
_SLOW = 0.001        # tasks longer than this get their own memory sample
_FD_CHECK = 20e-6    # tasks longer than this are checked for output written around Python

class Batch:
    """Tasks to run in order: their indices, items, first and last allowed attempts.
    Attempts are ints when the same for all (a chunk), lists otherwise (a retry)."""

    __slots__ = ("indices", "items", "first", "last")

    def __init__(self, indices: Sequence[int], items: list, first: int | list[int],
                 last: int | list[int]) -> None:
        self.indices, self.items, self.first, self.last = indices, items, first, last

    @classmethod
    def from_inputs(cls, raw: bytes, base: int, first: int, last: int) -> "Batch":
        """A published input chunk (a pickled list of items) whose first task is `base`."""
        items = pickle.loads(raw)
        return cls(range(base, base + len(items)), items, first, last)

    def __len__(self) -> int:
        return len(self.items)

    def attempts(self, pos: int) -> tuple[int, int]:
        if isinstance(self.first, int):
            return self.first, self.last
        return self.first[pos], self.last[pos]

    def take(self, positions: Sequence[int]) -> "Batch":
        """The calls at `positions`, in order, with attempts as lists (so they can change)."""
        return Batch([self.indices[p] for p in positions], [self.items[p] for p in positions],
                     [self.attempts(p)[0] for p in positions],
                     [self.attempts(p)[1] for p in positions])


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
                import traceback
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

    `slot`: shared memory the worker reads for timeouts and lost task processes (see
    `Slot`); `output`: the TaskOutput that attributes printed output; `flush()`: called
    after a call once `flush_every` seconds passed since the last; `before(pos)`: called
    before each call.
    """

    def __init__(self, slot: "Slot | None" = None, output: "TaskOutput | None" = None,
                 flush: Callable[[], None] | None = None, flush_every: float = 0.5,
                 before: Callable[[int], None] | None = None) -> None:
        self.slot, self.output, self.flush = slot, output, flush
        self.flush_every, self.before = flush_every, before


class Slot:
    """Where the task process shows what it runs: position in the batch, the attempt when
    it is a retry (else 0), and the start time. Shared memory: no system call per task."""

    SIZE = 24

    def __init__(self, memory: Any) -> None:
        self.ints = memoryview(memory)[:16].cast("q")
        self.start = memoryview(memory)[16:24].cast("d")

    def set_idle(self) -> None:
        self.ints[0], self.ints[1], self.start[0] = -1, 0, 0.0

    def read(self) -> tuple[int, int, float]:
        return self.ints[0], self.ints[1], self.start[0]


def run_calls(fn: Callable, batch: Batch, result: ChunkResult, style: str, hooks: Hooks) -> None:
    """Run each task as fn(**item), fn(item) or fn(*item) per `style`, re-running it while
    it raises and attempts remain, into `result`. This loop is the per-task overhead of
    every job, so its bookkeeping is inline and it reads the clock once per task: a task
    starts when the one before it ended."""
    kwargs_style, one_arg = style == "kwargs", style == "arg"
    now = time.time
    memory = peak_memory_mb()
    add_index, add_status, add_start = result.index.append, result.status.append, result.start.append
    add_end, add_attempt = result.end.append, result.attempt.append
    add_memory, add_value = result.memory.append, result.values.append
    output, before, flush, flush_every = hooks.output, hooks.before, hooks.flush, hooks.flush_every
    slot = hooks.slot
    ints = slot.ints if slot is not None else [0, 0]
    starts = slot.start if slot is not None else [0.0]
    indices, uniform = batch.indices, isinstance(batch.first, int)
    attempt, last = (batch.first, batch.last) if uniform else (0, 0)
    start = flushed = now()
    for pos, item in enumerate(batch.items):
        if before is not None:
            before(pos)
            start = now()
        if not uniform:
            attempt, last = batch.first[pos], batch.last[pos]
        ints[0] = pos
        starts[0] = start
        if output is not None:
            output.task, output.marked = (indices[pos], attempt), False
        tried = attempt
        while True:
            try:
                value = fn(**item) if kwargs_style else fn(item) if one_arg else fn(*item)
            except Exception as exc:
                end = now()
                if tried < last:
                    tried += 1
                    ints[1] = tried
                    start = starts[0] = end
                    if output is not None:
                        output.task, output.marked = (indices[pos], tried), False
                    continue
                memory = peak_memory_mb()
                import traceback
                result.add(indices[pos], C_FAILED, start, end, tried, memory, None,
                           (type(exc).__name__, str(exc), traceback.format_exc()))
            else:
                end = now()
                if end - start > _SLOW:
                    memory = peak_memory_mb()
                add_index(indices[pos])
                add_status(C_OK)
                add_start(start)
                add_end(end)
                add_attempt(tried)
                add_memory(memory)
                add_value(value)
            break
        if tried != attempt:
            ints[1] = 0
        if output is not None and (output.marked or end - start > _FD_CHECK):
            output.end()
        if flush is not None and end - flushed > flush_every:
            flush()
            flushed = end
        start = end


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
