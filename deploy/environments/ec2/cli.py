"""`deploy envs create ec2 NAME --s3-path S3 [--instance-type T | --cpu-per-task N --memory-gb-per-task G]`:
launch (or reuse) an EC2 cluster's instances, prepare them and save it; `deploy envs stop NAME`
ends it. AWS credentials come from the standard chain only (never an argument: argv is public)."""
from __future__ import annotations

import argparse
from typing import Any


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"bad tag {text!r}: write KEY=VALUE")
    return key, value


def add_parsers(kinds: Any) -> None:
    """Add this backend's `deploy envs create` parser to `kinds` (argparse subparsers)."""
    ec2 = kinds.add_parser("ec2", help="EC2 instances (cheapest fit or a given type), jobs on S3")
    ec2.add_argument("name")
    ec2.add_argument("--s3-path", required=True, help="s3://bucket/prefix for jobs and the cluster's state")
    ec2.add_argument("--region", default="us-west-2", help="default: us-west-2")
    what = ec2.add_argument_group("instances (a type, or the cheapest that fits each task)")
    what.add_argument("--instance-type", help="e.g. m5.xlarge (on-demand; one task per vCPU)")
    what.add_argument("--cpu-per-task", type=float, help="vCPUs each task needs (default 1)")
    what.add_argument("--memory-gb-per-task", type=float, help="GB each task needs (default 2)")
    what.add_argument("--interruption-threshold", type=float, default=15.0,
                      help="highest spot interruption chance in percent (0: on-demand only; default 15)")
    how_many = ec2.add_mutually_exclusive_group()
    how_many.add_argument("--num-hosts", type=int, help="instances (default 1)")
    how_many.add_argument("--num-concurrent-tasks", type=int, help="tasks at once (instances to fit)")
    ec2.add_argument("--idle-shutdown-timeout", type=float, default=1800.0,
                     help="seconds without work before an instance terminates itself (negative: never)")
    net = ec2.add_argument_group("network")
    net.add_argument("--security-group", help="group name: used if it exists, else created")
    net.add_argument("--security-group-id", help="an existing group to use")
    net.add_argument("--cidr-ip", help="address range admitted to SSH (default: the VPC's)")
    net.add_argument("--subnet-id", help="default: a default subnet of the default VPC")
    ec2.add_argument("--tag", action="append", type=_tag, default=[], help="KEY=VALUE on everything made")
    ec2.add_argument("--image-id", help="default: the region's current Amazon Linux")
    ec2.add_argument("--ssh-user", help="default: ec2-user")
    ec2.add_argument("--price-file", help="JSON prices for air-gapped use (see the README)")
    ec2.add_argument("--package", action="append", default=[], help="pip requirement for the workers; repeatable")
    ec2.add_argument("--pip-option", action="append", default=[], help="option for pip install; repeatable")
    ec2.add_argument("--python", default="python3", help="Python on the instances (default: python3)")
    ec2.set_defaults(create=create)


def create(args: argparse.Namespace) -> Any:
    """The cluster the parsed arguments describe, its instances running, saved."""
    from .cluster import create as create_cluster
    from .config import Ec2Config
    config = Ec2Config(region=args.region, instance_type=args.instance_type,
                       security_group=args.security_group, security_group_id=args.security_group_id,
                       tags=dict(args.tag), cidr_ip=args.cidr_ip, subnet_id=args.subnet_id,
                       cpu_per_task=args.cpu_per_task, memory_gb_per_task=args.memory_gb_per_task,
                       interruption_probability_threshold=args.interruption_threshold,
                       image_id=args.image_id, ssh_user=args.ssh_user, price_file=args.price_file)
    return create_cluster(args.name, args.s3_path, config, num_hosts=args.num_hosts,
                          num_concurrent_tasks=args.num_concurrent_tasks,
                          idle_shutdown_timeout=args.idle_shutdown_timeout,
                          additional_packages=args.package, pip_options=args.pip_option, python=args.python)
