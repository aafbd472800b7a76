"""RayCluster: a job's chunks as Ray tasks on an existing Ray cluster.

    rc = deploy.ray_cluster.create('rc', address='10.0.0.2:6379')      # or 'ray://host:10001'
    job = deploy.map_job.create(add, params, environment=rc, cpu=2, memory_gb=8)

Ray schedules: each chunk is one Ray task with `num_cpus`/`memory`/`num_gpus` from the job's
per-task resources (1 CPU by default) and `max_retries` = the job's worker_retries (a lost
node or worker); cancel is `ray.cancel(force=True)`. Each task runs deploy's own task
runner, so rows, logs, timeouts, retries and fail_fast are as everywhere.

Where the job directory lives: on the client by default (tasks return their rows, which a
thread of the client publishes: the job needs the client, as the SSH relay does), or in a
shared `store=` (`s3://bucket/prefix` or a path every node sees), which the tasks write
themselves; the job's driver is then a detached actor on the head node, so that the job
outlives the client and any process reopens it (`deploy.jobs['name']`).
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

from ...jobdir import layout
from ...store import worker_needs
from ...worker import engine_task
from ...worker.processes import process_alive
from ...worker.runner import HOST
from ..remote import RemoteEnvironment
from ..base import HostCapacity, Launch, constructor_settings, fit_hosts
from . import connect as conn
from .connect import RayClusterError

__all__ = ["RayCluster", "RayClusterError", "create", "load"]

_running: dict[str, Any] = {}       # job id -> Scheduler, for the jobs this process drives
_running_lock = threading.Lock()


class RayCluster(RemoteEnvironment):
    """Chunks as Ray tasks on the cluster at `address`; see the module docstring."""

    kind = "ray"

    def __init__(self, name: str, address: str, store: str | None = None,
                 additional_packages: list[str] | None = None, timeout: float = 10.0) -> None:
        super().__init__(name)
        conn.split_address(address)                    # ValueError for a malformed address
        if store is not None and not re.match(r"^[a-z0-9]+://|^/", str(store)):
            raise ValueError(f"store must be a URI (s3://bucket/prefix) or an absolute path every "
                             f"Ray node sees, got {store!r}")
        if additional_packages is not None and (isinstance(additional_packages, str) or not all(
                isinstance(p, str) for p in additional_packages)):
            raise TypeError("additional_packages must be a list of strings")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.address = address.strip()
        self.store = str(store).rstrip("/") if store else None
        self.additional_packages = list(additional_packages or [])
        self.timeout = float(timeout)
        self._versions: dict[str, Any] | None = None
        self._seen: dict[str, int] = {}         # job -> the last change wait_for_change reported

    def settings(self) -> dict[str, Any]:
        return constructor_settings(self)

    # -- the cluster ---------------------------------------------------------------------

    def _ray(self) -> Any:
        """This process's connection to the cluster, its versions checked (once)."""
        ray = conn.connect(self.address, self.timeout)
        if self._versions is None:
            there = conn.cluster_versions(ray, self.address)
            conn.check_versions(conn.local_versions(), there, self.address)
            self._versions = there
        return ray

    def prepare(self) -> "RayCluster":
        """Connect to the head and check the cluster can run this client's functions."""
        self._ray()
        return self

    def is_running(self) -> bool:
        """True when the head answers and the cluster runs this client's functions."""
        try:
            self.prepare()
            return True
        except RayClusterError:
            return False

    def capacity(self) -> list[HostCapacity]:
        """The live Ray nodes with their CPUs, schedulable memory and GPUs."""
        ray = self._ray()
        hosts = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node.get("Resources") or {}
            hosts.append(HostCapacity(node.get("NodeManagerAddress") or node.get("NodeID", "?"),
                                      float(res.get("CPU", 0)), float(res.get("memory", 0)) / 2 ** 30,
                                      int(res.get("GPU", 0))))
        return hosts

    def task_slots(self, resources: dict[str, float] | None) -> int:
        """Tasks that fit on the live nodes at once (each takes 1 CPU unless it says);
        ResourceError naming the nodes' CPUs, memory and GPUs when no node fits one."""
        return max(1, sum(fit_hosts(self.capacity(), resources, noun="node")))

    def num_workers(self) -> int:
        return self.task_slots(None)

    def get_num_workers(self) -> int:
        """GraphLab's name: tasks that run at once across the cluster."""
        return self.num_workers()


    # -- jobs ----------------------------------------------------------------------------

    def _runtime_env(self) -> dict[str, Any] | None:
        """additional_packages (and what the store needs) through Ray's pip runtime_env; deploy
        itself as a py_module when the cluster cannot import it."""
        pip = list(self.additional_packages)
        env: dict[str, Any] = {}
        if self._versions is not None and self._versions.get("deploy") is None:
            import deploy
            env["py_modules"] = [os.path.dirname(os.path.abspath(deploy.__file__))]
            env["excludes"] = ["__pycache__", "*.pyc"]
            pip += [p for p in (worker_needs(self.store) if self.store else ()) if p not in pip]
        if pip:
            env["pip"] = pip
        return env or None

    def _options(self, resources: dict[str, float] | None, retries: int) -> dict[str, Any]:
        """Ray task options for one chunk: its resources, retries after a lost worker."""
        resources = resources or {}
        options: dict[str, Any] = {"num_cpus": resources.get("cpu", 1), "max_retries": retries,
                                   "retry_exceptions": False}
        if resources.get("memory_gb"):
            options["memory"] = int(resources["memory_gb"] * 2 ** 30)
        if resources.get("gpu"):
            options["num_gpus"] = resources["gpu"]
        runtime_env = self._runtime_env()
        if runtime_env:
            options["runtime_env"] = runtime_env
        return options

    def launch(self, launch: Launch) -> dict[str, Any]:
        from .driver import JobDriver, Scheduler
        ray = self._ray()
        spec, store = launch.spec, launch.store
        done = set(store.list(layout.RESULTS))
        chunks = [c for c in range(spec.chunk_count) if layout.chunk_name(c) not in done]
        combine = spec.has_combiner and not store.exists(layout.COMBINED)
        options = self._options(getattr(spec, "resources", None) or {}, spec.worker_retries)
        window = launch.workers if spec.max_concurrent_tasks else None
        handle: dict[str, Any] = {"job": spec.id, "address": self.address}
        if self.store is None:
            job = engine_task.engine_job(spec, self._blob(launch, "map", layout.FUNCTION),
                                         self._blob(launch, "combine", layout.COMBINER), None)
            scheduler = Scheduler(ray, job, store, False, options, chunks, combine, window)
            with _running_lock:
                for key in [k for k, s in _running.items() if s.finished]:
                    del _running[key]
                _running[spec.id] = scheduler
            threading.Thread(target=scheduler.run, daemon=True, name=f"deploy-ray-{spec.id}").start()
            return {**handle, "mode": "client", "client": {"host": HOST, "pid": os.getpid()}}
        job = engine_task.engine_job(spec, None, None, store.uri)
        name = f"deploy-job-{spec.id}"
        try:                                        # a resumed job: the old driver is gone
            ray.kill(ray.get_actor(name, namespace=conn.NAMESPACE))
        except ValueError:
            pass
        actor_options: dict[str, Any] = {
            "name": name, "namespace": conn.NAMESPACE, "lifetime": "detached", "num_cpus": 0,
            "max_concurrency": 4, "max_restarts": 0, "resources": {"node:__internal_head__": 0.001}}
        if options.get("runtime_env"):
            actor_options["runtime_env"] = options["runtime_env"]
        actor = ray.remote(JobDriver).options(**actor_options).remote(job, options, chunks, combine, window)
        try:
            ray.get(actor.ready.remote(), timeout=max(60.0, self.timeout))
        except Exception as exc:
            try:
                ray.kill(actor)
            except Exception:
                pass
            raise RayClusterError(f"the job's driver actor did not start on the Ray cluster at "
                                  f"{self.address}: {type(exc).__name__}: {exc}") from None
        return {**handle, "mode": "actor", "actor": name}

    def _blob(self, launch: Launch, key: str, path: str) -> bytes | None:
        """The job's pickled function or combiner, from the job directory (or pickled now
        when it was too large to keep there)."""
        if key == "combine" and not launch.spec.has_combiner:
            return None
        if launch.spec.function_stored:
            return launch.store.get(path)
        if not launch.functions or key not in launch.functions:
            raise RayClusterError(f"job {launch.spec.name}: its function is not in the job directory")
        return self.serialize(launch.functions[key])

    # -- control -------------------------------------------------------------------------

    def _actor(self, handle: dict[str, Any]) -> Any:
        """The job's driver actor, or None when it is gone."""
        ray = conn.connect(self.address, self.timeout)
        try:
            return ray.get_actor(handle["actor"], namespace=conn.NAMESPACE)
        except ValueError:
            return None

    def cancel(self, handle: dict[str, Any]) -> None:
        """Cancel the job's Ray tasks (running ones are killed) and wait until they ended. A
        job driven by another client process stops when that process sees the cancel marker."""
        if handle.get("mode") == "actor":
            actor = self._actor(handle)
            if actor is not None:
                ray = conn.connect(self.address, self.timeout)
                try:
                    ray.get(actor.cancel.remote(), timeout=120)
                except Exception:
                    pass                # it ended meanwhile
            return
        scheduler = _running.get(handle.get("job", ""))
        if scheduler is not None:
            scheduler.stop("the job was canceled")

    def alive(self, handle: dict[str, Any]) -> bool | None:
        if handle.get("mode") == "actor":
            try:
                return self._actor(handle) is not None
            except (RayClusterError, ImportError):
                return None
        scheduler = _running.get(handle.get("job", ""))
        if scheduler is not None:
            return not scheduler.finished
        client = handle.get("client") or {}
        if client.get("host") != HOST:
            return None
        return client.get("pid") != os.getpid() and process_alive(int(client.get("pid", 0)))

    def wait_for_change(self, handle: dict[str, Any], timeout: float) -> None:
        """For a job this process drives: return as soon as a chunk's rows are published."""
        scheduler = _running.get(handle.get("job", ""))
        if scheduler is None or scheduler.finished:
            time.sleep(timeout)
            return
        seen = self._seen.get(handle["job"], scheduler.version)
        self._seen[handle["job"]] = scheduler.wait_for_change(seen, timeout)

    def describe_failure(self, handle: dict[str, Any]) -> str | None:
        scheduler = _running.get(handle.get("job", ""))
        if scheduler is not None and scheduler.error:
            return scheduler.error
        if handle.get("mode") == "actor":
            return (f"the job's Ray driver actor {handle.get('actor')} is gone from the cluster at "
                    f"{self.address} (the head was restarted, or the actor was killed)")
        client = handle.get("client") or {}
        if client.get("pid") != os.getpid():
            return (f"the process that drove the job on Ray and kept its directory (pid "
                    f"{client.get('pid')} on {client.get('host')}) has exited; a job whose "
                    "directory is on the client needs that client alive (give the cluster a "
                    "shared store= for jobs that outlive it)")
        return None


def create(name: str, address: str, store: str | None = None,
           additional_packages: list[str] | None = None, timeout: float = 10.0) -> RayCluster:
    """Define a Ray cluster environment, check it (the head answers, the cluster runs this
    client's Python and cloudpickle) and save it by name. RayClusterError names the
    address when it cannot be used; nothing is saved then."""
    return RayCluster(name, address, store=store, additional_packages=additional_packages,
                      timeout=timeout).prepare().save()


def load(name: str) -> RayCluster:
    """The saved Ray cluster `name` (connects when first used)."""
    return RayCluster.load(name)
