"""deploy on an engine's cluster against the engine's own API on the same cluster.

    python benchmarks/bench_engines.py dask [--rounds 5] [--tiny 10000] [--json FILE]

Dask: a real `dask scheduler` on 127.0.0.5 and two `dask worker` processes (1 thread each,
on 127.0.0.6 and 127.0.0.7), started here. Workloads: 10,000 tasks of 1 ms and 64 tasks of
0.25 s, each a busy loop of a fixed length (calibrated at the start: the fastest of 7
timings, so "1 ms" is 1 ms of an unloaded core). Each round runs deploy.map(environment=
DaskCluster) and the native call (one future per item: `client.map(..., pure=False)` +
gather), the order rotating; medians and the ratio deploy / native are reported, with the
idiomatic batched native form (`client.map` over ~4 batches per thread) beside them.
deploy's wall includes writing the job directory, every task's metrics row and output
capture, and reading the results back. Ray: benchmarks/bench_ray.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SCHEDULER_IP, WORKER_IPS = "127.0.0.5", ("127.0.0.6", "127.0.0.7")


def spin(loops):
    """A fixed amount of CPU work: `loops` turns of a busy loop (calibrated by `loops_for`).
    Not a CPU-time deadline: a Dask worker's other threads (its profiler, its event loop)
    count toward its process's CPU time, which would make tasks there do less work."""
    n = 0
    for _ in range(loops):
        n += 1
    return n


def spin_batch(batch):
    return [spin(n) for n in batch]


_CALIBRATE = """
import time
def spin(loops):
    n = 0
    for _ in range(loops):
        n += 1
    return n
times = []
for _ in range(7):
    t = time.perf_counter()
    spin(1_000_000)
    times.append(time.perf_counter() - t)
print(1_000_000 / min(times))
"""


def loops_per_second() -> float:
    """Busy-loop turns per second on this machine: the fastest of 7 timings, in a fresh
    interpreter (this process's Dask client threads would slow the loop down here)."""
    return float(subprocess.run([sys.executable, "-c", _CALIBRATE], capture_output=True,
                                text=True, check=True).stdout)


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _wait_port(ip: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ip, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens at {ip}:{port}")


class DaskEngine:
    """A Dask cluster on loopback (scheduler + 2 one-thread workers), the native calls, and
    deploy's DaskCluster on it."""

    name = "dask"

    def start(self) -> None:
        from distributed import Client
        self.folder = tempfile.mkdtemp(prefix="bench-dask-")
        port = _free_port(SCHEDULER_IP)
        self.address = f"tcp://{SCHEDULER_IP}:{port}"
        log = open(os.path.join(self.folder, "cluster.log"), "wb")
        py = [sys.executable, "-m"]
        self.procs = [subprocess.Popen(py + ["distributed.cli.dask_scheduler", "--host", SCHEDULER_IP,
                                             "--port", str(port), "--no-dashboard"],
                                       stdout=log, stderr=log, start_new_session=True)]
        _wait_port(SCHEDULER_IP, port)
        for ip in WORKER_IPS:
            self.procs.append(subprocess.Popen(
                py + ["distributed.cli.dask_worker", self.address, "--host", ip, "--nthreads", "1",
                      "--no-dashboard", "--memory-limit", "0",
                      "--local-directory", os.path.join(self.folder, ip)],
                stdout=log, stderr=log, start_new_session=True))
        self.client = Client(self.address, timeout=30, set_as_default=False)
        self.client.wait_for_workers(len(WORKER_IPS), timeout=60)
        self.threads = sum(self.client.nthreads().values())
        from deploy.environments.dask.cluster import DaskCluster
        self.env = DaskCluster("bench", self.address)

    def native(self, loops: int, n: int) -> float:
        start = time.perf_counter()
        out = self.client.gather(self.client.map(spin, [loops] * n, pure=False))
        wall = time.perf_counter() - start
        assert len(out) == n
        return wall

    def native_batched(self, loops: int, n: int) -> float:
        start = time.perf_counter()
        size = max(1, math.ceil(n / (4 * self.threads)))
        batches = [[loops] * min(size, n - i) for i in range(0, n, size)]
        parts = self.client.gather(self.client.map(spin_batch, batches, pure=False))
        wall = time.perf_counter() - start
        assert sum(map(len, parts)) == n
        return wall

    def deploy(self, loops: int, n: int) -> float:
        import deploy
        start = time.perf_counter()
        out = deploy.map(spin, [loops] * n, environment=self.env, stream=False)
        wall = time.perf_counter() - start
        assert len(out) == n
        return wall

    def stop(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(15)


ENGINES = {"dask": DaskEngine}


def alternate(rounds: int, runs: dict) -> dict[str, list[float]]:
    """Each round runs every form once, the order rotating; all walls per form."""
    names = list(runs)
    walls: dict[str, list[float]] = {k: [] for k in names}
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            walls[name].append(runs[name]())
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=sorted(ENGINES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiny", type=int, default=10_000)
    parser.add_argument("--cpu-tasks", type=int, default=64)
    parser.add_argument("--cpu-seconds", type=float, default=0.25)
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    os.environ.setdefault("DEPLOY_HOME", tempfile.mkdtemp(prefix="deploy-bench-"))
    os.environ["DEPLOY_PROGRESS"] = "false"
    engine = ENGINES[args.engine]()
    engine.start()
    report = {"engine": engine.name, "threads": engine.threads, "rounds": args.rounds,
              "python": sys.version.split()[0], "workloads": {}}
    try:
        engine.deploy(1000, 100)                # warm: imports, the first connection
        engine.native(1000, 100)
        speed = loops_per_second()
        report["loops_per_second"] = speed
        for label, seconds, n in (("tiny", 0.001, args.tiny), ("cpu", args.cpu_seconds, args.cpu_tasks)):
            loops = max(1, int(speed * seconds))
            walls = alternate(args.rounds, {
                "deploy": lambda: engine.deploy(loops, n),
                "native": lambda: engine.native(loops, n),
                "native_batched": lambda: engine.native_batched(loops, n)})
            med = {k: statistics.median(v) for k, v in walls.items()}
            ideal = n * seconds / engine.threads
            report["workloads"][label] = {
                "tasks": n, "seconds": seconds, "loops": loops, "walls": walls, "median": med,
                "ratio_native": med["deploy"] / med["native"],
                "ratio_batched": med["deploy"] / med["native_batched"],
                "efficiency": {k: ideal / v for k, v in med.items()}}
            print(f"{n} x {seconds * 1000:g} ms on {engine.threads} {engine.name} threads: "
                  f"deploy {med['deploy']:.3f} s  native {med['native']:.3f} s  "
                  f"native batched {med['native_batched']:.3f} s  "
                  f"ratio deploy/native {med['deploy'] / med['native']:.2f}  "
                  f"deploy/batched {med['deploy'] / med['native_batched']:.2f}  "
                  f"(ideal {ideal:.2f} s; medians of {args.rounds} alternating runs)", flush=True)
    finally:
        engine.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
