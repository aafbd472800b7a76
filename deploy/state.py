"""The on-disk registry of jobs and environments: one sqlite file under the deploy home,
safe for concurrent processes, private to the user."""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from typing import Iterator

from . import config

_SCHEMA = """
create table if not exists jobs (
    name text primary key, id text not null, store text not null, environment text,
    function text, created real not null, final_status text);
create table if not exists environments (
    name text primary key, kind text not null, data text not null, saved real not null);
"""


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch a registry to WAL (once: the mode is kept in the file). Processes creating
    the file at the same moment can get 'database is locked' here without sqlite's busy
    wait, so this waits itself."""
    deadline = time.monotonic() + 30
    while conn.execute("pragma journal_mode").fetchone()[0].lower() != "wal":
        try:
            conn.execute("pragma journal_mode=wal")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


_open = threading.local()        # this thread's connection: (pid, path, inode, connection)


@contextlib.contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    """The registry, open. One connection per process and thread is kept: opening one
    and preparing the schema cost more than the statements a job makes."""
    path = config.home() / "registry.db"
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        inode = None
    cached = getattr(_open, "db", None)
    if cached is None or cached[:3] != (os.getpid(), str(path), inode) or inode is None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        if inode is None:
            os.chmod(path, 0o600)
        _use_wal(conn)
        conn.execute("pragma synchronous=normal")   # WAL stays consistent; commits skip fsync
        conn.executescript(_SCHEMA)
        if cached is not None and cached[0] == os.getpid():
            cached[3].close()
        cached = _open.db = (os.getpid(), str(path), os.stat(path).st_ino, conn)
    yield cached[3]
