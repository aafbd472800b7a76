"""One behaviour suite, run on every environment: Local, LocalAsync, SshCluster, HadoopCluster.

Each test takes the parametrized fixture `env` and asserts the same promises everywhere.
The cluster environments are made once for this module (`ssh_env`: host1, host2 and host3, whose
sshd offers no SFTP, one worker each; `hadoop_env`: two 256 MB YARN containers) on the real
sshd hosts and the real Hadoop mini cluster. Tasks write marker files into a world-writable
folder of this machine, which the host users and the YARN containers see as well.
Deselect the clusters with `-m "not ssh and not hadoop"`.

Where a test does not run on an environment, and why (everything else runs everywhere):

| test                                  | env   | why                                          |
|---------------------------------------|-------|----------------------------------------------|
| test_process_faults_cost_one_row_each | Local | skipped: Local runs tasks in the test's own  |
|                                       |       | process, so os._exit ends pytest, a segfault |
|                                       |       | kills it and RLIMIT_AS would bind it too     |
| test_killed_worker_is_taken_over      | Local | skipped: Local's worker is the test's        |
|                                       |       | process; killing it ends the test            |

Local blocks in create(), so its cancel tests cancel from a thread (deploy.jobs[name].cancel(),
as a user would from another thread); a running inline task cannot be stopped, so the thread
lets it end once cancel() returned, and its row stays Canceled (first publisher wins).
"""
from __future__ import annotations

import ctypes
import dataclasses
import glob
import json
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Callable

import pytest

import deploy
from conftest import run_python
from conftest_hadoop import node_python, pids_with_env
from conftest_ray import ray_cancel_leftovers, ray_tasks_gone
from conftest_ec2 import ec2_behaviour_env, ec2_suite_env, ec2_world  # noqa: F401  (the EC2 env)
from deploy.environments.base import Environment
from deploy.jobs.job import Job
from deploy.worker.processes import process_alive
from waiting import wait_for

LAB = ("host1", "host2", "host3")      # host3's sshd offers no SFTP
COLUMNS = ["task_name", "status", "start_time", "end_time", "run_time", "exception",
           "exception_message", "exception_traceback", "host", "worker", "attempt", "peak_memory_mb"]
GRAPHLAB = [{"x": 20, "y": 20}, {"x": None, "y": 10}, {"x": 5, "y": 5}]
GOOD = [{"x": 20, "y": 20}, {"x": 10, "y": 10}, {"x": 5, "y": 5}]


# ---------------------------------------------------------------------------- task functions
# They live in this module, which the SSH hosts and YARN containers cannot import: there
# they travel by value.

def add(x, y):
    return x + y


def add_combiner(**kwargs):
    return sum(kwargs.values())


class CustomError(Exception):
    """An exception class of the caller's own (by value on remote hosts)."""


class UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")


def raise_kind(kind: str, i: int):
    """Returns i for kind 'ok', else raises the named kind of exception."""
    if kind == "ok":
        return i
    if kind == "ValueError":
        raise ValueError(f"bad value {i}")
    if kind == "KeyError":
        return {}["missing"]
    if kind == "CustomError":
        raise CustomError(f"custom {i}")
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt()
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "UnprintableError":
        raise UnprintableError()
    raise AssertionError(kind)


def fault(kind: str, i: int):
    """Returns i for kind 'ok'; else ends the task process (exit, segv) or runs it out of
    address space under an RLIMIT_AS 64 MB above what it uses (memory)."""
    if kind == "exit":
        os._exit(3)
    if kind == "segv":
        ctypes.string_at(0)
    if kind == "memory":
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (size + (64 << 20), hard))
        blocks = []
        while True:
            blocks.append(bytearray(8 << 20))
    return i


def hang_once(folder: str, i: int):
    """Notes that it started; the first run of task 0 then hangs until its worker is killed."""
    open(os.path.join(folder, f"started-{i}-{os.getpid()}"), "w").close()
    if i == 0 and not os.path.exists(os.path.join(folder, "ran")):
        open(os.path.join(folder, "ran"), "w").close()
        time.sleep(120)
    return i


def blocks(folder: str, i: int):
    """Notes when it started (file start-<i>-<time>), then waits up to a minute for the
    file 'release'."""
    open(os.path.join(folder, f"start-{i}-{time.time():.6f}"), "w").close()
    release = os.path.join(folder, "release")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return i


def stepper(folder: str, i: int, seconds: float):
    """Notes when it started (file start-<i>-<time>), takes `seconds`, returns i."""
    open(os.path.join(folder, f"start-{i}-{time.time():.6f}"), "w").close()
    time.sleep(seconds)
    return i


def flaky(folder: str, i: int, failures: int):
    """Raises on its first `failures` runs (counted in files try-<i>-<n>), then returns i."""
    n = 0
    while True:
        try:
            os.close(os.open(os.path.join(folder, f"try-{i}-{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            n += 1
    if n < failures:
        raise RuntimeError(f"run {n + 1} of task {i} fails")
    return i


def sleepy(seconds: float):
    time.sleep(seconds)
    return seconds


def fail_first(i: int):
    if i == 0:
        raise ValueError("bad input 0")
    time.sleep(0.3)
    return i


# ---------------------------------------------------------------------------- process helpers

def group_members(pgids: set[int]) -> list[int]:
    """Live processes (any user) in the given process groups."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in (b"Z", b"X") and int(fields[2]) in pgids:
            found.append(int(entry))
    return found


def app_pids(app_id: str) -> list[int]:
    """Live processes of a YARN application's containers (found by their environment)."""
    return pids_with_env(f"CONTAINER_ID=container_{app_id[len('application_'):]}_")


def ssh_groups(handle: dict) -> set[int]:
    """The process groups of an SshCluster launch handle: one per host's workers."""
    return {g for entry in handle.get("hosts", []) for g, _ in entry.get("groups", [])}


# ---------------------------------------------------------------------------- environments

@dataclasses.dataclass
class Env:
    """An environment under test, with what the tests need to know about it."""

    kind: str                   # local, local_async, ssh, hadoop
    environment: Environment
    workers: int                # workers a job gets (tasks that can run at once)
    timeout: float              # seconds a small job may take here
    folder: str                 # world-writable: tasks on every host write markers here
    hadoop: Any = None          # the Hadoop mini cluster (hadoop only)

    @property
    def blocking(self) -> bool:
        """create() returns when the job is done (Local)."""
        return self.kind == "local"

    def create(self, fn: Callable, params: list, **options: Any) -> Job:
        return deploy.map_job.create(fn, params, environment=self.environment, **options)

    def workers_gone(self, job: Job) -> bool:
        """No worker (or task) process of the job's launch is left, by looking at processes."""
        handle = job._launch().get("handle") or {}
        if self.kind == "local":
            return True
        if self.kind == "local_async":
            return not any(process_alive(p) for p in handle.get("pids", []))
        if self.kind == "ssh":
            return not group_members(ssh_groups(handle))
        if self.kind == "dask":        # no task of the job on the scheduler or in a worker
            return self.environment.tasks_left(handle) == 0
        if self.kind == "ray":         # the job's Ray driver saw every task end
            return ray_tasks_gone(handle)
        from deploy.environments.hadoop.yarn import LIVE_STATES
        return (self.hadoop.app(handle["app"])["state"] not in LIVE_STATES
                and not app_pids(handle["app"]))


def _private_settings(tmp: str) -> pytest.MonkeyPatch:
    """Environment variables for preparing a session-wide cluster outside any test's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DEPLOY_HOME", os.path.join(tmp, "deploy-home"))
    mp.setenv("DEPLOY_CONFIG", os.path.join(tmp, "no-config.toml"))
    return mp


@pytest.fixture(scope="module")
def ssh_env(ssh_hosts, tmp_path_factory):
    """An SshCluster over host1..host3, one worker per host, prepared once for this module
    (timed) and stopped at its end: other modules find no agent of it on the hosts."""
    from deploy.environments.ssh.cluster import SshCluster
    mp = _private_settings(str(tmp_path_factory.mktemp("ssh-env")))
    try:
        start = time.monotonic()
        env = SshCluster("behaviour", list(LAB), ssh_config=str(ssh_hosts.ssh_config_path),
                         workers_per_host=1).prepare()
        print(f"\nssh_env: SshCluster prepared in {time.monotonic() - start:.1f} s")
    finally:
        mp.undo()
    yield env
    env.stop()
    users = {h.uid for h in ssh_hosts if h.alias in LAB}

    def agents_left() -> list[int]:
        return [p for h in ssh_hosts if h.uid in users for p in h.processes()
                if b"deploy." in _cmdline(p)]
    wait_for(lambda: not agents_left(), timeout=15, what="the SSH agents to end")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def hadoop_env(hadoop_cluster, tmp_path_factory):
    """A HadoopCluster of two 256 MB containers, its runtime staged once for this module (timed)."""
    from deploy.environments.hadoop.cluster import HadoopCluster
    mp = _private_settings(str(tmp_path_factory.mktemp("hadoop-env")))
    try:
        start = time.monotonic()
        env = HadoopCluster("behaviour", dist_path=f"/user/{hadoop_cluster.user}/deploy",
                            webhdfs_url=hadoop_cluster.webhdfs_url,
                            resourcemanager_url=hadoop_cluster.resourcemanager_url,
                            num_containers=2, container_size=256, python=node_python()).prepare()
        print(f"\nhadoop_env: HadoopCluster prepared in {time.monotonic() - start:.1f} s")
    finally:
        mp.undo()
    yield env
    env.stop()


@pytest.fixture
def folder():
    """A fresh world-writable folder (mode 0777) for the tasks' marker files."""
    path = tempfile.mkdtemp(prefix="deploy-behaviour-", dir="/tmp")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


ENVIRONMENTS = [pytest.param("local"), pytest.param("local_async"),
                pytest.param("ssh", marks=pytest.mark.ssh),
                pytest.param("hadoop", marks=pytest.mark.hadoop),
                pytest.param("dask", marks=pytest.mark.dask),
                pytest.param("ray", marks=pytest.mark.ray),
                pytest.param("ec2", marks=[pytest.mark.ssh, pytest.mark.ec2])]


def not_on_local(reason: str) -> Any:
    """Run a test on every environment but Local, saying why not there."""
    return pytest.mark.parametrize("env", [
        pytest.param("local", marks=pytest.mark.skip(reason=reason)), *ENVIRONMENTS[1:]],
        indirect=True)


@pytest.fixture(params=ENVIRONMENTS)
def env(request, folder, deploy_home):
    """Each environment in turn. Afterwards no worker of the test's jobs may be left: SSH
    workers are checked by their process groups, YARN applications are killed."""
    kind = request.param
    if kind == "local":
        yield Env(kind, deploy.environment.Local("behaviour"), 1, 30, folder)
    elif kind == "local_async":
        yield Env(kind, deploy.environment.LocalAsync("behaviour", num_workers=2), 2, 30, folder)
    elif kind == "ssh":
        yield Env(kind, request.getfixturevalue("ssh_env"), len(LAB), 60, folder)
        groups = set()
        for launch in (deploy_home / "jobs").glob("*/launch.json"):
            groups |= ssh_groups(json.loads(launch.read_text())["handle"])
        try:
            wait_for(lambda: not group_members(groups), timeout=15, what="SSH workers to end")
        finally:
            left = group_members(groups)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
        assert not left, f"workers left on the hosts: {left}"
    elif kind == "dask":               # 2 workers x 2 threads (tests/conftest_dask.py)
        yield Env(kind, request.getfixturevalue("dask_env"), 4, 60, folder)
    elif kind == "ray":                # a head and a node, 1 CPU each (tests/conftest_ray.py)
        yield Env(kind, request.getfixturevalue("ray_env"), 2, 60, folder)
        ray_cancel_leftovers()
    elif kind == "ec2":                # three instances, one task each (tests/conftest_ec2.py)
        yield from ec2_behaviour_env(request, Env, folder, deploy_home)
    else:
        cluster = request.getfixturevalue("hadoop_cluster")
        try:
            yield Env(kind, request.getfixturevalue("hadoop_env"), 2, 120, folder, cluster)
        finally:
            cluster.kill_all_apps()


# ---------------------------------------------------------------------------- the suite

def _view(job: Job) -> dict:
    """What a client sees of a finished job (compared across processes)."""
    metrics = job.get_metrics()
    return {"status": job.get_status(), "results": job.get_map_results(),
            "rows": metrics[["task_name", "status", "exception", "host", "attempt"]]
            .astype(object).where(metrics.notna(), None).values.tolist()}


def _one_result_per_chunk(job: Job) -> None:
    """Every chunk has exactly one result file, and every task exactly one row."""
    assert sorted(job._store.list("results")) == [f"{c:06d}" for c in range(job.spec.chunk_count)]
    names = list(job.get_metrics().task_name)
    assert len(names) == len(set(names))


def test_graphlab_example_and_reopened_from_a_new_process(env):
    """Results in order with None where a task failed, the same metrics columns, one row per
    task, the combiner's value; a new process reopening both jobs by name sees the same."""
    bad = env.create(add, GRAPHLAB, name="graphlab-bad")
    good = env.create(add, GOOD, name="graphlab-good", combiner_function=add_combiner)
    assert bad.wait(timeout=env.timeout) == "Failed"
    assert bad.get_map_results() == [40, None, 10]
    metrics = bad.get_metrics()
    assert list(metrics.columns) == COLUMNS
    assert list(metrics.task_name) == ["add-0-0", "add-0-1", "add-0-2"]
    assert list(metrics.status) == ["Completed", "Failed", "Completed"]
    failed = metrics.iloc[1]
    assert failed.exception == "TypeError" and "NoneType" in failed.exception_message
    assert "return x + y" in failed.exception_traceback
    assert list(metrics.exception.isna()) == [True, False, True]
    assert metrics.host.notna().all() and metrics.worker.notna().all()
    assert (metrics.attempt == 1).all() and (metrics.run_time >= 0).all()
    _one_result_per_chunk(bad)

    assert good.get_results(timeout=env.timeout) == 70
    metrics = good.get_metrics()
    assert list(metrics.task_name) == ["add-0-0", "add-0-1", "add-0-2", "add_combiner-1-0"]
    assert set(metrics.status) == {"Completed"}
    _one_result_per_chunk(good)

    seen = {job.name: _view(job) for job in (bad, good)}
    out = run_python("""
        import json
        import deploy
        from test_behaviour import _view
        views = {name: _view(deploy.jobs[name]) for name in ('graphlab-bad', 'graphlab-good')}
        views['combined'] = deploy.jobs['graphlab-good'].get_results()
        print(json.dumps(views, default=str))
    """, env={"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}, timeout=120)
    reopened = json.loads(out.stdout)
    assert reopened.pop("combined") == 70
    assert reopened == json.loads(json.dumps(seen, default=str))


EXCEPTIONS = ["ValueError", "KeyError", "CustomError", "KeyboardInterrupt", "SystemExit",
              "UnprintableError"]


def test_every_kind_of_exception_fails_only_its_task(env):
    """Exceptions of every kind, BaseException subclasses and one whose __str__ raises
    included: each task that raised is Failed with its own type, the others complete."""
    kinds = [k for e in EXCEPTIONS for k in ("ok", e)] + ["ok"]
    job = env.create(raise_kind, [{"kind": k, "i": i} for i, k in enumerate(kinds)], chunk_size=4)
    assert job.wait(timeout=env.timeout) == "Failed"
    metrics = job.get_metrics()
    assert len(metrics) == len(kinds)
    assert list(metrics.status) == ["Completed" if k == "ok" else "Failed" for k in kinds]
    assert list(metrics.exception.fillna("ok")) == kinds
    assert job.get_map_results() == [i if k == "ok" else None for i, k in enumerate(kinds)]
    messages = dict(zip(metrics.exception, metrics.exception_message))
    assert messages["ValueError"] == "bad value 1" and messages["SystemExit"] == "3"
    assert messages["CustomError"] == "custom 5" and "'missing'" in messages["KeyError"]
    assert "str() failed" in messages["UnprintableError"]
    assert "no text for you" in messages["UnprintableError"]
    tracebacks = dict(zip(metrics.exception, metrics.exception_traceback))
    assert all("raise_kind" in tracebacks[k] for k in EXCEPTIONS)
    assert (metrics.attempt == 1).all()
    _one_result_per_chunk(job)


FAULTS = ["ok", "exit", "ok", "segv", "ok", "memory", "ok", "ok"]


@not_on_local("Local runs tasks in the test's process")
def test_process_faults_cost_one_row_each(env):
    """A task that exits the process, one that segfaults and one that runs out of address
    space each end with exactly one Failed row; the tasks after them in the chunk complete."""
    job = env.create(fault, [{"kind": k, "i": i} for i, k in enumerate(FAULTS)], chunk_size=len(FAULTS))
    assert job.wait(timeout=env.timeout) == "Failed"
    metrics = job.get_metrics()
    assert list(metrics.task_name) == [f"fault-0-{i}" for i in range(len(FAULTS))]
    assert list(metrics.status) == ["Completed" if k == "ok" else "Failed" for k in FAULTS]
    assert job.get_map_results() == [i if k == "ok" else None for i, k in enumerate(FAULTS)]
    exit_row, segv_row, memory_row = (metrics.iloc[FAULTS.index(k)] for k in ("exit", "segv", "memory"))
    assert exit_row.exception == "WorkerLost" and "exited with code 3" in exit_row.exception_message
    assert segv_row.exception == "WorkerLost"
    assert f"killed by signal {signal.SIGSEGV.value}" in segv_row.exception_message
    crash = job.get_logs(segv_row.task_name)      # where it crashed, in the task's own log
    assert "Segmentation fault" in crash and " in fault" in crash, job.get_logs()
    assert memory_row.exception == "MemoryError", memory_row.to_dict()
    assert (metrics.attempt == 1).all()
    _one_result_per_chunk(job)


@not_on_local("Local's worker is the test's process")
def test_killed_worker_is_taken_over(env):
    """SIGKILL the worker running chunk 0 (found through its claim and heartbeat): another
    worker takes the chunk over as attempt 2 and the job completes."""
    folder = env.folder
    job = env.create(hang_once, [{"folder": folder, "i": i} for i in range(4)], chunk_size=2)
    wait_for(lambda: os.path.exists(os.path.join(folder, "ran")), timeout=env.timeout,
             what="task 0 to start")
    owner = job._store.get("claims/000000.0").decode()
    pid = wait_for(lambda: _heartbeat_pid(job, owner), timeout=env.timeout,
                   what="the worker's first heartbeat")
    assert b"python" in _cmdline(pid) or _cmdline(pid).startswith(b"ray::")  # a worker
    # process of this machine (Ray titles its workers ray::<task name>)
    os.kill(pid, signal.SIGKILL)
    assert job.wait(timeout=env.timeout) == "Completed"
    assert job.get_map_results() == [0, 1, 2, 3]
    metrics = job.get_metrics()
    assert len(metrics) == 4 and set(metrics.status) == {"Completed"}
    assert list(metrics.attempt[:2]) == [2, 2]         # chunk 0 ran again as attempt 2
    assert owner not in set(metrics.worker)
    _one_result_per_chunk(job)


def _heartbeat_pid(job: Job, worker: str) -> int | None:
    """The pid in a worker's heartbeat (None until it wrote one: it beats first just after
    handing its first chunk to the task process)."""
    try:
        return int(json.loads(job._store.get(f"heartbeats/{worker}"))["pid"])
    except FileNotFoundError:
        return None


def _starts(folder: str) -> list[tuple[int, float]]:
    """(task, time) of every start marker `blocks` or `stepper` wrote."""
    found = []
    for path in glob.glob(os.path.join(folder, "start-*")):
        _, i, t = os.path.basename(path).split("-")
        found.append((int(i), float(t)))
    return found


def _create_and_cancel(env: Env, fn: Callable, params: list, name: str, chunk_size: int,
                       started: int) -> tuple[Job, float]:
    """Create the job and cancel it once `started` tasks wrote their start markers: from a
    thread on Local, whose create() blocks (the thread then writes the file 'release', so
    that a blocked inline task can end). The job, and when cancel() returned."""
    returned: list[float] = []
    errors: list[BaseException] = []

    def cancel_once_started(job=None) -> None:
        try:
            wait_for(lambda: len(_starts(env.folder)) >= started, timeout=env.timeout,
                     what=f"{started} tasks to start")
            (job or deploy.jobs[name]).cancel()
            returned.append(time.time())
        except BaseException as exc:
            errors.append(exc)
        finally:
            if job is None:
                open(os.path.join(env.folder, "release"), "w").close()

    if env.blocking:
        canceller = threading.Thread(target=cancel_once_started)
        canceller.start()
        job = env.create(fn, params, name=name, chunk_size=chunk_size)
        canceller.join()
    else:
        job = env.create(fn, params, name=name, chunk_size=chunk_size)
        cancel_once_started(job)
    if errors:
        raise errors[0]
    return job, returned[0]


def test_cancel_starts_nothing_more_and_resume_finishes(env):
    """cancel() while every worker runs a task: no task starts after it returns (by the
    tasks' own start times), every task is Canceled; resume() then completes them all."""
    n = 6
    busy = min(env.workers, n)
    job, returned = _create_and_cancel(env, blocks, [{"folder": env.folder, "i": i} for i in range(n)],
                                       "cancel-me", chunk_size=1, started=busy)
    assert job.get_status() == "Canceled"
    wait_for(lambda: env.workers_gone(job), timeout=30, what="the workers to end")
    starts = _starts(env.folder)
    assert len(starts) == busy, starts              # those running at cancel, no more
    assert all(t < returned for _, t in starts), (starts, returned)
    metrics = job.get_metrics()
    assert len(metrics) == n and set(metrics.status) == {"Canceled"}
    assert job.get_map_results() == [None] * n
    assert "canceled" in job.get_error()

    open(os.path.join(env.folder, "release"), "a").close()
    job.resume()
    assert job.wait(timeout=env.timeout) == "Completed"
    assert job.get_results() == list(range(n))
    assert set(job.get_metrics().status) == {"Completed"}
    _one_result_per_chunk(job)


def test_cancel_while_tasks_flow_starts_nothing_after_it_returns(env):
    """cancel() while workers take one short task after another: once it returned no task
    starts, by the tasks' own start times; each task has one row, Completed or Canceled.
    Local runs its tasks one by one in this process: shorter and more of them keep it busy
    as long."""
    n, seconds = (400, 0.001) if env.blocking else (60, 0.05)
    params = [{"folder": env.folder, "i": i, "seconds": seconds} for i in range(n)]
    job, returned = _create_and_cancel(env, stepper, params, "flowing", chunk_size=5,
                                       started=env.workers + 4)
    assert job.get_status() == "Canceled"
    wait_for(lambda: env.workers_gone(job), timeout=30, what="the workers to end")
    late = sorted((t - returned, i) for i, t in _starts(env.folder) if t >= returned)
    assert not late, f"{len(late)} tasks started after cancel() returned: (seconds after, task) {late[:10]}"
    metrics = job.get_metrics()
    assert len(metrics) == n and set(metrics.status) <= {"Completed", "Canceled"}
    assert (metrics.status == "Canceled").sum() > n / 2
    _one_result_per_chunk(job)


def test_retries_timeouts_and_fail_fast(env):
    """max_retries re-runs a task that raised (and no more often), task_timeout stops a
    task and the job goes on, fail_fast cancels the rest at the first failure. The three
    jobs run at once where the environment allows."""
    folder = env.folder
    retried = env.create(flaky, [{"folder": folder, "i": i, "failures": 1 if i < 4 else 5}
                                 for i in range(5)], max_retries=1, chunk_size=2)
    start = time.monotonic()
    timed = env.create(sleepy, [{"seconds": 0}, {"seconds": 60}, {"seconds": 0.01}],
                       task_timeout=1.0, chunk_size=3)
    fast = env.create(fail_first, [{"i": i} for i in range(20)], chunk_size=1, fail_fast=True)

    assert retried.wait(timeout=env.timeout) == "Failed"
    metrics = retried.get_metrics()
    assert list(metrics.status) == ["Completed"] * 4 + ["Failed"]
    assert list(metrics.attempt) == [2] * 5
    assert metrics.iloc[4].exception == "RuntimeError"
    assert "run 2 of task 4" in metrics.iloc[4].exception_message
    assert retried.get_map_results() == [0, 1, 2, 3, None]
    assert len(glob.glob(os.path.join(folder, "try-4-*"))) == 2     # 1 + max_retries runs, no more

    assert timed.wait(timeout=env.timeout) == "Failed"
    assert time.monotonic() - start < 50              # not the 60 s the task would sleep
    metrics = timed.get_metrics()
    assert metrics.iloc[1].run_time < 10
    assert list(metrics.status) == ["Completed", "Failed", "Completed"]
    assert metrics.iloc[1].exception == "TimeoutError"
    assert timed.get_map_results() == [0, None, 0.01]

    assert fast.wait(timeout=env.timeout) == "Failed"
    metrics = fast.get_metrics()
    assert len(metrics) == 20
    assert metrics.iloc[0].status == "Failed" and metrics.iloc[0].exception == "ValueError"
    canceled = metrics[metrics.status == "Canceled"]
    assert len(canceled) >= 10, list(metrics.status)
    assert canceled.exception_message.str.contains("fail_fast").all()
    assert set(metrics.status) <= {"Completed", "Failed", "Canceled"}
    for job in (retried, timed, fast):
        _one_result_per_chunk(job)


# ---------------------------------------------------------------------------- per-task resources

def hold_memory(mb, seconds):
    """Touch `mb` MB and keep them for `seconds` seconds."""
    block = bytearray(mb * 1024 * 1024)
    time.sleep(seconds)
    return len(block) // (1024 * 1024)


def test_memory_gb_is_enforced(env):
    """A task that uses more than memory_gb is stopped and fails with TaskMemoryExceeded (a
    MemoryError, not a lost worker) giving the limit and its peak; the others complete.
    Local cannot stop the caller's process: it fails the task when it returns."""
    hold = 1 if env.blocking else 30
    job = env.create(hold_memory, [{"mb": 5, "seconds": 0}, {"mb": 400, "seconds": hold},
                                   {"mb": 5, "seconds": 0}], memory_gb=0.2, chunk_size=1)
    assert job.wait(timeout=env.timeout) == "Failed"
    metrics = job.get_metrics()
    assert list(metrics.status) == ["Completed", "Failed", "Completed"]
    row = metrics.iloc[1]
    assert row.exception == "TaskMemoryExceeded", (row.exception, row.exception_message)
    assert row.exception_message.startswith("task exceeded memory_gb=0.2 (205 MB): its memory "
                                            "peaked at "), row.exception_message
    assert row.run_time < 20
    assert job.get_map_results() == [5, None, 5]


def test_a_request_no_machine_meets_is_refused(env):
    """cpu= (or gpu=) beyond every machine: ValueError naming what was asked and what there
    is, before anything is written or started."""
    from cli_run import nothing_written
    with pytest.raises(ValueError, match=r"^cpu=100000 but the largest (host|node|worker) has \d+ cores \("):
        env.create(add, [{"x": 1, "y": 2}], cpu=100000)
    with pytest.raises(ValueError, match=r"^gpu=1 but no (host|node|worker) has a GPU: 0 GPUs available \("):
        env.create(add, [{"x": 1, "y": 2}], gpu=1)
    assert nothing_written(os.environ["DEPLOY_HOME"])
