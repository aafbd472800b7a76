"""Every bad input gets a clear error, and nothing is written when it does.

KINDS below is the list of kinds of bad input to the API (the CLI's are in test_cli.py):
each raises the named error at once, writes no job directory and no registry row, starts
no worker and prints nothing.
"""
from __future__ import annotations

import functools
import math
import os
import threading

import pytest

import deploy
from deploy.environment import Local, LocalAsync
from deploy.errors import ConfigError, EnvironmentNotFound, JobNotFound
from deploy.worker.processes import process_alive


def add(x, y):
    return x + y


def add_combiner(**kwargs):
    return sum(kwargs.values())


def gen(x, y):
    yield x + y


async def coro(x, y):
    return x + y


def positional_only(x, y, /):
    return x + y


def nothing_written(home) -> bool:
    jobs = home / "jobs"
    return (not jobs.exists() or not any(jobs.iterdir())) and len(deploy.jobs) == 0


lock = threading.Lock()


def uses_lock():
    return lock.locked()


def uses_lock_closure():
    held = threading.Lock()
    return lambda: held.locked()


P = [{"x": 1, "y": 2}, {"x": 3, "y": 4}]


def create(*args, **kwargs):
    return lambda: deploy.map_job.create(*args, **kwargs)


def call(fn, *args, **kwargs):
    return lambda: fn(*args, **kwargs)


# kind -> (what is done, error type, message pattern, environment variables set meanwhile)
KINDS = {
    # parameter sets
    "parameter_set empty": (create(add, []), ValueError, "empty", {}),
    "parameter_set not iterable": (create(add, 5), TypeError, "iterable", {}),
    "parameter_set a string": (create(add, "xy"), TypeError, "list", {}),
    "parameter_set a dict": (create(add, {"x": 1}), TypeError, "list", {}),
    "parameter_set an empty generator": (create(add, iter([])), ValueError, "empty", {}),
    "item not a dict": (create(add, [P[0], P[1], [1, 2]]), TypeError,
                        r"parameter_set\[2\] is a list", {}),
    "item None": (create(add, [None]), TypeError, r"parameter_set\[0\] is a NoneType", {}),
    "key not a string": (create(add, [{1: 2}]), TypeError, "not a string", {}),
    "key missing for the signature": (create(add, [P[0], {"x": 1}]), TypeError,
                                      r"parameter_set\[1\] does not fit add\(x, y\): no value for 'y'", {}),
    "key not in the signature": (create(add, [{"x": 1, "y": 2, "z": 3}]), TypeError,
                                 "unexpected keyword argument 'z'", {}),
    "positional-only parameters": (create(positional_only, P), TypeError, "positional-only", {}),
    "more than max_tasks": (create(add, P, max_tasks=1), ValueError, "more than max_tasks=1", {}),
    "more than configured max_tasks": (create(add, P * 2), ValueError, "max_tasks=3",
                                       {"DEPLOY_MAX_TASKS": "3"}),
    "max_tasks zero": (create(add, P, max_tasks=0), ValueError, "max_tasks must be", {}),
    # job names
    "name with a space": (create(add, P, name="has space"), ValueError, "bad job name", {}),
    "name with a path separator": (create(add, P, name="a/b"), ValueError, "bad job name", {}),
    "name with a parent reference": (create(add, P, name=".."), ValueError, "bad job name", {}),
    "name not ASCII": (create(add, P, name="j\u00f6b"), ValueError, "bad job name", {}),
    "name too long": (create(add, P, name="n" * 201), ValueError, "at most 200", {}),
    "name empty": (create(add, P, name=""), ValueError, "bad job name", {}),
    "name ending in a newline": (create(add, P, name="job\n"), ValueError, "bad job name", {}),
    "name like an option": (create(add, P, name="-x"), ValueError, "option", {}),
    "name like an index": (create(add, P, name="42"), ValueError, "index", {}),
    "name not a string": (create(add, P, name=5), ValueError, "bad job name", {}),
    # environments
    "environment unknown name": (create(add, P, environment="no-such-env"), EnvironmentNotFound,
                                 "no environment named 'no-such-env'", {}),
    "environment wrong type": (create(add, P, environment=3), TypeError, "environment must be", {}),
    "environment a class": (create(add, P, environment=LocalAsync), TypeError,
                            "environment must be", {}),
    "default environment unknown": (create(add, P), EnvironmentNotFound, "no environment named 'gone'",
                                    {"DEPLOY_DEFAULT_ENVIRONMENT": "gone"}),
    "num_workers zero": (call(LocalAsync, "x", num_workers=0), ValueError, "num_workers", {}),
    "num_workers negative": (call(LocalAsync, "x", num_workers=-1), ValueError, "num_workers", {}),
    "num_workers a float": (call(LocalAsync, "x", num_workers=1.5), ValueError, "num_workers", {}),
    "num_workers a bool": (call(LocalAsync, "x", num_workers=True), ValueError, "num_workers", {}),
    "environment name with a space": (call(LocalAsync, "no spaces please"), ValueError,
                                      "bad environment name", {}),
    "environment name with a trailing newline": (call(LocalAsync, "lab\n"), ValueError,
                                                 "bad environment name", {}),
    # functions
    "function not callable": (create("add", P), TypeError, "function must be callable", {}),
    "function a generator function": (create(gen, P), TypeError, "generator function", {}),
    "function async": (create(coro, P), TypeError, "async function", {}),
    "function cloudpickle cannot carry": (create(uses_lock_closure(), [{}]), TypeError,
                                          "cannot be sent to workers.*lock", {}),
    "combiner without **kwargs": (create(add, P, combiner_function=lambda a, b: a), TypeError,
                                  r"\*\*kwargs", {}),
    "combiner not callable": (create(add, P, combiner_function="sum"), TypeError, "callable", {}),
    "combiner a generator function": (create(add, P, combiner_function=gen), TypeError,
                                      "generator function", {}),
    # options
    "task_timeout zero": (create(add, P, task_timeout=0), ValueError, "task_timeout", {}),
    "task_timeout negative": (create(add, P, task_timeout=-1), ValueError, "task_timeout", {}),
    "task_timeout NaN": (create(add, P, task_timeout=math.nan), ValueError, "task_timeout", {}),
    "task_timeout infinite": (create(add, P, task_timeout=math.inf), ValueError, "None for no limit", {}),
    "task_timeout beyond timers": (create(add, P, task_timeout=1e10), ValueError, "up to 1e\\+08", {}),
    "task_timeout a string": (create(add, P, task_timeout="10"), ValueError, "task_timeout", {}),
    "task_timeout a bool": (create(add, P, task_timeout=True), ValueError, "task_timeout", {}),
    "max_retries negative": (create(add, P, max_retries=-1), ValueError, "max_retries", {}),
    "max_retries a float": (create(add, P, max_retries=1.5), ValueError, "max_retries", {}),
    "max_retries a bool": (create(add, P, max_retries=True), ValueError, "max_retries", {}),
    "max_retries None": (create(add, P, max_retries=None), ValueError, "max_retries", {}),
    "max_concurrent_tasks zero": (create(add, P, max_concurrent_tasks=0), ValueError,
                                  "max_concurrent_tasks", {}),
    "chunk_size zero": (create(add, P, chunk_size=0), ValueError, "chunk_size", {}),
    "chunk_size a string": (create(add, P, chunk_size="5"), ValueError, "chunk_size", {}),
    "worker_retries negative": (create(add, P, worker_retries=-2), ValueError, "worker_retries", {}),
    "fail_fast not a bool": (create(add, P, fail_fast="no"), TypeError, "fail_fast must be True or False", {}),
    "unknown option keyword": (create(add, P, retries=3), TypeError, "unexpected keyword argument 'retries'", {}),
    # deploy.map and deploy.job
    "map over a non-iterable": (call(deploy.map, abs, 5), TypeError, r"deploy.map\(\) needs an iterable", {}),
    "map over nothing, with a bad option": (call(deploy.map, abs, [], chunk_size=0), ValueError, "chunk_size", {}),
    "map over nothing, in a missing environment": (call(deploy.map, abs, [], environment="nowhere"), EnvironmentNotFound, "nowhere", {}),
    "map with no iterable": (call(deploy.map, abs), TypeError, "at least one iterable", {}),
    "map of a generator function": (call(deploy.map, gen, [1]), TypeError, "generator function", {}),
    "job.create missing an argument": (call(deploy.job.create, add, x=1), TypeError, "no value for 'y'", {}),
    # registries
    "jobs[unknown name]": (call(lambda: deploy.jobs["nope"]), JobNotFound, "no job named 'nope'", {}),
    "jobs[index out of range]": (call(lambda: deploy.jobs[999]), JobNotFound, "no job at index 999", {}),
    "jobs[a float]": (call(lambda: deploy.jobs[1.5]), TypeError, "job name or an index", {}),
    "jobs[a bool]": (call(lambda: deploy.jobs[True]), TypeError, "job name or an index", {}),
    "jobs.delete with neither argument": (call(deploy.jobs.delete), ValueError, "exactly one", {}),
    "jobs.delete with both arguments": (call(deploy.jobs.delete, name="a", pattern="a*"), ValueError,
                                        "exactly one", {}),
    "jobs.delete unknown name": (call(deploy.jobs.delete, name="nope"), JobNotFound, "no job named", {}),
    "jobs.delete by an index": (call(deploy.jobs.delete, name=0), TypeError, "takes a job name", {}),
    "jobs.delete with a pattern list": (call(deploy.jobs.delete, pattern=["a*"]), TypeError, "takes a job pattern", {}),
    "environments[unknown]": (call(lambda: deploy.environments["nope"]), EnvironmentNotFound,
                              "no environment named 'nope'", {}),
    "environments[not a string]": (call(lambda: deploy.environments[5]), TypeError,
                                   "environment name", {}),
    "environments.delete unknown": (call(deploy.environments.delete, "nope"), EnvironmentNotFound,
                                    "no environment named 'nope'", {}),
    # configuration
    "DEPLOY_MAX_TASKS not a number": (create(add, P), ConfigError, "DEPLOY_MAX_TASKS",
                                      {"DEPLOY_MAX_TASKS": "many"}),
    "DEPLOY_LEASE_SECONDS NaN": (create(add, P), ConfigError, "finite number > 0",
                                 {"DEPLOY_LEASE_SECONDS": "nan"}),
    "DEPLOY_PROGRESS not a choice": (create(add, P), ConfigError, "auto, true or false",
                                     {"DEPLOY_PROGRESS": "maybe"}),
    "config file not TOML": (create(add, P), ConfigError, "bad configuration file",
                             {"DEPLOY_CONFIG": "{tmp}/bad.toml"}),
    "config file unknown setting": (create(add, P), ConfigError, "unknown setting 'max_task'",
                                    {"DEPLOY_CONFIG": "{tmp}/typo.toml"}),
    "config file wrong type": (create(add, P), ConfigError, "max_tasks must be an integer",
                               {"DEPLOY_CONFIG": "{tmp}/words.toml"}),
    "config file a directory": (create(add, P), ConfigError, "cannot read configuration file",
                                {"DEPLOY_CONFIG": "{tmp}"}),
    "deploy home a file": (create(add, P), ConfigError, "cannot use .* as the deploy home",
                           {"DEPLOY_HOME": "{tmp}/typo.toml"}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input(kind, deploy_home, tmp_path, monkeypatch, capfd):
    """Each kind: its error at once; no job directory, no registry row, no worker, no output."""
    from deploy.worker import loop as worker
    action, error, message, variables = KINDS[kind]
    (tmp_path / "bad.toml").write_text("max_tasks = [")
    (tmp_path / "typo.toml").write_text("max_task = 5\n")
    (tmp_path / "words.toml").write_text('max_tasks = "many"\n')
    before = set(worker._detached)
    with monkeypatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value.format(tmp=tmp_path))
        with pytest.raises(error, match=message):
            action()
    assert nothing_written(deploy_home)
    assert set(worker._detached) == before
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("function, params, expected", [
    (functools.partial(add, 1), [{"y": 2}], [3]),
    (lambda **kw: sorted(kw), [{"any": 1, "name": 2}], [["any", "name"]]),
    (lambda x, y=5: x + y, [{"x": 1}, {"x": 1, "y": 1}], [6, 2]),
    (dict, [{"a": 1}], [{"a": 1}]),
])
def test_the_signature_check_lets_fitting_calls_through(function, params, expected):
    assert deploy.map_job.create(function, params, environment=Local()).get_map_results() == expected


def test_decorators_that_supply_arguments_are_trusted():
    """A wrapper's own (*args, **kwargs) is what gets called: the wrapped signature is not
    held against parameters the wrapper supplies itself."""
    def with_db(fn):
        @functools.wraps(fn)
        def wrapper(**kwargs):
            return fn(db="db", **kwargs)
        return wrapper

    @with_db
    def query(db, q):
        return f"{db}:{q}"
    assert deploy.map_job.create(query, [{"q": 1}], environment=Local()).get_map_results() == ["db:1"]


@pytest.mark.parametrize("attempt", range(10))
def test_parameter_that_cannot_be_pickled(deploy_home, monkeypatch, capfd, attempt):
    """LocalAsync forks its workers while the job directory is written; when writing fails
    they stop without taking any work, are gone before create() raises, print nothing,
    and nothing is left behind (ten tries: this raced on a loaded machine)."""
    from deploy.worker import loop as worker
    started = []

    def spy(*args, **kwargs):
        started.extend(start(*args, **kwargs))
        return started
    start = worker.start_workers
    monkeypatch.setattr(worker, "start_workers", spy)
    with pytest.raises(TypeError, match="cannot be sent to workers"):
        deploy.map_job.create(lambda v: v, [{"v": 1}, {"v": threading.Lock()}], chunk_size=1)
    assert len(started) == 2
    assert not any(process_alive(p) for p in started)
    assert nothing_written(deploy_home)
    assert capfd.readouterr().err == ""


def test_launch_failure_removes_the_job(deploy_home):
    class Broken(LocalAsync):
        def start(self, launch, write):
            raise OSError("cannot start workers")
    with pytest.raises(OSError, match="cannot start workers"):
        deploy.map_job.create(add, [{"x": 1, "y": 2}], environment=Broken("broken"))
    assert nothing_written(deploy_home)
    assert not os.listdir(deploy_home / "jobs")
