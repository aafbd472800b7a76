"""Job: the client's view of one job directory. It reads; workers write.

Everything here is derived from the job directory, so a Job reopened in another process
(`deploy.jobs['name']`) knows exactly what the one that created it knows.
"""
from __future__ import annotations

import heapq
import json
import pickle
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import JobError
from ..jobdir import launch as launch_record, layout
from ..jobdir.results import C_CANCELED, C_FAILED, C_OK, STATUS, ChunkResult, unfinished
from ..jobdir.spec import JobSpec, task_index
from ..jobdir.status import CANCELED, COMPLETED, FAILED, FINAL, PENDING, RUNNING, UNKNOWN
from ..store import Storage
from ..worker.processes import process_alive
from ..worker.runner import HOST
from . import launch, metrics

if TYPE_CHECKING:
    import pandas
    import pyarrow
    from ..environments.base import Environment

_UNSEEN = object()
TABLE_ROWS = 100            # print(job) shows every task's row up to this many tasks


class Job:
    """A map job: status, results in order, metrics, logs, cancel, wait, resume."""

    def __init__(self, store: Storage, name: str | None = None, job_id: str | None = None,
                 environment: "Environment | None" = None, spec: JobSpec | None = None,
                 on_resume: Callable[[], None] | None = None) -> None:
        """`on_resume()` hears that resume() made a finished job run again (the registry
        then forgets the final status it keeps for listing)."""
        self._store = store
        self._on_resume = on_resume
        self._spec = spec
        self._env = environment
        self._chunks: dict[int, ChunkResult] = {}   # published results never change: cache
        self._combined: ChunkResult | None = None
        self._error: str | None = None
        self._follower = None       # keeps its place in the logs across wait(stream=...) calls
        self.name = name or (spec.name if spec else None)
        self.id = job_id or (spec.id if spec else None)
        self._looked = False
        self._handed: set[int] = set()      # chunks completed_chunks() gave out already
        self._launched: object = _UNSEEN     # the launch (its time) the cached results belong to

    # -- reading the directory ----------------------------------------------------------

    @property
    def spec(self) -> JobSpec:
        if self._spec is None:
            try:
                raw = self._store.get(layout.SPEC)
            except FileNotFoundError:
                raise JobError(f"job {self.name!r}: no job.json in {self._store.uri} "
                               "(deleted, or never written whole)") from None
            try:
                self._spec = JobSpec.from_json(raw)
            except (ValueError, TypeError, KeyError) as exc:
                raise JobError(f"job {self.name!r}: corrupt job.json in {self._store.uri}: {exc}") from None
            self.name = self.name or self._spec.name
            self.id = self.id or self._spec.id
        return self._spec

    @property
    def environment(self) -> "Environment | None":
        if self._env is None:
            from ..environments import from_dict
            try:
                self._env = from_dict(self._launch().get("environment") or self.spec.environment)
            except (JobError, ValueError, KeyError, TypeError, ImportError):
                return None
        return self._env

    def _launch(self) -> dict:
        return launch_record.read(self._store)

    def _chunk(self, chunk: int) -> ChunkResult | None:
        got = self._chunks.get(chunk)
        if got is None:
            try:
                got = ChunkResult.from_dict(pickle.loads(self._store.get(layout.result(chunk))))
            except FileNotFoundError:
                return None
            self._chunks[chunk] = got
        return got

    def _refresh(self) -> int:
        """Load the result files published since the last look (one listing); how many.
        Published results change only when resume() runs the job again, maybe from another
        process: a cached result gone from the listing, or a new launch record once every
        result is cached, means that happened and the cache starts over."""
        if self._launched is _UNSEEN:
            self._launched = self._launch().get("time")
        names = {int(name) for name in self._store.list(layout.RESULTS) if name.isdigit()}
        if not names >= self._chunks.keys() or (
                self._chunks and len(self._chunks) == self.spec.chunk_count
                and self._launch().get("time") != self._launched):
            self._launched = self._launch().get("time")
            self._handed -= self._chunks.keys() - names
            self._chunks, self._combined = {}, None
        new = 0
        for chunk in names:
            if chunk not in self._chunks:
                new += self._chunk(chunk) is not None
        return new

    def _rows(self, refresh: bool = True) -> list[dict]:
        """One row per task: published rows, and Pending/Running placeholders."""
        spec = self.spec
        if refresh:
            self._refresh()
        claimed = set(self._attempts()) if len(self._chunks) < spec.chunk_count else set()
        rows = []
        for chunk in range(spec.chunk_count):
            got = self._chunks.get(chunk)
            if got is not None:
                rows.extend(got.rows(spec.task_name))
                continue
            status = RUNNING if chunk in claimed else PENDING
            rows.extend({"task_name": spec.task_name(i), "task_index": i, "status": status}
                        for i in spec.chunk_tasks(chunk))
        return rows

    def _combined_result(self) -> ChunkResult | None:
        if self._combined is None and self.spec.has_combiner:
            try:
                self._combined = ChunkResult.from_dict(pickle.loads(self._store.get(layout.COMBINED)))
            except FileNotFoundError:
                return None
        return self._combined

    def _combined_row(self) -> dict | None:
        combined = self._combined_result()
        return combined.rows(lambda _: self.spec.combiner_task_name())[0] if combined else None

    def _all_completed(self) -> bool:
        return all(len(r) == r.status.count(C_OK) for r in self._chunks.values())

    def _cancel_info(self) -> dict | None:
        try:
            return json.loads(self._store.get(layout.CANCEL))
        except FileNotFoundError:
            return None
        except ValueError:
            return {"reason": "user"}

    # -- status -----------------------------------------------------------------------

    def get_status(self) -> str:
        """'Pending', 'Running', 'Completed', 'Failed', 'Canceled', or 'Unknown' (unreadable)."""
        try:
            return self._status()
        except (JobError, OSError, ValueError, pickle.UnpicklingError, EOFError, KeyError) as exc:
            self._error = f"cannot read job {self.name!r} at {self._store.uri}: {exc}"
            return UNKNOWN

    def _status(self) -> str:
        spec = self.spec
        looked = self._looked
        self._looked = True
        progressed = self._refresh() and looked     # results came since this Job last looked
        cancel = self._cancel_info()
        if len(self._chunks) == spec.chunk_count:
            if cancel is not None and cancel.get("reason") != "fail_fast" and \
                    any(C_CANCELED in r.status for r in self._chunks.values()):
                return CANCELED
            if not self._all_completed():
                return FAILED
            if spec.has_combiner:
                combined = self._combined_result()
                if combined is None:
                    if self._workers_alive() is not False:
                        return RUNNING
                    combined = self._combined_result()   # published as the workers left?
                    if combined is None:
                        return self._stalled()
                return COMPLETED if combined.status.count(C_OK) == 1 else FAILED
            return COMPLETED
        if cancel is not None and cancel.get("reason") != "fail_fast":
            return CANCELED
        if progressed:
            return RUNNING                  # results just came: some worker is at work
        if self._workers_alive() is False:
            self._refresh()                 # the last results may have come as the workers left
            return self._status() if len(self._chunks) == spec.chunk_count else self._stalled()
        started = self._store.list(layout.CLAIMS) or self._store.list(layout.HEARTBEATS)
        return RUNNING if started else PENDING     # Pending: no worker has started yet

    def _workers_alive(self) -> bool | None:
        """True if a worker heart-beat within its lease (or the environment says so); a
        worker on this machine whose process is gone counts as dead at once."""
        lease = self.spec.lease_seconds
        now = time.time()
        for name in self._store.list(layout.HEARTBEATS):
            try:
                beat = json.loads(self._store.get(layout.heartbeat(name)))
            except (FileNotFoundError, ValueError):
                continue
            if beat.get("host") == HOST and not process_alive(int(beat.get("pid", 0))):
                continue
            if now - float(beat.get("time", 0)) < lease:
                return True
        launch = self._launch()
        if not launch:
            return None if now - self.spec.created < lease else False
        env = self.environment
        alive = env.alive(launch.get("handle") or {}) if env is not None else None
        if alive is None:
            return now - float(launch.get("time", now)) < lease or None
        return alive

    def _stalled(self) -> str:
        """No worker is left and the job is not finished: every task (and the combiner)
        without a final row gets a Failed WorkerLost one, so the job ends Failed with
        exactly one final row per task; resume() runs those again."""
        env, launch = self.environment, self._launch()
        why = env.describe_failure(launch.get("handle") or {}) if env is not None else None
        self._error = (f"no worker is running job {self.name!r} and it is not finished"
                       + (f": {why}" if why else "") + "; job.resume() starts workers again")
        lost = "no worker is left to run this task" + (f": {why}" if why else "")
        self._publish_unfinished(C_FAILED, "WorkerLost", lost)
        if self.spec.has_combiner and len(self._chunks) == self.spec.chunk_count and \
                self._combined_result() is None:
            row = unfinished([0], [self._attempts().get(self.spec.chunk_count, 0)], C_FAILED,
                             "WorkerLost", lost, HOST, "client")
            self._store.create_exclusive(layout.COMBINED, pickle.dumps(row.to_dict()))
        return FAILED

    def _attempts(self) -> dict[int, int]:
        """How many times workers took each chunk (the combiner is chunk `chunk_count`)."""
        counts: dict[int, int] = {}
        for claim in map(layout.parse_claim, self._store.list(layout.CLAIMS)):
            if claim:
                counts[claim[0]] = counts.get(claim[0], 0) + 1
        return counts

    def _publish_unfinished(self, status: int, exception: str, why: str) -> None:
        """Final rows for every chunk no worker finished (first publisher wins)."""
        spec = self.spec
        self._refresh()
        attempts = self._attempts()

        def publish(chunk: int) -> None:
            tasks = spec.chunk_tasks(chunk)
            tried = attempts.get(chunk, 0)
            text = f"the worker running it was lost; {why}" if tried and status == C_FAILED else why
            rows = unfinished(tasks, [tried] * len(tasks), status, exception, text, HOST, "client")
            self._store.create_exclusive(layout.result(chunk), pickle.dumps(rows.to_dict()))
        missing = [c for c in range(spec.chunk_count) if c not in self._chunks]
        if len(missing) > 1 and self._store.local_path("") is None:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(16) as pool:    # a round trip each on a remote store
                list(pool.map(publish, missing))
        else:
            for chunk in missing:
                publish(chunk)
        self._refresh()

    # -- results ----------------------------------------------------------------------

    def get_map_results(self) -> list[Any]:
        """Results in parameter order; None where a task failed or has not finished."""
        spec = self.spec
        self._refresh()
        out: list[Any] = []
        for chunk in range(spec.chunk_count):
            got = self._chunks.get(chunk)
            out.extend(got.values if got is not None else [None] * len(spec.chunk_tasks(chunk)))
        return out

    def get_results(self, timeout: float | None = None) -> Any:
        """Wait for the job, then return the combiner's value (or the map results).
        Raises JobError listing the failed tasks when any failed or the job was canceled."""
        status = self.wait(timeout=timeout)
        if status not in FINAL:
            raise JobError(f"job {self.name!r} is still {status} after {timeout} s")
        if status != COMPLETED:
            raise JobError(self._failure_summary(status))
        if self.spec.has_combiner:
            return self._combined_result().values[0]
        results = self.get_map_results()
        return results[0] if self.spec.single else results

    def _failure_summary(self, status: str) -> str:
        rows = self._rows()
        bad = [r for r in rows if r["status"] not in (COMPLETED,)]
        combined = self._combined_row()
        if combined is not None and combined["status"] != COMPLETED:
            bad.append(combined)
        head = f"job {self.name!r} {status.lower()}: {len(bad)} of {len(rows)} tasks did not complete"
        lines = [f"  {r['task_name']}: {r['status']}"
                 + (f" {r['exception']}: {r['exception_message']}" if r.get("exception") else "")
                 for r in bad[:20]]
        if len(bad) > 20:
            lines.append(f"  ... and {len(bad) - 20} more (see job.get_metrics())")
        if self._error:
            lines.append("  " + self._error)
        return "\n".join([head] + lines)

    def metric_rows(self) -> list[dict]:
        """What get_metrics() holds, as one dict per task (and the combiner's), without pandas."""
        combined = self._combined_row()
        return self._rows() + ([combined] if combined else [])

    def completed_chunks(self) -> Iterator[tuple[range | Any, list, dict[int, tuple]]]:
        """The chunks published since the last call, in task order within each: (task
        indices, values, {position: (exception type, message, traceback)} of the tasks that
        did not complete). For consumers of results as they come (deploy.map, executors)."""
        self._refresh()
        for chunk in sorted(set(self._chunks) - self._handed):
            self._handed.add(chunk)
            got = self._chunks[chunk]
            failed = {pos: got.errors.get(pos, (STATUS[code], None, None))
                      for pos, code in enumerate(got.status) if code != C_OK}
            yield got.index, got.values, failed

    def delete(self) -> None:
        """Remove the job directory (canceling the job first if it runs); the registry
        entry is the registry's to forget."""
        if self.get_status() in (PENDING, RUNNING):
            self.cancel()
        self._store.delete("")

    def get_metrics(self) -> "pandas.DataFrame":
        """One row per task (and the combiner's last): status, timing, exception, host..."""
        from .tables import metrics_frame
        frame = metrics_frame(self)
        cost = self.get_estimated_cost()
        if cost is not None:        # environments that rent machines by the hour
            frame.attrs["estimated_cost_usd"] = cost
        return frame

    def get_estimated_cost(self) -> float | None:
        """The job's estimated cost in USD where its environment rents machines by the hour
        (EC2): for each host the launch priced (`hourly_prices` in its handle), the time the
        job's tasks held it x its hourly price. None where nothing is priced."""
        prices = (self._launch().get("handle") or {}).get("hourly_prices")
        if not prices:
            return None
        self._refresh()
        spans: dict[str, tuple[float, float]] = {}
        for got in [*self._chunks.values(), self._combined_result()]:
            ran = [(s, e) for s, e in zip(got.start, got.end) if s > 0 and e >= s] if got else ()
            if ran and got.host:            # a chunk ran on one host: its first start, last end
                first, last = min(s for s, _ in ran), max(e for _, e in ran)
                known = spans.get(got.host, (first, last))
                spans[got.host] = (min(known[0], first), max(known[1], last))
        return metrics.estimated_cost(spans, prices)

    def get_results_table(self) -> "pyarrow.Table":
        """Parameters, result, status and exception type per task as a pyarrow Table (call
        .to_pandas() for a DataFrame); raises TableError for a result Arrow cannot hold."""
        from .tables import results_table
        return results_table(self)

    def get_error(self) -> str | None:
        """What went wrong, in words (None when nothing did)."""
        status = self.get_status()
        if status in (FAILED, CANCELED):
            return self._failure_summary(status)
        return self._error if status == UNKNOWN else None

    def get_parameters(self) -> list:
        """The parameter sets in task order (for deploy.map jobs: the input items)."""
        params: list = []
        for chunk in range(self.spec.chunk_count):
            params.extend(pickle.loads(self._store.get(layout.inputs(chunk))))
        return params

    def get_start_time(self) -> float | None:
        launch = self._launch()
        return launch.get("time") if launch else None

    def get_end_time(self) -> float | None:
        if self.get_status() not in FINAL:
            return None
        ends = [r["end_time"] for r in self._rows(refresh=False) if r.get("end_time")]
        combined = self._combined_row()
        if combined and combined.get("end_time"):
            ends.append(combined["end_time"])
        return max(ends) if ends else None

    # -- logs -------------------------------------------------------------------------

    def get_logs(self, task_name: str | None = None) -> str:
        """The tasks' captured stdout/stderr: one task's, or all, each line prefixed by its task."""
        from .logs import read_chunk_log
        spec = self.spec
        if task_name is not None:
            index = task_index(task_name)
            is_combiner = spec.has_combiner and task_name == spec.combiner_task_name()
            if not is_combiner and (index is None or not 0 <= index < spec.task_count
                                    or spec.task_name(index) != task_name):
                raise KeyError(f"job {self.name!r} has no task {task_name!r}")
            chunk = spec.chunk_count if is_combiner else spec.chunk_of(index)
            pieces = read_chunk_log(self._store, chunk)
            want = 0 if is_combiner else index
            return "".join(text.decode(errors="replace") for i, _, text in pieces if i == want)
        out = []
        for chunk in range(spec.chunk_count + (1 if spec.has_combiner else 0)):
            for i, _, text in read_chunk_log(self._store, chunk):
                name = spec.combiner_task_name() if chunk == spec.chunk_count else spec.task_name(i)
                out.extend(f"[{name}] {line}\n" for line in text.decode(errors="replace").splitlines())
        return "".join(out)

    def get_log_file_path(self) -> str:
        """Where the logs are: a local directory, or the store URI of the logs folder."""
        return self._store.local_path(layout.LOGS) or f"{self._store.uri}/{layout.LOGS}"

    # -- control ----------------------------------------------------------------------

    def wait(self, timeout: float | None = None, progress: bool | None = None,
             stream: Callable[[str], None] | None = None) -> str:
        """Block until the job ends (or `timeout` seconds pass); returns the status.
        `progress`: a tqdm bar (None: only when stderr is a terminal). `stream`: called with
        each new line of task output, prefixed by its task name."""
        from .logs import LogFollower
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = self._progress_bar(progress)
        if stream and self._follower is None:
            self._follower = LogFollower(self._store, self.spec)
        follower = self._follower if stream else None
        delay = 0.005
        env, handle = self.environment, (self._launch().get("handle") or {})
        try:
            while True:
                status = self.get_status()
                if follower is not None:
                    ended = status in FINAL or status == UNKNOWN
                    for line in follower.drain() if ended else follower.poll():
                        stream(line)
                if bar is not None:
                    bar.update(sum(map(len, self._chunks.values())) - bar.n)
                if status in FINAL or status == UNKNOWN:
                    return status
                if deadline is not None and time.monotonic() >= deadline:
                    return status
                if env is not None:
                    env.wait_for_change(handle, delay)
                else:
                    time.sleep(delay)     # polling the store; nothing to block on portably
                delay = min(delay * 1.5, self._store.poll_seconds)
        finally:
            if bar is not None:
                bar.close()

    def _progress_bar(self, progress: bool | None):
        if progress is None:
            from .. import config
            setting = str(config.get("progress")).lower()
            progress = sys.stderr.isatty() if setting == "auto" else setting in ("1", "true", "yes", "on")
        if not progress:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=self.spec.task_count, desc=self.name, unit="task", leave=False)

    def cancel(self) -> None:
        """Stop the job: no more tasks start, running ones are stopped, unfinished tasks
        are recorded Canceled. A finished job is left as it is."""
        if self.get_status() in FINAL:
            return
        self._store.create_exclusive(layout.CANCEL, json.dumps(
            {"reason": "user", "time": time.time()}).encode())
        env, launch = self.environment, self._launch()
        if env is not None and launch:
            env.cancel(launch.get("handle") or {})
        self._finalize_canceled()

    def _finalize_canceled(self) -> None:
        """Canceled rows for every chunk no worker finished."""
        self._publish_unfinished(C_CANCELED, "Canceled", "the job was canceled")

    def resume(self) -> "Job":
        """Start workers again for what did not complete (canceled, lost, never run).
        Completed tasks are kept; the job's function comes from the job directory."""
        spec = self.spec
        if self.get_status() in (RUNNING, PENDING):
            raise JobError(f"job {self.name!r} is still running; cancel it first or wait")
        env = self.environment
        if env is None:
            raise JobError(f"job {self.name!r}: its environment cannot be rebuilt to resume it")
        if not spec.function_stored:
            raise JobError(f"job {self.name!r} cannot be resumed: its function was larger than "
                           "max_function_mb and was not kept (the workers had it by fork); "
                           "create the job again")
        self._refresh()
        redo = [c for c in range(spec.chunk_count)
                if c not in self._chunks or C_CANCELED in self._chunks[c].status
                or any(e[0] == "WorkerLost" for e in self._chunks[c].errors.values())]
        if not redo and not (spec.has_combiner and self._combined_result() is None):
            return self
        self._store.delete(layout.CANCEL)
        claims = self._store.list(layout.CLAIMS)
        for chunk in redo:
            for name in claims:
                parsed = layout.parse_claim(name)
                if parsed and parsed[0] == chunk:
                    self._store.delete(f"{layout.CLAIMS}/{name}")
            self._store.delete(layout.result(chunk))
            self._store.delete(layout.log(chunk))
            self._chunks.pop(chunk, None)
        for name in claims:
            parsed = layout.parse_claim(name)
            if parsed and parsed[0] == spec.chunk_count:
                self._store.delete(f"{layout.CLAIMS}/{name}")
        if self._on_resume is not None:
            self._on_resume()
        launch.start(env, self._store, spec, None,
                     launch.worker_count(env.num_workers(), spec, len(redo)))
        self._launched = self._launch().get("time")
        return self

    # -- display ----------------------------------------------------------------------

    def summary(self) -> str:
        """Two lines: the job, where it runs and its status; how many tasks in each state."""
        status = self.get_status()
        if status == UNKNOWN:
            return f"Job {self.name!r}: Unknown ({self._error})"
        counts = self._counts()
        env = self.spec.environment
        parts = [f"Job {self.name!r} ({self.spec.function_name}, {self.spec.task_count} tasks) "
                 f"on {env.get('name')} [{env.get('kind')}]: {status}",
                 "  " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if v)]
        cost = self.get_estimated_cost()
        if cost is not None:        # a third line where machines are rented (EC2)
            parts.append(f"  estimated cost: ${cost:.6f} (instance time x hourly price)")
        return "\n".join(parts)

    def _counts(self) -> dict[str, int]:
        """Tasks per status, from the status columns (no row is built)."""
        spec = self.spec
        claimed = set(self._attempts()) if len(self._chunks) < spec.chunk_count else set()
        counts: dict[str, int] = {}
        for chunk in range(spec.chunk_count):
            got = self._chunks.get(chunk)
            if got is None:
                state = RUNNING if chunk in claimed else PENDING
                counts[state] = counts.get(state, 0) + len(spec.chunk_tasks(chunk))
                continue
            for code, state in STATUS.items():
                counts[state] = counts.get(state, 0) + got.status.count(code)
        return counts

    def _notable_rows(self, each: int) -> list[dict]:
        """The first `each` tasks that did not complete, then the `each` slowest."""
        spec, picked = self.spec, {}
        for chunk, got in sorted(self._chunks.items()):
            pos = -1
            while len(picked) < each and (pos := _first_not_ok(got.status, pos + 1)) >= 0:
                picked[got.index[pos]] = got.row(pos, spec.task_name)
        slow = heapq.nlargest(each, ((t, chunk, pos) for chunk, got in self._chunks.items()
                                     for pos, t in enumerate(got.run_times()) if t))
        for _, chunk, pos in slow:
            got = self._chunks[chunk]
            picked.setdefault(got.index[pos], got.row(pos, spec.task_name))
        return list(picked.values())

    def __str__(self) -> str:
        """The summary and a table: every task's row up to TABLE_ROWS tasks, else the
        failed and the slowest (job.get_metrics() has every row)."""
        text = self.summary()
        if self.get_status() == UNKNOWN:
            return text
        combined = self._combined_row()
        extra = [combined] if combined else []
        if self.spec.task_count <= TABLE_ROWS:
            return text + "\n\n" + metrics.to_table(self._rows(refresh=False) + extra)
        rows = self._notable_rows(10)
        return (text + "\n\n" + metrics.to_table(rows + extra) +
                f"\n({len(rows)} of {self.spec.task_count} tasks shown: the first failed and the "
                "slowest; job.get_metrics() has every row)")

    def plot(self, path: "str | None" = None) -> Any:
        """The timeline (a lane per worker, bars by status) and a run-time histogram:
        saved to `path` (returns it), or the matplotlib Figure (inline in a notebook).
        Needs matplotlib: pip install deploy[plot]."""
        from .plot import plot_job
        return plot_job(self, path)

    def _repr_html_(self) -> str:
        """The summary as HTML for notebooks: status, tasks per state and progress, then the
        first failed tasks with their exceptions and the slowest tasks."""
        from html import escape
        status = self.get_status()
        if status == UNKNOWN:
            return f"<b>Job {escape(repr(self.name))}</b>: Unknown ({escape(self._error or '')})"
        spec, counts = self.spec, self._counts()
        done = sum(v for k, v in counts.items() if k in FINAL)
        env = spec.environment
        head = (f"<b>Job {escape(repr(self.name))}</b> ({escape(spec.function_name)}, "
                f"{spec.task_count} tasks) on {escape(str(env.get('name')))} "
                f"[{escape(str(env.get('kind')))}]: <b>{status}</b><br>"
                + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if v)
                + f"<br><progress value='{done}' max='{spec.task_count}'></progress> "
                f"{done} of {spec.task_count} finished")
        rows = self._notable_rows(10)
        if not rows:
            return head
        columns = ("task_name", "status", "run_time", "exception", "exception_message", "host",
                   "attempt")
        cells = "".join(
            "<tr>" + "".join(f"<td>{escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
            for r in rows)
        return (head + "<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in columns)
                + f"</tr></thead><tbody>{cells}</tbody></table>"
                + "<small>the first failed tasks and the slowest; job.get_metrics() has every row</small>")

    def __repr__(self) -> str:
        return f"<Job {self.name!r} {self.get_status()}>"


def _first_not_ok(status: bytearray, start: int) -> int:
    """Position of the first task at or after `start` that did not complete, or -1."""
    found = [p for p in (status.find(C_FAILED, start), status.find(C_CANCELED, start)) if p >= 0]
    return min(found, default=-1)


def _cell(value: Any) -> str:
    """A metrics value as table text: run times in seconds with milliseconds, None as ''."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}s" if value == value else ""
    return str(value)
