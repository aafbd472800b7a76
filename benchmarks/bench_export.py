"""A 1,000,000-task job's metrics and results as tables: time and the client's peak memory.

    python benchmarks/bench_export.py [--tasks 1000000] [--keep] [--home DIR] [--only NAMES]

Makes one LocalAsync job of N trivial tasks (`double(x)`, as tests/test_load.py does), then
measures each export in a fresh interpreter that reopens the job by name, so that every
figure is that operation's own: wall time, CPU time (user + system: what a busy shared
machine changes least), and the peak RSS it adds (VmHWM, restarted with
/proc/self/clear_refs after the imports and opening the job) over the process's RSS at
that point. Operations: get_metrics() as it is now; the former path (a dict per task,
then pandas) for comparison; metrics and results to Parquet and CSV; get_results_table().
Each output is read back (row count, not timed) before it counts. Runs in a temporary
DEPLOY_HOME (--keep leaves it, --home DIR measures a kept one again without a new job).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = """
import json, os, sys, time
import pandas, pyarrow, pyarrow.parquet, pyarrow.csv, numpy
import deploy
from deploy.jobs import tables

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

def peak_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
"""

MAKE = """
from deploy.environment import LocalAsync
def double(x):
    return 2 * x
start = time.time()
job = deploy.map_job.create(double, [{"x": i} for i in range(N)], name="export",
                            environment=LocalAsync("bench", num_workers=os.cpu_count() or 1))
status = job.wait(timeout=3000)
print(json.dumps({"status": status, "seconds": time.time() - start, "chunks": job.spec.chunk_count}))
"""

OPERATIONS = {      # name: (the operation, then how many rows it gave: read back, not timed)
    "get_metrics()": ("out = job.get_metrics()", "len(out)"),
    "former get_metrics() (a dict per task)":
        ("from deploy.jobs import metrics; out = metrics.to_frame(job.metric_rows())", "len(out)"),
    "metrics -> parquet": ("tables.write_metrics(job, OUT + '.parquet')",
                           "pyarrow.parquet.ParquetFile(OUT + '.parquet').metadata.num_rows"),
    "metrics -> csv": ("tables.write_metrics(job, OUT + '.csv')",
                       "pyarrow.csv.read_csv(OUT + '.csv').num_rows"),
    "results -> parquet": ("tables.write_results(job, OUT + '.parquet')",
                           "pyarrow.parquet.ParquetFile(OUT + '.parquet').metadata.num_rows"),
    "results -> csv": ("tables.write_results(job, OUT + '.csv')",
                       "pyarrow.csv.read_csv(OUT + '.csv').num_rows"),
    "get_results_table()": ("out = job.get_results_table()", "out.num_rows"),
}

MEASURE = """
job = deploy.jobs["export"]
job.spec
base = rss_mb()
reset_peak()
import resource
cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
start = time.perf_counter()
{operation}
seconds = time.perf_counter() - start
cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu
peak = peak_mb() - base
rows = {rows}
size = sum(os.path.getsize(p) for p in (OUT + ".parquet", OUT + ".csv") if os.path.exists(p))
print(json.dumps({{"seconds": seconds, "cpu": cpu, "peak_mb": peak, "base_mb": base, "rows": rows,
                  "file_mb": size / 2**20}}))
"""


def run(code: str, env: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary DEPLOY_HOME")
    parser.add_argument("--only", help="comma-separated operation names (default: all)")
    parser.add_argument("--home", help="a DEPLOY_HOME kept by --keep: measure its job again")
    args = parser.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="bench-export-")
    env = {**os.environ, "DEPLOY_HOME": home, "DEPLOY_PROGRESS": "false",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        if args.home:
            args.tasks = run("print(json.dumps(deploy.jobs['export'].spec.task_count))", env, 60)
        else:
            made = run(f"N = {args.tasks}\n" + MAKE, env, timeout=3600)
            print(f"job of {args.tasks:,} tasks: {made['status']} in {made['seconds']:.1f} s, "
                  f"{made['chunks']} chunks", flush=True)
        print(f"{'operation':42} {'seconds':>8} {'CPU s':>6} {'peak MB':>8} {'rows':>9} {'file MB':>8}")
        wanted = args.only.split(",") if args.only else list(OPERATIONS)
        for name in wanted:
            out = os.path.join(home, "out-" + "".join(c for c in name if c.isalnum()))
            got = run(f"OUT = {out!r}\n" + MEASURE.format(operation=OPERATIONS[name][0], rows=OPERATIONS[name][1]), env, 1800)
            expected = args.tasks
            assert got["rows"] == expected, (name, got)
            print(f"{name:42} {got['seconds']:8.2f} {got['cpu']:6.2f} {got['peak_mb']:8.0f} {got['rows']:9,} "
                  f"{got['file_mb']:8.1f}", flush=True)
        print(f"(peak MB: added over the process's {got['base_mb']:.0f} MB after imports and "
              f"opening the job; CPU s: user + system of that process; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f})")
    finally:
        if args.keep or args.home:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
