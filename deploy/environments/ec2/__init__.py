"""EC2 clusters: instances launched (cheapest fit), reused and ended by deploy, reached over
the SSH transport. `cluster` is the environment (Ec2Cluster, create, load), `config` its
settings (Ec2Config), `provision` what it creates besides instances, `instances` launching
them with their cost, `hostkeys` pinning their host keys, `pricing` and `fit` the cheapest
fit, `idle` the agent that ends an idle instance, `cli` its `deploy envs create ec2`.

The package loads nothing until a name is used: the idle agent runs on instances.
"""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"Ec2Cluster": "cluster", "create": "cluster", "load": "cluster", "Ec2Config": "config",
          "Ec2Error": "config"}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)


__all__ = sorted(_NAMES)
