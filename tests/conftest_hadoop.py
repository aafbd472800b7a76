"""Session fixture for the Hadoop tests: a real single-node Hadoop 3.4 cluster (HDFS + YARN,
tests/infra/hadoop_cluster.py), started once when a test asks for it. Imported by conftest.py.

HDFS permissions are on (the tests run as the superuser; one test writes as another user),
and the DataNodes' HDFS client retries closing a file after 20 ms instead of 400 ms: a small
file's close often waits for the DataNode's block report, and WebHDFS writes are all small."""
from __future__ import annotations

import pytest


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


__all__ = ["hadoop_cluster"]
