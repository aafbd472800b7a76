"""One chunk's outcome, column by column: cheap to record per task, to pickle and to read.

A published result file is a pickle of a plain dict (`ChunkResult.to_dict`), so any Python
with the values' classes can read it without deploy. Columns that follow a pattern are
stored by the pattern: `index` a range when the tasks are consecutive, `start` one number
(the first task's start; each other task starts when the one before it ended), `attempt`
and `memory` one number when the same for every task.
"""
from __future__ import annotations

import array
import operator
from typing import Any, Callable, Iterator

from .status import CANCELED, COMPLETED, FAILED

C_OK, C_FAILED, C_CANCELED = ord("C"), ord("F"), ord("X")
STATUS = {C_OK: COMPLETED, C_FAILED: FAILED, C_CANCELED: CANCELED}


class ChunkResult:
    """Parallel columns, one entry per task; `errors` holds (type, message, traceback) by
    position. `index` is a range while the rows are consecutive tasks, else an array."""

    __slots__ = ("index", "_start", "end", "_attempt", "_memory", "status", "errors", "values",
                 "host", "worker")

    def __init__(self, host: str = "", worker: str = "") -> None:
        self.index: range | array.array = range(0)
        self._start: array.array | float = array.array("d")
        self.end = array.array("d")
        self._attempt: array.array | int = array.array("i")
        self._memory: array.array | float = array.array("f")
        self.status = bytearray()
        self.errors: dict[int, tuple[str, str | None, str | None]] = {}
        self.values: list[Any] = []
        self.host, self.worker = host, worker

    # start, attempt and memory stay one number, as published, until a row asks for them

    @property
    def start(self) -> array.array:
        if not isinstance(self._start, array.array):
            first = [self._start] if len(self.index) else []
            self._start = array.array("d", first) + self.end[:-1]
        return self._start

    @property
    def attempt(self) -> array.array:
        if not isinstance(self._attempt, array.array):
            self._attempt = array.array("i", [self._attempt]) * len(self.index)
        return self._attempt

    @property
    def memory(self) -> array.array:
        if not isinstance(self._memory, array.array):
            self._memory = array.array("f", [self._memory]) * len(self.index)
        return self._memory

    def clear(self) -> None:
        """Empty every column (end and values in place: the task loop's bound appends stay valid)."""
        self.index, self._start, self._attempt, self._memory = (
            range(0), array.array("d"), array.array("i"), array.array("f"))
        del self.end[:]
        del self.values[:]
        self.status.clear()
        self.errors.clear()

    def __len__(self) -> int:
        return len(self.index)

    def add_index(self, indices: range | array.array | list) -> None:
        """Append task indices, keeping a range while they stay consecutive."""
        index = self.index
        if type(indices) is range and type(index) is range and indices.step == 1 and (
                not index or index.stop == indices.start):
            self.index = range(index.start if index else indices.start, indices.stop)
            return
        if type(index) is range:
            self.index = index = array.array("q", index)
        index.extend(indices)

    def add(self, index: int, status: int, start: float, end: float, attempt: int, memory: float,
            value: Any = None, error: tuple[str, str | None, str | None] | None = None) -> None:
        if error is not None:
            self.errors[len(self.index)] = error
        self.add_index(range(index, index + 1))
        self.status.append(status)
        self.start.append(start)
        self.end.append(end)
        self.attempt.append(attempt)
        self.memory.append(memory)
        self.values.append(value)

    def extend(self, other: "ChunkResult") -> None:
        base = len(self.index)
        for pos, err in other.errors.items():
            self.errors[base + pos] = err
        self.add_index(other.index)
        for name in ("start", "end", "attempt", "memory", "status", "values"):
            getattr(self, name).extend(getattr(other, name))

    def sorted(self) -> "ChunkResult":
        """The same rows in task order (rows arrive out of order after a lost task process)."""
        index = self.index
        if type(index) is range or all(map(operator.lt, index, index[1:])):
            return self
        order = sorted(range(len(index)), key=index.__getitem__)
        out = ChunkResult(self.host, self.worker)
        for pos in order:
            out.add(self.index[pos], self.status[pos], self.start[pos], self.end[pos],
                    self.attempt[pos], self.memory[pos], self.values[pos], self.errors.get(pos))
        return out

    def failed(self) -> int | None:
        """Position of the first failed task, or None."""
        pos = self.status.find(C_FAILED)
        return None if pos < 0 else pos

    def to_dict(self) -> dict:
        """The published form: plain types, patterned columns stored by their pattern."""
        n = len(self.index)
        start, attempt, memory = self.start, self.attempt, self.memory
        if n and start[1:].tobytes() == self.end[:-1].tobytes():
            start = start[0]
        if n and attempt.tobytes() == (array.array("i", attempt[:1]) * n).tobytes():
            attempt = attempt[0]
        if n and memory.tobytes() == (array.array("f", memory[:1]) * n).tobytes():
            memory = memory[0]
        return {"host": self.host, "worker": self.worker, "index": self.index, "start": start,
                "end": self.end, "attempt": attempt, "memory": memory,
                "status": bytes(self.status), "errors": self.errors, "values": self.values}

    @classmethod
    def from_dict(cls, data: dict) -> "ChunkResult":
        out = cls(data.get("host", ""), data.get("worker", ""))
        out.index, out.end, out.values = data["index"], data["end"], data["values"]
        out._start, out._attempt, out._memory = data["start"], data["attempt"], data["memory"]
        out.status = bytearray(data["status"])
        out.errors = data.get("errors") or {}
        return out

    def rows(self, task_name: Callable[[int], str]) -> list[dict]:
        """Metrics rows (dicts), for tables and DataFrames."""
        return [self.row(pos, task_name) for pos in range(len(self.index))]

    def row(self, pos: int, task_name: Callable[[int], str]) -> dict:
        """The metrics row of the task at position `pos`."""
        index, start, end = self.index[pos], self.start[pos], self.end[pos]
        exc_type, message, tb = self.errors.get(pos, (None, None, None))
        return {
            "task_name": task_name(index), "task_index": index,
            "status": STATUS[self.status[pos]],
            "start_time": start or None, "end_time": end or None,
            "run_time": (end - start) if start and end else None,
            "exception": exc_type, "exception_message": message,
            "exception_traceback": tb, "host": self.host, "worker": self.worker,
            "attempt": self.attempt[pos], "peak_memory_mb": round(self.memory[pos], 1) or None,
        }

    def run_times(self) -> Iterator[float]:
        """Each task's run time in seconds (0 where it did not run)."""
        return (e - s if s and e else 0.0 for s, e in zip(self.start, self.end))


class PackedResult:
    """A whole chunk's rows as the task process pickled them, in task order: the worker
    publishes these bytes as they are instead of unpickling and pickling them again. With
    `published` set, the task process published them itself (True: its file is the chunk's
    result; False: another publisher was first) and `raw` is None."""

    __slots__ = ("raw", "count", "failed_pos", "published")

    def __init__(self, raw: bytes | None, count: int, failed_pos: int | None,
                 published: bool | None = None) -> None:
        self.raw, self.count, self.failed_pos, self.published = raw, count, failed_pos, published

    def __len__(self) -> int:
        return self.count

    def failed(self) -> int | None:
        return self.failed_pos


def canceled(indices: Any, attempts: Any, why: str, host: str, worker: str) -> ChunkResult:
    """Canceled rows for tasks that did not run."""
    return unfinished(indices, attempts, C_CANCELED, "Canceled", why, host, worker)


def unfinished(indices: Any, attempts: Any, status: int, exception: str, why: str, host: str,
               worker: str) -> ChunkResult:
    """Final rows, all alike, for tasks that will not run (again): canceled, or lost."""
    out = ChunkResult(host, worker)
    for index, attempt in zip(indices, attempts):
        out.add(index, status, 0.0, 0.0, attempt, 0.0, None, (exception, why, None))
    return out
