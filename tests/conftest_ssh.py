"""Session fixtures for the cluster tests: real OpenSSH hosts on loopback (tests/infra) and
an S3 server (moto, in its own process). Imported by conftest.py; started only when a test
asks for them."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from waiting import wait_for


@pytest.fixture(scope="session")
def ssh_hosts(tmp_path_factory):
    """Four sshd "hosts" (users deploysc1..4, or deploysd1..4 while another test session
    holds those; aliases host1..host4 in ssh_hosts.ssh_config_path); host3's sshd offers no
    SFTP (as hardened servers), host4 has no python3."""
    from infra.sshd_hosts import check_prerequisites, start_free
    problems = check_prerequisites()
    if problems:   # never skip: a green run must mean the cluster tests ran
        pytest.fail("; ".join(problems) + " (scripts/test.sh installs them; or deselect with -m 'not ssh')")
    hosts = start_free(tmp_path_factory.mktemp("sshd"), ("deploysc", "deploysd", "deployse", "deploysf"),
                       n=4, without_python={3}, without_sftp={2})     # the first set no session holds
    yield hosts
    hosts.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """An S3 endpoint URL served by `python -m moto.server` on 127.0.0.1."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: proc.poll() is not None or answers(port), timeout=60, what="moto server")
        if proc.poll() is not None:
            pytest.fail(f"moto server exited with {proc.returncode}: see {log.name}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    """AWS settings pointing boto3 at the moto server, with a fresh bucket; its name."""
    import uuid
    for name, value in (("AWS_ENDPOINT_URL", moto_server), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing-secret-" + uuid.uuid4().hex[:8]),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import boto3
    bucket = "deploy-" + uuid.uuid4().hex[:12]
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


__all__ = ["ssh_hosts", "moto_server", "s3_env"]
