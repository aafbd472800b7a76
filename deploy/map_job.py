"""map_job.create(): validate, build the spec, write the job directory, launch workers."""
from __future__ import annotations

import inspect
import itertools
import json
import pickle
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from . import config
from .environments.base import Environment, Launch
from .jobs import spec as specs
from .jobs.job import Job
from .jobs.registry import jobs as job_registry
from .store import layout


def _check_count(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _parameters(parameter_set: Any, max_tasks: int, dicts: bool = True) -> list:
    if isinstance(parameter_set, (str, bytes, Mapping)) or not isinstance(parameter_set, Iterable):
        raise TypeError("parameter_set must be a list (or other iterable) of dicts of keyword "
                        f"arguments, got {type(parameter_set).__name__}")
    if not dicts and isinstance(parameter_set, (list, tuple, range)):
        params = parameter_set          # sliced per chunk as it is written: no copy needed
    else:
        params = list(itertools.islice(parameter_set, max_tasks + 1))
    try:
        too_many = len(params) > max_tasks
    except OverflowError:               # a range longer than sys.maxsize
        too_many = True
    if too_many:
        raise ValueError(f"parameter_set has more than max_tasks={max_tasks} tasks; "
                         "pass a larger max_tasks= if you mean it")
    if not params:
        raise ValueError("parameter_set is empty: give at least one dict of keyword arguments")
    for i, item in enumerate(params if dicts else ()):
        if type(item) is not dict:
            if not isinstance(item, Mapping):
                raise TypeError(f"parameter_set[{i}] is a {type(item).__name__}, not a dict of "
                                "keyword arguments")
            params[i] = item = dict(item)
        if not all(type(k) is str for k in item):
            raise TypeError(f"parameter_set[{i}] has a key that is not a string")
    return params


class _Counter:
    """A file that only counts what is written: sizes a pickle without making it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n


def pickled_size(fn: Any) -> int:
    """Bytes `Environment.serialize` would write for `fn` by default; large buffers (numpy
    arrays) are not copied."""
    from .jobs import source
    counter = _Counter()
    source.pickler(counter).dump(fn)
    return counter.size


def _pickle_callable(fn: Any, what: str, env: Environment, limit_mb: float) -> bytes | None:
    """The callable's pickle for the job directory; None when the environment shares it by
    fork and it is larger than `limit_mb` (it is still checked to be picklable)."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
    try:
        if env.shares_memory and pickled_size(fn) > limit_mb * 1024 * 1024:
            return None
        return env.serialize(fn)
    except Exception as exc:
        raise TypeError(f"{what} {getattr(fn, '__name__', fn)!r} cannot be sent to workers: "
                        f"cloudpickle failed with {type(exc).__name__}: {exc}") from exc


def _check_combiner(fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"combiner_function must be callable, got {type(fn).__name__}")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise TypeError("combiner_function must accept **kwargs: it is called as "
                        "combiner(**{task_name: result, ...})")


def _dump_chunk(items: list, first: int) -> bytes:
    try:
        return pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle
        try:
            return cloudpickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(f"a parameter in tasks {first}..{first + len(items) - 1} cannot be "
                            f"sent to workers: {type(exc).__name__}: {exc}") from exc


def resolve_environment(environment: Environment | str | None, default: str) -> Environment:
    """An Environment, a saved name, a kind name ('LocalAsync'), or None for `default`."""
    if isinstance(environment, Environment):
        return environment
    if environment is None:
        environment = default
    if not isinstance(environment, str):
        raise TypeError("environment must be an Environment, a saved environment's name or "
                        f"None, got {type(environment).__name__}")
    from .environments.registry import environments
    return environments[environment]


def create(function: Callable, parameter_set: Iterable[Mapping[str, Any]], name: str | None = None,
           environment: Environment | str | None = None,
           combiner_function: Callable | None = None, *, max_retries: int = 0,
           task_timeout: float | None = None, max_concurrent_tasks: int | None = None,
           chunk_size: int | None = None, max_tasks: int | None = None,
           fail_fast: bool = False, worker_retries: int | None = None) -> Job:
    """Run `function(**params)` for every dict in `parameter_set`, where `environment` says.

    Returns at once with a Job (except in the blocking `Local` environment). Nothing is
    written when an argument is bad; a job whose launch fails is removed again.
    Beyond GraphLab: `max_retries` re-runs a task that raised; `task_timeout` (seconds)
    stops a task and records TimeoutError; `max_concurrent_tasks` caps the workers;
    `chunk_size` sets tasks per chunk; `max_tasks` refuses larger parameter sets;
    `fail_fast` stops the job at the first failed task; `worker_retries` is how often a
    chunk whose worker was lost runs again before its tasks fail with WorkerLost.
    """
    return submit(function, parameter_set, "kwargs", name=name, environment=environment,
                  combiner_function=combiner_function, max_retries=max_retries,
                  task_timeout=task_timeout, max_concurrent_tasks=max_concurrent_tasks,
                  chunk_size=chunk_size, max_tasks=max_tasks, fail_fast=fail_fast,
                  worker_retries=worker_retries)


def submit(function: Callable, items: Iterable[Any], call_style: str, *, name: str | None = None,
           environment: Environment | str | None = None,
           combiner_function: Callable | None = None, max_retries: int = 0,
           task_timeout: float | None = None, max_concurrent_tasks: int | None = None,
           chunk_size: int | None = None, max_tasks: int | None = None,
           fail_fast: bool = False, worker_retries: int | None = None, single: bool = False) -> Job:
    """Validate, write and launch a job whose tasks call `function` on `items` in
    `call_style` ("kwargs": fn(**item), "arg": fn(item), "args": fn(*item))."""
    settings = config.load()
    max_tasks = _check_count(settings["max_tasks"] if max_tasks is None else max_tasks, "max_tasks", 1)
    max_retries = _check_count(max_retries, "max_retries", 0)
    worker_retries = _check_count(settings["worker_retries"] if worker_retries is None
                                  else worker_retries, "worker_retries", 0)
    if task_timeout is not None and (isinstance(task_timeout, bool)
                                     or not isinstance(task_timeout, (int, float)) or task_timeout <= 0):
        raise ValueError(f"task_timeout must be a positive number of seconds, got {task_timeout!r}")
    if max_concurrent_tasks is not None:
        _check_count(max_concurrent_tasks, "max_concurrent_tasks", 1)
    if chunk_size is not None:
        _check_count(chunk_size, "chunk_size", 1)
    if name is not None and (not isinstance(name, str) or not specs.NAME_PATTERN.match(name)):
        raise ValueError(f"bad job name {name!r}: use only letters, digits, '_' and '-'")
    if not callable(function):
        raise TypeError(f"function must be callable, got {type(function).__name__}")
    if combiner_function is not None:
        _check_combiner(combiner_function)
    params = _parameters(items, max_tasks, dicts=call_style == "kwargs")
    env = resolve_environment(environment, settings["default_environment"])
    limit = float(settings["max_function_mb"])
    function_blob = _pickle_callable(function, "function", env, limit)
    combiner_blob = (_pickle_callable(combiner_function, "combiner_function", env, limit)
                     if combiner_function is not None else None)
    stored = function_blob is not None and (combiner_function is None or combiner_blob is not None)

    label = specs.function_label(function)
    workers = min(env.num_workers(), max_concurrent_tasks or env.num_workers())
    bounds = None if chunk_size else specs.guided_bounds(len(params), workers)
    job_id = uuid.uuid4().hex[:16]
    store = env.job_store(job_id)
    name = job_registry.reserve(name or f"{label}-{time.strftime('%Y%m%d-%H%M%S')}", job_id,
                                store.uri, env.name, label)
    spec = specs.JobSpec(
        id=job_id, name=name, created=time.time(), function_name=label,
        task_count=len(params), chunk_size=chunk_size, chunk_bounds=bounds, max_retries=max_retries,
        worker_retries=worker_retries, task_timeout=task_timeout, fail_fast=bool(fail_fast),
        combiner_name=specs.function_label(combiner_function) if combiner_function else None,
        environment=env.to_dict(), lease_seconds=float(settings["lease_seconds"]),
        heartbeat_seconds=float(settings["heartbeat_seconds"]), single=single,
        call_style=call_style, function_stored=stored)
    try:
        functions = {"map": function}
        if combiner_function is not None:
            functions["combine"] = combiner_function
        handle = env.start(Launch(store, spec, functions, min(workers, spec.chunk_count)),
                           lambda: write_job(store, spec, params, function_blob, combiner_blob))
        store.put(layout.LAUNCH, json.dumps({"environment": env.to_dict(), "handle": handle,
                                             "time": time.time()}).encode())
    except BaseException:
        store.delete("")
        job_registry.forget(name)
        raise
    return Job(store, name=name, environment=env, spec=spec)


def write_job(store: Any, spec: specs.JobSpec, params: list, function_blob: bytes | None,
              combiner_blob: bytes | None) -> None:
    """Write the job directory; job.json goes last, so a job without it was never whole."""
    for chunk in range(spec.chunk_count):
        tasks = spec.chunk_tasks(chunk)
        store.put(layout.inputs(chunk), _dump_chunk(params[tasks.start:tasks.stop], tasks.start))
    if spec.function_stored:
        store.put(layout.FUNCTION, function_blob)
        if combiner_blob is not None:
            store.put(layout.COMBINER, combiner_blob)
    store.put(layout.SPEC, spec.to_json())
