"""Reaching a host over SSH (paramiko): host specs, ~/.ssh/config, host keys, clear errors.

A host is written `[user@]name[:port]`; `name` may be an alias of the ssh config, whose
HostName, User, Port, IdentityFile, IdentitiesOnly, UserKnownHostsFile,
GlobalKnownHostsFile, ProxyCommand and ProxyJump are honoured (what the spec says
explicitly wins). Keys come from the key file(s) given,
the config, ssh-agent and ~/.ssh/id_*; host keys are checked against known_hosts and an
unknown host is refused unless host_key_policy='accept-new' (which records its key).
"""
from __future__ import annotations

import dataclasses
import errno
import getpass
import os
import socket
import threading
from typing import Any

from ...errors import DeployError

POLICIES = ("reject", "accept-new")
DEFAULT_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
_known_hosts_lock = threading.Lock()


class HostError(DeployError):
    """A host cannot be used: the message names it and says what to do."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"host {host}: {message}")
        self.host, self.reason = host, message

    @classmethod
    def several(cls, errors: list["HostError"]) -> "HostError":
        """One error for several hosts: the first host's, its message listing them all."""
        if len(errors) == 1:
            return errors[0]
        combined = cls(errors[0].host, errors[0].reason)
        combined.args = ("\n".join(str(e) for e in errors),)
        return combined


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """Where and as whom to log in, resolved from what the user wrote and the ssh config."""

    given: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    known_hosts: tuple[str, ...]
    identities_only: bool = False
    proxy_command: str | None = None

    @property
    def address(self) -> str:
        """How known_hosts names this host: `name`, or `[name]:port` off port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def target(self) -> tuple[str, str, int]:
        """What makes two specs the same machine account."""
        return self.user, self.hostname.lower(), self.port

    def describe(self) -> str:
        resolved = f"{self.user}@{self.hostname}:{self.port}"
        return self.given if self.given == resolved else f"{self.given!r} ({resolved})"


def split_host(text: str) -> tuple[str | None, str, int | None]:
    """'alice@gpu1:2222' -> ('alice', 'gpu1', 2222); '[::1]:22' and bare names work too."""
    if not isinstance(text, str) or not text.strip() or any(c.isspace() for c in text.strip()):
        raise ValueError(f"bad host {text!r}: write [user@]host[:port]")
    user, _, rest = text.strip().rpartition("@")
    port = None
    if rest.startswith("["):
        name, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = tail[1:]
    elif rest.count(":") == 1:
        name, port = rest.split(":")
    else:
        name = rest
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port in host {text!r}")
        port = int(port)
    if not name:
        raise ValueError(f"bad host {text!r}: no host name")
    return user or None, name, port


def _files(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    items = value.split() if isinstance(value, str) else list(value)
    return tuple(os.path.expanduser(str(v)) for v in items)


def resolve(text: str, ssh_config: str | None = DEFAULT_CONFIG, key_filename: Any = None,
            known_hosts: str | None = None) -> HostSpec:
    """A HostSpec for `text`, filled in from the ssh config file when it has the alias."""
    import paramiko
    user, name, port = split_host(text)
    options: dict[str, Any] = {}
    path = os.path.expanduser(ssh_config) if ssh_config else None
    if path and os.path.exists(path):
        try:
            options = paramiko.SSHConfig.from_path(path).lookup(name)
        except Exception as exc:
            raise ValueError(f"cannot read ssh config {path}: {exc}") from None
    keys = _files(key_filename) or _files(options.get("identityfile"))
    if known_hosts:
        known = (os.path.expanduser(known_hosts),)
    else:       # the user's files (new keys are recorded in the first), then the system's
        known = (_files(options.get("userknownhostsfile")) or (os.path.expanduser(DEFAULT_KNOWN_HOSTS),)) \
            + (_files(options.get("globalknownhostsfile")) or (GLOBAL_KNOWN_HOSTS,))
    hostname = options.get("hostname", name)
    port = port or int(options.get("port", 22))
    proxy = options.get("proxycommand")
    if not proxy and options.get("proxyjump", "none").lower() != "none":
        proxy = f"ssh -W {hostname}:{port} {options['proxyjump']}"
    return HostSpec(
        given=text.strip(), hostname=hostname, port=port,
        user=user or options.get("user") or getpass.getuser(),
        key_files=keys, known_hosts=known,
        identities_only=str(options.get("identitiesonly", "no")).lower() == "yes",
        proxy_command=proxy)


# ---------------------------------------------------------------------------- host keys

class UnknownHostKey(Exception):
    def __init__(self, key: Any) -> None:
        super().__init__("unknown host key")
        self.key = key


def _fingerprint(key: Any) -> str:
    import base64
    import hashlib
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def _policy(name: str, record_in: str) -> Any:
    """paramiko's missing-host-key policy: refuse (default), or record the key ('accept-new')."""
    import paramiko

    class Reject(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise UnknownHostKey(key)

    class AcceptNew(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            client.get_host_keys().add(hostname, key.get_name(), key)
            with _known_hosts_lock:
                os.makedirs(os.path.dirname(record_in) or ".", mode=0o700, exist_ok=True)
                fd = os.open(record_in, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a") as f:
                    f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    return AcceptNew() if name == "accept-new" else Reject()


# ---------------------------------------------------------------------------- connecting

def connect(spec: HostSpec, host_key_policy: str = "reject", timeout: float = 10.0) -> Any:
    """A connected, authenticated paramiko SSHClient, or HostError saying what went wrong."""
    import paramiko
    client = paramiko.SSHClient()
    for path in spec.known_hosts:
        if os.path.exists(path):
            try:
                client.get_host_keys().load(path)
            except Exception as exc:
                raise HostError(spec.describe(), f"cannot read known_hosts file {path}: {exc}") from None
    client.set_missing_host_key_policy(_policy(host_key_policy, spec.known_hosts[0]))
    sock = paramiko.ProxyCommand(spec.proxy_command) if spec.proxy_command else None
    try:
        client.connect(spec.hostname, port=spec.port, username=spec.user,
                       key_filename=list(spec.key_files) or None, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, sock=sock,
                       allow_agent=not (spec.identities_only and spec.key_files),
                       look_for_keys=not spec.key_files)
    except BaseException as exc:
        client.close()
        if isinstance(exc, Exception):
            raise HostError(spec.describe(), _explain(exc, spec, timeout)) from None
        raise
    client.get_transport().set_keepalive(5)
    return client


def _explain(exc: Exception, spec: HostSpec, timeout: float) -> str:
    import paramiko
    where = f"{spec.hostname}:{spec.port}"
    if isinstance(exc, UnknownHostKey):
        return (f"unknown host key ({_fingerprint(exc.key)}): {spec.address} is not in "
                f"{', '.join(spec.known_hosts)}. Check the fingerprint, then either add it "
                f"(ssh-keyscan -p {spec.port} {spec.hostname} >> {spec.known_hosts[0]}) or "
                "pass host_key_policy='accept-new' (CLI: --accept-new-host-keys) to record it "
                "on first connection")
    if isinstance(exc, paramiko.BadHostKeyException):
        return (f"host key MISMATCH: {spec.address} offered {_fingerprint(exc.key)} but known_hosts "
                "has another key. This may be a man-in-the-middle attack, or the host was "
                f"reinstalled; verify and fix {', '.join(spec.known_hosts)}")
    if isinstance(exc, paramiko.AuthenticationException):
        tried = ", ".join(spec.key_files) or "ssh-agent and ~/.ssh/id_*"
        return (f"refused the login of user {spec.user!r} with key(s) {tried}: authorize the "
                "public key in the host's ~/.ssh/authorized_keys, or give key_filename= "
                "(an encrypted key must be loaded into ssh-agent)")
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name {spec.hostname!r} ({exc.strerror})"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        errors = {getattr(e, "errno", None) for e in exc.errors.values()}
        if errors - {errno.ECONNREFUSED}:
            return f"cannot reach {where}: {exc}"
        exc = ConnectionRefusedError()
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {where}: no SSH server there (wrong port, or sshd down?)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer from {where} within {timeout:g} s: host down or unreachable"
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
        return f"{where} does not answer as an SSH server (no SSH banner within {timeout:g} s)"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return f"cannot log in at {where}: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- commands

TIMED_OUT = -1          # run()'s status when the command outlived its timeout
NO_STATUS = -2          # ... when it ended without one: killed by a signal, or the connection dropped


def ended(status: int) -> str:
    """How a command that run() ran ended, for error messages."""
    if status == TIMED_OUT:
        return "timed out"
    if status == NO_STATUS:
        return "ended without an exit status: killed, or the connection dropped"
    return f"exit {status}"


def run(client: Any, command: str, stdin: bytes = b"", timeout: float | None = 300.0) -> tuple[int, str, str]:
    """Run a shell command on the host, feeding it `stdin` (how files travel: no SFTP);
    (exit status, stdout, stderr), the status TIMED_OUT or NO_STATUS when there is none."""
    import select
    import time
    deadline = None if timeout is None else time.monotonic() + timeout
    chan = client.get_transport().open_session(timeout=30)
    out, err = bytearray(), bytearray()

    def drain() -> None:
        while chan.recv_ready():
            out.extend(chan.recv(1 << 16))
        while chan.recv_stderr_ready():
            err.extend(chan.recv_stderr(1 << 16))

    def answer(status: int) -> tuple[int, str, str]:
        return status, out.decode(errors="replace"), err.decode(errors="replace")
    try:
        chan.exec_command(command)
        chan.settimeout(0.5)
        sent = 0
        # send while reading, so that a command that writes as it reads cannot stall us, and
        # stop when it exits early: its exit status and stderr say why
        while sent < len(stdin) and not chan.exit_status_ready() and not chan.closed:
            drain()
            if deadline is not None and time.monotonic() > deadline:
                return answer(TIMED_OUT)
            try:
                sent += chan.send(stdin[sent:sent + (1 << 16)])
            except socket.timeout:
                continue
            except OSError:
                break
        try:
            chan.shutdown_write()
        except OSError:
            pass
        while True:
            drain()
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                if chan.eof_received or chan.closed:
                    break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return answer(TIMED_OUT)
            select.select([chan], [], [], 0.5 if left is None else min(left, 0.5))
        status = chan.recv_exit_status()
        return answer(NO_STATUS if status == -1 else status)
    finally:
        chan.close()
