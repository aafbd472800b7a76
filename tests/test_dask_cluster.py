"""DaskCluster against a real Dask cluster on loopback (tests/conftest_dask.py): a scheduler
on 127.0.0.5 and two worker processes on 127.0.0.6 and 127.0.0.7, 2 threads each, declaring
CPU=2 and MEMORY=2 GiB. The behaviour suite (test_behaviour.py) runs on it as well; these
are what is particular to Dask: the engine's own scheduling, resources, its bad inputs."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

import deploy
from conftest import run_python
from waiting import wait_for

pytestmark = pytest.mark.dask


def add(x, y):
    return x + y


def add_combiner(**kwargs):
    return sum(kwargs.values())


def slow_add(x, y):
    time.sleep(0.3)
    print(f"adding {x} and {y}")
    return x + y


def test_graphlab_example_with_combiner_spread_over_both_workers(dask_env):
    job = deploy.map_job.create(slow_add, [{"x": i, "y": i} for i in range(8)],
                                environment=dask_env, combiner_function=add_combiner,
                                chunk_size=1)
    assert job.get_results(timeout=60) == sum(2 * i for i in range(8))
    metrics = job.get_metrics()
    assert list(metrics.status) == ["Completed"] * 9
    assert set(metrics.host[:8]) == {"127.0.0.6", "127.0.0.7"}      # both workers took chunks
    assert metrics.host.iloc[8] in ("127.0.0.6", "127.0.0.7")       # the combiner ran there too
    assert (metrics.attempt == 1).all()
    assert "adding 3 and 3" in job.get_logs("slow_add-0-3")


def span(folder: str, i: int, seconds: float):
    """Notes when it ran (file span-<i>-<start>-<end>-<pid>), taking `seconds`."""
    start = time.time()
    time.sleep(seconds)
    open(os.path.join(folder, f"span-{i}-{start:.6f}-{time.time():.6f}-{os.getpid()}"), "w").close()
    return i


def hold(folder: str, i: int):
    """Waits up to 30 s for the file 'go', then notes when it ran (as span) and returns i."""
    start = time.time()
    while not os.path.exists(os.path.join(folder, "go")) and time.time() < start + 30:
        time.sleep(0.01)
    open(os.path.join(folder, f"span-{i}-{start:.6f}-{time.time():.6f}-{os.getpid()}"), "w").close()
    return i


def _spans(folder: str) -> list[tuple[int, float, float]]:
    out = []
    for name in os.listdir(folder):
        if name.startswith("span-"):
            _, i, start, end, _ = name.split("-")
            out.append((int(i), float(start), float(end)))
    return out


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_cpu_per_task_goes_to_dask_resources(dask_env, tmp_path):
    """cpu=2 on workers that declare CPU=2: Dask runs one task at a time on each worker
    (two threads notwithstanding); without it, two at a time. A request beyond every
    worker is refused, naming what the workers have."""
    folder = str(tmp_path)
    job = deploy.map_job.create(span, [{"folder": folder, "i": i, "seconds": 0.4} for i in range(8)],
                                environment=dask_env, chunk_size=1, cpu=2)
    assert job.get_results(timeout=60) == list(range(8))
    metrics = job.get_metrics()
    by_host = {}
    for (i, start, end), host in zip(sorted(_spans(folder)), metrics.host):
        by_host.setdefault(host, []).append((start, end))
    assert set(by_host) == {"127.0.0.6", "127.0.0.7"}
    assert all(_most_at_once(spans) == 1 for spans in by_host.values()), by_host
    with pytest.raises(ValueError, match=r"cpu=3 but the largest host has 2 cores \(tcp://127\.0\.0\.[67]:\d+: 2 cores"):
        deploy.map_job.create(span, [{"folder": folder, "i": 0, "seconds": 0}],
                              environment=dask_env, cpu=3)


def test_killed_dask_worker_loses_nothing(dask_cluster, dask_env, tmp_path):
    """SIGKILL a worker process while its chunks run: Dask runs them again on the workers
    left (and on the one its nanny starts again); every task completes once, as attempt 2
    where its first worker died."""
    folder = str(tmp_path)
    job = deploy.map_job.create(span, [{"folder": folder, "i": i, "seconds": 1.0} for i in range(12)],
                                environment=dask_env, chunk_size=1)
    pids = dask_cluster.worker_pids()
    victim = next(a for a in pids if "127.0.0.6" in a)
    wait_for(lambda: any(r["host"] == "127.0.0.6" for r in _heartbeats(job)), timeout=30,
             what="a chunk to start on 127.0.0.6")
    os.kill(pids[victim], signal.SIGKILL)
    assert job.get_results(timeout=90) == list(range(12))
    metrics = job.get_metrics()
    assert set(metrics.status) == {"Completed"} and len(metrics) == 12
    assert (metrics.attempt == 2).any(), list(metrics.attempt)
    assert sorted(i for i, _, _ in _spans(folder)) == list(range(12))   # killed runs left no span
    dask_cluster.wait_workers(2)


def _heartbeats(job) -> list[dict]:
    out = []
    for name in job._store.list("heartbeats"):
        try:
            out.append(json.loads(job._store.get(f"heartbeats/{name}")))
        except FileNotFoundError:
            pass
    return out


def test_cancel_stops_running_dask_tasks(dask_env, tmp_path):
    """cancel() while every worker thread runs a long task: it returns once no task of the
    job runs in any worker, the tasks' processes stopped (no span written), nothing is
    left on the scheduler, every task is Canceled."""
    folder = str(tmp_path)
    job = deploy.map_job.create(span, [{"folder": folder, "i": i, "seconds": 30} for i in range(8)],
                                environment=dask_env, chunk_size=1)
    wait_for(lambda: len(_heartbeats(job)) >= 4, timeout=30, what="4 chunks to start")
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 5
    handle = job._launch()["handle"]
    assert dask_env.tasks_left(handle) == 0
    assert job.get_status() == "Canceled"
    assert set(job.get_metrics().status) == {"Canceled"}
    time.sleep(0.5)                                   # a task process still running would write
    assert _spans(folder) == []


def test_shared_store_job_outlives_its_client(dask_cluster, tmp_path):
    """With store= a path every worker sees, the client process may exit at once: Dask keeps
    the tasks (fire_and_forget), they write the job directory themselves, the combiner runs
    on the cluster, and a new process reads the finished job by name."""
    store = str(tmp_path / "shared")
    run_python(f"""
        import deploy
        from deploy.environments.dask.cluster import DaskCluster
        from test_dask_cluster import slow_add, add_combiner
        env = DaskCluster('shared-lab', {dask_cluster.address!r}, store={store!r})
        job = deploy.map_job.create(slow_add, [{{'x': i, 'y': 1}} for i in range(6)],
                                    environment=env, combiner_function=add_combiner,
                                    name='outlives', chunk_size=1)
        assert not env.needs_client
    """, env={"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))})
    job = deploy.jobs["outlives"]
    assert job.get_results(timeout=60) == sum(i + 1 for i in range(6))
    metrics = job.get_metrics()
    assert set(metrics.status) == {"Completed"} and len(metrics) == 7
    assert set(metrics.host) <= {"127.0.0.6", "127.0.0.7"}
    assert "adding 5 and 1" in job.get_logs("slow_add-0-5")


def test_a_relayed_job_whose_client_exited_fails_saying_why(dask_cluster, tmp_path):
    """The default job directory is on the client: when the creating process exits mid-job
    Dask drops its tasks, and another process sees the job Failed, told why."""
    run_python(f"""
        import deploy
        from deploy.environments.dask.cluster import DaskCluster
        from test_dask_cluster import span
        env = DaskCluster('lab', {dask_cluster.address!r})
        deploy.map_job.create(span, [{{'folder': {str(tmp_path)!r}, 'i': i, 'seconds': 30}}
                                     for i in range(4)], environment=env, name='orphan', chunk_size=1)
    """, env={"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))})
    job = deploy.jobs["orphan"]
    assert job.wait(timeout=30) == "Failed"
    assert "has exited" in job.get_error() and "store=" in job.get_error()
    assert set(job.get_metrics().exception) == {"WorkerLost"}


def test_unreachable_scheduler_is_named_at_once():
    from deploy.environments.dask.cluster import DaskCluster, DaskClusterError
    started = time.monotonic()
    with pytest.raises(DaskClusterError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.5:1:"):
        deploy.dask_cluster.create("nowhere", "127.0.0.5:1")
    assert time.monotonic() - started < 3
    with pytest.raises(ValueError, match="scheduler must be"):
        DaskCluster("bad", "not an address")
    saved = deploy.environments.list()
    assert len(saved) == 0 or "nowhere" not in list(saved["name"])


def test_dask_missing_on_the_client_names_the_extra(dask_cluster):
    out = run_python(f"""
        import sys
        sys.modules['distributed'] = None          # as if dask were not installed
        import deploy
        from deploy.environments.dask.cluster import DaskClusterError
        try:
            deploy.dask_cluster.create('lab', {dask_cluster.address!r})
        except DaskClusterError as exc:
            print(exc)
    """)
    assert "pip install 'deploy[dask]'" in out.stdout


def test_cloudpickle_mismatch_on_a_worker_is_refused(tmp_path):
    """A cluster whose worker runs another cloudpickle version (a real worker process,
    its cloudpickle reporting 1.0.0): refused before any job, naming the worker and both
    versions."""
    import sys
    from conftest_dask import another_cluster
    from deploy.environments.dask.cluster import DaskClusterError
    old = ("import sys, cloudpickle; cloudpickle.__version__ = '1.0.0'; "
           "from distributed.cli.dask_worker import main; sys.argv[0] = 'dask-worker'; main()")
    with another_cluster(str(tmp_path), python=[sys.executable, "-c", old], extra=["--no-nanny"]) as other:
        with pytest.raises(DaskClusterError, match=r"tcp://127\.0\.0\.9:\d+ has cloudpickle 1\.0\.0"):
            deploy.dask_cluster.create("old", other.address)
        assert "old" not in list(deploy.environments.list().get("name", []))


def uses_package(x):
    import dkpkg                        # installed on the workers only, by additional_packages
    return dkpkg.VALUE + x


def test_additional_packages_are_installed_by_dask_pipinstall(tmp_path):
    """additional_packages go to Dask's PipInstall plugin: a wheel the client does not have
    is installed on the worker (into a folder on its path) and the job's tasks import it."""
    from conftest_dask import another_cluster
    from wheels import make_wheel
    target = tmp_path / "site"
    target.mkdir()
    wheel = make_wheel(tmp_path, "dkpkg", value=40)
    with another_cluster(str(tmp_path), env={"PYTHONPATH": str(target)}) as other:
        env = deploy.dask_cluster.create("pkgs", other.address, additional_packages=[wheel],
                                         pip_options=["--no-index", "--target", str(target)])
        assert deploy.map(uses_package, [1, 2], environment=env, stream=False) == [41, 42]
        env.stop()


def test_cli_creates_the_environment_and_runs_a_job_on_it(dask_cluster, tmp_path):
    from cli_run import run_main
    code, out, err = run_main("envs", "create", "dask", "cli-lab", "--scheduler", dask_cluster.address)
    assert code == 0, err
    assert "saved DaskCluster('cli-lab'" in out and "4 workers" in out
    params = tmp_path / "params.json"
    params.write_text(json.dumps([{"x": 1, "y": 2}, {"x": 3, "y": 4}]))
    code, out, err = run_main("run", "test_dask_cluster:add", "--params", str(params), "--env", "cli-lab",
                              "--combiner", "test_dask_cluster:add_combiner")
    assert code == 0, err
    assert "results: [3, 7]" in out and "combined: 10" in out
    assert "127.0.0.6" in out or "127.0.0.7" in out


def test_a_shared_store_job_is_canceled_from_another_process(dask_cluster, tmp_path):
    """The client that created a shared-store job has exited; this process cancels it by
    name: Dask drops its tasks (found on the scheduler by their keys), the running ones
    stop at once, every task is Canceled, and resume() finishes it."""
    store, folder = str(tmp_path / "shared"), str(tmp_path / "marks")
    os.mkdir(folder)
    run_python(f"""
        import deploy
        from deploy.environments.dask.cluster import DaskCluster
        from test_dask_cluster import hold
        env = DaskCluster('shared-lab', {dask_cluster.address!r}, store={store!r})
        deploy.map_job.create(hold, [{{'folder': {folder!r}, 'i': i}} for i in range(6)],
                              environment=env, name='far', chunk_size=1)
    """, env={"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))})
    job = deploy.jobs["far"]
    wait_for(lambda: len(job._store.list("claims")) >= 4, timeout=30, what="4 chunks to start")
    assert job.get_status() == "Running"
    job.cancel()
    assert job.environment.tasks_left(job._launch()["handle"]) == 0
    assert job.get_status() == "Canceled"
    assert set(job.get_metrics().status) == {"Canceled"}
    assert _spans(folder) == []
    open(os.path.join(folder, "go"), "w").close()
    job.resume()
    assert job.wait(timeout=120) == "Completed"
    assert job.get_results() == list(range(6))


def test_settings_round_trip_and_registry():
    """A DaskCluster is plain data: its settings rebuild it, through the registry too,
    without connecting."""
    from deploy.environments.dask.cluster import DaskCluster
    from deploy.environments.kinds import from_dict
    env = DaskCluster("lab", "10.0.0.5:8786", store="s3://bucket/jobs", additional_packages=["numpy"],
                      pip_options=["--no-index"], timeout=5)
    assert env.settings() == {"scheduler": "tcp://10.0.0.5:8786", "store": "s3://bucket/jobs",
                              "additional_packages": ["numpy"], "pip_options": ["--no-index"],
                              "timeout": 5.0}
    assert from_dict(env.to_dict()) == env
    env.save()
    assert deploy.environments["lab"] == env and not env.needs_client
    assert DaskCluster("lab2", "tcp://10.0.0.5:8786").needs_client


@pytest.mark.parametrize("shared", [False, True], ids=["client-store", "shared-store"])
def test_max_concurrent_tasks_caps_the_chunks_dask_runs_at_once(dask_cluster, tmp_path, shared):
    """max_concurrent_tasks=2 on 4 worker threads: never more than 2 chunks run at once;
    the rest are submitted as those finish, and the combiner runs after them."""
    from deploy.environments.dask.cluster import DaskCluster
    folder = str(tmp_path / "marks")
    os.mkdir(folder)
    env = DaskCluster("capped", dask_cluster.address, store=str(tmp_path / "jobs") if shared else None)
    job = deploy.map_job.create(span, [{"folder": folder, "i": i, "seconds": 0.3} for i in range(8)],
                                environment=env, chunk_size=1, max_concurrent_tasks=2,
                                combiner_function=add_combiner)
    assert job.get_results(timeout=60) == sum(range(8))
    assert _most_at_once([(s, e) for _, s, e in _spans(folder)]) == 2
