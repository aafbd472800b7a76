"""Local (tasks in the caller's process, blocking) and LocalAsync (detached worker processes)."""
from __future__ import annotations

import os
import select
import signal
import time
from typing import Any

from ..jobs.runner import HOST
from ..store.local import LocalStorage, home_job_store
from .base import Environment, Launch


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def local_job_store(job_id: str) -> LocalStorage:
    """A new job directory under the deploy home, private to the user."""
    return home_job_store(job_id)


class Local(Environment):
    """Runs every task in the calling process, one after another; create() returns when
    the job is done. For debugging: breakpoints and prints work as usual."""

    kind = "local"

    def __init__(self, name: str = "local") -> None:
        super().__init__(name)

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any]) -> "Local":
        return cls(name)

    def num_workers(self) -> int:
        return 1

    def job_store(self, job_id: str) -> LocalStorage:
        return local_job_store(job_id)

    def launch(self, launch: Launch) -> dict[str, Any]:
        from ..worker import Worker
        Worker(launch.store, launch.spec, launch.functions, inline=True).run()
        return {}

    def alive(self, handle: dict[str, Any]) -> bool:
        return False


def _proc_state(pid: int) -> str | None:
    """The process's state letter from /proc (None when it is gone or /proc is absent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    except OSError:
        return "?"


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    if os.path.isdir("/proc/self"):
        state = _proc_state(pid)
        return state is not None and state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_gone(pids: list[int], timeout: float, any_exit: bool = False) -> bool:
    """Wait until none of `pids` runs (or, with `any_exit`, one of them stops); they need
    not be our children. True if that happened before `timeout`."""
    deadline = time.monotonic() + timeout
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except (ProcessLookupError, AttributeError, OSError):
            pass
    try:
        waiting = list(fds)
        while any(process_alive(p) for p in pids):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # a pidfd turns readable when its process exits; zombies are checked above
            ready, _, _ = select.select(waiting, [], [], min(remaining, 0.05))
            if ready and any_exit:
                return True
            waiting = [fd for fd in waiting if fd not in ready]
        return True
    finally:
        for fd in fds:
            os.close(fd)


def group_members(pgids: list[int]) -> list[int]:
    """Live processes in any of these process groups (Linux /proc; else just the leaders)."""
    if not os.path.isdir("/proc/self"):
        return list(pgids)
    wanted, found = set(pgids), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in wanted and fields[0] not in (b"Z", b"X"):
                found.append(int(entry))
    return found


def stop_process_groups(pids: list[int], grace: float = 1.0) -> None:
    """SIGTERM each worker's process group (worker, its task process, what tasks started),
    SIGKILL what is left after `grace` seconds, and return once all of them are gone."""
    for pid in pids:
        _killpg(pid, signal.SIGTERM)
    if not wait_gone(pids, grace):
        for pid in pids:
            _killpg(pid, signal.SIGKILL)
        wait_gone(pids, 10.0)
    stragglers = group_members(pids)    # processes the tasks started, still exiting
    if stragglers:
        for pid in pids:
            _killpg(pid, signal.SIGKILL)
        wait_gone(stragglers, 10.0)


class LocalAsync(Environment):
    """N detached worker processes on this machine (default: one per core).

    Workers are forked from the caller, so the function and everything it closes over is
    shared copy-on-write, not pickled per task or per worker. They run in their own
    sessions and finish the job even if the caller exits.
    """

    kind = "local-async"

    def __init__(self, name: str = "async", num_workers: int | None = None) -> None:
        super().__init__(name)
        self._num_workers = None if num_workers is None else _positive_int(num_workers, "num_workers")

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any]) -> "LocalAsync":
        return cls(name, num_workers=settings.get("num_workers"))

    def settings(self) -> dict[str, Any]:
        return {"num_workers": self._num_workers}

    def num_workers(self) -> int:
        return self._num_workers or os.cpu_count() or 1

    def job_store(self, job_id: str) -> LocalStorage:
        return local_job_store(job_id)

    def launch(self, launch: Launch) -> dict[str, Any]:
        from ..worker import start_workers
        pids = start_workers(launch.store.uri, launch.functions, launch.workers, detach=True,
                             stderr_path=launch.store.local_path("workers.err"))
        return {"host": HOST, "pids": pids}

    def alive(self, handle: dict[str, Any]) -> bool | None:
        if handle.get("host") != HOST:
            return None
        return any(process_alive(p) for p in handle.get("pids", []))

    def cancel(self, handle: dict[str, Any]) -> None:
        if handle.get("host") == HOST:
            stop_process_groups(list(handle.get("pids", [])))

    def wait_for_change(self, handle: dict[str, Any], timeout: float) -> None:
        """Return when a worker exits (the last one exits as the job ends), or at timeout."""
        pids = handle.get("pids", []) if handle.get("host") == HOST else []
        alive = [p for p in pids if process_alive(p)]
        if alive:
            wait_gone(alive, timeout, any_exit=True)
        else:
            time.sleep(timeout)
