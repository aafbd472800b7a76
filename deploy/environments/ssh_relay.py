"""The client's end of relayed jobs: one SSH channel per (job, host), served by a thread.

The channel runs the host's relay hub (deploy.store.relay_hub); a daemon thread answers
its store requests from the job directory on the client (deploy.store.relay.serve). The
workers live only as long as the channel: if this process exits, the hubs see the channel
close and stop their workers, so a relayed job needs its client alive.
"""
from __future__ import annotations

import json
import socket
import threading
from typing import Any

from ..store import Storage
from ..store.relay import frame, read_frame, serve
from .ssh_connect import HostError

_lock = threading.Lock()
_running: dict[str, list[Any]] = {}        # job id -> channels being served in this process


def start_relay(host: Any, command: str, env: dict[str, str], store: Storage, job_id: str,
                timeout: float) -> dict[str, Any]:
    """Start the hub on `host` with `command`, wait for its hello, serve it in a thread;
    the hello (its pid and the workers' process group)."""
    chan = host.client.get_transport().open_session(timeout=timeout)
    try:
        chan.exec_command(command)
        chan.sendall(frame(json.dumps({"env": env}).encode()))
        chan.settimeout(max(timeout, 30.0))
        try:
            body = read_frame(chan.recv)
        except socket.timeout:
            body = None
        hello = json.loads(body) if body else {}
        if not hello or "error" in hello:
            raise HostError(host.spec.describe(), "could not start workers: "
                            + (hello.get("error") or _stderr(chan) or "the relay hub did not answer"))
        chan.settimeout(None)
    except BaseException:
        chan.close()
        raise
    with _lock:
        host.relays += 1
        _running.setdefault(job_id, []).append(chan)
    threading.Thread(target=_serve, args=(host, chan, store, job_id), daemon=True,
                     name=f"deploy-relay-{host.label}-{job_id}").start()
    return hello


def _stderr(chan: Any) -> str:
    chan.settimeout(5.0)
    data = b""
    try:
        while True:
            part = chan.recv_stderr(1 << 16)
            if not part:
                break
            data += part
    except (socket.timeout, OSError):
        pass
    return data.decode(errors="replace").strip()[-800:]


def _serve(host: Any, chan: Any, store: Storage, job_id: str) -> None:
    try:
        serve(store, chan.recv, chan.sendall)
    except (OSError, EOFError, ValueError):
        pass                 # the host or the connection went away: the lease covers it
    finally:
        chan.close()
        with _lock:
            channels = _running.get(job_id, [])
            if chan in channels:
                channels.remove(chan)
            if not channels:
                _running.pop(job_id, None)
            host.relays -= 1
            close = host.closing and host.relays == 0
        if close:
            host.close()


def relays_running(job_id: str) -> bool:
    """True while this process relays the job to at least one host."""
    with _lock:
        return bool(_running.get(job_id))
