"""The idle shutdown agent: runs on an instance and terminates it through the EC2 API after
`timeout` seconds without work, so that a forgotten cluster stops costing money.

    python -m deploy.environments.ec2.idle start --instance-id I --region R --timeout S
           --jobs DIR --label L

`start` detaches the agent (one per instance: a lock file holding its pid) and returns; when
the instance has an agent already, `start` pokes it (SIGUSR1: a job is about to start here, the
idle time starts again). Work is a process
holding a job's worker log open (DIR/<job>/<label>.log: the SSH agent's workers keep it
as their stdout for as long as they run). The agent never powers the machine off: the
instance's own role terminates it (the role may terminate only the cluster's instances),
so the instance really ends, spot or not, and its cost with it.
Standard library and boto3 only (shipped with the runtime for S3 jobs).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import time


def busy(jobs_dir: str, label: str) -> bool:
    """Whether a process of this user holds one of this host's worker logs open."""
    log = f"{label}.log"
    prefix = os.path.realpath(jobs_dir) + os.sep
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue                    # another user's process, or gone
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith(prefix) and os.path.basename(target) == log:
                return True
    return False


def terminate(instance_id: str, region: str) -> None:
    import boto3
    boto3.client("ec2", region_name=region).terminate_instances(InstanceIds=[instance_id])


def watch(instance_id: str, region: str, timeout: float, jobs_dir: str, label: str) -> int:
    """Poll for work; terminate the instance once idle for `timeout` seconds. SIGUSR1 (a
    client about to start a job here) counts as work."""
    poll = max(0.2, min(10.0, timeout / 5))
    last_busy = time.monotonic()
    poked = []
    signal.signal(signal.SIGUSR1, lambda *_: poked.append(1))
    while True:
        if poked or busy(jobs_dir, label):
            poked.clear()
            last_busy = time.monotonic()
        elif time.monotonic() - last_busy >= timeout:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} idle for {timeout:g} s: terminating "
                  f"{instance_id}", flush=True)
            for attempt in range(30):
                try:
                    terminate(instance_id, region)
                    return 0
                except Exception as exc:        # keep trying: the point is to stop the cost
                    print(f"terminating {instance_id} failed: {type(exc).__name__}: {exc}", flush=True)
                    time.sleep(min(60, 2 ** attempt))
            return 1
        time.sleep(poll)


def start(args: argparse.Namespace) -> int:
    """Detach the agent unless this instance has one already."""
    root = os.path.dirname(os.path.realpath(args.jobs))
    os.makedirs(root, mode=0o700, exist_ok=True)
    lock_path = os.path.join(root, f"idle-{args.instance_id}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:                         # the instance has its agent: a job is coming
        try:
            os.kill(int(os.pread(fd, 32, 0).decode().strip() or 0), signal.SIGUSR1)
        except (ValueError, OSError):
            pass
        print("running")
        return 0
    if os.fork():
        os.close(fd)
        print("started")
        return 0
    os.setsid()
    if os.fork():
        os._exit(0)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)        # whom `start` pokes
    log = os.open(os.path.join(root, f"idle-{args.instance_id}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 1
    try:
        code = watch(args.instance_id, args.region, args.timeout, args.jobs, args.label)
    finally:
        os._exit(code)                      # the lock (fd) is held until here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.environments.ec2.idle")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start")
    p.add_argument("--instance-id", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--jobs", required=True, help="the runtime's jobs folder")
    p.add_argument("--label", required=True, help="this host's label (its worker logs' name)")
    args = parser.parse_args(argv)
    return start(args)


if __name__ == "__main__":
    sys.exit(main())
