"""Hadoop/YARN clusters: `cluster` is the environment (HadoopCluster, create, load),
`connect` reaches HDFS and the ResourceManager, `stage` and `app` put the runtime on HDFS and
submit the application (`distributed_shell`, `yarn`), `bootstrap` and `container` run in
the YARN containers, `logs` reads what they left.

The package loads nothing until a name is used: containers run without the client's libraries.
"""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"HadoopCluster": "cluster", "create": "cluster", "load": "cluster",
          "HadoopError": "connect"}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)


__all__ = sorted(_NAMES)
