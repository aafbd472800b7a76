"""The data a job's timeline is drawn from: lanes (one per worker), bars coloured by final
status, retries and lost workers, and a histogram of run times.

Computed chunk by chunk from the published result columns (no row dicts, no DataFrame),
so a 1,000,000-task job costs a few numpy passes. Beyond `max_bars` timed tasks, each
lane's time is cut into bins and a bar stands for the run of tasks of one status that
started in one bin: the drawing stays a few thousand rectangles whatever the job's size.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from ..jobdir import layout
from ..jobdir.results import C_CANCELED, C_FAILED, C_OK, STATUS, ChunkResult
from ..jobdir.status import CANCELED, COMPLETED, FAILED, PENDING, RUNNING

if TYPE_CHECKING:
    from .job import Job

MAX_BARS = 2000         # timed bars drawn at most (aggregated beyond)
MAX_LANES = 64          # lanes beyond this are grouped (by host, then in ranges)
HIST_BINS = 30
MIN_SHARE = 0.2        # an aggregated bar's least height share for a status other than Completed
LOSS_EVENTS = 200       # lost claims looked up at most (one store read each)
CODES = (C_OK, C_CANCELED, C_FAILED)        # drawing order: failures on top
COLORS = {COMPLETED: "#2ca02c", FAILED: "#d62728", CANCELED: "#8c8c8c",
          RUNNING: "#1f77b4", PENDING: "#c7c7c7"}
LOST = "WorkerLost"


@dataclass
class Timeline:
    """What the plot draws. Times are seconds after `t0` (epoch seconds of the first start).

    `bars` is columnar: lane index, start, width, status name, tasks in the bar, how many of
    them ran again (attempt > 1), where in the lane's height it sits (y0, height: fractions;
    an aggregated bin splits its height among its statuses), and the task when a bar is one."""

    task_count: int
    t0: float | None
    span: float
    lanes: list[str]
    bars: dict[str, list]
    aggregated: bool
    bin_seconds: float | None
    counts: dict[str, int]                  # tasks per status, timed or not
    untimed: dict[str, int]                 # tasks that never ran: pending, running, lost, canceled
    retried: int                            # tasks whose final row is a later attempt
    lost_tasks: int                         # tasks failed WorkerLost (no worker was left)
    losses: list[dict] = field(default_factory=list)   # {lane, time, worker, chunk, attempt}
    histogram: dict[str, Any] = field(default_factory=dict)  # edges, counts, log

    @property
    def bar_count(self) -> int:
        return len(self.bars["lane"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for the dashboard)."""
        return {"task_count": self.task_count, "t0": self.t0, "span": self.span,
                "lanes": self.lanes, "bars": self.bars, "aggregated": self.aggregated,
                "bin_seconds": self.bin_seconds, "counts": self.counts, "untimed": self.untimed,
                "retried": self.retried, "lost_tasks": self.lost_tasks, "losses": self.losses,
                "histogram": self.histogram, "colors": COLORS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _columns(chunk: ChunkResult):
    """(start, end, status codes, attempts) of a chunk as numpy arrays."""
    import numpy as np
    n = len(chunk)
    start = np.frombuffer(chunk.start, dtype=np.float64, count=n)
    end = np.frombuffer(chunk.end, dtype=np.float64, count=n)
    status = np.frombuffer(bytes(chunk.status), dtype=np.uint8, count=n)
    attempt = np.frombuffer(chunk.attempt, dtype=np.int32, count=n)
    return start, end, status, attempt


def build(chunks: Iterable[ChunkResult] | list[ChunkResult], task_count: int | None = None,
          pending: int = 0, running: int = 0, losses: list[tuple[str, str, float, int, int]] = (),
          max_bars: int = MAX_BARS, max_lanes: int = MAX_LANES) -> Timeline:
    """The timeline of published chunk results (a list: it is read twice). `pending` and
    `running` count tasks without a result yet; `losses` are (host, worker, last heartbeat
    time, chunk, attempt) of claims whose worker was lost."""
    import numpy as np
    chunks = list(chunks)
    # pass 1: lanes, the time span, the run-time range, which statuses were timed
    lane_keys: dict[tuple[str, str], float] = {}
    lane_last: dict[tuple[str, str], float] = {}       # the last end on each lane
    t_min, t_max, r_min, r_max = math.inf, -math.inf, math.inf, 0.0
    timed, codes_seen = 0, set()
    counts = {COMPLETED: 0, FAILED: 0, CANCELED: 0}
    untimed = {COMPLETED: 0, FAILED: 0, CANCELED: 0}
    retried = lost_tasks = total = 0
    for chunk in chunks:
        if not len(chunk):
            continue
        start, end, status, attempt = _columns(chunk)
        total += len(start)
        ok = (start > 0) & (end > 0)
        for code in CODES:
            here = status == code
            counts[STATUS[code]] += int(here.sum())
            untimed[STATUS[code]] += int((here & ~ok).sum())
        retried += int((attempt > 1).sum())
        lost_tasks += sum(1 for e in chunk.errors.values() if e and e[0] == LOST)
        n = int(ok.sum())
        if not n:
            continue
        s, e = start[ok], end[ok]
        key = (chunk.host, chunk.worker)
        lane_keys[key] = min(lane_keys.get(key, math.inf), float(s.min()))
        lane_last[key] = max(lane_last.get(key, 0.0), float(e.max()))
        t_min, t_max = min(t_min, float(s.min())), max(t_max, float(e.max()))
        run = e - s
        positive = run[run > 0]
        if len(positive):
            r_min = min(r_min, float(positive.min()))
        r_max = max(r_max, float(run.max()))
        timed += n
        codes_seen.update(int(c) for c in np.unique(status[ok]))
    for host, worker, when, _, _ in losses:
        lane_keys.setdefault((host, worker), math.inf)
        if timed and when > 0:          # a worker lost before the first task ended
            t_min = min(t_min, when)
    counts[PENDING], counts[RUNNING] = pending, running
    untimed[PENDING], untimed[RUNNING] = pending, running
    if task_count is None:
        task_count = total + pending + running

    ordered = sorted(lane_keys, key=lambda k: (lane_keys[k], k))
    lane_of, labels = _group_lanes(ordered, max_lanes)
    t0 = t_min if timed else None
    span = max(t_max - t_min, 1e-9) if timed else 0.0
    aggregated = timed > max_bars
    bars: dict[str, list] = {"lane": [], "start": [], "width": [], "status": [], "count": [],
                             "retried": [], "y0": [], "height": [], "task": []}
    bin_seconds = None
    edges, log_bins = _hist_edges(r_min, r_max) if timed else (np.zeros(0), False)
    hist = np.zeros(max(len(edges) - 1, 0), dtype=np.int64)

    if aggregated:
        n_lanes, n_codes = len(labels), max(len(codes_seen), 1)
        bins = max(1, max_bars // (n_lanes * n_codes))
        bin_seconds = span / bins
        shape = (n_lanes, bins, len(CODES))
        cnt = np.zeros(shape, dtype=np.int64)
        again = np.zeros(shape, dtype=np.int64)
        first = np.full(shape, np.inf)
        last = np.full(shape, -np.inf)
    for chunk in chunks:
        if not len(chunk):
            continue
        start, end, status, attempt = _columns(chunk)
        ok = (start > 0) & (end > 0)
        if not ok.any():
            continue
        s, e, st, at = start[ok], end[ok], status[ok], attempt[ok]
        hist += np.histogram(e - s, bins=edges)[0] if len(edges) else 0
        lane = lane_of[(chunk.host, chunk.worker)]
        if not aggregated:
            index = chunk.index
            where = np.flatnonzero(ok)
            for j, pos in enumerate(where):
                bars["lane"].append(lane)
                bars["start"].append(float(s[j] - t0))
                bars["width"].append(float(e[j] - s[j]))
                bars["status"].append(STATUS[int(st[j])])
                bars["count"].append(1)
                bars["retried"].append(int(at[j] > 1))
                bars["y0"].append(0.0)
                bars["height"].append(1.0)
                bars["task"].append(int(index[int(pos)]))
            continue
        b = np.minimum(((s - t0) / bin_seconds).astype(np.int64), bins - 1)
        for k, code in enumerate(CODES):
            mask = st == code
            if not mask.any():
                continue
            bb = b[mask]
            cnt[lane, :, k] += np.bincount(bb, minlength=bins)
            again[lane, :, k] += np.bincount(bb, weights=(at[mask] > 1), minlength=bins).astype(np.int64)
            np.minimum.at(first[lane, :, k], bb, s[mask])
            np.maximum.at(last[lane, :, k], bb, e[mask])
    if aggregated:
        # a bin's bar is split in height by status, Completed at the bottom, each other
        # status at least MIN_SHARE of it, so that one failure among thousands still shows
        total = cnt.sum(axis=2)
        share = np.where(total[..., None] > 0, cnt / np.maximum(total, 1)[..., None], 0.0)
        minor = (cnt[..., 1:] > 0)
        share[..., 1:] = np.where(minor, np.maximum(share[..., 1:], MIN_SHARE), 0.0)
        share[..., 0] = np.where(cnt[..., 0] > 0,
                                 np.maximum(1.0 - share[..., 1:].sum(axis=2), MIN_SHARE), 0.0)
        share /= np.maximum(share.sum(axis=2, keepdims=True), 1e-12)
        y0 = np.cumsum(share, axis=2) - share
        for k, code in enumerate(CODES):            # failures last: drawn on top
            lanes_i, bins_i = np.nonzero(cnt[:, :, k])
            for lane, b in zip(lanes_i.tolist(), bins_i.tolist()):
                bars["lane"].append(lane)
                bars["start"].append(float(first[lane, b, k] - t0))
                bars["width"].append(float(last[lane, b, k] - first[lane, b, k]))
                bars["status"].append(STATUS[code])
                bars["count"].append(int(cnt[lane, b, k]))
                bars["retried"].append(int(again[lane, b, k]))
                bars["y0"].append(round(float(y0[lane, b, k]), 4))
                bars["height"].append(round(float(share[lane, b, k]), 4))
        del bars["task"]
    # a worker is known lost after its last heartbeat and after the last task it finished
    loss_events = []
    for host, worker, when, chunk, attempt in losses:
        when = max(when or 0.0, lane_last.get((host, worker), 0.0))
        loss_events.append({"lane": lane_of[(host, worker)], "worker": worker, "chunk": chunk,
                            "attempt": attempt,
                            "time": (when - t0) if (t0 is not None and when) else None})
    histogram = {"edges": [float(x) for x in edges], "counts": [int(x) for x in hist],
                 "log": log_bins}
    return Timeline(task_count, t0, span, labels, bars, aggregated, bin_seconds, counts, untimed,
                    retried, lost_tasks, loss_events, histogram)


def _group_lanes(ordered: list[tuple[str, str]], max_lanes: int
                 ) -> tuple[dict[tuple[str, str], int], list[str]]:
    """Lane index per (host, worker): one lane each up to `max_lanes`, else one per host,
    else consecutive ranges of hosts."""
    if len(ordered) <= max_lanes:
        return {k: i for i, k in enumerate(ordered)}, [_label(*k) for k in ordered]
    hosts: dict[str, int] = {}
    for host, _ in ordered:
        hosts.setdefault(host, len(hosts))
    if len(hosts) <= max_lanes:
        per = {h: sum(1 for k in ordered if k[0] == h) for h in hosts}
        return ({k: hosts[k[0]] for k in ordered},
                [f"{h} ({per[h]} workers)" for h in hosts])
    size = math.ceil(len(hosts) / max_lanes)
    names = list(hosts)
    labels = [f"{names[i]} … ({len(names[i:i + size])} hosts)" for i in range(0, len(names), size)]
    return {k: hosts[k[0]] // size for k in ordered}, labels


def _label(host: str, worker: str) -> str:
    """'host/pid-xxxx' (worker ids start with their host)."""
    if worker.startswith(host + "-"):
        worker = worker[len(host) + 1:]
    return f"{host}/{worker}" if worker else host


def _hist_edges(r_min: float, r_max: float):
    """Histogram bin edges for run times: logarithmic when they span over two decades."""
    import numpy as np
    if not math.isfinite(r_min):
        r_min = 0.0
    if r_min > 0 and r_max / r_min > 100:
        return np.geomspace(r_min, r_max * (1 + 1e-9), HIST_BINS + 1), True
    top = r_max if r_max > 0 else 1e-3
    return np.linspace(0.0, top * (1 + 1e-9), HIST_BINS + 1), False


def job_timeline(job: "Job", max_bars: int = MAX_BARS, max_lanes: int = MAX_LANES) -> Timeline:
    """The timeline of a job as its directory shows it now (tasks still running included
    as counts; the combiner in its worker's lane)."""
    spec = job.spec
    job._refresh()
    chunks = [job._chunks[c] for c in sorted(job._chunks)]
    combined = job._combined_result()
    if combined is not None:
        chunks.append(combined)
    counts = job._counts()
    return build(chunks, spec.task_count + (1 if spec.has_combiner else 0),
                 pending=counts.get(PENDING, 0), running=counts.get(RUNNING, 0),
                 losses=_lost_claims(job), max_bars=max_bars, max_lanes=max_lanes)


def _lost_claims(job: "Job") -> list[tuple[str, str, float, int, int]]:
    """(host, worker, last heartbeat, chunk, attempt) of each claim whose worker was lost:
    every claim but a chunk's last, and the last when the client found no worker left and
    failed the chunk's tasks WorkerLost (a worker past worker_retries is alive)."""
    import json as _json
    store, spec = job._store, job.spec
    latest: dict[int, int] = {}
    claims = []
    for name in store.list(layout.CLAIMS):
        parsed = layout.parse_claim(name)
        if parsed:
            claims.append(parsed)
            latest[parsed[0]] = max(parsed[1], latest.get(parsed[0], -1))
    lost = []
    for chunk, attempt in sorted(claims):
        if attempt < latest[chunk]:
            lost.append((chunk, attempt))
            continue
        got = job._chunks.get(chunk) if chunk < spec.chunk_count else job._combined_result()
        if got is not None and got.worker == "client" and \
                any(e and e[0] == LOST for e in got.errors.values()):
            lost.append((chunk, attempt))
    out, beats = [], {}
    for chunk, attempt in lost[:LOSS_EVENTS]:
        try:
            worker = store.get(layout.claim(chunk, attempt)).decode()
        except FileNotFoundError:
            continue
        if worker not in beats:
            try:
                beats[worker] = _json.loads(store.get(layout.heartbeat(worker)))
            except (FileNotFoundError, ValueError):
                beats[worker] = {}
        beat = beats[worker]
        host = beat.get("host") or worker.rsplit("-", 2)[0]
        out.append((host, worker, float(beat.get("time") or 0.0), chunk, attempt))
    return out
