"""The on-disk registry of jobs and environments: one sqlite file under the deploy home,
safe for concurrent processes, private to the user."""
from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Iterator

from . import config

_SCHEMA = """
create table if not exists jobs (
    name text primary key, id text not null, store text not null, environment text,
    function text, created real not null, final_status text);
create table if not exists environments (
    name text primary key, kind text not null, data text not null, saved real not null);
"""


@contextlib.contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    path = config.home() / "registry.db"
    fresh = not path.exists()
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        if fresh:
            os.chmod(path, 0o600)
        conn.execute("pragma journal_mode=wal")
        conn.execute("pragma synchronous=normal")   # WAL stays consistent; commits skip fsync
        conn.executescript(_SCHEMA)
        yield conn
    finally:
        conn.close()
