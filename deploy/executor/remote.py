"""What runs in the task process: the callable pickled into every executor job.

Standard library only (cloudpickle for what plain pickle cannot carry), so that a worker
unpickling a call loads no client code: no job handles, pandas or threads.
"""
from __future__ import annotations

import base64
import pickle
import traceback
import types
import zlib
from typing import Any, Callable

from ..worker.runner import Control

MARK = "deploy.Executor exception: "   # the note that carries a task's pickled exception
MAX_EXCEPTION_BYTES = 256 * 1024

_initialized: set[str] = set()          # executors whose initializer ran in this process
_functions: dict[bytes, Callable] = {}  # stateless functions already unpickled, by pickle


class Call:
    """The function of every executor job. A task's item is (function pickle, (args,
    kwargs) pickle, or its position in the batch's `shared` pickle); the value is the
    result's pickle, so a result that cannot cross fails only its own future."""

    __slots__ = ("key", "init", "shared", "_calls")
    __name__ = "task"                   # tasks are named task-0-<i> in the job

    def __init__(self, key: str, init: bytes | None, shared: bytes | None = None) -> None:
        self.key, self.init, self.shared, self._calls = key, init, shared, None

    def __getstate__(self) -> tuple:
        return self.key, self.init, self.shared

    def __setstate__(self, state: tuple) -> None:
        self.key, self.init, self.shared = state
        self._calls = None

    def __call__(self, item: tuple[bytes, bytes | int]) -> bytes:
        if self.init is not None and self.key not in _initialized:
            try:
                initializer, initargs = pickle.loads(self.init)
                initializer(*initargs)
            except BaseException as exc:
                _carry(exc, "init")
                raise
            _initialized.add(self.key)
        try:
            fn = _function(item[0])
            if type(item[1]) is int:        # (args, kwargs) pickled with the batch's others
                if self._calls is None:
                    self._calls = pickle.loads(self.shared)
                args, kwargs = self._calls[item[1]]
            else:
                args, kwargs = pickle.loads(item[1])
        except BaseException as exc:
            _carry(exc, "unpickle")
            raise
        try:
            return dumps(fn(*args, **kwargs))
        except BaseException as exc:
            _carry(exc, "call")
            raise


def dumps(obj: Any) -> bytes:
    """Pickle; cloudpickle only for what plain pickle cannot carry (lambdas, local classes)."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:    # a __reduce__ may raise anything
        if isinstance(exc, Control):
            raise
        import cloudpickle
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _function(blob: bytes) -> Callable:
    """Unpickle a task's function; plain functions (no state of their own) are kept."""
    fn = _functions.get(blob)
    if fn is None:
        fn = pickle.loads(blob)
        if (type(fn) is types.FunctionType and fn.__closure__ is None) or \
                type(fn) is types.BuiltinFunctionType:
            if len(_functions) > 256:
                _functions.clear()
            _functions[blob] = fn
    return fn


def _carry(exc: BaseException, kind: str) -> None:
    """Unless `exc` is the runner's Control, add a note carrying (kind, its pickle, its
    traceback without this module's frame): the caller rebuilds the very exception from it."""
    if isinstance(exc, Control):
        return
    tb = exc.__traceback__
    if kind == "call" and tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        text = f"{type(exc).__name__}\n"
    try:
        blob = dumps(exc)
        if len(blob) > MAX_EXCEPTION_BYTES:
            blob = None
    except BaseException as err:
        if isinstance(err, Control):
            raise
        blob = None
    try:
        payload = base64.b64encode(zlib.compress(pickle.dumps((kind, blob, text)))).decode()
        exc.add_note(MARK + payload)
    except Exception:
        pass
