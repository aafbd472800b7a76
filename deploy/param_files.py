"""Reading a parameter file for `deploy run --params`: a JSON list of objects, JSON Lines
(.jsonl/.ndjson), CSV with a header row, or an Arrow table (Parquet .parquet/.pq, Feather
or Arrow IPC .feather/.arrow/.ipc, an IPC stream .arrows).

`read()` is the one place such files are read; whatever is wrong with one (missing,
unreadable, not text, not the format, not objects) raises ParamFileError naming the file
and, where it helps, the line. `table_rows()` turns a pandas DataFrame or an Arrow table
given to `map_job.create` into the same list of dicts, one per row.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from typing import Any, Callable

_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?")


class ParamFileError(ValueError):
    """A parameter file that cannot be read as parameter sets."""


def read(path: str) -> list[dict[str, Any]]:
    """The parameter sets in `path`: a non-empty list of dicts with string keys."""
    data = _read_bytes(path)
    suffix = os.path.splitext(path)[1].lower()
    binary = _BINARY.get(suffix) or (_sniff(data) if suffix not in _TEXT else None)
    if binary:
        rows = _table_file(data, binary, path)
        if not rows:
            raise ParamFileError(f"{path}: no parameter sets in the file (the table has no rows)")
        return rows
    try:
        return _text_file(data, suffix, path)
    except ParamFileError as exc:
        if suffix and suffix not in _TEXT:      # say why it was read as JSON
            raise ParamFileError(f"{exc} (read as JSON: the extension {suffix!r} is none of "
                                 f"{', '.join(sorted(_TEXT | set(_BINARY)))})") from None
        raise


def _text_file(data: bytes, suffix: str, path: str) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParamFileError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                             f"{exc.start})") from None
    parse: Callable[[str, str], list[dict[str, Any]]]
    parse = {".csv": _csv, ".jsonl": _json_lines, ".ndjson": _json_lines}.get(suffix, _json)
    rows = parse(text, path)
    if not rows:
        raise ParamFileError(f"{path}: no parameter sets in the file")
    return rows


def _read_bytes(path: str) -> bytes:
    """The file's bytes: a regular file or a pipe (`--params <(...)`), nothing else."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ParamFileError(f"{path}: is a directory, not a parameter file")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            kind = "a terminal" if stat.S_ISCHR(mode) and _is_tty(path) else "not a regular file"
            raise ParamFileError(f"{path}: {kind}; give a JSON, JSON Lines, CSV, Parquet or "
                                 "Arrow file")
        with open(path, "rb") as f:
            return f.read()
    except ParamFileError:
        raise
    except FileNotFoundError:
        raise ParamFileError(f"no such parameter file: {path}") from None
    except OSError as exc:
        raise ParamFileError(f"cannot read parameter file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:           # an embedded NUL byte
        raise ParamFileError(f"bad parameter file name {path!r}: {exc}") from None


def _is_tty(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)   # one, not one per line


def _loads(text: str, where: str) -> Any:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ParamFileError(f"{where}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ParamFileError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:           # duplicate keys; an integer of more than 4300 digits
        raise ParamFileError(f"{where}: {exc}") from None


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null", int: "number",
            float: "number"}.get(type(value), type(value).__name__)


def _json(text: str, path: str) -> list[dict[str, Any]]:
    data = _loads(text, path)
    if not isinstance(data, list):
        raise ParamFileError(f"{path}: expected a JSON list of objects, got a JSON {_kind(data)}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ParamFileError(f"{path}: item {i} is a JSON {_kind(item)}, not an object of "
                                 "keyword arguments")
    return data


def _json_lines(text: str, path: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.split("\n"), 1):   # not splitlines: JSON allows U+2028
        if not line.strip():
            continue
        item = _loads(line, f"{path}, line {number}")
        if not isinstance(item, dict):
            raise ParamFileError(f"{path}, line {number}: a JSON {_kind(item)}, not an object "
                                 "of keyword arguments")
        rows.append(item)
    return rows


def _csv(text: str, path: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ParamFileError(f"{path}: empty file: expected a CSV header row")
        header = [name.strip() for name in header]
        for column, name in enumerate(header, 1):
            if not name:
                raise ParamFileError(f"{path}: column {column} of the header has no name")
            if header.index(name) != column - 1:
                raise ParamFileError(f"{path}: column {name!r} appears twice in the header")
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ParamFileError(f"{path}, line {reader.line_num}: {len(row)} fields, but the "
                                     f"header has {len(header)}")
            rows.append({name: _cell(cell, path, reader.line_num) for name, cell in zip(header, row)})
    except csv.Error as exc:
        raise ParamFileError(f"{path}, line {reader.line_num}: not valid CSV: {exc}") from None
    return rows


def _cell(value: str, path: str, line: int) -> Any:
    """A cell that is a decimal number becomes an int or a float; anything else stays text."""
    number = value.strip()
    if _INT.fullmatch(number):
        try:
            return int(number)
        except ValueError as exc:       # more digits than int() will convert
            raise ParamFileError(f"{path}, line {line}: {exc}") from None
    if _FLOAT.fullmatch(number):
        return float(number)
    return value


# -- Arrow tables: Parquet and Feather/Arrow IPC files, pandas DataFrames -----------------

_BINARY = {".parquet": "parquet", ".pq": "parquet", ".feather": "feather", ".arrow": "feather",
           ".ipc": "feather", ".arrows": "stream"}
_TEXT = {".json", ".jsonl", ".ndjson", ".csv"}
_FORMAT_NAMES = {"parquet": "Parquet", "feather": "Feather/Arrow IPC", "stream": "Arrow IPC stream"}


def _sniff(data: bytes) -> str | None:
    """The table format a file without a known suffix (a pipe: `--params <(...)`) starts with."""
    if data[:4] == b"PAR1":
        return "parquet"
    if data[:6] == b"ARROW1" or data[:4] == b"FEA1":
        return "feather"
    if data[:4] == b"\xff\xff\xff\xff":
        return "stream"
    return None


def _table_file(data: bytes, kind: str, path: str) -> list[dict[str, Any]]:
    """The rows of a Parquet, Feather/Arrow IPC file or IPC stream held in `data`."""
    try:
        import pyarrow as pa
    except ImportError:
        raise ParamFileError(f"{path}: reading {_FORMAT_NAMES[kind]} files needs pyarrow "
                             "(pip install pyarrow)") from None
    try:
        source = pa.BufferReader(data)
        if kind == "parquet":
            import pyarrow.parquet as pq
            table = pq.ParquetFile(source).read()     # read_table refuses repeated names
        elif kind == "feather":
            import pyarrow.feather as feather
            table = feather.read_table(source)
        else:
            table = pa.ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError, ValueError, TypeError, KeyError) as exc:
        raise ParamFileError(f"{path}: not a readable {_FORMAT_NAMES[kind]} file: "
                             f"{_first_line(exc)}") from None
    try:
        return arrow_rows(table, pandas_meta=True)
    except (TypeError, ValueError) as exc:
        raise ParamFileError(f"{path}: {exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def table_rows(obj: Any, limit: int) -> Any:
    """`obj` as a list of dicts (at most `limit`, one per row, columns as keyword arguments)
    when it is a pandas DataFrame, a pyarrow Table or RecordBatch, or another data frame
    that speaks the Arrow stream protocol (polars); anything else as it is. Known by the
    names of its classes, so pandas and pyarrow are imported only for such objects."""
    kinds = {(c.__module__.partition(".")[0], c.__name__) for c in type(obj).__mro__}
    if ("pandas", "DataFrame") in kinds:
        return _frame_rows(obj.iloc[:limit])
    if ("pyarrow", "Table") in kinds or ("pyarrow", "RecordBatch") in kinds:
        return arrow_rows(obj.slice(0, limit))
    if any(name == "DataFrame" for _, name in kinds) and hasattr(type(obj), "__arrow_c_stream__"):
        import pyarrow as pa
        return arrow_rows(pa.table(obj).slice(0, limit))
    return obj


def _check_names(names: list[Any], what: str) -> None:
    """Column names that can be keyword arguments: strings, not empty, each once."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str):
            kind = type(name).__name__
            article = "an" if kind[0] in "aeiou" else "a"
            raise TypeError(f"{what} column {i} is named {name!r}, {article} {kind}, not a "
                            "string: columns are the tasks' keyword arguments")
        if not name:
            raise ValueError(f"{what} column {i} has an empty name: columns are the tasks' "
                             "keyword arguments")
        if name in seen:
            raise ValueError(f"{what} column {name!r} appears twice")
        seen.add(name)


def arrow_rows(table: Any, pandas_meta: bool = False) -> list[dict[str, Any]]:
    """One dict per row of a pyarrow Table or RecordBatch, typed as stored: ints stay ints,
    nulls are None, timestamps datetimes, lists lists, structs dicts. With `pandas_meta`,
    the pandas index a DataFrame was written with is left out and names that were not
    strings in that DataFrame are refused (pandas wrote them as their text)."""
    names = list(table.schema.names)
    if pandas_meta:
        names = _pandas_columns(table.schema, names)
    _check_names(names, "the table's")
    if not names:
        raise ValueError("the table has no columns: give one column per keyword argument")
    columns = [_python_values(table.column(name)) for name in names]
    return [dict(zip(names, values)) for values in zip(*columns)]


def _pandas_columns(schema: Any, names: list[str]) -> list[str]:
    """The names of the columns the DataFrame had, from the metadata pandas wrote."""
    try:
        meta = schema.pandas_metadata
    except ValueError:                  # metadata that is not JSON: not pandas', ignore it
        return names
    if not isinstance(meta, dict) or not all(isinstance(level, dict)
                                             for level in meta.get("column_indexes") or []):
        return names                    # not what pandas writes: the names are the names
    levels = meta.get("column_indexes") or []
    if len(levels) > 1:
        raise TypeError(f"the columns were written from a pandas DataFrame with {len(levels)} "
                        "levels of column names (tuples), not strings: columns are the tasks' "
                        "keyword arguments")
    kind = levels[0].get("pandas_type") if levels else "unicode"
    if kind not in ("unicode", "string", "empty", None):
        first = names[0] if names else ""
        raise TypeError(f"column {first!r} was written from a pandas DataFrame whose column names "
                        f"are {kind} values, not strings: columns are the tasks' keyword arguments")
    index = {i for i in meta.get("index_columns") or [] if isinstance(i, str)}
    return [n for n in names if n not in index]


def _python_values(column: Any) -> list[Any]:
    """A column's values as Python objects. Nanosecond times become datetime/timedelta
    (microseconds) when no nanoseconds are lost; otherwise they stay pandas Timestamps."""
    import pyarrow as pa
    kind = column.type
    if (pa.types.is_timestamp(kind) or pa.types.is_duration(kind) or pa.types.is_time64(kind)) \
            and kind.unit == "ns":
        finer = (pa.timestamp("us", kind.tz) if pa.types.is_timestamp(kind) else
                 pa.duration("us") if pa.types.is_duration(kind) else pa.time64("us"))
        try:
            column = column.cast(finer)
        except pa.ArrowInvalid:
            pass
    return column.to_pylist()


def _frame_rows(frame: Any) -> list[dict[str, Any]]:
    """One dict per row of a pandas DataFrame (its index is not a parameter). Typed columns
    go through Arrow, as a file would: missing values (NaN, NaT, NA) are None, numpy
    numbers Python numbers, Timestamps datetimes. object columns and what Arrow cannot hold
    (periods, intervals) pass their values as they are."""
    import pyarrow as pa
    names = list(frame.columns)
    _check_names(names, "the DataFrame's")
    columns = []
    for position in range(len(names)):
        series = frame.iloc[:, position]
        values = None
        if series.dtype != object:
            try:
                array = pa.array(series, from_pandas=True)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                array = None
            if array is not None and not isinstance(array.type, pa.ExtensionType):
                values = _python_values(array)
        columns.append(series.tolist() if values is None else values)
    if not names:
        raise ValueError("the DataFrame has no columns: give one column per keyword argument")
    return [dict(zip(names, values)) for values in zip(*columns)]
