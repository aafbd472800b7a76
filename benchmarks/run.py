"""deploy against multiprocessing, concurrent.futures, joblib, Dask and Ray, side by side.

    python benchmarks/run.py            # the full suite (~15 min on 2 cores); updates
                                        # benchmarks/results.{md,png,json} and README.md
    python benchmarks/run.py --quick    # small sizes, one round: a smoke test (~3 min),
                                        # written to benchmarks/results/quick/
    python benchmarks/run.py --workloads tiny,small --tools deploy,pool

Every measurement runs in a fresh interpreter (benchmarks/workloads.py); imports are not
timed. For each peer, the rounds alternate deploy and the peer (deploy first in even
rounds, the peer first in odd ones), and the ratio deploy/peer is the median of those
deploy runs over the median of the peer's. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "workloads.py")
CORES = os.cpu_count() or 1
PEERS = ["pool", "ppe", "joblib", "dask", "dask-batched", "ray", "ray-batched"]
TOOLS = ["deploy"] + PEERS
LABEL = {"deploy": "deploy (LocalAsync)", "pool": "multiprocessing.Pool.map",
         "ppe": "ProcessPoolExecutor.map", "joblib": "joblib (loky)",
         "dask": "Dask LocalCluster + Client.map",
         "dask-batched": "Dask Client.map over batches (~4 per worker)", "ray": "Ray remote tasks",
         "ray-batched": "Ray remote tasks over batches (~4 per CPU)"}
SHORT = {"deploy": "deploy", "pool": "Pool", "ppe": "PPE", "joblib": "joblib", "dask": "Dask",
         "dask-batched": "Dask batched",
         "ray": "Ray", "ray-batched": "Ray batched"}
GiB, MiB = 1 << 30, 1 << 20

# Sizes, rounds per peer (each round = one deploy run + one peer run) and the time limit of
# one run. Dask and Ray need minutes for 100k / 1M single tasks, so they get one round and,
# for 1M, a time limit (the peak reached by then is reported as a lower bound).
FULL = {
    "tiny": dict(params={"n": 100_000, "no_warm": ["dask", "ray"]},
                 rounds={"pool": 5, "ppe": 5, "joblib": 3, "dask": 1, "dask-batched": 3, "ray": 1,
                         "ray-batched": 3},
                 timeout=420),
    "cpu": dict(params={"tasks": 64, "seconds": 0.25},
                rounds={"pool": 3, "ppe": 1, "joblib": 1, "dask": 1, "dask-batched": 1, "ray": 1,
                        "ray-batched": 1},
                timeout=120),
    "small": dict(params={"n": 4}, rounds={"pool": 5, "ppe": 3, "joblib": 3, "dask": 3, "dask-batched": 0,
                                           "ray": 3, "ray-batched": 0},
                  timeout=120),
    "mem1m": dict(params={"n": 1_000_000}, rounds={"pool": 2, "ppe": 1, "joblib": 1, "dask": 1,
                                                   "dask-batched": 0, "ray": 1, "ray-batched": 0},
                  timeout=150, tool_timeout={"dask": 45, "ray": 45}),
    # Dask copies the pickled lambda into the scheduler and every worker (~9x the array at
    # 256 MiB): at 2 GiB that is ~18 GB, more than this shared 24 GB machine can spare, so
    # Dask runs this workload with a 256 MiB array (compare PSS / array, not GB).
    "closure": dict(params={"bytes": 2 * GiB, "tasks": 8},
                    rounds={"pool": 1, "ppe": 1, "joblib": 1, "dask": 1, "dask-batched": 0, "ray": 1,
                            "ray-batched": 0},
                    timeout=240,
                    tool_params={"dask": {"bytes": 256 * MiB}}),
    "ssh": dict(params={"rounds": 3}, timeout=180),
}
QUICK = {
    "tiny": dict(params={"n": 10_000, "no_warm": ["dask", "ray"]}, rounds={}, timeout=120),
    "cpu": dict(params={"tasks": 16, "seconds": 0.1}, rounds={}, timeout=60),
    "small": dict(params={"n": 4}, rounds={}, timeout=60),
    "mem1m": dict(params={"n": 100_000}, rounds={}, timeout=60, tool_timeout={"dask": 30, "ray": 30}),
    "closure": dict(params={"bytes": 256 * MiB, "tasks": 8}, rounds={}, timeout=120),
    "ssh": dict(params={"rounds": 1}, timeout=240),
}
ORDER = ["tiny", "cpu", "small", "mem1m", "closure", "ssh"]
TITLE = {"tiny": "tiny tasks (x + 1): wall", "cpu": "CPU-bound tasks: efficiency",
         "small": "small job (4 tasks): latency", "mem1m": "tiny tasks in one job: client peak RSS",
         "closure": "lambda over a large array: peak PSS of all processes",
         "ssh": "SSH cluster (3 loopback hosts)"}


# ----------------------------------------------------------------------------- processes

def become_subreaper() -> None:
    """Orphaned descendants (deploy's detached workers, Ray's daemons) become our children
    instead of init's: the monitor sees them, and nothing outlives a run."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                table[int(entry)] = (int(fields[1]), fields[0].decode())
            except (OSError, IndexError, ValueError):
                pass
    return table


def descendants(root: int, table: dict | None = None) -> list[int]:
    table = table if table is not None else proc_table()
    children = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    out, todo = [], list(children[root])
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children[pid])
    return out


def reap_orphans(keep: int) -> None:
    """Reap zombies that were re-parented to us (never the subprocess we wait on)."""
    me = os.getpid()
    for pid, (ppid, state) in proc_table().items():
        if ppid == me and state == "Z" and pid != keep:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def kill_leftovers(grace: float = 10.0) -> int:
    """Wait for our descendants to exit by themselves, then SIGKILL the rest by pid."""
    deadline = time.monotonic() + grace
    while True:
        reap_orphans(-1)
        table = proc_table()
        alive = [p for p in descendants(os.getpid(), table) if table[p][1] not in ("Z", "X")]
        if not alive:
            return 0
        if time.monotonic() > deadline:
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
            reap_orphans(-1)
            return len(alive)
        time.sleep(0.05)


def read_kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class Monitor(threading.Thread):
    """Samples, every `interval` s: the client's VmHWM (peak RSS), and optionally the PSS
    (proportional set size, /proc/PID/smaps_rollup) and RSS summed over all our descendant
    processes, /dev/shm in use and the machine's MemAvailable. Kills the run if the machine
    runs low on memory."""

    def __init__(self, client: int, interval: float, pss: bool, min_available_kb: int) -> None:
        super().__init__(daemon=True)
        self.client, self.interval, self.pss = client, interval, pss
        self.min_available_kb = min_available_kb
        self.stop_event = threading.Event()
        self.peak_pss = self.peak_rss = self.client_hwm = self.peak_procs = 0
        self.shm0 = shm_used()
        self.peak_shm = 0
        self.killed: str | None = None
        self.samples = 0

    def run(self) -> None:
        me = os.getpid()
        while not self.stop_event.is_set():
            hwm = read_kb(f"/proc/{self.client}/status", "VmHWM:")
            self.client_hwm = max(self.client_hwm, hwm)
            if self.pss:
                pss = rss = 0
                pids = descendants(me)
                for pid in pids:
                    pss += read_kb(f"/proc/{pid}/smaps_rollup", "Pss:")
                    rss += read_kb(f"/proc/{pid}/status", "VmRSS:")
                self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
                self.peak_procs = max(self.peak_procs, len(pids))
                self.peak_shm = max(self.peak_shm, shm_used() - self.shm0)
            self.samples += 1
            if read_kb("/proc/meminfo", "MemAvailable:") < self.min_available_kb:
                self.killed = "the machine ran low on memory (MemAvailable < " \
                              f"{self.min_available_kb // 1024} MB)"
                kill_tree(self.client)
                return
            self.stop_event.wait(self.interval)


def kill_tree(pid: int) -> None:
    for p in descendants(os.getpid()):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cpu_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of every descendant reaped so far."""
    import resource
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def run_one(workload: str, tool: str, params: dict, timeout: float, monitor: str | None) -> dict:
    """One measurement in a fresh interpreter; returns its result dict (or an error).

    Also measures the other load on the machine while it ran: busy CPU time of the whole
    machine minus the CPU time of this process tree, per second of wall time (in cores)."""
    spec = dict(params, workload=workload, tool=tool, cores=CORES)
    busy0, own0, wall0 = cpu_busy_seconds(), own_cpu_seconds(), time.monotonic()
    proc = subprocess.Popen([sys.executable, CHILD, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=ROOT)
    lines: list[str] = []
    errors: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True),
               threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)]
    for r in readers:
        r.start()
    mon = None
    if monitor:
        mon = Monitor(proc.pid, 0.05 if monitor == "pss" else 0.2, monitor == "pss",
                      min_available_kb=1536 * 1024)
        mon.start()
    out: dict = {"tool": tool}
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        out["timeout"] = timeout
        kill_tree(proc.pid)
        proc.wait()
    if mon is not None:
        mon.stop_event.set()
        mon.join()
    for r in readers:
        r.join(timeout=5)
    out["leftover_processes_killed"] = kill_leftovers()
    wall = time.monotonic() - wall0
    foreign = (cpu_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    out["other_load_cores"] = max(0.0, foreign / wall) if wall > 0 else None
    for line in lines:
        if line.startswith("BENCH "):
            msg = json.loads(line[6:])
            if "result" in msg:
                out.update(msg["result"])
            elif msg.get("phase") == "imported":
                out["import"] = msg["seconds"]
            elif "phase" in msg:
                out[msg["phase"]] = {k: v for k, v in msg.items() if k != "phase"}
    if mon is not None:
        out["client_peak_mb"] = mon.client_hwm / 1024
        if mon.pss:
            out.update(peak_pss_mb=mon.peak_pss / 1024, peak_rss_sum_mb=mon.peak_rss / 1024,
                       peak_shm_mb=mon.peak_shm / MiB, peak_processes=mon.peak_procs,
                       samples=mon.samples)
        if mon.killed:
            out["killed"] = mon.killed
    if "cold" not in out and "error" not in out:
        tail = "".join(errors[-6:]).strip().splitlines()
        out["error"] = (f"timed out after {timeout:g} s" if "timeout" in out
                        else (tail[-1] if tail else f"exit code {proc.returncode}"))
        if "killed" in out:
            out["error"] = out["killed"]
    return out


# ----------------------------------------------------------------------------- scheduling

def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_workload(workload: str, conf: dict, tools: list[str], quick: bool, log) -> dict:
    """Paired alternating rounds: for each peer, `rounds` x (deploy, peer), the order
    flipping each round; peers in turn, their order rotating each round."""
    params, rounds = conf["params"], conf["rounds"]
    commit = git_commit()
    monitor = {"mem1m": "hwm", "closure": "pss"}.get(workload)
    peers = [t for t in PEERS if t in tools]
    runs: dict[str, list] = defaultdict(list)
    paired: dict[str, list] = defaultdict(list)
    need = {p: rounds.get(p, 1) for p in peers}
    started = loadavg()
    t0 = time.monotonic()
    r = 0
    one = lambda tool: run_one(workload, tool,                            # noqa: E731
                               dict(params, **conf.get("tool_params", {}).get(tool, {})),
                               conf.get("tool_timeout", {}).get(tool, conf["timeout"]), monitor)
    if not peers and "deploy" in tools:
        for _ in range(max(rounds.values(), default=1)):
            runs["deploy"].append(one("deploy"))
            log(workload, runs["deploy"][-1])
    while any(need.values()):
        active = [p for p in peers if need[p] > 0]
        active = active[r % len(active):] + active[:r % len(active)]
        for peer in active:
            order = ["deploy", peer] if r % 2 == 0 else [peer, "deploy"]
            if "deploy" not in tools:
                order = [peer]
            for tool in order:
                res = one(tool)
                log(workload, res)
                runs[tool].append(res)
                if tool == "deploy":
                    paired[peer].append(res)
            need[peer] -= 1
        r += 1
    return {"workload": workload, "params": params, "runs": dict(runs), "paired": dict(paired),
            "load_before": started, "load_after": loadavg(), "seconds": time.monotonic() - t0,
            "commit": commit, "commit_after": git_commit()}


def parse_ssh(text: str) -> dict:
    """Efficiencies from bench_ssh.py's output (its format is its author's: parse loosely,
    and keep the text verbatim in the report)."""
    import re
    out: dict = {"rows": {}}
    for line in text.splitlines():
        m = re.match(r"\s*(SshCluster|LocalAsync)\s+makespan efficiency\s+([\d.]+)", line)
        if m:
            row = {"makespan_efficiency": float(m.group(2))}
            e2e = re.search(r"end-to-end\s+([\d.]+)", line)
            if e2e:
                row["end_to_end_efficiency"] = float(e2e.group(1))
            out["rows"][m.group(1)] = row
        elif "ideal" in line and "tasks" in line and "setup" not in out:
            out["setup"] = line.strip()
    return out


def run_ssh(conf: dict, log) -> dict:
    """benchmarks/bench_ssh.py (another engineer's), when it exists and can run here."""
    script = os.path.join(HERE, "bench_ssh.py")
    out: dict = {"workload": "ssh", "load_before": loadavg()}
    if not os.path.exists(script):
        out["skipped"] = "benchmarks/bench_ssh.py does not exist yet"
        return out
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, script, "--rounds", str(conf["params"]["rounds"])],
                              capture_output=True, text=True, timeout=conf["timeout"], cwd=ROOT,
                              start_new_session=True)
        text = proc.stdout + proc.stderr
        out["output"] = proc.stdout.strip()
        if proc.returncode != 0:
            tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["no output"]
            out["skipped"] = f"bench_ssh.py exited {proc.returncode}: {tail[0][:300]}"
        out.update(parse_ssh(proc.stdout))
    except subprocess.TimeoutExpired:
        out["skipped"] = f"bench_ssh.py did not finish within {conf['timeout']} s"
    kill_leftovers()
    out["seconds"] = time.monotonic() - t0
    out["load_after"] = loadavg()
    log("ssh", out)
    return out


# ----------------------------------------------------------------------------- summary

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ok_runs(runs):
    return [r for r in runs if "error" not in r]


def metric(workload: str, run: dict):
    """The headline number of one run (lower is better, except efficiency)."""
    closure = (run["peak_pss_mb"] * MiB / run["array_bytes"]
               if run.get("peak_pss_mb") and run.get("array_bytes") else None)
    return {"tiny": run.get("cold"), "small": run.get("cold"), "cpu": run.get("efficiency"),
            "mem1m": run.get("peak_mb"), "closure": closure}[workload]


def adjusted_efficiency(run: dict):
    """Efficiency on the CPU the rest of the machine left: ideal / wall x cores / (cores -
    other load). An approximation (the kernel shares cores between runnable threads, not in
    proportion to past load); None when the other load took nearly everything."""
    other = run.get("other_load_cores")
    if run.get("efficiency") is None or other is None or other > CORES - 0.25:
        return None
    return run["efficiency"] * CORES / (CORES - other)


def summarize(result: dict) -> dict:
    w = result["workload"]
    if w == "ssh":
        return {}
    rows = {}
    for tool, runs in result["runs"].items():
        good = ok_runs(runs)
        row = {"runs": len(good), "failed": len(runs) - len(good),
               "errors": sorted({r["error"] for r in runs if "error" in r})}
        if w == "cpu":
            row["efficiency_adj"] = med(adjusted_efficiency(r) for r in good)
        for key in ("cold", "warm", "startup", "run", "import", "efficiency", "efficiency_warm",
                    "peak_mb", "baseline_mb", "over_baseline_mb", "peak_pss_mb",
                    "peak_rss_sum_mb", "peak_shm_mb", "client_peak_mb", "peak_processes",
                    "other_load_cores"):
            row[key] = med(r.get(key) for r in good)
        if w == "mem1m":
            lower = [r for r in runs if "error" in r and r.get("client_peak_mb")]
            if not good and lower:
                row["peak_at_least_mb"] = max(r["client_peak_mb"] for r in lower)
                row["baseline_mb"] = med(r.get("baseline", {}).get("rss_kb", 0) / 1024 for r in lower)
        if w == "closure" and good:
            row["array_bytes"] = good[0]["array_bytes"]
            row["ratio_to_array"] = row["peak_pss_mb"] * MiB / good[0]["array_bytes"]
            row["variant"] = good[0].get("variant")
            row["lambda_error"] = good[0].get("lambda_error")
        rows[tool] = row
    for peer, deploy_runs in result.get("paired", {}).items():
        if peer not in rows:
            continue
        mine = med(metric(w, r) for r in ok_runs(deploy_runs))
        theirs = med(metric(w, r) for r in ok_runs(result["runs"][peer]))
        rows[peer]["deploy_paired"] = mine
        if w == "cpu":            # efficiency: higher is better; compare walls instead
            mine = med(r["cold"] for r in ok_runs(deploy_runs))
            theirs = med(r["cold"] for r in ok_runs(result["runs"][peer]))
        if w == "mem1m" and theirs is None and rows[peer].get("peak_at_least_mb"):
            rows[peer]["ratio_at_most"] = mine / rows[peer]["peak_at_least_mb"]
        rows[peer]["ratio"] = mine / theirs if mine and theirs else None
        if w in ("tiny", "small"):
            dw = med(r.get("warm") for r in ok_runs(deploy_runs))
            pw = rows[peer].get("warm")
            rows[peer]["ratio_warm"] = dw / pw if dw and pw else None
    return rows


def targets(summary: dict) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/MISS/n/a)."""
    out = []

    def add(name, value, ok, fmt):
        out.append((name, "not measured" if value is None else fmt(value),
                    "n/a" if value is None else ("PASS" if ok(value) else "MISS")))

    tiny = summary.get("tiny", {})
    add("100k tiny: deploy wall <= 1.0x Pool.map (cold)", tiny.get("pool", {}).get("ratio"),
        lambda v: v <= 1.0, lambda v: f"{v:.2f}x")
    for peer in ("joblib", "dask", "ray"):
        add(f"100k tiny: deploy wall <= 0.5x {SHORT[peer]} (cold)",
            tiny.get(peer, {}).get("ratio"), lambda v: v <= 0.5, lambda v: f"{v:.3f}x")
    cpu = summary.get("cpu", {}).get("deploy", {})
    note = ""
    if cpu.get("other_load_cores") and cpu["other_load_cores"] > 0.1:
        note = (f" (other load {cpu['other_load_cores']:.2f} cores; ≈ "
                f"{f(cpu.get('efficiency_adj'))} on the CPU left)")
    add("CPU efficiency >= 0.97", cpu.get("efficiency"), lambda v: v >= 0.97,
        lambda v: f"{v:.3f}{note}")
    add("small job latency <= 3x Pool's", summary.get("small", {}).get("pool", {}).get("ratio"),
        lambda v: v <= 3.0, lambda v: f"{v:.2f}x")
    add("1M tasks: client peak RSS <= 500 MB", summary.get("mem1m", {}).get("deploy", {}).get("peak_mb"),
        lambda v: v <= 500, lambda v: f"{v:.0f} MB")
    add("closure over 2 GB: peak total PSS <= 1.2x array",
        summary.get("closure", {}).get("deploy", {}).get("ratio_to_array"),
        lambda v: v <= 1.2, lambda v: f"{v:.2f}x")
    return out


# ----------------------------------------------------------------------------- reports

def f(value, spec=".3f", none="—"):
    return none if value is None else format(value, spec)


def ratio_cell(row: dict, key: str = "ratio", spec=".2f") -> str:
    if row.get(key) is not None:
        return format(row[key], spec)
    if row.get("ratio_at_most") is not None:
        return "< " + format(row["ratio_at_most"], spec)
    return "—"


def tool_cell(tool: str, row: dict) -> str:
    note = f" ({row['runs']} run{'s' if row['runs'] != 1 else ''})"
    if row.get("failed"):
        note = f" ({row['runs']} ok, {row['failed']} failed)"
    return f"{'**' if tool == 'deploy' else ''}{LABEL[tool]}{'**' if tool == 'deploy' else ''}{note}"


def markdown(results: dict, summary: dict, machine: dict, target_rows: list, quick: bool) -> str:
    L = []
    L.append(f"Measured {machine['date']} on {machine['summary']}"
             + (" — **quick mode (small sizes), not the reference run**" if quick else "") + ".")
    L.append(f"Load average (1/5/15 min) at start {machine['load_start']}, at end "
             f"{machine['load_end']}; the suite took {machine['seconds'] / 60:.1f} min.")
    L.append("")
    L.append("| target | measured | |")
    L.append("|---|---|---|")
    for name, value, verdict in target_rows:
        L.append(f"| {name} | {value} | **{verdict}** |")
    L.append("")
    for w in ORDER:
        if w not in results:
            continue
        res, rows = results[w], summary.get(w, {})
        p = res.get("params", {})
        if w == "tiny":
            L.append(f"### 1. {p['n']:,} tiny tasks (`x + 1`): wall time, s")
            L.append("")
            L.append("cold = creating the pool/cluster + the first map (imports excluded); "
                     "warm = a second map on the same pool (deploy: a second job in the same "
                     "process; its workers start again, as in every job). Dask and Ray: warm = "
                     "the first map without the start-up (a second map would take minutes). "
                     "deploy/peer = median of the deploy runs paired with that peer ÷ the "
                     "peer's median.")
            L.append("")
            L.append("| tool | cold | start-up | warm | deploy/peer cold | deploy/peer warm |")
            L.append("|---|---:|---:|---:|---:|---:|")
            for t, row in rows.items():
                L.append(f"| {tool_cell(t, row)} | {f(row['cold'])} | {f(row['startup'])} | "
                         f"{f(row['warm'])} | {ratio_cell(row, spec='.3f')} | "
                         f"{ratio_cell(row, 'ratio_warm', '.3f')} |")
        elif w == "cpu":
            ideal = p["tasks"] * p["seconds"] / CORES
            L.append(f"### 2. {p['tasks']} CPU-bound tasks of {p['seconds']} s: efficiency = "
                     f"ideal / wall (ideal = {p['tasks']} × {p['seconds']} s / {CORES} cores "
                     f"= {ideal:.2f} s)")
            L.append("")
            L.append("The machine is shared: *other load* is the CPU the rest of the machine used "
                     "during the run (busy time from /proc/stat minus this process tree's), in "
                     f"cores out of {CORES}; it slows every tool alike.")
            L.append("")
            L.append("Efficiency warm = ideal / the map alone, without creating the pool "
                     "(ProcessPoolExecutor and joblib start their processes inside the map).")
            L.append("")
            L.append("*≈ on the CPU left* = efficiency cold × cores ÷ (cores − other load), per "
                     "run, then the median: a rough correction for the other load (not for "
                     "Ray, whose own daemons partly count as other load here).")
            L.append("")
            L.append("| tool | wall cold, s | efficiency cold | efficiency warm (start-up excluded) "
                     "| other load, cores | ≈ efficiency on the CPU left | deploy/peer wall |")
            L.append("|---|---:|---:|---:|---:|---:|---:|")
            for t, row in rows.items():
                adj = "—" if t in ("ray", "ray-batched") else f(row.get("efficiency_adj"))
                L.append(f"| {tool_cell(t, row)} | {f(row['cold'])} | {f(row['efficiency'])} | "
                         f"{f(row['efficiency_warm'])} | {f(row['other_load_cores'], '.2f')} | "
                         f"{adj} | {ratio_cell(row)} |")
        elif w == "small":
            L.append(f"### 3. A small job ({p['n']} tasks): end-to-end latency, s")
            L.append("")
            L.append("| tool | latency (start-up + job) | start-up | job on a warm pool | import "
                     "(not counted) | deploy/peer |")
            L.append("|---|---:|---:|---:|---:|---:|")
            for t, row in rows.items():
                L.append(f"| {tool_cell(t, row)} | {f(row['cold'])} | {f(row['startup'])} | "
                         f"{f(row['warm'])} | {f(row['import'])} | {ratio_cell(row)} |")
        elif w == "mem1m":
            L.append(f"### 4. {p['n']:,} tiny tasks in one job: client peak RSS, MB")
            L.append("")
            L.append("Peak RSS of the client process (VmHWM, = getrusage ru_maxrss), in a fresh "
                     "interpreter per run; baseline = RSS after the interpreter and the tool's "
                     "imports. Workers, schedulers and daemons are not the client and are not "
                     "counted (Dask's scheduler runs in the client process, so it is).")
            L.append("")
            L.append("| tool | peak RSS | baseline | peak − baseline | wall, s | deploy/peer (peak) |")
            L.append("|---|---:|---:|---:|---:|---:|")
            for t, row in rows.items():
                peak = f(row["peak_mb"], ".0f")
                over = f(row["over_baseline_mb"], ".0f")
                wall = f(row["cold"], ".2f")
                if row.get("peak_at_least_mb"):
                    limit = FULL["mem1m"].get("tool_timeout", {}).get(t)
                    peak = f"≥ {row['peak_at_least_mb']:.0f}"
                    over = f"≥ {row['peak_at_least_mb'] - (row.get('baseline_mb') or 0):.0f}"
                    wall = f"> {results[w]['runs'][t][0].get('timeout', limit)} (stopped)"
                L.append(f"| {tool_cell(t, row)} | {peak} | {f(row['baseline_mb'], '.0f')} | "
                         f"{over} | {wall} | {ratio_cell(row)} |")
        elif w == "closure":
            size = p["bytes"] / GiB
            L.append(f"### 5. A lambda closing over a {size:g} GiB numpy array, {p['tasks']} tasks "
                     "summing a slice each: peak memory of all processes")
            L.append("")
            L.append("PSS (proportional set size: a page shared by k processes counts 1/k in "
                     "each) summed over the client and every process it started, sampled every "
                     "50 ms from /proc/PID/smaps_rollup. RSS would count the copy-on-write pages "
                     "the workers share with the client once per process; the RSS sum is shown "
                     "for comparison. /dev/shm = growth of shared-memory files (joblib's memmaps, "
                     "Ray's object store), counted in PSS only where a process maps them.")
            L.append("")
            L.append("| tool | code | array, GiB | peak PSS, GB | PSS / array | RSS sum, GB | "
                     "/dev/shm, GB | wall, s | deploy/peer (PSS / array) |")
            L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
            for t, row in rows.items():
                code = row.get("variant") or "—"
                if row.get("lambda_error"):
                    code += " (the lambda fails: " + row["lambda_error"][:70] + "…)"
                gb = lambda mb: None if mb is None else mb / 1024          # noqa: E731
                size = row.get("array_bytes")
                L.append(f"| {tool_cell(t, row)} | {code} | {f(size and size / GiB, '.2f')} | "
                         f"{f(gb(row['peak_pss_mb']), '.2f')} | "
                         f"{f(row.get('ratio_to_array'), '.2f')} | "
                         f"{f(gb(row['peak_rss_sum_mb']), '.2f')} | {f(gb(row['peak_shm_mb']), '.2f')} | "
                         f"{f(row['cold'], '.2f')} | {ratio_cell(row)} |")
        elif w == "ssh":
            L.append("### 6. SSH cluster: 200 tasks of 10 ms across three loopback sshd hosts")
            L.append("")
            if res.get("note"):
                L.append(f"Note: {res['note']}; load average before/after "
                         f"{res.get('load_before')} / {res.get('load_after')}.")
                L.append("")
            if res.get("skipped"):
                L.append(f"Skipped: {res['skipped']}")
            else:
                L.append("From `benchmarks/bench_ssh.py` (deploy only: no peer has an SSH-cluster "
                         "mode; the three hosts share this machine's cores). Its output:")
                L.append("")
                L.append("```text")
                L.append(res.get("output", "").strip())
                L.append("```")
                if res.get("rows"):
                    L.append("")
                    L.append("| | makespan efficiency | end-to-end efficiency |")
                    L.append("|---|---:|---:|")
                    for name, row in res["rows"].items():
                        L.append(f"| {name} | {f(row.get('makespan_efficiency'))} | "
                                 f"{f(row.get('end_to_end_efficiency'))} |")
        errs = [(t, e) for t, row in rows.items() for e in row.get("errors", [])]
        if errs:
            L.append("")
            L.extend(f"- {LABEL[t]}: {e}" for t, e in errs)
        if w != "ssh":
            L.append("")
            L.append(f"Load average before/after: {res.get('load_before')} / {res.get('load_after')}."
                     + (f" deploy's code changed during this workload: commit {res['commit']} at "
                        f"the start, {res['commit_after']} at the end."
                        if res.get("commit") and res.get("commit_after")
                        and res["commit"] != res["commit_after"] else
                        (f" deploy at commit {res['commit']}." if res.get("commit") else "")))
        L.append("")
    return "\n".join(L)


def chart(summary: dict, results: dict, path: str, title: str, target_rows: list) -> None:
    """A 2 x 3 grid: one panel per workload (deploy in red, peers in grey; the light bar of
    a pair is the warm / start-up-excluded figure), and the targets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    panels = [w for w in ("tiny", "cpu", "small", "mem1m", "closure") if summary.get(w)]
    if not panels:
        return
    fig, grid = plt.subplots(2, 3, figsize=(15, 9))
    axes = list(grid.flat)
    for ax, w in zip(axes, panels):
        rows = summary[w]
        tools = [t for t in TOOLS if t in rows]
        main, second, labels = [], [], []
        for t in tools:
            row = rows[t]
            if w in ("tiny", "small"):
                main.append(row["cold"]), second.append(row["warm"])
            elif w == "cpu":
                main.append(row["efficiency"])
                second.append(None if t in ("ray", "ray-batched") else row.get("efficiency_adj"))
            elif w == "mem1m":
                main.append(row["peak_mb"] or row.get("peak_at_least_mb")), second.append(None)
            else:
                main.append(row.get("ratio_to_array")), second.append(None)
            label = SHORT[t] + ("≥" if w == "mem1m" and row.get("peak_at_least_mb") else "")
            if w == "closure" and row.get("array_bytes") and \
                    row["array_bytes"] != results[w]["params"]["bytes"]:
                label += f"\n({row['array_bytes'] / MiB:g} MiB)"
            labels.append(label)
        x = list(range(len(tools)))
        paired = any(v is not None for v in second)
        width = 0.4 if paired else 0.7
        colors = ["#d62728" if t == "deploy" else "#7f7f7f" for t in tools]
        light = ["#f4a6a6" if t == "deploy" else "#cfcfcf" for t in tools]
        xs = [i - width / 2 for i in x] if paired else x
        labels_pair = (("measured", "≈ on the CPU the other load left") if w == "cpu"
                       else ("cold (start-up included)", "warm (start-up excluded)"))
        bars = ax.bar(xs, [v or 0 for v in main], width, color=colors,
                      label=labels_pair[0] if paired else None)
        for b, v in zip(bars, main):
            ax.annotate(("%.3g" % v) if v else "fail", (b.get_x() + b.get_width() / 2, v or 0),
                        ha="center", va="bottom", fontsize=7)
        if paired:
            warm = ax.bar([i + width / 2 for i in x], [v or 0 for v in second], width, color=light,
                          label=labels_pair[1])
            for b, v in zip(warm, second):
                if v:
                    ax.annotate("%.3g" % v, (b.get_x() + b.get_width() / 2, v), ha="center",
                                va="bottom", fontsize=6, color="#555555")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=9)
        p = results[w]["params"]
        if w == "tiny":
            ax.set_yscale("log")
            ax.set_ylabel("wall, s (log)")
            ax.set_title(f"1. {p['n']:,} tiny tasks: wall")
            pool = rows.get("pool", {}).get("cold")
            if pool:
                ax.axhline(pool, ls="--", lw=1, color="k", label="target: ≤ Pool (cold)")
        elif w == "cpu":
            ax.set_ylim(0, 1.12)
            ax.axhline(0.97, ls="--", lw=1, color="k", label="target 0.97")
            ax.set_ylabel("efficiency = ideal / wall (cold)")
            ax.set_title(f"2. {p['tasks']} × {p['seconds']} s CPU: efficiency")
        elif w == "small":
            ax.set_yscale("log")
            ax.set_ylabel("latency, s (log)")
            ax.set_title(f"3. small job ({p['n']} tasks): latency")
            pool = rows.get("pool", {}).get("cold")
            if pool:
                ax.axhline(3 * pool, ls="--", lw=1, color="k", label="target: ≤ 3 × Pool (cold)")
        elif w == "mem1m":
            ax.set_yscale("log")
            ax.axhline(500, ls="--", lw=1, color="k", label="target 500 MB")
            ax.set_ylabel("client peak RSS, MB (log)")
            ax.set_title(f"4. {p['n']:,} tasks: client peak RSS")
        else:
            ax.axhline(1.2, ls="--", lw=1, color="k", label="target 1.2 × array")
            ax.set_ylabel("peak PSS of all processes / array size")
            ax.set_title(f"5. lambda over a {p['bytes'] / GiB:g} GiB array: memory")
        if ax.get_yscale() == "log":
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7, loc="lower left" if w == "cpu" else "upper left")
    for ax in axes[len(panels):]:
        ax.axis("off")
    last = axes[-1]
    last.axis("off")
    text = "targets\n\n" + "\n".join(f"{verdict:5} {name}\n        measured: {value}"
                                      for name, value, verdict in target_rows)
    last.text(0.0, 1.0, text, va="top", ha="left", family="monospace", fontsize=8,
              transform=last.transAxes)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def versions() -> dict:
    from importlib import metadata
    out = {}
    for name in ("deploy", "cloudpickle", "joblib", "dask", "distributed", "ray", "numpy",
                 "matplotlib", "psutil"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    """The commit deploy was measured at, and whether deploy/ differed from it (read-only:
    GIT_OPTIONAL_LOCKS=0 keeps git from refreshing the index)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "deploy"], cwd=ROOT,
                               env=env, capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" with uncommitted changes in deploy/" if dirty else "")


def machine_info() -> dict:
    mem = read_kb("/proc/meminfo", "MemTotal:") / 1024 / 1024
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    osname = platform.platform()
    try:
        with open("/etc/os-release") as fh:
            osname = next(line.split("=", 1)[1].strip().strip('"') for line in fh
                          if line.startswith("PRETTY_NAME")) + f", Linux {platform.release()}"
    except (OSError, StopIteration):
        pass
    v = versions()
    info = {"cores": CORES, "cpu": cpu, "ram_gib": round(mem, 1),
            "python": platform.python_version(), "os": osname, "versions": v,
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": git_commit()}
    info["summary"] = (f"{CORES} cores ({cpu}), {mem:.0f} GiB RAM, {osname}, Python "
                       f"{info['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items())
                       + f"; deploy at commit {info['commit']}")
    return info


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(text: str) -> bool:
    path = os.path.join(HERE, "README.md")
    try:
        with open(path) as fh:
            readme = fh.read()
    except FileNotFoundError:
        return False
    if README_START not in readme or README_END not in readme:
        return False
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    block = (f"{README_START}\n![results](results.png)\n\n{text}\n{README_END}")
    with open(path, "w") as fh:
        fh.write(head + block + tail)
    return True


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round each")
    parser.add_argument("--workloads", default=",".join(ORDER),
                        help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma-separated subset of {','.join(TOOLS)}")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per peer (overrides)")
    parser.add_argument("--out", default=None, help="where results.{md,png,json} go "
                        "(default: benchmarks/ for a full run, benchmarks/results/quick/ for --quick)")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not put the results into benchmarks/README.md")
    parser.add_argument("--from-json", metavar="RESULTS_JSON",
                        help="measure nothing: render the tables, chart (and README, for a full "
                        "run) again from a results.json")
    args = parser.parse_args()
    from bytecode import ensure_compiled
    ensure_compiled()
    if args.from_json:
        render(args.from_json, args.out or os.path.dirname(os.path.abspath(args.from_json)),
               readme=not args.no_readme)
        return

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for w in workloads:
        if w not in ORDER:
            parser.error(f"unknown workload {w!r}")
    for t in tools:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r}")
    confs = json.loads(json.dumps(QUICK if args.quick else FULL))
    if args.rounds is not None:
        for conf in confs.values():
            conf["rounds"] = {p: args.rounds for p in PEERS}
    full_default = not args.quick and set(workloads) == set(ORDER) and set(tools) == set(TOOLS)
    out_dir = args.out or (HERE if full_default else os.path.join(HERE, "results",
                                                                  "quick" if args.quick else "partial"))
    os.makedirs(out_dir, exist_ok=True)

    become_subreaper()
    home = tempfile.mkdtemp(prefix="deploy-bench-home-")
    os.environ.update(DEPLOY_HOME=home, DEPLOY_PROGRESS="false", RAY_USAGE_STATS_ENABLED="0",
                      PYTHONWARNINGS="ignore")
    machine = machine_info()
    machine["load_start"] = loadavg()
    print(f"machine: {machine['summary']}")
    print(f"load average: {machine['load_start']}   DEPLOY_HOME={home}", flush=True)
    t0 = time.monotonic()
    # one job first, unmeasured, so the deploy home and its registry exist as for any user
    run_one("small", "deploy", {"n": 2}, 60, None)

    def log(workload: str, res: dict) -> None:
        if workload == "ssh":
            print(f"  ssh: {res.get('skipped') or res.get('output', '').splitlines()[-1:]}", flush=True)
            return
        keys = [k for k in ("cold", "warm", "efficiency", "peak_mb", "peak_pss_mb") if res.get(k) is not None]
        text = "  ".join(f"{k}={res[k]:.4g}" for k in keys)
        print(f"  {workload:8} {res['tool']:7} {text}{'  ERROR ' + res['error'] if 'error' in res else ''}",
              flush=True)
        shutil.rmtree(os.path.join(home, "jobs"), ignore_errors=True)   # job dirs of the run

    results: dict = {}
    for w in ORDER:
        if w not in workloads:
            continue
        print(f"{w}: {TITLE[w]} {confs[w]['params']}", flush=True)
        if w == "ssh":
            results[w] = run_ssh(confs[w], log)
        else:
            results[w] = run_workload(w, confs[w], tools, args.quick, log)
    machine["load_end"] = loadavg()
    machine["seconds"] = time.monotonic() - t0
    shutil.rmtree(home, ignore_errors=True)

    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as fh:
        json.dump({"machine": machine, "quick": args.quick, "full": full_default,
                   "results": results}, fh, indent=1, default=str)
    render(path, out_dir, readme=full_default and not args.no_readme)


def render(path: str, out_dir: str, readme: bool) -> None:
    """results.json -> results.md, results.png (and the README section, for a full run)."""
    with open(path) as fh:
        data = json.load(fh)
    machine, results, quick = data["machine"], data["results"], data.get("quick", False)
    summary = {w: summarize(r) for w, r in results.items()}
    target_rows = targets(summary)
    text = markdown(results, summary, machine, target_rows, quick)
    with open(os.path.join(out_dir, "results.md"), "w") as fh:
        fh.write("# Benchmark results\n\n![results](results.png)\n\n" + text + "\n")
    data.update(summary=summary, targets=target_rows)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    chart(summary, results, os.path.join(out_dir, "results.png"),
          f"deploy (red) vs peers — {CORES} cores, Python {machine['python']}, {machine['date']}"
          + (" (quick mode: small sizes)" if quick else ""), target_rows)
    if readme and data.get("full", not quick):
        print("README updated" if update_readme(text) else "README: no results markers found")
    print()
    print("targets:")
    for name, value, verdict in target_rows:
        print(f"  {verdict:5} {name}: {value}")
    print(f"\nwrote {out_dir}/results.md, results.png, results.json "
          f"({machine['seconds'] / 60:.1f} min; load average at the end {machine['load_end']})")


if __name__ == "__main__":
    main()
