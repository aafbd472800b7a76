"""Jobs outlive the process that created them; unreadable jobs say so instead of crashing."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import deploy
from conftest import ROOT, run_python
from deploy.worker.processes import wait_gone


def test_job_completes_after_its_creator_is_killed_and_reopens_by_name():
    created = run_python("""
        import os, signal, time, deploy
        def work(i):
            time.sleep(0.3)
            return i * 10
        job = deploy.map_job.create(work, [{"i": i} for i in range(6)], chunk_size=1)
        print(job.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """, check=False)
    assert created.returncode == -9
    name = created.stdout.strip()
    job = deploy.jobs[name]
    assert job.wait(timeout=60) == "Completed"
    assert job.get_results() == [0, 10, 20, 30, 40, 50]

    reopened = run_python(f"""
        import deploy
        job = deploy.jobs[{name!r}]
        print(job.get_status(), job.get_map_results(), len(job.get_metrics()))
    """)
    assert reopened.stdout.strip() == "Completed [0, 10, 20, 30, 40, 50] 6"


def test_a_client_killed_mid_submit_leaves_no_job_that_runs(deploy_home):
    """SIGKILL while the job directory is being written: the name shows Unknown (never
    written whole), its forked workers exit without running a task, and it can be deleted."""
    import glob
    import psutil
    from waiting import wait_for
    marker = "mid-submit-" + os.urandom(4).hex()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        # {marker}
        import deploy
        deploy.map_job.create(lambda i: open('/dev/null', 'w').write(str(i)),
                              [{{"i": i}} for i in range(300000)], chunk_size=1, name="half")
    """)], env=os.environ, cwd=ROOT)

    def workers():
        return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    wait_for(lambda: len(glob.glob(str(deploy_home / "jobs" / "*" / "inputs" / "*"))) > 200,
             timeout=60, what="the job directory to be half written")
    assert len(workers()) > 1                   # the client and the workers it forked
    proc.kill()
    proc.wait()
    wait_for(lambda: not workers(), what="the forked workers to exit")
    assert not glob.glob(str(deploy_home / "jobs" / "*" / "claims" / "*"))
    job = deploy.jobs["half"]
    assert job.get_status() == "Unknown" and "never written whole" in job.get_error()
    assert deploy.jobs.delete(name="half") == ["half"]
    assert not os.listdir(deploy_home / "jobs")


def test_corrupt_or_missing_job_directory_is_unknown_not_a_crash():
    job = deploy.map_job.create(lambda: 1, [{}, {}])
    assert job.wait(timeout=30) == "Completed"
    spec_path = job._store.local_path("job.json")

    with open(spec_path, "w") as f:
        f.write("{not json")
    broken = deploy.jobs[job.name]
    assert broken.get_status() == "Unknown"
    assert "corrupt job.json" in broken.get_error()
    assert "Unknown" in str(broken)

    os.unlink(spec_path)
    gone = deploy.jobs[job.name]
    assert gone.get_status() == "Unknown"
    assert "no job.json" in gone.get_error()


def test_corrupt_result_file_is_unknown():
    job = deploy.map_job.create(lambda: 1, [{}])
    assert job.wait(timeout=30) == "Completed"
    with open(job._store.local_path("results/000000"), "wb") as f:
        f.write(b"\x80garbage")
    broken = deploy.jobs[job.name]
    assert broken.get_status() == "Unknown"
    assert broken.get_error()


def test_unreadable_directory_is_unknown(tmp_path):
    job = deploy.map_job.create(lambda: 1, [{}])
    assert job.wait(timeout=30) == "Completed"
    path = job._store.local_path("")
    os.rename(path, path + ".moved")
    with open(path, "w") as f:          # a file where the directory was
        f.write("x")
    assert deploy.jobs[job.name].get_status() == "Unknown"


def test_results_are_plain_pickles_readable_without_deploy():
    job = deploy.map_job.create(lambda: {"a": 1}, [{}])
    assert job.wait(timeout=30) == "Completed"
    path = job._store.local_path("results/000000")
    out = run_python(f"""
        import pickle, sys
        with open({path!r}, "rb") as f:
            data = pickle.load(f)
        print(data["status"], data["values"], "deploy" in sys.modules)
    """).stdout
    assert out.strip() == "b'C' [{'a': 1}] False"


def test_a_chunk_whose_inputs_cannot_be_read_fails_its_tasks():
    """The task process reports a batch it cannot start; every task gets one Failed row
    (instead of the worker retrying forever)."""
    job = deploy.map_job.create(lambda: 1, [{}, {}], chunk_size=1)
    assert job.wait(timeout=30) == "Completed"
    _workers_gone(job)
    job._store.put("inputs/000000", b"not a pickle")
    job._store.delete("results/000000")
    job._store.delete("claims")
    again = deploy.jobs[job.name].resume()
    assert again.wait(timeout=30) == "Failed"
    metrics = again.get_metrics()
    assert list(metrics.status) == ["Failed", "Completed"]
    assert metrics.iloc[0].exception == "ChunkError"
    assert "UnpicklingError" in metrics.iloc[0].exception_message


def test_a_worker_that_dies_of_its_own_error_is_reported():
    """A worker that dies outside any task leaves the job Failed with its stderr in
    get_error(), instead of Running forever."""
    job = deploy.map_job.create(lambda: 1, [{}])
    assert job.wait(timeout=30) == "Completed"
    _workers_gone(job)
    job._store.delete("function.pkl")             # resumed workers load it: they cannot
    job._store.delete("results/000000")
    job._store.delete("claims")
    again = deploy.jobs[job.name].resume()
    assert again.wait(timeout=30) == "Failed"
    assert "the workers wrote" in again.get_error()
    assert "function.pkl" in again.get_error()


def _workers_gone(job):
    from waiting import wait_for
    handle = job._launch()["handle"]
    wait_for(lambda: not job.environment.alive(handle), what="the workers to exit")


def test_results_published_as_the_workers_exit_are_not_mistaken_for_a_stall():
    """The last result file may appear between the status's look at the results and its
    look at the workers (which are gone by then): that job is Completed, not Failed."""
    job = deploy.map_job.create(lambda i: i, [{"i": i} for i in range(4)], chunk_size=1)
    assert job.wait(timeout=30) == "Completed"
    assert wait_gone(job._launch()["handle"]["pids"], 30)
    last = job._store.local_path("results/000003")
    aside = last + ".aside"
    os.rename(last, aside)
    reopened = deploy.jobs[job.name]
    looks = reopened._workers_alive

    def workers_gone_as_the_result_lands():
        os.rename(aside, last)
        return looks()

    reopened._workers_alive = workers_gone_as_the_result_lands
    assert reopened.get_status() == "Completed"
    assert reopened.get_map_results() == [0, 1, 2, 3]


def test_the_creator_reaps_its_exited_workers():
    """LocalAsync workers are children of the creating process; once they exit they are
    reaped at its next launch or wait, so a long-lived process does not collect zombies."""
    first = deploy.map_job.create(lambda i: i, [{"i": i} for i in range(4)])
    assert first.wait(timeout=30) == "Completed"
    pids = first._launch()["handle"]["pids"]
    assert wait_gone(pids, 30)
    second = deploy.map_job.create(lambda i: i, [{"i": 1}])
    assert second.wait(timeout=30) == "Completed"
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue                        # reaped and gone
        assert not (fields[0] == "Z" and int(fields[1]) == os.getpid()), f"worker {pid} is a zombie"


def test_worker_processes_report_their_errors_and_exit_code():
    """`python -m deploy.worker URI --processes N` (what SSH hosts and YARN containers run)
    shows each forked worker's error and exits non-zero, as with one process."""
    import shutil
    job = deploy.map_job.create(lambda: 1, [{}, {}], chunk_size=1)
    assert job.wait(timeout=30) == "Completed"
    root = job._store.local_path("")
    for name in ("results", "claims", "heartbeats", "logs", "inputs"):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    for processes in ("1", "2"):
        done = subprocess.run([sys.executable, "-m", "deploy.worker", job._store.uri,
                               "--processes", processes], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert done.returncode != 0, processes
        assert "FileNotFoundError" in done.stderr, (processes, done.stderr)
