"""Every task ends with exactly one final row, whatever happens to it or its worker."""
from __future__ import annotations

import json
import os
import signal
import time

import deploy
from deploy.environment import LocalAsync
from deploy.jobdir import layout
from waiting import wait_for


def flaky(marker, i):
    """Fails the first time it runs for `i`, succeeds after."""
    path = f"{marker}-{i}"
    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError(f"first try of {i}")
    return i


def test_max_retries_reruns_tasks_that_raised(tmp_path):
    params = [{"marker": str(tmp_path / "m"), "i": i} for i in range(4)]
    job = deploy.map_job.create(flaky, params, max_retries=1)
    assert job.get_results() == [0, 1, 2, 3]
    assert list(job.get_metrics().attempt) == [2, 2, 2, 2]

    again = deploy.map_job.create(flaky, [{"marker": str(tmp_path / "n"), "i": 0}])
    assert again.wait(timeout=30) == "Failed"
    row = again.get_metrics().iloc[0]
    assert row.exception == "RuntimeError" and row.attempt == 1


def sleepy(seconds):
    time.sleep(seconds)
    return seconds


def test_task_timeout_stops_the_task_and_the_job_goes_on():
    start = time.monotonic()
    job = deploy.map_job.create(sleepy, [{"seconds": 0}, {"seconds": 60}, {"seconds": 0.01}],
                                task_timeout=0.5, chunk_size=3)
    assert job.wait(timeout=30) == "Failed"
    assert time.monotonic() - start < 15
    metrics = job.get_metrics()
    assert list(metrics.status) == ["Completed", "Failed", "Completed"]
    assert metrics.iloc[1].exception == "TimeoutError"
    assert job.get_map_results() == [0, None, 0.01]


def exits(i):
    if i == 1:
        os._exit(3)
    return i


def test_task_that_exits_the_process_gets_one_failed_row():
    job = deploy.map_job.create(exits, [{"i": i} for i in range(4)], chunk_size=4)
    assert job.wait(timeout=30) == "Failed"
    metrics = job.get_metrics()
    assert len(metrics) == 4
    assert list(metrics.status) == ["Completed", "Failed", "Completed", "Completed"]
    assert metrics.iloc[1].exception == "WorkerLost"
    assert "exited with code 3" in metrics.iloc[1].exception_message
    assert job.get_map_results() == [0, None, 2, 3]


def hang_once(marker, i):
    """Signals that it started; the first run of task 0 then hangs until killed."""
    open(f"{marker}-started-{i}-{os.getpid()}", "w").close()
    if i == 0 and not os.path.exists(f"{marker}-ran"):
        open(f"{marker}-ran", "w").close()
        time.sleep(120)
    return i


def _owner_pid(job, chunk):
    """The pid of the worker that claimed `chunk` (it heart-beats before it claims)."""
    owner = job._store.get(layout.claim(chunk, 0)).decode()
    return json.loads(job._store.get(layout.heartbeat(owner)))["pid"]


def _kill_worker_of_chunk_0(job, marker):
    wait_for(lambda: os.path.exists(f"{marker}-ran"), what="task 0 to start")
    pid = _owner_pid(job, 0)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_worker_killed_mid_chunk_is_taken_over(tmp_path):
    marker = str(tmp_path / "k")
    params = [{"marker": marker, "i": i} for i in range(4)]
    job = deploy.map_job.create(hang_once, params, chunk_size=2,
                                environment=LocalAsync("two", num_workers=2))
    killed = _kill_worker_of_chunk_0(job, marker)
    assert job.wait(timeout=60) == "Completed"
    assert job.get_map_results() == [0, 1, 2, 3]
    metrics = job.get_metrics()
    assert len(metrics) == 4
    assert list(metrics.attempt[:2]) == [2, 2]       # chunk 0 ran again as attempt 2
    assert not metrics.worker.str.contains(f"-{killed}-").any()


def test_worker_lost_past_the_retry_limit(tmp_path):
    marker = str(tmp_path / "k")
    params = [{"marker": marker, "i": i} for i in range(4)]
    job = deploy.map_job.create(hang_once, params, chunk_size=2, worker_retries=0,
                                environment=LocalAsync("two", num_workers=2))
    _kill_worker_of_chunk_0(job, marker)
    assert job.wait(timeout=60) == "Failed"
    metrics = job.get_metrics()
    assert list(metrics.status) == ["Failed", "Failed", "Completed", "Completed"]
    assert set(metrics.exception[:2]) == {"WorkerLost"}


def fail_first(i):
    if i == 0:
        raise ValueError("bad input 0")
    time.sleep(0.2)
    return i


def test_fail_fast_stops_the_job_at_the_first_failure():
    job = deploy.map_job.create(fail_first, [{"i": i} for i in range(20)], chunk_size=1,
                                fail_fast=True, environment=LocalAsync("one", num_workers=1))
    assert job.wait(timeout=30) == "Failed"
    metrics = job.get_metrics()
    assert metrics.iloc[0].exception == "ValueError"
    assert (metrics.status == "Canceled").sum() >= 15
    assert "fail_fast" in metrics[metrics.status == "Canceled"].iloc[0].exception_message
    assert len(metrics) == 20


def test_every_task_has_exactly_one_row_under_mixed_failures():
    def mixed(i):
        if i % 7 == 3:
            raise KeyError(i)
        if i == 11:
            os._exit(1)
        return i
    job = deploy.map_job.create(mixed, [{"i": i} for i in range(40)], chunk_size=5)
    assert job.wait(timeout=60) == "Failed"
    metrics = job.get_metrics()
    assert list(metrics.task_name) == [f"mixed-0-{i}" for i in range(40)]
    expected = ["Failed" if i % 7 == 3 or i == 11 else "Completed" for i in range(40)]
    assert list(metrics.status) == expected


def kills_its_worker(i):
    """Task 1 kills the worker running it (the task process's parent), whichever it is."""
    if i == 1:
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)
    return i


def test_a_task_that_kills_its_worker_ends_with_one_failed_row_at_once(monkeypatch):
    """Every worker that takes task 1 over dies too; the job ends Failed as soon as the last
    one is gone (not after a lease), every task with exactly one final row."""
    monkeypatch.setenv("DEPLOY_LEASE_SECONDS", "60")
    for workers, chunk_size in ((1, 4), (2, 1)):
        start = time.monotonic()
        job = deploy.map_job.create(kills_its_worker, [{"i": i} for i in range(4)],
                                    chunk_size=chunk_size, worker_retries=1,
                                    environment=LocalAsync("w", num_workers=workers))
        assert job.wait(timeout=50) == "Failed"
        assert time.monotonic() - start < 20
        metrics = job.get_metrics()
        assert list(metrics.task_name) == [f"kills_its_worker-0-{i}" for i in range(4)]
        assert metrics.iloc[1].status == "Failed" and metrics.iloc[1].exception == "WorkerLost"
        assert set(metrics.status) <= {"Completed", "Failed"}
        assert job.get_map_results()[0] in (0, None)
        again = deploy.jobs[job.name]
        assert again.get_status() == "Failed"
        assert list(again.get_metrics().status) == list(metrics.status)
