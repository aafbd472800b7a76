"""Every bad input gets a clear error, and nothing is written when it does."""
from __future__ import annotations

import os
import threading

import pytest

import deploy
from deploy.environment import LocalAsync
from deploy.errors import EnvironmentNotFound, JobNotFound
from deploy.processes import wait_gone


def add(x, y):
    return x + y


def nothing_written(home) -> bool:
    jobs = home / "jobs"
    return (not jobs.exists() or not any(jobs.iterdir())) and len(deploy.jobs) == 0


lock = threading.Lock()


def uses_lock():
    return lock.locked()


@pytest.mark.parametrize("params, error, message", [
    ([], ValueError, "empty"),
    (5, TypeError, "iterable"),
    ("xy", TypeError, "list"),
    ({"x": 1}, TypeError, "list"),
    ([{"x": 1, "y": 2}, {"x": 1, "y": 2}, [1, 2]], TypeError, r"parameter_set\[2\] is a list"),
    ([{1: 2}], TypeError, "not a string"),
])
def test_bad_parameter_sets(deploy_home, params, error, message):
    with pytest.raises(error, match=message):
        deploy.map_job.create(add, params)
    assert nothing_written(deploy_home)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"name": "has space"}, ValueError, "bad job name"),
    ({"name": "a/b"}, ValueError, "bad job name"),
    ({"environment": "no-such-env"}, EnvironmentNotFound, "no environment named 'no-such-env'"),
    ({"environment": 3}, TypeError, "environment must be"),
    ({"combiner_function": lambda a, b: a}, TypeError, r"\*\*kwargs"),
    ({"combiner_function": "sum"}, TypeError, "callable"),
    ({"task_timeout": 0}, ValueError, "task_timeout"),
    ({"task_timeout": -1}, ValueError, "task_timeout"),
    ({"max_retries": -1}, ValueError, "max_retries"),
    ({"max_concurrent_tasks": 0}, ValueError, "max_concurrent_tasks"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"max_tasks": 1}, ValueError, "more than max_tasks=1"),
    ({"worker_retries": -2}, ValueError, "worker_retries"),
])
def test_bad_options(deploy_home, kwargs, error, message):
    with pytest.raises(error, match=message):
        deploy.map_job.create(add, [{"x": 1, "y": 2}, {"x": 3, "y": 4}], **kwargs)
    assert nothing_written(deploy_home)


def test_function_cloudpickle_cannot_carry(deploy_home):
    with pytest.raises(TypeError, match="cannot be sent to workers.*lock"):
        deploy.map_job.create(uses_lock_closure(), [{}])
    assert nothing_written(deploy_home)


def uses_lock_closure():
    held = threading.Lock()
    return lambda: held.locked()


def test_not_callable(deploy_home):
    with pytest.raises(TypeError, match="callable"):
        deploy.map_job.create("add", [{}])
    assert nothing_written(deploy_home)


def test_parameter_that_cannot_be_pickled(deploy_home):
    """LocalAsync forks its workers while the job directory is written; when writing fails
    they stop without taking any work, and nothing is left behind."""
    from deploy import worker
    before = set(worker._detached)
    with pytest.raises(TypeError, match="cannot be sent to workers"):
        deploy.map_job.create(lambda v: v, [{"v": 1}, {"v": threading.Lock()}], chunk_size=1)
    assert nothing_written(deploy_home)
    started = set(worker._detached) - before
    assert len(started) == 2
    assert wait_gone(sorted(started), 10)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_counts(workers):
    with pytest.raises(ValueError, match="num_workers"):
        LocalAsync("x", num_workers=workers)


def test_bad_environment_name():
    with pytest.raises(ValueError, match="bad environment name"):
        LocalAsync("no spaces please")


def test_unknown_job_name_and_index():
    with pytest.raises(JobNotFound, match="no job named 'nope'"):
        deploy.jobs["nope"]
    with pytest.raises(KeyError):
        deploy.jobs[3]
    with pytest.raises(TypeError):
        deploy.jobs[1.5]


def test_max_tasks_from_configuration(deploy_home, monkeypatch):
    monkeypatch.setenv("DEPLOY_MAX_TASKS", "3")
    with pytest.raises(ValueError, match="max_tasks=3"):
        deploy.map_job.create(add, [{"x": 1, "y": 1}] * 4)
    assert nothing_written(deploy_home)
    monkeypatch.setenv("DEPLOY_MAX_TASKS", "many")
    with pytest.raises(ValueError, match="DEPLOY_MAX_TASKS"):
        deploy.map_job.create(add, [{"x": 1, "y": 1}])


def test_bad_config_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text("max_tasks = [")
    monkeypatch.setenv("DEPLOY_CONFIG", str(path))
    with pytest.raises(ValueError, match="bad configuration file"):
        deploy.map_job.create(add, [{"x": 1, "y": 1}])


def test_launch_failure_removes_the_job(deploy_home):
    class Broken(LocalAsync):
        def start(self, launch, write):
            raise OSError("cannot start workers")
    with pytest.raises(OSError, match="cannot start workers"):
        deploy.map_job.create(add, [{"x": 1, "y": 2}], environment=Broken("broken"))
    assert nothing_written(deploy_home)
    assert not os.listdir(deploy_home / "jobs")
