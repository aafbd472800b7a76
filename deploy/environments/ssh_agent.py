"""The host's side of SshCluster, run through SSH with the shipped runtime on PYTHONPATH.

    python -m deploy.environments.ssh_agent spawn --log FILE -- STORE_URI --processes N
        reads one JSON line {"env": {...}} on stdin, checks that the job directory is
        readable from this host, starts `python -m deploy.worker ...` detached in its own
        session, prints {"worker_pgid": ...}.
    python -m deploy.environments.ssh_agent kill --job ID PGID... [--after PGID...]
        SIGTERM the process groups (only those running job ID), SIGKILL what is left after
        a grace period; then the same for the --after groups (the relay hubs, which must
        outlive the workers long enough to carry their last writes).
    python -m deploy.environments.ssh_agent alive --job ID PGID...
        prints the JSON list of the groups that still run job ID.
Standard library plus deploy's store only: it runs on every host.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def _members(pgid: int) -> list[int] | None:
    """Pids in process group `pgid` (None where /proc cannot tell)."""
    if not os.path.isdir("/proc/self"):
        return None
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def _runs_job(pid: int, job: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return job.encode() in f.read()
    except OSError:
        return False


def ours(pgid: int, job: str) -> bool:
    """True while the group has a live process of this job (a reused pgid is not ours)."""
    members = _members(pgid)
    if members is None:
        try:
            os.killpg(pgid, 0)
            return True
        except OSError:
            return False
    return any(_runs_job(pid, job) for pid in members)


def _signal_groups(pgids: list[int], sig: int) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass


def _live(pgid: int) -> bool:
    members = _members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def _wait_gone(pgids: list[int], timeout: float) -> list[int]:
    """Wait until the groups have no live process (or time is up); the groups left."""
    deadline = time.monotonic() + timeout
    while True:
        left = [g for g in pgids if _live(g)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop(pgids: list[int], job: str, grace: float) -> list[int]:
    """SIGTERM the job's groups, SIGKILL after `grace`; the groups that would not die."""
    mine = [g for g in pgids if ours(g, job)]
    _signal_groups(mine, signal.SIGTERM)
    left = _wait_gone(mine, grace)
    _signal_groups(left, signal.SIGKILL)
    return _wait_gone(left, 5.0)


def spawn(log: str, worker_args: list[str]) -> int:
    line = sys.stdin.readline()
    env = {**os.environ, **(json.loads(line).get("env") or {} if line.strip() else {})}
    os.environ.update(env)
    from deploy.store import layout, open_store
    try:
        open_store(worker_args[0]).get(layout.SPEC)
    except Exception as exc:
        print(f"this host cannot read the job directory {worker_args[0]}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    proc = subprocess.Popen([sys.executable, "-m", "deploy.worker", *worker_args], env=env,
                            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
    print(json.dumps({"worker_pgid": proc.pid}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.environments.ssh_agent")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("spawn")
    p.add_argument("--log", required=True)
    p.add_argument("worker_args", nargs=argparse.REMAINDER)
    for name in ("kill", "alive"):
        p = sub.add_parser(name)
        p.add_argument("--job", required=True)
        p.add_argument("pgids", type=int, nargs="*")
        if name == "kill":
            p.add_argument("--after", type=int, nargs="*", default=[])
            p.add_argument("--grace", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.command == "spawn":
        return spawn(args.log, args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args)
    if args.command == "alive":
        print(json.dumps([g for g in args.pgids if ours(g, args.job)]))
        return 0
    left = stop(args.pgids, args.job, args.grace)
    after = [g for g in args.after if ours(g, args.job)]
    left += stop(_wait_gone(after, 2.0), args.job, args.grace)      # hubs end with their workers
    print(json.dumps(left))
    return 0


if __name__ == "__main__":
    sys.exit(main())
