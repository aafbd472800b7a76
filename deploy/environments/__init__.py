"""Where workers run. `deploy.environment.Local`, `deploy.environment.LocalAsync`, and the
cluster environments, each in its own folder, loaded only when used (see `kinds`).

The package is also the registry of saved environments: `deploy.environments.list()`,
`deploy.environments['name']`, `deploy.environments.delete('name')`.
"""
from __future__ import annotations

from .._registry_module import make_registry_module
from .base import Environment, Launch
from .kinds import from_dict, kind_class

__all__ = ["Environment", "Launch", "from_dict", "kind_class"]


make_registry_module(__name__, "deploy.environments.registry:environments", ("list", "delete", "names", "save"))
