"""HadoopCluster and the HDFS store against a real Hadoop 3.4 cluster (tests/infra/hadoop_cluster.py):
a NameNode + DataNode, a ResourceManager and a NodeManager whose containers are real processes.
Nothing is faked; the client speaks only HTTP (WebHDFS, the ResourceManager REST API).

Task functions live in this module, which containers cannot import: they travel by value.
Containers run the nodes' `python3` (Debian's, without cloudpickle, requests or hdfs: the
runtime ships them) when it has the client's minor version, else this interpreter.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import deploy
from conftest import ROOT, registry_bytes
from conftest_hadoop import node_python, pids_with_env
from deploy.environments.hadoop.cluster import HadoopCluster, HadoopError
from deploy.errors import JobError
from waiting import wait_for
from wheels import make_wheel

pytestmark = pytest.mark.hadoop

GRAPHLAB = [{"x": 20, "y": 20}, {"x": None, "y": 10}, {"x": 5, "y": 5}]
GOOD = [{"x": 20, "y": 20}, {"x": 10, "y": 10}, {"x": 5, "y": 5}]
LABEL = re.compile(r"^container_\d+_\d+_\d+_\d+@\S+$")


def add(x, y):
    print(f"adding {x} and {y}")
    return x + y


def add_combiner(**kwargs):
    return sum(kwargs.values())


def nap(i, seconds):
    time.sleep(seconds)
    return i


NODE_PYTHON = node_python()


@pytest.fixture(autouse=True)
def no_app_left(request):
    """Whatever a test leaves running on YARN is killed before the next one."""
    yield
    if "hadoop_cluster" in request.fixturenames:
        request.getfixturevalue("hadoop_cluster").kill_all_apps()


@pytest.fixture
def settings(hadoop_cluster):
    """Keyword arguments for a small HadoopCluster on the test cluster."""
    return {"dist_path": f"/user/{hadoop_cluster.user}/deploy",
            "webhdfs_url": hadoop_cluster.webhdfs_url,
            "resourcemanager_url": hadoop_cluster.resourcemanager_url,
            "num_containers": 2, "container_size": 256, "python": NODE_PYTHON}


def app_of(job) -> str:
    return job._launch()["handle"]["app"]


def app_pids(app_id: str) -> list[int]:
    """Live processes of the application's containers."""
    return pids_with_env(f"CONTAINER_ID=container_{app_id[len('application_'):]}_")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- running jobs

def test_graphlab_example_on_yarn_and_reopened_from_a_new_process(hadoop_cluster, settings):
    """The GraphLab example with a combiner, twice at once (a failing and a good parameter
    set), on an environment found through hadoop_conf_dir with the DistributedShell jar
    uploaded from the client; then a new process reopens both jobs and runs one more."""
    options = {k: v for k, v in settings.items() if k not in ("webhdfs_url", "resourcemanager_url")}
    env = deploy.hadoop_cluster.create("add_hadoop", hadoop_conf_dir=str(hadoop_cluster.hadoop_conf_dir),
                                       distributed_shell_jar=hadoop_cluster.distributedshell_jar,
                                       **options)
    bad = deploy.map_job.create(add, GRAPHLAB, environment=env, combiner_function=add_combiner)
    good = deploy.map_job.create(add, GOOD, environment="add_hadoop", combiner_function=add_combiner,
                                 name="graphlab-hadoop")
    other = subprocess.Popen([sys.executable, "-c", """if True:
        import deploy
        env = deploy.environments['add_hadoop']
        print(type(env).__name__, env.num_workers(), env.settings()['container_size'])
        mine = deploy.map_job.create(lambda v: v + 1, [{'v': 1}, {'v': 2}], environment='add_hadoop')
        job = deploy.jobs['graphlab-hadoop']                    # reopened while it runs
        print(job.get_results(timeout=120))
        print(mine.get_results(timeout=120))
    """], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)

    assert good.get_results(timeout=120) == 70
    assert bad.wait(timeout=120) == "Failed"
    assert bad.get_map_results() == [40, None, 10]
    with pytest.raises(JobError, match="add-0-1: Failed TypeError"):
        bad.get_results()
    metrics = bad.get_metrics()
    assert list(metrics.status) == ["Completed", "Failed", "Completed"]
    failed = metrics.iloc[1]
    assert failed.exception == "TypeError" and "NoneType" in failed.exception_message
    assert "return x + y" in failed.exception_traceback and "in add" in failed.exception_traceback
    for job in (good, bad):                # the container of each task, of this job's application
        suffix = app_of(job)[len("application_"):]
        hosts = set(job.get_metrics().host)
        assert all(LABEL.match(h) and h.startswith(f"container_{suffix}_") for h in hosts), hosts
    assert good.get_metrics().iloc[-1].task_name == "add_combiner-1-0"
    assert "[add-0-1] adding None and 10" in bad.get_logs()
    assert bad.get_logs("add-0-0") == "adding 20 and 20\n"

    report = hadoop_cluster.wait_for_app(app_of(good), timeout=60)    # its containers exit
    assert (report["state"], report["finalStatus"]) == ("FINISHED", "SUCCEEDED")
    assert "deploy" in report["applicationTags"] and report["name"] == "deploy-graphlab-hadoop"
    logs = env.container_logs(good)
    assert "AppMaster.stderr" in logs and "distributedshell.ApplicationMaster" in logs
    assert f"container_{app_of(good)[len('application_'):]}_01_000002 stderr" in logs
    staging = env._connect().root
    wait_for(lambda: staging.status(f"staging/{app_of(good)}") is None, timeout=30,
             what="the AM to remove its staging files")

    out, err = other.communicate(timeout=180)
    assert other.returncode == 0, err
    assert out.splitlines() == ["HadoopCluster 2 256", "70", "[2, 3]"]
    registry = registry_bytes(os.environ["DEPLOY_HOME"])   # the conf dir's path, not its addresses
    assert str(hadoop_cluster.hadoop_conf_dir).encode() in registry
    assert hadoop_cluster.webhdfs_url.encode() not in registry


def test_cancel_kills_the_application(hadoop_cluster, settings):
    job = deploy.map_job.create(nap, [{"i": i, "seconds": 60} for i in range(6)],
                                environment=HadoopCluster("naps", **settings), chunk_size=1)
    app = app_of(job)
    wait_for(lambda: len(job._store.list("heartbeats")) == 2, timeout=60,
             what="both containers to run a worker")
    assert job.get_status() == "Running" and app_pids(app)
    start = time.monotonic()
    job.cancel()
    report = hadoop_cluster.app(app)
    assert (report["state"], report["finalStatus"]) == ("KILLED", "KILLED")
    wait_for(lambda: not app_pids(app), timeout=15, what="the containers' processes to end")
    assert time.monotonic() - start < 15
    assert job.get_status() == "Canceled"
    assert set(job.get_metrics().status) == {"Canceled"}
    assert HadoopCluster("naps", **settings)._connect().root.status(f"staging/{app}") is None


def test_a_killed_container_loses_nothing(hadoop_cluster, settings):
    env = HadoopCluster("three", **{**settings, "num_containers": 3})
    # tasks long enough that the chunk picked below is still running when its container dies
    job = deploy.map_job.create(nap, [{"i": i, "seconds": 2.0} for i in range(18)], environment=env,
                                chunk_size=1)
    store = job._store

    def busy_container():
        done = set(store.list("results"))
        for name in store.list("claims"):
            chunk = name.partition(".")[0]
            if chunk.isdigit() and chunk not in done:
                try:
                    owner = store.get(f"claims/{name}").decode()
                except FileNotFoundError:
                    continue
                return int(chunk), owner.rsplit("@", 1)[0]
        return None
    chunk, container = wait_for(busy_container, timeout=60, what="a container to run a chunk")
    for pid in pids_with_env(f"CONTAINER_ID={container}\0"):   # the container dies: all of it
        os.kill(pid, signal.SIGKILL)
    assert job.wait(timeout=120) == "Completed"
    assert job.get_results() == list(range(18))
    metrics = job.get_metrics()
    assert (metrics.status == "Completed").all()
    row = metrics.iloc[chunk]
    assert row.attempt >= 2 and not row.host.startswith(container + "@"), row
    assert len({h.split("@")[0] for h in metrics.host}) >= 2
    report = hadoop_cluster.wait_for_app(app_of(job), timeout=60)
    assert report["finalStatus"] == "FAILED"      # YARN saw a container fail; the job lost nothing


# ---------------------------------------------------------------------------- bad input

def _refused(make, *fragments, error=HadoopError):
    with pytest.raises(error) as info:
        make()
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_bad_settings_are_clear_errors_before_anything_runs(hadoop_cluster, settings):
    create = deploy.hadoop_cluster.create
    closed = _closed_port()
    _refused(lambda: create("b1", **{**settings, "webhdfs_url": f"http://127.0.0.1:{closed}"}),
             "NameNode", f"127.0.0.1:{closed}", "Connection refused")
    _refused(lambda: create("b2", **{**settings, "resourcemanager_url": f"http://127.0.0.1:{closed}"}),
             "ResourceManager", f"127.0.0.1:{closed}", "Connection refused")
    _refused(lambda: create("b3", **{**settings, "user": "mallory",
                                     "dist_path": f"/user/{hadoop_cluster.user}/private"}),
             "no permission", "mallory", f"/user/{hadoop_cluster.user}/private", "Permission denied")
    _refused(lambda: create("b4", **{**settings, "container_size": 100_000}),
             "container_size=100000 MB", "8192 MB", "yarn.scheduler.maximum-allocation-mb")
    _refused(lambda: create("b5", **{**settings, "queue": "nope"}),
             "queue 'nope' does not exist", "default")
    _refused(lambda: create("b6", **{**settings, "hadoop_conf_dir": "/no/such/dir",
                                     "webhdfs_url": None}),
             "/no/such/dir", "not a directory")
    assert deploy.environments.names() == []
    # an application YARN refuses (a queue that is not a leaf): refused at create(), nothing kept
    refused = HadoopCluster("b7", **{**settings, "queue": "root"})
    _refused(lambda: deploy.map_job.create(add, GOOD, environment=refused),
             "YARN rejected application", "non-leaf queue")
    assert len(deploy.jobs) == 0


def test_an_application_that_fails_before_any_task_shows_yarn_diagnostics(hadoop_cluster, settings):
    job = deploy.map_job.create(add, GOOD, environment=HadoopCluster(
        "nopython", **{**settings, "python": "/no/such/python3"}))
    assert job.wait(timeout=90) == "Failed"
    error = job.get_error()
    assert f"YARN application {app_of(job)} FINISHED (FAILED)" in error
    assert "no Python interpreter /no/such/python3" in error
    metrics = job.get_metrics()                                # no task ran: each has one
    assert set(metrics.status) == {"Failed"} and set(metrics.attempt) == {0}   # final row
    assert set(metrics.exception) == {"WorkerLost"}
    assert "no Python interpreter /no/such/python3" in metrics.exception_message[0]


# ---------------------------------------------------------------------------- packages, python_env, CLI

def import_value():
    import deployhadooppkg
    return deployhadooppkg.VALUE


def test_additional_packages_are_installed_once_as_the_cluster_is_prepared(hadoop_cluster, settings,
                                                                           tmp_path):
    wheel = make_wheel(tmp_path, "deployhadooppkg")
    env = deploy.hadoop_cluster.create("pkgs", additional_packages=[wheel],
                                       pip_options=["--no-index"], **settings)
    built = [a for a in hadoop_cluster.apps() if a["name"] == "deploy-pkgs-packages"]
    assert len(built) == 1 and built[0]["finalStatus"] == "SUCCEEDED"
    job = deploy.map_job.create(import_value, [{}] * 2, environment=env, chunk_size=1)
    assert job.get_results(timeout=120) == [42, 42]
    # prepared once: the same package set is found on HDFS, no second build
    deploy.hadoop_cluster.create("pkgs2", additional_packages=[wheel], pip_options=["--no-index"],
                                 **settings)
    assert len([a for a in hadoop_cluster.apps() if a["name"].endswith("-packages")]) == 1
    text = _refused(lambda: deploy.hadoop_cluster.create(
        "pipfail", additional_packages=["deploy-no-such-package"], pip_options=["--no-index"],
        **settings), "deploy-no-such-package", "No matching distribution")
    assert "pip install of additional_packages" in text
    assert "pipfail" not in deploy.environments.names()


def where():
    import sys
    import envmarker
    return envmarker.WHERE, sys.executable


def test_python_env_archive_is_fetched_and_used(hadoop_cluster, settings, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (site / "envmarker").mkdir()
    (site / "envmarker" / "__init__.py").write_text("WHERE = 'packed env'\n")
    archive = tmp_path / "env.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(venv), "."], check=True)
    env = HadoopCluster("packed", **{**settings, "python": None, "python_env": str(archive),
                                     "num_containers": 1})
    job = deploy.map_job.create(where, [{}], environment=env)
    (value, python), = job.get_results(timeout=120)
    assert value == "packed env" and python.endswith("/python_env/bin/python")


def test_cli_creates_a_hadoop_env_and_runs_on_it(hadoop_cluster, settings):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                              text=True, timeout=180, cwd=ROOT)
    python = ["--python", NODE_PYTHON] if NODE_PYTHON else []
    made = cli("envs", "create", "hadoop", "hcli", "--dist-path", settings["dist_path"],
               "--hadoop-conf-dir", str(hadoop_cluster.hadoop_conf_dir), "--containers", "1",
               "--container-size", "256", *python)
    assert made.returncode == 0, made.stderr
    assert "1 workers" in made.stdout
    ran = cli("run", "examples/add.py:add", "--params", "examples/params.json", "--env", "hcli",
              "--combiner", "examples/add.py:add_combiner")
    assert ran.returncode == 1, ran.stderr                  # add(None, 10) fails
    assert "results: [40, null, 10]" in ran.stdout and "TypeError" in ran.stdout
    bad = cli("envs", "create", "hadoop", "hbad", "--dist-path", settings["dist_path"],
              "--webhdfs-url", settings["webhdfs_url"],
              "--resourcemanager-url", f"http://127.0.0.1:{_closed_port()}")
    assert bad.returncode == 1 and "ResourceManager" in bad.stderr


# ---------------------------------------------------------------------------- the HDFS store

@pytest.fixture
def hdfs_store(hadoop_cluster):
    from deploy.store import open_store
    host = hadoop_cluster.webhdfs_url[len("http://"):]
    store = open_store(f"webhdfs://{host}/user/{hadoop_cluster.user}/store-{os.urandom(4).hex()}")
    yield store
    store.delete("")


def test_hdfs_store_uris_errors_and_conf_dir(hadoop_cluster, hdfs_store, monkeypatch):
    from deploy.store import StorageError, open_store
    assert hdfs_store.uri.startswith(f"webhdfs://{hadoop_cluster.user}@127.0.0.1:")
    hdfs_store.put("x", b"1")
    # hdfs:// names the NameNode by its RPC address; the web address comes from the conf dir
    monkeypatch.setenv("HADOOP_CONF_DIR", str(hadoop_cluster.hadoop_conf_dir))
    path = hdfs_store.root
    assert open_store(f"{hadoop_cluster.fs_default_fs}{path}").get("x") == b"1"
    assert open_store(f"hdfs://{path}").get("x") == b"1"
    other = open_store(hdfs_store.uri.replace(f"{hadoop_cluster.user}@", "mallory@"))
    with pytest.raises(PermissionError, match="mallory"):
        other.put("y", b"2")
    with pytest.raises(StorageError, match="NameNode"):
        open_store(f"webhdfs://127.0.0.1:{_closed_port()}/x", retry_seconds=1).get("y")


def test_hadoop_conf_reads_ha_pairs(tmp_path):
    from deploy.store import hadoop_conf
    from infra.hadoop_cluster import site_xml
    (tmp_path / "core-site.xml").write_text(site_xml({"fs.defaultFS": "hdfs://prod"}))
    (tmp_path / "hdfs-site.xml").write_text(site_xml({
        "dfs.nameservices": "prod", "dfs.ha.namenodes.prod": "nn1,nn2",
        "dfs.namenode.http-address.prod.nn1": "master1:9870",
        "dfs.namenode.http-address.prod.nn2": "master2:9870"}))
    (tmp_path / "yarn-site.xml").write_text(site_xml({
        "yarn.resourcemanager.ha.enabled": "true", "yarn.resourcemanager.ha.rm-ids": "rm1,rm2",
        "yarn.resourcemanager.hostname.rm1": "master1",
        "yarn.resourcemanager.webapp.address.rm2": "${yarn.resourcemanager.hostname.rm2}:8188",
        "yarn.resourcemanager.hostname.rm2": "master2"}))
    conf = hadoop_conf.read_conf(tmp_path)
    assert hadoop_conf.default_fs(conf) == "hdfs://prod"
    assert hadoop_conf.namenode_web_urls(conf) == ["http://master1:9870", "http://master2:9870"]
    assert hadoop_conf.namenode_web_urls(conf, "other:8020") == ["http://other:9870"]
    assert hadoop_conf.resourcemanager_web_urls(conf) == ["http://master1:8088", "http://master2:8188"]
