"""Ec2Cluster: an SSH cluster whose hosts are EC2 instances it launches, reuses and ends.

    config = deploy.Ec2Config(region='us-west-2', instance_type='m5.xlarge')
    ec2 = deploy.ec2_cluster.create('add_ec2', s3_path='s3://bucket/deploy', ec2_config=config, num_hosts=3)
    job = deploy.map_job.create(add, params, environment=ec2)
    ec2 = deploy.ec2_cluster.load('s3://bucket/deploy', name='add_ec2')     # from elsewhere
    ec2.stop()              # terminates its instances, deletes what it created

Where machines come from is `Ec2Hosts` (a HostSource); how they are reached is SshCluster's
business (paramiko, the shipped runtime, one agent per host). Jobs live under
`<s3_path>/jobs/` (the S3 store's exclusive creates), the cluster's state (what it created,
its instances with their prices and pinned host keys) at `<s3_path>/clusters/<name>/state.json`,
so the cluster and its jobs outlive the client and reopen from another machine. On this
machine the deploy home keeps the SSH login key (0600), known_hosts and an ssh config.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from paramiko import SSHException

from ...store import Storage
from ..base import positive_int
from ..hosts import HostSource
from ..ssh.cluster import SshCluster, _Host
from ..ssh.connect import HostError, run
from ..ssh.runtime import DEFAULT_ROOT
from .config import Ec2Config, Ec2Error, client
from .instances import CAPACITY_ERRORS, Instances, existing_line, launched_lines, wait_for_ssh
from .provision import Provisioner, delete as delete_resources, key_dir

DEFAULT_IDLE_SHUTDOWN = 1800.0           # seconds, as GraphLab's
STATE = "state.json"
REACQUIRE_SECONDS = 30.0                 # a job within this of the last acquisition, all hosts connected: no new look
_keys: dict[str, Ec2Config] = {}         # cluster id -> the config holding keys, this process only


def say(line: str) -> None:
    """How the cluster tells what it does and costs (stdout, as meadowrun)."""
    print(line, flush=True)


def _check_s3_path(s3_path: Any) -> str:
    if not isinstance(s3_path, str) or not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?", s3_path):
        raise ValueError(f"bad s3_path {s3_path!r}: write s3://bucket/prefix (an S3 bucket this "
                         "account can write)")
    return s3_path.rstrip("/")


def cluster_id(name: str, s3_path: str) -> str:
    """The name of what the cluster creates in AWS: its name and a digest of its s3_path
    (two clusters of one name in different places do not collide)."""
    return f"deploy-{name}-{hashlib.sha256(s3_path.encode()).hexdigest()[:8]}"


class Ec2Hosts(HostSource):
    """The cluster's instances as SSH destinations (their addresses), acquired on demand."""

    def __init__(self, cluster: "Ec2Cluster") -> None:
        self.cluster = cluster

    def addresses(self) -> list[str]:
        """After an acquisition in this process, its instances; else the running ones
        (nothing is launched just to look at or stop a job)."""
        current = self.cluster._current
        return list(current) if current is not None else self.cluster._known()

    def release(self) -> None:
        self.cluster.release()


class Ec2Cluster(SshCluster):
    """Workers on EC2 instances over SSH; see the module docstring."""

    kind = "ec2"

    def __init__(self, name: str, s3_path: str, ec2_config: Ec2Config | dict | None = None,
                 num_hosts: int | None = None, num_concurrent_tasks: int | None = None,
                 idle_shutdown_timeout: float = DEFAULT_IDLE_SHUTDOWN,
                 additional_packages: list[str] | None = None, pip_options: list[str] | None = None,
                 python: str = "python3", key_filename: str | None = None,
                 timeout: float = 30.0, boot_timeout: float = 600.0) -> None:
        s3_path = _check_s3_path(s3_path)
        if ec2_config is None:
            ec2_config = Ec2Config()
        elif isinstance(ec2_config, dict):
            ec2_config = Ec2Config.from_settings(ec2_config)
        elif not isinstance(ec2_config, Ec2Config):
            raise TypeError(f"ec2_config must be a deploy.Ec2Config, got {type(ec2_config).__name__}")
        positive_int(num_hosts, "num_hosts", optional=True)
        positive_int(num_concurrent_tasks, "num_concurrent_tasks", optional=True)
        if num_hosts is not None and num_concurrent_tasks is not None:
            raise ValueError("give num_hosts (instances) or num_concurrent_tasks (tasks at once), not both")
        if isinstance(idle_shutdown_timeout, bool) or not isinstance(idle_shutdown_timeout, (int, float)):
            raise ValueError(f"idle_shutdown_timeout is seconds (negative: never), got {idle_shutdown_timeout!r}")
        self.s3_path = s3_path
        self.id = cluster_id(name, s3_path)
        self.ec2_config = ec2_config.with_keys_of(_keys.get(self.id))
        if ec2_config.has_keys:
            _keys[self.id] = ec2_config
        self.num_hosts = num_hosts if num_hosts or num_concurrent_tasks else 1
        self.num_concurrent_tasks = num_concurrent_tasks
        self.idle_shutdown_timeout = float(idle_shutdown_timeout)
        self.boot_timeout = float(boot_timeout)
        self.dir = key_dir(self.id)
        self.given_key = key_filename
        self._lock = threading.RLock()
        self._state: dict[str, Any] | None = None
        self._current: list[str] | None = None       # addresses of the last acquisition
        self._acquired_at = 0.0
        self._aws: Any = None
        super().__init__(name, Ec2Hosts(self), key_filename=None, additional_packages=additional_packages,
                         store=f"{s3_path}/jobs", host_key_policy="reject", pip_options=pip_options,
                         ssh_config=os.path.join(self.dir, "ssh_config"), python=python,
                         remote_dir=DEFAULT_ROOT, timeout=timeout)

    # -- data ---------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What recreates the cluster (never the AWS keys)."""
        return {"s3_path": self.s3_path, "ec2_config": self.ec2_config.settings(),
                "num_hosts": self.num_hosts, "num_concurrent_tasks": self.num_concurrent_tasks,
                "idle_shutdown_timeout": self.idle_shutdown_timeout,
                "additional_packages": list(self.additional_packages),
                "pip_options": list(self.pip_options), "python": self.python,
                "key_filename": self.given_key, "timeout": self.timeout,
                "boot_timeout": self.boot_timeout}

    @property
    def key_path(self) -> str:
        """The SSH login key of the cluster on this machine."""
        return self.given_key or os.path.join(self.dir, "id_ed25519")

    # -- AWS ----------------------------------------------------------------------------

    def session(self) -> Any:
        if self._aws is None:
            self._aws = self.ec2_config.session()
        return self._aws

    def _s3(self) -> Any:
        """S3 through the cluster's credentials, one attempt per call (RetryingStorage retries)."""
        return client(self.session(), "s3", attempts=1)

    def _state_store(self) -> Storage:
        from ...store.s3 import S3Storage
        return S3Storage(f"{self.s3_path}/clusters/{self.name}", client=self._s3())

    def state(self, reload: bool = False) -> dict[str, Any]:
        """The cluster's state in S3 (created resources, instances): {} when there is none."""
        with self._lock:
            if self._state is None or reload:
                try:
                    self._state = json.loads(self._state_store().get(STATE))
                except FileNotFoundError:
                    self._state = {}
                self._state.setdefault("created", {})
                self._state.setdefault("instances", {})
            return self._state

    def _save_state(self) -> None:
        with self._lock:
            state = self.state()
            state.update(name=self.name, cluster_id=self.id, s3_path=self.s3_path,
                         settings=self.settings(), updated=time.time())
            self._state_store().put(STATE, json.dumps(state, indent=1).encode())

    def job_store(self, job_id: str) -> Storage:
        """The job's directory under s3_path/jobs, through this cluster's credentials."""
        from ...store.retrying import RetryingStorage
        from ...store.s3 import S3Storage
        return RetryingStorage(S3Storage(f"{self.store}/{job_id}", client=self._s3()))

    def check(self) -> None:
        """Every input error found before anything is created: region, credentials,
        s3_path's bucket, instance type, a fitting offer (Ec2Error or ValueError)."""
        session = self.session()
        bucket = self.s3_path[len("s3://"):].partition("/")[0]
        try:
            self._s3().head_bucket(Bucket=bucket)
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            why = {"404": "does not exist", "NoSuchBucket": "does not exist",
                   "403": "is not accessible with these credentials"}.get(code, f"cannot be reached ({exc})")
            raise Ec2Error(f"s3_path {self.s3_path}: bucket {bucket!r} {why}") from None
        if self.ec2_config.instance_type:
            self._type_info(session)
        self._ranked(set())

    def _type_info(self, session: Any) -> dict[str, Any]:
        name = self.ec2_config.instance_type
        try:
            return client(session, "ec2").describe_instance_types(InstanceTypes=[name])["InstanceTypes"][0]
        except Exception as exc:
            if "InvalidInstanceType" in str(exc):
                raise Ec2Error(f"unknown instance type {name!r} in {self.ec2_config.region}") from None
            raise

    def _offers(self, instance_types: list[str] | None = None) -> list[Any]:
        from .pricing import offers
        return offers(self.session(), self.ec2_config.region, price_file=self.ec2_config.price_file,
                      cache_dir=Path(os.path.dirname(self.dir)) / "prices", say=say,
                      instance_types=instance_types,
                      **({"spot_advisor_url": os.environ["DEPLOY_EC2_SPOT_ADVISOR_URL"]}
                         if os.environ.get("DEPLOY_EC2_SPOT_ADVISOR_URL") else {}))

    def _ranked(self, excluded: set[tuple[str, str]]) -> list[Any]:
        """The allocations to launch, best first (NoFit -> Ec2Error)."""
        from .fit import Allocation, NoFit, cheapest, tasks_per_instance
        from .pricing import ON_DEMAND, Offer, PricesUnavailable
        config = self.ec2_config
        cpu, memory = config.per_task()
        if config.instance_type is None:
            try:
                return cheapest(self._offers(), cpu_per_task=cpu, memory_gb_per_task=memory,
                                interruption_threshold=config.interruption_probability_threshold,
                                exclude=excluded)
            except NoFit as exc:
                raise Ec2Error(str(exc)) from None
        # a given type runs on-demand (as GraphLab's); its price when one is known
        name = config.instance_type
        try:
            found = [o for o in self._offers([name]) if o.market == ON_DEMAND]
        except PricesUnavailable as exc:
            say(f"EC2 prices: {exc}; costs are shown as unknown")
            found = []
        if not found:
            info = self._type_info(self.session())
            found = [Offer(name, int(info["VCpuInfo"]["DefaultVCpus"]),
                           info["MemoryInfo"]["SizeInMiB"] / 1024, ON_DEMAND, float("nan"), 0.0)]
        offer = found[0]
        if config.cpu_per_task is None and config.memory_gb_per_task is None:
            tasks = offer.vcpu
        else:
            tasks = tasks_per_instance(offer, config.cpu_per_task or 0.001, config.memory_gb_per_task or 0)
            if tasks < 1:
                raise Ec2Error(f"{name} ({offer.vcpu} CPU/{offer.memory_gb:.1f} GB) does not fit one task "
                               f"of {cpu:g} CPU / {memory:g} GB")
        if (name, ON_DEMAND) in excluded:
            raise Ec2Error(f"{name} cannot be launched (see above)")
        return [Allocation(offer, tasks)]

    # -- instances ----------------------------------------------------------------------

    def acquire(self) -> list[str]:
        """The addresses of the cluster's instances, launching what is missing (saying what
        and at what price) and waiting until each answers SSH."""
        with self._lock:
            launched: list[str] = []
            try:
                self._current = self._acquire(launched)
            except BaseException:
                if launched:        # nothing half-made stays: the new instances end
                    say(f"Terminating the {len(launched)} instance(s) launched for this request: "
                        + ", ".join(launched))
                    self._instances().terminate(launched)
                    for i in launched:
                        self.state()["instances"].pop(i, None)
                    self._save_state()
                raise
            return list(self._current)

    def _instances(self) -> Instances:
        return Instances(self.session(), self.ec2_config, self.id, say)

    def _live_records(self, instances: Instances, wait: bool) -> list[dict[str, Any]]:
        """The records of the cluster's live instances, oldest first (addresses refreshed);
        live instances without a record (no pinned host key) are terminated."""
        from .instances import address_of
        records = self.state(reload=True)["instances"]
        live = {i["InstanceId"]: i for i in instances.live()}
        strangers = [i for i in live if i not in records]
        if strangers:
            say(f"Terminating {len(strangers)} instance(s) of this cluster with no recorded host key: "
                + ", ".join(strangers))
            instances.terminate(strangers)
        for gone in [i for i in records if i not in live]:
            records.pop(gone)
        if wait and records:
            running = instances.settled(list(records), self.boot_timeout)
            for ended in [i for i in records if i not in running]:
                records.pop(ended)
            live.update(running)
        for i, r in records.items():
            r["address"] = address_of(live[i]) or r.get("address")
        return sorted((r for r in records.values() if r.get("address")), key=lambda r: r["launched"])

    def _known(self) -> list[str]:
        """The addresses of the instances running now, launching nothing (for a process
        that only looks at or stops a job)."""
        with self._lock:
            hosts = self._live_records(self._instances(), wait=False)
            if self.num_concurrent_tasks is None:
                hosts = hosts[:self.num_hosts]
            try:
                self._write_ssh_files(hosts)
            except Ec2Error:
                pass        # no key here: the hosts are unreachable from this machine, said when used
            return [r["address"] for r in hosts]

    def _acquire(self, launched: list[str]) -> list[str]:
        """_acquire_once, again when an instance ends while it waits (idle or spot end)."""
        from .instances import InstanceGone
        for _ in range(5):
            try:
                return self._acquire_once(launched)
            except InstanceGone as gone:
                say(f"The instance at {gone.args[0]} ended while starting to use it; acquiring again")
        raise Ec2Error("instances keep ending as soon as they are acquired (idle_shutdown_timeout "
                       f"{self.idle_shutdown_timeout:g} s too short?)")

    def _acquire_once(self, launched: list[str]) -> list[str]:
        instances = self._instances()
        existing = self._live_records(instances, wait=True)
        new: list[dict[str, Any]] = []
        if self.num_concurrent_tasks:
            total, used, covered = self.num_concurrent_tasks, [], 0
            for r in existing:
                if covered < total:
                    used.append(r)
                    covered += r["tasks"]
            if covered < total:
                new = self._launch(total - covered, None, launched)
        else:
            used = existing[:self.num_hosts]
            covered = sum(r["tasks"] for r in used)
            if len(used) < self.num_hosts:
                new = self._launch(None, self.num_hosts - len(used), launched)
            total = covered + sum(r["tasks"] for r in new)
        if used:
            say(existing_line(used, min(covered, total), total))
        if new:
            say("\n".join(launched_lines(new, total - min(covered, total), remaining=bool(used))))
            from .instances import address_of
            described = instances.wait_running([r["id"] for r in new], self.boot_timeout)
            for r in new:
                r["address"] = address_of(described[r["id"]])
            self._save_state()
        hosts = used + new
        self._write_ssh_files(hosts)
        for r in hosts:
            wait_for_ssh(r["address"], self.boot_timeout, live=lambda i=r["id"]: instances.running(i))
        return [r["address"] for r in hosts]

    def _launch(self, tasks: int | None, hosts: int | None, launched: list[str]) -> list[dict[str, Any]]:
        """Launch instances for `tasks` more workers (or `hosts` more instances) with the
        best allocation, moving on to the next one on a capacity or quota error."""
        from .fit import plan
        from .hostkeys import client_key
        state = self.state()
        subnet, group, key_name, profile = self._provision(client_key(self.key_path))
        excluded: set[tuple[str, str]] = set()
        new: list[dict[str, Any]] = []
        errors: list[str] = []
        instances = self._instances()

        def record(r: dict[str, Any]) -> None:
            state["instances"][r["id"]] = r
            launched.append(r["id"])
            self._save_state()
        while (tasks is not None and tasks > 0) or (hosts is not None and hosts > 0):
            try:
                ranked = self._ranked(excluded)
            except Ec2Error as exc:
                if errors:
                    raise Ec2Error("no instance could be launched: " + "; ".join(errors)) from None
                raise exc from None
            steps = plan(ranked, tasks) if tasks is not None else [(ranked[0], hosts)]
            failed = False
            for allocation, count in steps:
                for _ in range(count):
                    try:
                        r = instances.launch_one(allocation, subnet, group, key_name, profile, record)
                    except Exception as exc:
                        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
                        if code not in CAPACITY_ERRORS:
                            raise
                        message = exc.response["Error"].get("Message", "")
                        offer = allocation.offer
                        market = offer.market.replace("_", "-")
                        errors.append(f"{offer.instance_type} {market}: {code} ({message})")
                        excluded.add((offer.instance_type, offer.market))
                        then = ("no other option: instance_type is given" if self.ec2_config.instance_type
                                else "trying the next cheapest option")
                        say(f"Could not launch {offer.instance_type} ({market}): {code}: {message}; {then}")
                        failed = True
                        break
                    new.append(r)
                    if tasks is not None:
                        tasks -= r["tasks"]
                    else:
                        hosts -= 1
                if failed:
                    break
        return new

    def _provision(self, public_key: str) -> tuple[str, str, str, str]:
        state = self.state()
        p = Provisioner(self.session(), self.ec2_config, self.id, self.s3_path, state["created"],
                        self._save_state, say)
        subnet = p.subnet()
        return (subnet["SubnetId"], p.security_group(subnet), p.key_pair(public_key), p.instance_profile())

    def _write_ssh_files(self, hosts: list[dict[str, Any]]) -> None:
        """known_hosts pinning each instance's host key (from the state), and an ssh config
        logging in as ssh_user with the cluster's key and only those host keys."""
        from .hostkeys import write_known_hosts
        from .instances import default_user
        write_known_hosts(os.path.join(self.dir, "known_hosts"),
                          {r["address"]: r["host_key"] for r in hosts})
        if not os.path.exists(self.key_path):
            raise Ec2Error(f"the cluster's SSH key {self.key_path} is not on this machine: copy it "
                           "from the machine that created the cluster (mode 0600), or give key_filename=")
        text = (f"Host *\n    User {default_user(self.ec2_config)}\n    IdentityFile {self.key_path}\n"
                f"    IdentitiesOnly yes\n    UserKnownHostsFile {os.path.join(self.dir, 'known_hosts')}\n"
                f"    GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n")
        tmp = os.path.join(self.dir, f"ssh_config.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(self.dir, "ssh_config"))

    def _record_for(self, address: str) -> dict[str, Any] | None:
        return next((r for r in self.state()["instances"].values() if r.get("address") == address), None)

    # -- hosts (SshCluster's, with instances' sizes and idle agents) ---------------------------

    def _per_host(self, host: _Host) -> int:
        record = self._record_for(host.label)
        return record["tasks"] if record else super()._per_host(host)

    def capacity(self) -> list[Any]:
        """Each instance as its type declares it (vCPUs, memory; GPUs as probed), running
        the tasks its allocation planned: what per-task resources are fitted against."""
        from ..base import HostCapacity
        self.prepare()
        found = []
        for h in self._hosts:
            r = self._record_for(h.label) or {}
            found.append(HostCapacity(h.label, float(r.get("vcpu") or h.runtime.cpus),
                                      float(r.get("memory_gb") or h.runtime.memory_gb),
                                      getattr(h.runtime, "gpus", 0), workers=self._per_host(h)))
        return found

    def _refresh_hosts(self) -> None:
        """Acquire again (instances may have ended, or idled away) unless this process
        acquired them under REACQUIRE_SECONDS ago and is connected to each; reconnect when
        the instances changed."""
        live = self._live
        if (live is not None and self._current is not None
                and time.monotonic() - self._acquired_at < REACQUIRE_SECONDS
                and all(h.client is not None and h.client.get_transport() is not None
                        and h.client.get_transport().is_active() for h in live.hosts)
                and self._still_running()):
            return
        addresses = self.acquire()
        self._acquired_at = time.monotonic()
        if live is not None and [h.label for h in live.hosts] != addresses:
            for host in live.hosts:
                host.close()
            self._live = None

    def _still_running(self) -> bool:
        """Whether every instance this process acquired is still pending or running (one
        DescribeInstances): an open connection does not prove it, its instance may be ending."""
        ids = [(self._record_for(address) or {}).get("id") for address in self._current or ()]
        if not ids or None in ids:
            return False
        return set(ids) <= {i["InstanceId"] for i in self._instances().live()}

    def num_workers(self) -> int:
        """Workers a job gets: each instance's tasks at a time (up to num_concurrent_tasks);
        acquires the instances first (so a job after an idle shutdown launches new ones)."""
        with self._lock:
            self._refresh_hosts()
        workers = super().num_workers()         # connects in threads: not under the lock
        return min(workers, self.num_concurrent_tasks) if self.num_concurrent_tasks else workers

    def _prepare_host(self, host: _Host) -> Any:
        runtime = super()._prepare_host(host)
        if self.idle_shutdown_timeout >= 0 and not getattr(host, "idle_started", False):
            self._start_idle(host, runtime)
            host.idle_started = True
        return runtime

    def _start_idle(self, host: _Host, runtime: Any) -> None:
        record = self._record_for(host.label)
        if record is None:
            return
        label = re.sub(r"[^A-Za-z0-9_.@-]", "_", host.label)
        env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2")
                       if os.environ.get(k))
        command = (f"cd {shlex.quote(runtime.root)} && umask 077 && exec env "
                   f"PYTHONPATH={shlex.quote(runtime.pythonpath)} {env} {shlex.quote(runtime.python)} "
                   f"-m deploy.environments.ec2.idle start --instance-id {record['id']} "
                   f"--region {self.ec2_config.region} --timeout {self.idle_shutdown_timeout:g} "
                   f"--jobs {shlex.quote(runtime.root + '/jobs')} --label {shlex.quote(label)}")
        with host.lock:
            rc, out, err = run(host.client, command, timeout=60)
        if rc != 0:
            raise HostError(host.spec.describe(), f"cannot start the idle shutdown agent: {err.strip()[-300:]}")

    def _launch_once(self, launch: Any) -> dict[str, Any]:
        if self.idle_shutdown_timeout >= 0:     # a job is coming: the idle clocks start again
            self.prepare()
            self._each(lambda h: self._start_idle(h, h.runtime))
        return super().launch(launch)

    def launch(self, launch: Any) -> dict[str, Any]:
        try:
            handle = self._launch_once(launch)
        except (HostError, EOFError, OSError, SSHException):
            # an instance ended since the last look (an idle shutdown, a spot interruption):
            # its connection breaks; look at the instances again, once
            with self._lock:
                self._acquired_at = 0.0
                self._refresh_hosts()
            handle = self._launch_once(launch)
        # what the job's estimated cost is computed from (see Job.get_estimated_cost)
        handle["hourly_prices"] = {h["host"]: (self._record_for(h["host"]) or {}).get("price_per_hour")
                                   for h in handle["hosts"]}
        handle["instances"] = {h["host"]: (self._record_for(h["host"]) or {}).get("id") for h in handle["hosts"]}
        return handle

    def alive(self, handle: dict[str, Any]) -> bool | None:
        """As SshCluster's; and False when every instance the job ran on has ended (no
        host answers, so the job would otherwise wait for them forever)."""
        answer = super().alive(handle)
        ids = [i for i in (handle.get("instances") or {}).values() if i]
        if answer is None and ids:
            try:
                instances = self._instances()
                if not any(instances.running(i) for i in ids):
                    return False
            except Exception:
                return None
        return answer

    def describe_failure(self, handle: dict[str, Any]) -> str | None:
        ids = [i for i in (handle.get("instances") or {}).values() if i]
        try:
            ended = [i for i in ids if not self._instances().running(i)]
        except Exception:
            ended = []
        if ids and len(ended) == len(ids):
            return (f"every instance the job ran on has ended ({', '.join(ended)}): an idle shutdown, a "
                    "spot interruption or a terminate; resume() runs what is left on new instances")
        return super().describe_failure(handle)

    # -- the end --------------------------------------------------------------------------

    def release(self) -> None:
        """Terminate the cluster's instances, then delete what it created (key pair,
        security group, role, instance profile), its state and this machine's SSH files."""
        with self._lock:
            state = self.state(reload=True)
            instances = self._instances()
            live = [i["InstanceId"] for i in instances.live()]
            if live:
                say(f"Terminating {len(live)} EC2 instance(s): {', '.join(live)}")
                instances.terminate(live)
                instances.wait_terminated(live)
            state["instances"] = {}
            problems = delete_resources(self.session(), state["created"], self._save_state, say)
            if problems:
                raise Ec2Error("stop() left resources behind: " + "; ".join(problems))
            self._state_store().delete(STATE)
            self._state = None
            self._current = None
            self._live = None
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self) -> None:
        """Close the connections, terminate the instances and delete everything the cluster
        created; it can be used again (it then starts afresh)."""
        if self._live is not None:
            for host in self._live.hosts:
                host.close()
        self.release()


def create(name: str, s3_path: str, ec2_config: Ec2Config | None = None, num_hosts: int | None = None,
           num_concurrent_tasks: int | None = None, idle_shutdown_timeout: float = DEFAULT_IDLE_SHUTDOWN,
           additional_packages: list[str] | None = None, **options: Any) -> Ec2Cluster:
    """Launch (or reuse) the cluster's instances, prepare them, and save the cluster by name.

    Bad input raises before anything is created; a failure midway (no capacity, a quota,
    a host that cannot be prepared) cleans up what this call made, then raises.
    Other options: pip_options, python, key_filename, timeout, boot_timeout.
    """
    cluster = Ec2Cluster(name, s3_path, ec2_config, num_hosts=num_hosts,
                         num_concurrent_tasks=num_concurrent_tasks,
                         idle_shutdown_timeout=idle_shutdown_timeout,
                         additional_packages=additional_packages, **options)
    cluster.check()
    fresh = not cluster.state(reload=True).get("created") and not cluster.state()["instances"]
    try:
        cluster.acquire()
        cluster.prepare()
    except BaseException:
        if fresh:
            say(f"Cleaning up after the failed creation of {name}")
            try:
                cluster.stop()
            except Exception as exc:
                say(f"cleaning up failed: {exc}")
        raise
    cluster._save_state()
    return cluster.save()


def load(s3_path: str, name: str, key_filename: str | None = None) -> Ec2Cluster:
    """The cluster saved under s3_path (from any machine with access to it): saved in this
    machine's registry too, with its jobs, so `environment=name` and `deploy.jobs[...]` work.
    `key_filename`: the cluster's SSH key, copied from the machine that created it (needed
    where its deploy home does not have it)."""
    s3_path = _check_s3_path(s3_path)
    probe = Ec2Cluster(name, s3_path)
    state = probe.state(reload=True)
    if not state.get("settings"):
        raise Ec2Error(f"no EC2 cluster named {name!r} under {s3_path}")
    settings = dict(state["settings"])
    if key_filename is not None:
        settings["key_filename"] = os.path.abspath(os.path.expanduser(key_filename))
    cluster = Ec2Cluster.from_settings(name, settings)
    cluster.save()
    _register_jobs(cluster)
    return cluster


def _register_jobs(cluster: Ec2Cluster) -> None:
    """Record the cluster's jobs in this machine's registry (those it does not know)."""
    from ...jobdir import layout
    from ...jobdir.spec import JobSpec
    from ...jobs.registry import jobs
    store = cluster.job_store("")
    known = {row[1] for row in jobs._rows()}
    for job_id in store.list(""):
        job_id = job_id.rstrip("/")
        if not job_id or job_id in known:
            continue
        try:
            spec = JobSpec.from_json(store.get(f"{job_id}/{layout.SPEC}"))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue
        jobs.reserve(spec.name or job_id, job_id, f"{cluster.store}/{job_id}", cluster.name,
                     spec.function_name)


__all__ = ["Ec2Cluster", "Ec2Config", "Ec2Error", "create", "load"]
