"""deploy.jobs / deploy.environments: a real on-disk index, private, safe across processes."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import deploy
from conftest import ROOT


def test_jobs_list_newest_first_index_and_delete(deploy_home):
    first = deploy.map_job.create(lambda: 1, [{}], name="alpha")
    second = deploy.map_job.create(lambda: 2, [{}], name="beta")
    third = deploy.map_job.create(lambda: 3, [{}], name="add-one")
    for job in (first, second, third):
        job.wait(timeout=30)
    listing = deploy.jobs.list()
    assert list(listing.columns) == ["index", "name", "environment", "status", "created"]
    assert list(listing.name) == ["add-one", "beta", "alpha"]
    assert set(listing.status) == {"Completed"}
    assert deploy.jobs[0].name == "add-one" and deploy.jobs[-1].name == "alpha"
    assert deploy.jobs["beta"].get_results() == [2]
    assert "beta" in deploy.jobs and len(deploy.jobs) == 3

    assert deploy.jobs.delete(pattern="a*") == ["add-one", "alpha"]
    assert deploy.jobs.names() == ["beta"]
    assert not os.path.exists(first._store.local_path(""))
    deploy.jobs.delete(name="beta")
    assert len(deploy.jobs) == 0


def test_local_state_is_private(deploy_home):
    deploy.map_job.create(lambda: 1, [{}]).wait(timeout=30)
    assert stat.S_IMODE(os.stat(deploy_home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(deploy_home / "registry.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(deploy_home / "jobs").st_mode) == 0o700
    job_dir = deploy.jobs[0]._store.local_path("")
    for dirpath, dirnames, filenames in os.walk(job_dir):
        for name in filenames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) & 0o077 == 0, name
        for name in dirnames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) & 0o077 == 0, name


def test_concurrent_processes_get_unique_names(deploy_home):
    code = "import deploy; j = deploy.map_job.create(lambda: 1, [{}], name='same'); print(j.name); j.wait(30)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(4)]
    names = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert names == ["same", "same-2", "same-3", "same-4"]
    assert sorted(deploy.jobs.names()) == names


def test_environments_save_get_list_delete_across_processes():
    deploy.environment.LocalAsync("pool", num_workers=3).save()
    out = subprocess.run([sys.executable, "-c",
                          "import deploy; e = deploy.environments['pool']; print(type(e).__name__, e.num_workers())"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "LocalAsync 3"
    assert deploy.environments["pool"] == deploy.environment.LocalAsync("pool", num_workers=3)
    assert list(deploy.environments.list().name) == ["pool"]
    deploy.environment.LocalAsync("pool", num_workers=1).save()       # replaces
    assert deploy.environments["pool"].num_workers() == 1
    deploy.environments.delete("pool")
    assert "pool" not in deploy.environments


def test_default_environment_from_config(monkeypatch):
    deploy.environment.Local("dbg").save()
    monkeypatch.setenv("DEPLOY_DEFAULT_ENVIRONMENT", "dbg")
    job = deploy.map_job.create(lambda: os.getpid(), [{}])
    assert job.get_map_results() == [os.getpid()]
