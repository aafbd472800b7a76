"""Starting the worker loop in a forked child of a launcher that runs where the workers
run: the SSH agent, a YARN container.

Forking the launcher's interpreter (which has deploy imported already) instead of
exec'ing `python -m deploy.worker` saves an interpreter start per host and job. The child
runs in a session of its own, so its process group (its pid) holds the worker processes,
their task processes and whatever tasks start: one group to signal on cancel.
"""
from __future__ import annotations

import os
import signal
import sys


def start_worker(store_uri: str, processes: int, env: dict[str, str], log_path: str | None,
                 close_fds: tuple[int, ...] = ()) -> int:
    """Fork a child running `processes` workers on the job at `store_uri`, with `env` added
    to its environment and its stdout/stderr appended to `log_path` (None: this process's);
    the child's pid (= its process group). Its exit code is the worker loop's."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log_path else None
    pid = os.fork()
    if pid:
        if log_fd is not None:
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
        if log_fd is not None:
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.environ.update(env)
        from .loop import work
        work(store_uri, processes)
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)   # a message, as the interpreter would show it
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
