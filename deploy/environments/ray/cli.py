"""`deploy envs create ray NAME --address ADDR`: define, check and save a Ray cluster."""
from __future__ import annotations

import argparse
from typing import Any


def add_parsers(kinds: Any) -> None:
    """Add this backend's `deploy envs create` parser to `kinds` (argparse subparsers)."""
    ray = kinds.add_parser("ray", help="an existing Ray cluster (each chunk a Ray task)")
    ray.add_argument("name")
    ray.add_argument("--address", required=True,
                     help="the head's GCS address host:6379, or ray://host:10001 (Ray Client)")
    ray.add_argument("--store", help="shared job store (s3://bucket/prefix or a path every node "
                                     "sees): jobs then outlive this machine's process; default: "
                                     "results come back to this machine")
    ray.add_argument("--package", action="append", default=[],
                     help="pip requirement for the tasks (Ray runtime_env); repeatable")
    ray.add_argument("--timeout", type=float, default=10.0,
                     help="seconds to wait for the head to answer (default 10)")
    ray.set_defaults(create=create)


def create(args: argparse.Namespace) -> Any:
    """The cluster the parsed arguments describe, checked, saved."""
    from .cluster import create as create_cluster
    return create_cluster(args.name, args.address, store=args.store,
                          additional_packages=args.package, timeout=args.timeout)
