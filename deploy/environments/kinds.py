"""Environment kinds by name: the `deploy.environments` entry-point group maps a kind
("local-async", "ssh", ...) to its class as 'module:Class', so a separate package can add a
backend by declaring one. The core resolves kinds through here, never by importing a backend.
"""
from __future__ import annotations

import importlib
from typing import Any

GROUP = "deploy.environments"
# what deploy itself declares (setup.cfg): used as they are when deploy runs from a source
# tree that was never installed, so no entry points exist
BUILTIN = {
    "local": "deploy.environments.local:Local",
    "local-async": "deploy.environments.local:LocalAsync",
    "ssh": "deploy.environments.ssh.cluster:SshCluster",
    "hadoop": "deploy.environments.hadoop.cluster:HadoopCluster",
    "ec2": "deploy.environments.ec2.cluster:Ec2Cluster",
    "dask": "deploy.environments.dask.cluster:DaskCluster",
    "ray": "deploy.environments.ray.cluster:RayCluster",
}
ALIASES = {"Local": "local", "LocalAsync": "local-async"}   # what users may type for a kind

_kinds: dict[str, str] | None = None


def kinds() -> dict[str, str]:
    """kind -> 'module:Class', from the entry-point group (read once)."""
    global _kinds
    if _kinds is None:
        from importlib.metadata import entry_points
        found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
        _kinds = {**BUILTIN, **found}
    return _kinds


def kind_class(kind: str) -> type:
    """The Environment class of `kind` (KeyError naming the known kinds when unknown)."""
    target = kinds().get(kind)
    if target is None:
        raise KeyError(f"unknown environment kind {kind!r}; known: {', '.join(sorted(kinds()))}")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def backend_package(kind: str) -> str:
    """The package of a kind's backend folder (where its `cli` module lives)."""
    module = kinds()[kind].partition(":")[0]
    parent = module.rpartition(".")[0]
    return module if parent == "deploy.environments" else parent


def from_dict(data: dict[str, Any]) -> Any:
    """Rebuild an environment from `Environment.to_dict()`."""
    kind = data.get("kind")
    if kind not in kinds():
        raise ValueError(f"unknown environment kind {kind!r}; known: {', '.join(sorted(kinds()))}")
    return kind_class(kind).from_settings(data["name"], data.get("settings") or {})
