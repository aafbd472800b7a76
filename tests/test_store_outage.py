"""A remote job store that stops answering for a while: verbs retry with backoff, within
`store_retry_seconds`, then fail with StoreUnavailable naming the store, verb, path and cause.

Against a real S3 server (moto, its own process, started here because these tests stop it)
reached through a TCP forwarder process: killing the forwarder is the outage (connections
refused, pooled ones reset) while moto keeps the job directory; the forwarder can also lose
one answer after moto has acted on the request, or give S3 error answers itself (503
SlowDown, 500, 400, 403).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import ROOT
from conftest_ssh import answers, free_port
from waiting import wait_for

import deploy
from deploy.environments.base import Environment, Launch
from deploy.errors import DeployError, StoreUnavailable
from deploy.store import StorageError, open_store
from deploy.store.retrying import RetryingStorage
from deploy.store.s3 import S3Storage

# The outage: a byte forwarder. A file `<flag>.drop` makes it lose the next answer (after
# the server acted on the request); `<flag>.answer` holding "N STATUS CODE" makes it answer
# the next N requests itself with that S3 error (503 SlowDown: S3 throttling).
FORWARDER = r'''
import asyncio, os, sys
listen, target, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def take(name):
    """Consume one use of a flag file: its words after the count, or None if there is none."""
    path = flag + name
    try:
        with open(path) as f:
            left, *words = f.read().split()
    except FileNotFoundError:
        return None
    if int(left) > 1:
        with open(path + ".new", "w") as f:
            f.write(" ".join([str(int(left) - 1)] + words))
        os.replace(path + ".new", path)
    else:
        os.unlink(path)
    return words

def error_answer(status, code):
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f'<Message>{code} (from the forwarder)</Message></Error>').encode()
    return (f"HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body

async def pump(src, dst, answers, upstream):
    try:
        while True:
            data = await src.read(1 << 16)
            if not data:
                break
            if answers and take(".drop") is not None:
                upstream.transport.abort()
                dst.transport.abort()
                return
            dst.write(data)
            await dst.drain()
    except OSError:
        pass
    dst.close()

async def serve(client_r, client_w):
    first = await client_r.read(1 << 16)
    if not first:
        client_w.close()
        return
    answer = take(".answer")
    if answer is not None:
        client_w.write(error_answer(*answer))
        await client_w.drain()
        client_w.close()
        return
    try:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_w.transport.abort()
        return
    up_w.write(first)
    await asyncio.gather(pump(client_r, up_w, False, None), pump(up_r, client_w, True, up_w))

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", listen, reuse_address=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


def _start(args: list[str], port: int, log, what: str) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    wait_for(lambda: proc.poll() is not None or answers(port), timeout=60, what=what)
    if proc.poll() is not None:
        pytest.fail(f"{what} exited with {proc.returncode}: see {log.name}")
    return proc


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)


class S3Endpoint:
    """A moto server of our own behind a forwarder; boto3 clients are pointed at the forwarder."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.log = open(folder / "endpoint.log", "ab")
        self.server_port, self.port = free_port(), free_port()
        self.flag = str(folder / "flag")
        self.server: subprocess.Popen | None = None
        self.forwarder: subprocess.Popen | None = None
        self.start_server()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def start_server(self) -> None:
        """Start moto on its port (again); a restarted moto has lost every bucket."""
        self.server = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                              str(self.server_port)], self.server_port, self.log, "moto server")

    def stop_server(self) -> None:
        _stop(self.server)

    def start(self) -> None:
        """The endpoint answers (again), on the same port."""
        self.forwarder = _start([sys.executable, "-c", FORWARDER, str(self.port),
                                 str(self.server_port), self.flag],
                                self.port, self.log, "forwarder")

    def stop(self) -> None:
        """The endpoint goes away: new connections are refused, open ones reset."""
        _stop(self.forwarder)

    def drop_next_answer(self) -> None:
        with open(self.flag + ".drop", "w") as f:
            f.write("1")

    def answer_error(self, times: int, status: int, code: str) -> None:
        """The next `times` requests get this S3 error answer from the forwarder itself."""
        with open(self.flag + ".answer", "w") as f:
            f.write(f"{times} {status} {code}")

    def flags_left(self) -> list[str]:
        return [n for n in os.listdir(self.folder) if n.startswith("flag")]

    def direct(self, uri: str) -> S3Storage:
        """The store at `uri` reached straight at moto: to watch while the endpoint is down."""
        return S3Storage(uri, endpoint_url=self.server_url)

    def create_bucket(self, bucket: str) -> None:
        self.direct(f"s3://{bucket}").client.create_bucket(Bucket=bucket)

    def close(self) -> None:
        self.stop()
        self.stop_server()
        self.log.close()


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    ep = S3Endpoint(tmp_path_factory.mktemp("outage"))
    yield ep
    ep.close()


@pytest.fixture
def bucket(endpoint, monkeypatch):
    """AWS settings pointing boto3 at the endpoint (up), and a fresh bucket there."""
    for name, value in (("AWS_ENDPOINT_URL", endpoint.url), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("DEPLOY_STORE_RETRY_SECONDS", "30")
    if endpoint.server.poll() is not None:
        endpoint.start_server()
    if endpoint.forwarder.poll() is not None:
        endpoint.start()
    for name in endpoint.flags_left():
        os.unlink(os.path.join(endpoint.folder, name))
    name = "outage-" + uuid.uuid4().hex[:12]
    endpoint.create_bucket(name)
    yield name
    if endpoint.forwarder.poll() is not None:
        endpoint.start()


def _in_thread(calls):
    """Run `calls` (name -> no-argument callable) in order in a thread; (thread, results)."""
    results: dict = {}

    def run():
        for name, call in calls:
            try:
                results[name] = call()
            except BaseException as exc:        # reported by the test
                results[name] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


# ---------------------------------------------------------------------------- the verbs

def test_remote_stores_are_wrapped_and_the_local_store_is_not(bucket, tmp_path, monkeypatch):
    store = open_store(f"s3://{bucket}/root")
    assert isinstance(store, RetryingStorage) and store.budget == 30
    assert store.uri == f"s3://{bucket}/root" and store.bucket == bucket   # attributes pass through
    monkeypatch.setenv("DEPLOY_STORE_RETRY_SECONDS", "7.5")
    assert open_store("webhdfs://127.0.0.1:1/x").budget == 7.5
    assert open_store(f"s3://{bucket}/root", retry_seconds=0).budget == 0
    assert not isinstance(open_store(str(tmp_path)), RetryingStorage)


@pytest.mark.slow
def test_verbs_ride_out_a_server_restart(endpoint, bucket):
    """The endpoint goes away, moto restarts (losing its state; the bucket is made again
    before the endpoint answers), the endpoint comes back on the same port: calls made
    during the outage complete once it ends."""
    store = open_store(f"s3://{bucket}/root")
    store.put("before", b"0")
    endpoint.stop()
    down = time.monotonic()
    thread, results = _in_thread([
        ("put", lambda: store.put("during", b"1")),
        ("create", lambda: store.create_exclusive("claims/000000.0", b"worker-a")),
        ("list", lambda: store.list("claims")),
        ("get", lambda: store.get("during")),
        ("exists", lambda: store.exists("during")),
        ("delete", lambda: store.delete("claims")),
        ("gone", lambda: store.list("claims"))])
    wait_for(lambda: store.retried >= 4, timeout=20, what="the put to fail and be retried")
    endpoint.stop_server()
    endpoint.start_server()
    endpoint.create_bucket(bucket)
    endpoint.start()
    outage = time.monotonic() - down
    thread.join(30)
    back = time.monotonic() - down
    assert results == {"put": None, "create": True, "list": ["000000.0"], "get": b"1",
                       "exists": True, "delete": None, "gone": []}
    assert back < outage + 6, (outage, back)          # the next retry comes within MAX_DELAY
    with pytest.raises(FileNotFoundError):
        store.get("before")             # a new server indeed: what was there before is gone
    print(f"\noutage {outage:.1f} s ridden out; calls done {back - outage:.1f} s after it ended, "
          f"{store.retried} retries")


def test_a_spent_budget_raises_store_unavailable(endpoint, bucket, monkeypatch):
    monkeypatch.setenv("DEPLOY_STORE_RETRY_SECONDS", "2")
    store = open_store(f"s3://{bucket}/root")
    endpoint.stop()
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.get("results/000003")
    took = time.monotonic() - start
    assert 2 <= took < 3, took
    err = info.value
    message = str(err)
    for part in (f"s3://{bucket}/root", "get", "'results/000003'", "store_retry_seconds=2",
                 "EndpointConnectionError"):
        assert part in message, message
    assert (err.uri, err.verb, err.path, err.attempts > 2) == (f"s3://{bucket}/root", "get",
                                                               "results/000003", True)
    assert isinstance(err, StorageError) and isinstance(err, DeployError)
    # a budget of 0: the first failure is final
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="1 attempts"):
        RetryingStorage(store.inner, budget=0).create_exclusive("claims/000000.0", b"w")
    assert time.monotonic() - start < 0.5
    print(f"\nbudget 2 s: StoreUnavailable after {took:.2f} s ({err.attempts} attempts)")


def test_hdfs_connection_errors_are_retried_too(monkeypatch):
    """A NameNode that does not answer (a closed port): WebHDFS calls retry, then fail clearly."""
    monkeypatch.setenv("DEPLOY_STORE_RETRY_SECONDS", "1")
    port = free_port()
    store = open_store(f"webhdfs://127.0.0.1:{port}/jobs/x")
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"NameNode.*ConnectionError") as info:
        store.put("claims/000000.0", b"w")
    assert 1 <= time.monotonic() - start < 2.5
    assert info.value.verb == "put" and info.value.attempts > 1
    assert f"127.0.0.1:{port}" in info.value.uri


def test_answers_that_retrying_cannot_change_come_at_once(bucket):
    store = open_store(f"s3://{bucket}/root")
    assert store.create_exclusive("claims/000000.0", b"a") is True
    start = time.monotonic()
    assert store.create_exclusive("claims/000000.0", b"b") is False
    with pytest.raises(FileNotFoundError):
        store.get("nope")
    with pytest.raises(FileNotFoundError):
        open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/root").get("x")
    assert time.monotonic() - start < 1 and store.retried == 0


@pytest.mark.parametrize("status, code", [(400, "InvalidRequest"), (403, "AccessDenied")])
def test_refusals_are_not_retried(endpoint, bucket, status, code):
    store = open_store(f"s3://{bucket}/root")
    store.put("x", b"1")
    endpoint.answer_error(1, status, code)
    start = time.monotonic()
    with pytest.raises(StorageError, match=code) as info:
        store.get("x")
    assert not isinstance(info.value, StoreUnavailable)
    assert time.monotonic() - start < 1 and store.retried == 0 and endpoint.flags_left() == []


@pytest.mark.parametrize("status, code", [(503, "SlowDown"), (500, "InternalError")])
def test_throttling_and_server_errors_are_retried(endpoint, bucket, status, code):
    store = open_store(f"s3://{bucket}/root")
    store.put("x", b"1")
    endpoint.answer_error(3, status, code)
    assert store.get("x") == b"1"
    assert store.retried == 3 and endpoint.flags_left() == []


def test_an_exclusive_create_whose_answer_was_lost(endpoint, bucket):
    """The server wrote the file but the answer never came: the retry finds the file; it
    is this call's own write when it holds this call's bytes, and someone else's otherwise."""
    store = open_store(f"s3://{bucket}/root")
    store.list("")                      # a pooled connection, as a worker has
    endpoint.drop_next_answer()
    assert store.create_exclusive("claims/000000.0", b"worker-a") is True
    assert store.retried == 1 and endpoint.flags_left() == []
    other = open_store(f"s3://{bucket}/root")
    assert other.create_exclusive("claims/000000.0", b"worker-b") is False
    # the first answer (412: someone was first) lost: the retry sees other bytes, so False
    endpoint.drop_next_answer()
    assert store.create_exclusive("claims/000000.0", b"worker-c") is False
    assert store.retried == 2 and store.get("claims/000000.0") == b"worker-a"


# ---------------------------------------------------------------------------- jobs

class LocalWorkersOnS3(Environment):
    """Worker processes on this machine (`python -m deploy.worker URI`, as every remote
    backend starts them) over a job directory in S3: LocalAsync with the store behind the
    network. One process per worker, each writing its errors to the launch's stderr file."""

    kind = "test-s3-workers"

    def __init__(self, name: str, root: str, workers: int, worker_env: dict, logs) -> None:
        super().__init__(name)
        self.root, self.workers, self.worker_env, self.logs = root, workers, worker_env, logs
        self.procs: dict[int, subprocess.Popen] = {}

    def num_workers(self) -> int:
        return self.workers

    def job_store(self, job_id: str):
        return open_store(f"{self.root}/{job_id}")

    def serialize(self, fn):
        from deploy.environments import by_value
        return by_value.dumps(fn)

    def launch(self, launch: Launch) -> dict:
        err = self.logs / f"workers-{launch.spec.id}-{len(self.procs)}.err"
        pids = []
        with open(err, "ab") as f:
            for _ in range(launch.workers):
                proc = subprocess.Popen([sys.executable, "-m", "deploy.worker", launch.store.uri],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=f, env=self.worker_env, cwd=ROOT,
                                        start_new_session=True)
                self.procs[proc.pid] = proc
                pids.append(proc.pid)
        return {"pids": pids, "stderr": str(err)}

    def alive(self, handle: dict) -> bool | None:
        procs = [self.procs[p] for p in handle.get("pids", []) if p in self.procs]
        return any(p.poll() is None for p in procs) if procs else None

    def describe_failure(self, handle: dict) -> str | None:
        with open(handle["stderr"], "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace").strip()
        return f"the workers wrote:\n{tail}" if tail else None

    def cancel(self, handle: dict) -> None:
        for pid in handle.get("pids", []):
            if pid in self.procs and self.procs[pid].poll() is None:
                os.killpg(pid, signal.SIGTERM)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def slow_square(i):
    import time
    time.sleep(0.4)
    return i * i


@pytest.fixture
def s3_workers(bucket, tmp_path):
    """An environment factory: local worker processes, the job store in the bucket."""
    made = []

    def make(budget: float, workers: int = 2) -> LocalWorkersOnS3:
        env = LocalWorkersOnS3("s3workers", f"s3://{bucket}/jobs", workers,
                               {**os.environ, "DEPLOY_STORE_RETRY_SECONDS": str(budget)}, tmp_path)
        made.append(env)
        return env
    yield make
    for env in made:
        env.stop_all()


def _one_final_row_per_task(job, n: int):
    metrics = job.get_metrics()
    assert len(metrics) == n and sorted(metrics.task_name) == sorted(
        f"slow_square-0-{i}" for i in range(n))
    return metrics


@pytest.mark.slow
def test_a_job_completes_across_a_short_outage(endpoint, s3_workers):
    env = s3_workers(budget=30)
    n = 10
    job = deploy.map_job.create(slow_square, [{"i": i} for i in range(n)], environment=env,
                                chunk_size=1)
    direct = endpoint.direct(job._store.uri)
    wait_for(lambda: len(direct.list("results")) >= 2, timeout=60, what="two results")
    endpoint.stop()
    time.sleep(4)                       # the outage itself: nothing to wait for
    endpoint.start()
    back = time.monotonic()
    assert job.wait(timeout=60) == "Completed", job.summary()
    finished = time.monotonic() - back
    assert job.get_results() == [i * i for i in range(n)]
    metrics = _one_final_row_per_task(job, n)
    assert set(metrics.status) == {"Completed"}
    assert [p.wait(30) for p in env.procs.values()] == [0, 0]
    err = open(job._launch()["handle"]["stderr"]).read()
    assert "is unreachable" in err and "answers again" in err and "Traceback" not in err, err
    print(f"\n4 s outage mid-job: completed {finished:.1f} s after the store came back, "
          f"attempts {sorted(int(a) for a in metrics.attempt.unique())}")


@pytest.mark.slow
def test_workers_that_spend_their_budget_exit_clearly_and_tasks_end_once(endpoint, s3_workers):
    env = s3_workers(budget=2)
    n = 8
    job = deploy.map_job.create(slow_square, [{"i": i} for i in range(n)], environment=env,
                                chunk_size=1, name="outage")
    direct = endpoint.direct(job._store.uri)
    wait_for(lambda: len(direct.list("results")) >= 2, timeout=60, what="two results")
    endpoint.stop()
    down = time.monotonic()
    wait_for(lambda: all(p.poll() is not None for p in env.procs.values()), timeout=60,
             what="the workers to give up")
    gave_up = time.monotonic() - down
    assert [p.returncode for p in env.procs.values()] == [1, 1]
    endpoint.start()
    assert job.wait(timeout=60) == "Failed"
    metrics = _one_final_row_per_task(job, n)
    lost = metrics[metrics.status != "Completed"]
    assert len(lost) > 0 and set(lost.exception) == {"WorkerLost"}, metrics
    for message in lost.exception_message:
        assert "StoreUnavailable" in message and job._store.uri in message, message
    assert "StoreUnavailable" in job.get_error()
    done_before = set(metrics[metrics.status == "Completed"].task_name)
    # the workers are gone for good; resume runs what they left, and nothing twice
    job.resume()
    assert job.wait(timeout=60) == "Completed", job.summary()
    assert job.get_results() == [i * i for i in range(n)]
    metrics = _one_final_row_per_task(job, n)
    assert set(metrics.status) == {"Completed"}
    assert done_before <= set(metrics.task_name)
    print(f"\nbudget 2 s: workers exited {gave_up:.1f} s into the outage; "
          f"{len(lost)} of {n} tasks recorded WorkerLost, then resumed to Completed")
