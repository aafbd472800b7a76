"""A task's and a job's status names, as users see them (GraphLab's)."""
from __future__ import annotations

PENDING, RUNNING, COMPLETED, FAILED, CANCELED, UNKNOWN = (
    "Pending", "Running", "Completed", "Failed", "Canceled", "Unknown")
FINAL = (COMPLETED, FAILED, CANCELED)      # a job in one of these has ended
