"""Every test gets its own deploy home (registry, local jobs) and config."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest_ssh import moto_server, s3_env, ssh_hosts  # noqa: F401  (cluster fixtures)
from conftest_hadoop import hadoop_cluster  # noqa: F401  (the Hadoop mini cluster)
from conftest_dask import dask_cluster, dask_env  # noqa: F401  (a real Dask cluster)
from conftest_ray import ray_cluster, ray_env  # noqa: F401  (a real Ray cluster)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def deploy_home(tmp_path, monkeypatch):
    home = tmp_path / "deploy-home"
    monkeypatch.setenv("DEPLOY_HOME", str(home))
    monkeypatch.setenv("DEPLOY_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("DEPLOY_PROGRESS", "false")
    # short leases keep take-over tests quick; the defaults are for real clusters
    monkeypatch.setenv("DEPLOY_LEASE_SECONDS", "3")
    monkeypatch.setenv("DEPLOY_HEARTBEAT_SECONDS", "0.5")
    yield home
    _stop_leftover_workers(home)


def _stop_leftover_workers(home):
    """A failing test must not leave detached workers running into the next one."""
    import json
    from deploy.worker.processes import stop_process_groups
    jobs = home / "jobs"
    if not jobs.is_dir():
        return
    for launch in jobs.glob("*/launch.json"):
        try:
            pids = json.loads(launch.read_text())["handle"].get("pids", [])
        except (ValueError, KeyError, AttributeError):
            continue
        stop_process_groups(pids, grace=0.5)


def run_python(code: str, *args: str, timeout: float = 60, env: dict | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run a snippet in a brand-new Python process (with this test's DEPLOY_HOME)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def registry_bytes(home) -> bytes:
    """Everything the registry holds on disk: the database and its write-ahead log (recent
    writes live there until sqlite checkpoints them)."""
    data = b""
    for name in ("registry.db", "registry.db-wal"):
        try:
            with open(os.path.join(str(home), name), "rb") as f:
                data += f.read()
        except FileNotFoundError:
            pass
    return data
