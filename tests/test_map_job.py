"""The GraphLab-compatible API on the local default (LocalAsync) and Local."""
from __future__ import annotations

import functools
import os

import pandas as pd
import pytest

import deploy
from deploy.errors import JobError


def add(x, y):
    return x + y


def add_combiner(**kwargs):
    return sum(kwargs.values())


PARAMS = [{"x": 20, "y": 20}, {"x": None, "y": 10}, {"x": 5, "y": 5}]
GOOD = [{"x": 20, "y": 20}, {"x": 10, "y": 10}, {"x": 5, "y": 5}]


def test_graphlab_example_results_metrics_and_print():
    job = deploy.map_job.create(add, PARAMS)
    assert job.get_status() in ("Pending", "Running", "Failed")
    assert job.wait(timeout=60) == "Failed"
    assert job.get_map_results() == [40, None, 10]
    metrics = job.get_metrics()
    assert isinstance(metrics, pd.DataFrame)
    for column in ["task_name", "status", "start_time", "run_time", "exception", "exception_message",
                   "exception_traceback", "host", "worker", "attempt", "end_time", "peak_memory_mb"]:
        assert column in metrics.columns
    assert list(metrics.task_name) == ["add-0-0", "add-0-1", "add-0-2"]
    assert list(metrics.status) == ["Completed", "Failed", "Completed"]
    failed = metrics.iloc[1]
    assert failed.exception == "TypeError"
    assert "NoneType" in failed.exception_message
    assert "Traceback" in failed.exception_traceback and "return x + y" in failed.exception_traceback
    assert (metrics.run_time >= 0).all() and (metrics.attempt == 1).all()
    assert metrics.host.notna().all() and metrics.peak_memory_mb.gt(0).all()
    text = str(job)
    assert job.name in text and "Failed" in text and "TypeError" in text and "add-0-1" in text


def mostly_quick(i):
    if i in (3, 250):
        raise ValueError(f"bad {i}")
    if i in (40, 41):
        import time
        time.sleep(0.2 + (i - 40) * 0.1)
    return i


def test_print_of_a_large_job_shows_the_failed_and_the_slowest():
    """Up to 100 tasks print(job) has every row; beyond, the summary with the failed tasks
    and the slowest (a 1,000,000-task job printed 92 MB in 73 s before)."""
    job = deploy.map_job.create(mostly_quick, [{"i": i} for i in range(300)])
    assert job.wait(timeout=60) == "Failed"
    text = str(job)
    lines = text.splitlines()
    assert "300 tasks)" in lines[0] and lines[1].strip() == "Completed: 298, Failed: 2"
    names = [line.split()[0] for line in lines[5:-1]]
    assert names[:4] == ["mostly_quick-0-3", "mostly_quick-0-250", "mostly_quick-0-41",
                         "mostly_quick-0-40"]
    assert 4 <= len(names) <= 12 and "ValueError" in lines[5] and "bad 250" in lines[6]
    assert lines[-1].startswith(f"({len(names)} of 300 tasks shown")   # tasks that took no
    # measurable time are not among the slowest
    small = deploy.map_job.create(mostly_quick, [{"i": i} for i in range(100)])
    small.wait(timeout=60)
    assert len(str(small).splitlines()) == 2 + 1 + 2 + 100


def shouty(i):
    if i == 2:
        raise ValueError("<script>alert(1)</script>")
    return i


def test_job_renders_as_html_in_a_notebook():
    """_repr_html_: the job, its status, tasks per state, progress, the failed tasks with
    their exceptions (escaped: a message is text, never markup)."""
    from html.parser import HTMLParser
    job = deploy.map_job.create(shouty, [{"i": i} for i in range(5)])
    assert job.wait(timeout=60) == "Failed"
    html = job._repr_html_()
    assert job.name in html and "<b>Failed</b>" in html and "Completed: 4, Failed: 1" in html
    assert "<progress value='5' max='5'></progress>" in html
    assert "shouty-0-2" in html and "ValueError" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    tags = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append(tag)
    Tags().feed(html)
    assert {"table", "tr", "td", "progress"} <= set(tags) and "script" not in tags


def test_combiner_result_and_failure_summary():
    job = deploy.map_job.create(add, GOOD, combiner_function=add_combiner)
    assert job.get_results() == 70
    assert job.get_status() == "Completed"
    last = job.get_metrics().iloc[-1]
    assert last.task_name == "add_combiner-1-0" and last.status == "Completed"

    bad = deploy.map_job.create(add, PARAMS, combiner_function=add_combiner)
    with pytest.raises(JobError) as err:
        bad.get_results()
    assert "add-0-1" in str(err.value) and "TypeError" in str(err.value)
    assert bad.get_status() == "Failed"
    assert "add-0-1" in bad.get_error()


def test_lambdas_closures_partials_run():
    offset = 100
    assert deploy.map_job.create(lambda v: v + offset, [{"v": 1}, {"v": 2}]).get_results() == [101, 102]
    assert deploy.map_job.create(functools.partial(add, y=1), [{"x": 1}]).get_results() == [2]


def test_deploy_map_builtin_semantics():
    assert deploy.map(lambda n: n ** n, [1, 2, 3, 4]) == [1, 4, 27, 256]
    assert deploy.map(add, [1, 2], [10, 20]) == [11, 22]
    out = deploy.map(lambda n: n * 2, range(50), ordered=False)
    assert not isinstance(out, list)
    assert sorted(out) == [n * 2 for n in range(50)]
    with pytest.raises(JobError, match="ZeroDivisionError"):
        deploy.map(lambda n: 1 / n, [1, 0, 2])
    jobs = len(deploy.jobs)
    assert deploy.map(abs, []) == [] and deploy.map(add, [], iter([])) == []
    assert list(deploy.map(abs, (), ordered=False)) == []
    assert len(deploy.jobs) == jobs              # nothing to run: no job, as builtin map


def test_unordered_map_early_exit_cancels_the_rest(tmp_path):
    import time

    def slow(i):
        if i:
            time.sleep(30)
        return i

    gen = deploy.map(slow, range(4), ordered=False, chunk_size=1, stream=False)
    assert next(gen) == 0
    gen.close()
    job = deploy.jobs[0]
    assert job.get_status() == "Canceled"


def test_ctrl_c_while_waiting_for_the_list_cancels_the_job(tmp_path):
    """deploy.map(ordered=True) interrupted by a real SIGINT re-raises KeyboardInterrupt and
    leaves no job running without a handle: it is Canceled and its workers are gone."""
    import signal
    import subprocess
    import sys
    import textwrap
    from deploy.worker.processes import process_alive
    from waiting import wait_for
    code = textwrap.dedent(f"""
        import os, signal, time
        import deploy
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, however
                                                                  # the suite was started
        def slow(i):
            open(os.path.join({str(tmp_path)!r}, f"started-{{i}}"), "w").close()
            time.sleep(60)
        try:
            deploy.map(slow, range(4), chunk_size=1)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    wait_for(lambda: any(n.startswith("started-") for n in os.listdir(tmp_path)),
             what="a task to start")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out.splitlines()[-1:] == ["interrupted"]
    job = deploy.jobs[0]
    assert job.get_status() == "Canceled"
    assert not any(process_alive(p) for p in job._launch()["handle"]["pids"])


def test_single_task_job():
    job = deploy.job.create(add, x=1, y=2)
    assert job.get_results() == 3
    assert len(job.get_metrics()) == 1


def test_local_runs_in_this_process_blocking():
    pid = os.getpid()
    local = deploy.environment.Local("debug")
    job = deploy.map_job.create(lambda: os.getpid(), [{}, {}], environment=local)
    assert job.get_status() == "Completed"         # no wait: Local blocks
    assert job.get_map_results() == [pid, pid]


def test_local_async_worker_count_and_saved_names():
    pool = deploy.environment.LocalAsync("async2", num_workers=2)
    pool.save()
    assert "async2" in deploy.environments.names()
    assert deploy.environments["async2"].num_workers() == 2
    job = deploy.map_job.create(lambda: os.getpid(), [{}] * 8, environment="async2", chunk_size=1)
    pids = job.get_results()
    assert len(set(pids)) <= 2 and os.getpid() not in pids
    assert job.environment.name == "async2"
    listed = deploy.environments.list()
    assert list(listed.columns) == ["name", "kind", "settings"]
    deploy.environments.delete("async2")
    assert "async2" not in deploy.environments.names()


def test_many_tasks_chunked_in_order():
    n = 5000
    job = deploy.map_job.create(lambda i: i * i, [{"i": i} for i in range(n)])
    assert job.get_results() == [i * i for i in range(n)]
    assert job.spec.chunk_count > 1
    assert job.get_parameters()[1234] == {"i": 1234}
    assert job.get_start_time() <= job.get_end_time()


def test_max_concurrent_tasks_limits_workers():
    job = deploy.map_job.create(lambda: os.getpid(), [{}] * 10, chunk_size=1,
                                environment=deploy.environment.LocalAsync("w4", num_workers=4),
                                max_concurrent_tasks=1)
    assert len(set(job.get_results())) == 1


def test_job_names_default_explicit_and_clash():
    a = deploy.map_job.create(add, GOOD, name="mine")
    b = deploy.map_job.create(add, GOOD, name="mine")
    assert a.name == "mine" and b.name == "mine-2"
    c = deploy.map_job.create(add, GOOD)
    assert c.name.startswith("add-")
    for job in (a, b, c):
        job.wait(timeout=30)
