"""Real OpenSSH ``sshd`` daemons on loopback, acting as separate "hosts" for tests.

Each host is

* its own Unix user (``deployt1``, ``deployt2``, ...; created with ``useradd`` when
  missing, login shell ``/bin/bash``, password field ``*`` so the account is usable for
  public-key logins but has no password), with a fresh private home directory (mode 0700)
  created for this ``SshHosts`` instance;
* its own ``/usr/sbin/sshd -D -e -f <own sshd_config>`` listening on its own loopback
  address (``127.0.0.11``, ``127.0.0.12``, ... -- the whole of 127.0.0.0/8 is routed to
  ``lo`` on Linux, no setup needed) and a free port picked at first start;
* its own ed25519 host key generated with ``ssh-keygen``;
* key-only authentication (``PubkeyAuthentication yes``, password and keyboard-interactive
  off, ``UsePAM no``, ``StrictModes yes``, ``AllowUsers <that user>`` so a host accepts only
  its own user).

One client key pair (ed25519) is authorised for every host user; ``known_hosts`` holds
every host key as ``[127.0.0.11]:PORT ssh-ed25519 AAAA...`` (the form paramiko and OpenSSH
use for non-22 ports) and ``ssh_config`` has ``Host host1``... aliases (HostName, Port,
User, IdentityFile, UserKnownHostsFile, IdentitiesOnly, StrictHostKeyChecking).

Python on the hosts: the host users run Debian's ``/usr/bin/python3`` (found on sshd's
default PATH ``/usr/local/bin:/usr/bin:/bin:/usr/games``) with ``python3-venv`` and
``python3-pip``.  The pyenv interpreter under ``/root`` is not reachable by other users
(``/root`` is mode 0700), so it is never used on the host side.

A host can be made "without SFTP" (``without_sftp=``): its sshd_config has no ``Subsystem
sftp`` line, as on hardened servers, so paramiko's ``open_sftp()`` fails ("Channel closed")
while exec channels (and so ``cat``, ``tar``, ``python3``) keep working.

A host can be made "without python3": its sshd sets ``PATH`` (``SetEnv``) to a directory
of symlinks to everything in ``/usr/bin`` except ``python*``/``pip*``/``pydoc*``/...,
and the user's ``~/.bashrc``/``~/.profile`` set the same PATH (``/etc/profile`` would
otherwise reset PATH in login shells).  ``python3`` is then "command not found" (exit 127)
while ``sh``, ``tar``, ``mkdir``, ... keep working.  (An absolute ``/usr/bin/python3``
still works: the point is to exercise "no python3 on PATH" handling.)

Every host's sshd runs under a small root "reaper" process (this file run as a script):
it is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so processes started through that
host's sshd that double-fork are re-parented to it and reaped (PID 1 in containers often
does not reap, which would leave zombies).  On SIGTERM -- or when the process that
started it dies (``PR_SET_PDEATHSIG``) -- it SIGKILLs sshd, every process of the host
user and every remaining descendant, reaps them and exits.

Usage::

    hosts = SshHosts(tmp_path, n=3, without_python={2}, without_sftp={1})
    hosts.start()
    hosts[0].address, hosts[0].port, hosts[0].user, hosts[0].home, hosts[0].spec
    hosts.client_key_path, hosts.known_hosts_path, hosts.ssh_config_path
    rc, out, err = hosts[0].run("whoami")
    hosts[1].kill(); hosts[1].restart(); hosts[1].processes()
    hosts.stop()

``hosts[i]`` is 0-based; aliases and user names are 1-based (``hosts[0]`` is ``host1``,
user ``deployt1``).  Everything here needs root (useradd, sshd).  The user names are
dedicated to these tests: ``start()`` kills leftover processes of those users, and an
exclusive lock file per user prevents two ``SshHosts`` using the same users at once (use
``user_prefix=`` to run several side by side, or ``start_free()`` to take the first free
prefix of a list).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
HOST_PYTHON = "/usr/bin/python3"
SSHD_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"
PRIVSEP_DIR = "/run/sshd"
AUTO_HOME_ROOT = "/tmp/deploy-sshd-homes"
# Names hidden from a "without python3" host's PATH.
_PYTHON_NAME = re.compile(r"^(python|pip|pydoc|py3|2to3|idle|easy_install)")

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class SshHostsError(RuntimeError):
    pass


# --------------------------------------------------------------------------- /proc


def _proc_table() -> Iterator[tuple[int, int, str, tuple[int, ...]]]:
    """Yield (pid, ppid, state, uids) for every process; uids = (real, effective, ...)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
            with open(f"/proc/{pid}/status", "rb") as f:
                status = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        state, ppid = rest[0], int(rest[1])
        uids: tuple[int, ...] = ()
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uids = tuple(int(x) for x in line.split()[1:])
                break
        yield pid, ppid, state, uids


def user_pids(uid: int, include_zombies: bool = False) -> list[int]:
    """Pids of processes whose real or effective uid is ``uid``."""
    return sorted(
        pid
        for pid, _ppid, state, uids in _proc_table()
        if uids[:2] and uid in uids[:2] and (include_zombies or state != "Z")
    )


def _kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_user_processes(uid: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of ``uid`` until none (zombies aside) is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = user_pids(uid)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise SshHostsError(f"processes of uid {uid} survive SIGKILL: {pids}")
        _kill_pids(pids)
        time.sleep(0.01)


# --------------------------------------------------------------------------- reaper


def _reaper_main(argv: list[str]) -> int:
    """``python sshd_hosts.py --reaper PARENT_PID UID -- CMD...``

    Run CMD (sshd) as a child, reap every orphan of its tree, and on SIGTERM/SIGINT/SIGHUP,
    on the death of PARENT_PID or when CMD exits, kill CMD, every process of UID and every
    remaining descendant, reap them all, and exit.
    """
    parent, uid = int(argv[0]), int(argv[1])
    cmd = argv[argv.index("--") + 1:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    watched = stop_signals | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    stopping = os.getppid() != parent
    me = os.getpid()
    child = None
    rc = 0
    if not stopping:
        child = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, []),
        )
    while True:
        # Reap whatever has exited.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return rc
            if pid == 0:
                break
            if child is not None and pid == child.pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                if not stopping:
                    rc = child.returncode if child.returncode > 0 else 1
                stopping = True
        if stopping:
            _kill_pids(user_pids(uid))
            _kill_pids(p for p, ppid, state, _u in _proc_table() if ppid == me and state != "Z")
        info = signal.sigtimedwait(watched, 0.05 if stopping else 1.0)
        if info is not None and info.si_signo in stop_signals:
            stopping = True
        if os.getppid() != parent:
            stopping = True


# --------------------------------------------------------------------------- helpers


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise SshHostsError(f"{shlex.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _openssh_version() -> tuple[int, int]:
    res = subprocess.run([SSHD, "-V"], capture_output=True, text=True)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", res.stderr + res.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _traversable_by_others(path: Path) -> bool:
    """True when a user who is neither owner nor in the group can reach ``path``."""
    path = path.resolve()
    for p in [path, *path.parents]:
        try:
            if not os.stat(p).st_mode & 0o001:
                return False
        except FileNotFoundError:
            continue  # will be created by us, with o+x
    return True


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _rmtree(path: Path) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _can_bind(address: str) -> bool:
    try:
        _free_port(address)
        return True
    except OSError:
        return False


def _sshd_quote(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./:=+,@%-]+", value):
        return value
    if '"' in value:
        raise SshHostsError(f"cannot quote {value!r} for sshd_config")
    return f'"{value}"'


def check_prerequisites() -> list[str]:
    """Problems that prevent starting hosts on this machine ([] = fine)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (useradd, sshd)")
    if not os.access(SSHD, os.X_OK):
        problems.append(f"{SSHD} missing (apt-get install -y openssh-server)")
    if shutil.which(SSH_KEYGEN) is None:
        problems.append("ssh-keygen missing (apt-get install -y openssh-client)")
    for tool in ("useradd", "usermod"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} missing (apt-get install -y passwd)")
    if not os.access(HOST_PYTHON, os.X_OK):
        problems.append(f"{HOST_PYTHON} missing (apt-get install -y python3 python3-venv python3-pip)")
    else:
        res = subprocess.run(
            [HOST_PYTHON, "-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 10), sys.version"],
            capture_output=True, text=True,
        )
        if res.returncode != 0:
            problems.append(
                f"{HOST_PYTHON} is not 3.10+ with venv/ensurepip "
                f"(apt-get install -y python3 python3-venv python3-pip): {res.stderr.strip()[-200:]}"
            )
    return problems


# --------------------------------------------------------------------------- hosts


class SshHost:
    """One "host": a Unix user plus an sshd on its own loopback address."""

    def __init__(self, cluster: "SshHosts", index: int, address: str, python: bool, sftp: bool = True):
        self.cluster = cluster
        self.index = index  # 0-based
        self.number = index + 1  # 1-based, used in names
        self.alias = f"host{self.number}"
        self.user = f"{cluster.user_prefix}{self.number}"
        self.address = address
        self.port: int | None = None
        self.dir = cluster.base_dir / self.alias  # root-owned: config, host key, log
        self.home = cluster.home_root / self.user
        self.config_path = self.dir / "sshd_config"
        self.host_key_path = self.dir / "ssh_host_ed25519_key"
        self.log_path = self.dir / "sshd.log"
        self.python = python
        self.sftp = sftp
        self.uid: int | None = None
        self.gid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._lock_fd: int | None = None

    # -- public ---------------------------------------------------------------------

    @property
    def spec(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def host_key_line(self) -> str:
        """known_hosts line for this host."""
        keytype, blob = self.host_key_path.with_suffix(".pub").read_text().split()[:2]
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {keytype} {blob}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def processes(self, include_zombies: bool = False) -> list[int]:
        """Pids of this host user's processes (zombies excluded unless asked)."""
        return user_pids(self.uid, include_zombies) if self.uid is not None else []

    def sshd_processes(self) -> list[int]:
        """Pids of the reaper and everything below it (sshd, per-connection monitors, ...)."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        table = [(pid, ppid) for pid, ppid, state, _u in _proc_table() if state != "Z"]
        tree, frontier = {self._proc.pid}, [self._proc.pid]
        while frontier:
            parent = frontier.pop()
            for pid, ppid in table:
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        return sorted(tree)

    def start(self, timeout: float = 15.0) -> None:
        """Start this host's sshd (idempotent) and wait until it serves the SSH banner."""
        if self.running:
            return
        attempts = 3 if self.cluster.fixed_port is None and self._first_start else 1
        for attempt in range(attempts):
            if self.port is None or attempt > 0:
                self.port = self.cluster.fixed_port or _free_port(self.address)
                self._write_sshd_config()
            try:
                self._spawn_and_wait(timeout)
                self._first_start = False
                return
            except SshHostsError as e:
                if "Address already in use" not in str(e) or attempt == attempts - 1:
                    raise

    def kill(self, timeout: float = 15.0) -> None:
        """Host crash: SIGKILL its sshd, every process of its user and every descendant."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            self._proc = None
        if self.uid is not None:
            kill_user_processes(self.uid, timeout)

    def restart(self, timeout: float = 15.0) -> None:
        """Kill (as a crash would) and start again: same user, home, address, port, key."""
        self.kill(timeout)
        self.start(timeout)

    def set_python(self, available: bool) -> None:
        """Make ``python3`` (un)available on this host's PATH; restarts it if running."""
        self.python = available
        self._write_user_files()
        if self.port is not None:
            self._write_sshd_config()
        if self.running:
            self.restart()

    def connect(self, **kw):
        """A paramiko SSHClient connected to this host with the client key, host key
        verified against known_hosts (RejectPolicy)."""
        return self.cluster.connect(self, **kw)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run ``command`` over SSH (paramiko); return (exit status, stdout, stderr)."""
        client = self.connect()
        try:
            _in, out, err = client.exec_command(command, timeout=timeout)
            stdout, stderr = out.read().decode(), err.read().decode()
            return out.channel.recv_exit_status(), stdout, stderr
        finally:
            client.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SshHost {self.alias} {self.spec} {state}>"

    # -- internals ------------------------------------------------------------------

    _first_start = True

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        lock_dir = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
        fd = os.open(lock_dir / f"deploy-sshd-hosts-{self.user}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SshHostsError(
                f"user {self.user} is in use by another SshHosts (pass a different user_prefix=)"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _ensure_user(self) -> None:
        try:
            pw = pwd.getpwnam(self.user)
        except KeyError:
            res = subprocess.run(
                ["useradd", "--no-create-home", "--home-dir", str(self.home), "--shell", "/bin/bash",
                 "--password", "*", "--comment", f"deploy test host {self.alias}", self.user],
                capture_output=True, text=True,
            )
            if res.returncode not in (0, 9):  # 9: created concurrently by someone else
                raise SshHostsError(f"useradd {self.user} failed: {res.stderr.strip()}")
            pw = pwd.getpwnam(self.user)
        if pw.pw_uid == 0:
            raise SshHostsError(f"refusing to use {self.user}: uid 0")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        kill_user_processes(self.uid)  # leftovers of an earlier run: the user is ours
        # "*": no password but not locked -- sshd with UsePAM no refuses locked ("!") accounts.
        if pw.pw_dir != str(self.home) or pw.pw_shell != "/bin/bash" or self._shadow_locked():
            _run(["usermod", "--home", str(self.home), "--shell", "/bin/bash", "--password", "*", self.user])

    def _shadow_locked(self) -> bool:
        try:
            for line in Path("/etc/shadow").read_text().splitlines():
                fields = line.split(":")
                if fields[0] == self.user:
                    return fields[1] != "*"
        except OSError:
            pass
        return True

    def _prepare(self, client_pub: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if not self.host_key_path.exists():
            _run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"{self.alias}-hostkey",
                  "-f", str(self.host_key_path)])
        self._ensure_user()
        if self.cluster.auto_homes and self._first_start and os.path.lexists(self.home):
            _rmtree(self.home)  # fresh home per SshHosts instance
        self.home.mkdir(exist_ok=True)
        for d, mode in ((self.home, 0o700), (self.home / ".ssh", 0o700), (self.home / "tmp", 0o700)):
            d.mkdir(exist_ok=True)
            os.chown(d, self.uid, self.gid)
            os.chmod(d, mode)
        ak = self.home / ".ssh" / "authorized_keys"
        ak.write_text(client_pub.strip() + "\n")
        os.chown(ak, self.uid, self.gid)
        os.chmod(ak, 0o600)
        self._write_user_files()

    @property
    def _restricted_bin(self) -> Path:
        return self.home / ".restricted-bin"

    @property
    def _path(self) -> str:
        return SSHD_DEFAULT_PATH if self.python else str(self._restricted_bin)

    def _write_user_files(self) -> None:
        files = {self.home / ".bashrc": "", self.home / ".profile": ""}
        if not self.python:
            rb = self._restricted_bin
            if rb.exists():
                shutil.rmtree(rb)
            rb.mkdir()
            for src_dir in SSHD_DEFAULT_PATH.split(":"):
                if not os.path.isdir(src_dir):
                    continue
                for name in sorted(os.listdir(src_dir)):
                    link = rb / name
                    if _PYTHON_NAME.match(name) or os.path.lexists(link):
                        continue
                    os.symlink(os.path.join(src_dir, name), link)
            os.chmod(rb, 0o755)  # root-owned, inside the user's home
            line = f"export PATH={shlex.quote(str(rb))}\n"
            files = {self.home / ".bashrc": line, self.home / ".profile": line}
        for path, text in files.items():
            path.write_text("# written by tests/infra/sshd_hosts.py\n" + text)
            os.chown(path, self.uid, self.gid)
            os.chmod(path, 0o644)

    def _write_sshd_config(self) -> None:
        setenv = f"TMPDIR={self.home / 'tmp'}"
        if not self.python:
            setenv += f" PATH={self._path}"
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.address}",
            "AddressFamily inet",
            f"HostKey {_sshd_quote(str(self.host_key_path))}",
            f"PidFile {_sshd_quote(str(self.dir / 'sshd.pid'))}",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "PermitEmptyPasswords no",
            "PermitRootLogin no",
            f"AllowUsers {self.user}",
            "UsePAM no",
            "StrictModes yes",
            "PermitUserEnvironment no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "AllowTcpForwarding yes",
            "MaxStartups 200:30:400",
            "MaxSessions 100",
            "LoginGraceTime 30",
            "LogLevel VERBOSE",
            *(["Subsystem sftp internal-sftp"] if self.sftp else []),
            "SetEnv " + " ".join(_sshd_quote(x) for x in setenv.split(" ")),
        ]
        if self.cluster.openssh_version >= (9, 8):
            # Readiness probes and "bad host key" tests look like abuse to the penalty system.
            lines.append("PerSourcePenalties no")
        self.config_path.write_text("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)
        res = subprocess.run([SSHD, "-t", "-f", str(self.config_path)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SshHostsError(f"sshd -t rejects {self.config_path}: {res.stderr.strip()}")

    def _spawn_and_wait(self, timeout: float) -> None:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--reaper", str(os.getpid()), str(self.uid),
                 "--", SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                with open(self.log_path, "rb") as f:
                    f.seek(log_offset)
                    tail = f.read().decode(errors="replace").strip()
                self._proc = None
                raise SshHostsError(f"sshd for {self.alias} exited at start: {tail[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5) as s:
                    s.settimeout(max(0.5, deadline - time.monotonic()))
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise SshHostsError(f"sshd for {self.alias} not ready after {timeout}s: {self.log()[-2000:]}")
            time.sleep(0.01)


class SshHosts:
    """N SSH "hosts" on this machine. See the module docstring."""

    def __init__(
        self,
        base_dir: str | os.PathLike,
        n: int = 3,
        *,
        user_prefix: str = "deployt",
        without_python: Iterable[int] = (),
        without_sftp: Iterable[int] = (),
        home_root: str | os.PathLike | None = None,
        port: int | None = None,
        first_address: int = 11,
    ):
        """
        base_dir: root-owned working dir (keys, configs, logs). Left in place by stop().
        n: number of hosts.
        user_prefix: host users are f"{user_prefix}{1..n}".
        without_python: 0-based indices of hosts whose PATH has no python3.
        without_sftp: 0-based indices of hosts whose sshd offers no SFTP subsystem.
        home_root: where home dirs go; must be traversable by other users (o+x on every
            ancestor). Default: base_dir/homes when traversable (kept by stop()), else
            /tmp/deploy-sshd-homes/<user> (root dir mode 0711), wiped at start and removed
            by stop().
        port: use this port on every host (default: a free port per host).
        first_address: host i listens on 127.0.0.{first_address + i}.
        """
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,24}", user_prefix):
            raise ValueError(f"bad user_prefix {user_prefix!r}")
        self.base_dir = Path(base_dir).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.user_prefix = user_prefix
        self.fixed_port = port
        self.openssh_version = _openssh_version()
        # auto_homes: homes live in a shared root-owned /tmp/deploy-sshd-homes, one per user
        # name; wiped at start (we hold that user's lock) and removed by stop().
        self.auto_homes = False
        if home_root is not None:
            self.home_root = Path(home_root).resolve()
            if not _traversable_by_others(self.home_root):
                raise SshHostsError(f"home_root {self.home_root} is not traversable by other users")
        elif _traversable_by_others(self.base_dir / "homes"):
            self.home_root = self.base_dir / "homes"
        else:
            self.home_root = Path(AUTO_HOME_ROOT)
            self.auto_homes = True
        self.home_root.mkdir(parents=True, exist_ok=True)
        st = os.lstat(self.home_root)
        if not os.path.isdir(self.home_root) or os.path.islink(self.home_root) or st.st_uid != 0:
            raise SshHostsError(f"{self.home_root} must be a real directory owned by root")
        os.chmod(self.home_root, 0o711)  # others may traverse, not list
        if all(_can_bind(f"127.0.0.{first_address + i}") for i in range(n)):
            addresses = [f"127.0.0.{first_address + i}" for i in range(n)]
        else:  # no extra loopback addresses: distinct ports on 127.0.0.1
            addresses = ["127.0.0.1"] * n
        skip_python, skip_sftp = set(without_python), set(without_sftp)
        self.hosts = [SshHost(self, i, addresses[i], python=i not in skip_python, sftp=i not in skip_sftp)
                      for i in range(n)]
        self.client_key_path = self.base_dir / "client" / "id_ed25519"
        self.known_hosts_path = self.base_dir / "known_hosts"
        self.ssh_config_path = self.base_dir / "ssh_config"
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None

    # -- container protocol -------------------------------------------------------

    def __getitem__(self, i: int) -> SshHost:
        return self.hosts[i]

    def __iter__(self) -> Iterator[SshHost]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def by_alias(self, alias: str) -> SshHost:
        for h in self.hosts:
            if h.alias == alias:
                return h
        raise KeyError(alias)

    def __enter__(self) -> "SshHosts":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> "SshHosts":
        problems = check_prerequisites()
        if problems:
            raise SshHostsError("; ".join(problems))
        t0 = time.monotonic()
        # sshd refuses to start (even -t) without its privilege separation directory;
        # /run is a tmpfs, so it vanishes at boot unless the ssh service created it.
        os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        try:
            self.client_key_path.parent.mkdir(mode=0o700, exist_ok=True)
            if not self.client_key_path.exists():
                _run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "deploy-test-client",
                      "-f", str(self.client_key_path)])
            client_pub = self.client_key_path.with_suffix(".pub").read_text()
            for h in self.hosts:
                h._lock()
                h._prepare(client_pub)
            for h in self.hosts:
                h.start(timeout)
            self.write_known_hosts(self.known_hosts_path)
            self._write_ssh_config()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Kill every host (sshd + all processes of the host users). Removes the homes
        only when they are in the automatic /tmp/deploy-sshd-homes; base_dir and a
        caller-given home_root stay."""
        t0 = time.monotonic()
        errors = []
        for h in self.hosts:
            if h._proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    h._proc.send_signal(signal.SIGTERM)  # all reapers tear down in parallel
        for h in self.hosts:
            try:
                h.kill()
            except Exception as e:  # keep stopping the others
                errors.append(e)
            if self.auto_homes and h._lock_fd is not None and not h.running:
                _rmtree(h.home)  # only while we still hold this user's lock
            h._unlock()
        self.stop_seconds = time.monotonic() - t0
        if errors:
            raise SshHostsError(f"stop: {errors}")

    # -- client side files ----------------------------------------------------------

    def write_known_hosts(self, path: str | os.PathLike, hosts: Iterable[SshHost] | None = None) -> Path:
        path = Path(path)
        hosts = self.hosts if hosts is None else list(hosts)
        path.write_text("".join(h.host_key_line + "\n" for h in hosts))
        os.chmod(path, 0o644)
        return path

    def _write_ssh_config(self) -> None:
        blocks = []
        for h in self.hosts:
            blocks.append(
                f"Host {h.alias}\n"
                f"    HostName {h.address}\n"
                f"    Port {h.port}\n"
                f"    User {h.user}\n"
                f"    IdentityFile {self.client_key_path}\n"
                f"    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts_path}\n"
                f"    StrictHostKeyChecking yes\n"
                f"    BatchMode yes\n"
            )
        self.ssh_config_path.write_text("\n".join(blocks))
        os.chmod(self.ssh_config_path, 0o644)

    # -- paramiko convenience ------------------------------------------------------------

    def connect(self, host: SshHost, timeout: float = 10.0, known_hosts: str | os.PathLike | None = None):
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(known_hosts or self.known_hosts_path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                host.address, port=host.port, username=host.user,
                key_filename=str(self.client_key_path), look_for_keys=False, allow_agent=False,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            )
        except BaseException:
            client.close()
            raise
        return client


def start_free(base_dir: str | os.PathLike, prefixes: Iterable[str], **options) -> SshHosts:
    """Start SshHosts with the first user prefix no other SshHosts holds (concurrent test
    sessions each get their own users); SshHostsError when every prefix is in use."""
    base_dir, tried = Path(base_dir), []
    for prefix in prefixes:
        hosts = SshHosts(base_dir / prefix, user_prefix=prefix, **options)
        try:
            return hosts.start()
        except SshHostsError as exc:
            if "in use" not in str(exc):
                raise
            tried.append(prefix)
    raise SshHostsError(f"every user prefix is in use by other SshHosts: {tried}")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--reaper":
    sys.exit(_reaper_main(sys.argv[2:]))
