"""Executors run a list of task calls for the worker and hand back one row per call.

`ForkExecutor` runs them in a forked child so that a task that exits the process, hangs
past its timeout or is canceled costs one row, never the worker; `InlineExecutor` runs
them in the calling process (the `Local` environment, for debugging).
"""
from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
import select
import signal
import struct
import sys
import time
from typing import Any, Callable, Iterable

from . import runner

Call = tuple  # (task_index, task_name, kwargs, attempt, last_attempt)
_SLOT = struct.Struct("qqd")   # the running call: position in the batch, attempt, start time
_LEN = struct.Struct("!I")
_FLUSH_SECONDS = 0.5


class Interrupted(Exception):
    """The batch was stopped (cancel); `rows` are the finished calls, `unrun` the rest."""

    def __init__(self, rows: list[dict], unrun: list[Call]) -> None:
        super().__init__("interrupted")
        self.rows, self.unrun = rows, unrun


class Terminated(BaseException):
    """Raised in the worker by SIGTERM so that blocking waits end at once."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def install_sigterm() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)


class Settings:
    """What an executor needs to know about the job, besides the functions."""

    def __init__(self, task_timeout: float | None, worker: str) -> None:
        self.task_timeout, self.worker = task_timeout, worker


def lost_row(call: Call, settings: Settings, exc_type: str, message: str, start: float | None) -> dict:
    index, name, _, attempt, _ = call
    return runner.make_row(name, index, runner.FAILED, attempt=attempt, worker=settings.worker,
                           start=start, end=time.time(), exc_type=exc_type, message=message)


def canceled_rows(calls: Iterable[Call], worker: str, why: str = "the job was canceled") -> list[dict]:
    return [runner.make_row(name, index, runner.CANCELED, attempt=attempt, worker=worker,
                            exc_type="Canceled", message=why)
            for index, name, _, attempt, _ in calls]


# ---------------------------------------------------------------------------- inline

class InlineExecutor:
    """Runs calls in this process; output is captured at the Python level (sys.stdout)."""

    def __init__(self, functions: dict[str, Callable], settings: Settings) -> None:
        self.functions, self.settings = functions, settings

    def run(self, kind: str, calls: list[Call], log_path: str | None,
            poll: Callable[[], bool]) -> list[dict]:
        fn, rows = self.functions[kind], []
        sink = open(log_path, "ab") if log_path else io.BytesIO()
        text = io.TextIOWrapper(sink, line_buffering=True, write_through=True)
        try:
            for i, call in enumerate(calls):
                if not poll():
                    raise Interrupted(rows, calls[i:])
                index, name, kwargs, attempt, last = call
                with _timeout(self.settings.task_timeout), \
                        contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                    row = runner.run_task(fn, name, index, kwargs, attempt=attempt, max_attempts=last,
                                          worker=self.settings.worker, begin=_marker(text, index))
                rows.append(row)
        finally:
            text.flush()
            text.detach()
            sink.close()
        return rows

    def close(self) -> None:
        pass


def _marker(text: io.TextIOWrapper, index: int) -> Callable[[int], None]:
    def begin(attempt: int) -> None:
        text.flush()
        text.buffer.write(runner.log_marker(index, attempt))
    return begin


@contextlib.contextmanager
def _timeout(seconds: float | None):
    """SIGALRM-based timeout for inline runs (main thread only; pure-Python code only)."""
    import threading
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"task exceeded its timeout of {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------- forked

def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _recv_exact(fd: int, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        part = os.read(fd, min(n - got, 1 << 20))
        if not part:
            return None
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _recv(fd: int) -> Any:
    head = _recv_exact(fd, _LEN.size)
    if head is None:
        return None
    body = _recv_exact(fd, _LEN.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this child when the worker that forked it dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _child_main(functions: dict[str, Callable], settings: Settings, tasks_fd: int,
                rows_fd: int, slot: mmap.mmap) -> None:
    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # the caller's sys.stdout may be anything (a notebook's stream, a test's capture):
    # tasks print to this process's fds 1 and 2, which point at the chunk's log
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    out = sys.stdout
    while True:
        msg = _recv(tasks_fd)
        if msg is None:
            os._exit(0)
        kind, calls, log_path = msg
        log_fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)

        def begin(attempt: int, pos: int = 0, index: int = 0) -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(1, runner.log_marker(index, attempt))
            slot[:_SLOT.size] = _SLOT.pack(pos, attempt, time.time())
        fn, batch, last = functions[kind], [], time.monotonic()
        for pos, (index, name, kwargs, attempt, last) in enumerate(calls):
            batch.append(runner.run_task(
                fn, name, index, kwargs, attempt=attempt, max_attempts=last,
                worker=settings.worker, begin=lambda a, p=pos, i=index: begin(a, p, i)))
            if time.monotonic() - last > _FLUSH_SECONDS:
                _send(rows_fd, ("rows", batch))
                batch, last = [], time.monotonic()
        slot[:_SLOT.size] = _SLOT.pack(-1, 0, 0.0)
        out.flush()
        sys.stderr.flush()
        _send(rows_fd, ("done", batch))


class ForkExecutor:
    """Runs calls in a long-lived forked child; one child per worker, replaced when lost.

    The child inherits the functions through fork, so whatever they close over is shared
    copy-on-write with the worker (and with the client, for LocalAsync), never pickled.
    """

    def __init__(self, functions: dict[str, Callable], settings: Settings) -> None:
        self.functions, self.settings = functions, settings
        self.pid: int | None = None
        self.slot = mmap.mmap(-1, _SLOT.size)

    def _start(self) -> None:
        tasks_r, tasks_w = os.pipe()
        rows_r, rows_w = os.pipe()
        self.slot[:_SLOT.size] = _SLOT.pack(-1, 0, 0.0)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(tasks_w)
                os.close(rows_r)
                _child_main(self.functions, self.settings, tasks_r, rows_w, self.slot)
            finally:
                os._exit(0)
        os.close(tasks_r)
        os.close(rows_w)
        self.pid, self.tasks_fd, self.rows_fd = pid, tasks_w, rows_r

    def _kill(self) -> str:
        """Kill the child (if alive) and reap it; describe how it ended."""
        if self.pid is None:
            return "no process"
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(self.pid, 0)
        for fd in (self.tasks_fd, self.rows_fd):
            os.close(fd)
        self.pid = None
        if os.WIFSIGNALED(status):
            return f"was killed by signal {os.WTERMSIG(status)}"
        return f"exited with code {os.WEXITSTATUS(status)}"

    def close(self) -> None:
        if self.pid is not None:
            os.close(self.tasks_fd)           # EOF: the idle child exits by itself
            self.tasks_fd = os.open(os.devnull, os.O_RDONLY)
            self._kill()

    def run(self, kind: str, calls: list[Call], log_path: str | None,
            poll: Callable[[], bool]) -> list[dict]:
        rows: list[dict] = []
        pending = list(calls)
        timeout = self.settings.task_timeout
        while pending:
            if self.pid is None:
                self._start()
            sent, received = pending, 0
            _send(self.tasks_fd, (kind, sent, log_path))
            pending = []
            while True:
                try:
                    ready, _, _ = select.select([self.rows_fd], [], [], 0.2)
                except Terminated:
                    self._kill()
                    raise Interrupted(rows, sent[received:]) from None
                if ready:
                    msg = _recv(self.rows_fd)
                    if msg is not None:
                        rows.extend(msg[1])
                        received += len(msg[1])
                        if msg[0] == "done":
                            break
                        continue
                    running = _SLOT.unpack(self.slot[:_SLOT.size])
                    how = self._kill()
                    pending = self._after_loss(sent, received, running, rows,
                                               "WorkerLost", f"the process running the task {how}")
                    break
                running = _SLOT.unpack(self.slot[:_SLOT.size])
                if timeout and running[0] >= 0 and time.time() - running[2] > timeout:
                    self._kill()
                    pending = self._after_loss(sent, received, running, rows, "TimeoutError",
                                               f"task exceeded its timeout of {timeout:g} s")
                    break
                if not poll():
                    self._kill()
                    raise Interrupted(rows, sent[received:])
        return rows

    def _after_loss(self, sent: list[Call], received: int, running: tuple[int, int, float],
                    rows: list[dict], exc_type: str, message: str) -> list[Call]:
        """The child is gone mid-batch: the call it was running fails (or is retried);
        calls it finished but had not reported yet run again. Returns what is left."""
        pos, attempt, start = running
        if pos < received:          # died between calls: nothing to blame
            return list(sent[received:])
        index, name, kwargs, _, last = sent[pos]
        if attempt < last:
            retry = [(index, name, kwargs, attempt + 1, last)]
        else:
            retry = []
            rows.append(lost_row((index, name, kwargs, attempt, last), self.settings, exc_type,
                                 message, start))
        return list(sent[received:pos]) + retry + list(sent[pos + 1:])
