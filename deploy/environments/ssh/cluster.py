"""SshCluster: run a job's workers on your own machines over SSH (paramiko).

    lab = deploy.ssh_cluster.create('lab', hosts=['alice@gpu1', 'gpu2:2222', '10.0.0.7'])
    job = deploy.map_job.create(add, params, environment=lab)     # or environment='lab'

Each host gets its runtime prepared once (runtime) and, per client process, an agent
(agent, reached through session) that forks each job's worker loop into a process
group of its own. The job directory stays on the client and is relayed over the agent's
SSH channel (store=None), or lives in a shared store (`store='s3://bucket/prefix'` or a
path every host sees) that workers use directly, so that the job survives the client.

Which hosts those are is the cluster's `HostSource` (a list here; instances a backend
starts and stops, for EC2): the cluster only reaches them. Its live state (connections,
agents) sits apart from its settings, made on first use in each process.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import threading
import time
from typing import Any, Callable

from ...worker.processes import process_alive
from ...worker.runner import HOST
from ...store import Storage, worker_needs
from ..remote import RemoteEnvironment
from ..base import HostCapacity, Launch, fit_hosts, positive_int
from ..hosts import HostSource, StaticHosts
from .connect import DEFAULT_CONFIG, POLICIES, HostError, HostSpec, connect, resolve, run
from .runtime import DEFAULT_ROOT, HostRuntime, Options, prepare, python_command
from .session import AgentSession

# variables the workers get from the client for an S3 store (configuration, not secrets;
# credentials are forwarded only when named in forward_env=)
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


class _Host:
    """One host of the cluster, as this process knows it: connection, runtime, agent."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.label = spec.given
        self.client: Any = None
        self.runtime: HostRuntime | None = None
        self.session: AgentSession | None = None
        self.lock = threading.Lock()
        self.closing = False            # stop() was asked while a relayed job runs here

    def connected(self, policy: str, timeout: float) -> Any:
        transport = self.client.get_transport() if self.client is not None else None
        if transport is None or not transport.is_active():
            self.client = connect(self.spec, policy, timeout)
            self.session = None
            self.closing = False
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.session = None


class _Live:
    """What a process holds for a cluster while it uses it: the hosts' connections, runtimes
    and agents, and the relay's news of published results. Not data: never saved."""

    def __init__(self, hosts: list[_Host]) -> None:
        self.hosts = hosts
        self.changes = threading.Condition()
        self.versions: dict[str, int] = {}      # relayed job -> changes seen by the relay
        self.seen: dict[str, int] = {}          # relayed job -> changes wait_for_change reported


class SshCluster(RemoteEnvironment):
    """Workers on machines reachable by SSH; see the module docstring."""

    kind = "ssh"

    def __init__(self, name: str, hosts: list[str] | str | HostSource,
                 key_filename: str | list[str] | None = None,
                 workers_per_host: int | None = None, additional_packages: list[str] | None = None,
                 store: str | None = None, host_key_policy: str = "reject",
                 pip_options: list[str] | None = None, ssh_config: str | None = DEFAULT_CONFIG,
                 known_hosts: str | None = None, python: str = "python3",
                 remote_dir: str = DEFAULT_ROOT, forward_env: list[str] | None = None,
                 timeout: float = 10.0) -> None:
        super().__init__(name)
        self.source = hosts if isinstance(hosts, HostSource) else StaticHosts(hosts)
        positive_int(workers_per_host, "workers_per_host", optional=True)
        if host_key_policy not in POLICIES:
            raise ValueError(f"host_key_policy must be one of {POLICIES}, got {host_key_policy!r} "
                             "(unknown host keys are never accepted silently)")
        if store is not None and not re.match(r"^[a-z0-9]+://|^/", str(store)):
            raise ValueError(f"store must be a URI (s3://bucket/prefix) or an absolute path every "
                             f"host sees, got {store!r}")
        for label, items in (("additional_packages", additional_packages), ("pip_options", pip_options),
                             ("forward_env", forward_env)):
            if items is not None and (isinstance(items, str) or not all(isinstance(i, str) for i in items)):
                raise TypeError(f"{label} must be a list of strings")
        self.key_filename = key_filename
        self.workers_per_host = workers_per_host
        self.additional_packages = list(additional_packages or [])
        self.store = str(store).rstrip("/") if store else None
        self.host_key_policy = host_key_policy
        self.pip_options = list(pip_options or [])
        self.ssh_config = ssh_config
        self.known_hosts = known_hosts
        self.python = python
        self.remote_dir = remote_dir
        self.forward_env = list(forward_env or [])
        self.timeout = float(timeout)
        self._live: _Live | None = None
        if isinstance(self.source, StaticHosts):
            self._connections()             # a host ~/.ssh/config cannot resolve: an error now

    @property
    def hosts(self) -> list[str]:
        """The hosts' addresses, as the host source gives them."""
        return self.source.addresses()

    def _connections(self) -> "_Live":
        """This process's live state for the cluster (made on first use; never saved)."""
        if self._live is None:
            self._live = _Live(self._resolve())
        return self._live

    @property
    def _hosts(self) -> list[_Host]:
        return self._connections().hosts

    def _resolve(self) -> list[_Host]:
        seen: dict[tuple, str] = {}
        hosts = []
        for text in self.source.addresses():
            spec = resolve(text, self.ssh_config, self.key_filename, self.known_hosts)
            if spec.target in seen:
                raise ValueError(f"host {text!r} is listed twice: it is the same account as "
                                 f"{seen[spec.target]!r} ({spec.user}@{spec.hostname}:{spec.port})")
            seen[spec.target] = text
            hosts.append(_Host(spec))
        return hosts

    # -- data -------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Everything that recreates the cluster: host names, key *paths*, never key contents."""
        return {**self.source.settings(), "key_filename": self.key_filename,
                "workers_per_host": self.workers_per_host,
                "additional_packages": list(self.additional_packages), "store": self.store,
                "host_key_policy": self.host_key_policy, "pip_options": list(self.pip_options),
                "ssh_config": self.ssh_config, "known_hosts": self.known_hosts,
                "python": self.python, "remote_dir": self.remote_dir,
                "forward_env": list(self.forward_env), "timeout": self.timeout}

    # -- hosts ------------------------------------------------------------------------

    def _options(self) -> Options:
        needs = worker_needs(self.store) if self.store else ()
        return Options(cluster=self.name, python=self.python, root=self.remote_dir,
                       packages=tuple(self.additional_packages),
                       pip_options=tuple(self.pip_options), needs=needs)

    def _each(self, fn: Callable[[_Host], Any], hosts: list[_Host] | None = None) -> list[Any]:
        """fn(host) on every host at once; HostError naming every host that failed."""
        hosts = self._hosts if hosts is None else hosts
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(hosts) or 1)) as pool:
            futures = [pool.submit(fn, h) for h in hosts]
            concurrent.futures.wait(futures)
        errors = [f.exception() for f in futures if f.exception() is not None]
        host_errors = [e for e in errors if isinstance(e, HostError)]
        if host_errors:
            raise HostError.several(host_errors)
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    def _prepare_host(self, host: _Host) -> HostRuntime:
        with host.lock:
            client = host.connected(self.host_key_policy, self.timeout)
            if host.runtime is None:
                try:
                    host.runtime = prepare(client, host.spec.describe(), self._options())
                except HostError:
                    raise
                except ValueError as exc:
                    raise HostError(host.spec.describe(), str(exc)) from None
                except Exception as exc:        # the connection failed under us, or worse
                    raise HostError(host.spec.describe(), f"preparing the host failed: "
                                                          f"{type(exc).__name__}: {exc}") from None
            return host.runtime

    def prepare(self) -> "SshCluster":
        """Connect to every host and make its runtime ready; HostError names the hosts that fail."""
        if not all(h.runtime is not None and h.client is not None and h.client.get_transport() is not None
                   and h.client.get_transport().is_active() for h in self._hosts):
            self._each(self._prepare_host)
        return self

    def _per_host(self, host: _Host) -> int:
        return self.workers_per_host or host.runtime.cpus

    def num_workers(self) -> int:
        self.prepare()
        return sum(self._per_host(h) for h in self._hosts)

    def capacity(self) -> list[HostCapacity]:
        """Each host's cores, memory (MemTotal, or its cgroup limit) and GPUs as its probe
        found them, and the workers it runs by the cluster's settings."""
        self.prepare()
        return [HostCapacity(h.label, h.runtime.cpus, h.runtime.memory_gb, h.runtime.gpus,
                             workers=self._per_host(h)) for h in self._hosts]

    def get_num_workers(self) -> int:
        """GraphLab's name: workers per job across all hosts."""
        return self.num_workers()

    def is_running(self) -> bool:
        """True when every host answers and is ready to run workers."""
        try:
            self.prepare()
            return True
        except HostError:
            return False

    def stop(self) -> None:
        """Close the SSH connections (those relaying a running job close when it ends), and
        let the host source give back machines it made."""
        for host in self._hosts:
            with host.lock:
                if host.session is not None and host.session.busy():
                    host.closing = True
                else:
                    host.close()
        self.source.release()

    # -- jobs -------------------------------------------------------------------------

    def _spread(self, total: int, resources: dict[str, float] | None = None) -> list[tuple[_Host, int]]:
        """Deal `total` workers over the hosts, round robin within each host's capacity
        (for tasks that need `resources`: as many as fit in the host)."""
        counts = {id(h): 0 for h in self._hosts}
        limits = (fit_hosts(self.capacity(), resources) if resources
                  else [self._per_host(h) for h in self._hosts])
        while total > 0:
            dealt = False
            for host, limit in zip(self._hosts, limits):
                if total > 0 and counts[id(host)] < limit:
                    counts[id(host)] += 1
                    total -= 1
                    dealt = True
            if not dealt:
                break
        return [(h, counts[id(h)]) for h in self._hosts if counts[id(h)]]

    def _worker_env(self, job_dir: str) -> dict[str, str]:
        names = list(self.forward_env)
        if self.store and self.store.startswith("s3://"):
            names += S3_ENV
        env = {n: os.environ[n] for n in names if n in os.environ}
        env["TMPDIR"] = job_dir
        return env

    def launch(self, launch: Launch) -> dict[str, Any]:
        self.prepare()
        relay = self.store is None
        job_id = launch.spec.id
        plan = dict((id(h), n) for h, n in self._spread(launch.workers, launch.spec.resources))
        hosts = [h for h in self._hosts if id(h) in plan]

        def start(host: _Host) -> dict[str, Any] | Exception:
            try:
                return self._start(host, plan[id(host)], launch.store, job_id, relay)
            except Exception as exc:
                return exc
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
            results = list(pool.map(start, hosts))
        failed = [r for r in results if isinstance(r, Exception)]
        handle = {"relay": relay, "job": job_id,
                  "client": {"host": HOST, "pid": os.getpid()},
                  "hosts": [r for r in results if not isinstance(r, Exception)]}
        if failed:
            self.cancel(handle)        # no half-started job: stop the hosts that did start
            raise failed[0]
        return handle

    def _session(self, host: _Host) -> AgentSession:
        """The host's agent for this process, started on first use."""
        with host.lock:
            host.connected(self.host_key_policy, self.timeout)
            if host.session is None or not host.session.usable():
                rt = host.runtime
                preload = "".join(f" {module}" for module in self._options().needs)
                command = rt.command(f"-m deploy.environments.ssh.agent serve --log "
                                     f"{shlex.quote(rt.root + '/agent.log')} --preload{preload}", host.label)
                host.session = AgentSession(host, command, self.timeout, self._changed)
            return host.session

    def _start(self, host: _Host, workers: int, store: Storage, job_id: str, relay: bool) -> dict[str, Any]:
        rt = host.runtime
        job_dir = f"{rt.root}/jobs/{job_id}"
        log = f"{job_dir}/{re.sub(r'[^A-Za-z0-9_.@-]', '_', host.label)}.log"
        uri = f"relay://{host.label}/{job_id}" if relay else store.uri
        started = self._session(host).start_job(job_id, uri, workers, self._worker_env(job_dir), log,
                                                store if relay else None)
        return {"host": host.label, "workers": workers, "log": log, "root": rt.root,
                "python": rt.python, "pythonpath": rt.pythonpath,
                "groups": [[started["pgid"], started["start"]]]}

    # -- control ----------------------------------------------------------------------

    def _changed(self, job: str) -> None:
        live = self._connections()
        with live.changes:
            live.versions[job] = live.versions.get(job, 0) + 1
            live.changes.notify_all()

    def wait_for_change(self, handle: dict[str, Any], timeout: float) -> None:
        """For a job relayed by this process: return as soon as a result is published (the
        relay sees it go by) or the workers end; otherwise just sleep."""
        job, live = handle.get("job", ""), self._connections()
        if not (handle.get("relay") and any(h.session is not None and h.session.relaying(job)
                                            for h in live.hosts)):
            with live.changes:
                live.versions.pop(job, None)
                live.seen.pop(job, None)
            time.sleep(timeout)
            return
        with live.changes:
            live.changes.wait_for(lambda: live.versions.get(job, 0) != live.seen.get(job, 0), timeout)
            live.seen[job] = live.versions.get(job, 0)

    def _run_for(self, entry: dict[str, Any], command: str) -> tuple[int, str] | None:
        """Run a command on the host of a handle's entry: (exit status, stdout), None if unreachable."""
        host = self._host(entry["host"])
        if host is None:
            return None
        try:
            with host.lock:
                client = host.connected(self.host_key_policy, self.timeout)
            rc, out, _ = run(client, command, timeout=60)
        except (HostError, OSError, EOFError):
            return None
        return rc, out

    def _agent(self, entry: dict[str, Any], action: str) -> str | None:
        """`agent kill|alive` on the entry's worker groups; its stdout, None if unreachable."""
        groups = [f"{g}:{started}" for g, started in entry.get("groups", [])]
        done = self._run_for(entry, python_command(entry["root"], entry["pythonpath"], entry["python"],
                                                   f"-m deploy.environments.ssh.agent {action} "
                                                   + " ".join(groups)))
        return done[1] if done and done[0] == 0 else None

    def _on_hosts(self, handle: dict[str, Any], action: str) -> list[str | None]:
        """The agent's `action` on every host of a launch handle, at once."""
        entries = handle.get("hosts", [])
        if not entries:
            return []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(entries))) as pool:
            return list(pool.map(lambda entry: self._agent(entry, action), entries))

    def _host(self, label: str) -> _Host | None:
        return next((h for h in self._hosts if h.label == label), None)

    def cancel(self, handle: dict[str, Any]) -> None:
        """Kill the job's workers on every host: SIGTERM their process groups, SIGKILL
        what is left after a grace period."""
        self._on_hosts(handle, "kill")

    def alive(self, handle: dict[str, Any]) -> bool | None:
        job_id = handle.get("job", "")
        if handle.get("relay") and any(h.session is not None and h.session.relaying(job_id)
                                       for h in self._hosts):
            return True
        answers = [None if out is None else bool(json.loads(out)) for out in self._on_hosts(handle, "alive")]
        if any(answers):
            return True
        return None if None in answers or not answers else False

    def describe_failure(self, handle: dict[str, Any]) -> str | None:
        client = handle.get("client") or {}
        if handle.get("relay") and client.get("host") == HOST \
                and client.get("pid") != os.getpid() and not process_alive(int(client.get("pid", 0))):
            return (f"the process that relayed the job directory to the hosts (pid {client.get('pid')}) "
                    "has exited; a relayed job needs its client alive (give the cluster a shared "
                    "store= for jobs that outlive it)")
        tails = []
        for entry in handle.get("hosts", []):
            done = self._run_for(entry, f"tail -n 5 {shlex.quote(entry['log'])}")
            if done is None:
                tails.append(f"{entry['host']}: unreachable")
            elif done[0] == 0 and done[1].strip():
                tails.append(f"{entry['host']}: {done[1].strip()[-500:]}")
        return "; ".join(tails) or None


def create(name: str, hosts: list[str] | str, key_filename: str | list[str] | None = None,
           workers_per_host: int | None = None, additional_packages: list[str] | None = None,
           store: str | None = None, host_key_policy: str = "reject", **options: Any) -> SshCluster:
    """Define an SSH cluster, check every host (connect, prepare its runtime) and save it by name.

    Raises HostError naming each host that cannot be used, before anything is saved.
    Other options: pip_options, ssh_config, known_hosts, python, remote_dir, forward_env, timeout.
    """
    cluster = SshCluster(name, hosts, key_filename=key_filename, workers_per_host=workers_per_host,
                         additional_packages=additional_packages, store=store,
                         host_key_policy=host_key_policy, **options)
    cluster.prepare()
    return cluster.save()


def load(name: str) -> SshCluster:
    """The saved cluster `name` (connects lazily, when first used)."""
    return SshCluster.load(name)


__all__ = ["SshCluster", "HostError", "create", "load"]
