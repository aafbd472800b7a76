"""SSH clusters: your machines over SSH (paramiko). `cluster` is the environment (SshCluster,
create, load), `connect` reaches hosts, `runtime` ships deploy to them, `session` is the
client's end of a host's agent and `agent` what runs on the host.

The package loads nothing until a name is used: the agent runs on hosts without paramiko.
"""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"SshCluster": "cluster", "create": "cluster", "load": "cluster", "HostError": "connect"}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)


__all__ = sorted(_NAMES)
