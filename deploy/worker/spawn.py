"""Starting the worker loop in a forked child of a host-side launcher (relay hub, agent).

Forking the launcher's interpreter (which has deploy imported already) instead of
exec'ing `python -m deploy.worker` saves an interpreter start per host and job. The child
runs in a session of its own, so its process group (its pid) holds the worker processes,
their task processes and whatever tasks start: one group to signal on cancel.
"""
from __future__ import annotations

import os
import signal
import sys


def start_worker(worker_args: list[str], env: dict[str, str], log_path: str,
                 close_fds: tuple[int, ...] = ()) -> int:
    """Fork a child running `python -m deploy.worker WORKER_ARGS` with `env` added to its
    environment and its stdout/stderr appended to `log_path`; the child's pid (= pgid)."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pid = os.fork()
    if pid:
        os.close(log_fd)
        return pid
    code = 1
    try:
        os.setsid()
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.environ.update(env)
        from deploy.worker import loop as worker
        code = worker.main(list(worker_args)) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
