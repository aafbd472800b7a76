"""Executors run a batch of task calls for the worker and return a ChunkResult.

`ForkExecutor` runs them in a forked child so that a task that exits the process, hangs
past its timeout or is canceled costs one row, never the worker; `InlineExecutor` runs
them in the calling process (the `Local` environment, for debugging).

A job's `memory_gb` (JobSpec.resources) is enforced here, on Linux: a task's memory is the
resident memory its process holds beyond what that process started with (pages shared
with the worker by fork are not the task's), plus its child processes. The worker samples
the kernel's high-water mark (VmHWM, so a spike between samples is still seen) every
`_MEMORY_POLL` seconds and stops a task over the limit; the task process checks once more
after each call, for tasks that end between samples. Either way the task's row is Failed
with TaskMemoryExceeded (a MemoryError) giving the limit and the peak, and it is retried
as a raising task is. No rlimit: RLIMIT_AS counts address space that numpy, thread stacks
and allocators reserve without using, and fails allocations in C code that may crash.
"""
from __future__ import annotations

import contextlib
import faulthandler
import mmap
import os
import pickle
import resource
import select
import signal
import struct
import sys
import tempfile
import time
from typing import Any, Callable

from . import descendants, runner
from ..jobdir.results import C_FAILED, ChunkResult, PackedResult, canceled
from ..store.local import create_file_exclusive
from .runner import Batch, Slot

_LEN = struct.Struct("!Q")
_HEAD = struct.Struct("!cqq")     # a rows message: D(one)/P(art)/L(inked)/E(rror), rows, first failure or -1
_FLUSH_SECONDS = 0.5
_CRASH_BYTES = 1 << 16  # of a crashed task process's faulthandler report, logged for its task
_MEMORY_POLL = 0.05     # seconds between the worker's looks at a task's memory, under memory_gb


def _find_prctl() -> Callable | None:
    """prctl, resolved once in the worker: a task process inherits it instead of paying
    for `import ctypes` at every start."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


class Interrupted(Exception):
    """The batch was stopped (cancel); `result` holds the finished calls, `unrun` the rest."""

    def __init__(self, result: ChunkResult, unrun: Batch) -> None:
        super().__init__("interrupted")
        self.result, self.unrun = result, unrun


class BatchError(Exception):
    """The task process could not start a batch (its inputs cannot be read): no task ran."""


class TaskMemoryExceeded(MemoryError):
    """A task used more memory than the job's memory_gb allows."""


def _status_kb(pid: int | str, *fields: bytes) -> list[int] | None:
    """Fields of /proc/PID/status in kB (e.g. b"VmHWM"), None when unreadable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            data = f.read()
        return [runner._kb(data, b"\n" + field + b":") for field in fields]
    except (OSError, ValueError):
        return None


def _reset_peak() -> None:
    """Start a new high-water mark of this process's resident memory (Linux)."""
    try:
        with open("/proc/self/clear_refs", "wb", buffering=0) as f:
            f.write(b"5")
    except OSError:
        pass


def memory_exceeded(limit_gb: float, used_kb: float, base_kb: float, ending: str) -> str:
    """The message of a TaskMemoryExceeded row: the limit, the peak, what was done."""
    return (f"task exceeded memory_gb={limit_gb:g} ({limit_gb * 1024:.0f} MB): its memory "
            f"peaked at {used_kb / 1024:.0f} MB (resident memory beyond the {base_kb / 1024:.0f} MB "
            f"its process held before) and {ending}")


def _limited(fn: Callable, limit_gb: float, base_kb: float | None) -> Callable:
    """`fn`, failing with TaskMemoryExceeded when a call's peak memory is over `limit_gb`:
    the peak beyond `base_kb` (the task process's start), or with None beyond what the
    process held just before the call (inline, in the caller's process).

    In a task process the peak since the last reset of the high-water mark (by the
    runner's gauge, or here after a failure) covers this call and calls that passed; it
    is read only when the process's lifetime peak (getrusage, ~1 us) is over the limit."""
    limit_kb = limit_gb * 2 ** 20
    inline = base_kb is None

    def call(*args: Any, **kwargs: Any) -> Any:
        before = base_kb
        if inline:
            before = (_status_kb("self", b"VmRSS") or [0])[0]
            _reset_peak()
        value = fn(*args, **kwargs)
        if not inline and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before <= limit_kb:
            return value
        peak = _status_kb("self", b"VmHWM")
        if peak and peak[0] - before > limit_kb:
            _reset_peak()               # the next call is measured from here
            raise TaskMemoryExceeded(memory_exceeded(limit_gb, peak[0] - before, before,
                                                     "its result was discarded"))
        return value
    return call


def memory_limit(resources: dict[str, float] | None) -> float | None:
    """The memory_gb of a job's resources where it can be enforced (Linux /proc), else None."""
    limit = (resources or {}).get("memory_gb")
    return limit if limit and os.path.exists("/proc/self/status") else None


class Terminated(runner.Control):
    """Raised in the worker by SIGTERM so that blocking waits end at once."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def install_sigterm() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)


def canceled_calls(batch: Batch, why: str, worker: str) -> ChunkResult:
    return canceled(batch.indices, [batch.attempts(p)[0] for p in range(len(batch))], why,
                    runner.HOST, worker)


# ---------------------------------------------------------------------------- inline

class InlineExecutor:
    """Runs calls in this process; Python-level output (print) is captured."""

    def __init__(self, functions: dict[str, Callable], task_timeout: float | None, worker: str,
                 private_fds: tuple[int, ...] = (), resources: dict[str, float] | None = None) -> None:
        limit = memory_limit(resources)
        if limit:           # checked after each call: the caller's process cannot be stopped
            functions = {kind: _limited(fn, limit, None) for kind, fn in functions.items()}
        self.functions, self.task_timeout, self.worker = functions, task_timeout, worker
        self._submitted: tuple | None = None

    def submit(self, kind: str, style: str, batch: Batch | tuple, log_path: str,
               publish_to: str | None = None) -> None:
        """Note the batch; it runs in `collect` (inline there is nothing to overlap)."""
        self._submitted = (kind, style, batch, log_path)

    def collect(self, poll: Callable[[], bool]) -> ChunkResult:
        kind, style, batch, log_path = self._submitted
        return self.run(kind, style, batch, log_path, poll)

    def run(self, kind: str, style: str, batch: Batch | tuple, log_path: str,
            poll: Callable[[], bool]) -> ChunkResult:
        fn, result = self.functions[kind], ChunkResult(runner.HOST, self.worker)
        batch = _batch(batch)
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        output = runner.TaskOutput(fd)
        stop: list[int] = []

        def before(pos: int) -> None:
            arm(0)
            if not poll():
                stop.append(pos)
                raise _Stop()
            arm(self.task_timeout)

        try:
            with contextlib.redirect_stdout(output.stdout), contextlib.redirect_stderr(output.stderr), \
                    _alarm() as arm, _ctrl_c():
                runner.run_calls(fn, batch, result, style, runner.Hooks(output, before=before))
        except _Stop:
            raise Interrupted(result, batch.take(range(stop[0], len(batch)))) from None
        finally:
            os.close(fd)
        return result

    def close(self) -> None:
        pass


class _Stop(runner.Control):
    """A cancel seen between inline tasks."""


class _CtrlC(runner.Control, KeyboardInterrupt):
    """Ctrl-C in the caller's process while Local runs tasks: stops the job as before
    (a KeyboardInterrupt a task raises itself is only that task's failure)."""


@contextlib.contextmanager
def _ctrl_c():
    """While inline tasks run: SIGINT raises _CtrlC, unless the caller has its own handler."""
    import threading
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise _CtrlC()
    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _alarm():
    """Yields arm(seconds): a SIGALRM per-task timeout for inline runs (main thread only,
    and only code that returns to the interpreter can be interrupted)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield lambda seconds: None
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError("task exceeded its timeout")

    def arm(seconds: float | None) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds or 0)
    previous = signal.signal(signal.SIGALRM, expire)
    try:
        yield arm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------- forked

def _send(fd: int, *parts: bytes) -> None:
    """One message: its length, then `parts` (written as they are, not joined first)."""
    views = [memoryview(_LEN.pack(sum(map(len, parts))))] + [memoryview(p) for p in parts]
    while views:
        sent = os.writev(fd, views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if views:
            views[0] = views[0][sent:]


def _recv_exact(fd: int, n: int) -> bytearray | None:
    """Exactly `n` bytes (read straight into one buffer), or None at end of file."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            return None
        got += k
    return buf


def _recv(fd: int) -> Any:
    head = _recv_exact(fd, _LEN.size)
    if head is None:
        return None
    body = _recv_exact(fd, _LEN.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this child when the worker that forked it dies."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_main(functions: dict[str, Callable], worker: str, tasks_fd: int, rows_fd: int,
                slot: Slot, crash_fd: int, limit: tuple[float, float] | None = None) -> None:
    """The task process: runs batches sent by the worker, streams their rows back.
    Processes a task starts end with the task (see `descendants`)."""
    _die_with_parent()
    descendants.become_subreaper(_PRCTL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable(file=crash_fd, all_threads=True)    # the worker logs it for the task
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if limit is not None:
        functions = {kind: _limited(fn, *limit) for kind, fn in functions.items()}
    while True:
        msg = _recv(tasks_fd)
        if msg is None:
            os._exit(0)
        kind, style, batch, log_path, publish_to = msg
        try:
            batch = _batch(batch)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except Exception as exc:
            _send(rows_fd, _HEAD.pack(b"E", 0, -1), f"{type(exc).__name__}: {exc}".encode())
            continue
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        output = runner.TaskOutput(1, 2)
        # the caller's sys.stdout may be anything (a notebook's stream, a test's capture)
        sys.stdout, sys.stderr = output.stdout, output.stderr
        result = ChunkResult(runner.HOST, worker)
        flushed = False

        def flush() -> None:
            nonlocal flushed
            _send(rows_fd, _HEAD.pack(b"P", len(result), -1), runner.dumps_result(result))
            flushed = True
            result.clear()

        runner.run_calls(functions[kind], batch, result, style,
                         runner.Hooks(output, slot, flush, _FLUSH_SECONDS,
                                      after=descendants.end_children))
        descendants.end_children()
        slot.set_idle()
        data = runner.dumps_result(result)
        failed = result.failed()
        failed = -1 if failed is None else failed
        if publish_to is not None and not flushed:   # the whole chunk is here: publish it
            linked = create_file_exclusive(publish_to, data)
            _send(rows_fd, _HEAD.pack(b"L", len(result), failed), b"\x01" if linked else b"\x00")
        else:
            _send(rows_fd, _HEAD.pack(b"D", len(result), failed), data)


class ForkExecutor:
    """Runs calls in a long-lived forked child; one child per worker, replaced when lost.

    The child inherits the functions through fork, so whatever they close over is shared
    copy-on-write with the worker (and with the client, for LocalAsync), never pickled.
    """

    def __init__(self, functions: dict[str, Callable], task_timeout: float | None, worker: str,
                 private_fds: tuple[int, ...] = (), resources: dict[str, float] | None = None) -> None:
        self.functions, self.task_timeout, self.worker = functions, task_timeout, worker
        self.private_fds = private_fds      # the worker's own descriptors: closed in the child
        self.memory_gb = memory_limit(resources)
        self.base_kb = 0.0                  # resident kB the task process started with
        self.pid: int | None = None
        self.slot = Slot(mmap.mmap(-1, Slot.SIZE))
        self.crashed = b""                  # what the last task process's faulthandler wrote
        self.ended_by = 0                   # the signal that ended the last task process
        self.peak_kb = 0                    # and its lifetime peak resident memory

    def _start(self) -> None:
        tasks_r, tasks_w = os.pipe()
        rows_r, rows_w = os.pipe()
        crash = tempfile.TemporaryFile()    # where a crashing task's stack goes (faulthandler)
        self.slot.set_idle()
        if self.memory_gb:                  # what the child holds at first is the worker's
            self.base_kb = (_status_kb("self", b"VmRSS") or [0])[0]
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (tasks_w, rows_r, *self.private_fds):
                    os.close(fd)
                _child_main(self.functions, self.worker, tasks_r, rows_w, self.slot,
                            crash.fileno(), (self.memory_gb, self.base_kb) if self.memory_gb else None)
            finally:
                os._exit(0)
        os.close(tasks_r)
        os.close(rows_w)
        self.pid, self.tasks_fd, self.rows_fd, self.crash = pid, tasks_w, rows_r, crash

    def _kill(self) -> str:
        """Kill the child (if alive) and reap it; describe how it ended."""
        if self.pid is None:
            return "no process"
        descendants.kill_tree(self.pid)     # the processes its task started too
        _, status, usage = os.wait4(self.pid, 0)
        self.peak_kb = usage.ru_maxrss      # kB on Linux
        self.ended_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        for fd in (self.tasks_fd, self.rows_fd):
            os.close(fd)
        self.crash.seek(0)
        self.crashed = self.crash.read(_CRASH_BYTES)
        self.crash.close()
        self.pid = None
        if os.WIFSIGNALED(status):
            return f"was killed by signal {os.WTERMSIG(status)}"
        return f"exited with code {os.WEXITSTATUS(status)}"

    def close(self) -> None:
        if self.pid is not None:
            self._kill()

    def start(self) -> None:
        """Start the task process now rather than at the first submit."""
        if self.pid is None:
            self._start()

    def submit(self, kind: str, style: str, batch: Batch | tuple, log_path: str,
               publish_to: str | None = None) -> None:
        """Hand a batch to the task process and return at once: the worker publishes the
        previous chunk while this one runs. `batch` is a Batch, or (input file bytes, first
        index, first and last attempt), which goes as it is (the worker never unpickles it).
        `publish_to`: a local result file the task process may publish the whole batch's
        rows to itself (exclusively), sparing the worker their bytes."""
        self.start()
        self._submitted = (kind, style, batch, log_path)
        _send(self.tasks_fd, runner.dumps((kind, style, batch, log_path, publish_to)))

    def collect(self, poll: Callable[[], bool]) -> ChunkResult | PackedResult:
        """Wait for the submitted batch: its rows, with a row for a task that took the task
        process down or timed out. Interrupted when `poll()` says stop or SIGTERM comes."""
        kind, style, sent, log_path = self._submitted
        result = ChunkResult(runner.HOST, self.worker)
        received = idle_losses = 0
        wait = _MEMORY_POLL if self.memory_gb else 0.2
        while True:
            try:
                ready, _, _ = select.select([self.rows_fd], [], [], wait)
            except Terminated:
                self._kill()
                raise Interrupted(result, _rest(sent, received)) from None
            if ready:
                msg = self._read_rows()
                if msg is not None:
                    what, count, failed, body = msg
                    if what == b"E":
                        raise BatchError(body.decode(errors="replace"))
                    if what == b"L":
                        return PackedResult(None, count, None if failed < 0 else failed,
                                            published=body == b"\x01")
                    if what == b"D" and not len(result) and not received:
                        return PackedResult(body, count, None if failed < 0 else failed)
                    result.extend(ChunkResult.from_dict(pickle.loads(body)))
                    received += count
                    if what == b"D":
                        return result
                    continue
                running = self.slot.read()
                how = self._kill()
                if self.crashed and running[0] >= received:
                    _log_crash(log_path, sent, running, self.crashed)
                idle_losses += running[0] < 0
                if idle_losses > 1:
                    raise BatchError(f"the task process {how} twice before running a task")
                used = self.peak_kb - self.base_kb
                if self.memory_gb and self.ended_by == signal.SIGKILL \
                        and used > self.memory_gb * 2 ** 20:     # the kernel's OOM killer
                    rest = self._after_loss(_batch(sent), received, running, result,
                                            "TaskMemoryExceeded", memory_exceeded(
                                                self.memory_gb, used, self.base_kb,
                                                f"the system killed its process ({how})"),
                                            self.peak_kb / 1024)
                else:
                    rest = self._after_loss(_batch(sent), received, running, result,
                                            "WorkerLost", f"the process running the task {how}")
            else:
                running = self.slot.read()
                used = self._memory_used() if self.memory_gb and running[0] >= 0 else None
                if used is not None and used[0] > self.memory_gb * 2 ** 20:
                    self._kill()
                    rest = self._after_loss(_batch(sent), received, running, result,
                                            "TaskMemoryExceeded", memory_exceeded(
                                                self.memory_gb, used[0], self.base_kb,
                                                "it was stopped"), used[1] / 1024)
                elif not (self.task_timeout and running[0] >= 0
                          and time.time() - running[2] > self.task_timeout):
                    if not poll():
                        self._kill()
                        raise Interrupted(result, _rest(sent, received))
                    continue
                else:
                    self._kill()
                    rest = self._after_loss(_batch(sent), received, running, result, "TimeoutError",
                                            f"task exceeded its timeout of {self.task_timeout:g} s")
            if rest is None:
                return result
            self.submit(kind, style, rest, log_path)
            sent, received = rest, 0

    def run(self, kind: str, style: str, batch: Batch | tuple, log_path: str,
            poll: Callable[[], bool]) -> ChunkResult | PackedResult:
        """submit, then collect."""
        self.submit(kind, style, batch, log_path)
        return self.collect(poll)

    def _read_rows(self) -> tuple[bytes, int, int, bytearray] | None:
        """(kind: D, P, L or E, row count, first failed row or -1, the body: pickled rows,
        whether the task process published them (L), or the error's text), or None when
        the task process is gone."""
        head = _recv_exact(self.rows_fd, _LEN.size + _HEAD.size)
        body = None if head is None else _recv_exact(self.rows_fd, _LEN.unpack_from(head)[0] - _HEAD.size)
        if body is None:
            return None
        kind, count, failed = _HEAD.unpack_from(head, _LEN.size)
        return kind, count, failed, body

    def _memory_used(self) -> tuple[float, float] | None:
        """(kB the running task uses at its peak: its process's high-water mark beyond what
        the process started with, plus its children's; its process's peak in kB), or None."""
        peak = _status_kb(self.pid, b"VmHWM")
        if peak is None:
            return None
        used = peak[0] - self.base_kb
        for pid in descendants.tree(self.pid)[1:]:
            used += (_status_kb(pid, b"VmHWM") or [0])[0]
        return used, peak[0]

    def _after_loss(self, sent: Batch, received: int, running: tuple[int, int, float],
                    result: ChunkResult, exc_type: str, message: str,
                    memory: float = 0.0) -> Batch | None:
        """The child is gone mid-batch: the call it was running fails (or is retried);
        calls it finished but had not reported yet run again. Returns what is left."""
        pos, retry_attempt, start = running
        if pos < received:          # died between calls: nothing to blame
            return sent.take(range(received, len(sent))) if received < len(sent) else None
        first, last = sent.attempts(pos)
        attempt = retry_attempt or first
        keep = list(range(received, len(sent)))
        if attempt < last:
            rest = sent.take(keep)
            rest.first[keep.index(pos)] = attempt + 1
        else:
            result.add(sent.indices[pos], C_FAILED, start, time.time(), attempt, memory, None,
                       (exc_type, message, None))
            keep.remove(pos)
            rest = sent.take(keep)
        return rest if len(rest) else None


def _log_crash(log_path: str, sent: Batch | tuple, running: tuple[int, int, float],
               text: bytes) -> None:
    """Append what the crashed task process's faulthandler wrote to the chunk's log, under
    the running task's marker, so the task's own log shows where it crashed."""
    batch = _batch(sent)
    pos, retry_attempt = running[0], running[1]
    attempt = retry_attempt or batch.attempts(pos)[0]
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, runner.marker(batch.indices[pos], attempt) + text)
    finally:
        os.close(fd)


def _batch(sent: Batch | tuple) -> Batch:
    return Batch.from_inputs(*sent) if isinstance(sent, tuple) else sent


def _rest(sent: Batch | tuple, received: int) -> Batch:
    batch = _batch(sent)
    return batch.take(range(received, len(batch)))
