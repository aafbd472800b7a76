"""RayCluster against a real Ray cluster on loopback (tests/conftest_ray.py): a head on
127.0.0.2 and a node on 127.0.0.3, one CPU and 2 GB of schedulable memory each. Tasks write
marker files into a folder of this machine, which every node sees.
"""
from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import deploy
from conftest import ROOT, run_python
from conftest_ray import HEAD_IP, NODE_IP, NODE_MEMORY_GB
from deploy.environments.base import ResourceError
from deploy.environments.ray.connect import RayClusterError, check_versions, local_versions
from deploy.worker.processes import process_alive
from waiting import wait_for
from wheels import make_wheel

pytestmark = pytest.mark.ray

GRAPHLAB = [{"x": 20, "y": 20}, {"x": None, "y": 10}, {"x": 5, "y": 5}]
GOOD = [{"x": 20, "y": 20}, {"x": 10, "y": 10}, {"x": 5, "y": 5}]


def add(x, y):
    return x + y


def add_combiner(**kwargs):
    return sum(kwargs.values())


def hold(folder: str, i: int):
    """Notes its start (start-<i>-<pid>), then waits up to two minutes for the file 'release'."""
    open(os.path.join(folder, f"start-{i}-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(folder, "release")) and time.monotonic() < deadline:
        time.sleep(0.01)
    return i


def use_package(i: int):
    import raypkg                       # installed only in the tasks' Ray runtime_env
    return raypkg.VALUE + i


def starts(folder: str) -> list[tuple[int, int]]:
    """(task, pid) of every start marker `hold` wrote."""
    return [tuple(map(int, os.path.basename(p).split("-")[1:])) for p in glob.glob(f"{folder}/start-*")]


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "markers"
    path.mkdir()
    return str(path)


@pytest.fixture
def rc(ray_cluster):
    return deploy.ray_cluster.create("rc", address=ray_cluster.address)


def test_graphlab_example_with_combiner_on_both_nodes(rc, folder):
    """GraphLab's example on Ray: results in order with None where a task failed, the
    combiner's value, the same metrics columns; chunks spread over both nodes (host column)."""
    bad = deploy.map_job.create(add, GRAPHLAB, environment=rc)
    good = deploy.map_job.create(add, GOOD, environment="rc", combiner_function=add_combiner)
    assert bad.wait(timeout=60) == "Failed"
    assert bad.get_map_results() == [40, None, 10]
    metrics = bad.get_metrics()
    assert list(metrics.status) == ["Completed", "Failed", "Completed"]
    assert metrics.iloc[1].exception == "TypeError"
    assert "return x + y" in metrics.iloc[1].exception_traceback
    assert good.get_results(timeout=60) == 70
    assert list(good.get_metrics().task_name) == ["add-0-0", "add-0-1", "add-0-2", "add_combiner-1-0"]

    spread = deploy.map_job.create(hold, [{"folder": folder, "i": i} for i in range(2)],
                                   environment=rc, chunk_size=1)
    wait_for(lambda: len(starts(folder)) == 2, timeout=60, what="both tasks to run at once")
    open(os.path.join(folder, "release"), "w").close()
    assert spread.get_results(timeout=60) == [0, 1]
    assert set(spread.get_metrics().host) == {HEAD_IP, NODE_IP}
    assert deploy.environments["rc"] == rc


def test_ray_client_address_runs_graphlab_example(ray_cluster):
    """A RayCluster made with the head's Ray Client address (ray://host:port) runs GraphLab's
    example and its combiner, the host column naming Ray nodes; the GCS address then reaches
    the same connection, and so does the ray:// address after the caller's own ray.init. In
    processes of their own: this one is connected to the GCS address, and Ray allows one."""
    ran = run_python(f"""
        import json, sys
        sys.path.insert(0, 'tests')
        import deploy
        from test_ray_cluster import GOOD, GRAPHLAB, add, add_combiner
        rc = deploy.ray_cluster.create('client', address={ray_cluster.client_address!r})
        bad = deploy.map_job.create(add, GRAPHLAB, environment=rc)
        good = deploy.map_job.create(add, GOOD, environment='client', combiner_function=add_combiner,
                                     chunk_size=1)
        print(json.dumps({{"status": bad.wait(timeout=90), "bad": bad.get_map_results(),
                          "good": good.get_results(timeout=90),
                          "hosts": sorted(set(bad.get_metrics().host) | set(good.get_metrics().host)),
                          "address": deploy.environments['client'].address}}))
        deploy.ray_cluster.RayCluster('gcs', {ray_cluster.address!r}).prepare()   # the same cluster
    """, timeout=240)
    got = json.loads(ran.stdout.strip().splitlines()[-1])
    assert got["status"] == "Failed" and got["bad"] == [40, None, 10]
    assert got["good"] == 70
    assert got["hosts"] and set(got["hosts"]) <= {HEAD_IP, NODE_IP}
    assert got["address"] == ray_cluster.client_address

    own = run_python(f"""
        import ray, deploy
        ray.init({ray_cluster.client_address!r})      # the caller connects through Ray Client itself
        rc = deploy.ray_cluster.create('mine', address={ray_cluster.client_address!r})
        print(deploy.map_job.create(pow, [{{'base': 2, 'exp': 5}}], environment=rc).get_results(timeout=60))
    """, timeout=120)
    assert own.stdout.strip().splitlines()[-1] == "[32]"


def test_node_killed_mid_job_loses_nothing(ray_cluster, rc, folder):
    """Three tasks hold one CPU each on three nodes; the third node is killed: Ray runs its
    chunk again elsewhere (max_retries) and every task completes, none on the dead node."""
    extra = ray_cluster.start_node("127.0.0.4")
    try:
        wait_for(lambda: len(rc.capacity()) == 3, timeout=60, what="the third node to join")
        job = deploy.map_job.create(hold, [{"folder": folder, "i": i} for i in range(3)],
                                    environment=rc, chunk_size=1)
        wait_for(lambda: len(starts(folder)) == 3, timeout=60, what="a task on every node")
        ray_cluster.kill_node(extra)
        open(os.path.join(folder, "release"), "w").close()
        assert job.wait(timeout=90) == "Completed", job.get_error()
    finally:
        if extra in ray_cluster.nodes:
            ray_cluster.kill_node(extra)
    assert job.get_results() == [0, 1, 2]
    metrics = job.get_metrics()
    assert set(metrics.status) == {"Completed"} and len(metrics) == 3
    assert set(metrics.host) <= {HEAD_IP, NODE_IP}
    assert len(starts(folder)) == 4                   # the lost chunk started once more
    wait_for(lambda: len(rc.capacity()) == 2, timeout=30, what="the dead node to leave")


def test_cancel_stops_running_tasks(rc, folder):
    """cancel() while two tasks run and two wait: when it returns the running task
    processes are gone, nothing else starts, every task is Canceled; resume() finishes."""
    job = deploy.map_job.create(hold, [{"folder": folder, "i": i} for i in range(4)],
                                environment=rc, chunk_size=1, name="cancel-ray")
    wait_for(lambda: len(starts(folder)) == 2, timeout=60, what="two tasks to run")
    running = [pid for _, pid in starts(folder)]
    job.cancel()
    assert job.get_status() == "Canceled"
    assert not [p for p in running if process_alive(p)]
    time.sleep(1.0)                                    # a waiting task would have started by now
    assert len(starts(folder)) == 2
    metrics = job.get_metrics()
    assert set(metrics.status) == {"Canceled"} and len(metrics) == 4
    open(os.path.join(folder, "release"), "w").close()
    job.resume()
    assert job.get_results(timeout=60) == [0, 1, 2, 3]


def test_resources_no_node_can_meet_are_refused(rc, ray_cluster, deploy_home, folder):
    """cpu, memory_gb or gpu beyond every node is refused before anything is written, naming
    the nodes' resources; a request that fits runs with Ray's num_cpus/memory."""
    for asked, said in (({"cpu": 4}, "cpu=4 but the largest node has 1 cores"),
                        ({"memory_gb": 8}, f"memory_gb=8 but the largest node has {NODE_MEMORY_GB:.1f} GB"),
                        ({"gpu": 1}, "no node has a GPU")):
        with pytest.raises(ResourceError) as err:
            deploy.map_job.create(add, GOOD, environment=rc, **asked)
        assert said in str(err.value) and f"{HEAD_IP}: 1 cores, {NODE_MEMORY_GB:.1f} GB" in str(err.value)
    assert deploy.jobs.names() == []                # nothing was written
    job = deploy.map_job.create(add, GOOD, environment=rc, cpu=1, memory_gb=1.5)
    assert job.get_results(timeout=60) == [40, 20, 10]


def test_job_outlives_its_client_with_a_shared_store(ray_cluster, tmp_path):
    """With a shared store the job's driver is a detached actor: the client that created the
    job exits before its tasks may finish, this process reopens the job by name and sees it
    complete; another job is canceled from here and its running tasks stop."""
    shared = str(tmp_path / "shared")
    marks = str(tmp_path / "marks")
    os.makedirs(marks)
    run_python(f"""
        import deploy, os, time
        def slow(folder, i):
            deadline = time.monotonic() + 60
            while not os.path.exists(folder + "/go") and time.monotonic() < deadline:
                time.sleep(0.01)
            return i * i
        rc = deploy.ray_cluster.create('shared', address={ray_cluster.address!r}, store={shared!r})
        deploy.map_job.create(slow, [{{'folder': {marks!r}, 'i': i}} for i in range(6)],
                              environment=rc, chunk_size=1, name='outlive')
    """, timeout=120)
    gone = time.time()                      # the client process has exited
    open(os.path.join(marks, "go"), "w").close()
    job = deploy.jobs["outlive"]
    assert job._store.local_path("").startswith(shared)
    assert job.wait(timeout=90) == "Completed", job.get_error()
    assert job.get_results() == [i * i for i in range(6)]
    metrics = job.get_metrics()
    assert metrics.end_time.min().timestamp() > gone
    assert set(metrics.host) <= {HEAD_IP, NODE_IP}

    held = deploy.map_job.create(hold, [{"folder": marks, "i": i} for i in range(3)],
                                 environment="shared", chunk_size=1, name="held")
    wait_for(lambda: len(starts(marks)) == 2, timeout=60, what="two held tasks")
    pids = [pid for _, pid in starts(marks)]
    held.cancel()
    assert held.get_status() == "Canceled"
    assert not [p for p in pids if process_alive(p)]
    assert set(held.get_metrics().status) == {"Canceled"}
    handle = held._launch()["handle"]
    assert handle["mode"] == "actor"
    wait_for(lambda: held.environment.alive(handle) is False, timeout=30, what="the driver actor to end")


def test_additional_packages_through_ray_runtime_env(ray_cluster, tmp_path):
    """additional_packages reach the tasks through Ray's own pip runtime_env (a local wheel
    here: no index is asked), not through this machine's Python."""
    wheel = make_wheel(tmp_path, "raypkg", value=40)
    rc = deploy.ray_cluster.create("pkgs", address=ray_cluster.address, additional_packages=[wheel])
    job = deploy.map_job.create(use_package, [{"i": 1}, {"i": 2}], environment=rc)
    assert job.get_results(timeout=240) == [41, 42], job.get_error()
    with pytest.raises(ImportError):
        import raypkg  # noqa: F401


def test_bad_inputs(ray_cluster, rc):
    """An address where nothing listens, or where something that is not Ray listens, fails
    within seconds naming it; a malformed address is a ValueError; a second cluster in one
    process, another Python or cloudpickle on the cluster, and ray missing on the client
    each say what is wrong."""
    with socket.socket() as free:
        free.bind((HEAD_IP, 0))
        port = free.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(RayClusterError, match=f"{HEAD_IP}:{port}"):
        deploy.ray_cluster.RayCluster("down", f"{HEAD_IP}:{port}").prepare()
    assert time.monotonic() - start < 10

    with socket.socket() as server:                 # a plain TCP service, not gRPC
        server.bind((HEAD_IP, 0))
        server.listen()
        address = f"{HEAD_IP}:{server.getsockname()[1]}"

        def answer():
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                time.sleep(0.5)
        threading.Thread(target=answer, daemon=True).start()
        from deploy.environments.ray.connect import check_reachable
        with pytest.raises(RayClusterError, match="not a Ray head"):
            check_reachable(address, 5)

    for address in ("", "http://x:1", "host:port", "ray://:1"):
        with pytest.raises(ValueError):
            deploy.ray_cluster.RayCluster("bad", address)

    rc.prepare()                                    # this process is connected to the cluster
    with pytest.raises(RayClusterError, match="no Ray head answers"):
        deploy.ray_cluster.RayCluster("other", f"{HEAD_IP}:{port}").prepare()
    with socket.socket() as other:                  # something that greets like a gRPC server
        other.bind((HEAD_IP, 0))
        other.listen()
        threading.Thread(target=lambda: other.accept()[0].sendall(b"\0\0\0\x04\0\0\0\0\0"),
                         daemon=True).start()
        with pytest.raises(RayClusterError, match="one cluster only"):
            deploy.ray_cluster.RayCluster("other", f"{HEAD_IP}:{other.getsockname()[1]}").prepare()

    here = local_versions()
    with pytest.raises(RayClusterError, match=r"Python 3\.\d+\.\d+ here but 2\.7\.18"):
        check_versions(here, {**here, "python": "2.7.18"}, rc.address)
    with pytest.raises(RayClusterError, match="cloudpickle .* but 1.6.0"):
        check_versions(here, {**here, "cloudpickle": "1.6.0"}, rc.address)
    check_versions(here, {**here, "python": here["python"].rsplit(".", 1)[0] + ".99"}, rc.address)

    missing = run_python(f"""
        import sys
        sys.modules['ray'] = None               # as if ray were not installed
        import deploy
        try:
            deploy.ray_cluster.create('x', address={ray_cluster.address!r})
        except ImportError as exc:
            print(exc)
    """)
    assert "pip install deploy[ray]" in missing.stdout


def test_cli_creates_a_ray_env(ray_cluster):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
    made = cli("envs", "create", "ray", "clirc", "--address", ray_cluster.address)
    assert made.returncode == 0, made.stderr
    assert "2 workers" in made.stdout
    ran = cli("run", "examples/add.py:add", "--params", "examples/params.json", "--env", "clirc")
    assert ran.returncode == 1 and "results: [40, null, 10]" in ran.stdout, ran.stderr
    with socket.socket() as free:
        free.bind((HEAD_IP, 0))
        port = free.getsockname()[1]
    down = cli("envs", "create", "ray", "down", "--address", f"{HEAD_IP}:{port}")
    assert down.returncode == 1 and f"{HEAD_IP}:{port}" in down.stderr
