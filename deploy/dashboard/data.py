"""What the dashboard shows, read from the registry and the job directories, cached per job.

A job's rows are kept as numpy columns (task, status, times, attempt, worker), rebuilt only
when new results were published, so sorting, filtering and paging a 1,000,000-task job is
an argsort of arrays; row dicts are made only for the page asked for.
"""
from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from ..errors import DeployError
from ..jobdir.results import C_CANCELED, C_FAILED, C_OK
from ..jobdir.status import CANCELED, COMPLETED, FAILED, FINAL, PENDING, RUNNING, UNKNOWN
from ..jobs.registry import jobs as job_registry

SUMMARY_SECONDS = 0.5       # a running job's summary is looked at again after this
RELAUNCH_SECONDS = 5.0      # a finished job is checked this often for a resume from elsewhere
TABLE_SECONDS = 2.0         # ... its table of rows rebuilt at most this often
COST_SECONDS = 10.0         # ... its cost (which reads every row) estimated at most this often
PAGE_LIMIT = 200
C_RUNNING, C_PENDING = ord("R"), ord("P")
CODE_OF = {COMPLETED: C_OK, FAILED: C_FAILED, CANCELED: C_CANCELED, RUNNING: C_RUNNING,
           PENDING: C_PENDING}
NAME_OF = {v: k for k, v in CODE_OF.items()}
SORTS = ("task", "status", "start_time", "run_time", "attempt", "worker")
SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "passphrase",
                "private_key", "access_key", "session_key", "api_key")


class JobView:
    """One job as the dashboard sees it. Every use holds `lock`: a Job is not thread-safe."""

    def __init__(self, row: tuple) -> None:
        self.name, self.id, self.store_uri, self.environment, self.function, self.created = row[:6]
        self.row = row
        self.job = job_registry._open(row)
        self.lock = threading.RLock()
        self._checked_at = 0.0
        self._summary: dict | None = None
        self._summary_at = 0.0
        self._table: dict | None = None
        self._table_key: tuple | None = None
        self._table_at = 0.0
        self._orders: dict[tuple, Any] = {}
        self._timeline: tuple[tuple, Any] | None = None
        self._png: tuple[tuple, bytes] | None = None
        self._ends: dict[int, float] = {}
        self._stripped: set[int] = set()
        self._cost_value: tuple[float, float | None] | None = None    # (when, cost)

    # -- summary ------------------------------------------------------------------------

    def summary(self, fresh: bool = False) -> dict:
        """Name, status, progress, times and cost; a final job's is kept."""
        with self.lock:
            now = time.monotonic()
            cached = self._summary
            if cached is not None and cached["status"] in FINAL and not fresh and \
                    now - self._checked_at > RELAUNCH_SECONDS:
                self._checked_at = now
                if self._relaunched(cached):
                    cached = None
            if cached is not None and not fresh and (
                    cached["status"] in FINAL or now - self._summary_at < SUMMARY_SECONDS):
                return cached
            try:
                self._summary = self._make_summary()
            except (OSError, ValueError, KeyError, DeployError) as exc:    # one unreadable job
                self._summary = self._unknown(f"cannot read job {self.name!r}: {exc}")
            self._summary_at = now
            return self._summary

    def _relaunched(self, cached: dict) -> bool:
        """Whether a finished job was resumed by another process (a new launch record):
        then this view's Job, which keeps published results, starts afresh."""
        try:
            launch = self.job._launch()
        except Exception:           # unreadable now: keep what is shown
            return False
        started = float(launch.get("time")) if launch and launch.get("time") else None
        if started is None or cached.get("started") is None or abs(started - cached["started"]) < 1e-6:
            return False
        self.job = job_registry._open(self.row)
        self._table, self._timeline, self._png, self._orders = None, None, None, {}
        self._ends.clear()
        self._stripped.clear()
        return True

    def peek(self) -> dict | None:
        """The summary without waiting for a lock another request holds (None: never made)."""
        if self.lock.acquire(blocking=False):
            try:
                return self.summary()
            finally:
                self.lock.release()
        return self._summary

    def _make_summary(self) -> dict:
        job = self.job
        base = {"name": self.name, "environment": self.environment, "function": self.function,
                "created": self.created}
        status = job.get_status()
        self._drop_values()
        if status == UNKNOWN:
            return self._unknown(job._error)
        spec = job.spec
        counts = job._counts()
        total = spec.task_count
        done = sum(v for k, v in counts.items() if k in FINAL)
        launch = job._launch()
        started = float(launch.get("time")) if launch and launch.get("time") else spec.created
        ended = None
        if status in FINAL:         # the last task's end, else when it was canceled
            ended = self._ended() or (job._cancel_info() or {}).get("time")
        if status in FINAL and not ended:
            duration = None
        else:
            duration = (ended or time.time()) - started if started else None
        env = spec.environment or {}
        return {**base, "status": status, "kind": env.get("kind"), "total": total, "done": done,
                "counts": {k: v for k, v in counts.items() if v}, "started": started,
                "ended": ended, "duration": max(duration, 0.0) if duration is not None else None,
                "cost": self._cost(status), "chunks": spec.chunk_count, "error": None,
                "has_combiner": spec.has_combiner}

    def _cost(self, status: str) -> float | None:
        """The estimated cost, again only every COST_SECONDS while the job runs."""
        now = time.monotonic()
        if self._cost_value is None or status in FINAL or now - self._cost_value[0] > COST_SECONDS:
            self._cost_value = (now, _cost(self.job))
        return self._cost_value[1]

    def _unknown(self, error: str | None) -> dict:
        return {"name": self.name, "environment": self.environment, "function": self.function,
                "created": self.created, "status": UNKNOWN, "error": error, "total": 0,
                "done": 0, "counts": {}, "started": None, "ended": None, "duration": None,
                "cost": None}

    def _drop_values(self) -> None:
        """Forget the tasks' return values as results are read: the dashboard never shows
        them, and a job's values can be far larger than its rows."""
        for chunk, got in self.job._chunks.items():
            if chunk not in self._stripped:
                got.values = []
                self._stripped.add(chunk)

    def _ended(self) -> float | None:
        """The last end time of any row (per chunk, kept: published results never change)."""
        job = self.job
        for chunk, got in job._chunks.items():
            if chunk not in self._ends:
                self._ends[chunk] = max(got.end, default=0.0)
        combined = job._combined_result()
        last = max(list(self._ends.values()) + [max(combined.end, default=0.0) if combined else 0.0],
                   default=0.0)
        return last or None

    # -- rows ---------------------------------------------------------------------------

    def _rows_table(self) -> dict:
        """Columns of every task's row (published, or Pending/Running), rebuilt when results
        came (at most every TABLE_SECONDS while the job runs)."""
        import numpy as np
        job, summary = self.job, self.summary()
        key = (len(job._chunks), summary["status"], job._combined is not None)
        now = time.monotonic()
        if self._table is not None and (key == self._table_key or (
                summary["status"] not in FINAL and now - self._table_at < TABLE_SECONDS)):
            return self._table
        spec = job.spec
        claimed = set(job._attempts()) if len(job._chunks) < spec.chunk_count else set()
        parts: dict[str, list] = {k: [] for k in ("task", "status", "start", "end", "attempt",
                                                  "chunk", "pos", "worker")}
        workers: dict[str, int] = {}

        def add(chunk: int, got: Any, tasks: Any) -> None:
            n = len(tasks)
            parts["task"].append(np.arange(tasks.start, tasks.stop, dtype=np.int64)
                                 if isinstance(tasks, range) else np.asarray(tasks, dtype=np.int64))
            parts["chunk"].append(np.full(n, chunk, dtype=np.int64))
            parts["pos"].append(np.arange(n, dtype=np.int64))
            if got is None:
                code = C_RUNNING if chunk in claimed else C_PENDING
                parts["status"].append(np.full(n, code, dtype=np.uint8))
                parts["start"].append(np.full(n, np.nan))
                parts["end"].append(np.full(n, np.nan))
                parts["attempt"].append(np.zeros(n, dtype=np.int32))
                parts["worker"].append(np.full(n, -1, dtype=np.int32))
                return
            start = np.frombuffer(got.start, dtype=np.float64, count=n).copy()
            end = np.frombuffer(got.end, dtype=np.float64, count=n).copy()
            start[start == 0] = np.nan
            end[end == 0] = np.nan
            parts["status"].append(np.frombuffer(bytes(got.status), dtype=np.uint8, count=n))
            parts["start"].append(start)
            parts["end"].append(end)
            parts["attempt"].append(np.frombuffer(got.attempt, dtype=np.int32, count=n))
            label = f"{got.host}/{got.worker}"
            parts["worker"].append(np.full(n, workers.setdefault(label, len(workers)), dtype=np.int32))

        for chunk in range(spec.chunk_count):
            got = job._chunks.get(chunk)
            add(chunk, got, got.index if got is not None else spec.chunk_tasks(chunk))
        if spec.has_combiner:
            combined = job._combined_result()
            add(spec.chunk_count, combined, [spec.task_count])
        table = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        names = sorted(workers)
        rank = np.zeros(max(len(workers), 1), dtype=np.int32)
        for i, label in enumerate(names):
            rank[workers[label]] = i
        table["worker_rank"] = np.where(table["worker"] >= 0, rank[np.maximum(table["worker"], 0)], -1)
        self._table, self._table_key, self._table_at, self._orders = table, key, now, {}
        return table

    def page(self, sort: str = "task", desc: bool = False, status: str | None = None,
             offset: int = 0, limit: int = 50) -> dict:
        """One page of metrics rows, sorted and filtered over the whole job."""
        import numpy as np
        if sort not in SORTS:
            raise ValueError(f"cannot sort by {sort!r}; one of {', '.join(SORTS)}")
        if status is not None and status not in CODE_OF:
            raise ValueError(f"no status {status!r}")
        limit = max(1, min(int(limit), PAGE_LIMIT))
        offset = max(0, int(offset))
        with self.lock:
            table = self._rows_table()
            key = (sort, desc, status)
            order = self._orders.get(key)
            if order is None:
                rows = (np.flatnonzero(table["status"] == CODE_OF[status]) if status
                        else np.arange(len(table["task"])))
                if sort == "task":
                    values = table["task"][rows]
                elif sort == "status":
                    values = table["status"][rows].astype(np.int64) * (1 << 40) + table["task"][rows]
                elif sort == "start_time":
                    values = table["start"][rows]
                elif sort == "run_time":
                    values = table["end"][rows] - table["start"][rows]
                elif sort == "attempt":
                    values = table["attempt"][rows]
                else:
                    values = table["worker_rank"][rows]
                values = np.asarray(values, dtype=np.float64)
                if desc:            # descending, missing values last all the same
                    values = np.where(np.isnan(values), np.inf, -values)
                order = rows[np.argsort(values, kind="stable")]
                self._orders[key] = order
            picked = order[offset:offset + limit]
            out = [self._row(int(table["chunk"][i]), int(table["pos"][i]), int(table["task"][i]),
                             int(table["status"][i])) for i in picked]
            return {"total": int(len(order)), "offset": offset, "limit": limit, "rows": out,
                    "sort": sort, "desc": desc, "status": status}

    def _row(self, chunk: int, pos: int, task: int, code: int, traceback: bool = False) -> dict:
        job, spec = self.job, self.job.spec
        got = job._chunks.get(chunk) if chunk < spec.chunk_count else job._combined_result()
        name = spec.combiner_task_name() if chunk == spec.chunk_count else spec.task_name(task)
        if got is None or code in (C_RUNNING, C_PENDING):
            return {"task_name": name, "task_index": task, "status": NAME_OF[code]}
        row = got.row(pos, lambda _: name)
        row["task_index"] = task
        row["has_traceback"] = bool(row.get("exception_traceback"))
        if not traceback:
            row.pop("exception_traceback", None)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}

    def failures(self, offset: int = 0, limit: int = 20) -> dict:
        """The tasks that failed, in task order, each with its exception and traceback."""
        with self.lock:
            table = self._rows_table()
            import numpy as np
            rows = np.flatnonzero(table["status"] == C_FAILED)
            limit = max(1, min(int(limit), PAGE_LIMIT))
            picked = rows[max(0, int(offset)):max(0, int(offset)) + limit]
            out = [self._row(int(table["chunk"][i]), int(table["pos"][i]), int(table["task"][i]),
                             C_FAILED, traceback=True) for i in picked]
            return {"total": int(len(rows)), "offset": int(offset), "rows": out}

    def task(self, index: int) -> dict:
        """One task's whole row (traceback included) and its captured output."""
        with self.lock:
            job, spec = self.job, self.job.spec
            self._rows_table()
            if spec.has_combiner and index == spec.task_count:
                chunk, name, got = spec.chunk_count, spec.combiner_task_name(), job._combined_result()
            elif 0 <= index < spec.task_count:
                chunk, name = spec.chunk_of(index), spec.task_name(index)
                got = job._chunks.get(chunk)
            else:
                raise KeyError(f"job {self.name!r} has no task {index}")
            if got is None:
                claimed = chunk in job._attempts()
                row = {"task_name": name, "task_index": index,
                       "status": RUNNING if claimed else PENDING}
            else:
                pos = 0 if chunk == spec.chunk_count else got.index.index(index)
                row = self._row(chunk, pos, index, got.status[pos], traceback=True)
            try:
                log = job.get_logs(name)
            except KeyError:
                log = ""
            cut = 200_000           # the end of a huge output is what explains a failure
            return {"row": row, "log": log[-cut:], "log_truncated": len(log) > cut}

    # -- timeline -----------------------------------------------------------------------

    def timeline(self) -> Any:
        from ..jobs.timeline import job_timeline
        with self.lock:
            summary = self.summary()
            key = (len(self.job._chunks), summary["status"], summary["done"])
            if self._timeline is None or self._timeline[0] != key:
                self._timeline = (key, job_timeline(self.job))
            return self._timeline[1]

    def timeline_png(self) -> bytes:
        """The timeline drawn by deploy.jobs.plot (ImportError without matplotlib)."""
        from ..jobs import plot
        timeline = self.timeline()
        with self.lock:
            key = self._timeline[0]
            if self._png is None or self._png[0] != key:
                self._png = (key, plot.png_bytes(plot.draw(timeline, title=f"job {self.name}")))
            return self._png[1]

    # -- control ------------------------------------------------------------------------

    def cancel(self) -> dict:
        with self.lock:
            self.job.cancel()
            return self.summary(fresh=True)

    def resume(self) -> dict:
        with self.lock:
            self.job.resume()
            self._ends.clear()
            self._stripped.clear()
            self._table = None
            return self.summary(fresh=True)


def _cost(job: Any) -> float | None:
    """`job.get_estimated_cost()`: US dollars where the environment rents machines by the
    hour (EC2), else None."""
    try:
        value = job.get_estimated_cost()
    except Exception:           # a cost is a nicety: never let it break the page
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class Dashboard:
    """The registry's jobs as JobViews (kept between requests), and saved environments."""

    def __init__(self) -> None:
        self._views: dict[str, JobView] = {}
        self._lock = threading.Lock()

    def _registry_rows(self) -> list[tuple]:
        return job_registry._rows()

    def view(self, name: str) -> JobView:
        rows = [r for r in self._registry_rows() if r[0] == name]
        if not rows:
            raise KeyError(name)
        return self._view(rows[0])

    def _view(self, row: tuple) -> JobView:
        with self._lock:
            view = self._views.get(row[0])
            if view is None or view.id != row[1]:
                view = self._views[row[0]] = JobView(row)
            return view

    def jobs(self) -> list[dict]:
        """Every job, newest first; a job busy in another request shows its last summary."""
        rows = self._registry_rows()
        with self._lock:
            for name in set(self._views) - {r[0] for r in rows}:
                del self._views[name]
        out = []
        for row in rows:
            view = self._view(row)
            summary = view.peek()
            if summary is None:
                summary = {"name": row[0], "environment": row[3], "function": row[4],
                           "created": row[5], "status": "…", "total": 0, "done": 0, "cost": None}
            out.append(summary)
        return out


def environments() -> list[dict]:
    """Saved environments: name, kind, when saved, settings (secret-looking keys hidden)."""
    from .. import state
    with state.connect() as db:
        rows = db.execute("select name, kind, data, saved from environments order by name").fetchall()
    out = []
    for name, kind, data, saved in rows:
        try:
            settings = json.loads(data).get("settings") or {}
        except ValueError:
            settings = {}
        out.append({"name": name, "kind": kind, "saved": saved, "settings": redact(settings)})
    return out


def redact(value: Any) -> Any:
    """Settings with the values of secret-looking keys replaced (settings hold no secrets by
    design; this is a second guard for a backend that got it wrong)."""
    if isinstance(value, dict):
        return {k: "•••" if any(w in str(k).lower() for w in SECRET_WORDS) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
