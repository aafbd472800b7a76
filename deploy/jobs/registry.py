"""deploy.jobs: the jobs this user created, by name or index, newest first."""
from __future__ import annotations

import fnmatch
import functools
import sqlite3
import time
from typing import TYPE_CHECKING

from .. import state
from ..errors import JobNotFound
from ..jobdir.status import FINAL

if TYPE_CHECKING:
    import pandas
    from .job import Job


class JobRegistry:
    """`deploy.jobs.list()`, `deploy.jobs['name']` or `[index]`, `deploy.jobs.delete(...)`."""

    def reserve(self, name: str, job_id: str, store_uri: str, environment: str, function: str) -> str:
        """Record a new job under a unique name: `name`, or `name-2`, `name-3`... when taken."""
        with state.connect() as db:
            for n in range(1, 10000):
                candidate = name if n == 1 else f"{name}-{n}"
                try:
                    db.execute("insert into jobs (name, id, store, environment, function, created) "
                               "values (?, ?, ?, ?, ?, ?)",
                               (candidate, job_id, store_uri, environment, function, time.time()))
                    return candidate
                except sqlite3.IntegrityError:
                    continue
        raise ValueError(f"too many jobs named {name!r}")

    def forget(self, name: str) -> None:
        with state.connect() as db:
            db.execute("delete from jobs where name=?", (name,))

    def set_final_status(self, name: str, status: str | None) -> None:
        """Keep a finished job's status for listing (None: it runs again)."""
        with state.connect() as db:
            db.execute("update jobs set final_status=? where name=?", (status, name))

    def _rows(self) -> list[tuple]:
        with state.connect() as db:
            return db.execute("select name, id, store, environment, function, created, final_status "
                              "from jobs where store != '' order by created desc, rowid desc").fetchall()

    def names(self) -> list[str]:
        return [r[0] for r in self._rows()]

    def _open(self, row: tuple) -> "Job":
        from ..store import open_store
        from .job import Job
        return Job(open_store(row[2]), name=row[0], job_id=row[1],
                   on_resume=functools.partial(self.set_final_status, row[0], None))

    def __getitem__(self, key: str | int) -> "Job":
        rows = self._rows()
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError("deploy.jobs[...] takes a job name or an index")
        if isinstance(key, int):
            if not -len(rows) <= key < len(rows):
                raise JobNotFound(f"no job at index {key}: there are {len(rows)} jobs")
            return self._open(rows[key])
        for row in rows:
            if row[0] == key:
                return self._open(row)
        close = [r[0] for r in rows if key.lower() in r[0].lower()][:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise JobNotFound(f"no job named {key!r}{hint} (see deploy.jobs.list())")

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __len__(self) -> int:
        return len(self._rows())

    def __iter__(self):
        return (self._open(r) for r in self._rows())

    def list(self) -> "pandas.DataFrame":
        """One row per job, newest first: index, name, environment, status, created."""
        import pandas as pd
        records = []
        for i, row in enumerate(self._rows()):
            status = row[6]
            if status is None:
                status = self._open(row).get_status()
                if status in FINAL:         # a finished job stays so until resumed: kept
                    self.set_final_status(row[0], status)
            records.append({"index": i, "name": row[0], "environment": row[3], "status": status,
                            "created": pd.Timestamp(row[5], unit="s", tz="UTC").tz_convert(None)
                            .floor("s")})
        return pd.DataFrame(records, columns=["index", "name", "environment", "status", "created"])

    def delete(self, name: str | None = None, pattern: str | None = None) -> list[str]:
        """Delete jobs (their directories and registry entries) by exact name or glob
        pattern; running ones are canceled first. Returns the names deleted."""
        if (name is None) == (pattern is None):
            raise ValueError("give exactly one of name= or pattern=")
        for what, value in (("name", name), ("pattern", pattern)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"jobs.delete({what}=) takes a job {what} (str), got "
                                f"{type(value).__name__} {value!r}; for the job at an index: "
                                "deploy.jobs.delete(name=deploy.jobs[i].name)")
        if name is not None:
            targets = [self[name]]
        else:
            targets = [self._open(r) for r in self._rows() if fnmatch.fnmatchcase(r[0], pattern)]
        for job in targets:
            job.delete()
            self.forget(job.name)
        return [j.name for j in targets]

    def __repr__(self) -> str:
        return repr(self.list())


jobs = JobRegistry()
