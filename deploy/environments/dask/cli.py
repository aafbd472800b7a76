"""`deploy envs create dask NAME --scheduler ADDR`: define, check and save a Dask cluster."""
from __future__ import annotations

import argparse
from typing import Any


def add_parsers(kinds: Any) -> None:
    """Add this backend's `deploy envs create` parser to `kinds` (argparse subparsers)."""
    dask = kinds.add_parser("dask", help="an existing Dask cluster (its scheduler's address)")
    dask.add_argument("name")
    dask.add_argument("--scheduler", required=True,
                      help="the scheduler's address, e.g. tcp://10.0.0.5:8786")
    dask.add_argument("--store", help="shared job store (s3://bucket/prefix, hdfs://..., or a "
                                      "path every worker sees); default: on this machine, results "
                                      "coming back through Dask")
    dask.add_argument("--package", action="append", default=[],
                      help="pip requirement the workers install (Dask's PipInstall); repeatable")
    dask.add_argument("--pip-option", action="append", default=[],
                      help="option for that pip install, e.g. --pip-option=--no-index")
    dask.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait for the scheduler (default: 10)")
    dask.set_defaults(create=create)


def create(args: argparse.Namespace) -> Any:
    """The cluster the parsed arguments describe, checked against its scheduler, saved."""
    from .cluster import create as create_cluster
    return create_cluster(args.name, args.scheduler, store=args.store,
                          additional_packages=args.package, pip_options=args.pip_option,
                          timeout=args.timeout)
