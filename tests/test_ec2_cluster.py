"""EC2 clusters against moto (its own process) with a real sshd at each instance's address
(tests/conftest_ec2.py, tests/infra/ec2_hypervisor.py). Every AWS call of the code under
test goes over HTTP to moto (EC2 through the capacity forwarder); nothing is mocked."""
from __future__ import annotations

import glob
import json
import os
import re
import time
import uuid

import pytest

import deploy
from cli_run import run_main
from conftest import registry_bytes, run_python
from conftest_ec2 import REGION, ec2, ec2_world  # noqa: F401  (fixtures)
from deploy.environments.ec2.config import Ec2Error
from deploy.environments.ssh.connect import HostError
from waiting import wait_for

pytestmark = [pytest.mark.ssh, pytest.mark.ec2]   # needs the real sshd (root, openssh-server)

GRAPHLAB = [{"x": 20, "y": 20}, {"x": None, "y": 10}, {"x": 5, "y": 5}]
GOOD = [{"x": 20, "y": 20}, {"x": 10, "y": 10}, {"x": 5, "y": 5}]
COST_LINE = re.compile(r"^    i-[0-9a-f]+ \(127\.\d+\.\d+\.\d+\): [a-z0-9]+\.[a-z0-9]+ \(\d+ CPU/\d+\.\d GB\), "
                       r"(spot \(\$\d+\.\d{4}/hr, [\d.]+% chance of interruption\)|on-demand \(\$\d+\.\d{4}/hr\)), "
                       r"will run \d+ tasks? at a time$")


def add(x, y):
    return x + y


def add_combiner(**kwargs):
    return sum(kwargs.values())


def wait_file(folder: str, name: str, i: int) -> int:
    """Notes that it started on this host, then waits (a minute at most) for `name`."""
    open(os.path.join(folder, f"started-{i}-{os.environ.get('DEPLOY_HOST_LABEL')}-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(folder, name)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return i


@pytest.fixture
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("ec2-markers")
    os.chmod(path, 0o777)
    for parent in path.parents:         # the instances' user reaches it
        if str(parent).startswith("/tmp/pytest-of"):
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
    return str(path)


def test_graphlab_example_reuse_pinning_load_and_stop(ec2, capsys, deploy_home):
    """GraphLab's example: results [40, None, 10] and the combiner's 70, the host column the
    instances' addresses, an estimated cost; creating the cluster again reuses its running
    instances; a host key other than the pinned one is refused; another process loads the
    cluster from S3 and reopens its jobs; stop() leaves nothing behind."""
    s3_path = f"s3://{ec2.bucket}/graphlab"
    config = ec2.config(instance_type="m5.large", security_group="deploy-graphlab", cidr_ip=ec2.cidr,
                        tags={"team": "ml"})
    cluster = deploy.ec2_cluster.create("add_ec2", s3_path=s3_path, ec2_config=config, num_hosts=2,
                                        idle_shutdown_timeout=-1)
    try:
        out = capsys.readouterr().out
        assert "Launched 2 new EC2 instances (total $0.1920/hr) for 4 workers:" in out, out
        assert len([line for line in out.splitlines() if COST_LINE.match(line)]) == 2, out
        instances = ec2.cluster_instances(cluster.id)
        addresses = {i["PrivateIpAddress"] for i in instances}
        assert len(instances) == 2 and {"Key": "team", "Value": "ml"} in instances[0]["Tags"]

        bad = deploy.map_job.create(add, GRAPHLAB, name="graphlab-bad", environment="add_ec2")
        good = deploy.map_job.create(add, GOOD, name="graphlab-good", environment=cluster,
                                     combiner_function=add_combiner)
        assert bad.wait(timeout=60) == "Failed"
        assert bad.get_map_results() == [40, None, 10]
        metrics = bad.get_metrics()
        assert list(metrics.status) == ["Completed", "Failed", "Completed"]
        assert set(metrics.host) <= addresses, (set(metrics.host), addresses)
        assert good.get_results(timeout=60) == 70
        cost = good.get_estimated_cost()
        assert cost is not None and 0 < cost < 0.01
        assert good.get_metrics().attrs["estimated_cost_usd"] == cost
        assert "estimated cost: $" in good.summary()
        assert not glob.glob(str(ec2.hypervisor.home / ".deploy/remote/idle-*"))   # -1: no idle agent

        # create() again: the running instances are reused, nothing is launched
        capsys.readouterr()
        again = deploy.ec2_cluster.create("add_ec2", s3_path=s3_path, ec2_config=config, num_hosts=2,
                                          idle_shutdown_timeout=-1)
        out = capsys.readouterr().out
        assert "Launched" not in out and "4/4 workers allocated to existing EC2 instances: i-" in out, out
        assert {i["InstanceId"] for i in ec2.cluster_instances(cluster.id)} == {i["InstanceId"] for i in instances}

        # the host key is pinned: a state naming another key for an instance is refused
        state = again.state(reload=True)
        first = sorted(state["instances"])[0]
        pinned = state["instances"][first]["host_key"]
        from deploy.environments.ec2.hostkeys import generate
        state["instances"][first]["host_key"] = generate()[1]
        again._save_state()
        with pytest.raises(HostError, match="host key MISMATCH"):
            deploy.environments["add_ec2"].num_workers()
        state["instances"][first]["host_key"] = pinned
        again._save_state()

        # another process (its own deploy home: another machine's registry) loads the cluster
        other_home = deploy_home.parent / "other-home"
        key = os.path.join(cluster.dir, "id_ed25519")
        out = run_python(f"""
            import json, deploy
            ec2 = deploy.ec2_cluster.load({s3_path!r}, name='add_ec2', key_filename={key!r})
            print(json.dumps({{"results": deploy.jobs['graphlab-bad'].get_map_results(),
                              "combined": deploy.jobs['graphlab-good'].get_results(),
                              "more": deploy.map(lambda n: n * n, [1, 2, 3], environment='add_ec2')}}))
        """, env={"DEPLOY_HOME": str(other_home)}, timeout=180).stdout
        assert json.loads(out.splitlines()[-1]) == {"results": [40, None, 10], "combined": 70, "more": [1, 4, 9]}
    finally:
        cluster.stop()
    assert not any(ec2.leftovers(cluster.id).values()), ec2.leftovers(cluster.id)
    assert not os.path.exists(cluster.dir)
    assert not cluster._state_store().exists("state.json")
    wait_for(lambda: not any(ec2.hypervisor.instance(i["InstanceId"]) for i in instances), timeout=10,
             what="the instances' sshd to end")


def test_meadowrun_example_cost_lines_and_lost_instance_replaced(ec2, capsys):
    """No instance type: the cheapest fit for 4 CPU / 32 GB per task (r5n.2xlarge spot, 2
    tasks each) with meadowrun's cost lines; an instance that ends is replaced at the next
    job, which says which workers went to existing instances."""
    alloc = ec2.config(cpu_per_task=4, memory_gb_per_task=32, interruption_probability_threshold=15)
    mdr = deploy.ec2_cluster.create("mdr", s3_path=f"s3://{ec2.bucket}/mdr", ec2_config=alloc,
                                    num_concurrent_tasks=3, idle_shutdown_timeout=300)
    try:
        out = capsys.readouterr().out
        assert "Launched 2 new EC2 instances (total $0.1796/hr) for 3 workers:" in out, out
        lines = [line for line in out.splitlines() if COST_LINE.match(line)]
        assert len(lines) == 2 and all("r5n.2xlarge (8 CPU/64.0 GB), spot ($0.0898/hr, 2.5% chance of "
                                       "interruption), will run 2 tasks at a time" in line for line in lines), out
        assert deploy.map(lambda n: n ** n, [1, 2, 3, 4], environment=mdr) == [1, 4, 27, 256]

        oldest = min(ec2.cluster_instances(mdr.id), key=lambda i: i["LaunchTime"])
        victim = ec2.hypervisor.instance(oldest["InstanceId"])
        ec2.aws("ec2").terminate_instances(InstanceIds=[oldest["InstanceId"]])   # a spot interruption
        wait_for(lambda: not victim.running, timeout=15, what="the instance to end")
        capsys.readouterr()
        assert deploy.map(lambda n: n + 1, [1, 2, 3], environment="mdr") == [2, 3, 4]
        out = capsys.readouterr().out
        assert re.search(r"^2/3 workers allocated to existing EC2 instances: i-[0-9a-f]+ \(127\.[\d.]+\)$", out, re.M), out
        assert "Launched 1 new EC2 instance (total $0.0898/hr) for the remaining 1 worker:" in out, out
        assert len(ec2.cluster_instances(mdr.id)) == 2
    finally:
        mdr.stop()
    assert not any(ec2.leftovers(mdr.id).values())


def test_capacity_errors_fall_back_to_the_next_cheapest_and_say_so(ec2, capsys):
    """InsufficientInstanceCapacity for r5n.2xlarge spot, MaxSpotInstanceCountExceeded for
    r5.xlarge spot (real EC2 error responses from the forwarder): the next cheapest for one
    task, r5.xlarge on-demand, is launched, and each step is said."""
    ec2.forwarder.refuse.update({"r5n.2xlarge/spot": "InsufficientInstanceCapacity",
                                 "r5.xlarge/spot": "MaxSpotInstanceCountExceeded"})
    config = ec2.config(cpu_per_task=4, memory_gb_per_task=32)
    cluster = deploy.ec2_cluster.create("fallback", s3_path=f"s3://{ec2.bucket}/fallback", ec2_config=config,
                                        num_concurrent_tasks=1, idle_shutdown_timeout=-1)
    try:
        out = capsys.readouterr().out
        assert ("Could not launch r5n.2xlarge (spot): InsufficientInstanceCapacity: We currently do not have "
                "sufficient r5n.2xlarge capacity") in out, out
        assert "Could not launch r5.xlarge (spot): MaxSpotInstanceCountExceeded" in out, out
        assert "Launched 1 new EC2 instance (total $0.2520/hr) for 1 worker:" in out, out
        assert "r5.xlarge (4 CPU/32.0 GB), on-demand ($0.2520/hr), will run 1 task at a time" in out, out
        assert [i["InstanceType"] for i in ec2.cluster_instances(cluster.id)] == ["r5.xlarge"]
        assert ec2.forwarder.refused == [("r5n.2xlarge", "InsufficientInstanceCapacity"),
                                         ("r5.xlarge", "MaxSpotInstanceCountExceeded")]
    finally:
        cluster.stop()
    assert not any(ec2.leftovers(cluster.id).values())


def test_an_instance_terminated_mid_job_loses_nothing(ec2, folder):
    """Terminate the instance running task 0 while it runs: its chunk runs again on the other
    instance as a take-over (attempt 2), not as a retry (max_retries=0), and the job completes."""
    config = ec2.config(instance_type="m5.large", cpu_per_task=2)       # one task per instance
    cluster = deploy.ec2_cluster.create("midjob", s3_path=f"s3://{ec2.bucket}/midjob", ec2_config=config,
                                        num_hosts=2, idle_shutdown_timeout=-1)
    try:
        by_address = {i["PrivateIpAddress"]: i["InstanceId"] for i in ec2.cluster_instances(cluster.id)}
        job = deploy.map_job.create(wait_file, [{"folder": folder, "name": "go", "i": i} for i in range(2)],
                                    environment=cluster, chunk_size=1)
        started = wait_for(lambda: glob.glob(os.path.join(folder, "started-0-*")), timeout=60, what="task 0")
        address = os.path.basename(started[0]).split("-")[2]
        victim = ec2.hypervisor.instance(by_address[address])
        ec2.aws("ec2").terminate_instances(InstanceIds=[by_address[address]])
        wait_for(lambda: not victim.running, timeout=15, what="the instance to end")
        open(os.path.join(folder, "go"), "w").close()
        assert job.wait(timeout=90) == "Completed"
        assert job.get_map_results() == [0, 1]
        metrics = job.get_metrics()
        assert list(metrics.status) == ["Completed", "Completed"]
        assert metrics.attempt.iloc[0] == 2 and metrics.host.iloc[0] != address
        assert job.spec.max_retries == 0
    finally:
        cluster.stop()
    assert not any(ec2.leftovers(cluster.id).values())


def test_idle_instance_terminates_itself(ec2):
    """idle_shutdown_timeout=4: after its job the instance terminates itself through the EC2
    API with its own role (its agent says so in its log); the next job launches a new one."""
    config = ec2.config(instance_type="t3.medium")
    cluster = deploy.ec2_cluster.create("idle", s3_path=f"s3://{ec2.bucket}/idle", ec2_config=config,
                                        num_hosts=1, idle_shutdown_timeout=4, boot_timeout=60)
    try:
        first = ec2.cluster_instances(cluster.id)[0]["InstanceId"]
        assert deploy.map(add, [1, 2], [3, 4], environment=cluster) == [4, 6]
        wait_for(lambda: not ec2.cluster_instances(cluster.id), timeout=60, what="the idle instance to end")
        log = ec2.hypervisor.home / ".deploy" / "remote" / f"idle-{first}.log"
        assert f"idle for 4 s: terminating {first}" in log.read_text()
        assert deploy.map(add, [5], [6], environment=cluster) == [11], ec2.hypervisor.errors
        assert [i["InstanceId"] for i in ec2.cluster_instances(cluster.id)] != [first]
    finally:
        cluster.stop()
    assert not any(ec2.leftovers(cluster.id).values())


def test_bad_inputs_fail_clearly_and_leave_nothing(ec2, monkeypatch):
    """Each is a clear error before anything is created, or (quota, capacity) after what
    was created is deleted again."""
    s3_path = f"s3://{ec2.bucket}/bad"
    with pytest.raises(ValueError, match="not both"):
        ec2.config(security_group="a", security_group_id="sg-0123")
    with pytest.raises(ValueError, match="bad s3_path"):
        deploy.ec2_cluster.create("bad", "bucket/prefix", ec2.config(instance_type="m5.large"))
    cases = [
        (dict(region="xx-nowhere-1", instance_type="m5.large"), s3_path, "unknown region 'xx-nowhere-1'"),
        (dict(instance_type="m5.bogus"), s3_path, "unknown instance type 'm5.bogus'"),
        (dict(cpu_per_task=64, memory_gb_per_task=1), s3_path, "no EC2 instance fits 64 CPU / 1 GB per task"),
        (dict(instance_type="m5.large"), "s3://no-such-bucket-deploy/x", "bucket 'no-such-bucket-deploy' does not exist"),
    ]
    for options, path, message in cases:
        with pytest.raises(Ec2Error, match=re.escape(message)):
            deploy.ec2_cluster.create("bad", path, ec2.config(**options))
    ids = {deploy.ec2_cluster.cluster_id("bad", p) for p in (s3_path, "s3://no-such-bucket-deploy/x")}

    ec2.forwarder.refuse["*"] = "VcpuLimitExceeded"         # a quota: the only type cannot start
    with pytest.raises(Ec2Error, match="VcpuLimitExceeded.*vCPU limit"):
        deploy.ec2_cluster.create("bad", s3_path, ec2.config(instance_type="m5.large"))
    ec2.forwarder.refuse["*"] = "InsufficientInstanceCapacity"      # no capacity for any fit
    with pytest.raises(Ec2Error, match="no instance could be launched: .*InsufficientInstanceCapacity"):
        deploy.ec2_cluster.create("bad", s3_path, ec2.config(cpu_per_task=4, memory_gb_per_task=32))
    ec2.forwarder.refuse.clear()
    for cid in ids:
        assert not any(ec2.leftovers(cid).values()), ec2.leftovers(cid)
    assert "bad" not in deploy.environments

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")      # never ask a metadata service
    with pytest.raises(Ec2Error, match="no AWS credentials"):
        deploy.ec2_cluster.create("bad", s3_path, ec2.config(instance_type="m5.large"))


def test_given_keys_are_used_and_never_written(ec2, monkeypatch, deploy_home):
    """Keys given in Ec2Config (and nowhere else) run the cluster, and appear in no registry,
    S3 object, user data, file of the deploy home or the instances, log, or argv."""
    # made at run time: a literal would travel in this module's code, sent by value to the hosts
    key_id, secret = "AKIA" + uuid.uuid4().hex[:16].upper(), "given/Secret+" + uuid.uuid4().hex
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = ec2.config(instance_type="t3.medium", aws_access_key_id=key_id, aws_secret_access_key=secret)
    assert secret not in repr(config) and key_id not in repr(config)
    cluster = deploy.ec2_cluster.create("keys", s3_path=f"s3://{ec2.bucket}/keys", ec2_config=config,
                                        num_hosts=1, idle_shutdown_timeout=600)
    seen_argv = []
    try:
        job = deploy.map_job.create(add, GOOD, environment="keys")
        while job.get_status() not in ("Completed", "Failed"):
            seen_argv += [open(p, "rb").read() for p in glob.glob("/proc/[0-9]*/cmdline") if _readable(p)]
            time.sleep(0.05)
        assert job.get_results() == [40, 20, 10]
        s3 = ec2.aws("s3")
        objects = [s3.get_object(Bucket=ec2.bucket, Key=o["Key"])["Body"].read()
                   for o in s3.list_objects_v2(Bucket=ec2.bucket, Prefix="keys/")["Contents"]]
        assert len(objects) > 5
        user_data = [ec2.aws("ec2").describe_instance_attribute(InstanceId=i["InstanceId"], Attribute="userData")
                     ["UserData"]["Value"].encode() for i in ec2.cluster_instances(cluster.id)]
        remote = ec2.hypervisor.home / ".deploy" / "remote"       # its logs and job folders
        paths = glob.glob(f"{deploy_home}/**/*", recursive=True) + glob.glob(f"{remote}/*.log") \
            + glob.glob(f"{remote}/jobs/**/*", recursive=True)
        files = [open(p, "rb").read() for p in paths if os.path.isfile(p)]
        for blob in [registry_bytes(deploy_home), *objects, *user_data, *files, *seen_argv]:
            assert key_id.encode() not in blob and secret.encode() not in blob
    finally:
        cluster.stop()
    assert not any(ec2.leftovers(cluster.id).values())


def _readable(path: str) -> bool:
    try:
        open(path, "rb").close()
        return True
    except OSError:
        return False


def test_cli_create_and_stop(ec2):
    """`deploy envs create ec2 NAME ...` launches and saves; `deploy envs stop NAME` leaves nothing."""
    code, out, err = run_main("envs", "create", "ec2", "cli-ec2", "--s3-path", f"s3://{ec2.bucket}/cli",
                              "--region", REGION, "--instance-type", "t3.medium", "--subnet-id", ec2.subnet_id,
                              "--ssh-user", ec2.hypervisor.user, "--price-file", ec2.price_file,
                              "--idle-shutdown-timeout", "-1", "--tag", "team=ml")
    assert code == 0, err
    assert "Launched 1 new EC2 instance (total $0.0416/hr) for 2 workers:" in out, out
    assert "saved Ec2Cluster('cli-ec2'" in out and ": 2 workers" in out
    cluster = deploy.environments["cli-ec2"]
    assert len(ec2.cluster_instances(cluster.id)) == 1
    code, out, err = run_main("envs", "stop", "cli-ec2")
    assert code == 0 and "stopped cli-ec2" in out, err
    assert not any(ec2.leftovers(cluster.id).values())
