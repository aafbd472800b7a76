"""`deploy envs create local NAME` and `deploy envs create local-async NAME [--workers N]`."""
from __future__ import annotations

import argparse
from typing import Any


def add_parsers(kinds: Any) -> None:
    """Add this backend's `deploy envs create` parsers to `kinds` (argparse subparsers)."""
    local = kinds.add_parser("local", help="tasks in the calling process, one after another")
    local.add_argument("name")
    local.set_defaults(create=lambda args: _local(args.name))
    pool = kinds.add_parser("local-async", help="worker processes on this machine")
    pool.add_argument("name")
    pool.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    pool.set_defaults(create=_local_async)


def _local(name: str) -> Any:
    from . import Local
    return Local(name).save()


def _local_async(args: argparse.Namespace) -> Any:
    from . import LocalAsync
    return LocalAsync(args.name, num_workers=args.workers).save()
