"""`deploy envs create ssh NAME --host H [--host H ...] ...`: define, check and save an SSH cluster."""
from __future__ import annotations

import argparse
from typing import Any


def add_parsers(kinds: Any) -> None:
    """Add this backend's `deploy envs create` parser to `kinds` (argparse subparsers)."""
    ssh = kinds.add_parser("ssh", help="machines reachable by SSH")
    ssh.add_argument("name")
    ssh.add_argument("--host", action="append", required=True,
                     help="[user@]host[:port] or an ~/.ssh/config alias; repeat for each host")
    ssh.add_argument("--key", help="private key file (default: ssh config, ssh-agent, ~/.ssh/id_*)")
    ssh.add_argument("--workers-per-host", type=int, help="default: each host's core count")
    ssh.add_argument("--package", action="append", default=[],
                     help="pip requirement or local wheel for the hosts' venv; repeatable")
    ssh.add_argument("--pip-option", action="append", default=[],
                     help="option for pip install on the hosts, e.g. --pip-option=--no-index")
    ssh.add_argument("--store", help="shared job store (s3://bucket/prefix or a path all hosts "
                                     "see); default: relayed from this machine")
    ssh.add_argument("--accept-new-host-keys", action="store_true",
                     help="record the keys of hosts not in known_hosts (never changed keys)")
    ssh.add_argument("--ssh-config", help="ssh config file (default: ~/.ssh/config)")
    ssh.add_argument("--known-hosts", help="known_hosts file (default: from the ssh config)")
    ssh.add_argument("--python", help="Python on the hosts (default: python3)")
    ssh.add_argument("--forward-env", action="append", default=[],
                     help="environment variable to pass from here to the workers; repeatable")
    ssh.set_defaults(create=create)


def create(args: argparse.Namespace) -> Any:
    """The cluster the parsed arguments describe, its hosts checked, saved."""
    from .cluster import create as create_cluster
    options = {"pip_options": args.pip_option, "forward_env": args.forward_env}
    for key in ("ssh_config", "known_hosts", "python"):
        if getattr(args, key):
            options[key] = getattr(args, key)
    return create_cluster(
        args.name, args.host, key_filename=args.key, workers_per_host=args.workers_per_host,
        additional_packages=args.package, store=args.store,
        host_key_policy="accept-new" if args.accept_new_host_keys else "reject", **options)
