"""EC2 test fixtures: moto (its own process) made real by tests/infra/ec2_hypervisor.py.

`ec2_world` (session): the moto server, a VPC and subnet in 127.N.0.0/16 (N random per
session; moto gives instances addresses from .4 up, every one of them local), a bucket, a
price file (moto has no Pricing API and one constant spot price), the hypervisor (a real
sshd at each running instance's private address, with the instance's own role credentials)
and the capacity forwarder (EC2 requests go through it: AWS_ENDPOINT_URL_EC2).
`ec2` (per test): the AWS settings of a client pointed at them; `.config(**kw)` an Ec2Config
for the test VPC. Imported by the EC2 tests and the behaviour suite.

How workers reach S3 and EC2 without the client's keys: on AWS an instance's processes get
its role's credentials from the instance metadata service; here the hypervisor does the same
by assuming the instance profile's role (STS on moto) and putting the temporary credentials,
the endpoint and the region in the environment of the instance's SSH sessions.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from waiting import wait_for

REGION = "us-east-2"
# USD per hour; sizes as AWS lists them. r5n.2xlarge spot is the cheapest per task of 4 CPU / 32 GB.
PRICES = {
    "t3.medium": {"vcpu": 2, "memory_gb": 4, "on_demand": 0.0416, "spot": 0.0125, "interruption_pct": 7.5},
    "m5.large": {"vcpu": 2, "memory_gb": 8, "on_demand": 0.096, "spot": 0.035, "interruption_pct": 2.5},
    "m5.xlarge": {"vcpu": 4, "memory_gb": 16, "on_demand": 0.192, "spot": 0.0712, "interruption_pct": 2.5},
    "c5.large": {"vcpu": 2, "memory_gb": 4, "on_demand": 0.085, "spot": 0.031, "interruption_pct": 22.5},
    "r5.xlarge": {"vcpu": 4, "memory_gb": 32, "on_demand": 0.252, "spot": 0.1002, "interruption_pct": 12.5},
    "r5n.2xlarge": {"vcpu": 8, "memory_gb": 64, "on_demand": 0.596, "spot": 0.0898, "interruption_pct": 2.5},
}


@dataclasses.dataclass
class World:
    endpoint: str                 # moto
    forwarder: Any                # CapacityForwarder (EC2 goes through it)
    hypervisor: Any               # Hypervisor
    vpc_id: str
    subnet_id: str
    cidr: str
    bucket: str
    price_file: str
    _clients: dict = dataclasses.field(default_factory=dict)

    def config(self, **options: Any) -> Any:
        """An Ec2Config for the test VPC (ssh_user: the hypervisor's login user)."""
        import deploy
        base = dict(region=REGION, subnet_id=self.subnet_id, ssh_user=self.hypervisor.user,
                    price_file=self.price_file)
        return deploy.Ec2Config(**{**base, **options})

    def aws(self, service: str) -> Any:
        """A client of the test's own (not the cluster's) for checking what exists."""
        if service not in self._clients:
            import boto3
            self._clients[service] = boto3.session.Session(
                aws_access_key_id="checker", aws_secret_access_key="checker").client(
                service, region_name=REGION, endpoint_url=self.endpoint)
        return self._clients[service]

    def cluster_instances(self, cluster_id: str, states: tuple[str, ...] = ("pending", "running")) -> list[dict]:
        found = []
        for r in self.aws("ec2").describe_instances(Filters=[
                {"Name": "tag:deploy:cluster", "Values": [cluster_id]},
                {"Name": "instance-state-name", "Values": list(states)}])["Reservations"]:
            found.extend(r["Instances"])
        return found

    def leftovers(self, cluster_id: str) -> dict[str, list]:
        """Everything tagged or named for the cluster that still exists."""
        ec2, iam = self.aws("ec2"), self.aws("iam")
        tag = [{"Name": "tag:deploy:cluster", "Values": [cluster_id]}]
        roles = [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(cluster_id)]
        profiles = [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]
                    if p["InstanceProfileName"].startswith(cluster_id)]
        return {"instances": [i["InstanceId"] for i in self.cluster_instances(cluster_id)],
                "key_pairs": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=tag)["KeyPairs"]],
                "security_groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]],
                "roles": roles, "instance_profiles": profiles}


_octet_locks: list[int] = []       # held for the session: concurrent sessions never share a subnet


def _free_octet() -> int:
    """A 127.N second octet no other test session holds (a lock file each) and with nothing
    listening on port 22 at its first addresses."""
    import fcntl
    lock_dir = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"
    while True:
        octet = random.randint(60, 250)
        fd = os.open(f"{lock_dir}/deploy-ec2-subnet-127.{octet}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for last in range(4, 8):
                with socket.socket() as s:
                    s.bind((f"127.{octet}.0.{last}", 22))
        except OSError:
            os.close(fd)
            continue
        _octet_locks.append(fd)
        return octet


_shared: dict[str, Any] = {"world": None, "users": 0, "close": None}


@pytest.fixture(scope="session")
def ec2_world(moto_server, tmp_path_factory):
    """One world per test session: a module importing this fixture gets its own fixture
    object (test_ec2_cluster and test_behaviour both do), so they share this one; the
    last to finish stops it. Two hypervisors would both answer for every instance."""
    if _shared["world"] is None:
        _shared["world"], _shared["close"] = _make_world(moto_server, tmp_path_factory)
    _shared["users"] += 1
    try:
        yield _shared["world"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            close, _shared["world"], _shared["close"] = _shared["close"], None, None
            close()


def _make_world(moto_server: str, tmp_path_factory: Any) -> tuple[World, Any]:
    from infra.ec2_hypervisor import CapacityForwarder, Hypervisor
    from infra.sshd_hosts import check_prerequisites
    problems = check_prerequisites()
    if problems:   # never skip: a green run must mean the EC2 tests ran
        pytest.fail("; ".join(problems) + " (scripts/test.sh installs them)")
    import boto3
    session = boto3.session.Session(aws_access_key_id="setup", aws_secret_access_key="setup")
    ec2 = session.client("ec2", region_name=REGION, endpoint_url=moto_server)
    octet = _free_octet()
    cidr = f"127.{octet}.0.0/16"
    vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.{octet}.0.0/20", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    bucket = "deploy-ec2-" + uuid.uuid4().hex[:10]
    session.client("s3", region_name=REGION, endpoint_url=moto_server).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    base = tmp_path_factory.mktemp("ec2")
    price_file = base / "prices.json"
    price_file.write_text(json.dumps({"replace_live_sources": True, "regions": {REGION: PRICES}}, indent=1))
    forwarder = CapacityForwarder(moto_server).start()
    hypervisor = Hypervisor(moto_server, [REGION], base / "login").start()

    def close() -> None:
        left = [i["InstanceId"] for r in ec2.describe_instances(Filters=[
            {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
                for i in r["Instances"]]
        if left:
            ec2.terminate_instances(InstanceIds=left)
        hypervisor.stop()
        forwarder.stop()
    return World(moto_server, forwarder, hypervisor, vpc, subnet, cidr, bucket, str(price_file)), close


def aws_environment(world: World, mp: Any) -> None:
    """The settings of a client of the test account: moto, EC2 through the forwarder."""
    for name, value in (("AWS_ENDPOINT_URL", world.endpoint), ("AWS_ENDPOINT_URL_EC2", world.forwarder.url),
                        ("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
                        ("AWS_DEFAULT_REGION", REGION)):
        mp.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        mp.delenv(name, raising=False)


@pytest.fixture
def ec2(ec2_world, monkeypatch):
    """The EC2 world with this test's client settings; the forwarder refuses nothing."""
    aws_environment(ec2_world, monkeypatch)
    ec2_world.forwarder.refuse.clear()
    yield ec2_world
    ec2_world.forwarder.refuse.clear()


# ---------------------------------------------------------------------------- behaviour suite

def group_members(pgids: set[int]) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in (b"Z", b"X") and int(fields[2]) in pgids:
            found.append(int(entry))
    return found


def _groups(handle: dict) -> set[int]:
    return {g for entry in handle.get("hosts", []) for g, _ in entry.get("groups", [])}


@pytest.fixture(scope="module")
def ec2_suite_env(ec2_world, tmp_path_factory):
    """An Ec2Cluster of three m5.large instances, one task each, made once for a module
    (timed) and stopped at its end, nothing left behind."""
    from deploy.environments.ec2.cluster import create
    mp = pytest.MonkeyPatch()
    aws_environment(ec2_world, mp)
    tmp = str(tmp_path_factory.mktemp("ec2-env"))
    inner = pytest.MonkeyPatch()
    inner.setenv("DEPLOY_HOME", os.path.join(tmp, "deploy-home"))
    inner.setenv("DEPLOY_CONFIG", os.path.join(tmp, "no-config.toml"))
    try:
        start = time.monotonic()
        env = create("behaviour-ec2", f"s3://{ec2_world.bucket}/suite",
                     ec2_world.config(instance_type="m5.large", cpu_per_task=2), num_hosts=3,
                     idle_shutdown_timeout=-1)
        print(f"\nec2_env: Ec2Cluster created in {time.monotonic() - start:.1f} s")
        yield env
        env.stop()
        assert not any(ec2_world.leftovers(env.id).values()), ec2_world.leftovers(env.id)
    finally:
        inner.undo()
        mp.undo()


def ec2_behaviour_env(request: Any, env_class: type, folder: str, deploy_home: Path):
    """The behaviour suite's `env` for kind "ec2": the module's cluster; afterwards no
    worker of the test's jobs may be left on the instances."""
    import deploy
    cluster = request.getfixturevalue("ec2_suite_env")

    class Ec2Env(env_class):
        def workers_gone(self, job: Any) -> bool:
            return not group_members(_groups(job._launch().get("handle") or {}))

    yield Ec2Env("ec2", cluster, 3, 90, folder)
    groups: set[int] = set()
    for name in deploy.jobs.names():
        groups |= _groups(deploy.jobs[name]._launch().get("handle") or {})
    try:
        wait_for(lambda: not group_members(groups), timeout=15, what="EC2 workers to end")
    finally:
        left = group_members(groups)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert not left, f"workers left on the instances: {left}"


__all__ = ["ec2_world", "ec2", "ec2_suite_env", "ec2_behaviour_env", "World", "REGION", "PRICES"]
