"""Security promises: what deploy writes is private to the user, secrets it passes on are
written nowhere and shown to no one, and SSH host keys are verified.

Already proven elsewhere, not repeated here: the hosts' ~/.deploy/remote of a relayed job
is private (test_ssh_cluster.py::test_remote_files_are_private), an unknown host key and a
changed one are refused by default and accept-new records a new key 0600
(::test_bad_hosts_are_clear_errors_naming_the_host, ::test_accept_new_records_unknown_host_keys),
a key's content never reaches the registry (::test_reopened_by_name_from_a_new_process).
Opening a job unpickles data from its store: documented, not tested.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import boto3
import psutil
import pytest

import deploy
from conftest import ROOT, registry_bytes
from deploy.environment import LocalAsync
from deploy.environments.ssh.cluster import HostError
from test_ssh_cluster import cluster  # noqa: F401  (fixture: SshClusters, no worker left behind)
from waiting import wait_for

# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run with `mask` as this process's umask (forked workers inherit it)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def loose_modes(root: Path) -> list[str]:
    """Every path under `root` (itself included) that is not private: directories must be
    exactly 0700, files 0600 or stricter (README: 'created 0700, files 0600')."""
    bad = []
    for folder, dirs, files in os.walk(root):
        for path in [folder] + [os.path.join(folder, n) for n in dirs + files]:
            try:
                st = os.lstat(path)
            except FileNotFoundError:       # a temp file renamed into place meanwhile
                continue
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                if mode != 0o700:
                    bad.append(f"{path} {oct(mode)}")
            elif not stat.S_ISLNK(st.st_mode) and mode & 0o177:
                bad.append(f"{path} {oct(mode)}")
    return sorted(set(bad))


def files_under(roots: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under `roots` (symlinks not followed)."""
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = Path(folder) / name
                try:
                    regular = stat.S_ISREG(os.lstat(path).st_mode)
                except FileNotFoundError:   # a temp file renamed into place meanwhile
                    continue
                if regular:
                    yield path


def holding(markers: list[bytes], roots: Iterable[Path]) -> list[str]:
    """Paths under `roots` whose name or content holds any of `markers`."""
    found = []
    for path in files_under(roots):
        data = path.read_bytes()
        if any(m in data or m in str(path).encode() for m in markers):
            found.append(str(path))
    return found


def gated(i: int, gate: str) -> int:
    """Prints to stdout and stderr, fails for i == 1, and (i == 0) waits for `gate` to exist,
    so the job can be looked at while it runs."""
    print(f"task {i} says hello")
    print(f"task {i} complains", file=sys.stderr)
    if i == 1:
        raise ValueError("task 1 fails on purpose")
    while i == 0 and not os.path.exists(gate):
        time.sleep(0.01)
    return i * 10


def total(**results: int) -> int:
    return sum(results.values())


# ---------------------------------------------------------------------------- private files

def test_local_job_files_are_private_whatever_the_umask(deploy_home, tmp_path):
    """With umask 000 (everything world-writable by default), every directory deploy makes
    under DEPLOY_HOME is 0700 and every file 0600: the registry and its WAL, job
    directories with inputs, claims, heartbeats, live and final logs, results, failures,
    the combiner's outcome, a cancel marker, and the workers' stderr file."""
    gate = tmp_path / "gate"
    with umask(0):
        LocalAsync("pool", num_workers=2).save()
        job = deploy.map_job.create(gated, [{"i": i, "gate": str(gate)} for i in range(4)],
                                    environment="pool", chunk_size=1)
        # while a task runs: claims, heartbeats and a live log exist
        wait_for(lambda: any(n.endswith(".live") for n in job._store.list("logs")), timeout=30,
                 what="a live log")
        running = loose_modes(deploy_home)
        running_dirs = {p.parent.name for p in files_under([deploy_home])}
        gate.write_text("go")
        assert job.wait(timeout=60) == "Failed"
        combined = deploy.map_job.create(gated, [{"i": i, "gate": str(gate)} for i in (2, 3)],
                                         environment="pool", combiner_function=total)
        assert combined.get_results(timeout=60) == 50
        canceled = deploy.map_job.create(gated, [{"i": 0, "gate": str(tmp_path / "never")}],
                                         environment="pool")
        wait_for(lambda: canceled._store.list("claims"), timeout=30, what="the task to start")
        canceled.cancel()
    assert running == [] and loose_modes(deploy_home) == []
    assert "task 2 says hello" in job.get_logs() and "ValueError" in job.get_error()
    seen = {p.name for p in files_under([deploy_home])}
    for name in ("registry.db", "registry.db-wal", "job.json", "function.pkl", "combiner.pkl",
                 "launch.json", "workers.err", "cancel", "combined"):
        assert name in seen, f"{name} was not written: the check above did not cover it"
    dirs = {p.parent.name for p in files_under([deploy_home])} | running_dirs
    assert {"inputs", "claims", "heartbeats", "logs", "results"} <= dirs  # heartbeats: while running


@pytest.mark.ssh
def test_a_shared_path_store_makes_private_directories(tmp_path):
    """A job directory in a path store (`store='/shared/jobs'`) is made 0700 with its parents,
    whatever the umask, by the first file written into it."""
    from deploy.store import open_store
    with umask(0):
        store = open_store(str(tmp_path / "shared" / "jobs" / "0123abcd"))
        store.put("inputs/0", b"x")
        store.create_exclusive("results/0", b"y")
    assert loose_modes(tmp_path / "shared") == []


def test_a_relayed_ssh_job_is_private_on_the_client(cluster, deploy_home):  # noqa: F811
    """The client's copy of a relayed job (written by the relay thread for remote workers)
    is as private as a local one."""
    with umask(0):
        lab = cluster("private", hosts=("host1", "host2"), workers_per_host=1)
        job = deploy.map_job.create(gated, [{"i": i, "gate": "/"} for i in range(4)],   # "/": no wait
                                    environment=lab, chunk_size=1, combiner_function=total)
        assert job.wait(timeout=60) == "Failed"
    assert job.get_map_results() == [0, None, 20, 30]
    logs = job.get_logs()           # a worker publishes a chunk's log before its result
    assert all(f"task {i} complains" in logs for i in range(4))
    assert job._store.local_path("").startswith(str(deploy_home))
    assert loose_modes(deploy_home) == []


# ---------------------------------------------------------------------------- secrets

def secret_digest(i: int, seconds: float) -> str:
    """Proves the worker got the forwarded secret without sending it back: its SHA-256."""
    time.sleep(seconds)
    print(f"task {i} ran")
    if i == 3:
        raise RuntimeError("task 3 fails on purpose")
    return hashlib.sha256(os.environ["AWS_SECRET_ACCESS_KEY"].encode()).hexdigest()


@pytest.mark.ssh
def test_forwarded_credentials_are_written_and_shown_nowhere(cluster, ssh_hosts, s3_env,  # noqa: F811
                                                             deploy_home, tmp_path, monkeypatch):
    """AWS credentials forwarded to SSH workers of a job in S3 reach the workers (they hash
    the secret) but appear in no file on the client or the hosts, no S3 object, no log,
    no saved environment, no CLI output, and no process's argv while the job runs."""
    tag = uuid.uuid4().hex
    secrets = {"AWS_ACCESS_KEY_ID": f"AKIDMARKER{tag[:10].upper()}",
               "AWS_SECRET_ACCESS_KEY": f"SECRETMARKER{tag}",
               "AWS_SESSION_TOKEN": f"TOKENMARKER{tag}"}
    for name, value in secrets.items():        # moto takes any credentials
        monkeypatch.setenv(name, value)
    markers = [v.encode() for v in secrets.values()] + [tag.encode()]
    lab = cluster("s3secret", store=f"s3://{s3_env}/jobs", workers_per_host=1,
                  forward_env=list(secrets))
    lab.save()
    job = deploy.map_job.create(secret_digest, [{"i": i, "seconds": 0.5} for i in range(6)],
                                environment=lab, chunk_size=1, name="secret")

    host_users = {h.user for h in ssh_hosts}
    argvs, workers_seen = set(), 0
    while job.get_status() not in ("Completed", "Failed", "Canceled"):
        for proc in psutil.process_iter(["cmdline", "username"]):
            argv = " ".join(proc.info["cmdline"] or ())
            argvs.add(argv)
            if proc.info["username"] in host_users and "deploy." in argv:
                workers_seen += 1
        time.sleep(0.05)
    assert workers_seen, "no worker process was seen on the hosts while the job ran"
    leaked = [a for a in argvs if any(m.decode() in a for m in markers)]
    assert leaked == []
    print(f"argv scan: {len(argvs)} distinct command lines, {workers_seen} sightings of host workers")

    assert job.get_status() == "Failed"
    expected = hashlib.sha256(secrets["AWS_SECRET_ACCESS_KEY"].encode()).hexdigest()
    assert job.get_map_results() == [expected] * 3 + [None] + [expected] * 2
    logs = job.get_logs()           # every log is in the bucket before the job ends
    assert all(f"task {i} ran" in logs for i in range(6))

    # what the user sees: API and CLI
    shown = [job.get_logs(), str(job), job.get_error(), job.get_metrics().to_string(),
             deploy.environments.list().to_string(), repr(deploy.environments["s3secret"].to_dict())]
    for args in (("envs", "list"), ("envs", "show", "s3secret"), ("jobs", "show", "secret"),
                 ("jobs", "logs", "secret"), ("jobs", "metrics", "secret"), ("jobs", "list")):
        out = subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert out.returncode in (0, 1), (args, out.stderr)
        shown.append(out.stdout + out.stderr)
    assert "AWS_SECRET_ACCESS_KEY" in shown[5]                 # the names are saved...
    assert [s for s in shown if any(m.decode() in s for m in markers)] == []   # ...never the values
    assert not any(m in registry_bytes(deploy_home) for m in markers)

    # every byte at rest: the client's tmp (DEPLOY_HOME within), the hosts' homes (runtime,
    # job dirs, worker and agent logs), the sshd logs, and every object in the bucket
    roots = [tmp_path, ssh_hosts.base_dir] + [h.home for h in ssh_hosts]
    assert holding(markers, roots) == []
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_env)
            for o in page.get("Contents", [])]
    assert any(k.endswith("/job.json") for k in keys) and any("/logs/" in k for k in keys)
    assert [k for k in keys if any(m in s3.get_object(Bucket=s3_env, Key=k)["Body"].read()
                                   or m in k.encode() for m in markers)] == []
    host_dirs = [h.home / ".deploy" / "remote" / "jobs" / job.id for h in ssh_hosts[:3]]
    assert any(d.is_dir() for d in host_dirs)
    # the hosts' job directories of a shared-store job (worker logs, TMPDIR) are private too
    assert [m for d in host_dirs if d.is_dir() for m in loose_modes(d)] == []
    print(f"bytes scanned: {sum(p.stat().st_size for p in files_under(roots)) / 1e6:.1f} MB on "
          f"disk, {len(keys)} S3 objects")


# ---------------------------------------------------------------------------- host keys

@pytest.mark.ssh
def test_a_changed_host_key_is_refused_even_with_accept_new(cluster, ssh_hosts, tmp_path):  # noqa: F811
    """accept-new records keys of hosts not yet known; a host known_hosts already holds
    under another key (of the same type, or of another type) is refused, and known_hosts
    is left as it was."""
    target = ssh_hosts[2]
    name = target.host_key_line.split()[0]             # [127.0.0.13]:PORT
    other_ed25519 = " ".join(ssh_hosts[0].host_key_line.split()[1:])
    rsa = tmp_path / "rsa_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)],
                   check=True)
    other_rsa = " ".join(rsa.with_suffix(".pub").read_text().split()[:2])
    for label, key in (("same type", other_ed25519), ("another type", other_rsa)):
        known = tmp_path / f"known_hosts-{label.replace(' ', '-')}"
        known.write_text(f"{name} {key}\n")
        before = known.read_bytes()
        with pytest.raises(HostError) as info:
            cluster("changed", hosts=("host3",), known_hosts=str(known),
                    host_key_policy="accept-new").prepare()
        assert "host3" in str(info.value), label
        assert "MISMATCH" in str(info.value) or "changed" in str(info.value).lower(), \
            f"{label}: {info.value}"
        assert known.read_bytes() == before, f"{label}: known_hosts was changed"
