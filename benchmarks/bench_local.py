"""LocalAsync against multiprocessing.Pool.map, side by side in one run.

    python benchmarks/bench_local.py [--rounds 5]

Workloads: 100,000 tiny tasks (x + 1), wall time; 64 CPU-bound tasks of 0.25 s, efficiency
(ideal wall on all cores / measured wall). Runs alternate deploy / peer and report medians
and the ratio deploy / peer. Targets (issue 2): tiny within 2x of Pool.map; efficiency >= 0.97.
All rounds run in this one process: every Pool run creates its pool, every deploy run is a
new job (its workers are forked for it); deploy's first run also pays its lazy imports
(cloudpickle, sqlite3), which the median leaves out. benchmarks/run.py measures each run in
a fresh interpreter instead (its "cold" column).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bytecode import ensure_compiled  # noqa: E402

ensure_compiled()
import deploy  # noqa: E402
from workloads import burn, inc  # noqa: E402

CORES = os.cpu_count() or 1


def deploy_tiny(n: int) -> float:
    start = time.perf_counter()
    out = deploy.map(inc, range(n), stream=False)
    wall = time.perf_counter() - start
    assert out[-1] == n
    return wall


def pool_tiny(n: int) -> float:
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(CORES) as pool:
        out = pool.map(inc, range(n))
    wall = time.perf_counter() - start
    assert out[-1] == n
    return wall


def deploy_cpu(n: int, seconds: float) -> float:
    start = time.perf_counter()
    deploy.map(burn, [seconds] * n, stream=False)
    return time.perf_counter() - start


def pool_cpu(n: int, seconds: float) -> float:
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(CORES) as pool:
        pool.map(burn, [seconds] * n, chunksize=1)
    return time.perf_counter() - start


def alternate(rounds: int, ours, peer) -> tuple[float, float]:
    a, b = [], []
    for i in range(rounds):
        pair = [(a, ours), (b, peer)] if i % 2 == 0 else [(b, peer), (a, ours)]
        for sink, fn in pair:
            sink.append(fn())
    return statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiny", type=int, default=100_000)
    parser.add_argument("--cpu-tasks", type=int, default=64)
    parser.add_argument("--cpu-seconds", type=float, default=0.25)
    args = parser.parse_args()
    os.environ.setdefault("DEPLOY_HOME", tempfile.mkdtemp(prefix="deploy-bench-"))
    os.environ["DEPLOY_PROGRESS"] = "false"

    ours, peer = alternate(args.rounds, lambda: deploy_tiny(args.tiny), lambda: pool_tiny(args.tiny))
    print(f"{args.tiny} tiny tasks    deploy {ours:.3f} s  Pool.map {peer:.3f} s  "
          f"ratio {ours / peer:.2f} (target <= 2.0)")
    ideal = args.cpu_tasks * args.cpu_seconds / CORES
    ours, peer = alternate(max(1, args.rounds // 2), lambda: deploy_cpu(args.cpu_tasks, args.cpu_seconds),
                           lambda: pool_cpu(args.cpu_tasks, args.cpu_seconds))
    print(f"{args.cpu_tasks} x {args.cpu_seconds} s CPU  deploy efficiency {ideal / ours:.3f}  "
          f"Pool.map {ideal / peer:.3f}  (ideal {ideal:.2f} s on {CORES} cores; target >= 0.97)")


if __name__ == "__main__":
    main()
