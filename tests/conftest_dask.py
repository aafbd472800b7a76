"""A real Dask cluster on loopback for the tests: a `dask scheduler` on 127.0.0.5 and two
`dask worker` processes (each under its nanny, which restarts it when a test kills it) on
127.0.0.6 and 127.0.0.7, so the host column tells them apart. Each worker runs 2 threads and
declares the resources CPU=2, MEMORY=2 GiB (no GPU). Imported by conftest.py; started only
when a test asks for it."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from waiting import wait_for

SCHEDULER_IP, WORKER_IPS = "127.0.0.5", ("127.0.0.6", "127.0.0.7")
THREADS = 2
MEMORY = 2 << 30


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _answers(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _dask(*args: str) -> list[str]:
    """The `dask` command of this Python."""
    return [sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]]


@dataclass
class DaskTestCluster:
    address: str
    folder: str
    procs: list = field(default_factory=list)
    logs: list = field(default_factory=list)

    def start_worker(self, ip: str, *extra: str, name: str | None = None,
                     python: list[str] | None = None, env: dict | None = None) -> subprocess.Popen:
        """Start one more `dask worker` (with its nanny) on `ip`; it joins this scheduler."""
        log = open(os.path.join(self.folder, f"worker-{name or ip}.log"), "wb")
        command = (python or _dask("worker")) + [
            self.address, "--host", ip, "--nthreads", str(THREADS), "--no-dashboard",
            "--memory-limit", "0", "--local-directory", os.path.join(self.folder, name or ip),
            "--name", name or ip, *extra]
        proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def client(self):
        from distributed import Client
        return Client(self.address, timeout=30, set_as_default=False)

    def wait_workers(self, n: int, timeout: float = 60) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=timeout)

    def worker_pids(self) -> dict[str, int]:
        """Each worker's address -> the pid of its worker process (not the nanny)."""
        with self.client() as client:
            return client.run(os.getpid)

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)


def start_scheduler(cluster: DaskTestCluster, ip: str, port: int) -> None:
    log = open(os.path.join(cluster.folder, "scheduler.log"), "wb")
    cluster.logs.append(log)
    scheduler = subprocess.Popen(_dask("scheduler", "--host", ip, "--port", str(port), "--no-dashboard"),
                                 stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    cluster.procs.append(scheduler)
    wait_for(lambda: scheduler.poll() is not None or _answers(ip, port), timeout=60,
             what="the Dask scheduler")
    if scheduler.poll() is not None:
        pytest.fail(f"the Dask scheduler exited with {scheduler.returncode}: see {log.name}")


@contextlib.contextmanager
def another_cluster(folder: str, **worker: Any) -> Iterator[DaskTestCluster]:
    """A cluster apart from the session's, for one test: a scheduler on 127.0.0.8 and one
    worker on 127.0.0.9 started with `worker` (python=, env=, extra arguments as extra=)."""
    port = _free_port("127.0.0.8")
    cluster = DaskTestCluster(f"tcp://127.0.0.8:{port}", folder)
    try:
        start_scheduler(cluster, "127.0.0.8", port)
        cluster.start_worker("127.0.0.9", *worker.pop("extra", ()), **worker)
        cluster.wait_workers(1)
        yield cluster
    finally:
        for proc in reversed(cluster.procs):
            cluster.stop(proc)
        for f in cluster.logs:
            f.close()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A scheduler on 127.0.0.5 and workers on 127.0.0.6 and 127.0.0.7 for the session."""
    folder = str(tmp_path_factory.mktemp("dask"))
    port = _free_port(SCHEDULER_IP)
    address = f"tcp://{SCHEDULER_IP}:{port}"
    cluster = DaskTestCluster(address, folder)
    try:
        start_scheduler(cluster, SCHEDULER_IP, port)
        for ip in WORKER_IPS:
            cluster.start_worker(ip, "--resources", f"CPU={THREADS},MEMORY={MEMORY}")
        cluster.wait_workers(len(WORKER_IPS))
        yield cluster
    finally:
        for proc in reversed(cluster.procs):
            cluster.stop(proc)
        for f in cluster.logs:
            f.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def dask_env(dask_cluster, deploy_home):
    """A DaskCluster environment of the session's cluster (client-side job directory)."""
    from deploy.environments.dask.cluster import DaskCluster
    env = DaskCluster("dask-lab", dask_cluster.address, timeout=10)
    yield env
