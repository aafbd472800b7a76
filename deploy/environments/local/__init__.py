"""Local (tasks in the caller's process, blocking) and LocalAsync (detached worker processes)."""
from __future__ import annotations

import functools
import os
import select
import time
from typing import Any, Callable

from ...worker.runner import HOST
from ...worker.processes import process_alive, stop_process_groups, wait_gone
from ...store.local import LocalStorage, home_job_store
from ..base import Environment, HostCapacity, Launch, machine_facts, positive_int


@functools.lru_cache(maxsize=None)
def _facts() -> tuple[float, float, int]:
    facts = machine_facts()
    return facts["cpus"], facts["memory_gb"], facts["gpus"]


def this_machine(workers: int | None) -> list[HostCapacity]:
    """This machine as the one host of a local environment (probed once per process)."""
    return [HostCapacity(HOST, *_facts(), workers=workers)]


class Local(Environment):
    """Runs every task in the calling process, one after another; create() returns when
    the job is done. For debugging: breakpoints and prints work as usual."""

    kind = "local"
    shares_memory = True

    def __init__(self, name: str = "local") -> None:
        super().__init__(name)

    @classmethod
    def default(cls) -> "Local":
        return cls()

    def num_workers(self) -> int:
        return 1

    def capacity(self) -> list[HostCapacity]:
        return this_machine(1)

    def job_store(self, job_id: str) -> LocalStorage:
        return home_job_store(job_id)

    def launch(self, launch: Launch) -> dict[str, Any]:
        from ...worker.loop import Worker
        Worker(launch.store, launch.spec, launch.functions, inline=True).run()
        return {}

    def alive(self, handle: dict[str, Any]) -> bool:
        return False


class LocalAsync(Environment):
    """N detached worker processes on this machine (default: one per core).

    Workers are forked from the caller, so the function and everything it closes over is
    shared copy-on-write, not pickled per task or per worker. They run in their own
    sessions and finish the job even if the caller exits.
    """

    kind = "local-async"
    shares_memory = True

    def __init__(self, name: str = "async", num_workers: int | None = None) -> None:
        super().__init__(name)
        self._num_workers = None if num_workers is None else positive_int(num_workers, "num_workers")

    @classmethod
    def default(cls) -> "LocalAsync":
        return cls()

    def settings(self) -> dict[str, Any]:
        return {"num_workers": self._num_workers}

    def num_workers(self) -> int:
        return self._num_workers or os.cpu_count() or 1

    def capacity(self) -> list[HostCapacity]:
        """This machine: tasks that ask for cores or memory run as many at once as fit in
        it, up to num_workers."""
        return this_machine(self.num_workers())

    def job_store(self, job_id: str) -> LocalStorage:
        return home_job_store(job_id)

    def launch(self, launch: Launch) -> dict[str, Any]:
        return self.start(launch, None)

    def start(self, launch: Launch, write: Callable[[], None] | None) -> dict[str, Any]:
        """Fork the workers first: they make their task processes while this process
        writes the job directory, and begin when it is written. If writing fails, they
        exit, and this returns (raising) only once they are gone, so the caller can remove
        the job directory with nothing left to write into it."""
        from ...worker.loop import reap_detached, start_workers
        err = launch.store.local_path("workers.err")
        os.makedirs(os.path.dirname(err), mode=0o700, exist_ok=True)
        err_fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        _close_finished_wakers()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        gate_r, gate_w = os.pipe() if write is not None else (None, None)
        try:
            pids = start_workers(launch.store.uri, launch.functions, launch.workers, detach=True,
                                 stderr_fd=err_fd, wake_fd=wake_w, gate=(gate_r, gate_w),
                                 spec=launch.spec)
        except BaseException:
            for fd in (wake_r, gate_r, gate_w):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            os.close(wake_w)
            os.close(err_fd)
        _wakers[tuple(pids)] = wake_r
        if write is not None:
            os.close(gate_r)
            try:
                write()
                try:
                    os.write(gate_w, b"1" * len(pids))  # go; closing without it stops them
                except BrokenPipeError:
                    pass                # every worker died already: the job's status says so
            except BaseException:
                os.close(gate_w)
                if not wait_gone(pids, 10.0):
                    stop_process_groups(pids)
                reap_detached()
                raise
            os.close(gate_w)
        return {"host": HOST, "pids": pids, "stderr": err}

    def describe_failure(self, handle: dict[str, Any]) -> str | None:
        """The end of what the workers wrote to stderr (a worker's own error, not a task's)."""
        try:
            with open(handle.get("stderr") or "", "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace").strip()
        except OSError:
            return None
        return f"the workers wrote:\n{tail}" if tail else None

    def alive(self, handle: dict[str, Any]) -> bool | None:
        from ...worker.loop import reap_detached
        reap_detached()                 # a status check is as good a time as any
        if handle.get("host") != HOST:
            return None
        return any(process_alive(p) for p in handle.get("pids", []))

    def cancel(self, handle: dict[str, Any]) -> None:
        if handle.get("host") == HOST:
            stop_process_groups(list(handle.get("pids", [])))

    def wait_for_change(self, handle: dict[str, Any], timeout: float) -> None:
        """Return when a worker publishes a result (workers this process started tell it
        through their wake pipe) or exits, or at timeout."""
        from ...worker.loop import reap_detached
        reap_detached()
        pids = handle.get("pids", []) if handle.get("host") == HOST else []
        waker = _wakers.get(tuple(pids))
        if waker is not None:
            if select.select([waker], [], [], timeout)[0]:
                _drain(tuple(pids))
            return
        alive = [p for p in pids if process_alive(p)]
        if alive:
            wait_gone(alive, timeout, any_exit=True)
        else:
            time.sleep(timeout)


_wakers: dict[tuple[int, ...], int] = {}    # workers' pids -> read end of their wake pipe


def _drain(key: tuple[int, ...]) -> None:
    """Empty a wake pipe; close it once every worker has closed its end."""
    fd = _wakers[key]
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            os.close(fd)
            del _wakers[key]
            return


def _close_finished_wakers() -> None:
    """Close the wake pipes of jobs whose workers have all exited (nobody may wait on them)."""
    for key in list(_wakers):
        _drain(key)
