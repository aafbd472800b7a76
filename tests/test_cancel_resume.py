"""cancel() stops running work (not only queued work); resume() finishes what is left."""
from __future__ import annotations

import glob
import os
import subprocess
import time

import deploy
from deploy.environment import LocalAsync
from deploy.worker.processes import process_alive
from conftest import run_python
from waiting import wait_for


def slow_once(marker, i):
    """Records its pid (and a child process's), then sleeps long the first time."""
    child = subprocess.Popen(["sleep", "120"])
    open(f"{marker}-pid-{i}-{os.getpid()}-{child.pid}", "w").close()
    if not os.path.exists(f"{marker}-resumed"):
        time.sleep(120)
    child.kill()
    child.wait()
    return i


def test_cancel_stops_running_tasks_within_two_seconds_and_resume_finishes(tmp_path):
    marker = str(tmp_path / "c")
    job = deploy.map_job.create(slow_once, [{"marker": marker, "i": i} for i in range(6)],
                                chunk_size=1, environment=LocalAsync("two", num_workers=2))
    wait_for(lambda: len(glob.glob(f"{marker}-pid-*")) >= 2, what="two tasks to start")
    handle_pids = job._launch()["handle"]["pids"]
    task_pids = [int(p) for f in glob.glob(f"{marker}-pid-*") for p in f.rsplit("-", 2)[1:]]

    start = time.monotonic()
    job.cancel()
    took = time.monotonic() - start
    assert took < 2.0, f"cancel took {took:.2f} s"
    assert [p for p in handle_pids + task_pids if process_alive(p)] == [], (handle_pids, task_pids)
    assert job.get_status() == "Canceled"
    metrics = job.get_metrics()
    assert len(metrics) == 6 and set(metrics.status) == {"Canceled"}
    assert "canceled" in job.get_error()

    open(f"{marker}-resumed", "w").close()
    job.resume()
    assert job.wait(timeout=60) == "Completed"
    assert job.get_results() == list(range(6))


def quick_or_slow(i):
    if i >= 2:
        time.sleep(120)
    return i


def test_cancel_keeps_finished_results():
    job = deploy.map_job.create(quick_or_slow, [{"i": i} for i in range(4)], chunk_size=1,
                                environment=LocalAsync("one", num_workers=1))
    wait_for(lambda: job.get_map_results()[:2] == [0, 1], what="first two tasks")
    job.cancel()
    assert job.get_status() == "Canceled"
    assert job.get_map_results() == [0, 1, None, None]
    assert list(job.get_metrics().status) == ["Completed", "Completed", "Canceled", "Canceled"]


def test_cancel_on_a_finished_job_changes_nothing():
    job = deploy.map_job.create(lambda: 1, [{}])
    assert job.wait(timeout=30) == "Completed"
    job.cancel()
    assert job.get_status() == "Completed" and job.get_results() == [1]


def test_resume_refuses_a_running_job():
    import pytest
    from deploy.errors import JobError
    job = deploy.map_job.create(quick_or_slow, [{"i": 5}])
    with pytest.raises(JobError, match="still running"):
        job.resume()
    job.cancel()


def timed(marker, i):
    """Records when it ran; the first run of task 3 hangs until the job is canceled."""
    began = time.time()
    if i == 3 and not os.path.exists(f"{marker}-resumed"):
        time.sleep(120)
    time.sleep(0.2)
    with open(f"{marker}-ran-{i}-{os.getpid()}", "w") as f:
        f.write(f"{began} {time.time()}")
    if i == 4 and not os.path.exists(f"{marker}-retried"):
        open(f"{marker}-retried", "w").close()
        raise RuntimeError("first try")
    return i


def test_resume_keeps_every_option_of_the_job(tmp_path):
    """max_concurrent_tasks, max_retries and the chunking hold for the workers resume() starts."""
    marker = str(tmp_path / "r")
    job = deploy.map_job.create(timed, [{"marker": marker, "i": i} for i in range(8)],
                                chunk_size=1, max_concurrent_tasks=1, max_retries=1,
                                environment=LocalAsync("three", num_workers=3))
    wait_for(lambda: glob.glob(f"{marker}-ran-2-*"), what="three tasks to run")
    job.cancel()
    for path in glob.glob(f"{marker}-ran-*"):
        os.remove(path)
    open(f"{marker}-resumed", "w").close()
    job.resume()
    assert job.wait(timeout=60) == "Completed"
    assert job.get_results() == list(range(8))
    spans = sorted(tuple(map(float, open(p).read().split())) for p in glob.glob(f"{marker}-ran-*"))
    assert len(spans) >= 5
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "tasks overlapped after resume"
    assert job.get_metrics().attempt[4] == 2


def test_a_job_opened_before_another_process_resumes_it_sees_the_new_run(tmp_path):
    """A Job caches published results; a resume() elsewhere deletes and republishes them, and
    the handle opened before (a notebook, the dashboard) follows instead of staying Failed."""
    marker = str(tmp_path / "c")
    job = deploy.map_job.create(slow_once, [{"marker": marker, "i": i} for i in range(4)],
                                chunk_size=1, environment=LocalAsync("two", num_workers=2))
    wait_for(lambda: len(glob.glob(f"{marker}-pid-*")) >= 2, what="two tasks to start")
    job.cancel()
    seen = deploy.jobs[job.name]
    assert seen.get_status() == "Canceled" and seen.get_map_results() == [None] * 4
    open(f"{marker}-resumed", "w").close()
    run_python(f"""
        import deploy
        job = deploy.jobs[{job.name!r}].resume()
        print(job.wait(timeout=60))
    """, env={"PYTHONPATH": os.path.dirname(__file__)})
    assert seen.get_status() == "Completed"
    assert seen.get_results() == list(range(4))
    assert set(seen.get_metrics().status) == {"Completed"}
