"""Reading task output from a job directory: whole chunk logs, and following live ones."""
from __future__ import annotations

from typing import Iterator

from ..store import Storage, layout
from . import runner
from .spec import JobSpec


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
    """Yields new output lines of a running job, each prefixed by its task name."""

    def __init__(self, store: Storage, spec: JobSpec) -> None:
        self.store, self.spec = store, spec
        self.offsets: dict[str, int] = {}      # file name -> bytes already shown
        self.finished: set[int] = set()
        self.task: dict[str, str] = {}          # file name -> task of the last marker seen
        self.partial: dict[str, bytes] = {}

    def _name(self, chunk: int, index: int) -> str:
        if chunk == self.spec.chunk_count:
            return self.spec.combiner_task_name() if self.spec.has_combiner else "combiner"
        return self.spec.task_name(index)

    def poll(self) -> Iterator[str]:
        names = self.store.list(layout.LOGS)
        finals = {int(n) for n in names if n.isdigit()}
        for name in names:
            head = name.split(".")[0]
            if not head.isdigit():
                continue
            chunk = int(head)
            if chunk in self.finished:
                continue
            if name.isdigit():
                self.finished.add(chunk)
                # the published log repeats the live one it came from: show only what is new
                live = [k for k in self.offsets if k.startswith(head + ".")]
                shown = 0
                if live:
                    newest = max(live, key=lambda k: self.offsets[k])
                    shown = self.offsets[newest]
                    self.task[name] = self.task.get(newest, "")
                    self.partial[name] = self.partial.pop(newest, b"")
                yield from self._read(name, chunk, shown, final=True)
            elif name.endswith(".live") and chunk not in finals:
                yield from self._read(name, chunk, self.offsets.get(name, 0), final=False)

    def _read(self, name: str, chunk: int, offset: int, final: bool) -> Iterator[str]:
        try:
            data = self.store.get(f"{layout.LOGS}/{name}")
        except FileNotFoundError:
            return
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
            yield f"[{self.task.get(name, self._name(chunk, 0))}] {line.decode(errors='replace')}"
