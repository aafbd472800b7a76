"""Relay storage: a job directory that stays on the client, reached over a byte stream.

Workers on a remote host open `relay://LABEL/JOB_ID`; their store verbs travel as
length-prefixed frames to a hub on the host (`deploy.store.relay_hub`), which forwards
them over one stream (an SSH channel, say) to the client, where `answer()` carries them
out against the real store. Nothing here knows about SSH: any pair of byte streams will do.

Frame: 4-byte big-endian length, then the body.
Request body:  request id (u32), verb (u8), path length (u16), path (UTF-8), data.
Response body: request id (u32), status (u8), data.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Callable, Iterator

from .base import Storage, StorageError

SOCKET_ENV = "DEPLOY_RELAY_SOCKET"     # where a worker finds its host's hub

_LEN = struct.Struct("!I")
_HEAD = struct.Struct("!IB")
_PATH = struct.Struct("!H")
MAX_FRAME = 1 << 30

GET, PUT, CREATE, LIST, DELETE, EXISTS = range(1, 7)
OK, NOT_FOUND, IS_DIR, ERROR = range(4)


def frame(body: bytes) -> bytes:
    """One frame: the body behind its length."""
    return _LEN.pack(len(body)) + body


class FrameBuffer:
    """Cuts a byte stream, fed in arbitrary pieces, into frame bodies."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.buf += data
        while len(self.buf) >= _LEN.size:
            (size,) = _LEN.unpack_from(self.buf)
            if size > MAX_FRAME:
                raise StorageError(f"relay: frame of {size} bytes is too large")
            end = _LEN.size + size
            if len(self.buf) < end:
                return
            body = bytes(self.buf[_LEN.size:end])
            del self.buf[:end]
            yield body


def read_frame(recv: Callable[[int], bytes]) -> bytes | None:
    """The next frame body from a blocking `recv(n)`, or None at the end of the stream."""
    head = _read_exact(recv, _LEN.size)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise StorageError(f"relay: frame of {size} bytes is too large")
    return _read_exact(recv, size)


def _read_exact(recv: Callable[[int], bytes], n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        part = recv(min(n - got, 1 << 20))
        if not part:
            return None
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def request(req_id: int, verb: int, path: str, data: bytes = b"") -> bytes:
    raw = path.encode()
    return _HEAD.pack(req_id, verb) + _PATH.pack(len(raw)) + raw + data


def reply(req_id: int, status: int, data: bytes = b"") -> bytes:
    return _HEAD.pack(req_id, status) + data


def tag(job: str, body: bytes) -> bytes:
    """A body labelled with its job, for a stream that carries several jobs' relays."""
    raw = job.encode()
    return bytes([len(raw)]) + raw + body


def untag(body: bytes) -> tuple[str, bytes]:
    """(job, body) of a `tag`ged body."""
    size = body[0]
    return body[1:1 + size].decode(), body[1 + size:]


def swap_id(body: bytes, req_id: int) -> tuple[int, bytes]:
    """(the body's request id, the body carrying `req_id` instead): the hub's routing."""
    (old,) = struct.unpack_from("!I", body)
    return old, struct.pack("!I", req_id) + body[4:]


# ---------------------------------------------------------------------------- worker side

class RelayStorage(Storage):
    """The worker's end: every verb is one request to the host's hub, answered in order.

    The hub's Unix socket comes from $DEPLOY_RELAY_SOCKET; a forked worker opens its own
    connection (one per process), so requests of different processes never interleave.
    """

    def __init__(self, uri: str, socket_path: str | None = None) -> None:
        self.uri = uri
        self.socket_path = socket_path or os.environ.get(SOCKET_ENV)
        if not self.socket_path:
            raise StorageError(f"{uri}: a relay store is opened only by workers started through "
                               f"a relay hub (${SOCKET_ENV} is not set)")
        self._sock: socket.socket | None = None
        self._pid = 0
        self._next = 0
        self._lock = threading.Lock()

    def _connection(self) -> socket.socket:
        if self._sock is None or self._pid != os.getpid():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                raise StorageError(f"{self.uri}: cannot reach the relay hub: {exc}") from None
            self._sock, self._pid = sock, os.getpid()
        return self._sock

    def _call(self, verb: int, path: str, data: bytes = b"") -> bytes:
        with self._lock:
            sock = self._connection()
            self._next = (self._next + 1) & 0xFFFFFFFF
            try:
                sock.sendall(frame(request(self._next, verb, path, data)))
                body = read_frame(sock.recv)
            except OSError as exc:
                self._sock = None
                raise StorageError(f"{self.uri}: relay connection lost: {exc}") from None
            if body is None:
                self._sock = None
                raise StorageError(f"{self.uri}: the relay closed (client gone?)")
        req_id, status = _HEAD.unpack_from(body)
        payload = body[_HEAD.size:]
        if status == OK:
            return payload
        if status == NOT_FOUND:
            raise FileNotFoundError(path)
        if status == IS_DIR:
            raise IsADirectoryError(path)
        raise StorageError(f"{self.uri}: {payload.decode(errors='replace')}")

    def get(self, path: str) -> bytes:
        return self._call(GET, path)

    def put(self, path: str, data: bytes) -> None:
        self._call(PUT, path, data)

    def create_exclusive(self, path: str, data: bytes = b"") -> bool:
        return self._call(CREATE, path, data) == b"\x01"

    def list(self, path: str) -> list[str]:
        raw = self._call(LIST, path)
        return raw.decode().split("\n") if raw else []

    def delete(self, path: str) -> None:
        self._call(DELETE, path)

    def exists(self, path: str) -> bool:
        return self._call(EXISTS, path) == b"\x01"


# ---------------------------------------------------------------------------- client side

def _checked(path: str) -> str:
    """Refuse paths that would leave the job directory (a host is not trusted with the disk)."""
    if path.startswith("/") or "\\" in path or any(p in ("..", ".") for p in path.split("/")):
        raise ValueError(f"path {path!r} leaves the job directory")
    return path


def verb_and_path(body: bytes) -> tuple[int, str]:
    """What a request asks for: (verb, path)."""
    (size,) = _PATH.unpack_from(body, _HEAD.size)
    start = _HEAD.size + _PATH.size
    return body[4], body[start:start + size].decode(errors="replace")


def answer(store: Storage, body: bytes) -> bytes:
    """Carry out one request against `store`; the reply body."""
    req_id, verb = _HEAD.unpack_from(body)
    (size,) = _PATH.unpack_from(body, _HEAD.size)
    start = _HEAD.size + _PATH.size
    try:
        path = _checked(body[start:start + size].decode())
        data = body[start + size:]
        if verb == GET:
            return reply(req_id, OK, store.get(path))
        if verb == PUT:
            store.put(path, data)
            return reply(req_id, OK)
        if verb == CREATE:
            return reply(req_id, OK, b"\x01" if store.create_exclusive(path, data) else b"\x00")
        if verb == LIST:
            return reply(req_id, OK, "\n".join(store.list(path)).encode())
        if verb == DELETE:
            if not path:
                raise ValueError("a worker may not delete the job directory")
            store.delete(path)
            return reply(req_id, OK)
        if verb == EXISTS:
            return reply(req_id, OK, b"\x01" if store.exists(path) else b"\x00")
        raise ValueError(f"unknown relay verb {verb}")
    except FileNotFoundError:
        return reply(req_id, NOT_FOUND)
    except IsADirectoryError:
        return reply(req_id, IS_DIR)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return reply(req_id, ERROR, f"{type(exc).__name__}: {exc}".encode())
