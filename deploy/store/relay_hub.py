"""The host's end of a relay: `python -m deploy.store.relay_hub --log FILE -- WORKER_ARGS...`.

Runs with stdin/stdout connected to the client (an SSH channel). It reads one config
frame (JSON: `{"env": {...}}`, variables for the worker), starts `python -m deploy.worker
WORKER_ARGS` in a session of its own with $DEPLOY_RELAY_SOCKET naming a private Unix
socket, answers with one hello frame (JSON: its pid and the worker's process group), then
forwards every worker connection's requests to the client and the replies back. It exits
with the worker's code when the worker ends, and stops the workers when the client goes.
Nothing but frames is ever written to stdout: stray output goes to the log.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .relay import SOCKET_ENV, FrameBuffer, frame, read_frame, swap_id


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it has no process left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Hub:
    """Multiplexes the worker processes' relay connections onto one channel."""

    def __init__(self, chan_in: int, chan_out: int) -> None:
        self.chan_in, self.chan_out = chan_in, chan_out
        self.dir = tempfile.mkdtemp(prefix="deploy-relay-")        # 0700
        self.path = os.path.join(self.dir, "hub.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(128)
        self.sel = selectors.DefaultSelector()
        self.pending: dict[int, tuple[socket.socket, int]] = {}
        self.next_id = 0
        self.proc: subprocess.Popen | None = None

    def start(self, worker_args: list[str], env: dict[str, str], log_fd: int) -> subprocess.Popen:
        env = {**os.environ, **env, SOCKET_ENV: self.path}
        self.proc = subprocess.Popen([sys.executable, "-m", "deploy.worker", *worker_args], env=env,
                                     stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                     start_new_session=True)
        return self.proc

    def run(self) -> int:
        """Forward frames until the worker exits (its code) or the client leaves (1)."""
        proc = self.proc
        chan_frames = FrameBuffer()
        self.sel.register(self.chan_in, selectors.EVENT_READ, "chan")
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        try:
            pidfd = os.pidfd_open(proc.pid)
            self.sel.register(pidfd, selectors.EVENT_READ, "exit")
        except (AttributeError, OSError):
            pidfd = None
        try:
            while True:
                for key, _ in self.sel.select(None if pidfd is not None else 0.2):
                    if key.data == "chan":
                        data = os.read(self.chan_in, 1 << 16)
                        if not data:
                            return 1
                        for body in chan_frames.feed(data):
                            self._route_reply(body)
                    elif key.data == "listen":
                        conn, _ = self.listener.accept()
                        conn.setblocking(True)
                        self.sel.register(conn, selectors.EVENT_READ, FrameBuffer())
                    elif key.data != "exit":
                        self._forward(key.fileobj, key.data)
                if proc.poll() is not None:
                    return proc.returncode
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _forward(self, conn: socket.socket, frames: FrameBuffer) -> None:
        try:
            data = conn.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(conn)
            conn.close()
            return
        out = []
        for body in frames.feed(data):
            self.next_id = (self.next_id + 1) & 0xFFFFFFFF
            original, body = swap_id(body, self.next_id)
            self.pending[self.next_id] = (conn, original)
            out.append(frame(body))
        if out:
            _write_all(self.chan_out, b"".join(out))

    def _route_reply(self, body: bytes) -> None:
        hub_id, _ = swap_id(body, 0)
        conn, original = self.pending.pop(hub_id, (None, 0))
        if conn is None or conn.fileno() < 0:
            return
        try:
            conn.sendall(frame(swap_id(body, original)[1]))
        except OSError:
            pass

    def stop_workers(self, grace: float = 3.0) -> None:
        """SIGTERM the worker's process group, SIGKILL what is left after `grace` seconds."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None and _killpg(proc.pid, signal.SIGTERM):
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _killpg(proc.pid, signal.SIGKILL)       # stragglers: tasks' own children
        deadline = time.monotonic() + 5
        while _killpg(proc.pid, 0) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)

    def close(self) -> None:
        """Close every worker connection (their store calls fail at once) and the socket."""
        for key in list(self.sel.get_map().values()):
            if isinstance(key.fileobj, socket.socket) and key.fileobj is not self.listener:
                key.fileobj.close()
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _terminate(signum: int, frame_: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.store.relay_hub", description=__doc__)
    parser.add_argument("--log", required=True, help="file for the workers' own stdout/stderr")
    parser.add_argument("worker_args", nargs=argparse.REMAINDER,
                        help="-- then the arguments of `python -m deploy.worker`")
    args = parser.parse_args(argv)
    worker_args = args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args
    chan_in, chan_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)                # until the log is open, strays go to the channel's stderr
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    hub = None
    try:
        config = json.loads(read_frame(lambda n: os.read(chan_in, n)) or b"{}")
        hub = Hub(chan_in, chan_out)
        log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        proc = hub.start(worker_args, config.get("env") or {}, log_fd)
        hello = {"pid": os.getpid(), "pgid": os.getpgrp(), "worker_pgid": proc.pid}
    except Exception as exc:
        _write_all(chan_out, frame(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()))
        if hub is not None:
            hub.close()
        return 1
    _write_all(chan_out, frame(json.dumps(hello).encode()))
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    try:
        return hub.run()
    finally:
        hub.close()              # without their store, workers stop quickly on SIGTERM
        hub.stop_workers()


if __name__ == "__main__":
    sys.exit(main())
