"""deploy.Executor's own behaviour (CPython's executor tests are in test_executor_cpython.py):
batching into jobs, the jobs' metrics and logs, remote tracebacks, cancel, shutdown,
interpreter exit, lost task processes, bad input."""
from __future__ import annotations

import concurrent.futures as cf
import os
import time

import pandas as pd
import pytest

import deploy
from deploy.errors import EnvironmentNotFound
from deploy.executor import TaskLost

from conftest import run_python
from test_imports import HEAVY
from waiting import wait_for


def tiny(x):
    return x + 1


def shout(word):
    print(f"said {word}")
    return word.upper()


def fails(value):
    raise ValueError(value, "second arg")  # the line the traceback shows


def wait_for_file(path, value=None):
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return value


def exit_process(code):
    os._exit(code)


class Point:
    """A class of this module: hosts without the module get it by value."""

    def __init__(self, x, y):
        self.x, self.y = x, y


def point_sum(point):
    return point.x + point.y


def test_many_small_submits_share_a_few_jobs_of_a_few_chunks():
    with deploy.Executor(max_workers=2) as ex:
        assert ex.submit(tiny, 0).result() == 1          # the executor learns tasks are short
        futures = [ex.submit(tiny, i) for i in range(1000)]
        assert [f.result() for f in futures] == list(range(1, 1001))
    jobs = ex.jobs
    tasks = sum(job.spec.task_count for job in jobs)
    chunks = sum(job.spec.chunk_count for job in jobs)
    assert tasks == 1001
    assert len(jobs) <= 20 and chunks <= 60, [(j.spec.task_count, j.spec.chunk_count) for j in jobs]
    assert all(job.get_status() == "Completed" for job in jobs)
    assert ex.job is jobs[-1]
    assert ex.get_metrics().shape[0] == 1001


def test_metrics_of_all_jobs_keep_their_categorical_columns():
    """Jobs whose statuses and workers differ: the columns stay categorical, with every
    job's categories (pandas.concat alone would make them plain objects)."""
    with deploy.Executor(max_workers=2) as ex:
        assert ex.submit(tiny, 1).result(timeout=30) == 2
        assert isinstance(ex.submit(fails, 1).exception(timeout=30), ValueError)
    assert len(ex.jobs) == 2
    each = [job.get_metrics() for job in ex.jobs]
    metrics = ex.get_metrics()
    for column in ("status", "host", "worker"):
        assert isinstance(metrics[column].dtype, pd.CategoricalDtype), column
        assert set(metrics[column].cat.categories) == \
            set().union(*(frame[column].cat.categories for frame in each)), column
    assert metrics["status"].tolist() == ["Completed", "Failed"]
    assert metrics["job"].tolist() == [job.name for job in ex.jobs]
    assert metrics["worker"].tolist() == [frame["worker"][0] for frame in each]


def test_a_worker_unpickling_a_call_loads_no_client_code():
    """The callable of every executor job comes from deploy.executor.remote: unpickling it
    loads that module, the package's light __init__ and the worker's runner only (no
    deploy.jobs, no pandas)."""
    import pickle
    from deploy.executor.remote import Call
    call, item = pickle.dumps(Call("key", None)), (pickle.dumps(abs), pickle.dumps(((-3,), {})))
    out = run_python(f"""
        import pickle, sys
        call = pickle.loads({call!r})
        print(pickle.loads(call({item!r})) == 3)
        print(sorted(m for m in sys.modules if m.startswith("deploy")))
        print(sorted(m for m in sys.modules if m in {HEAVY!r}))
    """).stdout.splitlines()
    loaded = eval(out[1])
    assert out[0] == "True" and out[2] == "[]", out
    # what the worker has loaded anyway (its runner and the contract), and the executor's
    # own worker side: no client module
    assert [m for m in loaded if not m.startswith(("deploy.worker", "deploy.jobdir"))] == \
        ["deploy", "deploy.executor", "deploy.executor.remote"], loaded


def test_map_chunksize_sets_the_jobs_chunks():
    with deploy.Executor(max_workers=2) as ex:
        assert list(ex.map(tiny, range(40), chunksize=10)) == list(range(1, 41))
    assert all(job.spec.chunk_size == 10 for job in ex.jobs)     # as many tasks per chunk
    assert sum(job.spec.task_count for job in ex.jobs) == 40
    assert len(ex.jobs) <= 2            # a batch holds a chunk per free worker at least


def test_the_job_behind_a_future_has_its_metrics_row_and_logs():
    with deploy.Executor(max_workers=2) as ex:
        future = ex.submit(shout, "hello")
        assert future.result() == "HELLO"
    job, task = ex.task_of(future)
    assert job in ex.jobs and task.startswith("task-0-")
    assert job.get_logs(task) == "said hello\n"
    row = job.get_metrics().set_index("task_name").loc[task]
    assert row["status"] == "Completed" and row["run_time"] >= 0
    assert job.get_map_results() == ["HELLO"]
    assert deploy.jobs[job.name].get_status() == "Completed"    # an ordinary deploy job


def test_an_exception_comes_back_itself_with_the_remote_traceback():
    with deploy.Executor(max_workers=1) as ex:
        future = ex.submit(fails, 7)
        with pytest.raises(ValueError) as caught:
            future.result()
    exc = caught.value
    assert exc.args == (7, "second arg")
    assert type(exc.__cause__) is cf.process._RemoteTraceback
    assert "raise ValueError(value, \"second arg\")  # the line the traceback shows" in exc.__cause__.tb
    assert "deploy/executor/" not in exc.__cause__.tb         # the user's frames only
    row = ex.job.get_metrics().iloc[0]
    assert row["status"] == "Failed" and row["exception"] == "ValueError"
    assert "the line the traceback shows" in row["exception_traceback"]
    assert "deploy.Executor exception" not in row["exception_traceback"]   # the carrier note is hidden


def test_cancel_of_a_pending_task_and_shutdown_cancel_futures(tmp_path):
    gate = str(tmp_path / "go")
    ex = deploy.Executor(max_workers=1)
    first = ex.submit(wait_for_file, gate, "first")
    wait_for(first.running, what="the first task to be sent to the one worker")
    second = ex.submit(tiny, 1)
    assert second.cancel() and second.cancelled()
    queued = [ex.submit(tiny, i) for i in range(10)]
    assert not first.cancel()                      # running: cannot be canceled
    ex.shutdown(wait=False, cancel_futures=True)
    done, _ = cf.wait(queued, timeout=30)          # cancel notifies waiters too
    assert done == set(queued) and all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(tiny, 1)
    open(gate, "w").close()
    assert first.result(timeout=30) == "first"
    ex.shutdown(wait=True)
    assert sum(job.spec.task_count for job in ex.jobs) == 1     # nothing canceled was ever sent


def test_a_lost_task_process_fails_only_its_future():
    with deploy.Executor(max_workers=2) as ex:
        lost = ex.submit(exit_process, 3)
        with pytest.raises(TaskLost, match="exited with code 3") as caught:
            lost.result(timeout=60)
        assert isinstance(caught.value, cf.process.BrokenProcessPool)
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32    # the executor still works
        assert not ex._broken


def test_an_argument_that_cannot_be_pickled_fails_its_own_future_only():
    import threading
    with deploy.Executor(max_workers=1) as ex:
        bad = ex.submit(id, threading.Lock())
        good = ex.submit(tiny, 1)
        assert isinstance(bad.exception(timeout=30), TypeError)
        assert good.result(timeout=30) == 2


def test_bad_input():
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        deploy.Executor(max_workers=0)
    for bad in ("2", 2.0, True):
        with pytest.raises(TypeError, match="max_workers"):
            deploy.Executor(max_workers=bad)
    with pytest.raises(EnvironmentNotFound):
        deploy.Executor(environment="no-such-environment")
    with pytest.raises(TypeError, match="environment"):
        deploy.Executor(environment=42)
    with pytest.raises(TypeError, match="initializer"):
        deploy.Executor(initializer=5)
    with pytest.raises(ValueError, match="batch_size"):
        deploy.Executor(batch_size=0)
    with deploy.Executor(max_workers=1) as ex:
        with pytest.raises(TypeError, match="fn must be callable"):
            ex.submit(42)
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            ex.map(tiny, [1], chunksize=0)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(tiny, 1)
    assert ex.jobs == []                              # nothing was ever sent


def test_the_local_environment_runs_tasks_in_the_caller():
    with deploy.Executor(environment="Local") as ex:
        assert ex.submit(os.getpid).result(timeout=30) == os.getpid()
        assert list(ex.map(tiny, range(5))) == [1, 2, 3, 4, 5]
    assert ex.environment.kind == "local"


EXIT_SCRIPT = """
import atexit, sys, time
import deploy

def write(path, text):
    time.sleep(0.5)
    with open(path, "w") as f:
        f.write(text)
    return text

@atexit.register
def after_exit():
    try:
        ex.submit(id, None)
    except RuntimeError as exc:
        print("refused:", exc)

ex = deploy.Executor(max_workers=2)
ex.submit(write, sys.argv[1], "done")
if sys.argv[2] == "no-wait":
    ex.shutdown(wait=False)
elif sys.argv[2] == "dropped":
    del ex
    ex = deploy.Executor(max_workers=1)
"""


@pytest.mark.parametrize("how", ["exit", "no-wait", "dropped"])
def test_work_submitted_before_interpreter_exit_completes(tmp_path, how):
    """As ProcessPoolExecutor: exiting (never shut down, shut down without waiting, or the
    executor dropped) lets queued work finish; a submission from an atexit hook is refused."""
    out = tmp_path / "out.txt"
    proc = run_python(EXIT_SCRIPT, str(out), how, timeout=60)
    assert out.read_text() == "done"
    assert proc.stdout.strip() == "refused: cannot schedule new futures after interpreter shutdown"
    assert proc.stderr == ""


@pytest.fixture(scope="module")
def ssh_lab(ssh_hosts, tmp_path_factory):
    """An SshCluster over two loopback sshd hosts, one worker each, prepared once here."""
    from deploy.environments.ssh.cluster import SshCluster
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("executor-ssh")
    mp.setenv("DEPLOY_HOME", str(tmp / "deploy-home"))
    mp.setenv("DEPLOY_CONFIG", str(tmp / "no-config.toml"))
    try:
        env = SshCluster("executor-lab", ["host1", "host2"], ssh_config=str(ssh_hosts.ssh_config_path),
                         workers_per_host=1).prepare()
    finally:
        mp.undo()
    yield env
    env.stop()


@pytest.mark.parametrize("cluster", [pytest.param("ssh_lab", marks=pytest.mark.ssh),
                                     pytest.param("dask_env", marks=pytest.mark.dask)])
def test_the_same_futures_on_a_cluster(request, cluster):
    """Other environments, the same interface: functions and classes of this module travel
    by value where the hosts lack it, exceptions come back themselves, jobs have metrics."""
    env = request.getfixturevalue(cluster)
    with deploy.Executor(environment=env) as ex:
        assert ex._max_workers == env.num_workers()
        futures = [ex.submit(tiny, i) for i in range(20)]
        assert [f.result(timeout=120) for f in futures] == list(range(1, 21))
        assert list(ex.map(shout, ["a", "b"], timeout=120)) == ["A", "B"]
        assert list(ex.map(point_sum, [Point(1, 2), Point(3, 4)], timeout=120)) == [3, 7]
        said = ex.submit(shout, "c")
        assert said.result(timeout=120) == "C"
        with pytest.raises(ValueError) as caught:
            ex.submit(fails, 3).result(timeout=120)
    assert caught.value.args == (3, "second arg")
    assert "the line the traceback shows" in caught.value.__cause__.tb
    assert sorted(job.get_status() for job in ex.jobs).count("Failed") == 1
    assert all(job.get_status() in ("Completed", "Failed") for job in ex.jobs)
    job, task = ex.task_of(said)
    assert job.get_logs(task) == "said c\n"
    assert job.get_metrics().set_index("task_name").loc[task, "status"] == "Completed"
    assert ex.get_metrics().shape[0] == 26
