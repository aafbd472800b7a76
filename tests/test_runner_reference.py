"""The optimised task loop (`runner.run_calls`) against a plain reference loop.

Hypothesis draws batches of tasks that return, raise (any BaseException a task may raise),
fail a few times before succeeding and print; each batch runs through the real loop (in
this process via InlineExecutor and via run_calls with flush/after hooks, and in a forked
task process via ForkExecutor) and through `reference`: every row must agree (index,
status, attempt, value, exception type and message), start/end times must be ordered, and
the log must give each task's output to that task and attempt (see the one bug noted at
test_failed_attempt_keeps_its_output).
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections import Counter
from typing import Any, Callable, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.jobdir.results import STATUS, ChunkResult, PackedResult
from deploy.jobdir.status import COMPLETED, FAILED
from deploy.worker import runner
from deploy.worker.executor import ForkExecutor, InlineExecutor
from deploy.worker.runner import Batch, Control, Hooks, TaskOutput, split_log

COMMON = dict(deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ALWAYS = 1000        # a task that fails this many times fails every attempt


class Row(NamedTuple):
    index: int
    status: str
    attempt: int
    value: Any
    exception: str | None
    message: str | None


# ---------------------------------------------------------------------------- reference

def reference(fn: Callable, style: str, indices: list[int], items: list, firsts: list[int],
              lasts: list[int]) -> tuple[list[Row], dict[tuple[int, int], bytes]]:
    """What running the batch must give: one row per task, and each attempt's output."""
    rows, output = [], {}
    for index, item, first, last in zip(indices, items, firsts, lasts):
        attempt = first
        while True:
            captured = tempfile.TemporaryFile("w+b", buffering=0)
            text = io.TextIOWrapper(captured, write_through=True)
            try:
                with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                    if style == "kwargs":
                        value = fn(**item)
                    elif style == "arg":
                        value = fn(item)
                    else:
                        value = fn(*item)
            except Control:
                raise
            except BaseException as exc:        # whatever the task raises is its failure
                error = exc
            else:
                error = None
            text.flush()
            captured.seek(0)
            if data := captured.read():
                output[index, attempt] = data
            text.close()
            if error is None:
                rows.append(Row(index, COMPLETED, attempt, value, None, None))
                break
            if attempt >= last:
                rows.append(Row(index, FAILED, attempt, None, type(error).__name__,
                                expected_message(error)))
                break
            attempt += 1
    return rows, output


def expected_message(exc: BaseException) -> str:
    """str(exc) as a plain str, or what deploy documents when str() raises."""
    try:
        return str.__str__(str(exc))
    except Exception as err:
        return f"<str() failed: {type(err).__name__}: {err}>"


# ---------------------------------------------------------------------------- tasks

class TaskError(Exception):
    """A task's own exception class."""


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class Shout(str):
    """A str subclass: the recorded message must still be a plain str."""


class StrSub(Exception):
    def __str__(self) -> str:
        return Shout(self.args[0])


EXCEPTIONS = {"ValueError": ValueError, "KeyError": KeyError, "TaskError": TaskError,
              "SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt,
              "BadStr": BadStr, "StrSub": StrSub}


def make_task(style: str) -> Callable:
    """A fresh task function (its own count of calls per task) for `style`.
    plan = (failures before success, (exception name, argument), value, output or None,
    seconds to sleep); output = (stream, text, end, "every" attempt or only the "first").
    Output written around Python ("fd") is only looked for after calls longer than 20 us,
    so such tasks take longer."""
    calls: Counter = Counter()

    def task(key: int, plan: tuple) -> Any:
        calls[key] += 1
        n = calls[key]
        fails, (name, arg), value, out, pause = plan
        if out is not None:
            stream, text, end, when = out
            if when == "every" or n == 1:
                if stream == "fd":      # around Python, as a C library or a child would
                    os.write(sys.stdout.fileno(), f"{text} {key}/{n}{end}".encode())
                else:
                    print(f"{text} {key}/{n}", end=end, file=getattr(sys, stream))
        if pause:                       # past the 20 us fd check, or the 1 ms memory sample
            until = time.perf_counter() + pause
            while time.perf_counter() < until:
                pass
        if n <= fails:
            raise EXCEPTIONS[name](arg)
        return value

    if style == "arg":
        return lambda item: task(*item)
    return task


def make_item(style: str, key: int, plan: tuple) -> Any:
    return {"key": key, "plan": plan} if style == "kwargs" else (key, plan)


# ---------------------------------------------------------------------------- strategies

values = st.recursive(st.none() | st.integers() | st.text(max_size=6) | st.binary(max_size=6),
                      lambda inner: st.lists(inner, max_size=3), max_leaves=6)
failures = st.one_of(
    st.tuples(st.sampled_from(["ValueError", "KeyError", "TaskError", "StrSub"]), st.text(max_size=10)),
    st.tuples(st.just("SystemExit"), st.none() | st.integers(-2, 300) | st.text(max_size=4)),
    st.tuples(st.sampled_from(["KeyboardInterrupt", "BadStr"]), st.just("")))
outputs = st.none() | st.tuples(st.sampled_from(["stdout", "stderr", "fd"]),
                                st.text("abcxyz .:-", min_size=1, max_size=8),
                                st.sampled_from(["\n", ""]), st.sampled_from(["every", "first"]))
plans = st.tuples(st.sampled_from([0, 0, 0, 1, 2, 3, ALWAYS]), failures, values, outputs,
                  st.sampled_from([0.0] * 12 + [5e-5, 0.0011])).map(
    lambda p: p if p[3] is None or p[3][0] != "fd" or p[4] else (*p[:4], 5e-5))


class Case(NamedTuple):
    style: str
    indices: list[int]
    plans: list[tuple]
    firsts: list[int]
    lasts: list[int]
    chunk: bool       # attempts the same for all tasks (a chunk) or per task (a retry batch)

    def items(self) -> list:
        return [make_item(self.style, pos, plan) for pos, plan in enumerate(self.plans)]

    def sent(self) -> Batch | tuple:
        """As the worker hands it to an executor: a chunk's input bytes, or a Batch."""
        if self.chunk:
            return (pickle.dumps(self.items()), self.indices[0] if self.indices else 0,
                    self.firsts[0] if self.firsts else 1, self.lasts[0] if self.lasts else 1)
        return Batch(list(self.indices), self.items(), list(self.firsts), list(self.lasts))


@st.composite
def cases(draw, max_size: int = 60) -> Case:
    style = draw(st.sampled_from(["kwargs", "arg", "args"]))
    size = draw(st.integers(0, 8) | st.integers(0, max_size))
    batch_plans = draw(st.lists(plans, min_size=size, max_size=size))
    n, base = len(batch_plans), draw(st.integers(0, 10**9))
    retries = draw(st.integers(0, 3))
    if draw(st.booleans()):
        first = draw(st.integers(1, 3))
        return Case(style, list(range(base, base + n)), batch_plans, [first] * n,
                    [first + retries] * n, True)
    gaps = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    firsts = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    indices = [base + sum(gaps[:i + 1]) for i in range(n)]
    return Case(style, indices, batch_plans, firsts, [f + retries for f in firsts], False)


# ---------------------------------------------------------------------------- checks

def expected(case: Case) -> tuple[list[Row], dict[tuple[int, int], bytes]]:
    return reference(make_task(case.style), case.style, case.indices, case.items(),
                     case.firsts, case.lasts)


def as_rows(result: ChunkResult) -> list[Row]:
    rows = []
    for pos in range(len(result)):
        exc_type, message, _ = result.errors.get(pos, (None, None, None))
        if message is not None:
            assert type(message) is str, (pos, type(message))
        rows.append(Row(result.index[pos], STATUS[result.status[pos]], result.attempt[pos],
                        result.values[pos], exc_type, message))
    return rows


def log_pieces(path: str) -> list[tuple[int, int, bytes]]:
    """The log cut into (task index, attempt, output) as split_log attributes it."""
    try:
        with open(path, "rb") as f:
            return split_log(f.read())
    except FileNotFoundError:
        return []


def by_task(pieces: Any) -> dict[int, bytes]:
    """Output per task, its attempts' in order."""
    out: dict[int, bytes] = {}
    for (index, _), data in pieces:
        out[index] = out.get(index, b"") + data
    return out


def check(case: Case, result: ChunkResult | PackedResult, log: str, began: float,
          ended: float) -> None:
    if isinstance(result, PackedResult):
        result = ChunkResult.from_dict(pickle.loads(result.raw))
    want_rows, want_log = expected(case)
    n = len(case.plans)
    assert len(result) == n
    for column in (result.start, result.end, result.attempt, result.memory, result.status,
                   result.values):
        assert len(column) == n
    assert set(result.errors) <= set(range(n))
    got_rows = as_rows(result)
    for pos, (got, want) in enumerate(zip(got_rows, want_rows)):
        assert got == want, (pos, case.plans[pos])
    previous = began
    for pos in range(n):
        assert previous <= result.start[pos] <= result.end[pos] <= ended, pos
        previous = result.end[pos]
    # each task's output goes to that task, under the attempt that wrote it
    pieces = log_pieces(log)
    assert by_task(((i, a), d) for i, a, d in pieces) == by_task(want_log.items())
    final = {row.index: row.attempt for row in want_rows}
    got_log: dict[tuple[int, int], bytes] = {}
    for index, attempt, data in pieces:
        assert index in final, (index, attempt)
        got_log[index, attempt] = got_log.get((index, attempt), b"") + data
    assert got_log == want_log


@contextlib.contextmanager
def scratch():
    folder = tempfile.mkdtemp(prefix="runner-ref-")
    try:
        yield os.path.join(folder, "chunk.log")
    finally:
        shutil.rmtree(folder)


def guarded(run: Callable[[], Any]) -> Any:
    """A BaseException escaping the loop is a finding, not a reason to stop pytest."""
    try:
        return run()
    except Exception:
        raise
    except BaseException as exc:
        raise AssertionError(f"the task loop let {type(exc).__name__}({exc!r}) escape") from exc


# ---------------------------------------------------------------------------- tests

@settings(max_examples=200, **COMMON)
@given(case=cases())
def test_inline_executor_matches_reference(case):
    with scratch() as log:
        executor = InlineExecutor({"map": make_task(case.style)}, None, "w")
        began = time.time()
        result = guarded(lambda: executor.run("map", case.style, case.sent(), log, lambda: True))
        ended = time.time()
        check(case, result, log, began, ended)


@settings(max_examples=100, **COMMON)
@given(case=cases(), flush_every=st.sampled_from([0.0, 1e-5, float("inf")]),
       after=st.sampled_from([None, False, True]))
def test_run_calls_with_flushes_matches_reference(case, flush_every, after):
    """As the task process drives it: flushed rows are pickled and the result cleared
    mid-batch; `after` may report time spent between calls."""
    with scratch() as log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        output, result, parts = TaskOutput(fd), ChunkResult(), []

        def flush() -> None:
            parts.append(runner.dumps_result(result))
            result.clear()

        hooks = Hooks(output, None, flush, flush_every,
                      after=None if after is None else (lambda: after))
        sent = case.sent()
        batch = Batch.from_inputs(*sent) if isinstance(sent, tuple) else sent
        began = time.time()
        try:
            with contextlib.redirect_stdout(output.stdout), contextlib.redirect_stderr(output.stderr):
                guarded(lambda: runner.run_calls(make_task(case.style), batch, result,
                                                 case.style, hooks))
        finally:
            os.close(fd)
        ended = time.time()
        whole = ChunkResult()
        for part in parts:
            whole.extend(ChunkResult.from_dict(pickle.loads(part)))
        whole.extend(ChunkResult.from_dict(pickle.loads(runner.dumps_result(result))))
        check(case, whole, log, began, ended)


@settings(max_examples=30, **COMMON)
@given(case=cases())
def test_fork_executor_matches_reference(case):
    with scratch() as log:
        executor = ForkExecutor({"map": make_task(case.style)}, None, "w")
        try:
            began = time.time()
            result = executor.run("map", case.style, case.sent(), log, lambda: True)
            ended = time.time()
        finally:
            executor.close()
        check(case, result, log, began, ended)


@pytest.mark.parametrize("when", ["first", "every"])
@pytest.mark.parametrize("executor", [InlineExecutor, ForkExecutor])
def test_failed_attempt_keeps_its_output(executor, when):
    """Task 7 prints, fails attempt 1, succeeds attempt 2: the log (and the reference)
    give attempt 1 its own output, so `deploy.jobs.logs` can show the last attempt's only
    (the next attempt's marker used to claim it)."""
    case = Case("args", [7], [(1, ("ValueError", "first"), "ok", ("stdout", "out", "\n", when), 0.0)],
                [1], [2], True)
    want_rows, want_log = expected(case)
    assert want_rows == [Row(7, COMPLETED, 2, "ok", None, None)]
    with scratch() as log:
        run = executor({"map": make_task(case.style)}, None, "w")
        try:
            result = run.run("map", case.style, case.sent(), log, lambda: True)
        finally:
            run.close()
        check(case, result, log, 0.0, time.time())
        got = {}
        for index, attempt, data in log_pieces(log):
            got[index, attempt] = got.get((index, attempt), b"") + data
        assert got == want_log
