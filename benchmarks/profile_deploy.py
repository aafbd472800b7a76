"""Where deploy's time and memory go, for the workloads where it loses to its peers.

    python benchmarks/profile_deploy.py phases  [--n 100000] [--reps 10]
    python benchmarks/profile_deploy.py timeline [--n 100000] [--reps 10]  # where a job's wall goes
    python benchmarks/profile_deploy.py client  [--n 100000] [--reps 20]   # py-spy, client only
    python benchmarks/profile_deploy.py workers [--n 3000000]              # py-spy, workers only
    python benchmarks/profile_deploy.py closure [--mib 2048]
    python benchmarks/profile_deploy.py pertask [--n 100000]               # hot path, µs per task
    python benchmarks/profile_deploy.py cpu     [--n 64] [--reps 2]        # where efficiency goes
    python benchmarks/profile_deploy.py all

Workers are forked from the client, so a profiler hook set in the client (cProfile,
pyinstrument) is inherited by every worker and task process and slows them. Hence: the
client's phases are timed by wrapping deploy's functions (nothing is inherited: the wrappers
only run in the client), the client is sampled by py-spy without --subprocesses, and the
workers by py-spy attached to the worker pids (with --subprocesses, for their task
processes) while a long job runs. Output: summaries on stdout, raw py-spy stacks in
benchmarks/results/profile/ (git-ignored).
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "profile")
sys.path.insert(0, os.path.dirname(HERE))

from workloads import burn, inc  # noqa: E402  (the suite's task functions)


def hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _timed(table: dict, label: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table.setdefault(label, []).append(time.perf_counter() - t)
    return wrapper


def instrument(table: dict) -> None:
    """Wrap the client-side steps of deploy.map (in this process only)."""
    from deploy import map_job
    from deploy.environments.local import LocalAsync
    from deploy.jobs.registry import JobRegistry
    for name in ("_parameters", "resolve_environment", "_pickle_callable", "write_job"):
        setattr(map_job, name, _timed(table, f"submit: {name}", getattr(map_job, name)))
    JobRegistry.reserve = _timed(table, "submit: registry.reserve (sqlite)", JobRegistry.reserve)
    LocalAsync.start = _timed(table, "submit: LocalAsync.start (fork workers, write the job)",
                              LocalAsync.start)


def phases(n: int, reps: int) -> None:
    """Client phases and the workers' timeline (from the job's own per-task times)."""
    import deploy
    from deploy import map_job
    table: dict[str, list[float]] = {}
    instrument(table)
    for _ in range(reps):
        t0 = time.perf_counter()
        job = map_job.submit(inc, range(n), "arg")
        t1 = time.perf_counter()
        status = job.wait()
        t2, waited = time.perf_counter(), time.time()
        out = job.get_map_results()
        t3 = time.perf_counter()
        assert status == "Completed" and out[-1] == n
        launched = job._launch()["time"]
        chunks = job._chunks.values()
        first = min(min(c.start) for c in chunks)
        last = max(max(c.end) for c in chunks)
        busy = sum(sum(e - s for s, e in zip(c.start, c.end)) for c in chunks)
        for label, value in [("submit (total)", t1 - t0), ("wait", t2 - t1),
                             ("get_map_results", t3 - t2), ("TOTAL deploy.map", t3 - t0),
                             ("timeline: launch -> first task starts", first - launched),
                             ("timeline: first task starts -> last task ends", last - first),
                             ("timeline: last task ends -> wait returns", waited - last),
                             ("timeline: time inside the task function (sum)", busy)]:
            table.setdefault(label, []).append(value)
        table.setdefault("chunks", []).append(job.spec.chunk_count)
        deploy.jobs.delete(name=job.name)
    print(f"deploy.map(inc, range({n:,})) x {reps}: first job / median of the others, ms")
    for label, values in table.items():
        scale = 1 if label == "chunks" else 1000
        rest = values[1:] or values
        print(f"  {label:52} {values[0] * scale:9.2f} {statistics.median(rest) * scale:9.2f}")


def collapse(raw_path: str, top: int = 18) -> None:
    """Summarise py-spy raw (folded) stacks: self time and inclusive time per function."""
    own, incl = collections.Counter(), collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            count = int(count)
            total += count
            frames = [fr.split(" (")[0] + " (" + fr.split(" (")[-1].split("/")[-1]
                      for fr in stack.split(";") if fr]
            if frames:
                own[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
    if not total:
        print("  no samples")
        return
    print(f"  {total} samples; self time:")
    for fr, c in own.most_common(top):
        print(f"    {100 * c / total:5.1f}%  {fr}")
    print("  inclusive time:")
    for fr, c in incl.most_common(top + 10):
        print(f"    {100 * c / total:5.1f}%  {fr}")


def timeline(n: int, reps: int) -> None:
    """Timestamps of the steps of a job in the client, its workers and their task processes.

    The wrappers are installed in the client before the workers fork, so the workers run
    them too; each process appends `pid label time` lines to one file (O_APPEND)."""
    import deploy
    from deploy import map_job
    from deploy.worker import loop as worker
    from deploy.worker import executor, runner
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "timeline.txt")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

    def mark(label: str) -> None:
        os.write(fd, f"{os.getpid()} {label} {time.time():.6f}\n".encode())

    def around(owner, name: str, label: str, enter: bool = True) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if enter:
                mark(label + ">")
            try:
                return fn(*args, **kwargs)
            finally:
                mark(label + "<")
        setattr(owner, name, wrapper)

    around(worker.Worker, "__init__", "worker.init")
    around(worker.Worker, "claim_next", "worker.claim", enter=False)
    around(worker.Worker, "calls", "worker.read_inputs", enter=False)
    around(executor.ForkExecutor, "_start", "worker.fork_task_process")
    around(executor.ForkExecutor, "_read_rows", "worker.got_rows", enter=False)
    around(worker.Worker, "publish", "worker.publish")
    around(worker.Worker, "publish_log", "worker.publish_log")
    around(executor, "_child_main", "task.main")
    around(runner.Batch, "from_inputs", "task.unpickle_inputs")
    around(runner, "run_calls", "task.run_calls")
    around(map_job, "write_job", "client.write_job")
    around(worker, "start_workers", "client.fork_workers")
    intervals: dict[str, list[float]] = collections.defaultdict(list)
    for rep in range(reps):
        os.ftruncate(fd, 0)
        t0 = time.time()
        mark("client.submit>")
        job = map_job.submit(inc, range(n), "arg")
        mark("client.submit<")
        status = job.wait()
        mark("client.completed")
        job.get_map_results()
        mark("client.results")
        assert status == "Completed"
        time.sleep(0.2)           # let the workers write their last lines
        events = []
        with open(path) as f:
            for line in f:
                pid, label, t = line.split()
                events.append((float(t) - t0, int(pid), label))
        events.sort()
        first = lambda label: min((t for t, _, lb in events if lb == label), default=None)  # noqa: E731
        last = lambda label: max((t for t, _, lb in events if lb == label), default=None)   # noqa: E731
        steps = [("client: submit (validate, registry, write inputs, fork)", 0, first("client.submit<")),
                 ("client: of which write_job", first("client.write_job>"), first("client.write_job<")),
                 ("client: of which fork workers", first("client.fork_workers>"), first("client.fork_workers<")),
                 ("worker: forked -> Worker() built", first("client.fork_workers>"), first("worker.init<")),
                 ("worker: Worker() -> first chunk claimed", first("worker.init<"), first("worker.claim<")),
                 ("worker: claimed -> inputs read", first("worker.claim<"), first("worker.read_inputs<")),
                 ("worker: fork of the task process", first("worker.fork_task_process>"),
                  first("worker.fork_task_process<")),
                 ("task: started -> inputs unpickled as calls", first("task.main>"), first("task.unpickle_inputs<")),
                 ("submit -> first task runs", 0, first("task.run_calls>")),
                 ("first task runs -> last chunk published", first("task.run_calls>"), last("worker.publish<")),
                 ("last chunk published -> client sees Completed", last("worker.publish<"), first("client.completed")),
                 ("get_map_results", first("client.completed"), first("client.results")),
                 ("TOTAL", 0, first("client.results"))]
        for label, a, b in steps:
            if a is not None and b is not None:
                intervals[label].append(b - a)
        spans = collections.defaultdict(float)
        opened: dict = {}
        for t, pid, label in events:
            name, edge = label[:-1], label[-1]
            if edge == ">":
                opened[(pid, name)] = t
            elif edge == "<" and (pid, name) in opened:
                spans[name] += t - opened.pop((pid, name))
        for name in ("task.run_calls", "task.unpickle_inputs", "worker.publish", "worker.publish_log"):
            intervals[f"sum over processes: {name}"].append(spans[name])
        intervals["chunks"].append(job.spec.chunk_count)
        deploy.jobs.delete(name=job.name)
    os.close(fd)
    print(f"one deploy.map(inc, range({n:,})) job, step by step: median of {reps} jobs, ms")
    for label, values in intervals.items():
        scale = 1 if label == "chunks" else 1000
        print(f"  {label:58} {statistics.median(values) * scale:8.1f}")


def pertask(n: int) -> None:
    """The per-task steps of a chunk, in this process (no fork, no scheduling noise): the
    best of 7 repeats over `n` tasks, in µs per task, against what Pool's worker does."""
    import mmap
    import pickle
    import timeit
    from deploy.worker import runner
    from deploy.jobdir.results import ChunkResult
    items = list(range(n))
    raw = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    batch = runner.Batch.from_inputs(raw, 0, 1, 1)
    slot = runner.Slot(mmap.mmap(-1, runner.Slot.SIZE))
    devnull = os.open(os.devnull, os.O_WRONLY)
    output = runner.TaskOutput(devnull)

    def loop(hooks):
        result = ChunkResult("h", "w")
        runner.run_calls(inc, batch, result, "arg", hooks)
        return result

    done = loop(runner.Hooks(output, slot, lambda: None, 0.5))
    blob = runner.dumps_result(done)
    steps = [
        ("task process: unpickle the chunk's inputs (Batch.from_inputs)",
         lambda: runner.Batch.from_inputs(raw, 0, 1, 1)),
        ("task process: run_calls, as in a task process (slot, output)",
         lambda: loop(runner.Hooks(output, slot, lambda: None, 0.5))),
        ("task process: run_calls without the shared slot", lambda: loop(runner.Hooks(output))),
        ("task process: pickle the rows (dumps_result)", lambda: runner.dumps_result(done)),
        ("client: unpickle the published rows (Job._chunk)",
         lambda: ChunkResult.from_dict(pickle.loads(blob))),
        ("for comparison, Pool's worker: list(map(f, chunk))", lambda: list(map(inc, items))),
        ("for comparison, Pool: pickle + unpickle the chunk's results",
         lambda: pickle.loads(pickle.dumps(list(map(inc, items)), protocol=pickle.HIGHEST_PROTOCOL))),
    ]
    print(f"per-task cost of the steps of one {n:,}-task chunk of inc(x), µs per task (best of 7)")
    total = 0.0
    for label, fn in steps:
        best = min(timeit.repeat(fn, number=1, repeat=7)) / n * 1e6
        if label.startswith(("task process", "client")) and "without" not in label:
            total += best
        print(f"  {label:62} {best:6.3f}")
    print(f"  {'deploy total (the steps above, once each)':62} {total:6.3f}")
    os.close(devnull)


def cpu(n: int, reps: int, seconds: float = 0.25) -> None:
    """Where a CPU-bound job's efficiency goes: start, the client's own CPU, the tail."""
    import resource
    from deploy import map_job
    cores = os.cpu_count() or 1
    ideal = n * seconds / cores
    for _ in range(reps):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0, e0 = time.perf_counter(), time.time()
        job = map_job.submit(burn, [seconds] * n, "arg")
        status = job.wait()
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        client_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        chunks = list(job._chunks.values())
        first = min(min(c.start) for c in chunks)
        last = max(max(c.end) for c in chunks)
        ends: dict = collections.defaultdict(float)
        busy: dict = collections.defaultdict(float)
        for c in chunks:
            ends[c.worker] = max(ends[c.worker], max(c.end))
            busy[c.worker] += sum(e - s for s, e in zip(c.start, c.end))
        print(f"{n} x burn({seconds}) on {cores} cores, {status}: wall {wall:.3f} s, efficiency "
              f"{ideal / wall:.3f} (ideal {ideal:.2f} s)")
        print(f"  submit -> first task {1000 * (first - e0):.0f} ms; last task -> wait returns "
              f"{1000 * (e0 + wall - last):.0f} ms; client CPU during the job {1000 * client_cpu:.0f} ms")
        print(f"  tail: workers finished {1000 * (max(ends.values()) - min(ends.values())):.0f} ms "
              f"apart; wall in tasks per worker {', '.join(f'{v:.3f}' for v in busy.values())} s "
              f"for {n * seconds / len(busy):.2f} s of CPU each (the rest: other load)")


def client(n: int, reps: int) -> None:
    """py-spy on the client only, over `reps` jobs (workers are other processes: not sampled)."""
    os.makedirs(OUT, exist_ok=True)
    raw = os.path.join(OUT, "client.txt")
    code = ("import deploy\n"
            "def inc(x):\n    return x + 1\n"
            f"for _ in range({reps}):\n    deploy.map(inc, range({n}), stream=False)\n")
    for idle, name in ((False, "client.txt"), (True, "client-idle.txt")):
        raw = os.path.join(OUT, name)
        cmd = ["py-spy", "record", "-r", "1000", "--format", "raw", "-o", raw]
        cmd += ["--idle"] if idle else []
        subprocess.run(cmd + ["--", sys.executable, "-c", code], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"client, {reps} x deploy.map(inc, range({n:,})), py-spy "
              f"{'with idle (wall clock)' if idle else 'on-CPU only'}: {raw}")
        collapse(raw)


def workers(n: int) -> None:
    """py-spy attached to each worker (and its task process) while one long job runs."""
    import deploy
    from deploy import map_job
    os.makedirs(OUT, exist_ok=True)
    job = map_job.submit(inc, range(n), "arg", max_tasks=n)
    pids = job._launch()["handle"]["pids"]
    spies = []
    for pid in pids:
        raw = os.path.join(OUT, f"worker-{pid}.txt")
        spies.append((raw, subprocess.Popen(
            ["py-spy", "record", "-r", "1000", "--subprocesses", "--format", "raw", "-o", raw,
             "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    t = time.perf_counter()
    status = job.wait()
    wall = time.perf_counter() - t
    for _, spy in spies:          # py-spy can hang on a process that exits under it
        try:
            spy.wait(timeout=5)
        except subprocess.TimeoutExpired:
            spy.send_signal(signal.SIGINT)        # py-spy writes what it has and detaches
            try:
                spy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
    print(f"workers of one job of {n:,} tiny tasks ({job.spec.chunk_count} chunks, {status}, "
          f"wait {wall:.2f} s): py-spy on {len(pids)} workers + their task processes")
    merged = os.path.join(OUT, "workers.txt")
    with open(merged, "w") as out:
        for raw, _ in spies:
            if os.path.exists(raw):
                with open(raw) as f:
                    shutil.copyfileobj(f, out)
                os.unlink(raw)
    print(f"  raw stacks: {merged}")
    collapse(merged, top=22)
    deploy.jobs.delete(name=job.name)


def closure(mib: int) -> None:
    """Peak client memory and time of each step of deploy.map over a lambda closing over an
    array (the task processes share the array with the client by fork)."""
    import numpy as np
    import deploy
    table: dict[str, list[float]] = {}
    instrument(table)
    peaks = []
    import deploy.map_job as mj
    for name in ("_pickle_callable", "write_job"):
        fn = getattr(mj, name)

        def after(*args, _fn=fn, _name=name, **kwargs):
            out = _fn(*args, **kwargs)
            peaks.append((_name, hwm_mb()))
            return out
        setattr(mj, name, after)
    base = hwm_mb()
    arr = np.arange(mib * (1 << 20) // 8, dtype=np.float64)
    step = len(arr) // 8
    f = lambda i: float(arr[i * step:(i + 1) * step].sum())   # noqa: E731
    with_array = hwm_mb()
    t = time.perf_counter()
    out = deploy.map(f, range(8), stream=False)
    wall = time.perf_counter() - t
    assert len(out) == 8
    print(f"deploy.map(lambda over a {mib} MiB array, range(8)): wall {wall:.2f} s")
    print(f"  client peak RSS: interpreter {base:.0f} MB, + array {with_array:.0f} MB, "
          + ", ".join(f"after {name} {peak:.0f} MB" for name, peak in peaks)
          + f", at the end {hwm_mb():.0f} MB")
    for label, values in table.items():
        print(f"  {label:52} {values[0] * 1000:9.1f} ms")
    home = os.environ["DEPLOY_HOME"]
    sizes = [(os.path.getsize(os.path.join(d, fn)), os.path.join(d, fn))
             for d, _, files in os.walk(home) for fn in files]
    biggest = max(sizes)
    print(f"  largest file in the job directory: {biggest[1].split('/')[-1]} {biggest[0] / (1 << 20):.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["phases", "timeline", "pertask", "cpu", "client",
                                         "workers", "closure", "all"])
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--mib", type=int, default=2048)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="deploy-profile-home-")
    os.environ.update(DEPLOY_HOME=home, DEPLOY_PROGRESS="false")
    try:
        if args.what in ("phases", "all"):
            phases(args.n or 100_000, args.reps or 10)
        if args.what in ("timeline", "all"):
            timeline(args.n or 100_000, args.reps or 10)
        if args.what in ("pertask", "all"):
            pertask(args.n or 100_000)
        if args.what in ("cpu", "all"):
            cpu(args.n or 64, args.reps or 2)
        if args.what in ("client", "all"):
            client(args.n or 100_000, args.reps or 20)
        if args.what in ("workers", "all"):
            workers(args.n or 3_000_000)
        if args.what in ("closure", "all"):
            closure(args.mib)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
