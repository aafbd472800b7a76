"""A job as Arrow tables: its metrics, and its parameters, results and status per task.

Built column by column from the published chunks (no dict per row), a record batch at a
time, so that a 1,000,000-task job's tables are written to Parquet, Feather/Arrow IPC or
CSV in seconds with memory bounded by one chunk. Values a format cannot hold are refused
with the task and the type named, never turned into text.
"""
from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..jobdir import layout
from ..jobdir.results import C_CANCELED, C_FAILED, C_OK, ChunkResult
from ..jobdir.status import CANCELED, COMPLETED, FAILED, PENDING, RUNNING, UNKNOWN
from .metrics import COLUMNS

if TYPE_CHECKING:
    import pandas
    import pyarrow
    from .job import Job

BATCH_ROWS = 65_536         # rows per record batch (a Parquet row group): bounds the memory
STATUS_NAMES = [PENDING, RUNNING, COMPLETED, FAILED, CANCELED, UNKNOWN]   # the status dictionary
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".feather": "feather", ".arrow": "feather",
           ".ipc": "feather", ".csv": "csv"}
RESULT_COLUMNS = ("task_name", "result", "status", "exception")   # around the parameter columns


class TableError(TypeError):
    """A value that the table format asked for cannot hold, or a table that cannot be written."""


# -- the job directory, chunk by chunk ------------------------------------------------------

def _chunks(job: "Job", cache: bool) -> Iterator[tuple[int, range, ChunkResult | None, str]]:
    """(chunk, its tasks, its published result or None, the status of unpublished tasks) in
    task order. `cache`: keep what is read in the Job (get_metrics); else read each result
    file once and let it go (exports), using what the Job has already read."""
    spec = job.spec
    if cache:
        job._refresh()
        published = set(job._chunks)
    else:
        published = {int(n) for n in job._store.list(layout.RESULTS) if n.isdigit()}
    done = sum(1 for c in published if 0 <= c < spec.chunk_count)
    claimed = set(job._attempts()) if done < spec.chunk_count else set()
    for chunk in range(spec.chunk_count):
        got = job._chunks.get(chunk)
        if got is None and chunk in published:
            try:
                got = ChunkResult.from_dict(pickle.loads(job._store.get(layout.result(chunk))))
            except FileNotFoundError:   # resume() took it away meanwhile
                got = None
            if got is not None and cache:
                job._chunks[chunk] = got
        yield chunk, spec.chunk_tasks(chunk), got, RUNNING if chunk in claimed else PENDING


def _slices(n: int) -> range:
    return range(0, n, BATCH_ROWS)


# -- metrics ----------------------------------------------------------------------------------

def metrics_schema(tz: str | None = "UTC") -> "pyarrow.Schema":
    """The metrics columns (metrics.COLUMNS) as Arrow types: times UTC timestamps (tz=None:
    without the zone), run time in seconds, status, host and worker dictionary-encoded,
    attempt a (nullable) integer."""
    import pyarrow as pa
    when = pa.timestamp("us", tz=tz)
    label = pa.dictionary(pa.int32(), pa.string())
    types = {"task_name": pa.string(), "status": pa.dictionary(pa.int8(), pa.string()),
             "start_time": when, "end_time": when, "run_time": pa.float64(),
             "exception": pa.string(), "exception_message": pa.string(),
             "exception_traceback": pa.string(), "host": label, "worker": label,
             "attempt": pa.int64(), "peak_memory_mb": pa.float64()}
    # a column added to COLUMNS that _result_metrics does not build yet stays null text
    return pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])


def metric_batches(job: "Job", cache: bool = False,
                   tz: str | None = "UTC") -> Iterator["pyarrow.RecordBatch"]:
    """The metrics of every task (then the combiner's), BATCH_ROWS rows at most per batch."""
    spec = job.spec
    prefix = spec.task_name(0)[:-1]
    schema = metrics_schema(tz)
    for _, tasks, got, waiting in _chunks(job, cache):
        if got is None:
            for lo in _slices(len(tasks)):
                yield _placeholder_batch(schema, prefix, tasks[lo:lo + BATCH_ROWS], waiting)
        else:
            yield from _result_metrics(schema, got.sorted(), prefix, None)
    if spec.has_combiner:
        combined = job._combined_result()
        if combined is not None:
            yield from _result_metrics(schema, combined, "", spec.combiner_task_name())


def _names(prefix: str, index: Any) -> "pyarrow.Array":
    import pyarrow as pa
    import pyarrow.compute as pc
    numbers = pc.cast(pa.array(index, pa.int64()), pa.string())
    return pc.binary_join_element_wise(prefix, numbers, "")


def _labels(value: str | None, n: int) -> "pyarrow.Array":
    """`value` n times, dictionary-encoded (null when None)."""
    import numpy as np
    import pyarrow as pa
    if value is None:
        return pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int32()), pa.array([], pa.string()))
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))


def _status(codes: Any) -> "pyarrow.Array":
    import pyarrow as pa
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(STATUS_NAMES))


def _placeholder_batch(schema: "pyarrow.Schema", prefix: str, tasks: range,
                       waiting: str) -> "pyarrow.RecordBatch":
    import numpy as np
    import pyarrow as pa
    n = len(tasks)
    columns = {"task_name": _names(prefix, np.arange(tasks.start, tasks.stop)),
               "status": _status(np.full(n, STATUS_NAMES.index(waiting), np.int8)),
               "host": _labels(None, n), "worker": _labels(None, n)}
    return pa.record_batch([columns.get(f.name) if f.name in columns else pa.nulls(n, f.type)
                            for f in schema], schema=schema)


_CODES = {C_OK: STATUS_NAMES.index(COMPLETED), C_FAILED: STATUS_NAMES.index(FAILED),
          C_CANCELED: STATUS_NAMES.index(CANCELED)}


def _status_codes(status: bytes | bytearray) -> Any:
    """Published status bytes -> positions in STATUS_NAMES (Unknown for a byte not known)."""
    import numpy as np
    table = np.full(256, STATUS_NAMES.index(UNKNOWN), np.int8)
    for code, position in _CODES.items():
        table[code] = position
    return table[np.frombuffer(bytes(status), np.uint8)]


def _result_metrics(schema: "pyarrow.Schema", got: ChunkResult, prefix: str,
                    name: str | None) -> Iterator["pyarrow.RecordBatch"]:
    """A published chunk's metric rows; `name` instead of prefix+index for the combiner."""
    import numpy as np
    import pyarrow as pa
    n = len(got)
    index = np.arange(got.index.start, got.index.stop, dtype=np.int64) if type(got.index) is range \
        else np.frombuffer(got.index, np.int64)
    start = np.frombuffer(got.start, np.float64) if n else np.zeros(0)
    end = np.frombuffer(got.end, np.float64) if n else np.zeros(0)
    attempt = np.frombuffer(got.attempt, np.int32).astype(np.int64) if n else np.zeros(0, np.int64)
    memory = np.round(np.frombuffer(got.memory, np.float32).astype(np.float64), 1) if n \
        else np.zeros(0)
    codes = _status_codes(got.status)
    errors = [[None] * n, [None] * n, [None] * n] if got.errors else None
    for pos, error in (got.errors or {}).items():
        for column, value in zip(errors, error):
            column[pos] = value
    when = schema.field("start_time").type

    def times(seconds: Any) -> "pyarrow.Array":
        return pa.array(np.round(seconds * 1e6).astype(np.int64), mask=seconds == 0).cast(when)

    for lo in _slices(n):
        hi = min(n, lo + BATCH_ROWS)
        s, e, m = start[lo:hi], end[lo:hi], memory[lo:hi]
        count = hi - lo
        ran = (s != 0) & (e != 0)
        columns = {
            "task_name": (_names(prefix, index[lo:hi]) if name is None
                          else pa.array([name] * count, pa.string())),
            "status": _status(codes[lo:hi]),
            "start_time": times(s), "end_time": times(e),
            "run_time": pa.array(np.where(ran, e - s, 0.0), mask=~ran),
            "host": _labels(got.host, count), "worker": _labels(got.worker, count),
            "attempt": pa.array(attempt[lo:hi]),
            "peak_memory_mb": pa.array(m, mask=m == 0),
        }
        for column, values in zip(("exception", "exception_message", "exception_traceback"),
                                  errors or ()):
            columns[column] = pa.array(values[lo:hi], pa.string())
        yield pa.record_batch([columns[f.name] if f.name in columns else pa.nulls(count, f.type)
                               for f in schema], schema=schema)


def metrics_table(job: "Job", cache: bool = False, tz: str | None = "UTC") -> "pyarrow.Table":
    """Every task's metrics as one Arrow table (metrics_schema())."""
    import pyarrow as pa
    return pa.Table.from_batches(list(metric_batches(job, cache, tz)), schema=metrics_schema(tz))


def metrics_frame(job: "Job") -> "pandas.DataFrame":
    """get_metrics(): the metrics as pandas, with the dtypes it always had: times UTC-naive
    datetime64[ns], run_time float seconds, attempt Int64; status, host and worker
    categorical (a million rows take tens of MB, not a dict each)."""
    import pandas as pd
    import pyarrow as pa
    table = metrics_table(job, cache=True, tz=None)
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get,
                            coerce_temporal_nanoseconds=True, split_blocks=True, self_destruct=True)
    del table
    frame["status"] = frame["status"].cat.remove_unused_categories()
    return frame


# -- parameters and results ---------------------------------------------------------------

class _Types:
    """The result table's columns and their Arrow types, widened as batches come (null ->
    int64 -> double; struct fields merged). Remembers the first task that gave each type,
    to name both tasks when two cannot share a column."""

    def __init__(self) -> None:
        self.types: dict[str, Any] = {}
        self.origin: dict[str, tuple[str, Any]] = {}
        self.params: list[str] = []

    def schema(self) -> "pyarrow.Schema":
        import pyarrow as pa
        order = ["task_name"] + self.params + [c for c in RESULT_COLUMNS[1:]]
        return pa.schema([(c, self.types[c]) for c in order if c in self.types])

    def admit(self, columns: dict[str, "_Column"]) -> None:
        import pyarrow as pa
        for name, column in columns.items():
            if name not in self.types:
                self.types[name] = column.array.type
                if column.param:
                    self.params.append(name)
            old, new = self.types[name], column.array.type
            if name not in self.origin and not pa.types.is_null(new):
                self.origin[name] = column.first()
            if old == new or pa.types.is_null(new):
                continue
            try:
                merged = pa.unify_schemas([pa.schema([(name, old)]), pa.schema([(name, new)])],
                                          promote_options="permissive").field(name).type
            except (pa.ArrowException, TypeError, ValueError):
                merged = None
            if merged is None or not _fits(column.array, merged):
                task, value = self.origin[name]
                other_task, other = column.first()
                raise TableError(f"task {other_task}'s {column.what} is {_a(other)}, but task "
                                 f"{task}'s is {_a(value)}: a table column holds one type "
                                 f"(Arrow {new} and {old} do not mix)")
            self.types[name] = merged

    def batch(self, columns: dict[str, "_Column"], n: int,
              schema: "pyarrow.Schema") -> "pyarrow.RecordBatch":
        """The columns as a batch of `schema`: absent columns null, narrower types widened."""
        import pyarrow as pa
        arrays = []
        for field in schema:
            column = columns.get(field.name)
            if column is None:
                arrays.append(pa.nulls(n, field.type))
                continue
            array = column.array
            if array.type != field.type:
                try:
                    array = array.cast(field.type)
                except (pa.ArrowException, TypeError, ValueError) as exc:
                    task, value = column.first()
                    raise TableError(f"task {task}'s {column.what} ({_a(value)}) cannot join "
                                     f"the column of type {field.type}: {exc}") from None
            arrays.append(array)
        return pa.record_batch(arrays, schema=schema)


def _fits(array: Any, kind: Any) -> bool:
    import pyarrow as pa
    try:
        array.cast(kind)
    except (pa.ArrowException, TypeError, ValueError):
        return False
    return True


def _a(value: Any) -> str:
    """'an int', 'a list': a value's Python type for a message."""
    kind = type(value).__qualname__ if type(value).__module__ == "builtins" else \
        f"{type(value).__module__}.{type(value).__qualname__}"
    return f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}"


class _Column:
    """One column of a batch: its values, their Arrow array, and the tasks they belong to."""

    __slots__ = ("values", "array", "what", "param", "tasks", "_first")

    def __init__(self, values: list, what: str, tasks: Callable[[int], str], param: bool = False,
                 kind: Any = None) -> None:
        self.values, self.what, self.tasks, self.param = values, what, tasks, param
        self.array = _to_arrow(values, what, tasks, kind)
        self._first: tuple[str, Any] | None = None

    def first(self) -> tuple[str, Any]:
        """The first task with a value, and the value."""
        if self._first is None:
            self._first = next(((self.tasks(pos), value) for pos, value in enumerate(self.values)
                                if value is not None), (self.tasks(0), None))
        return self._first

    def drop_values(self) -> None:
        """Keep only the Arrow array (and the first value, for messages)."""
        self.first()
        self.values = []


def _to_arrow(values: list, what: str, tasks: Callable[[int], str],
              kind: Any = None) -> "pyarrow.Array":
    """pa.array(values), or a TableError naming the first task whose value Arrow cannot hold,
    or the two tasks whose values cannot share a column."""
    import pyarrow as pa
    try:
        return pa.array(values, kind)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    seen: tuple[int, Any, Any] | None = None
    for pos, value in enumerate(values):
        if value is None:
            continue
        try:
            one = pa.array([value])
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise TableError(f"task {tasks(pos)}'s {what} is {_a(value)}, which an Arrow table "
                             f"cannot hold ({_first_line(exc)}); tables take numbers, text, bytes, "
                             "times, and lists and dicts of them") from None
        if seen is None:
            seen = (pos, value, one.type)
            continue
        try:
            pa.array([seen[1], value])
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            raise TableError(f"task {tasks(pos)}'s {what} is {_a(value)}, but task "
                             f"{tasks(seen[0])}'s is {_a(seen[1])}: a table column holds one type "
                             f"(Arrow {one.type} and {seen[2]} do not mix)") from None
    raise TableError(f"the {what} of tasks {tasks(0)}..{tasks(len(values) - 1)} cannot make one "
                     "Arrow column")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _parameters(job: "Job", chunk: int) -> list:
    try:
        return pickle.loads(job._store.get(layout.inputs(chunk)))
    except FileNotFoundError:
        raise TableError(f"job {job.name!r}: the parameters of chunk {chunk} are missing from "
                         f"{job._store.uri}") from None
    except Exception as exc:            # a class this process cannot import, a broken pickle
        raise TableError(f"job {job.name!r}: cannot read the parameters of chunk {chunk}: "
                         f"{type(exc).__name__}: {exc}") from None


def _param_columns(spec: Any, items: list, tasks: Callable[[int], str]) -> dict[str, _Column]:
    """The parameter columns: one per keyword (kwargs jobs), arg0.. per position (deploy.map),
    else one column 'parameters'. A keyword named like a fixed column gets 'param_' before it."""
    if spec.call_style == "kwargs":
        keys: dict[str, None] = {}
        last = None
        for item in items:
            if item.keys() != last:
                keys.update(dict.fromkeys(item))
                last = item.keys()
        named = {}
        for key in keys:
            label = key
            while label in RESULT_COLUMNS or (label != key and label in keys):
                label = "param_" + label
            named[label] = _Column([item.get(key) for item in items], f"parameter {key!r}", tasks,
                                   param=True)
        return named
    if spec.call_style == "arg":
        return {"arg0": _Column(list(items), "argument", tasks, param=True)}
    if spec.call_style == "args":
        width = max((len(item) for item in items), default=0)
        return {f"arg{i}": _Column([item[i] if i < len(item) else None for item in items],
                                   f"argument {i}", tasks, param=True) for i in range(width)}
    return {"parameters": _Column(list(items), "parameters", tasks, param=True)}


def _result_columns(job: "Job", cache: bool) -> Iterator[tuple[dict[str, _Column], int]]:
    """Each batch's columns (parameters, result, status, exception) and its row count."""
    import numpy as np
    import pyarrow as pa
    spec = job.spec
    for chunk, tasks, got, waiting in _chunks(job, cache):
        items = _parameters(job, chunk)
        if got is not None:
            got = got.sorted()
            index = got.index
            if not (type(index) is range and index == tasks):
                index = list(index)
                items = [items[i - tasks.start] for i in index]
        else:
            index = tasks
        codes = _status_codes(got.status) if got is not None else \
            np.full(len(index), STATUS_NAMES.index(waiting), np.int8)
        for lo in _slices(len(index)):
            hi = min(len(index), lo + BATCH_ROWS)
            rows = index[lo:hi]

            def name(pos: int, rows: Any = rows) -> str:
                return spec.task_name(rows[pos])
            columns = {"task_name": _Column([spec.task_name(i) for i in rows], "task name", name,
                                            kind=pa.string())}
            columns.update(_param_columns(spec, items[lo:hi], name))
            values = got.values[lo:hi] if got is not None else [None] * (hi - lo)
            columns["result"] = _Column(values, "result", name)
            columns["status"] = _Column([], "status", name, kind=pa.string())
            columns["status"].array = _status(codes[lo:hi])
            errors = got.errors if got is not None else {}
            columns["exception"] = _Column(
                [errors[p][0] if p in errors else None for p in range(lo, hi)] if errors
                else [None] * (hi - lo), "exception", name, kind=pa.string())
            yield columns, hi - lo


def results_table(job: "Job") -> "pyarrow.Table":
    """Parameters, result, status and exception type per task, in task order, as one Arrow
    table (the combiner's value is get_results()'s). Raises TableError for a value Arrow
    cannot hold, naming the task and its type."""
    import pyarrow as pa
    types, batches = _Types(), []
    for columns, n in _result_columns(job, cache=False):
        types.admit(columns)
        for column in columns.values():
            column.drop_values()
        batches.append((columns, n))
    schema = _status_dictionary(types.schema())
    return pa.Table.from_batches([types.batch(c, n, schema) for c, n in batches], schema=schema)


def _status_dictionary(schema: "pyarrow.Schema") -> "pyarrow.Schema":
    """Status dictionary-encoded whatever the first batch had (a string or a dictionary)."""
    import pyarrow as pa
    if "status" in schema.names:
        i = schema.get_field_index("status")
        schema = schema.set(i, pa.field("status", pa.dictionary(pa.int8(), pa.string())))
    return schema


# -- writing files ------------------------------------------------------------------------------

def output_format(path: str) -> str:
    """'parquet', 'feather' or 'csv' by the file's extension; ValueError for any other, or
    for a place a file cannot be written."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory; give a file name")
    suffix = os.path.splitext(path)[1].lower()
    kind = FORMATS.get(suffix)
    if kind is None:
        raise ValueError(f"{path}: unknown output format {suffix or '(no extension)'!r}: use "
                         ".parquet, .feather (or .arrow) or .csv")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: no such directory {folder}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{path}: cannot write into {folder} (permission denied)")
    return kind


class _Writer:
    """Batches into `path` through a temporary file beside it that replaces `path` only when
    everything is written: on any error nothing is left."""

    def __init__(self, path: str, kind: str) -> None:
        self.path, self.kind, self.rows = path, kind, 0
        folder, base = os.path.split(os.path.abspath(path))
        self.temp = os.path.join(folder, f".{base}.{os.getpid()}.part")
        self.writer: Any = None
        self.schema: Any = None

    def open(self, schema: "pyarrow.Schema") -> None:
        import pyarrow as pa
        self.close()
        self.rows, self.schema = 0, schema
        try:
            self._open(schema)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise TableError(f"{self.path}: cannot write these columns as {self.kind}: "
                             f"{_first_line(exc)}") from None

    def _open(self, schema: "pyarrow.Schema") -> None:
        import pyarrow as pa
        if self.kind == "parquet":
            import pyarrow.parquet as pq
            self.writer = pq.ParquetWriter(self.temp, schema)
        elif self.kind == "feather":
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            self.writer = pa.ipc.new_file(self.temp, _plain_labels(schema), options=options)
        else:
            import pyarrow.csv as csv
            self.writer = csv.CSVWriter(self.temp, _utc_as_text(schema))

    def write(self, batch: "pyarrow.RecordBatch", first_task: str) -> None:
        import pyarrow as pa
        if self.kind == "feather":
            batch = batch.cast(_plain_labels(batch.schema))
        elif self.kind == "csv":
            batch = _utc_text(batch)
        try:
            self.writer.write_batch(batch)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise TableError(f"cannot write the rows from task {first_task} on as "
                             f"{self.kind}: {_first_line(exc)}") from None
        self.rows += batch.num_rows

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()

    def commit(self) -> None:
        self.close()
        os.replace(self.temp, self.path)

    def discard(self) -> None:
        try:
            self.close()
        except Exception:
            pass
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass


def _plain_labels(schema: "pyarrow.Schema") -> "pyarrow.Schema":
    """Host and worker as plain strings: an IPC file keeps one dictionary per column, and
    theirs changes from chunk to chunk (status's is always the same)."""
    import pyarrow as pa
    for i, field in enumerate(schema):
        if pa.types.is_dictionary(field.type) and field.name != "status":
            schema = schema.set(i, pa.field(field.name, field.type.value_type))
    return schema


def _is_utc(kind: Any) -> bool:
    import pyarrow as pa
    return pa.types.is_timestamp(kind) and kind.tz in ("UTC", "+00:00", "Z")


def _utc_as_text(schema: "pyarrow.Schema") -> "pyarrow.Schema":
    import pyarrow as pa
    for i, field in enumerate(schema):
        if _is_utc(field.type):
            schema = schema.set(i, pa.field(field.name, pa.string()))
    return schema


def _utc_text(batch: "pyarrow.RecordBatch") -> "pyarrow.RecordBatch":
    """UTC times as ISO text with a Z for CSV, as the CSV writer would write them itself, but
    ten times faster (it looks the zone up for every value)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if not any(_is_utc(f.type) for f in batch.schema):
        return batch
    def text(column: Any) -> Any:
        naive = column.cast(pa.timestamp(column.type.unit))
        return pc.binary_join_element_wise(naive.cast(pa.string()), "Z", "")
    arrays = [text(column) if _is_utc(column.type) else column for column in batch.columns]
    return pa.record_batch(arrays, schema=_utc_as_text(batch.schema))


_CSV_SCALARS = ("is_null", "is_boolean", "is_integer", "is_floating", "is_decimal", "is_string",
                "is_large_string", "is_date", "is_time", "is_timestamp")


def _csv_check(columns: dict[str, _Column], schema: "pyarrow.Schema") -> None:
    """CSV holds single values: refuse a column of lists, dicts, bytes or durations,
    naming the first task that has one."""
    import pyarrow as pa
    for field in schema:
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if any(getattr(pa.types, test)(kind) for test in _CSV_SCALARS):
            continue
        column = columns.get(field.name)
        if column is None:
            continue
        task, value = column.first()
        if value is None:
            continue
        raise TableError(f"task {task}'s {column.what} is {_a(value)} (Arrow {kind}): a CSV cell "
                         "holds one number, text or time; write .parquet or .feather to keep it")


def write_metrics(job: "Job", path: str) -> int:
    """Every task's metrics into `path` (format by extension), batch by batch; the rows written."""
    kind = output_format(path)
    out = _Writer(path, kind)
    try:
        out.open(metrics_schema())
        for batch in metric_batches(job, cache=False):
            out.write(batch, batch.column(0)[0].as_py() if batch.num_rows else "")
        out.commit()
    except BaseException:
        out.discard()
        raise
    return out.rows


def write_results(job: "Job", path: str) -> int:
    """Parameters, result, status and exception per task into `path` (format by extension),
    batch by batch; the rows written. Should a later batch widen a column's type (a
    result None so far, then an int), the file is started again with the wider type."""
    kind = output_format(path)
    out = _Writer(path, kind)
    types = _Types()
    try:
        for _ in range(100):
            restart = False
            for columns, n in _result_columns(job, cache=False):
                types.admit(columns)
                schema = _status_dictionary(types.schema())
                if kind == "csv":
                    _csv_check(columns, schema)
                if out.writer is None or schema != out.schema:
                    if out.rows:
                        restart = True
                        break
                    out.open(schema)
                out.write(types.batch(columns, n, schema), columns["task_name"].values[0])
            if not restart:
                if out.writer is None:
                    out.open(_status_dictionary(types.schema()))
                out.commit()
                return out.rows
            out.open(_status_dictionary(types.schema()))
        raise TableError(f"job {job.name!r}: the results' column types kept changing")
    except BaseException:
        out.discard()
        raise
