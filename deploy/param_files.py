"""Reading a parameter file for `deploy run --params`: a JSON list of objects, JSON Lines
(.jsonl/.ndjson) or CSV with a header row.

`read()` is the one place such files are read; whatever is wrong with one (missing,
unreadable, not text, not the format, not objects) raises ParamFileError naming the file
and, where it helps, the line.
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
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParamFileError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                             f"{exc.start})") from None
    suffix = os.path.splitext(path)[1].lower()
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
            raise ParamFileError(f"{path}: {kind}; give a JSON, JSON Lines or CSV file")
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
