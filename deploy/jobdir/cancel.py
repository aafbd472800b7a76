"""cancel.json: why a job was stopped (canceled by a user, or fail_fast), in the words every
Canceled row gives."""
from __future__ import annotations

import json
from typing import Any

from . import layout

CANCELED = "the job was canceled"


def reason(store: Any) -> str:
    """The Canceled rows' message for the marker in `store` (a Storage)."""
    try:
        info = json.loads(store.get(layout.CANCEL))
    except (FileNotFoundError, ValueError):
        return CANCELED
    if isinstance(info, dict) and info.get("reason") == "fail_fast":
        return f"fail_fast: task {info.get('task')} failed"
    return CANCELED
