"""Processes a task started do not outlive the task (Linux).

The task process is a child subreaper, so whatever its tasks start, however deep and
however detached (double fork, setsid), is reparented to it when the process between
them exits. After a task, `any_children()` costs one system call; only when something is
left does `end_children()` walk /proc, send SIGTERM, and SIGKILL what remains after a
grace. Standard library only.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Callable

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 1.0


def become_subreaper(prctl: Callable | None) -> bool:
    """Adopt the orphans of this process's descendants (prctl from ctypes, or None)."""
    return prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def any_children() -> bool:
    """Whether this process has a child, alive or not yet reaped (reaps nothing)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def children(pid: int | str = "self") -> set[int]:
    """The children of every thread of process `pid`."""
    found: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.update(map(int, f.read().split()))
        except OSError:
            pass
    return found


def tree(pid: int) -> list[int]:
    """`pid` and its descendants, parents first."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p) - set(out))
    return out


def end_children(grace: float = GRACE_SECONDS) -> bool:
    """Stop every descendant of this process: SIGTERM at once, SIGKILL to those left after
    `grace` seconds; reap them. Returns whether there was anything to do."""
    if not any_children():
        return False
    deadline = time.monotonic() + grace
    termed: set[int] = set()
    delay = 0.001
    while True:
        _reap_exited()
        if not any_children():       # orphans come to us as their parents exit: ask again
            return True
        alive = children()
        now = time.monotonic()
        if now > deadline + grace:   # none found to signal (no /proc/*/children): give up
            return True
        for top in alive:
            for pid in tree(top):
                if now > deadline or pid not in termed:
                    termed.add(pid)
                    _signal(pid, signal.SIGKILL if now > deadline else signal.SIGTERM)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def kill_tree(pid: int) -> None:
    """SIGKILL process `pid` and its descendants (stopped first, so that it forks no more)."""
    _signal(pid, signal.SIGSTOP)
    for p in reversed(tree(pid)):
        _signal(p, signal.SIGKILL)


def _reap_exited() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
