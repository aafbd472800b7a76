"""Smoke tests of the Hadoop test cluster (tests/infra/hadoop_cluster.py).

They prove, from Python with only ``requests`` and the ``hdfs`` package, what the
YARN backend relies on:

* WebHDFS: write / read / rename / exclusive create (``overwrite=False``);
* a YARN application submitted over the ResourceManager REST API, whose
  ApplicationMaster is Hadoop's DistributedShell AM (jar uploaded to HDFS as a
  LocalResource), runs a shell command in N containers and FINISHES/SUCCEEDS;
* ``PUT /ws/v1/cluster/apps/{id}/state {"state": "KILLED"}`` stops a running app
  and its container processes;
* ``HadoopCluster.stop()`` leaves no process behind.

``submit_distributed_shell`` below is the submission recipe (see NOTES.md).
Needs java (17) and mvn (scripts/test.sh installs the jars); fails without them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import hdfs  # noqa: E402
import requests  # noqa: E402

from ..hadoop_cluster import (  # noqa: E402
    DISTRIBUTED_SHELL_AM_CLASS, HadoopCluster, missing_prerequisites)

pytestmark = pytest.mark.hadoop

_problems = missing_prerequisites()
if _problems:   # never skip silently: a green run must mean these ran
    raise RuntimeError("; ".join(_problems) + " (install them with scripts/test.sh, or deselect with -m 'not hadoop')")


@pytest.fixture(scope="module")
def cluster():
    c = HadoopCluster()
    c.start()
    print(f"\nhadoop cluster: {json.dumps(c.describe())}")
    yield c
    c.stop()


# --------------------------------------------------------------------------- #
# the REST recipe (requests + hdfs only)
# --------------------------------------------------------------------------- #

def rm_conf(rm_url: str, name: str) -> str:
    """A property of the RM's effective configuration (the /conf servlet)."""
    r = requests.get(f"{rm_url}/conf", params={"name": name},
                     headers={"Accept": "application/json"}, timeout=10)
    r.raise_for_status()
    return r.json()["property"]["value"]


def java_write_utf(text: str) -> bytes:
    """``DataOutputStream.writeUTF``: the format of DistributedShell's
    ``shellCommands`` file (2-byte big-endian length, modified UTF-8)."""
    out = bytearray()
    for ch in text:
        c = ord(ch)
        if 0 < c < 0x80:
            out.append(c)
        elif c < 0x800:  # includes NUL as C0 80
            out += bytes([0xC0 | (c >> 6), 0x80 | (c & 0x3F)])
        elif c < 0x10000:
            out += bytes([0xE0 | (c >> 12), 0x80 | ((c >> 6) & 0x3F), 0x80 | (c & 0x3F)])
        else:  # surrogate pair, each half 3 bytes
            c -= 0x10000
            for s in (0xD800 | (c >> 10), 0xDC00 | (c & 0x3FF)):
                out += bytes([0xE0 | (s >> 12), 0x80 | ((s >> 6) & 0x3F), 0x80 | (s & 0x3F)])
    if len(out) > 0xFFFF:
        raise ValueError("shell command longer than 65535 bytes")
    return struct.pack(">H", len(out)) + bytes(out)


def local_resource(client, fs_default_fs: str, path: str) -> dict:
    """A LocalResource for a file on HDFS: size and timestamp must be the file's
    exactly, or localization fails ("changed on src filesystem")."""
    st = client.status(path)
    return {"resource": fs_default_fs + path, "type": "FILE", "visibility": "APPLICATION",
            "size": st["length"], "timestamp": st["modificationTime"]}


def submit_distributed_shell(rm_url: str, webhdfs_url: str, user: str, ds_jar: str,
                             shell_command: str, num_containers: int,
                             name: str = "deploy-smoke", container_memory: int = 128,
                             am_memory: int = 256, shell_env: Optional[Dict[str, str]] = None,
                             tags: Optional[List[str]] = None) -> str:
    """Submit a DistributedShell application over REST; returns its id.

    What DistributedShell's own Client does, minus Java: upload the AM jar and
    the ``shellCommands`` file to ``/user/<user>/<name>/<app id>/``, and start
    the AM with ``yarn.application.classpath`` plus ``./*`` on its CLASSPATH.
    The AM reads the command from ``./shellCommands`` and launches it in
    ``num_containers`` containers (env ``YARN_SHELL_ID`` = 1..N, ``CONTAINER_ID``).
    The command is run as ``bash -c "<command> 1>stdout 2>stderr"``: it must
    not contain double quotes (nor ``$``/backquotes meant literally).
    """
    params = {"user.name": user}
    client = hdfs.InsecureClient(webhdfs_url, user=user)
    fs_default_fs = rm_conf(rm_url, "fs.defaultFS")
    app_classpath = [c.strip() for c in
                     rm_conf(rm_url, "yarn.application.classpath").split(",") if c.strip()]

    r = requests.post(f"{rm_url}/ws/v1/cluster/apps/new-application", params=params,
                      timeout=30)
    r.raise_for_status()
    app_id = r.json()["application-id"]

    home = client.resolve(f"/user/{user}")
    base = f"{home}/{name}/{app_id}"  # the AM deletes it when it ends
    client.upload(f"{base}/AppMaster.jar", ds_jar, overwrite=True)
    client.write(f"{base}/shellCommands", java_write_utf(shell_command), overwrite=True)

    am_args = [f"--container_memory {container_memory}", "--container_vcores 1",
               f"--num_containers {num_containers}", "--priority 0",
               f"--appname {name}", f"--homedir {fs_default_fs}{home}"]
    for k, v in (shell_env or {}).items():
        am_args.append(f"--shell_env {k}={v}")
    body = {
        "application-id": app_id,
        "application-name": name,
        "application-type": "YARN",
        "queue": "default",
        "max-app-attempts": 1,
        "resource": {"memory": am_memory + 256, "vCores": 1},
        "am-container-spec": {
            "local-resources": {"entry": [
                {"key": "AppMaster.jar",
                 "value": local_resource(client, fs_default_fs, f"{base}/AppMaster.jar")},
                {"key": "shellCommands",
                 "value": local_resource(client, fs_default_fs, f"{base}/shellCommands")},
            ]},
            "environment": {"entry": [
                # {{X}} -> $X and <CPS> -> ':' in the NodeManager
                {"key": "CLASSPATH",
                 "value": "<CPS>".join(["{{CLASSPATH}}", "./*"] + app_classpath)},
                # the AM reads these unconditionally (NPE if absent)
                {"key": "DISTRIBUTEDSHELLSCRIPTLOCATION", "value": ""},
                {"key": "DISTRIBUTEDSHELLSCRIPTTIMESTAMP", "value": "0"},
                {"key": "DISTRIBUTEDSHELLSCRIPTLEN", "value": "0"},
            ]},
            "commands": {"command": " ".join(
                ["{{JAVA_HOME}}/bin/java", f"-Xmx{am_memory}m", "<ADD_OPENS>",
                 DISTRIBUTED_SHELL_AM_CLASS, *am_args,
                 "1><LOG_DIR>/AppMaster.stdout", "2><LOG_DIR>/AppMaster.stderr"])},
        },
    }
    if tags:
        body["application-tags"] = {"tag": tags}
    r = requests.post(f"{rm_url}/ws/v1/cluster/apps", params=params, json=body, timeout=30)
    assert r.status_code == 202, (r.status_code, r.text)
    return app_id


def python_command(program: str, *args: str, python: str = "python3") -> str:
    """A shell command running a Python program, safe inside bash -c "..."."""
    b64 = base64.b64encode(program.encode()).decode()
    return " ".join([python, "-c", "'import base64,sys;exec(base64.b64decode(sys.argv[1]))'",
                     b64, *args])


def app_logs(cluster: HadoopCluster, app_id: str) -> str:
    out = []
    for f in sorted((cluster.container_log_dir / app_id).glob("*/*")):
        if f.name in ("stdout", "stderr", "AppMaster.stdout", "AppMaster.stderr",
                      "prelaunch.err"):
            text = f.read_text(errors="replace")
            out.append(f"--- {f.parent.name}/{f.name}\n{text[-3000:]}")
    return "\n".join(out)


def pids_with(marker: str) -> List[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


# --------------------------------------------------------------------------- #
# tests
# --------------------------------------------------------------------------- #

def test_webhdfs_write_read_rename_exclusive(cluster):
    client = hdfs.InsecureClient(cluster.webhdfs_url, user=cluster.user)
    d = f"/user/{cluster.user}/smoke-{uuid.uuid4().hex[:8]}"
    client.makedirs(d)

    client.write(f"{d}/a.tmp", b"hello", overwrite=False)
    with client.read(f"{d}/a.tmp") as r:
        assert r.read() == b"hello"

    # exclusive create: the NameNode answers 307, the DataNode step fails
    with pytest.raises(hdfs.HdfsError) as err:
        client.write(f"{d}/a.tmp", b"again", overwrite=False)
    assert "already exists" in str(err.value)
    assert getattr(err.value, "exception", None) == "FileAlreadyExistsException"
    with client.read(f"{d}/a.tmp") as r:
        assert r.read() == b"hello"

    # publish: rename a temp name to the final one
    client.rename(f"{d}/a.tmp", f"{d}/a")
    assert client.status(f"{d}/a.tmp", strict=False) is None
    st = client.status(f"{d}/a")
    assert st["length"] == 5 and st["type"] == "FILE" and st["owner"] == cluster.user

    # plain RENAME onto an existing file fails (the hdfs package raises) ...
    client.write(f"{d}/b.tmp", b"second", overwrite=False)
    with pytest.raises(hdfs.HdfsError):
        client.rename(f"{d}/b.tmp", f"{d}/a")
    # ... renameoptions=OVERWRITE (WebHDFS only, not in the hdfs package) replaces
    r = requests.put(f"{cluster.webhdfs_url}/webhdfs/v1{d}/b.tmp",
                     params={"op": "RENAME", "destination": f"{d}/a",
                             "renameoptions": "OVERWRITE", "user.name": cluster.user},
                     timeout=10)
    assert r.status_code == 200, r.text
    with client.read(f"{d}/a") as r:
        assert r.read() == b"second"

    assert sorted(client.list(d)) == ["a"]
    assert client.delete(d, recursive=True)
    assert client.status(d, strict=False) is None


def test_rest_config_discovery(cluster):
    """Everything a REST-only client needs comes from the RM itself."""
    info = requests.get(f"{cluster.resourcemanager_url}/ws/v1/cluster/info", timeout=10).json()
    assert info["clusterInfo"]["state"] == "STARTED"
    assert info["clusterInfo"]["hadoopVersion"].startswith("3.4")
    assert rm_conf(cluster.resourcemanager_url, "fs.defaultFS") == cluster.fs_default_fs
    cp = rm_conf(cluster.resourcemanager_url, "yarn.application.classpath")
    assert cp.split(",") == cluster.application_classpath
    metrics = requests.get(f"{cluster.resourcemanager_url}/ws/v1/cluster/metrics",
                           timeout=10).json()["clusterMetrics"]
    assert metrics["activeNodes"] == 1
    assert metrics["totalMB"] == cluster.nm_memory_mb
    assert metrics["totalVirtualCores"] == cluster.nm_vcores


def test_distributed_shell_runs_command_in_n_containers(cluster, tmp_path):
    n = 2
    out_dir = tmp_path / "out"
    hdfs_dir = f"/user/{cluster.user}/ds-out-{uuid.uuid4().hex[:8]}"
    # Each container: a JSON report to a local dir and (plain urllib, two-step
    # WebHDFS create) to HDFS.
    program = r'''
import json, os, sys, urllib.request
out_dir, webhdfs, hdfs_dir, user = sys.argv[2:6]
report = {"python": sys.executable, "version": sys.version.split()[0],
          "shell_id": os.environ.get("YARN_SHELL_ID"),
          "container_id": os.environ.get("CONTAINER_ID"),
          "user": os.environ.get("USER"), "cwd": os.getcwd(),
          "path": os.environ.get("PATH"), "greeting": os.environ.get("GREETING"),
          "hadoop_conf_dir": os.environ.get("HADOOP_CONF_DIR")}
data = json.dumps(report).encode()
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, report["container_id"] + ".json"), "wb") as f:
    f.write(data)
url = (f"{webhdfs}/webhdfs/v1{hdfs_dir}/{report['container_id']}.json"
       f"?op=CREATE&overwrite=false&noredirect=true&user.name={user}")
loc = json.load(urllib.request.urlopen(urllib.request.Request(url, method="PUT")))["Location"]
urllib.request.urlopen(urllib.request.Request(loc, data=data, method="PUT")).read()
print("done", report["container_id"])
'''
    command = python_command(program, str(out_dir), cluster.webhdfs_url, hdfs_dir,
                             cluster.user)
    t0 = time.monotonic()
    app_id = submit_distributed_shell(
        cluster.resourcemanager_url, cluster.webhdfs_url, cluster.user,
        cluster.distributedshell_jar, command, num_containers=n,
        shell_env={"GREETING": "hello"}, tags=["deploy-smoke"])
    report = cluster.wait_for_app(app_id, timeout=180)
    elapsed = time.monotonic() - t0
    assert (report["state"], report["finalStatus"]) == ("FINISHED", "SUCCEEDED"), \
        f"{report['diagnostics']}\n{app_logs(cluster, app_id)}"
    assert report["user"] == cluster.user
    assert report["applicationTags"] == "deploy-smoke"

    reports = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    assert len(reports) == n, app_logs(cluster, app_id)
    assert sorted(r["shell_id"] for r in reports) == [str(i) for i in range(1, n + 1)]
    assert len({r["container_id"] for r in reports}) == n
    for r in reports:
        assert r["container_id"].startswith("container_" + app_id[len("application_"):])
        assert r["user"] == cluster.user
        assert r["greeting"] == "hello"
        assert r["hadoop_conf_dir"] == str(cluster.hadoop_conf_dir)
        assert os.path.isabs(r["python"]) and os.path.exists(r["python"])
        assert r["cwd"].startswith(str(cluster.workdir))

    client = hdfs.InsecureClient(cluster.webhdfs_url, user=cluster.user)
    names = sorted(client.list(hdfs_dir))
    assert names == sorted(r["container_id"] + ".json" for r in reports)
    print(f"\n{app_id}: {n} containers, {elapsed:.1f}s submit->FINISHED; containers' "
          f"python3 = {reports[0]['python']} ({reports[0]['version']}), "
          f"PATH = {reports[0]['path']}")


def test_kill_running_application(cluster):
    marker = f"deploy-kill-{uuid.uuid4().hex}"
    command = python_command("import time; time.sleep(600)", marker)
    app_id = submit_distributed_shell(
        cluster.resourcemanager_url, cluster.webhdfs_url, cluster.user,
        cluster.distributedshell_jar, command, num_containers=2, name="deploy-kill")
    deadline = time.monotonic() + 120
    while not pids_with(marker):
        assert time.monotonic() < deadline, app_logs(cluster, app_id)
        assert cluster.app(app_id)["state"] not in ("FINISHED", "FAILED", "KILLED"), \
            app_logs(cluster, app_id)
        time.sleep(0.5)
    assert cluster.app(app_id)["state"] == "RUNNING"

    r = requests.put(f"{cluster.resourcemanager_url}/ws/v1/cluster/apps/{app_id}/state",
                     params={"user.name": cluster.user}, json={"state": "KILLED"}, timeout=30)
    assert r.status_code in (200, 202), r.text
    # the answer is the state at that moment (KILLING, FINAL_SAVING, even still RUNNING)
    report = cluster.wait_for_app(app_id, timeout=60)
    assert (report["state"], report["finalStatus"]) == ("KILLED", "KILLED")
    state = requests.get(f"{cluster.resourcemanager_url}/ws/v1/cluster/apps/{app_id}/state",
                         timeout=10).json()
    assert state == {"state": "KILLED"}

    deadline = time.monotonic() + 30
    while pids_with(marker):
        assert time.monotonic() < deadline, f"container processes survive: {pids_with(marker)}"
        time.sleep(0.5)


def test_local_resource_with_wrong_timestamp_fails(cluster):
    """The NodeManager checks a LocalResource's timestamp against HDFS."""
    client = hdfs.InsecureClient(cluster.webhdfs_url, user=cluster.user)
    user = cluster.user
    rm = cluster.resourcemanager_url
    app_id = requests.post(f"{rm}/ws/v1/cluster/apps/new-application",
                           params={"user.name": user}, timeout=30).json()["application-id"]
    path = f"/user/{user}/stale-{app_id}/file.txt"
    client.write(path, b"x", overwrite=True)
    res = local_resource(client, cluster.fs_default_fs, path)
    res["timestamp"] -= 1000
    body = {"application-id": app_id, "application-name": "stale", "max-app-attempts": 1,
            "resource": {"memory": 256, "vCores": 1},
            "am-container-spec": {"local-resources": {"entry": [{"key": "f", "value": res}]},
                                  "commands": {"command": "cat f"}}}
    r = requests.post(f"{rm}/ws/v1/cluster/apps", params={"user.name": user}, json=body,
                      timeout=30)
    assert r.status_code == 202, r.text
    report = cluster.wait_for_app(app_id, timeout=60)
    assert report["finalStatus"] == "FAILED"
    assert "changed on src filesystem" in report["diagnostics"]


def test_stop_leaves_nothing_behind():
    """A second cluster, stopped while a container runs: no process, port or
    work dir survives."""
    marker = f"deploy-stop-{uuid.uuid4().hex}"
    c = HadoopCluster()
    try:
        c.start()
        app_id = submit_distributed_shell(
            c.resourcemanager_url, c.webhdfs_url, c.user, c.distributedshell_jar,
            python_command("import time; time.sleep(600)", marker), num_containers=1,
            name="deploy-stop")
        deadline = time.monotonic() + 120
        while not pids_with(marker):
            assert time.monotonic() < deadline, app_logs(c, app_id)
            time.sleep(0.5)
        ports = [c.namenode_port, c.namenode_http_port, c.rm_port, c.rm_webapp_port,
                 c.nm_port]
        daemons = [p.pid for p in c.procs.values()]
    finally:
        c.stop()
    print(f"\nstop: {c.timings['stop_s']:.1f}s")
    assert not pids_with(marker)
    assert not c.leftover_processes()
    for pid in daemons:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, port
    assert not c.workdir.exists()
