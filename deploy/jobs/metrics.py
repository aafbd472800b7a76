"""The metrics columns, task rows -> pandas DataFrame, and text tables for people.

Job.get_metrics() builds its frame column by column from the job directory (tables.py),
with no dict per task; to_frame() is the row-by-row form, for rows already in hand."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import pandas

COLUMNS = ["task_name", "status", "start_time", "end_time", "run_time", "exception",
           "exception_message", "exception_traceback", "host", "worker", "attempt",
           "peak_memory_mb"]
TABLE_COLUMNS = ["task_name", "status", "run_time", "exception", "exception_message", "host",
                 "attempt"]


def to_frame(rows: Iterable[dict]) -> "pandas.DataFrame":
    """One row per task, in task order, with COLUMNS (times as UTC-naive timestamps). A dict
    per row costs ~1.5 kB: a million rows are tables.metrics_frame()'s job."""
    import pandas as pd
    frame = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS)
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], unit="s", utc=True).dt.tz_convert(None)
    frame["run_time"] = frame["run_time"].astype("float64")
    frame["peak_memory_mb"] = frame["peak_memory_mb"].astype("float64")
    frame["attempt"] = frame["attempt"].astype("Int64")
    return frame


def _short(value: object, width: int = 48) -> object:
    if isinstance(value, str) and len(value) > width:
        return value[: width - 1] + "…"
    return value


def to_table(rows: Iterable[dict], columns: list[str] = TABLE_COLUMNS) -> str:
    """A compact text table of task rows, for print(job) and the CLI."""
    from tabulate import tabulate
    body = []
    for r in rows:
        line = []
        for c in columns:
            v = r.get(c)
            if c == "run_time" and v is not None:
                v = f"{v:.3f}s"
            elif c in ("start_time", "end_time") and v is not None:
                v = time.strftime("%H:%M:%S", time.localtime(v)) + f".{int(v % 1 * 1000):03d}"
            line.append("" if v is None else _short(v))
        body.append(line)
    return tabulate(body, headers=columns, tablefmt="simple")


def estimated_cost(spans: dict[str, tuple[float, float]],
                   hourly_prices: dict[str, float | None]) -> float | None:
    """Instance time x price: for each host with a known hourly price (USD), the time from
    the first start to the last end of the tasks that ran there (`spans`), times that price;
    None when no priced host ran a task."""
    priced = [(hourly_prices[h], s) for h, s in spans.items()
              if isinstance(hourly_prices.get(h), (int, float)) and hourly_prices[h] == hourly_prices[h]]
    if not priced:
        return None
    return sum(price * (end - start) / 3600 for price, (start, end) in priced)
