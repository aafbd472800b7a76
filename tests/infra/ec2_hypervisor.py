"""Making moto's EC2 instances real: a "hypervisor" that starts an OpenSSH sshd at each
running instance's private address and stops it when the instance ends, and a forwarder
that answers RunInstances with real EC2 capacity errors.

Hypervisor (a thread polling moto's DescribeInstances every 0.2 s, in the region(s) given):

* an instance appears running with a 127.x private address (the test VPC's subnet is in
  127.0.0.0/8, every address of which is local) -> an sshd of its own, under the reaper of
  tests/infra/sshd_hosts.py (a child subreaper that kills every descendant when the
  instance ends), listening on <private address>:22 with
  - the host key the instance's user data carries (cloud-config `ssh_keys`, read through
    DescribeInstanceAttribute userData, as cloud-init would install it),
  - the public key of the instance's key pair as the only authorized key
    (DescribeKeyPairs IncludePublicKey), for the login user `user` (the image's user),
  - the instance's credentials: what the instance metadata service would give it, i.e.
    temporary credentials of its instance profile's role (STS AssumeRole on moto), with
    AWS_ENDPOINT_URL and the region, in the sessions' environment (sshd SetEnv; the
    config file is root's, 0600). Nothing of the client's credentials reaches an instance.
* the instance is no longer pending/running -> its sshd and every process started through
  it are killed (the machine is gone).

All instances share one Unix user and its home (one machine plays every instance); each
instance's processes are told apart by their ancestry (its reaper), so ending one instance
ends exactly its processes.

CapacityForwarder: a loopback HTTP server in front of moto (AWS_ENDPOINT_URL_EC2 points at
it) that passes every request through, except RunInstances for an instance type listed in
`refuse`, which gets EC2's error response (e.g. InsufficientInstanceCapacity, HTTP 500).
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from infra import sshd_hosts

ROOT = Path("/run/deploy-ec2-instances")     # root's all the way up: sshd StrictModes accepts the
                                             # authorized keys there (not under /tmp, 1777)


class Instance:
    """One running instance's sshd."""

    def __init__(self, hypervisor: "Hypervisor", instance_id: str, address: str) -> None:
        self.hv, self.id, self.address = hypervisor, instance_id, address
        self.dir = hypervisor.dir / instance_id
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None

    def start(self, host_private: str, authorized: str, env: dict[str, str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        key = self.dir / "ssh_host_ed25519_key"
        key.write_text(host_private if host_private.endswith("\n") else host_private + "\n")
        os.chmod(key, 0o600)
        auth = self.dir / "authorized_keys"
        auth.write_text(authorized.strip() + "\n")
        os.chmod(auth, 0o644)
        setenv = {"TMPDIR": str(self.hv.home / "tmp"), **env}
        lines = [
            "Port 22", f"ListenAddress {self.address}", "AddressFamily inet", f"HostKey {key}",
            f"PidFile {self.dir / 'sshd.pid'}", f"AuthorizedKeysFile {auth}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no", "PermitRootLogin no", f"AllowUsers {self.hv.user}",
            "UsePAM no", "StrictModes yes", "PermitUserEnvironment no", "UseDNS no", "PrintMotd no",
            "PrintLastLog no", "X11Forwarding no", "AllowAgentForwarding no", "MaxStartups 200:30:400",
            "MaxSessions 100", "LoginGraceTime 30", "LogLevel VERBOSE",
            "SetEnv " + " ".join(f"{k}={sshd_hosts._sshd_quote(v)}" for k, v in setenv.items()),
        ]
        if self.hv.openssh >= (9, 8):
            lines.append("PerSourcePenalties no")
        config = self.dir / "sshd_config"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        log = open(self.dir / "sshd.log", "ab")
        # uid -1: the reaper kills this instance's descendants only, not the shared user's
        self.proc = subprocess.Popen(
            [sys.executable, sshd_hosts.__file__, "--reaper", str(os.getpid()), "-1", "--",
             sshd_hosts.SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True)
        log.close()
        self.started_at = time.time()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """Every live process of this instance (its reaper's descendants)."""
        if not self.running:
            return []
        children: dict[int, list[int]] = {}
        for pid, ppid, state, _ in sshd_hosts._proc_table():
            if state != "Z":
                children.setdefault(ppid, []).append(pid)
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                found.append(child)
                todo.append(child)
        return found


class Hypervisor:
    """Real sshds for moto's instances; see the module docstring."""

    def __init__(self, endpoint: str, regions: list[str], base: Path, user_prefixes=("deployec", "deployed")) -> None:
        import boto3
        self.endpoint, self.regions = endpoint, regions
        # the hypervisor's own account access (moto accepts any keys); never the client's
        self.session = boto3.session.Session(aws_access_key_id="hypervisor", aws_secret_access_key="hypervisor")
        self.openssh = sshd_hosts._openssh_version()
        self.dir = ROOT / uuid.uuid4().hex[:8]
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(ROOT, 0o711)
        os.chmod(self.dir, 0o711)
        self.login = None
        for prefix in user_prefixes:    # the login user, as sshd_hosts makes host users
            hosts = sshd_hosts.SshHosts(base / prefix, n=1, user_prefix=prefix)
            try:
                hosts[0]._lock()
            except sshd_hosts.SshHostsError:
                continue
            self.login = hosts[0]
            break
        if self.login is None:
            raise RuntimeError(f"every login user is in use: {user_prefixes}")
        self.login._ensure_user()
        if os.path.lexists(self.login.home):
            sshd_hosts._rmtree(self.login.home)
        for d in (self.login.home, self.login.home / "tmp"):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chown(d, self.login.uid, self.login.gid)
        self.user, self.home = self.login.user, self.login.home
        self.instances: dict[str, Instance] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True, name="ec2-hypervisor")

    def client(self, service: str, region: str) -> Any:
        return self.session.client(service, region_name=region, endpoint_url=self.endpoint)

    def start(self) -> "Hypervisor":
        os.makedirs(sshd_hosts.PRIVSEP_DIR, mode=0o755, exist_ok=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.poll()
            except Exception as exc:            # keep going: a test reads self.errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stopping.wait(0.2)

    def poll(self) -> None:
        seen: dict[str, tuple[str, dict]] = {}
        for region in self.regions:
            for reservation in self.client("ec2", region).describe_instances()["Reservations"]:
                for inst in reservation["Instances"]:
                    seen[inst["InstanceId"]] = (region, inst)
        with self.lock:
            for iid, instance in list(self.instances.items()):
                state = seen.get(iid, (None, {"State": {"Name": "terminated"}}))[1]["State"]["Name"]
                if state not in ("pending", "running"):
                    instance.stop()
                    del self.instances[iid]
            for iid, (region, inst) in seen.items():
                address = inst.get("PrivateIpAddress", "")
                if iid in self.instances or inst["State"]["Name"] != "running" or not address.startswith("127."):
                    continue
                if any(i.address == address for i in self.instances.values()):
                    continue            # its previous owner is still being stopped
                self._boot(region, inst)

    def _boot(self, region: str, inst: dict) -> None:
        ec2 = self.client("ec2", region)
        iid = inst["InstanceId"]
        raw = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData").get("UserData", {}).get("Value")
        data = base64.b64decode(raw).decode() if raw else ""
        keys = json.loads(data.split("\n", 1)[1]).get("ssh_keys", {}) if data.startswith("#cloud-config") else {}
        if "ed25519_private" not in keys:
            self.errors.append(f"{iid}: no host key in its user data")
            return
        authorized = ""
        if inst.get("KeyName"):
            pairs = ec2.describe_key_pairs(KeyNames=[inst["KeyName"]], IncludePublicKey=True)["KeyPairs"]
            authorized = pairs[0].get("PublicKey", "")
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": region, "AWS_REGION": region}
        profile = (inst.get("IamInstanceProfile") or {}).get("Arn", "")
        if profile:
            iam, sts = self.client("iam", region), self.client("sts", region)
            roles = iam.get_instance_profile(InstanceProfileName=profile.rsplit("/", 1)[1])["InstanceProfile"]["Roles"]
            if roles:
                creds = sts.assume_role(RoleArn=roles[0]["Arn"], RoleSessionName=iid)["Credentials"]
                env.update(AWS_ACCESS_KEY_ID=creds["AccessKeyId"], AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"],
                           AWS_SESSION_TOKEN=creds["SessionToken"])
        instance = Instance(self, iid, inst["PrivateIpAddress"])
        instance.start(keys["ed25519_private"], authorized, env)
        self.instances[iid] = instance

    def instance(self, iid: str) -> Instance | None:
        with self.lock:
            return self.instances.get(iid)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        with self.lock:
            for instance in self.instances.values():
                instance.stop()
            self.instances.clear()
        with contextlib.suppress(Exception):
            sshd_hosts.kill_user_processes(self.login.uid)
        self.login._unlock()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------ capacity errors

ERROR_STATUS = {"InsufficientInstanceCapacity": 500, "MaxSpotInstanceCountExceeded": 400,
                "VcpuLimitExceeded": 400}
MESSAGES = {
    "InsufficientInstanceCapacity": "We currently do not have sufficient {type} capacity in the Availability "
                                    "Zone you requested ({zone}). Our system will be working on provisioning "
                                    "additional capacity.",
    "MaxSpotInstanceCountExceeded": "Max spot instance count exceeded",
    "VcpuLimitExceeded": "You have requested more vCPU capacity than your current vCPU limit of 0 allows for "
                         "the instance bucket that the specified instance type belongs to. Please visit "
                         "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.",
}


class CapacityForwarder:
    """Loopback HTTP forwarder to moto refusing RunInstances for chosen types (see module doc)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        # "type", "type/spot", "type/on-demand" or "*" (every type) -> the error code to answer
        self.refuse: dict[str, str] = {}
        self.refused: list[tuple[str, str]] = []
        forwarder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = urllib.parse.parse_qs(body.decode(errors="replace")) if body else {}
                if form.get("Action") == ["RunInstances"]:
                    kind = form.get("InstanceType", [""])[0]
                    market = form.get("InstanceMarketOptions.MarketType", ["on-demand"])[0]
                    code = (forwarder.refuse.get(f"{kind}/{market}") or forwarder.refuse.get(kind)
                            or forwarder.refuse.get("*"))
                    if code:
                        forwarder.refused.append((kind, code))
                        return self._error(code, kind)
                conn = http.client.HTTPConnection(forwarder.upstream.hostname, forwarder.upstream.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            def _error(self, code: str, kind: str) -> None:
                message = MESSAGES[code].format(type=kind, zone="us-east-2a")
                data = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
                        f"<Message>{message}</Message></Error></Errors>"
                        f"<RequestID>{uuid.uuid4()}</RequestID></Response>").encode()
                self.send_response(ERROR_STATUS[code])
                self.send_header("Content-Type", "text/xml;charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = do_PUT = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="ec2-forwarder")

    def start(self) -> "CapacityForwarder":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
