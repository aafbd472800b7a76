"""Environment: where workers run. It starts workers for a job and stops them; it never
runs tasks itself and never interprets results (that is the job directory's business)."""
from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import re
from typing import Any, Callable

from ..errors import ResourceError
from ..jobdir.spec import JobSpec
from ..store import Storage

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


def positive_int(value: Any, what: str, optional: bool = False) -> Any:
    """`value` if it is a positive integer (or None, when `optional`); else ValueError
    naming the setting: backends check their settings with it."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer{' or None' if optional else ''}, "
                         f"got {value!r}")
    return value


def _keywords(cls: type) -> list[str]:
    """The settings an environment class declares: its constructor's arguments after the name."""
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in ("self", "name")
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def constructor_settings(env: "Environment") -> dict[str, Any]:
    """An environment's constructor arguments as it kept them (validated, normalised),
    each under the argument's name: the settings of a backend declared by its constructor."""
    settings = {}
    for param in _keywords(type(env)):
        value = getattr(env, param)
        settings[param] = list(value) if isinstance(value, (list, tuple)) else value
    return settings


@dataclasses.dataclass(frozen=True)
class HostCapacity:
    """One machine (or engine node) where tasks run: its cores, memory and GPUs, and the
    workers the environment runs there by its own settings (None: as its cores allow)."""

    name: str
    cpu: float
    memory_gb: float
    gpu: int = 0
    workers: int | None = None

    def fit(self, resources: dict[str, float] | None) -> int:
        """How many tasks that each need `resources` run here at once (0: not one)."""
        resources = resources or {}
        limits = [] if self.workers is None else [self.workers]
        if resources.get("cpu"):
            limits.append(math.floor(self.cpu / resources["cpu"] + 1e-9))
        elif self.workers is None:
            limits.append(max(1, int(self.cpu)))
        if resources.get("memory_gb"):
            limits.append(math.floor(self.memory_gb / resources["memory_gb"] + 1e-9))
        if resources.get("gpu"):
            limits.append(self.gpu // int(resources["gpu"]))
        return max(0, min(limits))

    def describe(self) -> str:
        gpus = f", {self.gpu} GPU{'s' if self.gpu != 1 else ''}" if self.gpu else ""
        return f"{self.name}: {self.cpu:g} cores, {self.memory_gb:.1f} GB{gpus}"


_AMOUNT = {"cpu": "{:g} cores", "memory_gb": "{:.1f} GB", "gpu": "{:d} GPUs"}


def fit_hosts(hosts: list[HostCapacity], resources: dict[str, float] | None,
              noun: str = "host") -> list[int]:
    """Tasks each host runs at once under `resources`; ResourceError naming what was asked
    and what the hosts have when not one task fits anywhere."""
    counts = [h.fit(resources) for h in hosts]
    if sum(counts) > 0:
        return counts
    asked = {k: v for k, v in (resources or {}).items() if v}
    wanted = " and ".join(f"{k}={v:g}" for k, v in asked.items())
    if not hosts:
        raise ResourceError(f"no {noun} is available to run tasks needing {wanted}")
    reasons = []
    for key, value in asked.items():
        best = max((getattr(h, key) for h in hosts), default=0)
        if value > best + 1e-9:
            if key == "gpu" and not best:
                reasons.append(f"gpu={value:g} but no {noun} has a GPU: 0 GPUs available")
            else:
                reasons.append(f"{key}={value:g} but the largest {noun} has "
                               + _AMOUNT[key].format(int(best) if key == "gpu" else best))
    if not reasons:
        reasons.append(f"no {noun} has {wanted} at once")
    shown = "; ".join(h.describe() for h in hosts[:8]) + ("; ..." if len(hosts) > 8 else "")
    raise ResourceError(f"{'; '.join(reasons)} ({shown})")


def machine_facts() -> dict[str, Any]:
    """This machine as tasks see it: cores this process may use, memory in GB (physical, or
    a smaller cgroup limit) and NVIDIA GPUs (`nvidia-smi -L`). Standard library only and
    self-contained: SSH hosts run its source as their probe."""
    import os
    import shutil
    import subprocess
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = 0
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (memory or float("inf")):
            memory = int(text)
    gpus = 0
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
            gpus = sum(line.startswith("GPU ") for line in out.splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    return {"cpus": cpus, "memory_gb": memory / 2 ** 30, "gpus": gpus}


@dataclasses.dataclass
class Launch:
    """What an environment gets to start workers: the written job directory, its spec, the
    functions already in memory (shared by fork where the environment can), and how many."""

    store: Storage
    spec: JobSpec
    functions: dict[str, Callable] | None
    workers: int


class Environment(abc.ABC):
    """Plain data (a name and settings) plus the verbs to start and stop workers."""

    kind: str = ""
    shares_memory = False   # workers are forks of the caller: they hold the function already

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"bad environment name {name!r}: use letters, digits, '_', '-', '.'")
        self.name = name

    # -- the contract: everything the core calls -------------------------------------------

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any]) -> "Environment":
        """Rebuild the environment `settings()` described (registry, job directories): its
        keys are the constructor's keyword arguments; keys it does not take (written by
        another version of deploy) are left out."""
        known = _keywords(cls)
        return cls(name, **{k: v for k, v in settings.items() if k in known})

    @classmethod
    def default(cls) -> "Environment | None":
        """The environment a bare kind name means (`environment='LocalAsync'`), or None
        when the kind cannot run without settings."""
        return None

    @property
    def needs_client(self) -> bool:
        """Whether a job's results come back through the process that created it (so the
        job cannot outlive it: `deploy run --detach` refuses such an environment)."""
        return False

    @abc.abstractmethod
    def num_workers(self) -> int:
        """How many workers a job gets here (used to size chunks)."""

    @abc.abstractmethod
    def job_store(self, job_id: str) -> Storage:
        """The store in which a new job's directory is written."""

    def capacity(self) -> list[HostCapacity] | None:
        """The machines (or engine nodes) this environment's tasks run on, with the workers
        it runs on each by its settings; None when it cannot tell (per-task resources are
        then passed on unchecked). Backends that know their machines override this."""
        return None

    def task_slots(self, resources: dict[str, float] | None) -> int:
        """How many tasks that each need `resources` (JobSpec.resources) run here at once:
        sizes chunks and caps workers. Raises ResourceError (a ValueError naming what was
        asked and what is available) before anything runs when no machine can hold one
        task. Default: num_workers() without resources, else summed over capacity()."""
        hosts = self.capacity() if resources else None
        if hosts is None:
            return self.num_workers()
        return sum(fit_hosts(hosts, resources))

    @abc.abstractmethod
    def launch(self, launch: Launch) -> dict[str, Any]:
        """Start workers for a written job; return a JSON-able handle for alive/cancel."""

    def start(self, launch: Launch, write: Callable[[], None]) -> dict[str, Any]:
        """Write the job directory (`write()`) and start its workers, in whichever order
        starts the tasks sooner here; the handle as from `launch`. Default: write, launch."""
        write()
        return self.launch(launch)

    def alive(self, handle: dict[str, Any]) -> bool | None:
        """Whether workers started by `launch` may still be running (None: cannot tell)."""
        return None

    def cancel(self, handle: dict[str, Any]) -> None:
        """Stop the workers started by `launch`, running tasks included."""

    def wait_for_change(self, handle: dict[str, Any], timeout: float) -> None:
        """Block up to `timeout` seconds while a job runs; return early when the environment
        learns that something changed (a worker exited). Default: just sleep."""
        import time
        time.sleep(timeout)

    def stop(self) -> None:
        """Release what the environment holds (connections, instances); jobs are not touched."""

    def describe_failure(self, handle: dict[str, Any]) -> str | None:
        """Why the workers stopped before finishing, when the environment knows."""
        return None

    def serialize(self, fn: Callable) -> bytes:
        """Pickle a job's function for the workers (keeping its source for tracebacks).
        Backends whose hosts lack the caller's modules override this to send those modules
        by value."""
        from ..jobdir import source
        return source.dumps(fn)

    # -- data -------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The settings that recreate this environment (never secrets: they go to the
        registry and into job directories). The constructor declares them: its keyword
        arguments after the name; `from_settings` is the inverse. A backend that keeps each
        argument under the same attribute name returns `constructor_settings(self)`; nothing
        is assumed for one that does not say (it may hold what must not be written)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "settings": self.settings()}

    @classmethod
    def load(cls, name: str) -> "Environment":
        """The saved environment `name`, which must be of this class (TypeError otherwise)."""
        from .registry import environments
        return environments.load(name, cls)

    def save(self) -> "Environment":
        """Record this environment in the registry under its name (replacing an older one)."""
        from .registry import environments
        environments.save(self)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({self.name!r}{', ' + args if args else ''})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Environment) and self.to_dict() == other.to_dict()
