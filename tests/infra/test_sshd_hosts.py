"""Tests of the real-sshd test hosts (tests/infra/sshd_hosts.py).

Needs root, openssh-server and Debian's python3 + python3-venv + python3-pip (scripts/test.sh
installs them); fails otherwise.  Creates (once, kept) the Unix users deployt1..deployt3 and
deploytz1 (or, while another test session holds those, deployu1..3 / deployuz1 and so on).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import paramiko  # noqa: E402

from .sshd_hosts import _proc_table, check_prerequisites, start_free  # noqa: E402

pytestmark = pytest.mark.ssh

_problems = check_prerequisites()
if _problems:   # never skip silently: a green run must mean these ran
    raise RuntimeError("; ".join(_problems) + " (install them with scripts/test.sh, or deselect with -m 'not ssh')")


PREFIXES = ("deployt", "deployu", "deployv")          # another session may hold a set
SINGLE = ("deploytz", "deployuz", "deployvz")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    h = start_free(tmp_path_factory.mktemp("sshd-hosts"), PREFIXES, n=3, without_python={2},
                   without_sftp={1})
    yield h
    h.stop()


def _client(known_hosts) -> "paramiko.SSHClient":
    c = paramiko.SSHClient()
    c.load_host_keys(str(known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    return c


def _connect(c, host, key, **kw):
    c.connect(host.address, port=host.port, username=kw.pop("username", host.user),
              key_filename=str(key), look_for_keys=False, allow_agent=False,
              timeout=10, banner_timeout=10, auth_timeout=10, **kw)


def _exec(client, command):
    _in, out, err = client.exec_command(command, timeout=60)
    stdout, stderr = out.read().decode(), err.read().decode()
    return out.channel.recv_exit_status(), stdout, stderr


def _port_open(address, port) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait_until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --------------------------------------------------------------------------- basics


def test_hosts_are_distinct(hosts):
    assert len(hosts) == 3
    assert len({h.user for h in hosts}) == 3
    assert len({h.home for h in hosts}) == 3
    assert len({(h.address, h.port) for h in hosts}) == 3
    assert len({h.host_key_line.split()[-1] for h in hosts}) == 3
    for h in hosts:
        assert h.spec == f"{h.user}@{h.address}:{h.port}"
        assert h.running


def test_known_hosts_format(hosts):
    lines = hosts.known_hosts_path.read_text().splitlines()
    assert lines == [f"[{h.address}]:{h.port} {h.host_key_line.split(' ', 1)[1]}" for h in hosts]
    assert all(line.split()[1] == "ssh-ed25519" for line in lines)


def test_paramiko_verifies_host_key_and_logs_in_with_client_key(hosts):
    for h in hosts:
        c = _client(hosts.known_hosts_path)
        try:
            _connect(c, h, hosts.client_key_path)
            served = c.get_transport().get_remote_server_key()
            assert served.get_name() == "ssh-ed25519"
            assert served.get_base64() == h.host_key_line.split()[-1]
            assert c.get_transport().is_authenticated()
        finally:
            c.close()


def test_identity_home_and_python_per_host(hosts):
    for h in hosts[:2]:
        rc, out, err = h.run("whoami; echo $HOME; python3 --version; pwd")
        assert rc == 0, err
        user, home, version, cwd = out.split("\n")[:4]
        assert (user, home, cwd) == (h.user, str(h.home), str(h.home))
        assert version.startswith("Python 3.")
        assert int(version.split(".")[1]) >= 10


def test_host_without_python3(hosts):
    h = hosts[2]
    rc, out, err = h.run("whoami; echo $HOME; python3 --version")
    assert rc == 127
    assert out.split("\n")[:2] == [h.user, str(h.home)]
    assert "python3: command not found" in err
    # everything else a bootstrap script needs is still there
    rc, out, err = h.run("command -v python3 || echo no-python; /usr/bin/env python3 -V || true; "
                         "sh -c 'echo sh-ok'; mkdir -p ~/x && tar --version >/dev/null && echo tar-ok")
    assert rc == 0, err
    assert out.split() == ["no-python", "sh-ok", "tar-ok"]
    # also in a login shell (/etc/profile resets PATH there)
    rc, out, err = h.run("bash -lc 'command -v python3 || echo no-python'")
    assert out.strip() == "no-python"


def test_set_python_toggle(hosts):
    h = hosts[2]
    h.set_python(True)
    try:
        rc, out, err = h.run("python3 -c 'import sys; print(sys.version_info >= (3, 10))'")
        assert (rc, out.strip()) == (0, "True"), err
    finally:
        h.set_python(False)
    assert h.run("python3 -V")[0] == 127


def test_host_user_can_make_a_venv_with_pip(hosts):
    rc, out, err = hosts[0].run(
        "python3 -m venv ~/venv-check && ~/venv-check/bin/python -m pip --version && rm -rf ~/venv-check"
    )
    assert rc == 0, err
    assert out.startswith("pip ")


def test_tmpdir_is_per_host(hosts):
    for h in hosts:
        rc, out, err = h.run("echo $TMPDIR; python3 -c 'import tempfile; print(tempfile.gettempdir())' "
                             "2>/dev/null || true")
        assert out.split()[0] == str(h.home / "tmp")


def test_host_without_sftp_refuses_sftp_but_runs_commands(hosts):
    plain, hardened = hosts[0], hosts[1]
    assert "Subsystem sftp" in plain.config_path.read_text()
    assert "Subsystem" not in hardened.config_path.read_text()
    client = hardened.connect()
    try:
        with pytest.raises(paramiko.SSHException, match="Channel closed"):
            client.open_sftp()
        assert client.get_transport().is_active()          # the connection itself lives on
        # what replaces SFTP: bytes through an exec channel's stdin
        chan = client.get_transport().open_session()
        chan.exec_command("umask 077; cat > ~/sent && sha256sum ~/sent && stat -c %a ~/sent")
        chan.sendall(b"x" * 100_000)
        chan.shutdown_write()
        out = chan.makefile("rb").read().decode()
        assert chan.recv_exit_status() == 0
        assert out.split()[0] == hashlib.sha256(b"x" * 100_000).hexdigest()
        assert out.split()[-1] == "600"
    finally:
        client.close()
    assert _wait_until(lambda: "subsystem request for sftp by user " + hardened.user + " failed, "
                       "subsystem not found" in hardened.log())
    client = plain.connect()
    try:
        sftp = client.open_sftp()
        assert sftp.normalize(".") == str(plain.home)
        sftp.close()
    finally:
        client.close()


# --------------------------------------------------------------------------- isolation


def test_hosts_do_not_see_each_others_homes(hosts):
    a, b = hosts[0], hosts[1]
    rc, _, err = b.run("echo secret > ~/private.txt")
    assert rc == 0, err
    rc, out, err = a.run(f"ls {b.home}; cat {b.home}/private.txt; touch {b.home}/intruder; "
                         f"test -e {b.home}/private.txt && echo visible || echo invisible")
    assert "secret" not in out
    assert out.strip() == "invisible"
    assert "Permission denied" in err
    assert not (b.home / "intruder").exists()
    # and the listing of the homes' parent is not possible either
    rc, out, err = a.run(f"ls {a.home.parent}")
    assert rc != 0 and b.user not in out


def test_host_accepts_only_its_own_user(hosts):
    c = _client(hosts.known_hosts_path)
    try:
        with pytest.raises(paramiko.AuthenticationException):
            _connect(c, hosts[0], hosts.client_key_path, username=hosts[1].user)
    finally:
        c.close()


def test_only_publickey_auth_is_offered(hosts):
    h = hosts[0]
    t = paramiko.Transport((h.address, h.port))
    try:
        t.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as e:
            t.auth_none(h.user)
        assert e.value.allowed_types == ["publickey"]
    finally:
        t.close()


def test_wrong_client_key_is_refused(hosts, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    c = _client(hosts.known_hosts_path)
    try:
        with pytest.raises(paramiko.AuthenticationException):
            _connect(c, hosts[0], other)
    finally:
        c.close()


def test_unknown_host_key_is_rejected(hosts, tmp_path):
    h = hosts[0]
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    c = _client(empty)
    try:
        with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
            _connect(c, h, hosts.client_key_path)
    finally:
        c.close()


def test_mismatched_host_key_is_rejected(hosts, tmp_path):
    # host1's name with host2's key: what a man in the middle would look like
    h, impostor = hosts[0], hosts[1]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[{h.address}]:{h.port} {impostor.host_key_line.split(' ', 1)[1]}\n")
    c = _client(wrong)
    try:
        with pytest.raises(paramiko.BadHostKeyException):
            _connect(c, h, hosts.client_key_path)
    finally:
        c.close()


# --------------------------------------------------------------------------- ssh_config


def test_ssh_config_aliases_work_with_paramiko(hosts):
    cfg = paramiko.SSHConfig.from_path(str(hosts.ssh_config_path))
    assert set(cfg.get_hostnames()) >= {"host1", "host2", "host3"}
    for h in hosts:
        o = cfg.lookup(h.alias)
        assert (o["hostname"], int(o["port"]), o["user"]) == (h.address, h.port, h.user)
        assert o["identityfile"] == [str(hosts.client_key_path)]
        c = _client(o["userknownhostsfile"].split()[0])
        try:
            c.connect(o["hostname"], port=int(o["port"]), username=o["user"],
                      key_filename=o["identityfile"], look_for_keys=False, allow_agent=False, timeout=10)
            assert _exec(c, "whoami")[1].strip() == h.user
        finally:
            c.close()


def test_ssh_config_aliases_work_with_openssh_client(hosts):
    for h in hosts:
        res = subprocess.run(["ssh", "-F", str(hosts.ssh_config_path), h.alias, "whoami"],
                             capture_output=True, text=True, timeout=30)
        assert (res.returncode, res.stdout.strip()) == (0, h.user), res.stderr


# --------------------------------------------------------------------------- kill / restart


_BACKGROUND = ("setsid sleep 1000 >/dev/null 2>&1 </dev/null & "
               "(nohup sleep 1001 >/dev/null 2>&1 </dev/null &); "
               "nohup sh -c 'sleep 1002' >/dev/null 2>&1 </dev/null & echo started")


def test_kill_and_restart(hosts):
    h, other = hosts[1], hosts[0]
    key_line = h.host_key_line
    assert h.run("echo survives > ~/state.txt")[0] == 0
    assert h.run(_BACKGROUND)[1].strip() == "started"
    assert _wait_until(lambda: len(h.processes()) >= 3)

    # an open session at the moment of the crash
    live = h.connect()
    live_chan = live.get_transport().open_session()
    live_chan.exec_command("sleep 1000")

    h.kill()
    assert not h.running
    assert h.processes() == []
    assert h.processes(include_zombies=True) == []  # reaped, not just dead
    assert h.sshd_processes() == []
    assert not _port_open(h.address, h.port)
    with pytest.raises((paramiko.ssh_exception.NoValidConnectionsError, OSError)):
        h.connect(timeout=3)
    # the open session notices (EOF / closed transport)
    assert _wait_until(lambda: live_chan.exit_status_ready() or live_chan.closed
                       or not live.get_transport().is_active())
    live.close()
    # the other hosts do not care
    assert other.run("whoami")[1].strip() == other.user

    port = h.port
    h.restart()
    assert h.running and h.port == port
    assert h.host_key_line == key_line  # same key: known_hosts still valid
    rc, out, err = h.run("whoami; cat ~/state.txt")
    assert (rc, out.split()) == (0, [h.user, "survives"]), err
    assert _wait_until(lambda: h.processes() == [])  # nothing came back but sshd


def test_restart_while_running(hosts):
    h = hosts[0]
    h.restart()
    assert h.run("whoami")[1].strip() == h.user


def test_stop_kills_everything_and_start_again(tmp_path):
    with start_free(tmp_path / "hs", SINGLE, n=1) as hs:
        h = hs[0]
        assert h.run(_BACKGROUND)[0] == 0
        assert _wait_until(lambda: len(h.processes()) >= 3)
        addr = (h.address, h.port)
    assert hs.start_seconds is not None and hs.stop_seconds is not None
    assert h.processes(include_zombies=True) == []
    assert not _port_open(*addr)
    if hs.auto_homes:
        assert not h.home.exists()
    assert (hs.base_dir / "known_hosts").exists()  # base_dir is the caller's: kept


def test_hosts_die_with_the_process_that_started_them(tmp_path):
    """A crashed test process (SIGKILL) leaves no sshd and no host-user process behind."""
    script = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from sshd_hosts import start_free
        hs = start_free({str(tmp_path / 'crash')!r}, {SINGLE!r}, n=1)
        h = hs[0]
        h.run({_BACKGROUND!r})
        while len(h.processes()) < 3:
            time.sleep(0.02)
        print(json.dumps({{"addr": [h.address, h.port], "uid": h.uid, "home": str(h.home),
                          "auto_homes": hs.auto_homes,
                          "reaper": h._proc.pid, "tree": h.sshd_processes()}}), flush=True)
        time.sleep(1000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    uid = info["uid"]

    def gone():
        pids = {pid for pid, _pp, state, uids in _proc_table()
                if state != "Z" and (uid in uids[:2] or pid in info["tree"])}
        return not pids

    assert _wait_until(gone, timeout=15)
    assert not _port_open(*info["addr"])
    if info["auto_homes"]:  # the crashed process could not tidy up
        shutil.rmtree(info["home"], ignore_errors=True)
