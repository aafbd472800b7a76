"""Lets a package double as a registry object: `deploy.jobs['name']`, `deploy.jobs.list()`.

`deploy.jobs` and `deploy.environments` are both packages (code) and registries (what users
index); the package module forwards indexing and the registry verbs to the registry,
imported only on first use so that workers importing the package stay light.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class RegistryModule(types.ModuleType):
    _registry_target = ""

    def _registry(self) -> Any:
        module, _, name = self._registry_target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __getitem__(self, key: Any) -> Any:
        return self._registry()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._registry()

    def __len__(self) -> int:
        return len(self._registry())

    def __iter__(self):
        return iter(self._registry())


def make_registry_module(module_name: str, target: str, verbs: tuple[str, ...]) -> None:
    """Turn the package `module_name` into a front for the registry at 'module:attr'."""
    module = sys.modules[module_name]
    cls = type(f"{module_name}.registry", (RegistryModule,), {"_registry_target": target})
    module.__class__ = cls
    for verb in verbs:
        def forward(*args: Any, _verb: str = verb, **kwargs: Any) -> Any:
            return getattr(module._registry(), _verb)(*args, **kwargs)
        forward.__name__ = verb
        forward.__doc__ = f"deploy registry verb {verb!r}: see {target}."
        setattr(module, verb, forward)
