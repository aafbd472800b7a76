"""Where workers run. `deploy.environment.Local`, `deploy.environment.LocalAsync`, and the
cluster environments, each in its own module, loaded only when used.

The package is also the registry of saved environments: `deploy.environments.list()`,
`deploy.environments['name']`, `deploy.environments.delete('name')`.
"""
from __future__ import annotations

import importlib
from typing import Any

from .._registry_module import make_registry_module
from .base import Environment, Launch

# kind -> "module:class"; the core resolves environments by name, never by import.
KINDS = {
    "local": "deploy.environments.local:Local",
    "local-async": "deploy.environments.local:LocalAsync",
    "ssh": "deploy.environments.ssh.cluster:SshCluster",
    "hadoop": "deploy.environments.hadoop.cluster:HadoopCluster",
}
# what users may type for a kind
ALIASES = {"Local": "local", "LocalAsync": "local-async"}


def kind_class(kind: str) -> type:
    module, _, cls = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)


def from_dict(data: dict[str, Any]) -> Environment:
    """Rebuild an environment from `Environment.to_dict()`."""
    kind = data.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown environment kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    return kind_class(kind).from_settings(data["name"], data.get("settings") or {})


__all__ = ["Environment", "Launch", "from_dict", "kind_class"]


make_registry_module(__name__, "deploy.environments.registry:environments", ("list", "delete", "names", "save"))
