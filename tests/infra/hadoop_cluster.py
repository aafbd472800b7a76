"""A real single-node Hadoop 3.4 cluster (HDFS + YARN) for tests.

Three JVMs run from Maven Central jars (no Hadoop install, no compiled code of ours):

* ``hdfs``: ``MiniHadoopClusterManager -nomr -format`` (a MiniDFSCluster: one
  NameNode and one DataNode, WebHDFS on);
* ``resourcemanager``: the real ``ResourceManager`` daemon;
* ``nodemanager``: the real ``NodeManager`` daemon, which launches real
  containers (``DefaultContainerExecutor``: bash, as the OS user running the tests).

The RM and the NM cannot share one JVM (e.g. ``MiniHadoopClusterManager``'s
MiniYARNCluster): both web apps go through Guice's static ``GuiceFilter``
pipeline and the NM's, started last, then answers the RM's port, so
``/ws/v1/cluster/*`` is a 404 ("controller for v1 not found").

Usage::

    from tests.infra.hadoop_cluster import HadoopCluster

    with HadoopCluster() as cluster:
        cluster.webhdfs_url          # http://127.0.0.1:<port>  (hdfs.InsecureClient)
        cluster.resourcemanager_url  # http://127.0.0.1:<port>  (/ws/v1/cluster/...)
        cluster.fs_default_fs        # hdfs://localhost:<port>  (LocalResource URLs)
        cluster.hadoop_conf_dir      # core-, hdfs-, yarn-, mapred-site.xml, log4j.properties
        cluster.user                 # the user name for user.name=... (default: OS user)

``python3 -m tests.infra.hadoop_cluster --resolve`` only resolves (and caches)
the jars; without arguments it starts a cluster, prints its addresses as JSON
and runs until SIGINT/SIGTERM. The jars are resolved once into the local Maven
repository (~/.m2); the classpath is cached in ``$DEPLOY_HADOOP_CACHE``
(default ``~/.cache/deploy-tests/hadoop``), keyed by the pom's content.
See tests/infra/hadoop/NOTES.md.
"""

from __future__ import annotations

import atexit
import ctypes
import getpass
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Iterable, List, Optional
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
POM = HERE / "hadoop" / "pom.xml"

HDFS_CLASS = "org.apache.hadoop.mapreduce.MiniHadoopClusterManager"
RM_CLASS = "org.apache.hadoop.yarn.server.resourcemanager.ResourceManager"
NM_CLASS = "org.apache.hadoop.yarn.server.nodemanager.NodeManager"
DISTRIBUTED_SHELL_AM_CLASS = (
    "org.apache.hadoop.yarn.applications.distributedshell.ApplicationMaster")

FINAL_APP_STATES = ("FINISHED", "FAILED", "KILLED")
LIVE_APP_STATES = ("NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED", "RUNNING")

# Java 17: Hadoop 3.4, Guice (the web apps), Jersey 1 and the Kerberos utilities
# reflect into JDK internals.
JAVA17_FLAGS = [
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.util.regex=ALL-UNNAMED",
    "--add-opens=java.base/java.security=ALL-UNNAMED",
    "--add-opens=java.base/javax.security.auth=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.util=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.dns=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
    "--add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
]

# The usual yarn.application.classpath of a Linux Hadoop install. The cluster's
# HADOOP_HOME is laid out like an install (symlinks to the Maven jars) so that
# it works in containers exactly as on a real cluster.
APPLICATION_CLASSPATH = [
    "$HADOOP_CONF_DIR",
    "$HADOOP_COMMON_HOME/share/hadoop/common/*",
    "$HADOOP_COMMON_HOME/share/hadoop/common/lib/*",
    "$HADOOP_HDFS_HOME/share/hadoop/hdfs/*",
    "$HADOOP_HDFS_HOME/share/hadoop/hdfs/lib/*",
    "$HADOOP_YARN_HOME/share/hadoop/yarn/*",
    "$HADOOP_YARN_HOME/share/hadoop/yarn/lib/*",
]

LOG4J = """\
log4j.rootLogger={level},console
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.target=System.err
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{{ISO8601}} %p %c{{2}}: %m%n
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
log4j.logger.org.apache.hadoop.metrics2=ERROR
log4j.logger.org.eclipse.jetty=WARN
log4j.logger.org.apache.hadoop.mapreduce.MiniHadoopClusterManager=INFO
log4j.logger.org.apache.hadoop.yarn.applications.distributedshell=INFO
log4j.logger.org.apache.hadoop.yarn.server.resourcemanager.ResourceManager=INFO
log4j.logger.org.apache.hadoop.yarn.server.resourcemanager.rmapp.RMAppImpl=INFO
log4j.logger.org.apache.hadoop.yarn.server.nodemanager.NodeManager=INFO
log4j.logger.org.apache.hadoop.yarn.server.nodemanager.containermanager.container.ContainerImpl=INFO
"""

CAPACITY_SCHEDULER = {
    "yarn.scheduler.capacity.root.queues": "default",
    "yarn.scheduler.capacity.root.default.capacity": "100",
    "yarn.scheduler.capacity.root.default.maximum-capacity": "100",
    "yarn.scheduler.capacity.root.default.user-limit-factor": "1",
    "yarn.scheduler.capacity.root.default.state": "RUNNING",
    "yarn.scheduler.capacity.root.default.acl_submit_applications": "*",
    "yarn.scheduler.capacity.root.default.acl_administer_queue": "*",
    # Several small AMs at once (the default, 0.1 of 8 GB, admits about one).
    "yarn.scheduler.capacity.maximum-am-resource-percent": "0.5",
    "yarn.scheduler.capacity.maximum-applications": "1000",
    "yarn.scheduler.capacity.node-locality-delay": "-1",
}


class HadoopClusterError(RuntimeError):
    pass


# --------------------------------------------------------------------------- #
# jars
# --------------------------------------------------------------------------- #

def cache_dir() -> Path:
    d = os.environ.get("DEPLOY_HADOOP_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "deploy-tests" / "hadoop"


def find_java() -> Optional[str]:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def java_major_version(java: str) -> int:
    out = subprocess.run([java, "-version"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60).stdout
    # 'openjdk version "17.0.15" ...' / 'java version "1.8.0_392"'
    try:
        v = out.split('"')[1]
    except IndexError:
        return 0
    parts = v.split(".")
    if parts[0] == "1":
        return int(parts[1])
    return int("".join(ch for ch in parts[0] if ch.isdigit()) or 0)


def java_home_of(java: str) -> str:
    return str(Path(os.path.realpath(java)).parent.parent)


def missing_prerequisites() -> List[str]:
    """What this machine lacks to run the cluster (empty: nothing)."""
    problems = []
    if not find_java():
        problems.append("no java (JDK 17) on PATH or in $JAVA_HOME")
    if not shutil.which("mvn") and not _cached_classpath():
        problems.append("no mvn to resolve the Hadoop jars (and none cached)")
    return problems


def _cached_classpath(pom: Path = POM) -> Optional[List[str]]:
    cached = _classpath_file(pom)
    if cached.exists():
        jars = [j for j in cached.read_text().strip().split(os.pathsep) if j]
        if jars and all(os.path.exists(j) for j in jars):
            return jars
    return None


def _classpath_file(pom: Path) -> Path:
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    return cache_dir() / f"classpath-{digest}.txt"


def resolve_classpath(pom: Path = POM, refresh: bool = False,
                      timeout: float = 1200) -> List[str]:
    """The cluster's runtime classpath (jars in ~/.m2). Resolved with Maven the
    first time (``mvn dependency:build-classpath``), then cached."""
    if not refresh:
        jars = _cached_classpath(pom)
        if jars:
            return jars
    mvn = shutil.which("mvn")
    if not mvn:
        raise HadoopClusterError("Maven (mvn) is needed to resolve the Hadoop jars")
    cached = _classpath_file(pom)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:build-classpath",
           f"-Dmdep.outputFile={tmp}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, timeout=timeout)
    if proc.returncode != 0 or not tmp.exists():
        raise HadoopClusterError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    os.replace(tmp, cached)
    return [j for j in cached.read_text().strip().split(os.pathsep) if j]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #

def free_ports(n: int) -> List[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def site_xml(props: Dict[str, object]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<configuration>"]
    for k, v in props.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        lines.append(f"  <property><name>{escape(k)}</name>"
                     f"<value>{escape(str(v))}</value></property>")
    lines.append("</configuration>")
    return "\n".join(lines) + "\n"


def _http(method: str, url: str, body: Optional[dict] = None, timeout: float = 10.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Accept": "application/json", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read().decode()
    return json.loads(raw) if raw.strip() else None


def _http_json(url: str, timeout: float = 5.0):
    return _http("GET", url, timeout=timeout)


def _pdeathsig():
    """In the child, before exec: get SIGTERM when the parent thread dies, so a
    crashed test run leaves no cluster behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# --------------------------------------------------------------------------- #
# the cluster
# --------------------------------------------------------------------------- #

class HadoopCluster:
    """A single-node HDFS + YARN cluster in child ``java`` processes.

    Parameters: ``workdir`` (default: a new temp dir, removed by ``stop()``
    unless ``keep_workdir``), ``user`` (default: the OS user), ``nm_memory_mb`` /
    ``nm_vcores`` (the NodeManager's capacity), ``min_allocation_mb``,
    ``startup_timeout`` (s), ``extra_conf`` (more properties, written into every
    *-site.xml).
    """

    def __init__(self, workdir: Optional[str] = None, user: Optional[str] = None,
                 nm_memory_mb: int = 8192, nm_vcores: int = 8,
                 min_allocation_mb: int = 128, startup_timeout: float = 180,
                 extra_conf: Optional[Dict[str, object]] = None,
                 keep_workdir: bool = False):
        self.user = user or getpass.getuser()
        self.nm_memory_mb = nm_memory_mb
        self.nm_vcores = nm_vcores
        self.min_allocation_mb = min_allocation_mb
        self.startup_timeout = startup_timeout
        self.extra_conf = dict(extra_conf or {})
        self._own_workdir = workdir is None
        self.keep_workdir = keep_workdir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="deploy-hadoop-")).resolve()
        self.procs: Dict[str, subprocess.Popen] = {}
        self.commands: Dict[str, List[str]] = {}
        self.timings: Dict[str, float] = {}
        self.classpath: List[str] = []
        self.node: dict = {}
        self._log_fhs: list = []
        self._started = False
        self._stopped = False

    # ---- addresses and paths (valid after start) ------------------------------
    @property
    def webhdfs_url(self) -> str:
        """Base URL of the NameNode's HTTP server: ``hdfs.InsecureClient(url)``;
        the REST root is ``<url>/webhdfs/v1``."""
        return f"http://127.0.0.1:{self.namenode_http_port}"

    @property
    def fs_default_fs(self) -> str:
        """fs.defaultFS; prefix of HDFS LocalResource URLs in YARN submissions."""
        return f"hdfs://localhost:{self.namenode_port}"

    @property
    def resourcemanager_url(self) -> str:
        """Base URL of the RM web app; the REST root is ``<url>/ws/v1/cluster``."""
        return f"http://127.0.0.1:{self.rm_webapp_port}"

    @property
    def log_dir(self) -> Path:
        """hdfs.log, resourcemanager.log, nodemanager.log, and userlogs/."""
        return self.workdir / "logs"

    @property
    def container_log_dir(self) -> Path:
        """userlogs/<application>/<container>/{stdout,stderr,AppMaster.*,launch_container.sh}."""
        return self.workdir / "logs" / "userlogs"

    @property
    def application_classpath(self) -> List[str]:
        """yarn.application.classpath, as in yarn-site.xml (also served by the
        RM at ``/conf?name=yarn.application.classpath``)."""
        return list(APPLICATION_CLASSPATH)

    @property
    def distributedshell_jar(self) -> str:
        """Local path of hadoop-yarn-applications-distributedshell-<version>.jar."""
        for j in self.classpath or resolve_classpath():
            if os.path.basename(j).startswith("hadoop-yarn-applications-distributedshell"):
                return j
        raise HadoopClusterError("distributedshell jar not on the classpath")

    @property
    def hadoop_version(self) -> str:
        for j in self.classpath or resolve_classpath():
            b = os.path.basename(j)
            if b.startswith("hadoop-common-") and not b.endswith("-tests.jar"):
                return b[len("hadoop-common-"):-len(".jar")]
        return "unknown"

    def hdfs_client(self):
        """An ``hdfs.InsecureClient`` (the PyPI ``hdfs`` package) as ``self.user``."""
        import hdfs
        return hdfs.InsecureClient(self.webhdfs_url, user=self.user)

    # ---- lifecycle -------------------------------------------------------------
    def __enter__(self) -> "HadoopCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "HadoopCluster":
        if self._started:
            return self
        self._started = True
        t0 = time.monotonic()
        java = find_java()
        if not java:
            raise HadoopClusterError("no java on PATH and no $JAVA_HOME: install a JDK 17")
        self.java = java
        self.java_home = java_home_of(java)
        self.java_version = java_major_version(java)
        if self.java_version < 8:
            raise HadoopClusterError(f"{java}: Hadoop 3.4 needs Java 8, 11 or 17")
        self.classpath = resolve_classpath()
        self.timings["classpath_s"] = time.monotonic() - t0

        (self.namenode_port, self.namenode_http_port, self.rm_port,
         self.rm_scheduler_port, self.rm_tracker_port, self.rm_admin_port,
         self.rm_webapp_port, self.nm_port, self.nm_localizer_port,
         self.nm_webapp_port, self.nm_collector_port) = free_ports(11)

        atexit.register(self.stop)
        try:
            self._write_layout()
            self._launch()
            self._wait_ready(t0)
            self._prepare_hdfs()
        except BaseException:
            self.keep_workdir = True  # logs/ says why; the error names the path
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - t0
        return self

    # ---- files -----------------------------------------------------------------
    def _write_layout(self) -> None:
        w = self.workdir
        for d in ("conf", "tmp", "logs", "nm-local", "hadoop-home"):
            (w / d).mkdir(parents=True, exist_ok=True)

        # HADOOP_HOME laid out like an install: share/hadoop/common/lib/*.jar and
        # share/hadoop/yarn/hadoop-yarn-applications-distributedshell-*.jar.
        home = w / "hadoop-home"
        lib = home / "share" / "hadoop" / "common" / "lib"
        yarn = home / "share" / "hadoop" / "yarn"
        for d in (lib, yarn, home / "share" / "hadoop" / "hdfs",
                  home / "share" / "hadoop" / "common"):
            d.mkdir(parents=True, exist_ok=True)
        for jar in self.classpath:
            name = os.path.basename(jar)
            # test jars carry their own log4j.properties / capacity-scheduler.xml
            if name.endswith("-tests.jar") or not name.endswith(".jar"):
                continue
            link = (yarn if name.startswith("hadoop-yarn-applications-") else lib) / name
            if not link.exists():
                os.symlink(jar, link)
        self.hadoop_home = home

        conf = w / "conf"
        self.hadoop_conf_dir = conf
        core = {
            "fs.defaultFS": self.fs_default_fs,
            "hadoop.tmp.dir": str(w / "tmp"),
            "hadoop.security.authentication": "simple",
        }
        hdfs = {
            "dfs.replication": 1,
            "dfs.webhdfs.enabled": True,
            # Any user.name may write anywhere (the client is WebHDFS, pseudo auth).
            "dfs.permissions.enabled": False,
            "dfs.namenode.rpc-address": f"localhost:{self.namenode_port}",
            "dfs.namenode.http-address": f"127.0.0.1:{self.namenode_http_port}",
            "dfs.namenode.safemode.extension": 0,
        }
        host = "localhost"
        yarn_conf = {
            "yarn.resourcemanager.hostname": host,
            "yarn.resourcemanager.address": f"{host}:{self.rm_port}",
            "yarn.resourcemanager.scheduler.address": f"{host}:{self.rm_scheduler_port}",
            "yarn.resourcemanager.resource-tracker.address": f"{host}:{self.rm_tracker_port}",
            "yarn.resourcemanager.admin.address": f"{host}:{self.rm_admin_port}",
            "yarn.resourcemanager.webapp.address": f"{host}:{self.rm_webapp_port}",
            "yarn.resourcemanager.recovery.enabled": False,
            # defaults under /tmp/hadoop-yarn-<user>: keep everything in the work dir
            "yarn.node-attribute.fs-store.root-dir": f"file://{w}/tmp/node-attribute",
            "yarn.node-labels.fs-store.root-dir": f"file://{w}/tmp/node-labels",
            # A NodeManager whose RM is gone (both got SIGTERM) stops within
            # seconds instead of retrying to unregister for 15 minutes.
            "yarn.resourcemanager.connect.max-wait.ms": 10000,
            "yarn.resourcemanager.connect.retry-interval.ms": 1000,
            "yarn.nodemanager.resourcemanager.connect.max-wait.ms": 10000,
            "yarn.nodemanager.resourcemanager.connect.retry-interval.ms": 1000,
            "yarn.resourcemanager.am.max-attempts": 2,
            # Faster allocation (default 1000 ms between NM heartbeats).
            "yarn.resourcemanager.nodemanagers.heartbeat-interval-ms": 300,
            "yarn.nodemanager.hostname": host,
            "yarn.nodemanager.address": f"{host}:{self.nm_port}",
            "yarn.nodemanager.localizer.address": f"{host}:{self.nm_localizer_port}",
            "yarn.nodemanager.webapp.address": f"{host}:{self.nm_webapp_port}",
            "yarn.nodemanager.collector-service.address": f"{host}:{self.nm_collector_port}",
            "yarn.nodemanager.local-dirs": str(w / "nm-local"),
            "yarn.nodemanager.log-dirs": str(w / "logs" / "userlogs"),
            "yarn.nodemanager.container-executor.class":
                "org.apache.hadoop.yarn.server.nodemanager.DefaultContainerExecutor",
            "yarn.nodemanager.recovery.enabled": False,
            "yarn.nodemanager.resource.memory-mb": self.nm_memory_mb,
            "yarn.nodemanager.resource.cpu-vcores": self.nm_vcores,
            "yarn.nodemanager.resource.detect-hardware-capabilities": False,
            "yarn.scheduler.minimum-allocation-mb": self.min_allocation_mb,
            "yarn.scheduler.maximum-allocation-mb": self.nm_memory_mb,
            "yarn.scheduler.minimum-allocation-vcores": 1,
            "yarn.scheduler.maximum-allocation-vcores": self.nm_vcores,
            "yarn.application.classpath": ",".join(APPLICATION_CLASSPATH),
            # A nearly full or slow disk must not mark the only node unhealthy.
            "yarn.nodemanager.disk-health-checker.enable": False,
            "yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage": 100.0,
            "yarn.nodemanager.disk-health-checker.min-free-space-per-disk-mb": 0,
            "yarn.nodemanager.disk-health-checker.min-healthy-disks": 0.0,
            # Containers are small Python processes; don't police memory.
            "yarn.nodemanager.pmem-check-enabled": False,
            "yarn.nodemanager.vmem-check-enabled": False,
            "yarn.nodemanager.delete.debug-delay-sec": 0,
            # SIGTERM -> SIGKILL delay for a container being stopped, and how long
            # the NM waits for that (default 250 ms + 5 s).
            "yarn.nodemanager.sleep-delay-before-sigkill.ms": 250,
            "yarn.nodemanager.process-kill-wait.ms": 1000,
            "yarn.log-aggregation-enable": False,
            "yarn.timeline-service.enabled": False,
            # Handed from the NM's environment to every container (see environment()).
            "yarn.nodemanager.env-whitelist": ",".join([
                "JAVA_HOME", "HADOOP_COMMON_HOME", "HADOOP_HDFS_HOME", "HADOOP_CONF_DIR",
                "CLASSPATH_PREPEND_DISTCACHE", "HADOOP_YARN_HOME", "HADOOP_HOME",
                "HADOOP_MAPRED_HOME", "PATH", "LANG", "TZ"]),
        }
        for name, props in (("core-site.xml", core), ("hdfs-site.xml", hdfs),
                            ("yarn-site.xml", yarn_conf),
                            ("mapred-site.xml", {"mapreduce.framework.name": "yarn"})):
            (conf / name).write_text(site_xml({**props, **self.extra_conf}))
        (conf / "capacity-scheduler.xml").write_text(site_xml(CAPACITY_SCHEDULER))
        # DEPLOY_HADOOP_LOG_LEVEL=INFO (or DEBUG) for more detail in logs/*.log
        level = os.environ.get("DEPLOY_HADOOP_LOG_LEVEL", "WARN")
        (conf / "log4j.properties").write_text(LOG4J.format(level=level))

    def environment(self) -> Dict[str, str]:
        """The daemons' environment. The NodeManager passes the whitelisted
        part (JAVA_HOME, HADOOP_*, LANG, TZ) on to containers."""
        env = dict(os.environ)
        env.pop("CLASSPATH", None)
        env.pop("HADOOP_USER_NAME", None)
        env.update({
            "JAVA_HOME": self.java_home,
            "HADOOP_HOME": str(self.hadoop_home),
            "HADOOP_COMMON_HOME": str(self.hadoop_home),
            "HADOOP_HDFS_HOME": str(self.hadoop_home),
            "HADOOP_YARN_HOME": str(self.hadoop_home),
            "HADOOP_MAPRED_HOME": str(self.hadoop_home),
            "HADOOP_CONF_DIR": str(self.hadoop_conf_dir),
        })
        return env

    # ---- processes -------------------------------------------------------------
    def _java_cmd(self, name: str, heap: str, main: str, args: List[str]) -> List[str]:
        w = self.workdir
        cp = [str(self.hadoop_conf_dir)] + self.classpath
        return [self.java, f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.net.preferIPv4Stack=true",
                f"-Djava.io.tmpdir={w / 'tmp'}",
                f"-Dtest.build.data={w / 'target' / 'test-data'}",
                f"-Dhadoop.log.dir={w / 'logs'}", f"-Dyarn.log.dir={w / 'logs'}",
                f"-Dproc_{name}",
                *(JAVA17_FLAGS if self.java_version >= 9 else []),
                "-cp", os.pathsep.join(cp), main, *args]

    def _launch(self) -> None:
        w = self.workdir
        self.commands = {
            "hdfs": self._java_cmd("hdfs", "768m", HDFS_CLASS, [
                "-nomr", "-format",
                "-nnport", str(self.namenode_port),
                "-nnhttpport", str(self.namenode_http_port)]),
            "resourcemanager": self._java_cmd("resourcemanager", "512m", RM_CLASS, []),
            "nodemanager": self._java_cmd("nodemanager", "512m", NM_CLASS, []),
        }
        env = self.environment()
        for name, cmd in self.commands.items():
            log = open(w / "logs" / f"{name}.log", "ab")
            self._log_fhs.append(log)
            # Own session each (killpg on stop); SIGTERM if this process dies.
            proc = subprocess.Popen(
                cmd, cwd=str(w), env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_pdeathsig)
            self.procs[name] = proc
            (w / f"{name}.pid").write_text(str(proc.pid))

    def _log_tail(self, name: str, n: int = 60) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-n:])
        except OSError:
            return ""

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise HadoopClusterError(
                    f"{name} exited with {proc.returncode}; "
                    f"{self.log_dir / (name + '.log')}:\n{self._log_tail(name)}")

    def _wait_ready(self, t0: float) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = ["hdfs", "resourcemanager", "nodemanager"]
        last = ""
        while pending and time.monotonic() < deadline:
            self._check_alive()
            try:
                if "hdfs" in pending:
                    # up, out of safe mode, and a live DataNode (else writes fail)
                    _http_json(f"{self.webhdfs_url}/webhdfs/v1/?op=GETFILESTATUS"
                               f"&user.name={self.user}")
                    nn = _http_json(f"{self.webhdfs_url}/jmx?qry=Hadoop:service=NameNode,"
                                    "name=NameNodeInfo")["beans"][0]
                    if nn.get("Safemode"):
                        raise HadoopClusterError("NameNode in safe mode")
                    if not json.loads(nn.get("LiveNodes") or "{}"):
                        raise HadoopClusterError("no live DataNode yet")
                    pending.remove("hdfs")
                    self.timings["hdfs_ready_s"] = time.monotonic() - t0
                if "resourcemanager" in pending:
                    info = _http_json(f"{self.resourcemanager_url}/ws/v1/cluster/info")
                    if info["clusterInfo"]["state"] != "STARTED":
                        raise HadoopClusterError("RM " + info["clusterInfo"]["state"])
                    pending.remove("resourcemanager")
                    self.timings["resourcemanager_ready_s"] = time.monotonic() - t0
                if "nodemanager" in pending and "resourcemanager" not in pending:
                    nodes = _http_json(f"{self.resourcemanager_url}/ws/v1/cluster/nodes")
                    running = [n for n in ((nodes.get("nodes") or {}).get("node") or [])
                               if n.get("state") == "RUNNING"]
                    if not running:
                        raise HadoopClusterError(f"no RUNNING node yet: {nodes}")
                    self.node = running[0]
                    pending.remove("nodemanager")
                    self.timings["nodemanager_ready_s"] = time.monotonic() - t0
                continue
            except (OSError, ValueError, KeyError, IndexError, HadoopClusterError) as e:
                last = repr(e)
            time.sleep(0.25)
        if pending:
            raise HadoopClusterError(
                f"{pending} not ready after {self.startup_timeout}s (last: {last}); "
                f"logs in {self.log_dir}:\n{self._log_tail(pending[0])}")

    def _prepare_hdfs(self) -> None:
        base = f"{self.webhdfs_url}/webhdfs/v1"
        _http("PUT", f"{base}/tmp?op=MKDIRS&permission=1777&user.name={self.user}")
        _http("PUT", f"{base}/user/{self.user}?op=MKDIRS&permission=755&user.name={self.user}")

    # ---- REST conveniences for tests -----------------------------------------
    def app(self, app_id: str) -> dict:
        return _http_json(f"{self.resourcemanager_url}/ws/v1/cluster/apps/{app_id}")["app"]

    def apps(self, states: Optional[Iterable[str]] = None) -> List[dict]:
        url = f"{self.resourcemanager_url}/ws/v1/cluster/apps"
        if states:
            url += "?states=" + ",".join(states)
        return ((_http_json(url).get("apps") or {}).get("app")) or []

    def wait_for_app(self, app_id: str, states: Iterable[str] = FINAL_APP_STATES,
                     timeout: float = 120) -> dict:
        """Poll the RM until the app is in one of ``states``; returns its report."""
        states = tuple(states)
        deadline = time.monotonic() + timeout
        while True:
            report = self.app(app_id)
            if report["state"] in states:
                return report
            if time.monotonic() > deadline:
                raise TimeoutError(f"{app_id} still {report['state']} after {timeout}s: "
                                   f"{report.get('diagnostics')}")
            time.sleep(0.5)

    def kill_app(self, app_id: str) -> None:
        q = urllib.parse.urlencode({"user.name": self.user})
        _http("PUT", f"{self.resourcemanager_url}/ws/v1/cluster/apps/{app_id}/state?{q}",
              {"state": "KILLED"})

    def kill_all_apps(self, timeout: float = 20) -> None:
        """Kill every unfinished application (best effort)."""
        try:
            apps = self.apps(LIVE_APP_STATES)
        except Exception:
            return
        for app in apps:
            try:
                self.kill_app(app["id"])
            except Exception:
                pass
        deadline = time.monotonic() + timeout
        while apps and time.monotonic() < deadline:
            try:
                if not self.apps(LIVE_APP_STATES):
                    break
            except Exception:
                break
            time.sleep(0.3)

    # ---- teardown --------------------------------------------------------------
    def leftover_processes(self) -> List[int]:
        """Live processes other than this one whose command line or environment
        mentions the work dir: daemons, containers, localizers."""
        me = os.getpid()
        needle = str(self.workdir).encode()
        pids = []
        for d in glob.glob("/proc/[0-9]*"):
            pid = int(d.rsplit("/", 1)[1])
            if pid == me:
                continue
            try:
                with open(f"{d}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        continue  # a zombie is already dead
                with open(f"{d}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"{d}/environ", "rb") as f:
                    environ = f.read()
            except (OSError, IndexError):
                continue
            if needle in cmdline or needle in environ:
                pids.append(pid)
        return pids

    def container_processes(self) -> List[int]:
        """Leftover processes minus the three daemons: containers, localizers."""
        daemons = {p.pid for p in self.procs.values()}
        return [pid for pid in self.leftover_processes() if pid not in daemons]

    def stop(self, grace: float = 5.0) -> None:
        """Kill unfinished apps and wait (briefly) for their containers to go,
        SIGTERM the daemons (SIGKILL after ``grace`` s: a NodeManager takes
        ~17 s to stop on its own), kill anything left that belongs to the work
        dir (containers run under ``setsid``, in sessions of their own), and
        remove the work dir unless ``keep_workdir``. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        t0 = time.monotonic()
        if self.procs and all(p.poll() is None for p in self.procs.values()):
            self.kill_all_apps(timeout=10)
            end = time.monotonic() + 10
            while time.monotonic() < end and self.container_processes():
                time.sleep(0.2)
        live = {name: p for name, p in self.procs.items() if p.poll() is None}
        for proc in live.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.monotonic() + grace
        for proc in live.values():
            try:
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.leftover_processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + 5
            while time.monotonic() < end and self.leftover_processes():
                time.sleep(0.2)
        for fh in self._log_fhs:
            fh.close()
        self._log_fhs.clear()
        self.timings["stop_s"] = time.monotonic() - t0
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def describe(self) -> dict:
        return {"webhdfs_url": self.webhdfs_url,
                "resourcemanager_url": self.resourcemanager_url,
                "fs.defaultFS": self.fs_default_fs,
                "hadoop_conf_dir": str(self.hadoop_conf_dir),
                "hadoop_version": self.hadoop_version,
                "user": self.user, "workdir": str(self.workdir),
                "logs": str(self.log_dir),
                "pids": {k: p.pid for k, p in self.procs.items()},
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}


def main(argv: List[str]) -> int:
    if "--resolve" in argv:  # resolve (and cache) the jars, nothing else
        t0 = time.monotonic()
        jars = resolve_classpath(refresh="--refresh" in argv)
        print(f"hadoop classpath: {len(jars)} jars, {_classpath_file(POM)} "
              f"({time.monotonic() - t0:.1f}s)")
        return 0
    cluster = HadoopCluster(keep_workdir="--keep" in argv)

    def _exit(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
    try:
        cluster.start()
        print(json.dumps(cluster.describe(), indent=2), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
