"""Reading task output from a job directory: whole chunk logs, and following live ones."""
from __future__ import annotations

import hashlib
import time
from typing import Any, Iterator

from ..store import Storage
from ..jobdir import layout
from ..worker import runner
from ..jobdir.spec import JobSpec


def read_chunk_log(store: Storage, chunk: int) -> list[tuple[int, int, bytes]]:
    """(task_index, attempt, output) of one chunk: the published log, else the newest live
    one. A worker publishes the log right after the result and then drops the live file,
    so a live file gone between listing and reading means: read the published one."""
    prefix = layout.chunk_name(chunk) + "."
    for _ in range(2):
        try:
            return _last_attempts(runner.split_log(store.get(layout.log(chunk))))
        except FileNotFoundError:
            pass
        live = sorted((n for n in store.list(layout.LOGS) if n.startswith(prefix) and n.endswith(".live")),
                      key=lambda n: int(n.split(".")[1]))
        try:
            if live:
                return _last_attempts(runner.split_log(store.get(f"{layout.LOGS}/{live[-1]}")))
        except FileNotFoundError:
            pass
    return []


def _last_attempts(pieces: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Keep each task's output from its last attempt only."""
    last = {}
    for index, attempt, _ in pieces:
        last[index] = max(attempt, last.get(index, attempt))
    return [p for p in pieces if p[1] == last[p[0]]]


class LogFollower:
    """Yields new output lines of a running job, each prefixed by its task name, every line
    exactly once: a chunk's live log is followed while it runs, then only what its
    published log adds to the attempt already shown."""

    def __init__(self, store: Storage, spec: JobSpec) -> None:
        self.store, self.spec = store, spec
        self.offsets: dict[str, int] = {}      # file name -> bytes already shown
        self.shown: dict[str, Any] = {}        # live file name -> sha256 of those bytes
        self.finished: set[int] = set()
        self.task: dict[str, str] = {}          # file name -> task of the last marker seen
        self.partial: dict[str, bytes] = {}

    def _name(self, chunk: int, index: int) -> str:
        if chunk == self.spec.chunk_count:
            return self.spec.combiner_task_name() if self.spec.has_combiner else "combiner"
        return self.spec.task_name(index)

    def poll(self) -> Iterator[str]:
        """Lines added since the last poll."""
        yield from self._poll(self.store.list(layout.LOGS))

    def drain(self, timeout: float = 5.0) -> Iterator[str]:
        """The rest, once the job has ended: a worker publishes a chunk's result before its
        log, so wait (up to `timeout`) until no chunk is left with only a live log."""
        deadline = time.monotonic() + timeout
        while True:
            names = self.store.list(layout.LOGS)
            yield from self._poll(names)
            pending = {n.split(".")[0] for n in names if n.endswith(".live")} - {
                n for n in names if n.isdigit()}
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        for name in sorted(k for k in self.partial if self.partial[k]):
            # a worker that died mid-line leaves a live log without its last newline
            chunk = int(name.split(".")[0])
            if chunk not in self.finished:
                yield self._line(name, chunk, self.partial.pop(name))

    def _poll(self, names: list[str]) -> Iterator[str]:
        finals = {int(n) for n in names if n.isdigit()}
        for name in names:
            head = name.split(".")[0]
            if not head.isdigit():
                continue
            chunk = int(head)
            if chunk in self.finished:
                continue
            if name.isdigit():
                yield from self._publish(name, chunk)
            elif name.endswith(".live") and chunk not in finals:
                yield from self._read(name, chunk, self.offsets.get(name, 0), final=False)

    def _publish(self, name: str, chunk: int) -> Iterator[str]:
        """A chunk's published log: it repeats one attempt's live log, the one whose shown
        bytes it starts with; show only what follows them."""
        try:
            data = self.store.get(f"{layout.LOGS}/{name}")
        except FileNotFoundError:
            return
        self.finished.add(chunk)
        live = sorted((k for k in self.shown if k.split(".")[0] == name),
                      key=lambda k: -int(k.split(".")[1]))
        source = next((k for k in live if hashlib.sha256(data[:self.offsets[k]]).digest()
                       == self.shown[k].digest()), None)
        shown = 0
        if source is not None:
            shown = self.offsets[source]
            self.task[name] = self.task.get(source, "")
            self.partial[name] = self.partial.pop(source, b"")
        for k in live:
            self.partial.pop(k, None)
        yield from self._lines(name, chunk, data, shown, final=True)

    def _read(self, name: str, chunk: int, offset: int, final: bool) -> Iterator[str]:
        try:
            data = self.store.get(f"{layout.LOGS}/{name}")
        except FileNotFoundError:
            return        # published meanwhile: the next poll shows the rest from there
        if len(data) < offset:
            return        # not the file we followed (rewritten); the published log will tell
        self.shown.setdefault(name, hashlib.sha256()).update(data[offset:])
        yield from self._lines(name, chunk, data, offset, final)

    def _lines(self, name: str, chunk: int, data: bytes, offset: int, final: bool) -> Iterator[str]:
        new = self.partial.pop(name, b"") + data[offset:]
        self.offsets[name] = len(data)
        lines = new.split(b"\n")
        if not final:
            self.partial[name] = lines.pop()
        elif lines and lines[-1] == b"":
            lines.pop()
        for line in lines:
            if line.startswith(runner.LOG_MARK):
                parts = line[1:].split()
                self.task[name] = self._name(chunk, int(parts[0])) if parts else "?"
                continue
            yield self._line(name, chunk, line)

    def _line(self, name: str, chunk: int, line: bytes) -> str:
        return f"[{self.task.get(name, self._name(chunk, 0))}] {line.decode(errors='replace')}"
