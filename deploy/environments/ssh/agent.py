"""The host's side of SshCluster, run through SSH with the shipped runtime on PYTHONPATH.

    python -m deploy.environments.ssh.agent serve --log FILE [--preload MODULE...]
        the per-connection agent: imports the worker once, then for each job the client
        asks for forks the worker loop (warm, no interpreter start) into a session of its
        own, and relays relayed jobs' store requests over its stdin/stdout. When the client
        goes, it stops the relayed jobs' workers (they need the client) and exits; workers
        of jobs in a shared store run on.
    python -m deploy.environments.ssh.agent kill PGID:START...
        SIGTERM the workers' process groups (as `serve` reported them: a group whose pid
        was reused since is left alone), SIGKILL what is left after a grace period.
    python -m deploy.environments.ssh.agent alive PGID:START...
        prints the JSON list of those groups that still have a live process.

Protocol of `serve` (frames as in deploy.store.relay): b"C" + JSON is a control message
(client: {"op": "start", "id": n, ...}; agent: {"op": "ready"}, {"id": n, "pgid", "start"} or
{"id": n, "error": ...}, {"op": "ended", "job": ..., "code": ...}); b"R" + a job-tagged
relay body is a store request (agent to client) or its answer (client to agent).
Standard library and deploy only: it runs on every host.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import selectors
import signal
import sys

from ...jobdir import layout
from ...store import open_store
from ...store.relay import SOCKET_ENV, FrameBuffer, frame, tag, untag
from ...store.relay_hub import RelayHub
from ...worker.processes import group_alive, start_time, stop_groups
from ...worker.spawn import start_worker

CONTROL, RELAY = b"C", b"R"


def _group(text: str) -> tuple[int, int]:
    pgid, _, started = text.partition(":")
    return int(pgid), int(started or 0)


# ---------------------------------------------------------------------------- the agent

class Agent:
    """One client connection's agent: starts jobs' workers, relays their store requests."""

    def __init__(self, chan_in: int, chan_out: int) -> None:
        self.chan_in, self.chan_out = chan_in, chan_out
        self.sel = selectors.DefaultSelector()
        self.hub = RelayHub(self.sel, self._send_relay)
        self.children: dict[int, dict] = {}       # worker pid -> {"job", "relay", "pidfd"}
        self.out: list[bytes] = []                # frames for the client, written by flush()
        self.unsent = bytearray()                 # what the channel did not take yet
        self.writing = False                      # chan_out registered for EVENT_WRITE
        os.set_blocking(chan_out, False)

    def _send(self, kind: bytes, body: bytes) -> None:
        self.out.append(frame(kind + body))

    def flush(self) -> None:
        """Write what this round of events produced in one go (fewer SSH packets), as far
        as the channel takes it without blocking: the agent must keep reading the client
        while it writes, or two large transfers crossing each other would deadlock."""
        if self.out:
            self.unsent += b"".join(self.out)
            self.out = []
        while self.unsent:
            try:
                written = os.write(self.chan_out, self.unsent)
            except BlockingIOError:
                break
            del self.unsent[:written]
        waiting = bool(self.unsent)
        if waiting != self.writing:
            if waiting:
                self.sel.register(self.chan_out, selectors.EVENT_WRITE, "out")
            else:
                self.sel.unregister(self.chan_out)
            self.writing = waiting

    def _send_relay(self, job: str, body: bytes) -> None:
        self._send(RELAY, tag(job, body))

    def control(self, message: dict) -> None:
        self._send(CONTROL, json.dumps(message).encode())

    def start(self, msg: dict) -> dict:
        """Fork the worker loop for a job; {"pgid": ...} or {"error": ...}."""
        job, env = msg["job"], dict(msg.get("env") or {})
        os.makedirs(os.path.dirname(msg["log"]), mode=0o700, exist_ok=True)
        if msg.get("relay"):
            env[SOCKET_ENV] = self.hub.open(job)
        else:
            problem = self._readable(msg["uri"], env)
            if problem:
                return {"error": problem}
        pid = start_worker(msg["uri"], int(msg["processes"]), env, msg["log"],
                           close_fds=(self.chan_in, self.chan_out, *self.hub.fds()))
        child = {"job": job, "relay": bool(msg.get("relay")), "pidfd": None}
        try:
            child["pidfd"] = os.pidfd_open(pid)
            self.sel.register(child["pidfd"], selectors.EVENT_READ, ("exit", pid))
        except (AttributeError, OSError):
            pass
        self.children[pid] = child
        return {"pgid": pid, "start": start_time(pid)}

    @staticmethod
    def _readable(uri: str, env: dict) -> str | None:
        """Why this host cannot read the job directory at `uri` (None: it can)."""
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            open_store(uri).get(layout.SPEC)
            return None
        except Exception as exc:
            return f"this host cannot read the job directory {uri}: {type(exc).__name__}: {exc}"
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def reap(self) -> None:
        """Collect ended workers; tell the client, close their relays."""
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            child = self.children.pop(pid)
            if child["pidfd"] is not None:
                self.sel.unregister(child["pidfd"])
                os.close(child["pidfd"])
            if child["relay"]:
                self.hub.close(child["job"])
            self.control({"op": "ended", "job": child["job"], "code": os.waitstatus_to_exitcode(status)})

    def _on_control(self, msg: dict) -> None:
        if msg.get("op") == "start":
            try:
                reply = self.start(msg)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            self.control({"id": msg.get("id"), **reply})

    def run(self) -> None:
        """Serve until the client closes the connection."""
        frames = FrameBuffer()
        self.sel.register(self.chan_in, selectors.EVENT_READ, "chan")
        self.control({"op": "ready", "pid": os.getpid()})
        polling = not hasattr(os, "pidfd_open")
        while True:
            self.flush()
            for key, _ in self.sel.select(1.0 if polling else None):
                if key.data == "out":
                    continue                      # flush() writes on the next round
                if key.data == "chan":
                    try:
                        data = os.read(self.chan_in, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not data:
                        return
                    for body in frames.feed(data):
                        if body[:1] == RELAY:
                            self.hub.reply(untag(body[1:])[1])
                        elif body[:1] == CONTROL:
                            self._on_control(json.loads(body[1:]))
                elif not self.hub.handle(key):
                    self.reap()
            if polling:
                self.reap()

    def shutdown(self) -> None:
        """The client is gone: relayed jobs cannot go on, so stop their workers."""
        relayed = [(pid, 0) for pid, c in self.children.items() if c["relay"]]
        self.hub.close_all()                       # their store calls fail at once
        stop_groups(relayed, grace=3.0)
        self.out, self.unsent = [], bytearray()
        self.reap()


def serve(log: str, preload: list[str]) -> int:
    chan_in, chan_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)                    # strays must never reach the protocol stream
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    import deploy.worker.loop  # noqa: F401  (forked workers start warm)
    for module in preload:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    gc.freeze()                      # forked workers then share these pages untouched by the GC
    os.chdir(os.path.expanduser("~"))            # where tasks start, as in a login
    agent = Agent(chan_in, chan_out)
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 1)               # from here on, unread stderr would stall the channel
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        agent.run()
    finally:
        agent.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.environments.ssh.agent")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--log", required=True, help="file for the agent's own stray output")
    p.add_argument("--preload", nargs="*", default=[], help="modules to import up front")
    for name in ("kill", "alive"):
        p = sub.add_parser(name)
        p.add_argument("groups", type=_group, nargs="*", help="PGID:START as the agent reported them")
        if name == "kill":
            p.add_argument("--grace", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.log, args.preload)
    if args.command == "alive":
        print(json.dumps([g for g, started in args.groups if group_alive(g, started)]))
        return 0
    print(json.dumps(stop_groups(args.groups, args.grace)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
