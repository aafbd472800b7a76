"""Finding a Hadoop cluster and checking that it can run deploy's jobs, before any task runs.

Addresses come from explicit URLs or a configuration directory; the checks name the cause:
an unreachable NameNode or ResourceManager, a dist_path the user may not write, a queue
that does not exist, containers larger than the cluster grants.
"""
from __future__ import annotations

import dataclasses
import time

from ...store import hadoop_conf
from ...errors import DeployError
from ...store import StorageError
from ...store.hdfs import HdfsStorage, default_user, make_uri
from .distributed_shell import DEFAULT_CLASSPATH
from .yarn import ResourceManager, YarnError


class HadoopError(DeployError):
    """The cluster cannot be used as configured; the message names the cause."""


@dataclasses.dataclass
class Cluster:
    """Where the cluster is, as this process resolved it (no I/O was needed)."""

    root: HdfsStorage            # dist_path
    rm: ResourceManager
    fs_uri: str | None           # hdfs://authority: the scheme of LocalResource URLs
    conf: dict[str, str] | None


@dataclasses.dataclass
class Facts:
    """What the ResourceManager told us: the filesystem, classpath and container limits."""

    fs_uri: str
    classpath: list[str]
    add_opens: bool              # the AM command needs <ADD_OPENS> (Hadoop 3.4+, Java 17)
    max_memory: int
    max_vcores: int


def url_list(value: str | list[str] | None) -> list[str]:
    """'http://a:1,http://b:2' (or ';'-separated, or a list) -> ['http://a:1', 'http://b:2']."""
    if not value:
        return []
    items = value if isinstance(value, list) else value.replace(";", ",").split(",")
    urls = [u.strip().rstrip("/") for u in items if u.strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http(s):// URL")
    return urls


def split_dist_path(dist_path: str) -> tuple[str | None, str]:
    """'hdfs://nn:8020/a/b' -> ('nn:8020', '/a/b'); 'hdfs:///a' and '/a' -> (None, '/a');
    a relative path stays relative (to /user/<user>)."""
    if dist_path.startswith("hdfs://"):
        authority, _, path = dist_path[len("hdfs://"):].partition("/")
        return authority or None, "/" + path.strip("/")
    if "://" in dist_path:
        raise ValueError(f"dist_path {dist_path!r}: give an HDFS path (hdfs:///user/me/deploy, "
                         "hdfs://namenode:8020/path or /user/me/deploy); the NameNode's web "
                         "address goes in webhdfs_url= or comes from hadoop_conf_dir=")
    return None, dist_path.rstrip("/") or "/"


def connect(dist_path: str, hadoop_conf_dir: str | None, webhdfs_url: str | None,
            resourcemanager_url: str | None, user: str | None) -> Cluster:
    """Resolve the addresses: explicit URLs first, then hadoop_conf_dir (or $HADOOP_CONF_DIR)."""
    conf = None
    conf_dir = hadoop_conf_dir or (None if webhdfs_url and resourcemanager_url
                                   else hadoop_conf.conf_dir_from_env())
    try:
        if conf_dir:
            conf = hadoop_conf.read_conf(conf_dir)
        authority, path = split_dist_path(dist_path)
        user = user or default_user()
        if not path.startswith("/"):
            path = f"/user/{user}/{path}"
        webhdfs = url_list(webhdfs_url) or (hadoop_conf.namenode_web_urls(conf, authority)
                                            if conf else [])
        rm_urls = url_list(resourcemanager_url) or (hadoop_conf.resourcemanager_web_urls(conf)
                                                    if conf else [])
    except (hadoop_conf.HadoopConfError, ValueError) as exc:
        raise HadoopError(str(exc)) from None
    if not webhdfs:
        raise HadoopError("no NameNode web address: give webhdfs_url= or hadoop_conf_dir=")
    if not rm_urls:
        raise HadoopError("no ResourceManager address: give resourcemanager_url= or hadoop_conf_dir=")
    fs_uri = f"hdfs://{authority}" if authority else (hadoop_conf.default_fs(conf) if conf else None)
    return Cluster(HdfsStorage(make_uri(webhdfs, user, path)), ResourceManager(rm_urls, user),
                   fs_uri, conf)


def check_dist_path(cluster: Cluster, probe_dir: str) -> None:
    """The NameNode answers and the user may write under dist_path (a probe file in probe_dir)."""
    root = cluster.root
    probe = f"{probe_dir}/.probe-{time.time_ns()}"
    try:
        root.makedirs()
        root.create_exclusive(probe, b"")
        root.delete(probe)
    except PermissionError as exc:
        raise HadoopError(f"no permission to write under dist_path {root.root} on HDFS as "
                          f"user {root.user!r}: {exc}") from None
    except StorageError as exc:
        raise HadoopError(str(exc)) from None


def check_yarn(cluster: Cluster, queue: str | None, sizes: dict[str, int]) -> Facts:
    """The ResourceManager answers, the queue exists, and each of `sizes` (container_size,
    am_memory in MB; num_vcores) fits the largest container the cluster grants."""
    rm = cluster.rm
    try:
        info = rm.info()
        if info.get("state") != "STARTED":
            raise HadoopError(f"the ResourceManager at {rm.urls[0]} is {info.get('state')}, not STARTED")
        if queue and queue not in (queues := rm.queues()):
            raise HadoopError(f"YARN queue {queue!r} does not exist; the scheduler has: "
                              + ", ".join(sorted(queues)))
        capability = rm.new_application()["maximum-resource-capability"]
        fs_uri = cluster.fs_uri or rm.conf("fs.defaultFS")
        classpath = (rm.conf("yarn.application.classpath")
                     or (cluster.conf or {}).get("yarn.application.classpath"))
    except YarnError as exc:
        raise HadoopError(str(exc)) from None
    limits = {"memory": int(capability["memory"]), "vcores": int(capability["vCores"])}
    for what, value in sizes.items():
        vcores = what == "num_vcores"
        limit = limits["vcores" if vcores else "memory"]
        if value > limit:
            unit, key = (("", "yarn.scheduler.maximum-allocation-vcores") if vcores
                         else (" MB", "yarn.scheduler.maximum-allocation-mb"))
            raise HadoopError(f"{what}={value}{unit} is more than the largest container this "
                              f"cluster grants: {limit}{unit} ({key})")
    if not fs_uri or not fs_uri.startswith("hdfs://"):
        raise HadoopError(f"cannot tell the cluster's HDFS address (fs.defaultFS is {fs_uri!r}): "
                          "give dist_path='hdfs://namenode:port/path' or hadoop_conf_dir=")
    entries = [c.strip() for c in (classpath or "").split(",") if c.strip()] or DEFAULT_CLASSPATH
    version = tuple(int(p) for p in str(info.get("hadoopVersion", "0.0")).split(".")[:2] if p.isdigit())
    return Facts(fs_uri.rstrip("/"), entries, version >= (3, 4), limits["memory"], limits["vcores"])
