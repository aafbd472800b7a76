"""HadoopCluster: workers in YARN containers, the job directory on HDFS, nothing but HTTP
from the client (WebHDFS and the ResourceManager REST API: no Java, no Hadoop install).

    hadoop = deploy.hadoop_cluster.create('add_hadoop', dist_path='hdfs:///user/me/deploy',
                                          hadoop_conf_dir='~/yarn-conf', num_containers=3)
    job = deploy.map_job.create(add, params, environment=hadoop)   # or environment='add_hadoop'

Each job is one YARN application whose ApplicationMaster is Hadoop's DistributedShell: it
starts `num_containers` containers of `container_size` MB and `num_vcores` cores, each
running `bootstrap` (which fetches the runtime from HDFS) and then the worker loop on
the job directory, `<dist_path>/jobs/<job id>`. The other pieces of this folder: `connect`
(addresses and checks), `stage` (files on HDFS), `app` (the application), `logs`. The README's
Hadoop section explains the design and the one-time set-up of a cluster.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable

from ...store import hadoop_conf
from ...store import StorageError
from ...store.hdfs import HdfsStorage
from .. import by_value
from . import app as hadoop_app, connect as hadoop_connect, logs as hadoop_logs, stage as hadoop_stage
from ..base import Environment, HostCapacity, Launch, constructor_settings, fit_hosts, positive_int
from .connect import Cluster, HadoopError
from .yarn import LIVE_STATES, YarnError

PACKAGES_TIMEOUT = 1800.0     # seconds a pip install on the cluster may take
TASK_OVERHEAD_MB = 256        # a one-task container's memory beyond the task's memory_gb: the
                              # worker and its task process's own interpreter (YARN counts both)


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{what} must be a list of strings")
    return list(value)


class HadoopCluster(Environment):
    """Workers in YARN containers; the job directory under dist_path on HDFS."""

    kind = "hadoop"

    def __init__(self, name: str, dist_path: str, hadoop_conf_dir: str | None = None,
                 webhdfs_url: str | list[str] | None = None,
                 resourcemanager_url: str | list[str] | None = None, user: str | None = None,
                 num_containers: int = 2, container_size: int = 2048, num_vcores: int = 1,
                 queue: str | None = None, python: str | None = None,
                 python_env: str | None = None, additional_packages: list[str] | None = None,
                 pip_options: list[str] | None = None, distributed_shell_jar: str | None = None,
                 am_memory: int = 512) -> None:
        super().__init__(name)
        if not isinstance(dist_path, str) or not dist_path.strip():
            raise ValueError("dist_path must be an HDFS path, e.g. 'hdfs:///user/me/deploy'")
        hadoop_connect.split_dist_path(dist_path.strip())
        self.dist_path = dist_path.strip()
        self.webhdfs_url = ",".join(hadoop_connect.url_list(webhdfs_url)) or None
        self.resourcemanager_url = ",".join(hadoop_connect.url_list(resourcemanager_url)) or None
        explicit = self.webhdfs_url and self.resourcemanager_url
        # $HADOOP_CONF_DIR is recorded when it is used, so other processes find the same cluster
        self.hadoop_conf_dir = hadoop_conf_dir or (None if explicit else hadoop_conf.conf_dir_from_env())
        if not (self.hadoop_conf_dir or explicit):
            raise ValueError("say where the cluster is: hadoop_conf_dir= (or $HADOOP_CONF_DIR), "
                             "or both webhdfs_url= and resourcemanager_url=")
        self.user = user
        self.num_containers = positive_int(num_containers, "num_containers")
        self.container_size = positive_int(container_size, "container_size (MB)")
        self.num_vcores = positive_int(num_vcores, "num_vcores")
        self.am_memory = positive_int(am_memory, "am_memory (MB)")
        if queue is not None and (not isinstance(queue, str) or not queue.strip()):
            raise ValueError(f"queue must be a queue name, got {queue!r}")
        self.queue = queue
        for label, value in (("python", python), ("python_env", python_env),
                             ("distributed_shell_jar", distributed_shell_jar)):
            if value is not None and (not isinstance(value, str) or not value.strip() or '"' in value):
                raise ValueError(f"{label} must be a path without double quotes, got {value!r}")
        self.python = python
        self.python_env = python_env
        self.additional_packages = _strings(additional_packages, "additional_packages")
        self.pip_options = _strings(pip_options, "pip_options")
        self.distributed_shell_jar = distributed_shell_jar
        self._cluster: Cluster | None = None
        self._plan: hadoop_app.AppPlan | None = None

    def settings(self) -> dict[str, Any]:
        """Addresses, paths and sizes (never credentials: there are none under simple auth)."""
        return constructor_settings(self)

    # -- preparing the cluster ----------------------------------------------------------

    def _connect(self) -> Cluster:
        """The cluster's addresses, resolved once per process (no I/O)."""
        if self._cluster is None:
            self._cluster = hadoop_connect.connect(self.dist_path, self.hadoop_conf_dir,
                                                   self.webhdfs_url, self.resourcemanager_url,
                                                   self.user)
        return self._cluster

    def _python(self) -> str:
        if self.python:
            return self.python
        return f"./{hadoop_app.PYTHON_ENV_DIR}/bin/python" if self.python_env else "python3"

    def prepare(self) -> "HadoopCluster":
        """Check the cluster and stage what containers fetch (once per process): HadoopError
        naming the cause when the NameNode or ResourceManager cannot be reached, dist_path
        is not writable, the queue does not exist, or the containers exceed the maximum."""
        if self._plan is not None:
            return self
        cluster = self._connect()
        hadoop_connect.check_dist_path(cluster, hadoop_app.STAGING)
        facts = hadoop_connect.check_yarn(cluster, self.queue, {
            "container_size": self.container_size, "am_memory": self.am_memory,
            "num_vcores": self.num_vcores})
        root = cluster.root
        try:
            plan = hadoop_app.AppPlan(facts, hadoop_stage.stage_runtime(root), self._python(),
                                      container_size=self.container_size,
                                      num_vcores=self.num_vcores, am_memory=self.am_memory,
                                      queue=self.queue)
            if self.distributed_shell_jar:
                plan.am_jar = hadoop_stage.stage_file(root, self.distributed_shell_jar,
                                                      "distributed_shell_jar")
            if self.python_env:
                plan.python_env = hadoop_stage.stage_file(root, self.python_env, "python_env")
        except (FileNotFoundError, ValueError, StorageError) as exc:
            raise HadoopError(str(exc)) from None
        if self.additional_packages:
            plan.packages = self._build_packages(cluster, plan)
        self._plan = plan
        return self

    def _build_packages(self, cluster: Cluster, plan: hadoop_app.AppPlan) -> str:
        """pip-install additional_packages on a node (one container), once per package set;
        the archive's HDFS path. HadoopError with pip's output when it fails."""
        root = cluster.root
        try:
            digest, items = hadoop_stage.packages_plan(
                root, self.additional_packages, self.pip_options,
                [list(sys.version_info[:2]), plan.python, self.python_env])
        except (FileNotFoundError, ValueError) as exc:
            raise HadoopError(str(exc)) from None
        target, log = f"packages/{digest}.tar.gz", f"packages/{digest}.log"
        if root.status(target) is None:
            config = {"mode": "packages", "dist": root.uri, "install": items,
                      "pip_options": self.pip_options, "target": target, "log": log}
            app_id, _ = hadoop_app.submit(cluster, plan, f"deploy-{self.name}-packages", 1, config,
                                          [f"deploy-packages-{digest}"])
            report = hadoop_app.wait_final(cluster.rm, app_id, PACKAGES_TIMEOUT)
            if root.status(target) is None:
                try:
                    output = root.get(log).decode(errors="replace")
                except FileNotFoundError:
                    output = hadoop_app.describe(report)
                tail = "\n".join(output.strip().splitlines()[-15:])
                raise HadoopError(f"pip install of additional_packages {self.additional_packages} "
                                  f"failed on the cluster (YARN application {app_id}):\n{tail}")
        return root.absolute(target)

    # -- the Environment contract -------------------------------------------------------

    def num_workers(self) -> int:
        return self.num_containers * self.num_vcores

    def get_num_workers(self) -> int:
        """GraphLab's name: workers per job (containers x vcores)."""
        return self.num_workers()

    def capacity(self) -> list[HostCapacity]:
        """The running NodeManagers as one-task containers can use them: vcores, and memory
        less the container's own overhead, each within the largest container YARN grants."""
        self.prepare()
        facts = self._plan.facts
        try:
            nodes = self._connect().rm.nodes()
        except YarnError as exc:
            raise HadoopError(str(exc)) from None
        return [HostCapacity(n["name"], min(n["vcores"], facts.max_vcores),
                             max(0, min(n["memory_mb"], facts.max_memory) - TASK_OVERHEAD_MB) / 1024,
                             n["gpus"]) for n in nodes]

    def task_slots(self, resources: dict[str, float] | None) -> int:
        """Tasks at once: the cluster's workers (containers x vcores), fewer when one-task
        containers sized by `resources` fit fewer times into the NodeManagers."""
        if not resources:
            return self.num_workers()
        return min(self.num_workers(), sum(fit_hosts(self.capacity(), resources, noun="node")))

    def _container(self, resources: dict[str, float] | None) -> tuple[hadoop_app.AppPlan, int]:
        """The application plan for a job and the worker processes per container: with
        per-task resources one task per container, sized from them (memory_gb -> container
        memory, cpu -> vcores, gpu -> yarn.io/gpu); else the cluster's own sizes."""
        if not resources:
            return self._plan, self.num_vcores
        memory = resources.get("memory_gb")
        return dataclasses.replace(
            self._plan, container_size=(math.ceil(memory * 1024) + TASK_OVERHEAD_MB if memory
                                        else self.container_size),
            num_vcores=math.ceil(resources.get("cpu") or 1),
            gpus=int(resources.get("gpu") or 0)), 1

    def job_store(self, job_id: str) -> HdfsStorage:
        """<dist_path>/jobs/<job id>, on a cluster checked first: a bad setting is an error
        before anything is written."""
        self.prepare()
        return self._connect().root.subdir(f"jobs/{job_id}")

    def serialize(self, fn: Callable) -> bytes:
        """Containers lack the caller's own modules: those travel by value."""
        return by_value.dumps(fn)

    def launch(self, launch: Launch) -> dict[str, Any]:
        """One YARN application per job: DistributedShell starting the worker containers."""
        self.prepare()
        plan, processes = self._container(launch.spec.resources)
        containers = max(1, min(self.num_containers * self.num_vcores // processes,
                                math.ceil(launch.workers / processes)))
        config = {"mode": "worker", "store": launch.store.uri, "processes": processes}
        app_id, staging = hadoop_app.submit(self._connect(), plan,
                                            f"deploy-{launch.spec.name}", containers, config,
                                            [f"deploy-job-{launch.spec.id}"])
        return {"app": app_id, "staging": staging, "containers": containers,
                "container_mb": plan.container_size, "container_vcores": plan.num_vcores}

    def _report(self, handle: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self._connect().rm.app(handle["app"])
        except (YarnError, HadoopError, KeyError, ValueError):
            return None

    def alive(self, handle: dict[str, Any]) -> bool | None:
        """Whether the application may still run workers (None: the RM cannot tell)."""
        report = self._report(handle)
        return None if report is None else report["state"] in LIVE_STATES

    def cancel(self, handle: dict[str, Any]) -> None:
        """Kill the YARN application (its containers with it) and remove its staging files."""
        if not handle.get("app"):
            return
        cluster = self._connect()
        try:
            cluster.rm.kill(handle["app"])
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and cluster.rm.app(handle["app"])["state"] in LIVE_STATES:
                time.sleep(0.1)
        except YarnError:
            pass
        if handle.get("staging"):
            try:
                cluster.root.delete(handle["staging"])
            except StorageError:
                pass

    def describe_failure(self, handle: dict[str, Any]) -> str | None:
        """YARN's word on an application that ended: state, final status, diagnostics."""
        report = self._report(handle)
        if report is None:
            return (f"YARN application {handle.get('app')}: the ResourceManager cannot be reached"
                    if handle.get("app") else None)
        return None if report["state"] in LIVE_STATES else hadoop_app.describe(report)

    def container_logs(self, job: Any, files: tuple[str, ...] = ("stdout", "stderr")) -> str:
        """The YARN logs of a job's containers (a Job or its id) and of its ApplicationMaster,
        from the NodeManagers: the workers' own output, beside the tasks' in job.get_logs()."""
        cluster = self._connect()
        store = cluster.root.subdir(f"jobs/{job if isinstance(job, str) else job.id}")
        return hadoop_logs.container_logs(store, cluster.rm, cluster.root.user, files)

    def stop(self) -> None:
        """Close the HTTP sessions (jobs and their applications are not touched)."""
        if self._cluster is not None:
            self._cluster.rm.close()


def create(name: str, dist_path: str, hadoop_conf_dir: str | None = None,
           webhdfs_url: str | list[str] | None = None,
           resourcemanager_url: str | list[str] | None = None, user: str | None = None,
           num_containers: int = 2, container_size: int = 2048, num_vcores: int = 1,
           queue: str | None = None, python: str | None = None, python_env: str | None = None,
           additional_packages: list[str] | None = None, **options: Any) -> HadoopCluster:
    """Define a Hadoop cluster, check it (NameNode, ResourceManager, dist_path, queue, sizes),
    stage the runtime (and build additional_packages) on HDFS, and save it by name.

    Raises HadoopError naming the cause before anything is saved. Other options:
    pip_options, distributed_shell_jar, am_memory.
    """
    cluster = HadoopCluster(name, dist_path, hadoop_conf_dir=hadoop_conf_dir,
                            webhdfs_url=webhdfs_url, resourcemanager_url=resourcemanager_url,
                            user=user, num_containers=num_containers,
                            container_size=container_size, num_vcores=num_vcores, queue=queue,
                            python=python, python_env=python_env,
                            additional_packages=additional_packages, **options)
    cluster.prepare()
    return cluster.save()


def load(name: str) -> HadoopCluster:
    """The saved cluster `name` (it connects when first used)."""
    return HadoopCluster.load(name)


__all__ = ["HadoopCluster", "HadoopError", "create", "load"]
