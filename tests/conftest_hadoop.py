"""Session fixture for the Hadoop tests: a real single-node Hadoop 3.4 cluster (HDFS + YARN,
tests/infra/hadoop_cluster.py), started once when a test asks for it. Imported by conftest.py.

HDFS permissions are on (the tests run as the superuser; one test writes as another user),
and the DataNodes' HDFS client retries closing a file after 20 ms instead of 400 ms: a small
file's close often waits for the DataNode's block report, and WebHDFS writes are all small."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

CONTAINER_PATH = "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"   # YARN's bash


def node_python() -> str | None:
    """None (the default: python3 on the nodes) when that has the client's minor version,
    else this interpreter."""
    found = shutil.which("python3", path=CONTAINER_PATH)
    if found:
        out = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
        if out == str(tuple(sys.version_info[:2])):
            return None
    return sys.executable


def pids_with_env(entry: str) -> list[int]:
    """Live processes whose environment holds `entry` (e.g. 'CONTAINER_ID=container_1_0001_')."""
    needle = entry.encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except (OSError, IndexError):
            continue
        if needle in environ and not zombie:
            found.append(int(pid))
    return found


@pytest.fixture(scope="session")
def hadoop_cluster():
    """The running cluster (`infra.hadoop_cluster.HadoopCluster`): webhdfs_url,
    resourcemanager_url, hadoop_conf_dir, user, distributedshell_jar, app(), kill_app()..."""
    from infra.hadoop_cluster import HadoopCluster, missing_prerequisites
    problems = missing_prerequisites()
    if problems:   # never skip: a green run must mean the cluster tests ran
        pytest.fail("; ".join(problems) + " (scripts/test.sh installs them; or deselect with -m 'not hadoop')")
    cluster = HadoopCluster(extra_conf={
        "dfs.permissions.enabled": True,
        "dfs.client.block.write.locateFollowingBlock.initial.delay.ms": 20})
    cluster.start()
    yield cluster
    cluster.stop()


__all__ = ["CONTAINER_PATH", "hadoop_cluster", "node_python", "pids_with_env"]
