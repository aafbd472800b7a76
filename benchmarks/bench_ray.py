"""deploy on Ray against native Ray remote tasks, on the same loopback Ray cluster.

    python benchmarks/bench_ray.py [--rounds 5] [--cpus-per-node 1] [--out results-ray.json]

Starts the test suite's cluster (tests/conftest_ray.py: a head on 127.0.0.2 and a node on
127.0.0.3) and times, in alternating order within each round, for each workload:
  deploy    deploy.map_job.create(fn, params, environment=RayCluster) + get_results():
            chunks as Ray tasks, each through deploy's runner (per-task rows, output
            capture, metrics), results published into the job directory on the client;
  native    one Ray remote task per item, ray.get of them all (the naive form);
  batched   one Ray remote task per batch of items (about 4 per CPU), the idiomatic form.
Workloads: 10,000 tasks of 1 ms CPU, and 64 tasks of 0.25 s CPU. Reported: medians over
rounds of the wall time and of the CPU time every process spent (the client and every
process of both Ray nodes: raylets, workers, deploy's task processes), and the ratios
deploy / native form (1.0 = as fast; the goal is within 1.10). The cluster's CPUs are this
machine's cores, shared with the client and with whatever else runs here: wall times
grow with that load, the CPU times much less.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

WORKLOADS = {"tiny": (10_000, 0.001), "cpu": (64, 0.25)}
TICK = os.sysconf("SC_CLK_TCK")


def burn(seconds):
    """Busy CPU for `seconds` of this process's CPU time; returns the loop count."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return seconds


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(v) for v in fields[11:15]) / TICK      # utime stime cutime cstime


def cpu_seconds(cluster) -> float:
    """CPU time of this process and of every live process of the cluster's nodes (their
    sessions: raylets, Ray workers, deploy's task processes), with their reaped children."""
    total = sum(os.times()[:4])
    for node in cluster.nodes:
        total += sum(_cpu_of(pid) for pid in node.pids())
    return total


def run_batch(batch, seconds):
    return [burn(seconds) for _ in batch]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--workloads", default="tiny,cpu")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args()

    import tempfile
    home = tempfile.mkdtemp(prefix="bench-ray-home-")
    os.environ["DEPLOY_HOME"] = home
    os.environ["DEPLOY_CONFIG"] = os.path.join(home, "none.toml")
    os.environ["DEPLOY_PROGRESS"] = "false"
    os.environ["RAY_AUTH_MODE"] = "disabled"        # as the test cluster's nodes
    import deploy
    from conftest_ray import HEAD_IP, NODE_IP, RayTestCluster

    cluster = RayTestCluster()
    results: dict = {}
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))     # stop the cluster on the way out
    try:
        cluster.start_node(HEAD_IP, cpus=args.cpus_per_node, head=True)
        cluster.start_node(NODE_IP, cpus=args.cpus_per_node)
        rc = deploy.ray_cluster.RayCluster("bench", cluster.address)
        rc.prepare()
        import ray
        cpus = int(sum(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]))
        native_fn = ray.remote(burn)
        batched_fn = ray.remote(run_batch)

        def deploy_run(n, seconds):
            job = deploy.map_job.create(burn, [{"seconds": seconds}] * n, environment=rc)
            out = job.get_results()
            assert len(out) == n and len(job.get_metrics()) == n
            return out

        def native_run(n, seconds):
            return ray.get([native_fn.remote(seconds) for _ in range(n)])

        def batched_run(n, seconds):
            size = max(1, math.ceil(n / (4 * cpus)))
            refs = [batched_fn.remote(range(i, min(n, i + size)), seconds) for i in range(0, n, size)]
            return [x for part in ray.get(refs) for x in part]

        forms = {"deploy": deploy_run, "native": native_run, "batched": batched_run}
        for fn in forms.values():                   # warm: worker processes, imports
            fn(2 * cpus, 0.01)
        for name in args.workloads.split(","):
            n, seconds = WORKLOADS[name]
            times: dict[str, list[float]] = {f: [] for f in forms}
            cpu: dict[str, list[float]] = {f: [] for f in forms}
            for r in range(args.rounds):
                order = list(forms)[r % 3:] + list(forms)[:r % 3]      # alternate who goes first
                for form in order:
                    used = cpu_seconds(cluster)
                    start = time.perf_counter()
                    out = forms[form](n, seconds)
                    times[form].append(time.perf_counter() - start)
                    cpu[form].append(cpu_seconds(cluster) - used)
                    assert len(out) == n
                print(f"{name} round {r + 1}: " + ", ".join(
                    f"{f} {times[f][-1]:.2f} s ({cpu[f][-1]:.2f} s CPU)" for f in forms), flush=True)
            med = {f: statistics.median(t) for f, t in times.items()}
            med_cpu = {f: statistics.median(t) for f, t in cpu.items()}
            results[name] = {"tasks": n, "task_seconds": seconds, "cpus": cpus,
                             "ideal_seconds": n * seconds / cpus, "rounds": args.rounds,
                             "median_seconds": med, "median_cpu_seconds": med_cpu,
                             "runs": times, "cpu_runs": cpu, "load_average": os.getloadavg(),
                             "deploy_over_native": med["deploy"] / med["native"],
                             "deploy_over_batched": med["deploy"] / med["batched"],
                             "cpu_deploy_over_native": med_cpu["deploy"] / med_cpu["native"],
                             "cpu_deploy_over_batched": med_cpu["deploy"] / med_cpu["batched"]}
    finally:
        try:
            import ray
            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        cluster.stop()

    print("\n| workload | | ideal | deploy on Ray | native per item | native batched "
          "| deploy / native | deploy / batched |")
    print("|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        what = f"{res['tasks']:,} x {res['task_seconds'] * 1000:g} ms"
        for label, key, ideal, ratio in (("wall, s", "median_seconds", res["ideal_seconds"], ""),
                                         ("CPU, s", "median_cpu_seconds", res["tasks"] * res["task_seconds"],
                                          "cpu_")):
            med = res[key]
            print(f"| {what} | {label} | {ideal:.2f} | {med['deploy']:.2f} | {med['native']:.2f} "
                  f"| {med['batched']:.2f} | {res[ratio + 'deploy_over_native']:.2f} "
                  f"| {res[ratio + 'deploy_over_batched']:.2f} |")
    print(f"(medians of {args.rounds} rounds, forms in rotating order; load average at the end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
