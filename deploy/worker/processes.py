"""Processes that are not our children: are they alive, wait for them, stop their groups.

Standard library only: the worker uses it too. Zombies count as gone (a container's init
may never reap them).
"""
from __future__ import annotations

import os
import select
import signal
import time


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
    """Signal the group `pid` leads; the process alone if it has not made its group yet."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    except PermissionError:
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
