"""JobSpec: what a job is (job.json), how tasks are named and how they are cut into chunks."""
from __future__ import annotations

import bisect
import dataclasses
import json
import math
import re
from typing import Any

FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
RESOURCE_KEYS = ("cpu", "memory_gb", "gpu")   # per-task resources a job may ask for


@dataclasses.dataclass
class JobSpec:
    """The contents of job.json: everything a worker or a reader needs besides the pickles."""

    id: str
    name: str
    created: float
    function_name: str
    task_count: int
    chunk_size: int | None                # uniform chunks of this size, or None: chunk_bounds
    max_retries: int = 0
    worker_retries: int = 2
    task_timeout: float | None = None
    fail_fast: bool = False
    combiner_name: str | None = None
    single: bool = False                  # deploy.job.create: get_results() is the one value
    call_style: str = "kwargs"            # fn(**item); "arg": fn(item); "args": fn(*item)
    chunk_bounds: list[int] | None = None # first task of each chunk, then task_count
    function_stored: bool = True          # False: too large to keep, workers got it by fork
    max_concurrent_tasks: int | None = None  # cap on workers, for the launch and resume()
    resources: dict[str, float] | None = None  # per task: only the keys given, among RESOURCE_KEYS
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 2.0
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if (self.chunk_size is None) == (self.chunk_bounds is None):
            raise ValueError("a job spec has either chunk_size or chunk_bounds")

    @property
    def chunk_count(self) -> int:
        if self.chunk_bounds is not None:
            return len(self.chunk_bounds) - 1
        return math.ceil(self.task_count / self.chunk_size)

    def chunk_of(self, index: int) -> int:
        """The chunk that holds task `index`."""
        if self.chunk_bounds is not None:
            return bisect.bisect_right(self.chunk_bounds, index) - 1
        return index // self.chunk_size

    @property
    def has_combiner(self) -> bool:
        return self.combiner_name is not None

    def chunk_tasks(self, chunk: int) -> range:
        """Task indices of one chunk."""
        if self.chunk_bounds is not None:
            return range(self.chunk_bounds[chunk], self.chunk_bounds[chunk + 1])
        start = chunk * self.chunk_size
        return range(start, min(start + self.chunk_size, self.task_count))

    def task_name(self, index: int) -> str:
        return task_name(self.function_name, index)

    def combiner_task_name(self) -> str:
        return f"{self.combiner_name}-1-0"

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["chunk_count"] = self.chunk_count
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "JobSpec":
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported job.json format version {data.get('format_version')!r}"
                             if isinstance(data, dict) else "job.json is not an object")
        data.pop("chunk_count", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def check_resources(cpu: Any = None, memory_gb: Any = None, gpu: Any = None) -> dict[str, float] | None:
    """The per-task resources a job asks for, checked: only the keys given (None: none).
    cpu and memory_gb are positive numbers (cpu=0.5 shares a core), gpu an integer >= 0."""
    asked: dict[str, float] = {}
    for key, value in (("cpu", cpu), ("memory_gb", memory_gb)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            unit = " (cores)" if key == "cpu" else " (GB)"
            raise ValueError(f"{key} must be a positive number{unit}, got {value!r}")
        asked[key] = value
    if gpu is not None:
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            raise ValueError(f"gpu must be a whole number of GPUs >= 0, got {gpu!r}")
        asked["gpu"] = gpu
    return asked or None


def task_name(function_name: str, index: int) -> str:
    """GraphLab's naming: `<function>-0-<i>` for map tasks."""
    return f"{function_name}-0-{index}"


def task_index(name: str) -> int | None:
    """The index in a `<function>-0-<i>` task name, or None."""
    head, sep, idx = name.rpartition("-0-")
    return int(idx) if sep and idx.isdigit() else None


def guided_bounds(task_count: int, workers: int) -> list[int]:
    """Chunk boundaries for guided self-scheduling: each chunk takes a 1/(2W) share of the
    tasks still left, down to a floor of 1/(64W) of all tasks. Big chunks first keep
    storage round trips few for tiny tasks; small chunks last balance long ones."""
    workers = max(1, workers)
    if task_count <= 2 * workers:          # a tiny job: one chunk per worker, no more round trips
        size = math.ceil(task_count / workers)
        return list(range(0, task_count, size)) + [task_count]
    floor = max(1, math.ceil(task_count / (workers * 64)))
    bounds, start = [0], 0
    while start < task_count:
        size = max(floor, math.ceil((task_count - start) / (2 * workers)))
        start = min(task_count, start + size)
        bounds.append(start)
    return bounds


def function_label(fn: Any) -> str:
    """A task-name-safe label for a callable: its __name__, 'lambda' for lambdas, the
    wrapped function's name for functools.partial."""
    inner = getattr(fn, "func", fn)
    name = getattr(inner, "__name__", None) or type(inner).__name__
    name = re.sub(r"[^A-Za-z0-9_]", "", name.replace("<lambda>", "lambda")) or "task"
    return name
