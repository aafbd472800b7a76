"""The host's end of a relay: many jobs' worker connections onto one stream to the client.

A launcher on the host (the SSH agent) owns the stream and a selector; for each relayed
job it opens a private Unix socket (`open(job)`, its path goes to the workers as
$DEPLOY_RELAY_SOCKET). Requests read from worker connections are renumbered, tagged with
their job and handed to `send`; `reply(job, body)` routes each answer back to the
connection that asked. Standard library only: it runs on every host.
"""
from __future__ import annotations

import os
import selectors
import socket
from typing import Callable

from .relay import FrameBuffer, frame, swap_id

_LISTEN, _CONN = "relay-listen", "relay-conn"


def _socket_dir() -> str:
    """A fresh private directory for a socket, with a path short enough for AF_UNIX."""
    base = os.environ.get("TMPDIR") or "/tmp"
    if len(base) > 60:
        base = "/tmp"
    path = os.path.join(base, f"deploy-relay-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(path, 0o700)
    return path


class RelayHub:
    """Routes relay frames between worker connections (per job) and `send(job, body)`."""

    def __init__(self, sel: selectors.BaseSelector, send: Callable[[str, bytes], None]) -> None:
        self.sel, self.send = sel, send
        self.jobs: dict[str, tuple[str, socket.socket]] = {}
        self.conns: dict[str, set[socket.socket]] = {}
        self.pending: dict[int, tuple[socket.socket, int]] = {}
        self.next_id = 0

    def open(self, job: str) -> str:
        """Listen for the job's workers; the socket's path."""
        folder = _socket_dir()
        path = os.path.join(folder, "hub.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(128)
        self.jobs[job] = (folder, listener)
        self.conns[job] = set()
        self.sel.register(listener, selectors.EVENT_READ, (_LISTEN, job))
        return path

    def fds(self) -> list[int]:
        """Every descriptor the hub holds (a forked worker closes them)."""
        return [s.fileno() for _, s in self.jobs.values()] + [
            c.fileno() for conns in self.conns.values() for c in conns]

    def handle(self, key: selectors.SelectorKey) -> bool:
        """Serve a ready listener or connection of the hub; False when the key is not ours."""
        data = key.data
        if not isinstance(data, tuple) or data[0] not in (_LISTEN, _CONN):
            return False
        if data[0] == _LISTEN:
            conn, _ = key.fileobj.accept()
            conn.setblocking(True)
            self.conns[data[1]].add(conn)
            self.sel.register(conn, selectors.EVENT_READ, (_CONN, data[1], FrameBuffer()))
            return True
        conn, job, frames = key.fileobj, data[1], data[2]
        try:
            chunk = conn.recv(1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(job, conn)
            return True
        for body in frames.feed(chunk):
            self.next_id = (self.next_id + 1) & 0xFFFFFFFF
            original, body = swap_id(body, self.next_id)
            self.pending[self.next_id] = (conn, original)
            self.send(job, body)
        return True

    def reply(self, body: bytes) -> None:
        """Hand an answer from the client to the connection that asked."""
        hub_id, _ = swap_id(body, 0)
        conn, original = self.pending.pop(hub_id, (None, 0))
        if conn is None or conn.fileno() < 0:
            return
        try:
            conn.sendall(frame(swap_id(body, original)[1]))
        except OSError:
            pass

    def _drop(self, job: str, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        self.conns.get(job, set()).discard(conn)
        conn.close()

    def close(self, job: str) -> None:
        """Stop relaying the job: its connections close, so its workers' store calls fail."""
        for conn in list(self.conns.pop(job, ())):
            self.sel.unregister(conn)
            conn.close()
        folder, listener = self.jobs.pop(job, (None, None))
        if listener is not None:
            self.sel.unregister(listener)
            listener.close()
            for path in (os.path.join(folder, "hub.sock"), folder):
                try:
                    (os.rmdir if path == folder else os.unlink)(path)
                except OSError:
                    pass

    def close_all(self) -> None:
        for job in list(self.jobs):
            self.close(job)
