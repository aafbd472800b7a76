"""map_job.create(): validate, build the spec, write the job directory, launch workers."""
from __future__ import annotations

import functools
import inspect
import itertools
import pickle
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from . import config
from .environments.base import Environment
from .jobdir import spec as specs
from .jobs import launch
from .jobs.job import Job
from .jobs.registry import jobs as job_registry
from .jobdir import layout


MAX_TIMEOUT = 1e8          # seconds (three years): beyond, timers overflow on some platforms
MAX_NAME = 200


def _check_name(name: Any) -> None:
    """A job name the registry, the CLI and task names can all carry."""
    if not isinstance(name, str) or not specs.NAME_PATTERN.fullmatch(name):
        raise ValueError(f"bad job name {name!r}: use only letters, digits, '_' and '-'")
    if len(name) > MAX_NAME:
        raise ValueError(f"bad job name {name[:20]!r}...: {len(name)} characters, at most {MAX_NAME}")
    if name.startswith("-") or name.isdigit():
        raise ValueError(f"bad job name {name!r}: it would read as "
                         + ("an option" if name.startswith("-") else "an index") + " on the command line")


def _check_count(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _parameters(parameter_set: Any, max_tasks: int, dicts: bool = True,
                function: Callable | None = None) -> list:
    """The tasks' inputs as a list, checked: dicts of keyword arguments that fit `function`'s
    signature (when `dicts`: at least one), at most `max_tasks`."""
    if dicts:                           # a pandas DataFrame or Arrow table: one task per row
        from .param_files import table_rows
        parameter_set = table_rows(parameter_set, max_tasks + 1)
    if not dicts and not isinstance(parameter_set, Iterable):
        raise TypeError(f"deploy.map() needs an iterable, got {type(parameter_set).__name__}")
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
    if dicts and not params:
        raise ValueError("parameter_set is empty: give at least one dict of keyword arguments")
    fits = _keyword_check(function) if dicts else None
    last = None
    for i, item in enumerate(params if dicts else ()):
        if type(item) is not dict:
            if not isinstance(item, Mapping):
                raise TypeError(f"parameter_set[{i}] is a {type(item).__name__}, not a dict of "
                                "keyword arguments")
            params[i] = item = dict(item)
        keys = item.keys()
        if keys == last:                # the usual case: the same keys as the item before
            continue
        if not all(type(k) is str for k in keys):
            raise TypeError(f"parameter_set[{i}] has a key that is not a string")
        problem = fits(keys) if fits else None
        if problem:
            raise TypeError(f"parameter_set[{i}] does not fit {specs.function_label(function)}"
                            f"{_signature_text(function)}: {problem}")
        last = keys
    return params


def _keyword_check(function: Callable | None) -> Callable[[Any], str | None] | None:
    """keys -> why `function(**{keys})` cannot be called (None if it can); None when the
    signature is unknown. The callable's own signature: a decorator's (*args, **kwargs)
    accepts anything, since it may supply arguments itself."""
    try:
        parameters = inspect.signature(function, follow_wrapped=False).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    named = {p.name for p in parameters if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
    required = {p.name for p in parameters if p.name in named and p.default is kinds.empty}
    any_name = any(p.kind is kinds.VAR_KEYWORD for p in parameters)
    positional = [p.name for p in parameters
                  if p.kind is kinds.POSITIONAL_ONLY and p.default is kinds.empty]

    def check(keys: Any) -> str | None:
        if positional:
            return f"its positional-only argument {positional[0]!r} cannot be given by keyword"
        missing = sorted(required - keys)
        if missing:
            return "no value for " + ", ".join(map(repr, missing))
        unknown = [] if any_name else sorted(k for k in keys if k not in named)
        if unknown:
            return "unexpected keyword argument " + ", ".join(map(repr, unknown))
        return None
    return check


def _signature_text(function: Callable) -> str:
    try:
        return str(inspect.signature(function, follow_wrapped=False))
    except (TypeError, ValueError):
        return "()"


def _check_task_function(fn: Any, what: str) -> None:
    """A callable whose value can travel back: not a generator or coroutine function."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(f"{what} {specs.function_label(fn)!r} is a generator function: its "
                        "generators cannot be sent back from workers; return a list instead")
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what} {specs.function_label(fn)!r} is an async function: wrap it, "
                        "e.g. lambda **kw: asyncio.run(fn(**kw))")


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
    from .jobdir import source
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
    _check_task_function(fn, "combiner_function")
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
           fail_fast: bool = False, worker_retries: int | None = None,
           cpu: float | None = None, memory_gb: float | None = None,
           gpu: int | None = None) -> Job:
    """Run `function(**params)` for every dict in `parameter_set`, where `environment` says.

    Returns at once with a Job (except in the blocking `Local` environment). Nothing is
    written when an argument is bad; a job whose launch fails is removed again.
    Beyond GraphLab: `max_retries` re-runs a task that raised; `task_timeout` (seconds)
    stops a task and records TimeoutError; `max_concurrent_tasks` caps the workers;
    `chunk_size` sets tasks per chunk; `max_tasks` refuses larger parameter sets;
    `fail_fast` stops the job at the first failed task; `worker_retries` is how often a
    chunk whose worker was lost runs again before its tasks fail with WorkerLost.
    Per-task resources: `cpu` cores, `memory_gb` of memory (a task that uses more is
    stopped and fails with TaskMemoryExceeded) and `gpu` GPUs; the environment runs only
    as many tasks at once as its machines hold, and refuses (ValueError) a request no
    machine can meet, before anything runs.
    """
    return submit(function, parameter_set, "kwargs", name=name, environment=environment,
                  combiner_function=combiner_function, max_retries=max_retries,
                  task_timeout=task_timeout, max_concurrent_tasks=max_concurrent_tasks,
                  chunk_size=chunk_size, max_tasks=max_tasks, fail_fast=fail_fast,
                  worker_retries=worker_retries, cpu=cpu, memory_gb=memory_gb, gpu=gpu)


def submit(function: Callable, items: Iterable[Any], call_style: str, *, name: str | None = None,
           environment: Environment | str | None = None,
           combiner_function: Callable | None = None, max_retries: int = 0,
           task_timeout: float | None = None, max_concurrent_tasks: int | None = None,
           chunk_size: int | None = None, max_tasks: int | None = None,
           fail_fast: bool = False, worker_retries: int | None = None,
           single: bool = False, cpu: float | None = None, memory_gb: float | None = None,
           gpu: int | None = None) -> Job | None:
    """Validate, write and launch a job whose tasks call `function` on `items` in
    `call_style` ("kwargs": fn(**item), "arg": fn(item), "args": fn(*item)). No items
    (possible for "arg"/"args" only): every argument is still checked, and no job is made."""
    settings = config.load()
    max_tasks = _check_count(settings["max_tasks"] if max_tasks is None else max_tasks, "max_tasks", 1)
    max_retries = _check_count(max_retries, "max_retries", 0)
    worker_retries = _check_count(settings["worker_retries"] if worker_retries is None
                                  else worker_retries, "worker_retries", 0)
    if task_timeout is not None and (isinstance(task_timeout, bool)
                                     or not isinstance(task_timeout, (int, float))
                                     or not 0 < task_timeout <= MAX_TIMEOUT):
        raise ValueError(f"task_timeout must be a positive number of seconds up to {MAX_TIMEOUT:g} "
                         f"(None for no limit), got {task_timeout!r}")
    if max_concurrent_tasks is not None:
        _check_count(max_concurrent_tasks, "max_concurrent_tasks", 1)
    if chunk_size is not None:
        _check_count(chunk_size, "chunk_size", 1)
    if not isinstance(fail_fast, bool):
        raise TypeError(f"fail_fast must be True or False, got {fail_fast!r}")
    resources = specs.check_resources(cpu, memory_gb, gpu)
    if name is not None:
        _check_name(name)
    _check_task_function(function, "function")
    if combiner_function is not None:
        _check_combiner(combiner_function)
    params = _parameters(items, max_tasks, dicts=call_style == "kwargs", function=function)
    env = resolve_environment(environment, settings["default_environment"])
    if not len(params):
        return None
    limit = float(settings["max_function_mb"])
    function_blob = _pickle_callable(function, "function", env, limit)
    combiner_blob = (_pickle_callable(combiner_function, "combiner_function", env, limit)
                     if combiner_function is not None else None)
    stored = function_blob is not None and (combiner_function is None or combiner_blob is not None)

    label = specs.function_label(function)
    available = env.task_slots(resources)       # ResourceError: a request no machine meets
    workers = min(available, max_concurrent_tasks or available)
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
        call_style=call_style, function_stored=stored, max_concurrent_tasks=max_concurrent_tasks,
        resources=resources)
    try:
        functions = {"map": function}
        if combiner_function is not None:
            functions["combine"] = combiner_function
        launch.start(env, store, spec, functions, launch.worker_count(available, spec, spec.chunk_count),
                     lambda: write_job(store, spec, params, function_blob, combiner_blob))
    except BaseException:
        store.delete("")
        job_registry.forget(name)
        raise
    return Job(store, name=name, environment=env, spec=spec,
               on_resume=functools.partial(job_registry.set_final_status, name, None))


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
