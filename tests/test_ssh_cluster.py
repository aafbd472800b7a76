"""SshCluster against real OpenSSH servers on loopback (tests/infra/sshd_hosts.py).

Each host is its own Unix user with its own home, reached by key only, its host key in a
known_hosts file; nothing is faked. Task functions live in this module, which the hosts
cannot import, so they also exercise functions travelling by value.
"""
from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

import deploy
from conftest import ROOT, registry_bytes, run_python
from deploy.environments.ssh.cluster import HostError, SshCluster
from waiting import wait_for
from wheels import make_wheel

pytestmark = pytest.mark.ssh

LAB = ("host1", "host2", "host3")


def add(x, y):
    return x + y


def add_combiner(**kwargs):
    return sum(kwargs.values())


def who(i, seconds=0.0):
    time.sleep(seconds)
    return i, getpass.getuser(), os.getcwd()


def nap(i, seconds):
    time.sleep(seconds)
    return i


@pytest.fixture
def cluster(ssh_hosts):
    """Make SshClusters on the test hosts; afterwards, no worker may be left on any host."""
    made = []

    def make(name="lab", hosts=LAB, **options) -> SshCluster:
        options.setdefault("ssh_config", str(ssh_hosts.ssh_config_path))
        env = SshCluster(name, list(hosts), **options)
        made.append(env)
        return env
    yield make
    for env in made:
        env.stop()
    try:
        wait_for(lambda: not deploy_processes(ssh_hosts), timeout=15, what="workers to end")
    except AssertionError:
        pass
    left = deploy_processes(ssh_hosts)
    for _, pid, _ in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left on the hosts: {left}"


def deploy_processes(hosts) -> list[tuple[str, int, str]]:
    """(host, pid, command line) of every deploy process of the test hosts' users."""
    found = []
    for host in hosts:
        for pid in host.processes():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "deploy." in cmd:
                found.append((host.alias, pid, cmd))
    return found


def group_members(pgids: set[int]) -> list[int]:
    """Live processes (any user) in the given process groups: workers and their tasks."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue
        if fields[0] not in (b"Z", b"X") and int(fields[2]) in pgids:
            found.append(int(entry))
    return found


def claims_by(job, label: str) -> list[int]:
    """Chunks whose current claim belongs to a worker on host `label`, still unfinished."""
    store, chunks = job._store, []
    done = set(store.list("results"))
    for name in store.list("claims"):
        chunk = name.partition(".")[0]
        if not chunk.isdigit() or chunk in done:
            continue
        try:
            owner = store.get(f"claims/{name}").decode()
        except FileNotFoundError:
            continue
        if owner.startswith(label + "-"):
            chunks.append(int(chunk))
    return chunks


# ---------------------------------------------------------------------------- running jobs

def test_graphlab_example_across_three_hosts(cluster, ssh_hosts):
    lab = cluster()
    params = [{"x": 20, "y": 20}, {"x": None, "y": 10}, {"x": 5, "y": 5}]
    job = deploy.map_job.create(add, params, environment=lab)
    assert job.wait(timeout=60) == "Failed"
    assert job.get_map_results() == [40, None, 10]
    metrics = job.get_metrics()
    assert list(metrics.status) == ["Completed", "Failed", "Completed"]
    assert metrics.exception[1] == "TypeError"
    assert set(metrics.host) <= set(LAB) and (metrics.attempt == 1).all()

    good = [{"x": 20, "y": 20}, {"x": 10, "y": 10}, {"x": 5, "y": 5}]
    job = deploy.map_job.create(add, good, environment=lab, combiner_function=add_combiner)
    assert job.get_results(timeout=60) == 70
    assert job.get_metrics().task_name.iloc[-1] == "add_combiner-1-0"
    launched = json.loads(job._store.get("launch.json"))["handle"]["hosts"]
    assert [h["host"] for h in launched] == list(LAB)          # one worker per host

    # tasks spread over the three hosts, each running as that host's own user
    job = deploy.map_job.create(who, [{"i": i, "seconds": 0.3} for i in range(6)],
                                environment=cluster("lab1", workers_per_host=1), chunk_size=1)
    results = job.get_results(timeout=60)
    assert [i for i, _, _ in results] == list(range(6))
    assert {(user, cwd) for _, user, cwd in results} == {(h.user, str(h.home)) for h in ssh_hosts[:3]}
    assert set(job.get_metrics().host) == set(LAB)


def test_large_payloads_cross_the_relay_both_ways(cluster):
    blob = os.urandom(3 << 20)                 # in function.pkl: every worker GETs 3 MB...

    def echo(i):
        return blob[i:] + bytes(3 << 20)       # ...and PUTs 6 MB back, all at once
    job = deploy.map_job.create(echo, [{"i": i} for i in range(6)], environment=cluster(workers_per_host=2),
                                chunk_size=1)
    results = job.get_results(timeout=120)
    assert [len(r) for r in results] == [(6 << 20) - i for i in range(6)]
    assert results[5][:10] == blob[5:15]


def test_workers_per_host_defaults_to_the_host_core_count(cluster):
    assert cluster().num_workers() == 3 * len(os.sched_getaffinity(0))
    assert cluster("two", workers_per_host=2).get_num_workers() == 6


def test_own_modules_travel_by_value(cluster, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "myhelpers_deploy_test.py").write_text(
        "def double(v):\n    return v * 2\n")
    (project / "mytasks_deploy_test.py").write_text(
        "from myhelpers_deploy_test import double\n\ndef quad(v):\n    return double(double(v))\n")
    monkeypatch.syspath_prepend(str(project))
    import mytasks_deploy_test
    try:
        job = deploy.map_job.create(mytasks_deploy_test.quad, [{"v": 1}, {"v": 5}], environment=cluster())
        assert job.get_results(timeout=60) == [4, 20]
    finally:
        for name in ("mytasks_deploy_test", "myhelpers_deploy_test"):
            sys.modules.pop(name, None)


def _wheel(folder, name="deploytestpkg", version="1.0", value=42) -> str:
    return make_wheel(folder, name, version, value)


def import_value():
    import deploytestpkg
    return deploytestpkg.VALUE


def test_additional_packages_from_a_local_wheel_without_an_index(cluster, tmp_path, ssh_hosts):
    wheel = _wheel(tmp_path)
    lab = cluster("pkgs", hosts=("host1", "host2"), additional_packages=[wheel],
                  pip_options=["--no-index"])
    job = deploy.map_job.create(import_value, [{}] * 4, environment=lab, chunk_size=1)
    assert job.get_results(timeout=120) == [42] * 4
    venv = ssh_hosts[0].home / ".deploy/remote/venvs/pkgs"
    assert (venv / ".deploy-stamp").is_file()
    # prepared once: a second cluster object with the same packages finds the venv current
    built = venv.stat().st_ino                  # a rebuild would put a new directory there
    assert cluster("pkgs", hosts=("host1",), additional_packages=[wheel],
                   pip_options=["--no-index"]).prepare()
    assert venv.stat().st_ino == built


def test_remote_files_are_private(cluster, ssh_hosts):
    job = deploy.map_job.create(add, [{"x": 1, "y": 2}] * 3, environment=cluster(), chunk_size=1)
    assert job.get_results(timeout=60) == [3, 3, 3]
    for host in ssh_hosts[:3]:
        root = host.home / ".deploy" / "remote"
        assert root.is_dir()
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                mode = os.lstat(os.path.join(folder, name)).st_mode
                if not stat.S_ISLNK(mode):
                    assert mode & 0o077 == 0, f"{folder}/{name} is {oct(mode)}"


# ---------------------------------------------------------------------------- no SFTP

def value_and_user():
    import deploytestpkg
    return deploytestpkg.VALUE, getpass.getuser()


def refuses_sftp(host) -> bool:
    """The host's sshd really offers no SFTP (paramiko's open_sftp fails)."""
    import paramiko
    client = host.connect()
    try:
        client.open_sftp()
    except paramiko.SSHException as exc:
        return "Channel closed" in str(exc)
    finally:
        client.close()
    return False


def test_a_host_without_sftp_runs_jobs_and_local_wheels(cluster, ssh_hosts, tmp_path):
    plain, hardened = ssh_hosts[0], ssh_hosts[2]             # host3's sshd has no SFTP subsystem
    assert refuses_sftp(hardened) and not refuses_sftp(plain)
    lab = cluster("nosftp", hosts=("host1", "host3"), workers_per_host=1,
                  additional_packages=[_wheel(tmp_path, value=7)], pip_options=["--no-index"])
    params = [{"x": 20, "y": 20}, {"x": None, "y": 10}, {"x": 5, "y": 5}]
    job = deploy.map_job.create(add, params, environment=lab)
    assert job.wait(timeout=120) == "Failed"
    assert job.get_map_results() == [40, None, 10]
    assert list(job.get_metrics().status) == ["Completed", "Failed", "Completed"]
    # the wheel reached both hosts' venvs; tasks ran on both, each as its host's user
    job = deploy.map_job.create(who, [{"i": i, "seconds": 0.3} for i in range(6)], environment=lab,
                                chunk_size=1)
    assert {user for _, user, _ in job.get_results(timeout=60)} == {plain.user, hardened.user}
    job = deploy.map_job.create(value_and_user, [{}] * 6, environment=lab, chunk_size=1)
    assert set(job.get_results(timeout=60)) <= {(7, plain.user), (7, hardened.user)}
    root = hardened.home / ".deploy" / "remote"
    wheels = list((root / "wheels").glob("*/deploytestpkg-1.0-py3-none-any.whl"))
    assert len(wheels) == 1 and (root / "venvs" / "nosftp" / ".deploy-stamp").is_file()
    for folder, dirs, files in os.walk(root):                 # private, and no half-sent leftovers
        for name in dirs + files:
            assert not name.startswith((".tmp-", ".pruned-")) and ".broken-" not in name, name
            mode = os.lstat(os.path.join(folder, name)).st_mode
            if not stat.S_ISLNK(mode):
                assert mode & 0o077 == 0, f"{folder}/{name} is {oct(mode)}"
    for kind in ("runtime", "wheels"):
        for bundle in (root / kind).iterdir():
            assert stat.S_IMODE(bundle.stat().st_mode) == 0o700 and (bundle / ".complete").is_file()


def test_a_damaged_transfer_is_never_unpacked(ssh_hosts):
    import hashlib
    from deploy.environments.ssh.connect import connect, resolve, run
    from deploy.environments.ssh.runtime import _RECEIVE, _python_script, ship
    from deploy.environments.bundles import runtime_bundle
    bundle = runtime_bundle()
    root = f"{ssh_hosts[2].home}/damaged-{os.getpid()}"
    receive = _python_script("python3", _RECEIVE, f"{root}/runtime/{bundle.digest}", str(len(bundle.data)),
                             hashlib.sha256(bundle.data).hexdigest())
    cut = len(bundle.data) // 2
    flipped = bundle.data[:cut] + bytes([bundle.data[cut] ^ 1]) + bundle.data[cut + 1:]
    client = connect(resolve("host3", str(ssh_hosts.ssh_config_path)))
    try:
        for damaged in (bundle.data[:cut], flipped, b""):       # cut short, corrupted, nothing
            rc, _, err = run(client, receive, stdin=damaged, timeout=60)
            assert rc != 0 and "arrived damaged" in err and "nothing was unpacked" in err, err
            assert not os.path.exists(f"{root}/runtime") or not os.listdir(f"{root}/runtime")
        final = ship(client, "host3", bundle, root, "python3")
        assert sorted(os.listdir(f"{root}/runtime")) == [bundle.digest]
        assert os.path.isfile(f"{final}/deploy/worker/loop.py") and os.path.isfile(f"{final}/.complete")
        assert ship(client, "host3", bundle, root, "python3") == final     # again: kept, no leftovers
        assert sorted(os.listdir(f"{root}/runtime")) == [bundle.digest]
    finally:
        client.close()
        subprocess.run(["rm", "-rf", root], check=True)


def test_clients_preparing_one_host_at_once(cluster, ssh_hosts, tmp_path):
    import concurrent.futures
    wheel = _wheel(tmp_path, value=9)
    remote = f"~/.deploy/race-{os.getpid()}"
    labs = [cluster("race", hosts=("host3",), remote_dir=remote, additional_packages=[wheel],
                    pip_options=["--no-index"]) for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:        # three connections, one host
        list(pool.map(lambda lab: lab.prepare(), labs))
    root = ssh_hosts[2].home / remote[2:]
    for kind in ("runtime", "wheels", "venvs"):
        entries = os.listdir(root / kind)
        assert len(entries) == 1, (kind, entries)                 # one whole copy, nothing half
    job = deploy.map_job.create(import_value, [{}] * 3, environment=labs[1], chunk_size=1)
    assert job.get_results(timeout=60) == [9] * 3


def test_failing_preparation_is_a_host_error_before_any_task_runs(cluster, ssh_hosts):
    host = ssh_hosts[1]
    locked = host.home / "locked"                 # root's: the host user cannot write there
    partly = host.home / "partly"                 # the user's, but its runtime folder is root's
    for folder, owner in ((locked, 0), (partly, host.uid), (partly / "runtime", 0)):
        folder.mkdir()
        os.chown(folder, owner, owner and host.gid)
        os.chmod(folder, 0o755 if owner == 0 else 0o700)
    try:
        # the same remote_dir on both hosts: fine on host1, unwritable on host2
        for remote, fragments in (("~/locked/remote", ["cannot use remote_dir", "Permission denied"]),
                                  ("~/partly", ["cannot put the runtime bundle", "Permission denied"])):
            lab = cluster("unwritable", hosts=("host1", "host2"), remote_dir=remote)
            with pytest.raises(HostError) as info:
                deploy.map_job.create(add, [{"x": 1, "y": 2}], environment=lab)
            text = str(info.value)
            assert info.value.host.startswith("'host2'") and "host1" not in text, text
            assert all(f in text for f in fragments), text
            assert "Traceback" not in text
            assert len(deploy.jobs) == 0                        # nothing was written, nothing ran
            with pytest.raises(HostError, match="host2"):
                deploy.ssh_cluster.create("unwritable", ["host2"], ssh_config=str(ssh_hosts.ssh_config_path),
                                          remote_dir=remote)
            assert "unwritable" not in deploy.environments          # nothing saved
        assert os.listdir(partly / "runtime") == []
    finally:
        subprocess.run(["rm", "-rf", str(locked), str(partly)], check=True)


def test_a_host_dropping_the_connection_mid_upload_is_a_host_error(cluster, ssh_hosts):
    remote = f".deploy/drop-{os.getpid()}"
    # ./python on each host: host2's kills its own SSH connection once 20 kB of a bundle arrived
    wrappers = {ssh_hosts[0]: 'exec python3 "$@"\n',
                ssh_hosts[1]: 'case "$*" in *tarfile*) head -c 20000 >/dev/null; kill -9 $PPID; exit 1;; esac\n'
                              'exec python3 "$@"\n'}
    for host, body in wrappers.items():
        path = host.home / "python"
        path.write_text("#!/bin/sh\n" + body)
        os.chown(path, host.uid, host.gid)
        os.chmod(path, 0o700)
    try:
        lab = cluster("dropped", hosts=("host1", "host2"), python="./python", remote_dir="~/" + remote)
        start = time.monotonic()
        with pytest.raises(HostError) as info:
            deploy.map_job.create(add, [{"x": 1, "y": 2}], environment=lab)
        text = str(info.value)
        assert time.monotonic() - start < 60
        assert info.value.host.startswith("'host2'") and "host1" not in text, text
        assert "runtime bundle" in text and "connection dropped" in text, text
        assert "Traceback" not in text and len(deploy.jobs) == 0
        runtime = ssh_hosts[1].home / remote / "runtime"
        assert not runtime.exists() or not any(e.name[0] != "." for e in runtime.iterdir())
        # the host is back (a new connection) with its plain python3: prepared whole, runs tasks
        lab = cluster("dropped", hosts=("host1", "host2"), remote_dir="~/" + remote)
        job = deploy.map_job.create(add, [{"x": i, "y": 1} for i in range(4)], environment=lab)
        assert job.get_results(timeout=60) == [1, 2, 3, 4]
        assert [e.name for e in runtime.iterdir()] == [lab._hosts[1].runtime.pythonpath.rsplit("/", 1)[1]]
    finally:
        for host in wrappers:
            subprocess.run(["rm", "-rf", str(host.home / "python"), str(host.home / remote)], check=True)


def test_leftovers_of_interrupted_preparations_are_pruned(cluster, ssh_hosts):
    host = ssh_hosts[2]
    remote = f".deploy/leftovers-{os.getpid()}"
    root = host.home / remote
    old = ["runtime/.tmp-abc-1", "wheels/.tmp-def-2", "venvs/lab.tmp-77", "venvs/lab.old-77-1"]
    recent = ["runtime/.tmp-abc-3", "venvs/lab.tmp-78"]     # maybe another client's, in progress
    for rel in old + recent:
        (root / rel).mkdir(parents=True)
        (root / rel / "part").write_bytes(b"half")
    kept = root / "venvs" / "other"                          # another cluster's venv, however old
    kept.mkdir()
    month_ago = time.time() - 30 * 86400
    for rel in old + ["venvs/other"]:
        os.utime(root / rel / ("part" if rel in old else "."), (month_ago, month_ago))
        os.utime(root / rel, (month_ago, month_ago))
    subprocess.run(["chown", "-R", f"{host.uid}:{host.gid}", str(host.home / ".deploy")], check=True)
    try:
        cluster("leftovers", hosts=("host3",), remote_dir="~/" + remote).prepare()
        assert not [rel for rel in old if (root / rel).exists()]
        assert all((root / rel / "part").exists() for rel in recent) and kept.is_dir()
        assert not [e.name for e in root.glob("*/.pruned-*")]
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)


# ---------------------------------------------------------------------------- failures

def test_a_host_dying_mid_job_loses_nothing(cluster, ssh_hosts):
    lab = cluster(workers_per_host=2)
    job = deploy.map_job.create(nap, [{"i": i, "seconds": 0.5} for i in range(18)], environment=lab,
                                chunk_size=1)
    held = wait_for(lambda: claims_by(job, "host2"), timeout=30, what="host2 to run a chunk")
    try:
        ssh_hosts[1].kill()                     # sshd and every process of that host's user
        assert job.wait(timeout=90) == "Completed"
        assert job.get_results() == list(range(18))
        metrics = job.get_metrics()
        # exactly one final row per task: none lost, none twice, none left Running
        assert list(metrics.task_name) == [f"nap-0-{i}" for i in range(18)]
        assert (metrics.status == "Completed").all()
        assert sorted(job._store.list("results")) == [f"{i:06d}" for i in range(18)]
        for chunk in held:                      # what host2 was running, re-run elsewhere
            row = metrics.iloc[chunk]
            assert row.attempt >= 2 and row.host in ("host1", "host3"), row
        assert set(metrics.host) <= set(LAB)
    finally:
        ssh_hosts[1].restart()


def test_cancel_kills_remote_workers_within_ten_seconds(cluster, ssh_hosts):
    lab = cluster(workers_per_host=2)
    job = deploy.map_job.create(nap, [{"i": i, "seconds": 60} for i in range(12)], environment=lab,
                                chunk_size=1)
    wait_for(lambda: all(claims_by(job, h) for h in LAB), timeout=30, what="workers on every host")
    groups = {g for entry in json.loads(job._store.get("launch.json"))["handle"]["hosts"]
              for g, _ in entry["groups"]}
    assert len(groups) == 3 and group_members(groups)
    start = time.monotonic()
    job.cancel()
    wait_for(lambda: not group_members(groups), timeout=10, what="no worker left on any host")
    assert time.monotonic() - start < 10
    assert job.get_status() == "Canceled"
    assert set(job.get_metrics().status) == {"Canceled"}
    lab.stop()
    wait_for(lambda: not any(h.processes() for h in ssh_hosts[:3]), timeout=10,
             what="no process at all of the host users")


# ---------------------------------------------------------------------------- bad input

def _refused(make, *fragments, error=HostError):
    with pytest.raises(error) as info:
        make().prepare()
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_bad_hosts_are_clear_errors_naming_the_host(cluster, ssh_hosts, tmp_path):
    h = ssh_hosts[0]
    # unreachable: a name that does not resolve, and a port where nothing speaks SSH
    _refused(lambda: cluster(hosts=["host1", "nobody@no-such-host.invalid"]),
             "no-such-host.invalid", "resolve")
    with socket.socket() as silent:
        silent.bind((h.address, 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        _refused(lambda: cluster(hosts=[f"{h.user}@{h.address}:{port}"], timeout=1.0,
                                 known_hosts=str(ssh_hosts.known_hosts_path)),
                 f"{h.address}:{port}", "SSH")
    # wrong port
    with socket.socket() as s:
        s.bind((h.address, 0))
        closed = s.getsockname()[1]
    _refused(lambda: cluster(hosts=[f"{h.user}@{h.address}:{closed}"],
                             known_hosts=str(ssh_hosts.known_hosts_path)),
             f"{h.address}:{closed}", "connection refused")
    # a key the host does not accept
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    _refused(lambda: cluster(hosts=["host2"], key_filename=str(other)), "host2", "refused", str(other))
    # unknown host key: refused, with how to accept it
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    text = _refused(lambda: cluster(hosts=["host3"], known_hosts=str(empty)),
                    "host3", "unknown host key", "accept-new", "ssh-keyscan")
    assert "SHA256:" in text
    # a changed host key: host3's name with host1's key
    wrong = tmp_path / "wrong_known_hosts"
    line = ssh_hosts[2].host_key_line.split()[0] + " " + " ".join(h.host_key_line.split()[1:])
    wrong.write_text(line + "\n")
    _refused(lambda: cluster(hosts=["host3"], known_hosts=str(wrong)), "host3", "MISMATCH")
    # no python3 on the host
    _refused(lambda: cluster(hosts=["host1", "host4"]), "host4", "python3")
    # duplicates, literally or through an alias
    _refused(lambda: cluster(hosts=["host1", "host1"]), "host1", "twice", error=ValueError)
    _refused(lambda: cluster(hosts=["host2", ssh_hosts[1].spec]), "host2", "twice", error=ValueError)


def test_pip_failure_is_an_error_before_any_task_runs(cluster):
    bad = cluster("pipfail", hosts=("host1", "host2"), additional_packages=["deploy-no-such-package"],
                  pip_options=["--no-index"])
    with pytest.raises(HostError) as info:
        deploy.map_job.create(add, [{"x": 1, "y": 2}], environment=bad)
    text = str(info.value)
    assert "host1" in text and "host2" in text and "deploy-no-such-package" in text
    assert "No matching distribution" in text
    assert len(deploy.jobs) == 0                # nothing was written, nothing ran


def test_a_store_path_the_hosts_cannot_see_is_refused_before_tasks_run(cluster, tmp_path):
    private = tmp_path / "not-shared"           # root's, 0700: no host user can read it
    lab = cluster("unshared", hosts=("host1", "host2"), store=str(private))
    with pytest.raises(HostError) as info:
        deploy.map_job.create(add, [{"x": 1, "y": 2}], environment=lab)
    assert "host1" in str(info.value) and "cannot read the job directory" in str(info.value)
    assert len(deploy.jobs) == 0 and not any(private.iterdir())


def test_relay_keeps_workers_inside_the_job_directory(tmp_path):
    from deploy.store import relay
    from deploy.store.local import LocalStorage
    (tmp_path / "secret").write_text("x")
    store = LocalStorage(str(tmp_path / "job"))
    store.put("results/000000", b"r")

    def ask(verb, path, data=b""):
        body = relay.answer(store, relay.request(7, verb, path, data))
        return body[4], body[5:]
    assert ask(relay.GET, "results/000000") == (relay.OK, b"r")
    assert ask(relay.GET, "results/000001")[0] == relay.NOT_FOUND
    for path in ("../secret", "/etc/passwd", "results/../../secret", "./results"):
        status, message = ask(relay.GET, path)
        assert status == relay.ERROR and b"leaves the job directory" in message
    assert ask(relay.DELETE, "")[0] == relay.ERROR          # never the whole directory
    assert ask(relay.CREATE, "claims/000000.0", b"w") == (relay.OK, b"\x01")
    assert ask(relay.CREATE, "claims/000000.0", b"v") == (relay.OK, b"\x00")


def test_accept_new_records_unknown_host_keys(cluster, ssh_hosts, tmp_path):
    known = tmp_path / "known_hosts"
    lab = cluster("keys", hosts=("host1", "host2"), known_hosts=str(known), host_key_policy="accept-new")
    lab.prepare()
    lines = known.read_text().splitlines()
    assert sorted(lines) == sorted(h.host_key_line for h in ssh_hosts[:2])
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    cluster("keys2", hosts=("host1", "host2"), known_hosts=str(known)).prepare()   # now known
    with pytest.raises(ValueError, match="never accepted silently"):
        cluster("auto", host_key_policy="auto-add")


def test_ssh_agent_keys_are_used(cluster, ssh_hosts, tmp_path, monkeypatch):
    sock = str(tmp_path / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(sock), timeout=10, what="ssh-agent socket")
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        subprocess.run(["ssh-add", str(ssh_hosts.client_key_path)], check=True, capture_output=True)
        monkeypatch.setenv("HOME", str(tmp_path))             # no ~/.ssh/id_* to fall back on
        lab = cluster("agent", hosts=[h.spec for h in ssh_hosts[:2]], ssh_config=None,
                      known_hosts=str(ssh_hosts.known_hosts_path))
        assert lab.num_workers() == 2 * len(os.sched_getaffinity(0))
    finally:
        agent.terminate()
        agent.wait(10)


# ---------------------------------------------------------------------------- registry, CLI

def test_reopened_by_name_from_a_new_process(cluster, ssh_hosts, deploy_home):
    key = ssh_hosts.client_key_path
    deploy.ssh_cluster.create("lab", list(LAB), key_filename=str(key),
                              ssh_config=str(ssh_hosts.ssh_config_path))
    out = run_python("""
        import deploy
        env = deploy.environments['lab']
        print(type(env).__name__, env.settings()['hosts'])
        job = deploy.map_job.create(lambda v: v + 1, [{'v': 1}, {'v': 2}], environment='lab')
        print(job.get_results(timeout=60))
    """).stdout.splitlines()
    assert out == ["SshCluster ['host1', 'host2', 'host3']", "[2, 3]"]
    registry = registry_bytes(deploy_home)
    assert str(key).encode() in registry                          # the key's path is fine...
    assert key.read_bytes().split(b"\n")[1][:40] not in registry  # ...its content never
    assert b"PRIVATE KEY" not in registry


def test_cli_creates_an_ssh_env_and_runs_on_it(ssh_hosts, cluster):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
    config = str(ssh_hosts.ssh_config_path)
    made = cli("envs", "create", "ssh", "clab", "--host", "host1", "--host", "host2", "--host", "host3",
               "--ssh-config", config, "--workers-per-host", "1")
    assert made.returncode == 0, made.stderr
    assert "3 workers" in made.stdout
    ran = cli("run", "examples/add.py:add", "--params", "examples/params.json", "--env", "clab")
    assert ran.returncode == 1, ran.stderr                 # one task fails: add(None, 10)
    assert "results: [40, null, 10]" in ran.stdout
    ran = cli("run", "examples/add.py:add", "--params", "examples/params.json", "--env", "clab",
              "--combiner", "examples/add.py:add_combiner")
    assert ran.returncode == 1 and "TypeError" in ran.stdout
    detached = cli("run", "examples/add.py:add", "--params", "examples/params.json", "--env", "clab",
                   "--detach")
    assert detached.returncode == 2 and "shared store" in detached.stderr
    dup = cli("envs", "create", "ssh", "dup", "--host", "host1", "--host", "host1", "--ssh-config", config)
    assert dup.returncode == 2 and "twice" in dup.stderr
    bad = cli("envs", "create", "ssh", "nopy", "--host", "host4", "--ssh-config", config)
    assert bad.returncode == 1 and "host4" in bad.stderr and "python3" in bad.stderr


# ---------------------------------------------------------------------------- shared store

def test_job_outlives_its_client_with_an_s3_store(cluster, ssh_hosts, s3_env, deploy_home):
    config = str(ssh_hosts.ssh_config_path)
    client = run_python(f"""
        import deploy
        def slow(i):
            import time
            time.sleep(0.5)
            return i * i
        env = deploy.ssh_cluster.SshCluster('s3lab', ['host1', 'host2', 'host3'], ssh_config={config!r},
                                            store='s3://{s3_env}/jobs', workers_per_host=1,
                                            forward_env=['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'])
        job = deploy.map_job.create(slow, [{{'i': i}} for i in range(12)], environment=env,
                                    chunk_size=1, name='outlive')
        print(job.name, job._store.uri)
    """, timeout=180)
    gone = time.time()                     # the client process has exited
    name, uri = client.stdout.split()
    assert name == "outlive" and uri.startswith(f"s3://{s3_env}/jobs/")
    job = deploy.jobs["outlive"]
    assert job.wait(timeout=90) == "Completed"
    assert job.get_results() == [i * i for i in range(12)]
    metrics = job.get_metrics()
    assert metrics.end_time.max().timestamp() > gone      # tasks finished after the client left
    assert set(metrics.host) == set(LAB)
    reopened = run_python("import deploy; print(deploy.jobs['outlive'].get_results())")
    assert reopened.stdout.strip() == str([i * i for i in range(12)])
    # the forwarded secret is nowhere on disk: not in S3, the registry, or the host logs
    import boto3
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    s3 = boto3.client("s3")
    for obj in s3.list_objects_v2(Bucket=s3_env).get("Contents", []):
        assert secret not in s3.get_object(Bucket=s3_env, Key=obj["Key"])["Body"].read(), obj["Key"]
    assert secret not in registry_bytes(deploy_home)
    for host in ssh_hosts[:3]:
        for folder, _, files in os.walk(host.home / ".deploy" / "remote" / "jobs"):
            for f in files:
                with open(os.path.join(folder, f), "rb") as fh:
                    assert secret not in fh.read()


def test_cancel_from_another_process_with_an_s3_store(cluster, ssh_hosts, s3_env):
    lab = cluster("s3cancel", store=f"s3://{s3_env}/jobs", workers_per_host=1,
                  forward_env=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
    job = deploy.map_job.create(nap, [{"i": i, "seconds": 60} for i in range(6)], environment=lab,
                                chunk_size=1, name="s3naps")
    wait_for(lambda: len(job._store.list("claims")) >= 3, timeout=60, what="a worker on every host")
    groups = {g for entry in json.loads(job._store.get("launch.json"))["handle"]["hosts"]
              for g, _ in entry["groups"]}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "jobs", "cancel", "s3naps"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and "Canceled" in done.stdout, done.stderr
    wait_for(lambda: not group_members(groups), timeout=10, what="no worker left on any host")
    assert time.monotonic() - start < 10
    assert job.get_status() == "Canceled"
