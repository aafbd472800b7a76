"""Runs tasks: calls the function, retries what raised, times each call, attributes output.

This is the hot path of every worker, so it records into columns (`ChunkResult`) and does
per-task work only where a task needs it: a log marker only for tasks that print, a memory
sample only for tasks longer than a millisecond. Standard library only (cloudpickle lazily).
"""
from __future__ import annotations

import array
import io
import os
import pickle
import re
import resource
import sys
import time
from typing import Any, Callable, Sequence

from ..jobdir.results import C_FAILED, C_OK, ChunkResult

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
    except Control:
        raise
    except BaseException:           # a __reduce__ may raise anything
        import cloudpickle
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def dumps_result(result: ChunkResult) -> bytes:
    """Pickle a chunk's result; a value that cannot be pickled fails its task, not the chunk."""
    try:
        return dumps(result.to_dict())
    except Control:
        raise
    except BaseException:
        for pos, value in enumerate(result.values):
            try:
                dumps(value)
            except Control:
                raise
            except BaseException as exc:
                name, message, tb = describe(exc)
                result.values[pos] = None
                result.status[pos] = C_FAILED
                result.errors[pos] = (name, f"the task's return value cannot be pickled: "
                                      f"{message}", tb)
        return dumps(result.to_dict())


def peak_memory_mb() -> float:
    """This process's lifetime peak resident memory, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class MemoryGauge:
    """Peak resident memory of this process per interval: on Linux VmHWM from
    /proc/self/status, reset after each reading through /proc/self/clear_refs (about 10 us
    a sample); elsewhere (or where /proc is closed) the lifetime peak."""

    def __init__(self) -> None:
        self.fds: tuple[int, int] | None = None
        self.ids: list[tuple[int, int]] = []
        try:
            status = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            clear = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            os.close(status)
            return
        self.fds = status, clear
        self.ids = [_identity(fd) for fd in self.fds]

    def sample(self) -> tuple[float, float]:
        """(peak MB since the last sample, resident MB now); the next interval starts."""
        if self.fds is not None:
            status, clear = self.fds
            try:
                data = os.pread(status, 4096, 0)
                if _identity(clear) != self.ids[1]:
                    raise OSError("a task closed the descriptor")
                os.write(clear, b"5")
                return _kb(data, b"\nVmHWM:") / 1024, _kb(data, b"\nVmRSS:") / 1024
            except (OSError, ValueError):
                self.close()
        peak = peak_memory_mb()
        return peak, peak

    def close(self) -> None:
        for fd, ident in zip(self.fds or (), self.ids):
            try:
                if _identity(fd) == ident:       # still ours: a task may have closed it
                    os.close(fd)
            except OSError:
                pass
        self.fds = None


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _kb(status: bytes, field: bytes) -> int:
    at = status.index(field) + len(field)
    return int(status[at:status.index(b"kB", at)])


def worker_id() -> str:
    return f"{HOST}-{os.getpid()}"


class Hooks:
    """What the task loop reports to, besides the result.

    `output`: the TaskOutput that attributes printed output; `slot`: shared memory the
    worker reads for timeouts and lost task processes (see `Slot`; None: nobody watches);
    `flush()`: called after a call once `flush_every` seconds passed since the last;
    `before(pos)`: called before each call; `after()`: called after each call that took
    longer than 20 us (time enough to start a process) or raised, before its output is
    claimed; it returns whether it spent time (then the next task starts after it).
    """

    def __init__(self, output: "TaskOutput", slot: "Slot | None" = None,
                 flush: Callable[[], None] | None = None, flush_every: float = 0.5,
                 before: Callable[[int], None] | None = None,
                 after: Callable[[], bool] | None = None) -> None:
        self.output, self.slot, self.flush = output, slot, flush
        self.flush_every = flush_every if flush is not None else float("inf")
        self.before, self.after = before, after


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
    it raises and attempts remain, into `result`.

    This loop is the per-task overhead of every job. It reads the clock once per task (a
    task starts when the one before it ended) and records only the end time and the value;
    `_Rows` fills the other columns per run of tasks, from what the few irregular tasks
    (failed, retried, slow, printing) noted."""
    call = _caller(fn, style)
    kwargs_style, one_arg = style == "kwargs", style == "arg"
    now = time.time
    output, before, flush, flush_every = hooks.output, hooks.before, hooks.flush, hooks.flush_every
    after = hooks.after
    slot = hooks.slot or Slot(bytearray(Slot.SIZE))
    ints, starts = slot.ints, slot.start
    indices = batch.indices
    output.follow(lambda: None if ints[0] < 0 else
                  (indices[ints[0]], ints[1] or batch.attempts(ints[0])[0]))
    add_end, add_value = result.end.append, result.values.append
    fd_check = _FD_CHECK
    start = flushed = now()
    gauge = MemoryGauge()
    rows = _Rows(result, batch, start, gauge.sample()[1])

    def measure(pos: int) -> None:
        """Task `pos` ran long enough to be measured: its peak; the short tasks after it
        show the memory it left resident."""
        peak, resident = gauge.sample()
        rows.note(pos, memory=peak)
        rows.note(pos + 1, memory=resident)

    def retry(pos: int, item: Any, exc: BaseException, start: float) -> None:
        """The task raised: run it again while attempts remain; record its row. What an
        attempt started ends (`after`) before the next attempt or the row."""
        tried, last = batch.attempts(pos)
        while True:
            end = now()
            if after is not None and after():
                end = now()
            if tried >= last:
                add_end(end)
                add_value(None)
                rows.note(pos, start, tried, error=describe(exc))
                measure(pos)
                break
            output.end()              # the failed attempt keeps its output
            tried += 1
            ints[1] = tried
            start = starts[0] = end
            try:
                value = call(item)
            except Control:
                raise
            except BaseException as again:
                exc = again
                continue
            if after is not None:
                after()
            end = now()
            add_end(end)
            add_value(value)
            rows.note(pos, start, tried)
            measure(pos)
            break
        output.end()                  # while the slot still names the attempt
        ints[1] = 0

    try:
        for pos, item in enumerate(batch.items):
            if before is not None:
                before(pos)
                start = now()
                rows.note(pos, start)
            ints[0] = pos
            starts[0] = start
            try:
                value = fn(item) if one_arg else fn(**item) if kwargs_style else fn(*item)
            except Control:
                raise
            except BaseException as exc:    # sys.exit, KeyboardInterrupt...: the task's own
                retry(pos, item, exc, start)
                end = now()               # the next task starts after the traceback was made
                rows.note(pos + 1, end)
            else:
                end = now()
                add_end(end)
                add_value(value)
                if end - start > fd_check or output.printed:
                    if end - start > _SLOW:
                        measure(pos)
                    if after is not None and end - start > fd_check and after():
                        end = now()
                        rows.note(pos + 1, end)
                    output.end()
            if end - flushed > flush_every:
                rows.settle()
                flush()
                flushed = end
                end = now()
                rows.note(pos + 1, end)
            start = end
    finally:
        rows.settle()


class Control(BaseException):
    """deploy's own ways to stop the task loop (cancel, timeout, SIGTERM, Ctrl-C in the
    caller's process): they pass through; any other exception a task raises is its failure."""


def describe(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, traceback text) of a task's exception, whatever its methods do
    (a __str__ that raises, a message that is a str subclass)."""
    import traceback
    message = _safe_str(exc)
    try:
        tb = "".join(traceback.format_exception(exc))
    except Control:
        raise
    except BaseException as err:
        try:
            frames = "".join(traceback.format_tb(exc.__traceback__))
        except Exception:
            frames = ""
        tb = (f"Traceback (most recent call last):\n{frames}{type(exc).__name__}: {message}\n"
              f"<the traceback could not be formatted: {type(err).__name__}>\n")
    return type(exc).__name__, message, tb


def _safe_str(obj: object) -> str:
    try:
        return str.__str__(str(obj))    # a plain str even when __str__ returns a subclass
    except Control:
        raise
    except BaseException as err:
        try:
            why = f"{type(err).__name__}: {str.__str__(str(err))}"
        except Exception:
            why = type(err).__name__
        return f"<str() failed: {why}>"


def _caller(fn: Callable, style: str) -> Callable[[Any], Any]:
    if style == "kwargs":
        return lambda item: fn(**item)
    if style == "arg":
        return fn
    return lambda item: fn(*item)


class _Rows:
    """The columns run_calls leaves implied, filled for each run of rows it recorded:
    index from the batch, start from the row before, attempt from the batch, memory from
    the last sample, status Completed; except where `note` recorded otherwise."""

    def __init__(self, result: ChunkResult, batch: Batch, start: float, memory: float) -> None:
        self.result, self.batch = result, batch
        self.pos = 0                   # batch position of the first row not filled in yet
        self.start = start             # its start, unless noted
        self.memory = memory           # the last memory sample before it
        self.noted: dict[int, dict] = {}

    def note(self, pos: int, start: float | None = None, attempt: int | None = None,
             memory: float | None = None, error: tuple | None = None) -> None:
        """Record what differs from the implied values for the row of batch position `pos`."""
        got = self.noted.setdefault(pos, {})
        for key, value in (("start", start), ("attempt", attempt), ("memory", memory),
                           ("error", error)):
            if value is not None:
                got[key] = value

    def settle(self) -> None:
        """Fill the implied columns of the rows recorded since the last call."""
        r, batch, lo = self.result, self.batch, self.pos
        base = len(r.index)
        n = len(r.end) - base
        if n <= 0:
            return
        hi = lo + n
        r.add_index(batch.indices[lo:hi])
        r.start.append(self.start)
        r.start.extend(r.end[base:base + n - 1])
        if isinstance(batch.first, int):
            r.attempt.extend(array.array("i", [batch.first]) * n)
        else:
            r.attempt.extend(array.array("i", batch.first[lo:hi]))
        r.status.extend(bytes([C_OK]) * n)
        noted = {pos: got for pos, got in self.noted.items() if pos < hi}
        memory, at = self.memory, lo
        for pos in sorted(noted):
            sample = noted[pos].get("memory")
            if sample is not None:
                r.memory.extend(array.array("f", [memory]) * (pos - at))
                memory, at = sample, pos
        r.memory.extend(array.array("f", [memory]) * (hi - at))
        for pos, got in noted.items():
            row = base + pos - lo
            if "start" in got:
                r.start[row] = got["start"]
            if "attempt" in got:
                r.attempt[row] = got["attempt"]
            if "error" in got:
                r.status[row] = C_FAILED
                r.errors[row] = got["error"]
        self.noted = {pos: got for pos, got in self.noted.items() if pos >= hi}
        self.pos, self.start, self.memory = hi, r.end[-1], memory


# ---------------------------------------------------------------------------- output

def marker(index: int, attempt: int, began_at: int | None = None) -> bytes:
    at = f" @{began_at}" if began_at is not None else ""
    return LOG_MARK + f"{index} {attempt}{at}\n".encode()


class TaskOutput:
    """The task process's stdout/stderr while it runs a chunk: both go to one log file, and
    a marker line names the task before the first output of each task that has any.

    `follow(locate)` tells it how to find the running task ((index, attempt) or None); the
    task loop checks `printed` after each task and calls `end()` for those that did."""

    def __init__(self, fd: int, err_fd: int | None = None) -> None:
        self.fd = fd
        self.locate: Callable[[], tuple[int, int] | None] = lambda: None
        self.marked: tuple[int, int] | None = None     # the task whose marker was written last
        self.printed = False
        self.pos = os.lseek(fd, 0, os.SEEK_END)
        self.stdout = _MarkingStream(self, fd)
        self.stderr = _MarkingStream(self, fd if err_fd is None else err_fd)

    def follow(self, locate: Callable[[], tuple[int, int] | None]) -> None:
        self.locate, self.marked = locate, None

    def _mark(self, task: tuple[int, int], at_end: bool = False) -> None:
        """Write the marker; output that reached the fd without Python (os.write, child
        processes) since the last marker is claimed by offset."""
        pos = os.lseek(self.fd, 0, os.SEEK_END)
        began = self.pos if pos != self.pos else None
        if at_end and began is None:
            return
        self.marked = task
        data = marker(*task, began)
        os.write(self.fd, data)
        self.pos = pos + len(data)

    def end(self) -> None:
        """After a task: flush, and claim any output it wrote around Python."""
        if self.stdout.dirty:
            self.stdout.flush_raw()
        if self.stderr.dirty:
            self.stderr.flush_raw()
        task = self.locate()
        if task is not None and task != self.marked:
            self._mark(task, at_end=True)
        else:
            self.pos = os.lseek(self.fd, 0, os.SEEK_END)
        self.printed = False


class _MarkingStream(io.TextIOBase):
    """A line-buffered text stream on fd 1 or 2 that writes the task marker first."""

    def __init__(self, owner: TaskOutput, fd: int) -> None:
        self.owner, self._fd = owner, fd
        self.raw = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), line_buffering=True)
        self.dirty = False

    def write(self, text: str) -> int:
        owner = self.owner
        if text:
            task = owner.locate()
            if task is not None and task != owner.marked:
                owner.stdout.flush_raw()
                owner.stderr.flush_raw()
                owner._mark(task)
            owner.printed = True
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
