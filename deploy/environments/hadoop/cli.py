"""`deploy envs create hadoop NAME --dist-path PATH ...`: define, check and save a Hadoop cluster."""
from __future__ import annotations

import argparse
from typing import Any


def add_parsers(kinds: Any) -> None:
    """Add this backend's `deploy envs create` parser to `kinds` (argparse subparsers)."""
    hadoop = kinds.add_parser("hadoop", help="YARN containers, the job directory on HDFS")
    hadoop.add_argument("name")
    hadoop.add_argument("--dist-path", required=True,
                        help="HDFS directory for jobs and the runtime, e.g. hdfs:///user/me/deploy")
    hadoop.add_argument("--hadoop-conf-dir", help="directory of core-/hdfs-/yarn-site.xml "
                                                  "(default: $HADOOP_CONF_DIR)")
    hadoop.add_argument("--webhdfs-url", help="NameNode web address(es), http://host:9870[,...]")
    hadoop.add_argument("--resourcemanager-url", help="ResourceManager web address(es), "
                                                      "http://host:8088[,...]")
    hadoop.add_argument("--user", help="Hadoop user (default: $HADOOP_USER_NAME or the login)")
    hadoop.add_argument("--containers", type=int, help="YARN containers per job (default: 2)")
    hadoop.add_argument("--container-size", type=int, help="MB per container (default: 2048)")
    hadoop.add_argument("--vcores", type=int, help="cores (and workers) per container (default: 1)")
    hadoop.add_argument("--queue", help="YARN queue (default: the cluster's)")
    hadoop.add_argument("--python", help="Python on every node (default: python3)")
    hadoop.add_argument("--python-env", help="packed environment archive (.tar.gz), local or hdfs://")
    hadoop.add_argument("--distributed-shell-jar", help="DistributedShell jar, local or hdfs:// "
                                                        "(default: the nodes' own)")
    hadoop.add_argument("--package", action="append", default=[],
                        help="pip requirement or local wheel to install for the workers; repeatable")
    hadoop.add_argument("--pip-option", action="append", default=[],
                        help="option for that pip install, e.g. --pip-option=--no-index")
    hadoop.set_defaults(create=create)


def create(args: argparse.Namespace) -> Any:
    """The cluster the parsed arguments describe, checked, saved."""
    from .cluster import create as create_cluster
    options = {"pip_options": args.pip_option}
    for key in ("hadoop_conf_dir", "webhdfs_url", "resourcemanager_url", "user", "queue",
                "python", "python_env", "distributed_shell_jar"):
        if getattr(args, key):
            options[key] = getattr(args, key)
    for key, value in (("num_containers", args.containers), ("container_size", args.container_size),
                       ("num_vcores", args.vcores)):
        if value is not None:
            options[key] = value
    return create_cluster(args.name, dist_path=args.dist_path, additional_packages=args.package,
                          **options)
