"""Dask clusters: an existing Dask scheduler as an environment. `cluster` is the client's
side (DaskCluster, create, load), `task` what runs in the Dask workers, `cli` the
`deploy envs create dask` parser.

The package loads nothing until a name is used: Dask workers import only `task`.
"""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"DaskCluster": "cluster", "create": "cluster", "load": "cluster",
          "DaskClusterError": "cluster"}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)


__all__ = sorted(_NAMES)
