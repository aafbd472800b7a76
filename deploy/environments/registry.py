"""deploy.environments: the environments saved by name, private to the user."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from .. import state
from ..errors import EnvironmentNotFound
from .kinds import ALIASES, from_dict, kind_class, kinds

if TYPE_CHECKING:
    import pandas
    from .base import Environment


class EnvironmentRegistry:
    """`deploy.environments.list()`, `['name']`, `.delete('name')`."""

    def save(self, env: Environment) -> None:
        data = json.dumps(env.to_dict())
        with state.connect() as db:
            db.execute("insert or replace into environments (name, kind, data, saved) values (?, ?, ?, ?)",
                       (env.name, env.kind, data, time.time()))

    def _rows(self) -> list[tuple]:
        with state.connect() as db:
            return db.execute("select name, kind, data, saved from environments order by name").fetchall()

    def __getitem__(self, name: str) -> Environment:
        if not isinstance(name, str):
            raise TypeError("deploy.environments[...] takes an environment name")
        for row in self._rows():
            if row[0] == name:
                return from_dict(json.loads(row[2]))
        kind = ALIASES.get(name, name if name in kinds() else None)
        env = kind_class(kind).default() if kind else None
        if env is not None:
            return env              # a kind that needs no settings, named by its kind
        known = [r[0] for r in self._rows()] + list(ALIASES)
        raise EnvironmentNotFound(f"no environment named {name!r}; known: {', '.join(known)}")

    def __contains__(self, name: str) -> bool:
        return any(r[0] == name for r in self._rows())

    def load(self, name: str, cls: type) -> Environment:
        """The saved environment `name`, which must be a `cls` (TypeError otherwise)."""
        env = self[name]
        if not isinstance(env, cls):
            raise TypeError(f"environment {name!r} is a {type(env).__name__}, not a {cls.__name__}")
        return env

    def names(self) -> list[str]:
        return [r[0] for r in self._rows()]

    def list(self) -> "pandas.DataFrame":
        """One row per saved environment: name, kind, settings."""
        import pandas as pd
        records = [{"name": r[0], "kind": r[1],
                    "settings": json.dumps(json.loads(r[2]).get("settings") or {}, sort_keys=True)}
                   for r in self._rows()]
        return pd.DataFrame(records, columns=["name", "kind", "settings"])

    def delete(self, name: str) -> None:
        """Forget a saved environment (stopping what it holds, e.g. cluster instances)."""
        env = self[name]
        if name not in self:
            raise EnvironmentNotFound(f"no saved environment named {name!r}")
        env.stop()
        with state.connect() as db:
            db.execute("delete from environments where name=?", (name,))

    def __repr__(self) -> str:
        return repr(self.list())


environments = EnvironmentRegistry()
