"""One YARN application of a HadoopCluster: its containers' command, its submission, and
watching it. Every application is DistributedShell running hadoop_bootstrap in N containers;
what the bootstrap then does (run workers, or install packages) is in its configuration.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ...store import StorageError
from . import distributed_shell as ds
from . import bootstrap as hadoop_bootstrap
from .connect import Cluster, Facts, HadoopError
from .stage import WORKER_NEEDS
from .yarn import FINAL_STATES, ResourceManager, YarnError

STAGING = "staging"          # <dist_path>/staging/<app id>/: the AM's files, removed when it ends
PYTHON_ENV_DIR = "python_env"
ACCEPT_SECONDS = 30.0        # how long submit() watches a new application for a refusal


@dataclasses.dataclass
class AppPlan:
    """What every application of an environment needs: the cluster's facts, the staged
    files (absolute HDFS paths), the interpreter and the container sizes."""

    facts: Facts
    runtime: dict[str, str]
    python: str
    python_env: str | None = None
    packages: str | None = None
    am_jar: str | None = None
    container_size: int = 2048
    num_vcores: int = 1
    am_memory: int = 512
    queue: str | None = None
    gpus: int = 0                # per container (per-task gpu=)


def _python_env_fetch(plan: AppPlan, user: str) -> str:
    """Shell that unpacks python_env into ./python_env with the node's own Hadoop client
    (java + yarn.application.classpath): no Python is needed to get Python."""
    source = shlex.quote(plan.facts.fs_uri + plan.python_env)
    classpath = ":".join(c.replace("{{", "$").replace("}}", "") for c in plan.facts.classpath)
    target = PYTHON_ENV_DIR
    return (f"if [ ! -d {target} ]; then mkdir -p {target}.tmp && "
            f"HADOOP_USER_NAME={shlex.quote(user)} $JAVA_HOME/bin/java -Xmx256m -cp {classpath} "
            f"org.apache.hadoop.fs.FsShell -copyToLocal {source} env.tar.gz && "
            f"tar -xzf env.tar.gz -C {target}.tmp && rm -f env.tar.gz && mv {target}.tmp {target} "
            f"|| {{ echo deploy: cannot fetch python_env {source} with the Hadoop client of node "
            f"$(hostname) >&2; exit 70; }}; fi")


def container_command(cluster: Cluster, plan: AppPlan, config: dict[str, Any]) -> str:
    """The shell command of every container: fetch python_env if any, check the
    interpreter, run hadoop_bootstrap (inline, base64) with its configuration."""
    root = cluster.root
    config = {**config, "webhdfs": root.urls, "user": root.user,
              "python": list(sys.version_info[:2]), "runtime": plan.runtime["runtime"],
              "libs": plan.runtime["libs"], "needs": list(WORKER_NEEDS), "packages": plan.packages}
    stub = base64.b64encode(Path(hadoop_bootstrap.__file__).read_bytes()).decode()
    encoded = base64.b64encode(json.dumps(config).encode()).decode()
    python = shlex.quote(plan.python)
    parts = ["set -f"]                    # classpath wildcards are Java's, not the shell's
    if plan.python_env:
        parts.append(_python_env_fetch(plan, root.user))
    parts.append(f"command -v {python} >/dev/null 2>&1 || {{ echo deploy: no Python interpreter "
                 f"{python} on node $(hostname) - set python= to one present on every node, or "
                 f"python_env= >&2; exit 127; }}")
    parts.append(f"exec {python} -c 'import base64,sys;exec(base64.b64decode(sys.argv[1]))' "
                 f"{stub} {encoded}")
    return ds.check_command("{ " + "; ".join(parts) + "; }")


def submit(cluster: Cluster, plan: AppPlan, name: str, containers: int,
           config: dict[str, Any], tags: list[str]) -> tuple[str, str]:
    """Submit a DistributedShell application running `config` in `containers` containers
    and wait until YARN accepts it: (application id, staging dir). HadoopError when YARN
    refuses it (its reason), or HDFS / the ResourceManager fail."""
    root, rm = cluster.root, cluster.rm
    try:
        app_id = rm.new_application()["application-id"]
    except YarnError as exc:
        raise HadoopError(str(exc)) from None
    staging = f"{STAGING}/{app_id}"
    commands = f"{staging}/{ds.COMMANDS_FILE}"
    fs = plan.facts.fs_uri
    try:
        root.put(commands, ds.write_utf(container_command(cluster, plan, config)))
        resources = {ds.COMMANDS_FILE: ds.local_resource(fs + root.absolute(commands),
                                                         root.status(commands))}
        if plan.am_jar:
            resources[ds.AM_JAR] = ds.local_resource(fs + plan.am_jar,
                                                     root.subdir(plan.am_jar).status(""))
        command = ds.am_command(
            num_containers=containers, container_memory=plan.container_size,
            container_vcores=plan.num_vcores, home_uri=fs + root.root, staging_name=STAGING,
            am_heap_mb=max(128, plan.am_memory * 3 // 4), add_opens=plan.facts.add_opens,
            container_gpus=plan.gpus)
        rm.submit(ds.submission(app_id=app_id, name=name, queue=plan.queue,
                                am_memory=plan.am_memory, resources=resources,
                                classpath=plan.facts.classpath, command=command,
                                tags=["deploy", *tags]))
        await_acceptance(rm, app_id)
    except BaseException as exc:
        try:
            root.delete(staging)
        except Exception:
            pass
        if isinstance(exc, (YarnError, StorageError)):
            raise HadoopError(str(exc)) from None
        raise
    return app_id, staging


def await_acceptance(rm: ResourceManager, app_id: str) -> None:
    """Watch a new application until YARN accepts it; HadoopError with YARN's diagnostics
    when it refuses it (a non-leaf queue, an ACL, a limit)."""
    deadline = time.monotonic() + ACCEPT_SECONDS
    delay = 0.05
    while time.monotonic() < deadline:
        report = rm.app(app_id)
        if report["state"] in ("ACCEPTED", "RUNNING", "FINISHED"):
            return                       # a failure from here on is the job's to report
        if report["state"] in FINAL_STATES:
            raise HadoopError(f"YARN rejected application {app_id} ({report['state']}): "
                              f"{(report.get('diagnostics') or '').strip()[:2000]}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def wait_final(rm: ResourceManager, app_id: str, timeout: float) -> dict[str, Any]:
    """The report of the application once it ended; killed, and HadoopError, after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        report = rm.app(app_id)
        if report["state"] in FINAL_STATES:
            return report
        if time.monotonic() > deadline:
            rm.kill(app_id)
            raise HadoopError(f"YARN application {app_id} still {report['state']} after {timeout} s")
        time.sleep(0.5)


def describe(report: dict[str, Any]) -> str:
    """An ended application in words: state, final status, diagnostics, where its logs are."""
    diagnostics = (report.get("diagnostics") or "").strip()
    return (f"YARN application {report['id']} {report['state']} ({report.get('finalStatus')})"
            + (f": {diagnostics[:3000]}" if diagnostics else "")
            + (f" [ApplicationMaster logs: {report['amContainerLogs']}; container logs: "
               "job.environment.container_logs(job)]" if report.get("amContainerLogs") else ""))
