"""CPython's own executor tests (Lib/test/test_concurrent_futures.py, from Debian's
libpython3.11-testsuite) run against deploy.Executor by subclassing their mixins.

Every test of ExecutorTest/ProcessPoolExecutorTest, WaitTests, AsCompletedTests,
ProcessPoolShutdownTest, InitializerMixin, FailingInitializerMixin and
ExecutorDeadlockTest runs (44 tests), except these 15, which cannot apply:
- test_interpreter_shutdown, test_submit_after_interpreter_shutdown, test_hang_gh83386:
  a child interpreter runs `from concurrent.futures import <executor_type name>`, so only
  stdlib executors can be named (tests/test_executor.py checks the same for deploy's);
- test_context_manager_shutdown, test_del_shutdown, test_shutdown_no_wait: they build
  futures.ProcessPoolExecutor themselves and join its _processes and _call_queue;
- test_processes_terminate, test_saturation: they read _processes and pass a
  multiprocessing Semaphore, which pickles only into processes multiprocessing starts;
- test_killed_child: kills one of _processes and expects the whole pool to break; in
  deploy a lost task process fails only its future, with TaskLost (a BrokenProcessPool);
- test_idle_process_reuse_one, test_idle_process_reuse_multiple: count _processes
  (CPython itself skips them for the fork start method, which LocalAsync uses);
- test_max_tasks_per_child, test_max_tasks_per_child_defaults_to_spawn_context,
  test_max_tasks_early_shutdown: max_tasks_per_child and mp_context are multiprocessing's;
- test_max_workers_too_large: a Windows-only limit.
NOT_APPLICABLE below holds the same list (a guard test keeps it exact). Their mixin
builds the executor as `executor_type(max_workers=N)`; the adapter only drops the
`mp_context` the crash tests pass: how processes start is the environment's business.
The CPython file is loaded from /usr/lib/python3.11/test into this interpreter's own
`test` package when it has one (pyenv's 3.11.7 ships `test.support` without this file),
else from a temporary directory holding a `test` symlink to Debian's package, put first
on sys.path; nothing of the standard library is changed.
"""
from __future__ import annotations

import atexit
import importlib.util
import multiprocessing
import os
import shutil
import sys
import tempfile

import deploy

DEBIAN_TESTS = "/usr/lib/python3.11/test"
SOURCE = os.path.join(DEBIAN_TESTS, "test_concurrent_futures.py")


def _load_cpython_tests():
    """test.test_concurrent_futures from Debian's test suite, without touching the stdlib."""
    if not os.path.exists(SOURCE):
        raise RuntimeError(f"{SOURCE} is missing: apt-get install libpython3.11-testsuite")
    if "test.test_concurrent_futures" in sys.modules:
        return sys.modules["test.test_concurrent_futures"]
    try:
        import test.support  # noqa: F401  (this interpreter's own, matching its version)
    except ImportError:
        shim = tempfile.mkdtemp(prefix="cpython-tests-")
        atexit.register(shutil.rmtree, shim, True)
        os.symlink(DEBIAN_TESTS, os.path.join(shim, "test"))
        sys.path.insert(0, shim)
        import test.test_concurrent_futures as module
        return module
    spec = importlib.util.spec_from_file_location("test.test_concurrent_futures", SOURCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    import test
    test.test_concurrent_futures = module
    spec.loader.exec_module(module)
    return module


cf = _load_cpython_tests()

# test name -> why it cannot apply to deploy.Executor (the tests are removed, not skipped)
NOT_APPLICABLE = {
    "test_interpreter_shutdown": "runs `from concurrent.futures import <executor_type name>` in "
        "a child interpreter: only stdlib executors can be named there (tests/test_executor.py "
        "checks the same behaviour for deploy.Executor)",
    "test_submit_after_interpreter_shutdown": "the same: a child interpreter importing the "
        "executor from concurrent.futures (tests/test_executor.py has deploy's version)",
    "test_hang_gh83386": "the same: a child interpreter importing the executor from "
        "concurrent.futures (tests/test_executor.py has deploy's version)",
    "test_processes_terminate": "reads ProcessPoolExecutor._processes and passes a "
        "multiprocessing Semaphore, which only pickles into processes multiprocessing starts",
    "test_context_manager_shutdown": "builds futures.ProcessPoolExecutor itself and joins its "
        "_processes (tests/test_executor.py checks deploy.Executor's context manager)",
    "test_del_shutdown": "builds futures.ProcessPoolExecutor itself and joins its _processes, "
        "_call_queue and manager thread (tests/test_executor.py: an executor dropped unshut)",
    "test_shutdown_no_wait": "builds futures.ProcessPoolExecutor itself and joins its "
        "_processes and _call_queue (tests/test_executor.py: shutdown(wait=False))",
    "test_killed_child": "kills one of ProcessPoolExecutor._processes and expects the whole pool "
        "to break; deploy's workers are not the caller's to list, and a lost task process fails "
        "only its own future with TaskLost, a BrokenProcessPool (tests/test_executor.py)",
    "test_saturation": "counts ProcessPoolExecutor._processes and passes a multiprocessing "
        "Semaphore as an argument (it only pickles into processes multiprocessing starts)",
    "test_idle_process_reuse_one": "counts ProcessPoolExecutor._processes; skipped by CPython "
        "itself for the fork start method, which deploy's LocalAsync uses",
    "test_idle_process_reuse_multiple": "the same as test_idle_process_reuse_one",
    "test_max_tasks_per_child": "max_tasks_per_child and mp_context are multiprocessing "
        "options: a deploy environment decides how task processes start and are reused",
    "test_max_tasks_per_child_defaults_to_spawn_context": "the same (reads _mp_context)",
    "test_max_tasks_early_shutdown": "the same (max_tasks_per_child; skipped by CPython for fork)",
    "test_max_workers_too_large": "a Windows-only limit (skipped by CPython elsewhere)",
}


class DeployExecutor(deploy.Executor):
    """deploy.Executor as the CPython tests construct executors; `mp_context` dropped."""

    def __init__(self, max_workers=None, mp_context=None, **kwargs):
        super().__init__(max_workers, **kwargs)


class DeployMixin(cf.ExecutorMixin):
    executor_type = DeployExecutor

    def get_context(self):
        return multiprocessing.get_context("fork")    # what LocalAsync does


def _adapt(cls):
    for name in NOT_APPLICABLE:
        if hasattr(cls, name):
            setattr(cls, name, None)     # not callable: unittest does not collect it
    return cls


@_adapt
class DeployExecutorTest(DeployMixin, cf.ProcessPoolExecutorTest, cf.BaseTestCase):
    pass


@_adapt
class DeployWaitTest(DeployMixin, cf.WaitTests, cf.BaseTestCase):
    pass


@_adapt
class DeployAsCompletedTest(DeployMixin, cf.AsCompletedTests, cf.BaseTestCase):
    pass


@_adapt
class DeployShutdownTest(DeployMixin, cf.ProcessPoolShutdownTest, cf.BaseTestCase):
    pass


@_adapt
class DeployInitializerTest(cf.InitializerMixin, DeployMixin, cf.BaseTestCase):
    pass


@_adapt
class DeployFailingInitializerTest(cf.FailingInitializerMixin, DeployMixin, cf.BaseTestCase):
    pass


@_adapt
class DeployDeadlockTest(DeployMixin, cf.ExecutorDeadlockTest, cf.BaseTestCase):
    pass


def test_the_not_applicable_list_names_real_tests_and_nothing_else_is_left_out():
    """Every name in NOT_APPLICABLE is a test of the CPython classes used here, and every
    other test of those classes is collected above."""
    sources = (cf.ProcessPoolExecutorTest, cf.ExecutorTest, cf.WaitTests, cf.AsCompletedTests,
               cf.ProcessPoolShutdownTest, cf.ExecutorShutdownTest, cf.InitializerMixin,
               cf.FailingInitializerMixin, cf.ExecutorDeadlockTest)
    theirs = {n for c in sources for n in dir(c) if n.startswith("test")}
    assert set(NOT_APPLICABLE) <= theirs
    collected = [(c, n) for c in (DeployExecutorTest, DeployWaitTest, DeployAsCompletedTest,
                                  DeployShutdownTest, DeployInitializerTest,
                                  DeployFailingInitializerTest, DeployDeadlockTest)
                 for n in dir(c) if n.startswith("test") and callable(getattr(c, n))]
    assert {n for _, n in collected} == theirs - set(NOT_APPLICABLE)
    assert len(collected) == 44             # test_initializer runs in two classes
    assert all(name in __doc__ for name in NOT_APPLICABLE)
