"""A real Ray cluster on loopback for the tests: a head on 127.0.0.2 and one more node on
127.0.0.3 (not 127.0.0.1, which Ray rewrites to the machine's external address), each a
`ray start --block` in a session of its own, with its own ports and temp dir, a small
object store, one CPU and 2 GB of schedulable memory; the head also serves Ray Client
(ray://, `client_address`). Stopped by killing the processes of
those sessions: never `ray stop`, which would end every Ray of the machine. One cluster for the whole session,
because Ray connects a process to one cluster only.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from waiting import wait_for

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"
NODE_MEMORY_GB = 2                      # each node's schedulable memory ("memory" resource)
# the head declares a node dead after ~2 s without health checks (default: ~30 s)
FAST_HEALTH = {"RAY_health_check_initial_delay_ms": "500", "RAY_health_check_period_ms": "500",
               "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}
# no token authentication, whatever ~/.ray/auth_token holds (Ray turns it on for a head
# started where that file exists, but not for the nodes joining it); clients too
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports free on `host` right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclasses.dataclass
class RayNode:
    """One `ray start --block` process group: a Ray node (raylet, its workers; the GCS too
    on the head)."""

    ip: str
    proc: subprocess.Popen
    log: str

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill every process of the node at once (as a machine that dies)."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def pids(self) -> list[int]:
        """Live processes of the node: its session (Ray puts each worker in a process
        group of its own, within the session `ray start` leads)."""
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] not in (b"Z", b"X") and int(fields[3]) == self.proc.pid:
                found.append(int(entry))
        return found


class RayTestCluster:
    """The head and the nodes started for the tests, with what tests need to know."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")   # socket paths stay short
        self.nodes: list[RayNode] = []
        self.port = 0
        self.client_port = 0            # the head's Ray Client server (ray://)

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.port}"

    @property
    def client_address(self) -> str:
        """The head's Ray Client address, ray://host:port."""
        return f"ray://{HEAD_IP}:{self.client_port}"

    def start_node(self, ip: str, cpus: int = 1, head: bool = False) -> RayNode:
        """Start a node on `ip` and wait until `ray start` says it runs. A joining node's
        raylet sometimes times out registering with a busy GCS and `ray start` exits: such a
        node is started once more."""
        try:
            return self._start_node(ip, cpus, head)
        except RuntimeError:
            if head:
                raise
            return self._start_node(ip, cpus, head)

    def _start_node(self, ip: str, cpus: int, head: bool) -> RayNode:
        ports = free_ports(ip, 40)
        args = [RAY, "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={cpus}",
                f"--memory={NODE_MEMORY_GB << 30}", f"--object-store-memory={80 << 20}",
                "--disable-usage-stats", f"--node-manager-port={ports[0]}",
                f"--object-manager-port={ports[1]}", f"--dashboard-agent-listen-port={ports[2]}",
                f"--dashboard-agent-grpc-port={ports[3]}", f"--metrics-export-port={ports[4]}",
                f"--runtime-env-agent-port={ports[5]}",
                "--worker-port-list=" + ",".join(map(str, ports[10:]))]
        if head:
            self.port, self.client_port = ports[6], ports[7]
            args += ["--head", f"--port={self.port}", f"--ray-client-server-port={self.client_port}", "--include-dashboard=false", f"--dashboard-port={ports[8]}",
                     f"--temp-dir={self.temp_dir}"]
        else:                           # a temp dir of its own, as on its own machine
            own = os.path.join(self.temp_dir, ip.rsplit(".", 1)[1])
            os.makedirs(own, exist_ok=True)
            args += [f"--address={self.address}", f"--temp-dir={own}"]
        log = os.path.join(self.temp_dir, f"start-{ip}.log")
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True,
                                    env={**os.environ, **FAST_HEALTH, **NO_AUTH})
        node = RayNode(ip, proc, log)
        self.nodes.append(node)

        def started() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start on {ip} exited {proc.returncode}:\n{self.log_text(node)}")
            return "Ray runtime started" in self.log_text(node)
        wait_for(started, timeout=90, what=f"the Ray node on {ip} to start")
        return node

    def log_text(self, node: RayNode) -> str:
        with open(node.log, errors="replace") as f:
            return f.read()

    def kill_node(self, node: RayNode) -> None:
        node.kill()
        self.nodes.remove(node)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray head on 127.0.0.2 and a node on 127.0.0.3, one CPU each, for the session."""
    cluster = RayTestCluster()
    settings = pytest.MonkeyPatch()
    for key, value in NO_AUTH.items():
        settings.setenv(key, value)             # this process and the clients it starts
    try:
        start = time.monotonic()
        cluster.start_node(HEAD_IP, head=True)
        cluster.start_node(NODE_IP)
        print(f"\nray_cluster: head {cluster.address} ({cluster.client_address}) and node {NODE_IP} started in "
              f"{time.monotonic() - start:.1f} s")
        yield cluster
    finally:
        try:
            import ray
            if ray.is_initialized():
                ray.shutdown()          # this process's driver, before its cluster goes
        except ImportError:
            pass
        cluster.stop()
        settings.undo()


@pytest.fixture(scope="session")
def ray_env(ray_cluster, tmp_path_factory):
    """A RayCluster environment on the test cluster whose job directories are in a folder
    every node sees (a shared store: claims, heartbeats and a detached driver actor, as
    jobs that outlive their client run; tests/test_ray_cluster.py covers the default, job
    directories on the client)."""
    from deploy.environments.ray.cluster import RayCluster
    shared = tmp_path_factory.mktemp("ray-shared")
    os.chmod(shared, 0o777)
    return RayCluster("behaviour", ray_cluster.address, store=str(shared))


def ray_cancel_leftovers() -> None:
    """Cancel the Ray jobs a test left running (a failed test must not hold the CPUs)."""
    import deploy
    for name in deploy.jobs.names():
        job = deploy.jobs[name]
        if job.get_status() in ("Pending", "Running"):
            job.cancel()


def ray_tasks_gone(handle: dict) -> bool:
    """No Ray task of a launch is left: its driver (this process's thread, or the detached
    actor) saw every task end."""
    from deploy.environments.ray import cluster
    if handle.get("mode") == "actor":
        return cluster.RayCluster("gone", handle["address"]).alive(handle) is False
    scheduler = cluster._running.get(handle.get("job", ""))
    return scheduler is None or scheduler.finished
