"""The YARN logs of a job's containers, from the NodeManagers' REST API.

Which containers ran a job comes from the job directory (each container notes itself under
containers/ with its node's web address), and the ApplicationMaster's from the
ResourceManager. A container whose node no longer has its logs still shows the stderr tail
it recorded when it failed.
"""
from __future__ import annotations

import json
from typing import Any

from ...store import Storage
from ...jobdir import launch, layout
from .yarn import ResourceManager, YarnError


def _sources(store: Storage, rm: ResourceManager, files: tuple[str, ...]) -> list[tuple[str, str, dict, tuple]]:
    """(container id, NodeManager base URL, its record, log files) of the job's containers."""
    sources = []
    handle = launch.read(store).get("handle") or {}
    try:
        am_url = rm.app(handle["app"]).get("amContainerLogs") if handle.get("app") else None
    except (YarnError, KeyError):
        am_url = None
    if am_url:                      # http://node:port/node/containerlogs/<container>/<user>
        sources.append((am_url.rstrip("/").split("/")[-2], am_url.split("/node/")[0], {},
                        ("AppMaster.stderr",)))
    for name in store.list(layout.CONTAINERS):
        try:
            record = json.loads(store.get(layout.container(name)))
        except (FileNotFoundError, ValueError):
            continue
        sources.append((name, f"http://{record.get('node_http', '')}", record, files))
    return sources


def _fetch(url: str, user: str) -> str | None:
    import requests
    try:
        answer = requests.get(url, params={"user.name": user}, timeout=30)
    except requests.RequestException:
        return None
    return answer.text if answer.ok else None


def container_logs(store: Storage, rm: ResourceManager, user: str,
                   files: tuple[str, ...] = ("stdout", "stderr")) -> str:
    """Each container's log files (and the AM's stderr), one section per file."""
    sections = []
    for container, base, record, wanted in _sources(store, rm, files):
        for file in wanted:
            url = f"{base}/ws/v1/node/containerlogs/{container}/{file}"
            text: Any = _fetch(url, user)
            if text is None and file == "stderr" and record.get("stderr_tail"):
                text = f"(the tail it recorded)\n{record['stderr_tail']}"
            sections.append(f"=== {container} {file}\n"
                            + (text if text is not None else f"(unavailable: {url})"))
    return "\n".join(sections)
