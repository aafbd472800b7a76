"""The client's end of a host's agent (deploy.environments.ssh.agent serve).

One SSH channel per host and client process carries both the control requests (start a
job's workers) and, for relayed jobs, the workers' store requests, which a reader thread
answers from the job directory on the client. A relayed job needs this process alive: when
it exits, the channel closes and the agent stops the relayed jobs' workers.
"""
from __future__ import annotations

import json
import socket
import threading
from typing import Any, Callable

from ...store import Storage
from ...jobdir import layout
from ...store.relay import CREATE, ERROR, PUT, FrameBuffer, answer, frame, reply, swap_id, tag, untag, verb_and_path
from .agent import CONTROL, RELAY
from .connect import HostError


class AgentSession:
    """A running agent on one host: start jobs there, relay their stores while they run."""

    def __init__(self, host: Any, command: str, timeout: float,
                 on_change: Callable[[str], None] = lambda job: None) -> None:
        self.host = host
        self.on_change = on_change                  # a relayed job published a result, or ended
        self.chan = host.client.get_transport().open_session(timeout=timeout)
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.waiting: dict[int, list] = {}          # request id -> [event, reply]
        self.stores: dict[str, Storage] = {}        # relayed jobs still running
        self.next_id = 0
        self.ready = threading.Event()
        self.closed = False
        self.chan.exec_command(command)
        threading.Thread(target=self._read, daemon=True, name=f"deploy-agent-{host.label}").start()
        if not self.ready.wait(max(timeout, 30.0)) or self.closed:
            why = self._stderr() or "it did not answer"
            self.close()
            raise HostError(host.spec.describe(), f"cannot start the deploy agent: {why}")

    # -- the stream ---------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        with self.send_lock:
            self.chan.sendall(data)

    def _read(self) -> None:
        frames = FrameBuffer()
        try:
            while True:
                data = self.chan.recv(1 << 16)
                if not data:
                    return
                out = []
                for body in frames.feed(data):
                    if body[:1] == RELAY:
                        out.append(frame(RELAY + self._answer(body[1:])))
                    elif body[:1] == CONTROL:
                        self._control(json.loads(body[1:]))
                if out:
                    self._send(b"".join(out))
        except (OSError, EOFError, ValueError):
            pass                       # the host or the connection went away
        finally:
            self._closed()

    def _answer(self, body: bytes) -> bytes:
        job, request = untag(body)
        store = self.stores.get(job)
        if store is None:
            return tag(job, reply(swap_id(request, 0)[0], ERROR, f"job {job} is not relayed here".encode()))
        response = answer(store, request)
        verb, path = verb_and_path(request)
        if verb in (CREATE, PUT) and path.startswith((layout.RESULTS + "/", layout.COMBINED)):
            self.on_change(job)
        return tag(job, response)

    def _control(self, msg: dict) -> None:
        if msg.get("op") == "ready":
            self.ready.set()
        elif msg.get("op") == "ended":
            with self.lock:
                self.stores.pop(msg.get("job"), None)
                idle = not self.stores
            self.on_change(msg.get("job"))
            if idle and self.host.closing:
                self.host.close()
        elif "id" in msg:
            with self.lock:
                waiter = self.waiting.pop(msg["id"], None)
            if waiter is not None:
                waiter[1] = msg
                waiter[0].set()

    def _closed(self) -> None:
        with self.lock:
            self.closed = True
            jobs, self.stores = list(self.stores), {}
            waiters, self.waiting = list(self.waiting.values()), {}
        for job in jobs:
            self.on_change(job)
        self.ready.set()
        for waiter in waiters:
            waiter[0].set()

    def _stderr(self) -> str:
        self.chan.settimeout(5.0)
        data = b""
        try:
            while True:
                part = self.chan.recv_stderr(1 << 16)
                if not part:
                    break
                data += part
        except (socket.timeout, OSError):
            pass
        return data.decode(errors="replace").strip()[-800:]

    # -- requests -----------------------------------------------------------------------

    def request(self, message: dict, timeout: float = 120.0) -> dict:
        """Send a control request and wait for its reply."""
        with self.lock:
            if self.closed:
                raise HostError(self.host.spec.describe(), "the connection to the agent is closed")
            self.next_id += 1
            waiter = self.waiting[self.next_id] = [threading.Event(), None]
            message = {**message, "id": self.next_id}
        self._send(frame(CONTROL + json.dumps(message).encode()))
        if not waiter[0].wait(timeout) or waiter[1] is None:
            raise HostError(self.host.spec.describe(), "the agent did not answer (connection lost?)")
        return waiter[1]

    def start_job(self, job: str, uri: str, processes: int, env: dict[str, str], log: str,
                  relay_store: Storage | None) -> dict:
        """Start the job's workers on the host; {"pgid": ..., "start": ...}."""
        if relay_store is not None:
            with self.lock:
                self.stores[job] = relay_store      # before the first request can arrive
        started = self.request({"op": "start", "job": job, "uri": uri, "processes": processes,
                                "env": env, "log": log, "relay": relay_store is not None})
        if "error" in started:
            with self.lock:
                self.stores.pop(job, None)
            raise HostError(self.host.spec.describe(), f"could not start workers: {started['error']}")
        return started

    def relaying(self, job: str) -> bool:
        with self.lock:
            return job in self.stores

    def busy(self) -> bool:
        with self.lock:
            return bool(self.stores)

    def usable(self) -> bool:
        transport = self.chan.get_transport()
        return not self.closed and transport is not None and transport.is_active()

    def close(self) -> None:
        self.chan.close()
