"""The Storage contract (deploy/store/base.py) run against every backend: local disk, S3 (a moto
server process), HDFS (the Hadoop mini cluster, over WebHDFS) and the SSH relay (a real agent
process relaying to a local store). The same tests for each; every test gets a fresh, empty store.

Other threads and processes reach a store the way workers do: `open_store(store.uri)` (a relay
store finds its hub through $DEPLOY_RELAY_SOCKET); other processes are new interpreters.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Iterator

import pytest

from conftest import ROOT
from deploy.store import Storage, open_store
from deploy.store.local import LocalStorage

BACKENDS = [pytest.param("local"), pytest.param("s3"),
            pytest.param("hdfs", marks=pytest.mark.hadoop), pytest.param("relay")]


@dataclass
class Backend:
    """A fresh store of one backend, and how to tell who else may read its files."""
    name: str
    store: Storage
    not_private: Callable[[], list[str]]     # entries that someone other than the owner may read


# ---------------------------------------------------------------------------- the stores

def _posix_not_private(root: str) -> list[str]:
    """Directories not 0700 and files not 0600 under `root` (itself included)."""
    found = []
    for folder, dirs, files in os.walk(root):
        for path, want in [(folder, 0o700)] + [(os.path.join(folder, f), 0o600) for f in files]:
            mode = os.stat(path).st_mode & 0o777
            if mode != want:
                found.append(f"{os.path.relpath(path, root)} {mode:o}")
    return found


def _local(tmp_path, request) -> Iterator[Backend]:
    store = open_store(str(tmp_path / "x"))
    yield Backend("local", store, lambda: _posix_not_private(store.local_path("")))


def _s3(tmp_path, request) -> Iterator[Backend]:
    bucket = request.getfixturevalue("s3_env")
    store = open_store(f"s3://{bucket}/prefix")

    def not_private() -> list[str]:
        """Objects whose ACL grants anything to anyone but their owner (S3 has no modes)."""
        client, found = store.client, []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="prefix/"):
            for obj in page.get("Contents", []):
                acl = client.get_object_acl(Bucket=bucket, Key=obj["Key"])
                others = [g for g in acl["Grants"] if g["Grantee"].get("ID") != acl["Owner"]["ID"]]
                if others:
                    found.append(f"{obj['Key']} {others}")
        return found
    yield Backend("s3", store, not_private)


def _hdfs(tmp_path, request) -> Iterator[Backend]:
    cluster = request.getfixturevalue("hadoop_cluster")
    host = cluster.webhdfs_url[len("http://"):]
    store = open_store(f"webhdfs://{host}/user/{cluster.user}/contract-{os.urandom(4).hex()}")

    def not_private() -> list[str]:
        """A root not 700, files not 600 (directories inside the root are out of others'
        reach whatever their mode), files another user can read (HDFS permissions are on)."""
        client, found = store.client, []

        def walk(path: str, status: dict) -> None:
            if status["type"] == "DIRECTORY":
                for name, child in client.list(path, status=True):
                    walk(f"{path}/{name}", child)
            elif status["permission"] != "600":
                found.append(f"{path} {status['permission']}")
        root = client.status(store.root)
        if root["permission"] != "700":
            found.append(f"{store.root} {root['permission']}")
        walk(store.root, root)
        stranger = open_store(store.uri.replace(f"{cluster.user}@", "mallory@"), retry_seconds=0)
        for path in ("spec.json", "results/000001"):
            try:
                stranger.get(path)
                found.append(f"{path} readable by another HDFS user")
            except PermissionError:
                pass
        return found
    yield Backend("hdfs", store, not_private)
    store.delete("")


# The agent, relaying one job from the start (the real one opens a job's hub when it starts the
# job's workers, which would then use the store themselves).
AGENT = """if True:
    import sys
    from deploy.environments.ssh import agent

    class ContractAgent(agent.Agent):
        def run(self):
            with open(sys.argv[3], "w") as f:
                f.write(self.hub.open(sys.argv[2]))
            super().run()

    agent.Agent = ContractAgent
    sys.exit(agent.serve(sys.argv[1], []))
"""


class _LocalChannel:
    """What AgentSession uses of an SSH channel, for a command run here: its stdin and stdout are
    one end of a socketpair, this channel the other; its early stderr goes to a file."""

    def __init__(self, stderr_path: str) -> None:
        self.sock, self.peer = socket.socketpair()
        self.stderr_path = stderr_path
        self.proc: subprocess.Popen | None = None

    def exec_command(self, command: list[str]) -> None:
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(command, stdin=self.peer, stdout=self.peer, stderr=err,
                                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        self.peer.close()

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_stderr(self, n: int) -> bytes:
        with open(self.stderr_path, "rb") as f:
            data, self.stderr_path = f.read(), os.devnull
        return data

    def settimeout(self, seconds: float) -> None:
        self.sock.settimeout(seconds)

    def get_transport(self) -> "_LocalChannel":
        return self

    def is_active(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)       # wakes the session's reader thread
        except OSError:
            pass
        self.sock.close()
        if self.proc is not None:
            self.proc.wait(10)


def _relay(tmp_path, request) -> Iterator[Backend]:
    """The SSH relay without SSH: the real agent (`serve`, Agent, RelayHub) runs in its own
    process, its stdin/stdout a socketpair to a real AgentSession here, whose reader thread
    answers through relay.answer() from a LocalStorage (the client's job directory). The store
    under test is a worker's: open_store('relay://...') with $DEPLOY_RELAY_SOCKET naming the hub's
    Unix socket, in this process and in every process it starts. Only the SSH exec channel is
    replaced (by the socketpair)."""
    from deploy.environments.ssh.session import AgentSession
    from deploy.store.relay import SOCKET_ENV
    job = f"contract-{os.urandom(3).hex()}"
    backing = LocalStorage(str(tmp_path / "relayed"))
    chan = _LocalChannel(str(tmp_path / "agent.stderr"))
    host = SimpleNamespace(label="contract", closing=False, close=lambda: None,
                           spec=SimpleNamespace(describe=lambda: "a local agent process"),
                           client=SimpleNamespace(get_transport=lambda: SimpleNamespace(
                               open_session=lambda timeout: chan)))
    socket_file = tmp_path / "hub-socket"
    session = AgentSession(host, [sys.executable, "-c", AGENT, str(tmp_path / "agent.log"), job,
                                  str(socket_file)], timeout=30)
    try:
        with session.lock:
            session.stores[job] = backing          # as start_job() registers a relayed job
        request.getfixturevalue("monkeypatch").setenv(SOCKET_ENV, socket_file.read_text())
        store = open_store(f"relay://contract/{job}")
        yield Backend("relay", store, lambda: _posix_not_private(backing.root))
    finally:
        session.close()
    assert chan.proc.returncode == 0, (tmp_path / "agent.log").read_text()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Iterator[Backend]:
    """A fresh, empty store of each backend."""
    yield from {"local": _local, "s3": _s3, "hdfs": _hdfs, "relay": _relay}[request.param](tmp_path, request)


@pytest.fixture
def store(backend) -> Storage:
    return backend.store


# ---------------------------------------------------------------------------- other processes

CHILD = """if True:
    import hashlib, json, select, sys
    from deploy.store import open_store
    store = open_store(sys.argv[1])
    role, name = sys.argv[2], sys.argv[3]
    store.exists("warm-up")                        # the connection is open before the race
    if role == "claim":                            # one exclusive create per path read on stdin
        print("ready", flush=True)
        for line in sys.stdin:
            path = line.strip()
            won = store.create_exclusive(path, f"{name} {path}".encode())
            print(int(won), flush=True)
    else:                                          # read `name` until stdin says stop
        seen, reads, errors = set(), 0, []
        while not select.select([sys.stdin], [], [], 0)[0]:
            try:
                data = store.get(name)
                digest, body = data[:32], data[32:]
                if hashlib.sha256(body).digest() != digest:
                    errors.append(f"torn read of {len(data)} bytes")
                else:
                    seen.add(int.from_bytes(body[:4], "big"))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            reads += 1
            if reads == 1:
                print("ready", flush=True)
        print(json.dumps({"reads": reads, "seen": sorted(seen), "errors": errors[:5]}), flush=True)
"""


def _child(store: Storage, role: str, name: str) -> subprocess.Popen:
    """A new interpreter opening `store` by its URI, as a worker elsewhere would."""
    return subprocess.Popen([sys.executable, "-c", CHILD, store.uri, role, name], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})


def _line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert line, f"child exited with {proc.wait(10)}"
    return line.strip()


# ---------------------------------------------------------------------------- the contract

def test_put_then_get(store):
    store.put("a", b"one")
    assert store.get("a") == b"one"
    store.put("a", b"two, longer")
    assert store.get("a") == b"two, longer"
    store.put("a", b"3")
    assert store.get("a") == b"3" and store.list("") == ["a"]


def test_binary_data_and_empty_files_round_trip(store):
    every_byte = bytes(range(256)) * 3 + bytes(reversed(range(256)))
    store.put("bin/put", every_byte)
    assert store.create_exclusive("bin/created", every_byte)
    store.put("bin/empty-put", b"")
    assert store.create_exclusive("bin/empty-created")
    assert store.get("bin/put") == every_byte and store.get("bin/created") == every_byte
    assert store.get("bin/empty-put") == b"" and store.get("bin/empty-created") == b""
    assert store.list("bin") == ["created", "empty-created", "empty-put", "put"]
    assert store.exists("bin/empty-put") and store.exists("bin/empty-created")


def test_paths_of_several_levels(store):
    store.put("l1/l2/l3/l4/l5/file", b"deep")
    assert store.create_exclusive("l1/l2/other", b"mid")
    assert store.get("l1/l2/l3/l4/l5/file") == b"deep" and store.get("l1/l2/other") == b"mid"
    assert store.list("") == ["l1"] and store.list("l1") == ["l2"]
    assert store.list("l1/l2") == ["l3", "other"]
    assert store.list("l1/l2/l3/l4") == ["l5"] and store.list("l1/l2/l3/l4/l5") == ["file"]
    assert all(store.exists(p) for p in ("l1", "l1/l2/l3", "l1/l2/l3/l4/l5", "l1/l2/l3/l4/l5/file"))


def test_create_exclusive_is_true_once(store):
    assert store.create_exclusive("claims/000001.0", b"first") is True
    assert store.create_exclusive("claims/000001.0", b"second") is False
    assert store.create_exclusive("claims/000001.0", b"first") is False     # even the same bytes
    assert store.get("claims/000001.0") == b"first"
    store.put("results/000001", b"r")
    assert store.create_exclusive("results/000001", b"late") is False        # put() wrote it
    assert store.get("results/000001") == b"r"
    store.delete("claims/000001.0")
    assert store.create_exclusive("claims/000001.0", b"again") is True       # free once deleted
    assert store.get("claims/000001.0") == b"again"
    assert store.list("claims") == ["000001.0"] and store.list("") == ["claims", "results"]


def test_create_exclusive_has_one_winner_among_threads_and_processes(store):
    """Each round, threads (half sharing the store, half with it opened again, as separate
    workers) and processes create the same path at once: exactly one wins, and the file
    holds the winner's bytes."""
    threads, rounds = 6, 4
    paths = [f"claims/{i:06d}.0" for i in range(rounds)]
    children = [_child(store, "claim", f"process-{i}") for i in range(3)]
    try:
        assert all(_line(c) == "ready" for c in children)
        stores = [store if i % 2 else open_store(store.uri) for i in range(threads)]
        for path in paths:
            go, results = threading.Event(), {}

            def claim(i: int) -> None:
                go.wait()
                results[f"thread-{i}"] = stores[i].create_exclusive(path, f"thread-{i} {path}".encode())
            running = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
            for t in running:
                t.start()
            for c in children:
                c.stdin.write(path + "\n")
                c.stdin.flush()
            go.set()
            for t in running:
                t.join()
            for i, c in enumerate(children):
                results[f"process-{i}"] = _line(c) == "1"
            winners = [who for who, won in results.items() if won]
            assert len(winners) == 1 and len(results) == threads + len(children), results
            assert store.get(path) == f"{winners[0]} {path}".encode()
    finally:
        for c in children:
            c.stdin.close()
            c.wait(30)
    assert store.list("claims") == [p.split("/")[1] for p in paths]    # no temp file of a loser
    assert all(c.returncode == 0 for c in children)


def _version(i: int) -> bytes:
    """Version i of a 1-4 MB file: a SHA-256 of the rest, then i, then random bytes."""
    size = 1_000_000 + (i * 1_234_567) % 3_000_000
    body = i.to_bytes(4, "big") + random.Random(i).randbytes(size)
    return hashlib.sha256(body).digest() + body


def test_put_replaces_atomically_for_readers(store):
    """While a writer replaces a 1-4 MB file again and again, readers in a thread and in
    another process only ever see a whole version, and the listing always shows the file."""
    writes = 8
    versions = [_version(i) for i in range(writes + 1)]
    store.put("blob/data", versions[0])
    reader = _child(store, "read", "blob/data")
    stop, seen, problems = threading.Event(), set(), []

    def read() -> None:
        while not stop.is_set():
            try:
                data = store.get("blob/data")
            except Exception as exc:
                problems.append(f"read: {type(exc).__name__}: {exc}")
                continue
            if hashlib.sha256(data[32:]).digest() != data[:32]:
                problems.append(f"torn read of {len(data)} bytes")
            else:
                seen.add(int.from_bytes(data[32:36], "big"))

    def list_() -> None:
        while not stop.is_set():
            names = store.list("blob")
            if names != ["data"]:
                problems.append(f"list: {names}")
    try:
        assert _line(reader) == "ready"
        others = [threading.Thread(target=read), threading.Thread(target=list_)]
        for t in others:
            t.start()
        try:
            for data in versions[1:]:
                store.put("blob/data", data)
        finally:
            stop.set()
            for t in others:
                t.join()
        reader.stdin.write("stop\n")
        reader.stdin.flush()
        report = json.loads(_line(reader))
    finally:
        reader.stdin.close()
        reader.wait(30)
    assert problems == [] and report["errors"] == [], (problems[:5], report)
    assert len(seen) >= 2 and report["reads"] >= 2, (seen, report)     # they read while it wrote
    assert store.get("blob/data") == versions[-1] and store.list("blob") == ["data"]


def test_list_names_directly_below_a_dir_sorted(store):
    for name in ("b", "a0", "B", "a.b", "a-b", "ab", "z/deep/file", "a/x", "a/y/z"):
        store.put(f"dir/{name}", b"x")
    assert store.create_exclusive("dir/c", b"c") and not store.create_exclusive("dir/c", b"d")
    assert store.list("dir") == ["B", "a", "a-b", "a.b", "a0", "ab", "b", "c", "z"]
    assert store.list("dir/a") == ["x", "y"] and store.list("dir/z") == ["deep"]
    assert store.list("") == ["dir"]
    assert store.list("missing") == [] and store.list("dir/missing/deeper") == []
    assert store.list("dir/b") == []                            # a file has nothing below it
    assert store.list("di") == []                               # a prefix of a name is no dir


def test_delete_a_file_a_tree_and_missing_paths(store):
    for path in ("jobs/a/spec", "jobs/a/results/1", "jobs/a/results/2", "jobs/ab/spec", "jobs/b"):
        store.put(path, b"x")
    store.delete("jobs/a/results/1")
    assert store.list("jobs/a/results") == ["2"]
    with pytest.raises(FileNotFoundError):
        store.get("jobs/a/results/1")
    store.delete("jobs/a")                                       # the whole tree
    assert store.list("jobs") == ["ab", "b"] and not store.exists("jobs/a")
    for gone in ("jobs/a/spec", "jobs/a/results/2"):
        with pytest.raises(FileNotFoundError):
            store.get(gone)
    assert store.get("jobs/ab/spec") == b"x"                    # a name it prefixes is untouched
    store.delete("jobs/a")                                       # missing: no error
    store.delete("nothing/here/at/all")
    assert store.list("jobs") == ["ab", "b"] and store.get("jobs/b") == b"x"
    store.put("jobs/a/spec", b"new")                             # a deleted tree can come back
    assert store.get("jobs/a/spec") == b"new"


def test_delete_of_the_root(backend, store):
    """delete('') empties the store, except through a relay: a host may not delete the
    client's job directory (deploy/store/relay.py answer())."""
    from deploy.store import StorageError
    store.put("a/b", b"x")
    store.put("c", b"y")
    if backend.name == "relay":
        with pytest.raises(StorageError, match="may not delete the job directory"):
            store.delete("")
        assert store.list("") == ["a", "c"]
        return
    store.delete("")
    assert store.list("") == [] and not store.exists("c") and not store.exists("a")
    store.delete("")                                             # already gone: no error


def test_get_of_a_missing_path_raises_file_not_found(store):
    for path in ("missing", "no/such/dir/file"):
        with pytest.raises(FileNotFoundError):
            store.get(path)
    store.put("dir/file", b"x")
    for path in ("dir/other", "dir/fil", "dir/file2"):
        with pytest.raises(FileNotFoundError):
            store.get(path)


@pytest.mark.parametrize("verb", ["get", "delete", "list", "exists"])
def test_a_path_below_a_file_is_missing(store, verb):
    """A path below a file does not exist (local disk and HDFS answered as if it were an
    error: NotADirectoryError, PermissionError)."""
    store.put("dir/file", b"x")
    if verb == "get":
        with pytest.raises(FileNotFoundError):
            store.get("dir/file/below")
    elif verb == "delete":
        store.delete("dir/file/below")
    elif verb == "list":
        assert store.list("dir/file/below") == []
    else:
        assert not store.exists("dir/file/below")
    assert store.get("dir/file") == b"x"


def test_exists_for_files_non_empty_dirs_and_missing_paths(store):
    assert not store.exists("data") and not store.exists("a/b/c")
    store.put("results/000001", b"r")
    store.put("deep/a/b/c", b"")
    assert store.exists("results/000001") and store.exists("deep/a/b/c")           # files
    assert store.exists("results") and store.exists("deep") and store.exists("deep/a/b")  # dirs
    for missing in ("results/000002", "result", "results/0000011", "deep/a/c", "nope/x"):
        assert not store.exists(missing), missing
    store.delete("results/000001")
    assert not store.exists("results/000001")


def test_local_path_only_for_a_store_on_this_disk(backend, store):
    store.put("a/b", b"here")
    path = store.local_path("a/b")
    if backend.name == "local":
        with open(path, "rb") as f:
            assert f.read() == b"here"
    else:
        assert path is None


def test_files_and_directories_are_private(backend, store):
    """Under umask 0, whatever the store writes is the owner's alone: local disk (and the
    client's copy of a relayed job) 0600 files in 0700 directories, HDFS 0600 files in a
    0700 root that no other user can read, S3 objects with no grant to anyone but the owner."""
    old = os.umask(0)
    try:
        store.put("spec.json", b"{}")
        store.put("results/000001", b"r")
        assert store.create_exclusive("claims/a/b/000001.0", b"w")
        store.put("results/000001", b"again")
    finally:
        os.umask(old)
    found = backend.not_private()
    assert found == [], found
