"""SshCluster efficiency: 200 tasks of 10 ms CPU each across three loopback sshd hosts.

    python benchmarks/bench_ssh.py [--rounds 5] [--tasks 200] [--cpu-ms 10] [--workers-per-host N]

Needs root and openssh-server (it starts the hosts of tests/infra/sshd_hosts.py). The hosts
share this machine, so the cores available are this machine's: ideal wall time = total
CPU work / cores, and each host gets its share of the cores as workers (at least one; as
LocalAsync runs one worker per core). Efficiency = ideal / measured (medians over rounds):
  makespan    from map_job.create() to the end of the last task (what the cluster delivers);
  end-to-end  until job.wait() returns on the client (adds the client's polling interval);
  LocalAsync  the same job on this machine's own worker processes, in alternate rounds: the
              ceiling on this machine at this moment (other load lowers both alike);
  CPU         task CPU / all CPU the job cost (client + every process of the host users:
              sshd, agent, workers, tasks), which load on the machine does not change.
The cluster is created (runtime shipped, agents started) before the rounds, as after
deploy.ssh_cluster.create() and a first job. The client, sshd and the relay share the
cores with the tasks, so their cost is in the figures. Target: >= 0.9.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import deploy  # noqa: E402
from deploy.environments.ssh.cluster import SshCluster  # noqa: E402

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")


def burn(ms):
    """Busy CPU for `ms` milliseconds of this process's CPU time."""
    end = time.process_time() + ms / 1000
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def users_cpu(hosts) -> float:
    """CPU seconds of the host users' processes, their reaped children included."""
    total = 0.0
    for host in hosts:
        for pid in host.processes(include_zombies=True):
            fields = _stat(pid)
            if fields:
                total += sum(int(x) for x in fields[11:15]) / TICK
    return total


def wait_groups_gone(groups: set[int], timeout: float = 30) -> None:
    """Until no process (zombies included) is left in the groups: all CPU is accounted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any((f := _stat(int(e))) and int(f[2]) in groups
                   for e in os.listdir("/proc") if e.isdigit()):
            return
        time.sleep(0.02)


def one_round(env, tasks: int, cpu_ms: float, hosts=None) -> dict:
    """Run one job; its makespan, wall time, hosts, and (for a cluster) the CPU it cost."""
    cpu0, users0 = time.process_time(), users_cpu(hosts) if hosts else 0.0
    start_epoch, start = time.time(), time.perf_counter()
    job = deploy.map_job.create(burn, [{"ms": cpu_ms}] * tasks, environment=env)
    status = job.wait(timeout=300)
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu0
    if status != "Completed":
        raise SystemExit(f"job ended {status}: {job.get_error()}")
    metrics = job.get_metrics()
    out = {"makespan": metrics.end_time.max().timestamp() - start_epoch, "wall": wall,
           "hosts": set(metrics.host)}
    if hosts:
        handle = json.loads(job._store.get("launch.json"))["handle"]
        wait_groups_gone({g for entry in handle["hosts"] for g, _ in entry["groups"]})
        out["cpu"] = client_cpu + users_cpu(hosts) - users0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--cpu-ms", type=float, default=10.0)
    parser.add_argument("--workers-per-host", type=int, default=max(1, CORES // 3),
                        help="default: each host's share of this machine's cores (at least 1); "
                             "0: the cluster's own default, each host's core count")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="deploy-bench-ssh-")
    os.environ.setdefault("DEPLOY_HOME", os.path.join(scratch, "home"))
    os.environ["DEPLOY_PROGRESS"] = "false"

    from infra.sshd_hosts import SshHosts, check_prerequisites
    problems = check_prerequisites()
    if problems:
        raise SystemExit("cannot start sshd hosts: " + "; ".join(problems))
    hosts = SshHosts(os.path.join(scratch, "sshd"), n=3, user_prefix="deploybn")
    hosts.start()
    local = deploy.environment.LocalAsync("bench-local")
    try:
        env = SshCluster("bench", ["host1", "host2", "host3"], ssh_config=str(hosts.ssh_config_path),
                         workers_per_host=args.workers_per_host or None)
        workers = env.num_workers()
        one_round(env, args.tasks, args.cpu_ms)                      # warm-up: agents start
        ssh, ref = [], []
        for _ in range(args.rounds):
            ssh.append(one_round(env, args.tasks, args.cpu_ms, hosts))
            ref.append(one_round(local, args.tasks, args.cpu_ms))
        env.stop()
    finally:
        hosts.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    work = args.tasks * args.cpu_ms / 1000
    ideal = work / CORES

    def eff(rounds: list[dict], key: str) -> float:
        return ideal / statistics.median(r[key] for r in rounds)
    used = sorted(set().union(*(r["hosts"] for r in ssh)))
    print(f"{args.tasks} tasks x {args.cpu_ms:g} ms CPU on {workers} workers ({', '.join(used)}), "
          f"{CORES} cores: ideal {ideal:.3f} s")
    print(f"  SshCluster  makespan efficiency {eff(ssh, 'makespan'):.3f}  (target >= 0.9)  "
          f"end-to-end {eff(ssh, 'wall'):.3f}")
    print(f"  LocalAsync  makespan efficiency {eff(ref, 'makespan'):.3f}  end-to-end {eff(ref, 'wall'):.3f}"
          "  (same machine, alternate rounds)")
    print(f"  SshCluster / LocalAsync makespan ratio {eff(ssh, 'makespan') / eff(ref, 'makespan'):.3f}")
    cpu = statistics.median(r["cpu"] for r in ssh)
    print(f"  CPU: {cpu:.3f} s per job for {work:.3f} s of task CPU: CPU efficiency {work / cpu:.3f}, "
          f"overhead {cpu - work:.3f} s (client, sshd, agents, workers)")
    print("  rounds (makespan efficiency): ssh " + ", ".join(f"{ideal / r['makespan']:.2f}" for r in ssh)
          + "; local " + ", ".join(f"{ideal / r['makespan']:.2f}" for r in ref))


if __name__ == "__main__":
    main()
