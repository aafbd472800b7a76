"""Per-task resources (cpu=, memory_gb=, gpu=): checked, recorded in job.json, honoured
where tasks run (how many at once; memory_gb stops a task that uses more), and refused
before anything runs when no machine can meet them. The same two promises on every
environment are in test_behaviour.py; this file covers the rest."""
from __future__ import annotations

import json
import time

import pytest

import deploy
from cli_run import assert_usage_error, nothing_written, run_main
from deploy.environment import Local, LocalAsync
from deploy.environments.base import HostCapacity, ResourceError, fit_hosts, machine_facts
from deploy.errors import JobError
from deploy.worker.runner import HOST
from waiting import wait_for

FACTS = machine_facts()
CORES, MEMORY, GPUS = FACTS["cpus"], FACTS["memory_gb"], FACTS["gpus"]
MB = 1024 * 1024


def add(x, y):
    return x + y


def span(i, seconds):
    """A task that records when it ran."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def allocate(mb, hold=0.0):
    """Hold `mb` MB of touched memory for `hold` seconds."""
    block = bytearray(mb * MB)
    time.sleep(hold)
    return len(block) // MB


PARAMS = [{"x": 1, "y": 2}, {"x": 3, "y": 4}]

BAD = [({"cpu": 0}, "cpu must be a positive number"),
       ({"cpu": -2}, "cpu must be a positive number"),
       ({"cpu": "2"}, "cpu must be a positive number"),
       ({"cpu": True}, "cpu must be a positive number"),
       ({"cpu": float("nan")}, "cpu must be a positive number"),
       ({"cpu": float("inf")}, "cpu must be a positive number"),
       ({"memory_gb": 0}, "memory_gb must be a positive number"),
       ({"memory_gb": -0.5}, "memory_gb must be a positive number"),
       ({"memory_gb": [1]}, "memory_gb must be a positive number"),
       ({"gpu": -1}, "gpu must be a whole number"),
       ({"gpu": 1.5}, "gpu must be a whole number"),
       ({"gpu": True}, "gpu must be a whole number"),
       ({"gpu": "1"}, "gpu must be a whole number")]


@pytest.mark.parametrize("kwargs, message", BAD, ids=[repr(b[0]) for b in BAD])
def test_bad_resources_are_refused_and_nothing_is_written(kwargs, message, deploy_home):
    with pytest.raises(ValueError, match=message):
        deploy.map_job.create(add, PARAMS, **kwargs)
    with pytest.raises(ValueError, match=message):
        deploy.map(abs, [1, 2], **kwargs)
    with pytest.raises(ValueError, match=message):
        deploy.map(abs, [], **kwargs)            # no tasks: still checked, as every option
    assert nothing_written(deploy_home)


def _host_text() -> str:
    return f"{HOST}: {CORES:g} cores, {MEMORY:.1f} GB" + (f", {GPUS} GPUs" if GPUS else "")


@pytest.mark.parametrize("environment", [None, Local("here"), LocalAsync("two", num_workers=2)],
                         ids=["default", "Local", "LocalAsync"])
def test_a_request_no_machine_meets_is_refused_naming_what_is_there(environment, deploy_home):
    cases = [({"cpu": CORES + 62}, f"cpu={CORES + 62} but the largest host has {CORES} cores"),
             ({"memory_gb": round(MEMORY * 2)}, f"memory_gb={round(MEMORY * 2)} but the largest "
                                                f"host has {MEMORY:.1f} GB"),
             ({"gpu": GPUS + 1}, f"gpu={GPUS + 1} but the largest host has {GPUS} GPUs" if GPUS
              else "gpu=1 but no host has a GPU: 0 GPUs available")]
    for kwargs, reason in cases:
        with pytest.raises(ResourceError) as caught:
            deploy.map_job.create(add, PARAMS, environment=environment, **kwargs)
        assert isinstance(caught.value, ValueError)
        assert str(caught.value) == f"{reason} ({_host_text()})"
    assert nothing_written(deploy_home)


def test_this_machine_has_no_gpu_so_gpu_1_is_refused(deploy_home):
    """The issue's own example: this machine has no GPU, and says so."""
    assert GPUS == 0
    with pytest.raises(ValueError, match=r"^gpu=1 but no host has a GPU: 0 GPUs available \("):
        deploy.map(abs, [1, 2], gpu=1)
    assert nothing_written(deploy_home)


def test_resources_are_recorded_and_reopened(deploy_home):
    """Only the keys the user gave, in job.json; a new process sees them."""
    job = deploy.map_job.create(add, PARAMS, cpu=1, memory_gb=0.5, name="sized")
    assert job.get_results() == [3, 7]
    assert job.spec.resources == {"cpu": 1, "memory_gb": 0.5}
    with open(deploy_home / "jobs" / job.id / "job.json") as f:
        assert json.load(f)["resources"] == {"cpu": 1, "memory_gb": 0.5}
    assert deploy.jobs["sized"].spec.resources == {"cpu": 1, "memory_gb": 0.5}
    plain = deploy.map_job.create(add, PARAMS)
    assert plain.get_results() == [3, 7] and plain.spec.resources is None


@pytest.mark.parametrize("kwargs", [{"memory_gb": round(MEMORY * 0.6, 1)}, {"cpu": CORES}],
                         ids=["memory", "cpu"])
def test_local_async_runs_only_as_many_tasks_at_once_as_fit(kwargs):
    """Two workers by its settings; tasks that each need most of the memory (or every core)
    run one at a time: one worker, and no two tasks overlap."""
    env = LocalAsync("two", num_workers=2)
    assert env.task_slots(kwargs) == 1 and env.task_slots(None) == 2
    job = deploy.map_job.create(span, [{"i": i, "seconds": 0.3} for i in range(4)],
                                environment=env, chunk_size=1, **kwargs)
    spans = sorted(job.get_results())
    assert len(job._launch()["handle"]["pids"]) == 1
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans


def test_resume_keeps_the_resources():
    """resume() fits its workers to the job's resources again: still one task at a time."""
    env = LocalAsync("two", num_workers=2)
    job = deploy.map_job.create(span, [{"i": i, "seconds": 0.2} for i in range(4)],
                                environment=env, chunk_size=1, cpu=CORES)
    job.cancel()
    job.resume()
    assert job.wait(timeout=60) == "Completed"
    assert len(job._launch()["handle"]["pids"]) == 1
    spans = sorted(job.get_results())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans


def test_task_over_memory_gb_is_stopped_and_fails_with_task_memory_exceeded():
    """A task holding more than memory_gb is stopped (not left to run, not a lost worker);
    one that allocates and returns between the worker's looks fails the same way; both
    are retried as tasks that raised; tasks within the limit complete, before and after."""
    params = [{"mb": 10}, {"mb": 400, "hold": 30}, {"mb": 400}, {"mb": 10}]
    start = time.monotonic()
    job = deploy.map_job.create(allocate, params, memory_gb=0.25, max_retries=1, chunk_size=1,
                                environment=LocalAsync("two", num_workers=2))
    assert job.wait(timeout=60) == "Failed"
    assert time.monotonic() - start < 20              # the held task did not run its 30 s
    assert job.get_map_results() == [10, None, None, 10]
    metrics = job.get_metrics()
    assert list(metrics.status) == ["Completed", "Failed", "Failed", "Completed"]
    for row in (metrics.iloc[1], metrics.iloc[2]):
        assert row.exception == "TaskMemoryExceeded"
        assert row.exception_message.startswith("task exceeded memory_gb=0.25 (256 MB): its "
                                                "memory peaked at "), row.exception_message
        peak = int(row.exception_message.split("peaked at ")[1].split(" MB")[0])
        assert 256 < peak < 1000, row.exception_message
        assert row.attempt == 2                        # max_retries=1: run again, then failed
        assert row.peak_memory_mb > 256
    assert metrics.iloc[1].run_time < 10
    assert "it was stopped" in metrics.iloc[1].exception_message


def test_a_task_process_checks_each_call_and_blames_only_the_call_over_the_limit():
    """The check after each call (for tasks that end between the worker's looks): a call
    that peaked over the limit fails even though it freed its memory; the calls after it
    are measured from there, not blamed for it."""
    from deploy.worker.executor import TaskMemoryExceeded, _limited, _reset_peak, _status_kb
    _reset_peak()                   # as a new task process starts: no earlier test's peak
    base = _status_kb("self", b"VmRSS")[0]
    call = _limited(lambda mb: len(bytearray(mb * MB)) // MB, 0.25, base)
    assert call(10) == 10
    with pytest.raises(TaskMemoryExceeded, match=r"^task exceeded memory_gb=0.25 \(256 MB\): its "
                                                 r"memory peaked at \d+ MB .* its result was discarded$"):
        call(400)
    assert call(10) == 10
    assert issubclass(TaskMemoryExceeded, MemoryError)


def test_memory_shared_with_the_client_is_not_the_tasks():
    """The workers are forks of the client: a 300 MB object the function closes over is
    shared, not the task's own memory, so memory_gb=0.1 lets the task read it."""
    big = b"x" * (300 * MB)

    def count(start):
        return big[start:start + 1000].count(b"x")
    assert deploy.map(count, [0, 100 * MB, 200 * MB], memory_gb=0.1) == [1000] * 3


def test_local_checks_memory_gb_after_each_task():
    """Local runs tasks in the caller's process, which is not stopped: a task that used
    more than memory_gb fails when it returns."""
    job = deploy.map_job.create(allocate, [{"mb": 400}, {"mb": 10}], memory_gb=0.25,
                                environment=Local("here"))
    metrics = job.get_metrics()
    assert list(metrics.status) == ["Failed", "Completed"]
    assert metrics.iloc[0].exception == "TaskMemoryExceeded"
    assert "its result was discarded" in metrics.iloc[0].exception_message


def test_deploy_map_raises_for_a_task_over_memory_gb():
    with pytest.raises(JobError, match="TaskMemoryExceeded: task exceeded memory_gb=0.25"):
        deploy.map(allocate, [10, 400], memory_gb=0.25)


def test_fit_counts_per_host_and_names_every_limit():
    hosts = [HostCapacity("a", 8, 4.0, workers=8), HostCapacity("b", 2, 64.0, gpu=2)]
    assert fit_hosts(hosts, {"cpu": 2}) == [4, 1]
    assert fit_hosts(hosts, {"memory_gb": 3}) == [1, 2]          # b: as many as its 2 cores
    assert fit_hosts(hosts, {"gpu": 1}) == [0, 2]
    # a: never above the workers its environment sets; b sets none (an engine's node):
    # its cores decide
    assert fit_hosts(hosts, {"cpu": 0.5}) == [8, 4]
    with pytest.raises(ResourceError, match=r"^no host has cpu=4 and memory_gb=16 at once \(a: 8 "
                                            r"cores, 4.0 GB; b: 2 cores, 64.0 GB, 2 GPUs\)$"):
        fit_hosts(hosts, {"cpu": 4, "memory_gb": 16})
    with pytest.raises(ResourceError, match=r"^cpu=9 but the largest node has 8 cores; memory_gb=65 "
                                            r"but the largest node has 64.0 GB \("):
        fit_hosts(hosts, {"cpu": 9, "memory_gb": 65}, noun="node")


def test_cli_run_takes_resources(tmp_path, deploy_home):
    module = tmp_path / "tasks.py"
    module.write_text("def add(x, y):\n    return x + y\n")
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS))
    for args, match in ((["--cpu", str(CORES + 62)], f"cpu={CORES + 62} but the largest host has"),
                        (["--gpu", "1"], "gpu=1 but no host has a GPU: 0 GPUs available"),
                        (["--memory-gb", "0"], "memory_gb must be a positive number"),
                        (["--gpu", "-1"], "gpu must be a whole number")):
        code, out, err = run_main("run", f"{module}:add", "--params", str(params), *args)
        assert_usage_error(code, err, match)
        assert out == ""
    assert nothing_written(deploy_home)
    code, out, err = run_main("run", f"{module}:add", "--params", str(params), "--cpu", "1",
                              "--memory-gb", "0.5", "--name", "clijob")
    assert code == 0, err
    assert "results: [3, 7]" in out
    assert deploy.jobs["clijob"].spec.resources == {"cpu": 1.0, "memory_gb": 0.5}


# ---------------------------------------------------------------------------- SSH

@pytest.mark.ssh
def test_ssh_hosts_run_as_many_tasks_as_their_cores_and_memory_allow(ssh_hosts):
    """Each host's cores and memory come from the host; a request is dealt per host and
    refused naming every host when none can meet it."""
    from deploy.environments.ssh.cluster import SshCluster
    lab = SshCluster("sized", ["host1", "host2"], ssh_config=str(ssh_hosts.ssh_config_path))
    try:
        capacity = lab.capacity()
        assert [(h.name, h.cpu, h.gpu) for h in capacity] == [("host1", CORES, 0), ("host2", CORES, 0)]
        assert all(abs(h.memory_gb - MEMORY) < 0.5 for h in capacity)
        with pytest.raises(ResourceError) as caught:
            deploy.map_job.create(add, PARAMS, environment=lab, cpu=CORES + 1)
        assert str(caught.value).startswith(f"cpu={CORES + 1} but the largest host has {CORES} cores "
                                            f"(host1: {CORES} cores, ")
        assert "; host2: " in str(caught.value)
        job = deploy.map_job.create(span, [{"i": i, "seconds": 0.2} for i in range(4)],
                                    environment=lab, memory_gb=round(MEMORY * 0.6, 1), chunk_size=1)
        assert job.wait(timeout=60) == "Completed"
        hosts = job._launch()["handle"]["hosts"]
        assert sorted((h["host"], h["workers"]) for h in hosts) == [("host1", 1), ("host2", 1)]
    finally:
        lab.stop()


# ---------------------------------------------------------------------------- Hadoop

@pytest.mark.hadoop
def test_hadoop_sizes_containers_from_resources(hadoop_cluster):
    """memory_gb -> container memory (plus the worker's overhead), cpu -> vcores, one task
    per container; a request no NodeManager can hold is refused naming the nodes."""
    from conftest_hadoop import node_python
    from deploy.environments.hadoop.cluster import TASK_OVERHEAD_MB, HadoopCluster
    env = HadoopCluster("sized", dist_path=f"/user/{hadoop_cluster.user}/deploy",
                        webhdfs_url=hadoop_cluster.webhdfs_url,
                        resourcemanager_url=hadoop_cluster.resourcemanager_url,
                        num_containers=2, container_size=256, python=node_python())
    for kwargs, reason in (({"cpu": 64}, "cpu=64 but the largest node has "),
                           ({"gpu": 1}, "gpu=1 but no node has a GPU: 0 GPUs available"),
                           ({"memory_gb": 4096}, "memory_gb=4096 but the largest node has ")):
        with pytest.raises(ResourceError, match=r"^" + reason.replace("(", r"\(").replace(")", r"\)")):
            deploy.map_job.create(add, PARAMS, environment=env, **kwargs)
    job = deploy.map_job.create(add, PARAMS, environment=env, cpu=2, memory_gb=0.5)
    assert job.get_results() == [3, 7]
    handle = job._launch()["handle"]
    assert (handle["container_mb"], handle["container_vcores"]) == (512 + TASK_OVERHEAD_MB, 2)

    def finished():
        app = hadoop_cluster.app(handle["app"])
        return app if app["state"] == "FINISHED" else None
    assert wait_for(finished, timeout=60, what="the application")["finalStatus"] == "SUCCEEDED"
