"""job.plot(): the timeline's data (lanes, statuses, aggregation, retries, lost workers)
and the PNG drawn from it, for real jobs on LocalAsync and for a million synthetic rows."""
from __future__ import annotations

import array
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import deploy
from deploy.environment import LocalAsync
from deploy.jobdir import layout
from deploy.jobdir.results import C_CANCELED, C_FAILED, C_OK, ChunkResult
from deploy.jobs import plot, timeline
from waiting import wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, from its IHDR chunk."""
    data = open(path, "rb").read(32)
    assert data[:8] == PNG_MAGIC, "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def odd_fails(x):
    time.sleep(0.005)
    if x % 5 == 1:
        raise ValueError(f"odd {x}")
    return x


def test_a_real_job_has_a_lane_per_worker_and_a_bar_per_task(tmp_path):
    job = deploy.map_job.create(odd_fails, [{"x": i} for i in range(60)], chunk_size=3,
                                environment=LocalAsync("two", num_workers=2))
    assert job.wait(timeout=60) == "Failed"
    t = timeline.job_timeline(job)
    metrics = job.get_metrics()
    workers = sorted(set(zip(metrics.host, metrics.worker)))
    assert len(t.lanes) == len(workers) == 2
    assert sorted(t.lanes) == sorted(timeline._label(h, w) for h, w in workers)
    assert not t.aggregated and t.bar_count == 60
    assert t.counts["Completed"] == 48 and t.counts["Failed"] == 12
    # each bar is its task: status, lane and timing as in the metrics
    by_task = {int(r.task_name.rsplit("-", 1)[1]): r for r in metrics.itertuples()}
    for lane, start, width, status, task in zip(*(t.bars[k] for k in
                                                  ("lane", "start", "width", "status", "task"))):
        row = by_task[task]
        assert status == row.status
        assert t.lanes[lane] == timeline._label(row.host, row.worker)
        assert width == pytest.approx(row.run_time, abs=1e-6)
        assert t.t0 + start == pytest.approx(row.start_time.timestamp(), abs=1e-3)
    assert sum(t.histogram["counts"]) == 60
    assert min(t.bars["start"]) == 0 and t.span >= max(s + w for s, w in zip(t.bars["start"], t.bars["width"])) - 1e-9
    path = job.plot(str(tmp_path / "timeline.png"))
    width, height = png_size(path)
    assert width >= 1000 and height >= 300


def synthetic(n_tasks: int, hosts: int, workers_each: int, chunk: int):
    """Result columns as workers publish them (built with numpy: a million rows in well
    under a second): tasks back to back on each worker, every 97th failed, every 50th a
    second attempt, the last 1000 canceled without running."""
    import numpy as np
    workers = [(f"host{h}", f"host{h}-{100 + w}-ab{h}{w}") for h in range(hosts)
               for w in range(workers_each)]
    clock = {w: 1_000_000.0 + i * 0.01 for i, w in enumerate(workers)}
    chunks, expect = [], {"Completed": 0, "Failed": 0, "Canceled": 0, "retried": 0, "per_lane": {}}
    for c, first in enumerate(range(0, n_tasks, chunk)):
        key = workers[c % len(workers)]
        index = np.arange(first, min(first + chunk, n_tasks))
        ran = index < n_tasks - 1000
        run = np.where(ran, 0.001 + (index % 7) * 0.0005, 0.0)
        end = clock[key] + np.cumsum(run)
        start = end - run
        clock[key] = float(end[-1])
        start[~ran], end[~ran] = 0.0, 0.0
        status = np.where(~ran, C_CANCELED, np.where(index % 97 == 0, C_FAILED, C_OK)).astype(np.uint8)
        attempt = np.where(ran & (index % 50 == 0), 2, 1).astype(np.int32)
        errors = {int(p): ("ValueError", "bad", "Traceback ...") for p in np.flatnonzero(status == C_FAILED)}
        errors.update({int(p): ("Canceled", "the job was canceled", None)
                       for p in np.flatnonzero(status == C_CANCELED)})
        chunks.append(ChunkResult.from_dict({
            "host": key[0], "worker": key[1], "index": range(int(index[0]), int(index[-1]) + 1),
            "start": array.array("d", start.tobytes()), "end": array.array("d", end.tobytes()),
            "attempt": array.array("i", attempt.tobytes()), "memory": 10.0,
            "status": status.tobytes(), "errors": errors, "values": [None] * len(index)}))
        expect["Completed"] += int((status == C_OK).sum())
        expect["Failed"] += int((status == C_FAILED).sum())
        expect["Canceled"] += int((status == C_CANCELED).sum())
        expect["retried"] += int((attempt == 2).sum())
        expect["per_lane"][key] = expect["per_lane"].get(key, 0) + int(ran.sum())
    return chunks, expect


def test_a_million_rows_aggregate_to_a_bounded_number_of_bars(tmp_path):
    n = 1_000_000
    chunks, expect = synthetic(n, hosts=2, workers_each=3, chunk=10_000)
    start = time.monotonic()
    t = timeline.build(chunks, n)
    built = time.monotonic() - start
    assert t.aggregated and t.bar_count <= timeline.MAX_BARS
    assert t.counts == {"Completed": expect["Completed"], "Failed": expect["Failed"],
                        "Canceled": expect["Canceled"], "Pending": 0, "Running": 0}
    assert t.untimed["Canceled"] == 1000 and t.untimed["Completed"] == 0
    assert t.retried == expect["retried"]
    # every timed task is in exactly one bar, on its worker's lane, with its status
    assert sum(t.bars["count"]) == n - 1000
    assert sum(t.bars["retried"]) == expect["retried"]
    per_lane = {}
    for lane, count in zip(t.bars["lane"], t.bars["count"]):
        per_lane[t.lanes[lane]] = per_lane.get(t.lanes[lane], 0) + count
    assert per_lane == {timeline._label(*k): v for k, v in expect["per_lane"].items()}
    per_status = {}
    for status, count in zip(t.bars["status"], t.bars["count"]):
        per_status[status] = per_status.get(status, 0) + count
    assert per_status == {"Completed": expect["Completed"], "Failed": expect["Failed"]}
    # failures spread over the whole run show up in many bins, drawn after the completed ones
    failed_bars = [i for i, s in enumerate(t.bars["status"]) if s == "Failed"]
    assert len(failed_bars) > 100 and min(failed_bars) > max(
        i for i, s in enumerate(t.bars["status"]) if s == "Completed")
    assert all(0 <= s and s + w <= t.span + 1e-6 for s, w in zip(t.bars["start"], t.bars["width"]))
    assert sum(t.histogram["counts"]) == n - 1000
    print(f"\n[plot] 1,000,000 rows: timeline {built:.2f} s", end="")
    assert built < 20, built            # measured 0.3-0.4 s on the 2-core machine

    start = time.monotonic()
    fig = plot.draw(t, title="a million tasks")
    path = plot.save(fig, tmp_path / "million.png")
    drawn = time.monotonic() - start
    ax = fig.axes[0]
    assert len(ax.collections) <= 5     # one per status, one for retries, one for losses
    assert sum(len(c.get_paths()) for c in ax.collections) <= timeline.MAX_BARS + expect["retried"]
    assert png_size(path)[0] >= 1000
    print(f", drawn and saved {drawn:.2f} s")
    assert drawn < 30, drawn            # measured 1.5-3.9 s (the machine busy)


def test_many_workers_are_grouped_into_host_lanes():
    chunks, _ = synthetic(20_000, hosts=5, workers_each=30, chunk=50)
    t = timeline.build(chunks, 20_000, max_lanes=64)
    assert len(t.lanes) == 5 and all("(30 workers)" in label for label in t.lanes)
    assert sum(t.bars["count"]) == 19_000 and t.bar_count <= timeline.MAX_BARS


def flaky(marker, i):
    """Fails the first time it runs for `i`, succeeds after."""
    path = f"{marker}-{i}"
    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError(f"first try of {i}")
    return i


def hang_once(marker, i):
    """The first run of task 0 hangs until its worker is killed."""
    if i == 0 and not os.path.exists(f"{marker}-ran"):
        open(f"{marker}-ran", "w").close()
        time.sleep(120)
    time.sleep(0.05)
    return i


def test_retries_and_a_lost_worker_are_in_the_timeline(tmp_path):
    retried = deploy.map_job.create(flaky, [{"marker": str(tmp_path / "m"), "i": i} for i in range(4)],
                                    max_retries=1)
    assert retried.wait(timeout=60) == "Completed"
    t = timeline.job_timeline(retried)
    assert t.retried == 4 and t.bars["retried"] == [1, 1, 1, 1]

    marker = str(tmp_path / "k")
    job = deploy.map_job.create(hang_once, [{"marker": marker, "i": i} for i in range(6)],
                                chunk_size=2, environment=LocalAsync("two", num_workers=2))
    wait_for(lambda: os.path.exists(f"{marker}-ran"), what="task 0 to start")
    owner = job._store.get(layout.claim(0, 0)).decode()
    beat = json.loads(job._store.get(layout.heartbeat(owner)))
    os.kill(int(beat["pid"]), signal.SIGKILL)
    assert job.wait(timeout=60) == "Completed"
    t = timeline.job_timeline(job)
    assert [(x["worker"], x["chunk"], x["attempt"]) for x in t.losses] == [(owner, 0, 0)]
    loss = t.losses[0]
    assert t.lanes[loss["lane"]] == timeline._label(beat["host"], owner)
    assert loss["time"] is not None and loss["time"] <= t.span
    assert t.retried == 2                           # chunk 0's two tasks ran again
    fig = plot.draw(t)
    assert len(fig.axes[0].collections) == 3        # Completed, retried, the loss marker
    path = job.plot(str(tmp_path / "lost.png"))
    assert png_size(path)[0] >= 1000


def test_a_job_still_running_counts_what_has_not_run(tmp_path):
    marker = str(tmp_path / "k")
    job = deploy.map_job.create(hang_once, [{"marker": marker, "i": i} for i in range(4)],
                                chunk_size=2, environment=LocalAsync("one", num_workers=1))
    wait_for(lambda: os.path.exists(f"{marker}-ran"), what="task 0 to start")
    t = timeline.job_timeline(job)
    assert t.counts["Running"] == 2 and t.counts["Pending"] == 2 and t.bar_count == 0
    fig = job.plot()                                # no path: the figure itself
    assert type(fig).__name__ == "Figure"
    job.cancel()
    t = timeline.job_timeline(job)
    assert t.counts["Canceled"] == 4 and t.untimed["Canceled"] == 4


def test_plot_without_matplotlib_says_how_to_get_it():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import deploy\n"
            "from deploy.jobs.timeline import build\n"
            "from deploy.jobs import plot\n"
            "try:\n    plot.draw(build([], 0))\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install deploy[plot]" in out.stdout, out.stderr
