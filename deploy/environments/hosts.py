"""Where a cluster's machines come from, apart from how they are reached.

An SSH cluster reaches hosts over SSH; which hosts those are is a `HostSource`'s business:
a fixed list (`StaticHosts`), or machines a backend starts and stops itself (EC2
instances). The source is plain data (its settings go to the registry); it never holds
connections.
"""
from __future__ import annotations

import abc
from typing import Any


class HostSource(abc.ABC):
    """The machines a cluster runs on, as SSH destinations."""

    @abc.abstractmethod
    def addresses(self) -> list[str]:
        """The hosts, each `[user@]host[:port]` or an ~/.ssh/config alias (acquiring them
        first when the source makes machines)."""

    def settings(self) -> dict[str, Any]:
        """What recreates the source (never secrets)."""
        return {}

    def release(self) -> None:
        """Give the machines back (a source that made them stops them); default: nothing."""


class StaticHosts(HostSource):
    """A fixed list of hosts: machines that exist and are yours."""

    def __init__(self, hosts: list[str] | str) -> None:
        hosts = [hosts] if isinstance(hosts, str) else list(hosts or [])
        if not hosts:
            raise ValueError("an SSH cluster needs at least one host")
        if not all(isinstance(h, str) and h.strip() for h in hosts):
            raise TypeError(f"hosts must be non-empty strings, got {hosts!r}")
        self.hosts = [h.strip() for h in hosts]

    def addresses(self) -> list[str]:
        return list(self.hosts)

    def settings(self) -> dict[str, Any]:
        return {"hosts": list(self.hosts)}
