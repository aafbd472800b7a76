"""DaskCluster: run a job on an existing Dask cluster, scheduled by Dask itself.

    lab = deploy.dask_cluster.create('lab', scheduler='tcp://10.0.0.5:8786')
    job = deploy.map_job.create(add, params, environment=lab)     # or environment='lab'

Each chunk of the job is one Dask task (`client.submit`, a key per chunk, `resources=` from
the job's per-task resources, `retries=`); Dask places it, reschedules it when its worker is
lost, and cancels it (`Client.cancel`). Inside the task deploy's own runner runs the chunk
(deploy.worker.engine_task), so rows, logs, timeouts and retries are as everywhere.

Where the job directory lives: by default on this machine, results coming back through
Dask and written here by a thread of the creating process (the job needs that process, as
an SSH relay does); with `store=` (s3://, hdfs://, or a path every worker sees) the tasks
write into it themselves, are kept by Dask after the client leaves (fire_and_forget),
and the job outlives the client. The function travels by value, as to SSH hosts;
`additional_packages` are installed by Dask's PipInstall plugin.

Resources: cpu, memory_gb and gpu become the Dask resources CPU, MEMORY (bytes) and GPU
where the workers declare them (`dask worker --resources "CPU=4,MEMORY=16e9,GPU=1"`);
where none declares one, cpu is checked against the workers' threads and memory_gb
against their memory limit. A request no worker can meet is refused before anything runs.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import re
import socket
import sys
import threading
import time
import uuid
from typing import Any

from ...errors import DeployError
from ...jobdir import layout
from ...jobdir.results import C_OK, ChunkResult, canceled
from ...jobdir.spec import JobSpec
from ...store import Storage
from ...worker import engine_task, runner
from ...worker.processes import process_alive
from ..remote import RemoteEnvironment
from ..base import HostCapacity, Launch, constructor_settings, machine_facts

GIB = 1 << 30
RESOURCE_NAMES = {"cpu": "CPU", "memory_gb": "MEMORY", "gpu": "GPU"}   # deploy's -> Dask's


class DaskClusterError(DeployError):
    """The Dask cluster cannot run deploy's jobs: unreachable, mismatched, or missing something."""


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise DaskClusterError(f"Dask environments need dask.distributed on this machine "
                               f"({exc}): pip install 'deploy[dask]'") from None
    return distributed


def _have_distributed() -> None:
    """DaskClusterError naming the extra to install when dask.distributed is missing."""
    import importlib.util
    try:
        found = importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):     # sys.modules["distributed"] = None, or half-installed
        found = False
    if not found:
        _distributed()
        raise DaskClusterError("Dask environments need dask.distributed on this machine: "
                               "pip install 'deploy[dask]'")


def _versions() -> dict[str, Any]:
    """What must match between the client and the cluster. Sent by value (a nested
    function), so that it runs where deploy is not installed."""
    def probe() -> dict[str, Any]:
        import sys as _sys
        try:
            import cloudpickle
            cp = cloudpickle.__version__
        except ImportError:
            cp = None
        try:
            import deploy
            dv = deploy.__version__
        except ImportError:
            dv = None
        return {"python": "%d.%d.%d" % _sys.version_info[:3], "cloudpickle": cp, "deploy": dv}
    return probe


def _local_versions() -> dict[str, Any]:
    import cloudpickle

    from ... import __version__
    return {"python": "%d.%d.%d" % sys.version_info[:3], "cloudpickle": cloudpickle.__version__,
            "deploy": __version__}


def _major_minor(version: str | None) -> tuple[str, ...] | None:
    return tuple(version.split(".")[:2]) if version else None


class _Live:
    """This process's connection to the scheduler and the jobs it drives. Never saved."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.checked: set[str] = set()          # worker addresses whose versions matched
        self.workers: dict[str, dict] = {}      # address -> scheduler_info entry
        self.facts: dict[str, dict] = {}        # address -> its machine's cores, memory, GPUs
        self.plugins: set[str] = set()          # PipInstall plugins registered from here
        self.looked = float("-inf")             # when the workers were last asked for


_live: dict[str, _Live] = {}                    # scheduler address -> live state
_drivers: dict[str, "_Driver"] = {}             # job id -> the thread driving it here
_live_lock = threading.Lock()


class DaskCluster(RemoteEnvironment):
    """An existing Dask cluster, reached through its scheduler; see the module docstring."""

    kind = "dask"

    def __init__(self, name: str, scheduler: str, store: str | None = None,
                 additional_packages: list[str] | None = None,
                 pip_options: list[str] | None = None, timeout: float = 10.0) -> None:
        super().__init__(name)
        if not isinstance(scheduler, str) or not re.match(r"^([a-z]+://)?[^\s/]+(:\d+)?$", scheduler):
            raise ValueError(f"scheduler must be the Dask scheduler's address, e.g. "
                             f"tcp://10.0.0.5:8786, got {scheduler!r}")
        if store is not None and not re.match(r"^[a-z0-9]+://|^/", str(store)):
            raise ValueError(f"store must be a URI (s3://bucket/prefix) or an absolute path every "
                             f"worker sees, got {store!r}")
        for label, items in (("additional_packages", additional_packages), ("pip_options", pip_options)):
            if items is not None and (isinstance(items, str) or not all(isinstance(i, str) for i in items)):
                raise TypeError(f"{label} must be a list of strings")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.scheduler = scheduler if "://" in scheduler else f"tcp://{scheduler}"
        self.store = str(store).rstrip("/") if store else None
        self.additional_packages = list(additional_packages or [])
        self.pip_options = list(pip_options or [])
        self.timeout = float(timeout)

    def settings(self) -> dict[str, Any]:
        return constructor_settings(self)

    # -- the scheduler ----------------------------------------------------------------

    def _check_reachable(self) -> None:
        """Fail fast, naming the address, when nothing listens there (Dask itself would
        retry a refused connection until its timeout)."""
        scheme, _, rest = self.scheduler.partition("://")
        if scheme not in ("tcp", "tls"):
            return
        host, _, port = rest.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout).close()
        except (OSError, ValueError) as exc:
            raise DaskClusterError(f"cannot reach the Dask scheduler at {self.scheduler}: "
                                   f"{exc}") from None

    def _live(self) -> _Live:
        """This process's client of the scheduler (connected on first use)."""
        with _live_lock:
            live = _live.get(self.scheduler)
            if live is not None and live.client.status in ("running", "connecting"):
                return live
            _have_distributed()             # cheap checks first: importing Dask takes seconds
            self._check_reachable()
            distributed = _distributed()
            try:
                client = distributed.Client(self.scheduler, timeout=self.timeout,
                                            set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise DaskClusterError(f"cannot reach the Dask scheduler at {self.scheduler}: "
                                       f"{exc}") from None
            live = _live[self.scheduler] = _Live(client)
            return live

    def client(self) -> Any:
        """This process's distributed.Client of the cluster's scheduler."""
        return self.prepare()._live().client

    def prepare(self) -> "DaskCluster":
        """Connect, learn the workers, check their Python and cloudpickle against this
        machine's (and that they can import deploy), install additional_packages."""
        live = self._live()
        client = live.client
        if time.monotonic() - live.looked > 1.0 or not live.workers:   # one create asks often
            info = client.scheduler_info(n_workers=-1)["workers"]
            live.workers = info
            if not info:
                raise DaskClusterError(f"the Dask scheduler at {self.scheduler} has no workers")
            new = [a for a in info if a not in live.checked]
            if new:
                self._check_versions(client, new)
                live.facts.update(client.run(machine_facts, workers=new))
                live.checked.update(new)
            live.looked = time.monotonic()
        plugin = f"deploy-pip-{self.name}"
        if self.additional_packages and plugin not in live.plugins:
            distributed = _distributed()
            client.register_plugin(distributed.PipInstall(self.additional_packages,
                                                          pip_options=self.pip_options or None),
                                   name=plugin)
            live.plugins.add(plugin)
        return self

    def _check_versions(self, client: Any, workers: list[str]) -> None:
        mine = _local_versions()
        theirs = {"scheduler": client.run_on_scheduler(_versions())}
        theirs.update(client.run(_versions(), workers=workers))
        problems = []
        for where, got in theirs.items():
            for package in ("python", "cloudpickle"):
                if _major_minor(got.get(package)) != _major_minor(mine[package]):
                    problems.append(f"{where} has {package} {got.get(package)}")
            if where != "scheduler" and got.get("deploy") is None:
                problems.append(f"{where} cannot import deploy")
        if problems:
            raise DaskClusterError(
                f"the Dask cluster at {self.scheduler} does not match this machine (python "
                f"{mine['python']}, cloudpickle {mine['cloudpickle']}): " + "; ".join(problems)
                + ". Jobs are pickled here and unpickled there: use the same Python and "
                "cloudpickle versions, with deploy installed on the workers "
                "(additional_packages= can install it)")

    def workers(self) -> dict[str, dict]:
        """The scheduler's view of each worker: nthreads, memory_limit, resources, host."""
        return self.prepare()._live().workers

    def num_workers(self) -> int:
        return sum(int(w.get("nthreads", 1)) for w in self.workers().values()) or 1

    def get_num_workers(self) -> int:
        """GraphLab's name: tasks that run at once across the cluster."""
        return self.num_workers()

    def is_running(self) -> bool:
        try:
            self.prepare()
            return True
        except DaskClusterError:
            return False


    # -- resources --------------------------------------------------------------------

    def capacity(self) -> list[HostCapacity]:
        """Each Dask worker as a machine: the CPU, MEMORY (bytes) and GPU resources it
        declares, else its threads, its memory limit (else its machine's memory) and no GPU;
        as many tasks at once as it has threads."""
        workers = self.workers()
        live = self._live()
        hosts = []
        for address, w in sorted(workers.items()):
            have = w.get("resources") or {}
            facts = live.facts.get(address) or {}
            memory = have.get("MEMORY") or w.get("memory_limit") or facts.get("memory_gb", 0) * GIB
            hosts.append(HostCapacity(address, float(have.get("CPU", w.get("nthreads", 1))),
                                      memory / GIB, int(have.get("GPU", 0)),
                                      int(w.get("nthreads", 1))))
        return hosts

    def dask_resources(self, requested: dict[str, float] | None) -> dict[str, float]:
        """The Dask `resources=` for a job's per-task request: those the workers declare
        (CPU, MEMORY in bytes, GPU); task_slots() has refused what no worker can meet."""
        requested = {k: v for k, v in (requested or {}).items() if v}
        declared = {name for w in self.workers().values() for name in (w.get("resources") or {})}
        return {RESOURCE_NAMES[k]: v * GIB if k == "memory_gb" else v
                for k, v in requested.items() if RESOURCE_NAMES[k] in declared}

    # -- jobs -------------------------------------------------------------------------

    def launch(self, launch: Launch) -> dict[str, Any]:
        client = self.client()
        store, spec = launch.store, launch.spec
        resources = self.dask_resources(getattr(spec, "resources", None))
        shared = self.store is not None
        function = store.get(layout.FUNCTION)
        combiner = store.get(layout.COMBINER) if spec.has_combiner else None
        job = engine_task.engine_job(spec, function, combiner, store.uri if shared else None)
        prefix = f"deploy-{spec.id}-{uuid.uuid4().hex[:6]}-"
        handle = {"scheduler": self.scheduler, "job": spec.id, "prefix": prefix, "shared": shared,
                  "client": {"host": runner.HOST, "pid": os.getpid()}}
        driver = _Driver(client, store, spec, job, prefix, resources, shared)
        old = _drivers.get(spec.id)
        if old is not None:
            old.stop(None)
        _drivers[spec.id] = driver
        driver.submit_all()
        driver.start()
        return handle

    # -- control ----------------------------------------------------------------------

    def _driver(self, handle: dict[str, Any]) -> "_Driver | None":
        driver = _drivers.get(handle.get("job", ""))
        return driver if driver is not None and driver.prefix == handle.get("prefix") else None

    def _scheduler_keys(self, prefix: str) -> list[str] | None:
        """Keys of the job's tasks the scheduler still has, or None when it cannot be asked."""
        def keys(dask_scheduler: Any, prefix: str = prefix) -> list[str]:
            return [k for k, ts in dask_scheduler.tasks.items()
                    if isinstance(k, str) and k.startswith(prefix)
                    and ts.state not in ("erred", "forgotten")]
        try:
            return self._live().client.run_on_scheduler(keys)
        except (DaskClusterError, OSError, TimeoutError):
            return None

    def alive(self, handle: dict[str, Any]) -> bool | None:
        driver = self._driver(handle)
        if driver is not None:
            return driver.is_alive()
        client = handle.get("client") or {}
        if not handle.get("shared") and client.get("host") == runner.HOST \
                and not process_alive(int(client.get("pid", 0))):
            return False
        keys = self._scheduler_keys(handle.get("prefix", "\0"))
        return None if keys is None else bool(keys)

    def cancel(self, handle: dict[str, Any]) -> None:
        """Cancel the job's Dask tasks and return once none of them runs a task any more
        (a canceled Dask task stops its task process at its next look, within 0.2 s)."""
        prefix = handle.get("prefix", "\0")
        driver = self._driver(handle)
        if driver is not None:
            driver.stop("the job was canceled")
        else:
            keys = self._scheduler_keys(prefix)
            if keys:
                distributed = _distributed()
                client = self._live().client
                client.cancel([distributed.Future(k, client) for k in keys], force=True)
        deadline = time.monotonic() + max(10.0, self.timeout)
        while time.monotonic() < deadline:
            running = self._executing(prefix)
            if not running:
                return
            time.sleep(0.02)

    def _executing(self, prefix: str) -> int | None:
        """How many of the job's tasks the workers are executing (canceled ones included,
        until their task processes stopped); None when the workers cannot be asked."""
        def executing(dask_worker: Any, prefix: str = prefix) -> int:
            return sum(1 for k, ts in list(dask_worker.state.tasks.items())
                       if isinstance(k, str) and k.startswith(prefix)
                       and ts.state in ("executing", "cancelled", "long-running"))
        try:
            return sum(self._live().client.run(executing).values())
        except (DaskClusterError, OSError, TimeoutError):
            return None

    def tasks_left(self, handle: dict[str, Any]) -> int | None:
        """The job's tasks the scheduler still has plus those the workers still execute
        (None: the cluster cannot be asked): 0 once nothing of the job runs any more."""
        prefix = handle.get("prefix", "\0")
        keys, running = self._scheduler_keys(prefix), self._executing(prefix)
        return None if keys is None or running is None else len(keys) + running

    def wait_for_change(self, handle: dict[str, Any], timeout: float) -> None:
        driver = self._driver(handle)
        if driver is None:
            time.sleep(timeout)
            return
        driver.wait(timeout)

    def describe_failure(self, handle: dict[str, Any]) -> str | None:
        driver = self._driver(handle)
        if driver is not None and driver.error:
            return driver.error
        client = handle.get("client") or {}
        if not handle.get("shared") and client.get("host") == runner.HOST \
                and client.get("pid") != os.getpid() and not process_alive(int(client.get("pid", 0))):
            return (f"the process that created the job (pid {client.get('pid')}) has exited and "
                    "its results came back through it; give the cluster a shared store= for "
                    "jobs that outlive their client")
        try:
            self._live()
        except DaskClusterError as exc:
            return str(exc)
        return None

    def stop(self) -> None:
        """Close this process's connection to the scheduler (jobs it drives keep it)."""
        with _live_lock:
            live = _live.get(self.scheduler)
            if live is None or any(d.is_alive() and d.client is live.client for d in _drivers.values()):
                return
            del _live[self.scheduler]
        live.client.close()


class _Driver(threading.Thread):
    """Submits a job's chunks as Dask tasks and follows them: writes returned results into
    the client-side job directory, resubmits a chunk whose worker Dask gave up on (until
    worker_retries), fails fast, submits the combiner when every task completed."""

    def __init__(self, client: Any, store: Storage, spec: JobSpec, job: dict[str, Any],
                 prefix: str, resources: dict[str, float], shared: bool) -> None:
        super().__init__(name=f"deploy-dask-{spec.id}", daemon=True)
        distributed = _distributed()
        self.client, self.store, self.spec, self.prefix = client, store, spec, prefix
        self.resources, self.shared = resources or None, shared
        self.futures: dict[str, tuple[Any, int, int]] = {}    # key -> (future, chunk, attempt)
        self.pending = distributed.as_completed(loop=client.loop)
        # a list: a scattered dict would make its keys ("id", "spec") global Dask keys
        self.job = client.scatter([job], broadcast=True, hash=False)[0]
        self.changes = threading.Condition()
        self.version = 0
        self.stopped: str | None = None
        self.error: str | None = None
        self.combiner_sent = False
        self.queue: collections.deque[int] = collections.deque()   # chunks held back by the cap
        self.lock = threading.Lock()
        self.topic = None
        if not shared:
            from .task import topic
            self.topic = topic(spec.id)
            client.subscribe_topic(self.topic, self._task_started)

    def _task_started(self, event: tuple[float, dict]) -> None:
        """A task started on a worker (a Dask event): its heartbeat names the worker's
        process, as a worker loop's does (client-side store only)."""
        info = event[1] if isinstance(event, tuple) else event
        key = str(info.get("key", ""))
        if not key.startswith(self.prefix) or self.stopped:
            return
        try:
            self.store.put(layout.heartbeat(key), json.dumps(
                {"worker": key, "host": info.get("host"), "pid": info.get("pid"),
                 "time": time.time(), "seq": 1, "chunk": info.get("chunk")}).encode())
        except OSError:
            pass
        self._changed()

    # -- submitting ---------------------------------------------------------------------

    def submit_all(self) -> None:
        """Every chunk without a result (all, for a new job; at most max_concurrent_tasks
        at once, the rest as those finish), and with a shared store the combiner too,
        depending on them (it then runs without this process)."""
        from . import task
        n = self.spec.chunk_count
        done = {int(c) for c in self.store.list(layout.RESULTS) if c.isdigit()}
        todo = [c for c in range(n) if c not in done]
        cap = self.spec.max_concurrent_tasks or len(todo)
        self.queue.extend(todo[cap:])
        maps = [self.submit(c, 0) for c in todo[:cap]]
        if self.spec.has_combiner and not self.store.exists(layout.COMBINED) and self.shared \
                and not self.queue:
            key = f"{self.prefix}{n}-0"
            future = self.client.submit(task.combine, self.job, n, *maps, key=key, pure=False,
                                        retries=self.spec.worker_retries)
            _distributed().fire_and_forget(future)
            self._track(key, future, n, 0)
            self.combiner_sent = True
        if not maps and not self.combiner_sent:
            self._maybe_combine()
        if self.shared:
            self._wait_kept()

    def _wait_kept(self, timeout: float = 30.0) -> None:
        """Keep the job's data for "fire-and-forget" too, last, and return once the
        scheduler has that: its messages travel on one ordered batched stream, so every
        task submitted before has arrived as well (a process that exits right after
        create() could otherwise take them along)."""
        _distributed().fire_and_forget(self.job)

        def kept(dask_scheduler: Any, key: Any = self.job.key) -> bool:
            client = dask_scheduler.clients.get("fire-and-forget")
            return client is not None and any(ts.key == key for ts in client.wants_what)
        deadline = time.monotonic() + timeout
        while not self.client.run_on_scheduler(kept) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _refill(self) -> None:
        """Keep max_concurrent_tasks chunks submitted while some wait (a capped job)."""
        cap = self.spec.max_concurrent_tasks
        while self.queue and not self.stopped:
            with self.lock:
                running = sum(1 for _, c, _ in self.futures.values() if c < self.spec.chunk_count)
            if cap and running >= cap:
                return
            self.submit(self.queue.popleft(), 0)

    def submit(self, chunk: int, attempt: int, inputs: bytes | None = None) -> Any:
        from . import task
        if inputs is None and not self.shared:
            inputs = self.store.get(layout.inputs(chunk))
        key = f"{self.prefix}{chunk}-{attempt}"
        future = self.client.submit(task.run, self.job, chunk, attempt, inputs, key=key,
                                    resources=self.resources, retries=self.spec.worker_retries,
                                    pure=False)
        if self.shared:
            _distributed().fire_and_forget(future)      # it runs on if this process ends
        else:
            self.store.create_exclusive(layout.claim(chunk, attempt), key.encode())
        self._track(key, future, chunk, attempt)
        return future

    def _track(self, key: str, future: Any, chunk: int, attempt: int) -> None:
        with self.lock:
            self.futures[key] = (future, chunk, attempt)
        self.pending.add(future)

    def _maybe_combine(self) -> None:
        """Once every map task completed, the combiner's turn (client-side store, or a
        capped job: the combiner was not submitted with the map tasks)."""
        spec = self.spec
        if not spec.has_combiner or self.combiner_sent or self.stopped or self.queue:
            return
        if self.store.exists(layout.COMBINED):
            return
        values: dict[str, Any] = {}
        for chunk in range(spec.chunk_count):
            try:
                result = ChunkResult.from_dict(pickle.loads(self.store.get(layout.result(chunk))))
            except FileNotFoundError:
                return
            if result.status.count(C_OK) != len(result):
                return                     # a task failed: the combiner does not run
            values.update(zip(map(spec.task_name, result.index), result.values))
        self.combiner_sent = True
        self.submit(spec.chunk_count, 0, runner.dumps([values]))

    # -- following ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            for future in self.pending:
                self._finished(future)
                if self.stopped:
                    break
        except Exception as exc:             # the connection to the scheduler is gone
            self.error = f"lost the Dask scheduler while following the job: {type(exc).__name__}: {exc}"
        finally:
            with self.lock:
                self.futures.clear()
            self.job = None
            self._clean_up()
            self._changed()
            if _drivers.get(self.spec.id) is self and self.error is None:
                del _drivers[self.spec.id]      # an error stays for describe_failure

    def _finished(self, future: Any) -> None:
        with self.lock:
            entry = self.futures.get(future.key)
        if entry is None:
            return
        _, chunk, attempt = entry
        status = future.status
        if status == "finished":
            payload = future.result()
            if payload is not None:
                info = engine_task.publish(self.store, payload)
                if info["failed"] and self.spec.fail_fast and chunk < self.spec.chunk_count:
                    self.stop(f"fail_fast: task {info['failed']} failed")
            if chunk < self.spec.chunk_count:
                self._maybe_combine()
        elif status == "error":
            exc = future.exception()
            lost = type(exc).__name__ == "KilledWorker"
            if lost and attempt < self.spec.worker_retries and not self.stopped:
                self.submit(chunk, attempt + 1)
            else:
                why = (f"Dask lost the workers running this task ({exc})" if lost
                       else f"the Dask task failed: {type(exc).__name__}: {exc}")
                engine_task.lost(self.store, chunk, attempt + 1, why,
                                 "WorkerLost" if lost else "ChunkError")
                if chunk < self.spec.chunk_count:
                    self._maybe_combine()
        with self.lock:
            self.futures.pop(future.key, None)     # released: the scheduler forgets it
        self._refill()
        if not self.shared:
            self.store.delete(layout.heartbeat(future.key))
        self._changed()

    def _clean_up(self) -> None:
        """Forget the job on the scheduler: its start counts, its event topic."""
        from .task import ATTEMPTS

        def forget(dask_scheduler: Any, prefix: str = self.prefix) -> None:
            counts = dask_scheduler.metadata.get(ATTEMPTS, {})
            for key in [k for k in counts if isinstance(k, str) and k.startswith(prefix)]:
                del counts[key]
        try:
            if self.topic is not None:
                self.client.unsubscribe_topic(self.topic)
            self.client.run_on_scheduler(forget)
        except Exception:
            pass                            # the scheduler is gone, and its metadata with it
        for name in self.store.list(layout.HEARTBEATS):
            if name.startswith(self.prefix):
                self.store.delete(layout.heartbeat(name))

    def _changed(self) -> None:
        with self.changes:
            self.version += 1
            self.changes.notify_all()

    def wait(self, timeout: float) -> None:
        with self.changes:
            seen = self.version
            self.changes.wait_for(lambda: self.version != seen or not self.is_alive(), timeout)

    def stop(self, why: str | None) -> None:
        """Cancel every task of the job (running ones stop their tasks); chunks without a
        result get Canceled rows saying `why` (None: leave them, a new launch follows)."""
        if self.stopped:
            return
        self.stopped = why or "replaced"
        with self.lock:
            futures = [f for f, _, _ in self.futures.values()]
        if futures:
            try:
                self.client.cancel(futures, force=True)
            except Exception:
                pass                        # the scheduler is gone: nothing runs any more
        if why is not None:
            spec = self.spec
            for chunk in range(spec.chunk_count):
                if not self.store.exists(layout.result(chunk)):
                    tasks = spec.chunk_tasks(chunk)
                    rows = canceled(tasks, [0] * len(tasks), why, runner.HOST, "client")
                    self.store.create_exclusive(layout.result(chunk), runner.dumps_result(rows))
        self._changed()


def create(name: str, scheduler: str, store: str | None = None,
           additional_packages: list[str] | None = None, **options: Any) -> DaskCluster:
    """Define a Dask cluster by its scheduler's address, check it (reachable, workers with
    matching Python and cloudpickle) and save it by name. Other options: pip_options, timeout."""
    cluster = DaskCluster(name, scheduler, store=store, additional_packages=additional_packages,
                          **options)
    cluster.prepare()
    return cluster.save()


def load(name: str) -> DaskCluster:
    """The saved cluster `name` (connects when first used)."""
    return DaskCluster.load(name)


__all__ = ["DaskCluster", "DaskClusterError", "create", "load"]
