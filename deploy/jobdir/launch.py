"""launch.json: how an environment started a job's workers (its settings and the handle it
returned), for alive, cancel and any process that reopens the job."""
from __future__ import annotations

import json
import time
from typing import Any

from . import layout


def encode(environment: dict[str, Any], handle: dict[str, Any]) -> bytes:
    """The record of a launch that just happened."""
    return json.dumps({"environment": environment, "handle": handle, "time": time.time()}).encode()


def read(store: Any) -> dict[str, Any]:
    """The record in `store` (a Storage), or {} before the workers were started or when it
    is unreadable."""
    try:
        return json.loads(store.get(layout.LAUNCH))
    except (FileNotFoundError, ValueError):
        return {}
