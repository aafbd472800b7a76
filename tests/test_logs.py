"""Task stdout/stderr are captured per task and streamed, prefixed by task name."""
from __future__ import annotations

import os
import subprocess
import sys

import deploy


def chatty(i):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
    os.write(1, f"fd {i}\n".encode())
    subprocess.run(["echo", f"child {i}"], check=True)
    return i


def test_output_is_captured_per_task():
    job = deploy.map_job.create(chatty, [{"i": i} for i in range(3)], chunk_size=3)
    assert job.get_results() == [0, 1, 2]
    one = job.get_logs("chatty-0-1")
    for line in ("out 1", "err 1", "fd 1", "child 1"):
        assert line in one
    assert "out 0" not in one and "out 2" not in one
    everything = job.get_logs()
    assert "[chatty-0-2] child 2" in everything and "[chatty-0-0] out 0" in everything
    assert os.path.isdir(job.get_log_file_path())


def test_logs_of_a_failed_task_and_a_retried_one(tmp_path):
    def noisy_fail():
        print("about to fail")
        raise RuntimeError("no")
    job = deploy.map_job.create(noisy_fail, [{}])
    job.wait(timeout=30)
    assert "about to fail" in job.get_logs("noisy_fail-0-0")

    marker = tmp_path / "tried"

    def flaky():
        first = not marker.exists()
        marker.touch()
        print("attempt 1 output" if first else "attempt 2 output")
        if first:
            raise RuntimeError("first try")
        return 1
    for environment in ("LocalAsync", "Local"):
        marker.unlink(missing_ok=True)
        retried = deploy.map_job.create(flaky, [{}], max_retries=1, environment=environment)
        assert retried.get_results(timeout=30) == [1]
        assert retried.get_logs("flaky-0-0") == "attempt 2 output\n"   # the last attempt's only


def test_unknown_task_name_is_a_clear_error():
    import pytest
    job = deploy.map_job.create(chatty, [{"i": 0}])
    job.wait(timeout=30)
    with pytest.raises(KeyError, match="no task"):
        job.get_logs("chatty-0-9")


def test_deploy_map_streams_output_prefixed(capsys):
    assert deploy.map(chatty, [0, 1]) == [0, 1]
    out = capsys.readouterr().out
    assert "[chatty-0-0] out 0" in out and "[chatty-0-1] child 1" in out
    assert out.count("[chatty-0-1] out 1") == 1


def spam(i):
    for k in range(3000):
        print(f"line {i} {k}")
    return i


def test_streaming_delivers_every_line_exactly_once(capsys):
    """Lines written just before a task ends used to be lost when the job ended between a
    chunk's result and its log being published; five runs of 4 x 3,000 lines."""
    for _ in range(5):
        assert deploy.map(spam, range(4)) == [0, 1, 2, 3]
        lines = capsys.readouterr().out.splitlines()
        expected = [f"[spam-0-{i}] line {i} {k}" for i in range(4) for k in range(3000)]
        assert sorted(lines) == sorted(expected)
    assert sorted(deploy.map(spam, range(4), ordered=False)) == [0, 1, 2, 3]
    assert len(capsys.readouterr().out.splitlines()) == 12000


def test_local_environment_captures_python_output(capsys):
    def hello():
        print("hello local")
        return 1
    job = deploy.map_job.create(hello, [{}], environment=deploy.environment.Local())
    assert "hello local" in job.get_logs("hello-0-0")


def test_combiner_output_is_in_the_logs():
    def comb(**kw):
        print("combining", len(kw))
        return sum(kw.values())
    job = deploy.map_job.create(lambda i: i, [{"i": 1}, {"i": 2}], combiner_function=comb)
    assert job.get_results() == 3
    assert "combining 2" in job.get_logs("comb-1-0")
