"""What a task leaves in its row and in its process: the exception however it ended, its
own peak memory, and no processes outliving it."""
from __future__ import annotations

import os
import threading

import pytest

import deploy
from conftest import run_python
from deploy.environment import Local, LocalAsync


def environments():
    return [pytest.param(Local, id="Local"), pytest.param(lambda: LocalAsync(num_workers=1), id="LocalAsync")]


class Custom(BaseException):
    pass


class BadStr(Exception):
    def __str__(self):
        raise ValueError("no str here")


class BadRepr(Exception):
    def __repr__(self):
        raise ValueError("no repr here")


class Unpicklable(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()

    def __reduce__(self):
        raise TypeError("not picklable")


class Sub(str):
    def __reduce__(self):
        raise TypeError("not picklable either")


class SubStr(Exception):
    def __str__(self):
        return Sub("a str subclass")


class NotStr(Exception):
    def __str__(self):
        return 42


class Unsendable:
    def __reduce__(self):
        raise SystemExit(5)


ENDINGS = [
    ("KeyboardInterrupt", "ki", lambda: KeyboardInterrupt("ki")),
    ("SystemExit", "3", lambda: SystemExit(3)),
    ("SystemExit", "0", lambda: SystemExit(0)),
    ("GeneratorExit", "", lambda: GeneratorExit()),
    ("Custom", "custom", lambda: Custom("custom")),
    ("BadStr", "<str() failed: ValueError: no str here>", lambda: BadStr()),
    ("BadRepr", "r", lambda: BadRepr("r")),
    ("Unpicklable", "u", lambda: Unpicklable("u")),
    ("SubStr", "a str subclass", lambda: SubStr()),
    ("NotStr", "<str() failed: TypeError: __str__ returned non-string (type int)>", lambda: NotStr()),
]


def ends_badly(i):
    if i < len(ENDINGS):
        raise ENDINGS[i][2]()
    if i == len(ENDINGS):
        return Unsendable()
    return os.getpid()


@pytest.mark.parametrize("make_env", environments())
def test_any_exception_fails_only_its_task_and_the_process_goes_on(make_env):
    n = len(ENDINGS) + 2
    params = [{"i": n - 1}] + [{"i": i} for i in range(n)]
    job = deploy.map_job.create(ends_badly, params, environment=make_env(), chunk_size=len(params))
    assert job.wait(timeout=60) == "Failed"
    metrics = job.get_metrics()
    rows = metrics.iloc[1:1 + len(ENDINGS)]
    assert list(rows.status) == ["Failed"] * len(ENDINGS)
    assert list(rows.exception) == [name for name, _, _ in ENDINGS]
    assert list(rows.exception_message) == [message for _, message, _ in ENDINGS]
    for tb in rows.exception_traceback:
        assert "in ends_badly" in tb and "raise ENDINGS[i][2]()" in tb, tb
    unsendable = metrics.iloc[1 + len(ENDINGS)]
    assert unsendable.status == "Failed" and unsendable.exception == "SystemExit"
    assert unsendable.exception_message == "the task's return value cannot be pickled: 5"
    results = job.get_map_results()
    assert metrics.iloc[-1].status == "Completed"
    assert results[0] == results[-1]            # the same task process before and after
    assert set(metrics.worker) == {metrics.worker.iloc[0]}


def once_then(marker, how):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise SystemExit(2) if how == "exit" else KeyboardInterrupt("first")
    if how == "always":
        raise KeyboardInterrupt("again")
    return how


@pytest.mark.parametrize("make_env", environments())
def test_retries_apply_to_base_exceptions(make_env, tmp_path):
    params = [{"marker": str(tmp_path / "a"), "how": "exit"},
              {"marker": str(tmp_path / "b"), "how": "always"}]
    job = deploy.map_job.create(once_then, params, environment=make_env(), max_retries=2)
    assert job.wait(timeout=60) == "Failed"
    metrics = job.get_metrics()
    assert list(metrics.status) == ["Completed", "Failed"]
    assert list(metrics.attempt) == [2, 3]
    assert metrics.iloc[1].exception == "KeyboardInterrupt"
    assert metrics.iloc[1].exception_message == "again"
    assert job.get_map_results() == ["exit", None]


def test_ctrl_c_in_the_callers_process_still_stops_a_local_job(tmp_path):
    """A real SIGINT while Local runs tasks in the caller interrupts the caller, as before;
    a KeyboardInterrupt a task raises itself is only a failed row (above)."""
    tmp_path = tmp_path / "ran"
    tmp_path.mkdir()
    out = run_python(f"""
        import os, signal, time
        import deploy
        from deploy.environment import Local
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, however
                                                                  # the suite was started

        def task(i):
            open(os.path.join({str(tmp_path)!r}, f"ran-{{i}}"), "w").close()
            if i == 1:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
            return i

        try:
            deploy.map_job.create(task, [{{"i": i}} for i in range(3)], environment=Local())
        except KeyboardInterrupt:
            print("interrupted")
        print(sorted(os.listdir({str(tmp_path)!r})))
    """, timeout=60)
    assert out.stdout.splitlines() == ["interrupted", "['ran-0', 'ran-1']"]


def test_cancel_and_timeout_still_stop_tasks():
    job = deploy.map_job.create(sleepy, [{"s": 0}, {"s": 60}, {"s": 0}], environment=Local(),
                                task_timeout=0.5)
    assert job.get_metrics().exception.iloc[1] == "TimeoutError"
    assert job.get_map_results() == [0, None, 0]


def sleepy(s):
    import time
    time.sleep(s)
    return s



def hold(mb, seconds):
    """Touch `mb` MB (so it is resident), then let it go."""
    import time
    data = b"x" * (mb << 20)
    time.sleep(seconds)
    return len(data) >> 20


@pytest.mark.parametrize("make_env", environments())
def test_peak_memory_is_each_tasks_own_peak(make_env):
    """Measured tasks (over 1 ms) report their own peak; a short task after a big one
    reports what is resident then, not the big one's peak."""
    params = [(1, 0.01), (400, 0.01), (1, 0.01), (1, 0), (400, 0.01), (0, 0)]
    job = deploy.map_job.create(hold, [{"mb": mb, "seconds": s} for mb, s in params],
                                environment=make_env(), chunk_size=len(params))
    assert job.get_results(timeout=120) == [mb for mb, _ in params]
    memory = list(job.get_metrics().peak_memory_mb)
    small, big = [memory[i] for i in (0, 2, 3, 5)], [memory[i] for i in (1, 4)]
    assert all(m >= 400 for m in big), memory
    assert all(0 < m < min(big) - 300 for m in small), memory


def starts_processes(hang):
    """Starts `sleep` three ways and returns their pids: a direct child, one double-forked
    through a shell that exits, one in a new session; `hang`: then outlive the timeout."""
    import subprocess
    import time
    direct = subprocess.Popen(["sleep", "300"])
    shell = subprocess.run(["sh", "-c", "sleep 301 >/dev/null 2>&1 & echo $!"],
                           capture_output=True, text=True, check=True)
    session = subprocess.run(["setsid", "sh", "-c", "sleep 302 >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True)
    pids = [direct.pid, int(shell.stdout), int(session.stdout)]
    if hang:
        print("pids", *pids, flush=True)
        time.sleep(300)
    return pids


def sleeping(pid):
    """Whether `pid` is still one of the `sleep` processes (pids are not reused that fast)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"sleep")
    except OSError:
        return False


def test_processes_a_task_started_end_with_it():
    job = deploy.map_job.create(starts_processes, [{"hang": False}] * 2,
                                environment=LocalAsync(num_workers=1), chunk_size=2)
    pids = [pid for started in job.get_results(timeout=60) for pid in started]
    try:
        assert len(pids) == 6 and all(pids)
        assert [pid for pid in pids if sleeping(pid)] == []     # gone when the job is done
        assert list(job.get_metrics().status) == ["Completed"] * 2
    finally:
        for pid in pids:
            if sleeping(pid):
                os.kill(pid, 9)


def test_a_task_stopped_by_its_timeout_takes_its_processes_along():
    job = deploy.map_job.create(starts_processes, [{"hang": True}], task_timeout=3,
                                environment=LocalAsync(num_workers=1))
    assert job.wait(timeout=60) == "Failed"
    assert job.get_metrics().exception.iloc[0] == "TimeoutError"
    pids = [int(p) for p in job.get_logs().split("pids", 1)[1].split()[:3]]
    try:
        assert [pid for pid in pids if sleeping(pid)] == []
    finally:
        for pid in pids:
            if sleeping(pid):
                os.kill(pid, 9)
