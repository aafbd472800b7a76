"""Ec2Cluster efficiency beside SshCluster's: 200 tasks of 10 ms CPU over three hosts each.

    python benchmarks/bench_ec2.py [--rounds 5] [--tasks 200] [--cpu-ms 10]

Needs root and openssh-server. The EC2 side is the tests' closest real thing: moto in its
own process, three instances (m5.large, one task each) made real by tests/infra's
hypervisor (an sshd at each instance's private 127.x address), jobs in moto's S3. The SSH
side is bench_ssh's: three loopback sshd hosts, one worker each, jobs relayed to the client,
and the same hosts with the job directory on moto's S3 (the EC2 cluster's store: the store's share).
Both run the same job in alternate rounds on this machine's cores, so load from elsewhere
lowers both alike. Efficiency = ideal / measured (medians), ideal = total task CPU / cores:
  makespan    from map_job.create() to the end of the last task;
  end-to-end  until job.wait() returns on the client.
Instances are launched and prepared before the rounds (as after ec2_cluster.create()).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import deploy  # noqa: E402
from bench_ssh import CORES, burn, one_round  # noqa: E402,F401  (burn travels by value)


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    from conftest_ssh import answers, free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"moto server did not start: see {log}")
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--cpu-ms", type=float, default=10.0)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="deploy-bench-ec2-"))
    os.environ.setdefault("DEPLOY_HOME", str(scratch / "home"))
    os.environ["DEPLOY_PROGRESS"] = "false"

    import boto3
    from conftest_ec2 import PRICES, REGION, _free_octet
    from infra.ec2_hypervisor import Hypervisor
    from infra.sshd_hosts import SshHosts, check_prerequisites
    from deploy.environments.ssh.cluster import SshCluster
    problems = check_prerequisites()
    if problems:
        raise SystemExit("cannot start sshd hosts: " + "; ".join(problems))
    moto, endpoint = start_moto(scratch / "moto.log")
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION=REGION)
    hypervisor = hosts = ec2 = None
    try:
        session = boto3.session.Session(region_name=REGION)
        octet = _free_octet()
        vpc = session.client("ec2").create_vpc(CidrBlock=f"127.{octet}.0.0/16")["Vpc"]["VpcId"]
        subnet = session.client("ec2").create_subnet(VpcId=vpc, CidrBlock=f"127.{octet}.0.0/20")["Subnet"]["SubnetId"]
        bucket = "deploy-bench-" + uuid.uuid4().hex[:8]
        session.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        prices = scratch / "prices.json"
        prices.write_text(json.dumps({"replace_live_sources": True, "regions": {REGION: PRICES}}))
        hypervisor = Hypervisor(endpoint, [REGION], scratch / "login", user_prefixes=("deploybe",)).start()
        hosts = SshHosts(scratch / "sshd", n=3, user_prefix="deploybn").start()

        start = time.monotonic()
        ec2 = deploy.ec2_cluster.create(
            "bench-ec2", f"s3://{bucket}/bench",
            deploy.Ec2Config(region=REGION, instance_type="m5.large", cpu_per_task=2, subnet_id=subnet,
                             ssh_user=hypervisor.user, price_file=str(prices)),
            num_hosts=3, idle_shutdown_timeout=-1)
        created = time.monotonic() - start
        ssh = SshCluster("bench-ssh", ["host1", "host2", "host3"], ssh_config=str(hosts.ssh_config_path),
                         workers_per_host=1)
        # the same hosts with the job directory on S3 (moto), as the EC2 cluster's: the store's share
        ssh_s3 = SshCluster("bench-ssh-s3", ["host1", "host2", "host3"], ssh_config=str(hosts.ssh_config_path),
                            workers_per_host=1, store=f"s3://{bucket}/ssh",
                            forward_env=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
        clusters = {"ec2": ec2, "ssh": ssh, "ssh_s3": ssh_s3}
        workers = {k: c.num_workers() for k, c in clusters.items()}
        for c in clusters.values():
            one_round(c, args.tasks, args.cpu_ms)           # warm-up: agents start
        runs: dict[str, list[dict]] = {k: [] for k in clusters}
        for _ in range(args.rounds):
            for k, c in clusters.items():
                runs[k].append(one_round(c, args.tasks, args.cpu_ms))
        ssh.stop()
        ssh_s3.stop()
        start = time.monotonic()
        ec2.stop()
        stopped = time.monotonic() - start
    finally:
        if ec2 is not None and ec2._state is not None:
            ec2.stop()
        for thing in (hosts, hypervisor):
            if thing is not None:
                thing.stop()
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)
    work = args.tasks * args.cpu_ms / 1000
    ideal = work / CORES

    def eff(rounds: list[dict], key: str) -> float:
        return ideal / statistics.median(r[key] for r in rounds)
    print(f"{args.tasks} tasks x {args.cpu_ms:g} ms CPU, 3 hosts each, {CORES} cores: ideal {ideal:.3f} s; "
          f"workers: Ec2Cluster {workers['ec2']}, SshCluster {workers['ssh']}")
    print(f"  Ec2Cluster  makespan efficiency {eff(runs['ec2'], 'makespan'):.3f}  end-to-end "
          f"{eff(runs['ec2'], 'wall'):.3f}  (jobs on S3: moto)")
    print(f"  SshCluster  makespan efficiency {eff(runs['ssh'], 'makespan'):.3f}  end-to-end "
          f"{eff(runs['ssh'], 'wall'):.3f}  (jobs relayed to the client)")
    print(f"  SshCluster, jobs on S3 (moto)  makespan efficiency {eff(runs['ssh_s3'], 'makespan'):.3f}  "
          f"end-to-end {eff(runs['ssh_s3'], 'wall'):.3f}  (the same store as Ec2Cluster's)")
    print(f"  Ec2Cluster / SshCluster makespan ratio {eff(runs['ec2'], 'makespan') / eff(runs['ssh'], 'makespan'):.3f}")
    print(f"  create() with 3 instances launched and prepared: {created:.1f} s; stop(): {stopped:.1f} s")
    print("  rounds (makespan efficiency): ec2 " + ", ".join(f"{ideal / r['makespan']:.2f}" for r in runs["ec2"])
          + "; ssh " + ", ".join(f"{ideal / r['makespan']:.2f}" for r in runs["ssh"])
          + "; ssh+s3 " + ", ".join(f"{ideal / r['makespan']:.2f}" for r in runs["ssh_s3"]))


if __name__ == "__main__":
    main()
