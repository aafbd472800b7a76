"""A task's outcome back in the caller: its value unpickled, or the exception it stands for
(the task's own, carried in a note by `remote`, or one rebuilt from its metrics row)."""
from __future__ import annotations

import base64
import pickle
import re
import sys
import zlib
from concurrent import futures
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import JobError
from ..jobs.job import Job
from .remote import MARK

try:
    from concurrent.futures.process import _RemoteTraceback   # what ProcessPoolExecutor attaches
except ImportError:                                            # pragma: no cover
    class _RemoteTraceback(Exception):
        def __init__(self, tb: str) -> None:
            self.tb = tb

        def __str__(self) -> str:
            return self.tb

_MARK_LINE = re.compile("^" + re.escape(MARK) + r"(\S+)\n?", re.MULTILINE)


class TaskLost(BrokenProcessPool):
    """A task's process died (a crash, os._exit, a kill), its worker was lost past the
    retries, or its call or result could not cross between processes. Only that task's
    future fails with it: the executor stays usable (ProcessPoolExecutor would break)."""

    __module__ = "deploy.executor"      # its public name


class InitializerFailed(Exception):
    """The executor's initializer raised in a task process: the executor breaks."""

    def __init__(self, tb: str) -> None:
        super().__init__("initializer failed")
        self.tb = tb


class ExecutorJob(Job):
    """A batch's Job as `ex.job`/`ex.jobs` show it: values unpickled, tracebacks without
    the note that carried the exception to the executor."""

    def _chunk(self, chunk: int):
        got = super()._chunk(chunk)
        if got is not None:
            for pos, (name, message, tb) in list(got.errors.items()):
                if tb and MARK in tb:
                    got.errors[pos] = (name, message, _MARK_LINE.sub("", tb))
        return got

    def get_map_results(self) -> list[Any]:
        """Results in task (submission) order; None where a task failed or has not finished."""
        return [_loads_or_none(v) for v in super().get_map_results()]


def _loads_or_none(value: Any) -> Any:
    if not isinstance(value, bytes):
        return value
    try:
        return pickle.loads(value)
    except Exception:
        return None


def settle(future: Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Set a future's outcome unless it has one (a broken executor may have set it)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except futures.InvalidStateError:
        pass


def resolve(future: Future, blob: Any) -> None:
    """Settle `future` with a task's value, unpickled; TaskLost if it cannot be."""
    try:
        value = pickle.loads(blob)
    except BaseException as exc:         # a result whose unpickling raises, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        lost = TaskLost(f"the task's result could not be unpickled here: {type(exc).__name__}: {exc}")
        lost.__cause__ = exc
        settle(future, exception=lost)
        return
    settle(future, value)


def rebuild(kind: str, message: str | None, tb: str | None) -> BaseException:
    """The exception a failed task's row stands for: the task's own (unpickled from the
    note), else one rebuilt from the row (lost processes as TaskLost, BrokenProcessPool
    as ProcessPoolExecutor would say), with the worker's traceback as `__cause__`."""
    text = tb
    if tb and MARK in tb:
        found = _MARK_LINE.search(tb)
        try:
            how, blob, text = pickle.loads(zlib.decompress(base64.b64decode(found.group(1))))
        except Exception:
            how, blob = None, None
        if how == "init":
            return InitializerFailed(text)
        if how == "unpickle":
            exc = TaskLost("the task's function or arguments could not be unpickled in the "
                           f"worker: {kind}: {message}")
            exc.__cause__ = _RemoteTraceback('\n"""\n' + text + '"""')
            return exc
        if blob is not None:
            try:
                exc = pickle.loads(blob)
            except Exception:
                exc = None
            if isinstance(exc, BaseException):
                exc.__cause__ = _RemoteTraceback('\n"""\n' + text + '"""')
                return exc
    if kind in ("WorkerLost", "ChunkError"):
        exc = TaskLost(message or kind)
    elif kind == "Canceled":
        exc = futures.CancelledError(message or "the job was canceled")
    else:
        exc = _by_name(kind, message, text)
    if text:
        exc.__cause__ = _RemoteTraceback('\n"""\n' + text + '"""')
    return exc


def _by_name(kind: str, message: str | None, tb: str | None) -> BaseException:
    """An exception of the class the traceback's last line names, if this process has
    that module loaded already (nothing is imported on the word of a job directory)."""
    qualified = kind
    for line in reversed((tb or "").splitlines()):
        head = line.split(":", 1)[0].strip()
        if head.rsplit(".", 1)[-1] == kind:
            qualified = head
            break
    module, _, name = qualified.rpartition(".")
    cls = getattr(sys.modules.get(module or "builtins"), name, None)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            return cls(message) if message is not None else cls()
        except Exception:
            pass
    return JobError(f"{kind}: {message}")
