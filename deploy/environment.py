"""`deploy.environment.Local` and `deploy.environment.LocalAsync` (GraphLab's names)."""
from __future__ import annotations

from typing import Any

from .environments import Environment, kind_class


def __getattr__(name: str) -> Any:
    if name == "Local":
        return kind_class("local")
    if name == "LocalAsync":
        return kind_class("local-async")
    raise AttributeError(f"module 'deploy.environment' has no attribute {name!r}")


__all__ = ["Environment", "Local", "LocalAsync"]
