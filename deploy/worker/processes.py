"""Processes that are not our children: are they alive, wait for them, stop their groups.

Standard library only: the worker uses it too. Zombies count as gone (a container's init
may never reap them).
"""
from __future__ import annotations

import os
import select
import signal
import time


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first); None when the
    process is gone (or /proc is absent). Other errors (a /proc we may not read) raise."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def start_time(pid: int) -> int:
    """When the process started (clock ticks since boot; 0 where /proc cannot tell): with
    the pid, it names a process even after the pid is reused."""
    fields = _stat(pid)
    return int(fields[19]) if fields else 0


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    if os.path.isdir("/proc/self"):
        try:
            fields = _stat(pid)
        except OSError:
            return True                 # there, but not ours to read
        return fields is not None and fields[0] not in (b"Z", b"X")
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


def _members(pgids: list[int]) -> list[tuple[int, int]]:
    """(pid, pgid) of the live processes in these groups, from one pass over /proc."""
    if not os.path.isdir("/proc/self"):
        return [(p, p) for p in pgids if _signal_reaches(p)]
    wanted, found = set(pgids), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[2]) in wanted and fields[0] not in (b"Z", b"X"):
                found.append((int(entry), int(fields[2])))
    return found


def _signal_reaches(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def group_alive(pgid: int, started: int = 0) -> bool:
    """True while the group started as `pgid` (at `started`, when known) has a live
    process. A pid is not reused while a group bears it, so a group whose leader is gone
    but whose members live is still the same group; a live leader must have the recorded
    start time."""
    leader = _stat(pgid)
    if leader is not None and int(leader[2]) == pgid and leader[0] not in (b"Z", b"X"):
        return not started or int(leader[19]) == started
    return bool(_members([pgid]))


def _wait_groups_gone(pgids: list[int], timeout: float) -> list[int]:
    """Wait until the groups have no live process (or time is up); the groups left."""
    deadline = time.monotonic() + timeout
    while True:
        live = {group for _, group in _members(pgids)} if pgids else set()
        left = [g for g in pgids if g in live]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def stop_groups(groups: list[tuple[int, int]], grace: float = 1.0) -> list[int]:
    """SIGTERM the (pgid, start time) groups that still run (a worker, its task process and
    whatever its tasks started), SIGKILL what is left after `grace` seconds; return once
    they are gone, with the groups that would not die."""
    mine = [g for g, started in groups if group_alive(g, started)]
    for pgid in mine:
        _killpg(pgid, signal.SIGTERM)
    left = _wait_groups_gone(mine, grace)
    for pgid in left:
        _killpg(pgid, signal.SIGKILL)
    return _wait_groups_gone(left, 10.0)


def stop_process_groups(pids: list[int], grace: float = 1.0) -> None:
    """Stop the process groups these worker pids lead (see stop_groups)."""
    stop_groups([(pid, 0) for pid in pids], grace)
