"""One measurement in a fresh interpreter: one workload, one tool. Run by benchmarks/run.py.

    python benchmarks/workloads.py '{"workload": "tiny", "tool": "pool", "cores": 2, "n": 100000}'

Prints `BENCH {json}` lines: phases as they pass, and the result last. Imports of the tool
are done (and timed) before anything is measured, so every wall time below excludes them.

For every tool:
  start-up  create the pool / cluster (Pool(), ProcessPoolExecutor(), Parallel(),
            LocalCluster() + Client(), ray.init()); deploy has none: its workers start inside
            every job. ProcessPoolExecutor and joblib start their processes lazily, on the
            first map, so their start-up shows up in `run`.
  run       the first map over the workload's inputs (results in hand).
  cold      start-up + run: what a script that runs one job waits for (imports excluded).
  warm      a second map on the same pool, already up and used once. For deploy, whose
            start-up is part of every job, a second job in the same process. Where a second
            map would take minutes (Dask, Ray on 100k tasks), warm = run.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

SPEC = json.loads(sys.argv[1]) if __name__ == "__main__" else {}
CORES = int(SPEC.get("cores") or os.cpu_count() or 1)


def emit(**fields) -> None:
    print("BENCH " + json.dumps(fields), flush=True)


# ----------------------------------------------------------------------------- tasks
# Defined in __main__ on purpose: fork-based pools inherit them, and cloudpickle-based tools
# (deploy, loky, Dask, Ray) carry them by value, so no tool needs this file on its path.

def inc(x):
    return x + 1


def noop(x):
    return x


def burn(seconds):
    """Busy CPU for `seconds` of this process's CPU time (not wall time: a loaded machine
    makes tasks slower in wall time, never cheaper in CPU)."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


_ARR = None     # the fork-inherited global of the Pool / ProcessPoolExecutor workaround


def part_of_global(i, step):
    return float(_ARR[i * step:(i + 1) * step].sum())


# ----------------------------------------------------------------------------- memory

def status_kb(pid="self") -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def pss_kb(pid="self") -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


# ----------------------------------------------------------------------------- tools

class Deploy:
    name = "deploy"

    def __init__(self) -> None:
        import deploy
        deploy.map, deploy.map_job          # load the lazy names: part of the imports
        self.deploy = deploy

    def start(self) -> None:
        pass                                # the workers start inside every job

    def map(self, fn, items, kind):
        return self.deploy.map(fn, items, stream=False)

    def stop(self) -> None:
        pass


class Pool:
    name = "pool"

    def __init__(self) -> None:
        import multiprocessing
        self.mp = multiprocessing
        self.start_method = multiprocessing.get_start_method()

    def start(self) -> None:
        self.pool = self.mp.Pool(CORES)

    def map(self, fn, items, kind):
        # CPU-bound and few large tasks: chunksize=1; tiny tasks: Pool's own default
        # (ceil(n / (4 * processes)))
        return self.pool.map(fn, items, chunksize=1 if kind in ("cpu", "closure") else None)

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()


class Ppe:
    name = "ppe"

    def __init__(self) -> None:
        from concurrent.futures import ProcessPoolExecutor
        self.cls = ProcessPoolExecutor

    def start(self) -> None:
        self.ex = self.cls(max_workers=CORES)

    def map(self, fn, items, kind):
        items = list(items)
        chunksize = 1 if kind in ("cpu", "closure") else max(1, math.ceil(len(items) / (4 * CORES)))
        return list(self.ex.map(fn, items, chunksize=chunksize))

    def stop(self) -> None:
        self.ex.shutdown(wait=True)


class Joblib:
    name = "joblib"

    def __init__(self) -> None:
        from joblib import Parallel, delayed
        self.Parallel, self.delayed = Parallel, delayed

    def start(self) -> None:
        self.parallel = self.Parallel(n_jobs=CORES, backend="loky")    # batch_size='auto'

    def map(self, fn, items, kind):
        return self.parallel(self.delayed(fn)(x) for x in items)

    def stop(self) -> None:
        from joblib.externals.loky import get_reusable_executor
        get_reusable_executor().shutdown(wait=True)


class Dask:
    name = "dask"

    def __init__(self) -> None:
        import logging
        from dask.distributed import Client, LocalCluster
        self.Client, self.LocalCluster, self.quiet = Client, LocalCluster, logging.ERROR

    def start(self) -> None:
        self.cluster = self.LocalCluster(n_workers=CORES, threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address=None,
                                         silence_logs=self.quiet)
        self.client = self.Client(self.cluster)          # returns once the workers are up

    def map(self, fn, items, kind):
        # pure=False: every item is its own task (the default would hash each input and
        # merge equal ones: 64 x burn(0.25) would run once)
        return self.client.gather(self.client.map(fn, list(items), pure=False))

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()


def run_batch(fn, batch):
    return [fn(x) for x in batch]


class DaskBatched(Dask):
    """Dask as practised for many small tasks: one task per batch of items (about 4 batches
    per worker, as dask.bag partitions or Pool.map's chunksize would), not one per item."""
    name = "dask-batched"

    def map(self, fn, items, kind):
        items = list(items)
        size = max(1, math.ceil(len(items) / (4 * CORES)))
        batches = [items[i:i + size] for i in range(0, len(items), size)]
        parts = self.client.gather(self.client.map(run_batch, [fn] * len(batches), batches,
                                                   pure=False))
        return [x for part in parts for x in part]


class Ray:
    name = "ray"

    def __init__(self) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray
        self.ray = ray
        self.remote: dict = {}

    def start(self) -> None:
        # local only: every Ray process binds to loopback
        self.ray.init(num_cpus=CORES, include_dashboard=False, _node_ip_address="127.0.0.1",
                      logging_level="ERROR", log_to_driver=False)

    def map(self, fn, items, kind, *extra):
        rf = self.remote.get(id(fn))
        if rf is None:
            rf = self.remote[id(fn)] = self.ray.remote(fn)
        return self.ray.get([rf.remote(x, *extra) for x in items])

    def stop(self) -> None:
        self.ray.shutdown()


class RayBatched(Ray):
    """Ray as practised for many small tasks: one remote task per batch of items (about 4
    batches per CPU), not one per item."""
    name = "ray-batched"

    def map(self, fn, items, kind, *extra):
        items = list(items)
        size = max(1, math.ceil(len(items) / (4 * CORES)))
        batches = [items[i:i + size] for i in range(0, len(items), size)]
        rf = self.remote.get("batch")
        if rf is None:
            rf = self.remote["batch"] = self.ray.remote(run_batch_args)
        parts = self.ray.get([rf.remote(fn, batch, *extra) for batch in batches])
        return [x for part in parts for x in part]


def run_batch_args(fn, batch, *extra):
    return [fn(x, *extra) for x in batch]


TOOLS = {cls.name: cls for cls in (Deploy, Pool, Ppe, Joblib, Dask, DaskBatched, Ray, RayBatched)}


# ----------------------------------------------------------------------------- workloads

def timed_cold(tool, fn, items, kind, check):
    t0 = time.perf_counter()
    tool.start()
    t1 = time.perf_counter()
    out = tool.map(fn, items, kind)
    t2 = time.perf_counter()
    check(out)
    return {"startup": t1 - t0, "run": t2 - t1, "cold": t2 - t0}


def w_tiny(tool, spec) -> dict:
    """n tasks of x + 1; cold, and warm (see the module docstring)."""
    n = spec["n"]

    def check(out):
        assert len(out) == n and out[-1] == n, (len(out), out[-1:])

    res = timed_cold(tool, inc, range(n), "tiny", check)
    if tool.name in spec.get("no_warm", ()):
        res["warm"], res["warm_is_run"] = res["run"], True
    else:
        t = time.perf_counter()
        check(tool.map(inc, range(n), "tiny"))
        res["warm"] = time.perf_counter() - t
    tool.stop()
    return res


def w_cpu(tool, spec) -> dict:
    """tasks x burn(seconds): efficiency = (total CPU / cores) / wall."""
    n, seconds = spec["tasks"], spec["seconds"]

    def check(out):
        assert len(out) == n

    res = timed_cold(tool, burn, [seconds] * n, "cpu", check)
    tool.stop()
    ideal = n * seconds / CORES
    res["ideal"] = ideal
    res["efficiency"] = ideal / res["cold"]
    res["efficiency_warm"] = ideal / (res["run"] if tool.name != "deploy" else res["cold"])
    return res


def w_mem(tool, spec) -> dict:
    """n tiny tasks in one job: the client's peak RSS (VmHWM = getrusage ru_maxrss)."""
    n = spec["n"]
    base = status_kb()
    emit(phase="baseline", rss_kb=base["VmRSS"], hwm_kb=base["VmHWM"])

    def check(out):
        assert len(out) == n and out[-1] == n

    res = timed_cold(tool, inc, range(n), "tiny", check)
    peak = status_kb()["VmHWM"]
    tool.stop()
    res.update(baseline_mb=base["VmRSS"] / 1024, peak_mb=peak / 1024,
               over_baseline_mb=(peak - base["VmRSS"]) / 1024)
    return res


def w_closure(tool, spec) -> dict:
    """A lambda closing over a large float64 array; tasks each sum a slice. The run.py
    monitor samples PSS of every process; here: wall times and the variant used."""
    global _ARR
    import numpy as np
    nbytes, tasks = spec["bytes"], spec["tasks"]
    emit(phase="baseline", pss_kb=pss_kb(), rss_kb=status_kb()["VmRSS"])
    t = time.perf_counter()
    arr = np.arange(nbytes // 8, dtype=np.float64)    # every page written: resident
    step = len(arr) // tasks
    expected = [float(arr[i * step:(i + 1) * step].sum()) for i in range(tasks)]
    emit(phase="array", seconds=time.perf_counter() - t, pss_kb=pss_kb())
    res: dict = {"array_bytes": arr.nbytes}
    # the natural code: f = lambda i: arr[i*step:(i+1)*step].sum(); map(f, range(tasks))
    f = lambda i: float(arr[i * step:(i + 1) * step].sum())    # noqa: E731
    t0 = time.perf_counter()
    if tool.name in ("pool", "ppe"):
        import pickle
        try:
            pickle.dumps(f)
        except Exception as exc:          # what Pool / ProcessPoolExecutor do with a lambda
            res["lambda_error"] = f"{type(exc).__name__}: {exc}"[:200]
        # workaround: a module-level function reading a global set before the fork
        _ARR = arr
        res["variant"] = "module function + global inherited by fork"
        tool.start()
        t1 = time.perf_counter()
        import functools
        out = tool.map(functools.partial(part_of_global, step=step), range(tasks), "closure")
    elif tool.name == "ray":
        res["lambda_error"] = ("ValueError: The remote function __main__.<lambda> is too large "
                               "(> FUNCTION_SIZE_ERROR_THRESHOLD=95 MiB) ... use ray.put()")
        res["variant"] = "ray.put(arr) once, the ObjectRef passed to every task"
        tool.start()
        t1 = time.perf_counter()
        ref = tool.ray.put(arr)
        g = lambda i, a: float(a[i * step:(i + 1) * step].sum())   # noqa: E731
        out = tool.map(g, range(tasks), "closure", ref)
    else:
        res["variant"] = "the lambda"
        tool.start()
        t1 = time.perf_counter()
        out = tool.map(f, range(tasks), "closure")
    t2 = time.perf_counter()
    assert out == expected, (out, expected)
    tool.stop()
    res.update(startup=t1 - t0, run=t2 - t1, cold=t2 - t0)
    return res


WORKLOADS = {"tiny": w_tiny, "small": w_tiny, "cpu": w_cpu, "mem1m": w_mem, "closure": w_closure}


def main() -> None:
    t = time.perf_counter()
    tool = TOOLS[SPEC["tool"]]()
    emit(phase="imported", seconds=time.perf_counter() - t)
    result = WORKLOADS[SPEC["workload"]](tool, SPEC)
    emit(result=result)


if __name__ == "__main__":
    main()
