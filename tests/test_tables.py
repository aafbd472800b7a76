"""Arrow and Parquet in and out: parameter files and DataFrames in, results and metrics tables
out (Parquet, Feather/Arrow IPC, CSV), every file read back and compared value by value and
type by type; values a format cannot hold refused by name, nothing written."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from decimal import Decimal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import deploy
from cli_run import assert_usage_error, nothing_written, run_main
from conftest import ROOT, run_python
from deploy.environment import Local, LocalAsync
from deploy.jobs import tables
from deploy.param_files import ParamFileError, read

UTC = dt.timezone.utc

# one column of each kind a parameter file may hold, and the Python value each row must give
TYPED = pa.table({
    "i": pa.array([1, None, -(2 ** 62)], pa.int64()),
    "u8": pa.array([0, 255, None], pa.uint8()),
    "f": pa.array([0.5, None, float("inf")], pa.float64()),
    "s": pa.array(["a", "", None], pa.string()),
    "b": pa.array([True, False, None], pa.bool_()),
    "t": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 6), None, dt.datetime(1970, 1, 1)],
                  pa.timestamp("us")),
    "tz": pa.array([dt.datetime(2024, 1, 2, tzinfo=UTC), None, None], pa.timestamp("ms", tz="UTC")),
    "tns": pa.array([1_700_000_000_123_456_000, None, 0], pa.timestamp("ns")),
    "d": pa.array([dt.date(2024, 2, 29), None, dt.date(1, 1, 1)], pa.date32()),
    "dur": pa.array([dt.timedelta(seconds=1.5), None, dt.timedelta(0)], pa.duration("us")),
    "dec": pa.array([Decimal("1.25"), None, Decimal("-3.00")], pa.decimal128(5, 2)),
    "l": pa.array([[1, 2], [], None], pa.list_(pa.int64())),
    "st": pa.array([{"a": 1, "b": "x"}, None, {"a": None, "b": "z"}]),
    "bin": pa.array([b"\x00\xff", None, b""], pa.binary()),
    "cat": pa.array(["p", "q", "p"]).dictionary_encode(),
})
EXPECTED = [
    {"i": 1, "u8": 0, "f": 0.5, "s": "a", "b": True, "t": dt.datetime(2024, 1, 2, 3, 4, 5, 6),
     "tz": dt.datetime(2024, 1, 2, tzinfo=UTC), "tns": dt.datetime(2023, 11, 14, 22, 13, 20, 123456),
     "d": dt.date(2024, 2, 29), "dur": dt.timedelta(seconds=1.5), "dec": Decimal("1.25"),
     "l": [1, 2], "st": {"a": 1, "b": "x"}, "bin": b"\x00\xff", "cat": "p"},
    {"i": None, "u8": 255, "f": None, "s": "", "b": False, "t": None, "tz": None, "tns": None,
     "d": None, "dur": None, "dec": None, "l": [], "st": None, "bin": None, "cat": "q"},
    {"i": -(2 ** 62), "u8": None, "f": float("inf"), "s": None, "b": None,
     "t": dt.datetime(1970, 1, 1), "tz": None, "tns": dt.datetime(1970, 1, 1), "d": dt.date(1, 1, 1),
     "dur": dt.timedelta(0), "dec": Decimal("-3.00"), "l": None, "st": {"a": None, "b": "z"},
     "bin": b"", "cat": "p"},
]


def same(got, expected) -> None:
    """Equal values of exactly the same types, recursively (1 == 1.0 == True is not enough)."""
    assert type(got) is type(expected), (got, expected)
    if isinstance(expected, dict):
        assert list(got) == list(expected), (got, expected)
        for key in expected:
            same(got[key], expected[key])
    elif isinstance(expected, list):
        assert len(got) == len(expected), (got, expected)
        for a, b in zip(got, expected):
            same(a, b)
    else:
        assert got == expected, (got, expected)
        if isinstance(expected, dt.datetime):
            assert got.tzinfo == expected.tzinfo or got.utcoffset() == expected.utcoffset()


def write_table(table: pa.Table, path) -> None:
    path = str(path)
    if path.endswith((".parquet", ".pq")):
        pq.write_table(table, path)
    elif path.endswith(".arrows"):
        with pa.ipc.new_stream(path, table.schema) as writer:
            writer.write_table(table)
    else:
        feather.write_feather(table, path)


# -- parameter files in -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["p.parquet", "p.pq", "p.feather", "p.arrow", "p.ipc", "p.arrows"])
def test_table_files_give_one_dict_per_row_typed_as_stored(tmp_path, name):
    write_table(TYPED, tmp_path / name)
    same(read(str(tmp_path / name)), EXPECTED)


@pytest.mark.parametrize("name", ["p.parquet", "p.feather", "p.arrows"])
def test_a_table_without_a_known_suffix_is_known_by_its_first_bytes(tmp_path, name):
    """`--params <(...)` names a pipe without a suffix: the format is sniffed."""
    write_table(TYPED, tmp_path / name)
    os.rename(tmp_path / name, tmp_path / "params")
    same(read(str(tmp_path / "params")), EXPECTED)


def test_nanoseconds_that_a_datetime_cannot_hold_stay_pandas_timestamps(tmp_path):
    table = pa.table({"t": pa.array([1_700_000_000_123_456_789], pa.timestamp("ns"))})
    pq.write_table(table, tmp_path / "ns.parquet")
    [row] = read(str(tmp_path / "ns.parquet"))
    assert type(row["t"]) is pd.Timestamp and row["t"].value == 1_700_000_000_123_456_789


def test_a_pandas_written_parquet_leaves_its_index_out(tmp_path):
    frame = pd.DataFrame({"x": [1, 2], "when": pd.to_datetime(["2024-05-01", None]),
                          "n": pd.array([3, None], dtype="Int64"), "v": [0.5, float("nan")]},
                         index=pd.Index([10, 20], name="row"))
    frame.to_parquet(tmp_path / "f.parquet")
    same(read(str(tmp_path / "f.parquet")),
         [{"x": 1, "when": dt.datetime(2024, 5, 1), "n": 3, "v": 0.5},
          {"x": 2, "when": None, "n": None, "v": None}])


KINDS = '''
def kinds(**kwargs):
    return {k: [type(v).__name__, repr(v)] for k, v in sorted(kwargs.items())}
'''


def deploy_cmd(*args, check=None):
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def test_deploy_run_with_a_parquet_file_passes_typed_keyword_arguments(tmp_path):
    (tmp_path / "kinds.py").write_text(KINDS)
    table = TYPED.select(["i", "f", "s", "t", "l", "st"])
    pq.write_table(table, tmp_path / "params.parquet")
    out = deploy_cmd("run", f"{tmp_path}/kinds.py:kinds", "--params", str(tmp_path / "params.parquet"),
                     "--name", "typed", check=0).stdout
    results = json.loads(next(line for line in out.splitlines() if line.startswith("results: "))[9:])
    expected = [{k: [type(v).__name__, repr(v)] for k, v in sorted(row.items()) if k in table.column_names}
                for row in EXPECTED]
    assert results == expected
    assert [r["i"][0] for r in results] == ["int", "NoneType", "int"]
    assert results[0]["t"][0] == "datetime" and results[0]["l"][0] == "list"


def test_an_unknown_suffix_is_read_as_json_and_says_so(tmp_path):
    (tmp_path / "p.txt").write_text('[{"x": 1}]')
    assert read(str(tmp_path / "p.txt")) == [{"x": 1}]
    (tmp_path / "p.xlsx").write_bytes(b"PK\x03\x04 not a table")
    with pytest.raises(ParamFileError, match=r"read as JSON: the extension '\.xlsx' is none of"):
        read(str(tmp_path / "p.xlsx"))


@pytest.fixture
def bad_tables(tmp_path):
    """Parameter files that are tables, each wrong in one way; returns their folder."""
    pd.DataFrame({0: [1], 1: [2]}).to_parquet(tmp_path / "intnames.parquet")
    pd.DataFrame({("a", "b"): [1]}).to_parquet(tmp_path / "multi.parquet")
    pq.write_table(pa.table({"x": pa.array([], pa.int64())}), tmp_path / "norows.parquet")
    feather.write_feather(pa.table({"x": pa.array([], pa.int64())}), tmp_path / "norows.feather")
    pq.write_table(pa.Table.from_arrays([pa.array([1])], names=[""]), tmp_path / "emptyname.parquet")
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["x", "x"]),
                   tmp_path / "dupnames.parquet")
    pq.write_table(TYPED, tmp_path / "good.parquet")
    whole = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.parquet").write_text('[{"x": 1}]')
    feather.write_feather(TYPED, tmp_path / "good.feather")
    (tmp_path / "truncated.feather").write_bytes((tmp_path / "good.feather").read_bytes()[:300])
    (tmp_path / "empty.arrow").write_bytes(b"")
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04\x14\x00 a spreadsheet")
    (tmp_path / "f.py").write_text("def f(**kwargs):\n    return kwargs\n")
    return tmp_path


BAD_TABLES = {
    "missing file": ("none.parquet", "no such parameter file"),
    "int column names": ("intnames.parquet", "column names are int64 values, not strings"),
    "tuple column names": ("multi.parquet", "2 levels of column names"),
    "no rows": ("norows.parquet", "no parameter sets in the file"),
    "no rows, feather": ("norows.feather", "no parameter sets in the file"),
    "empty column name": ("emptyname.parquet", "column 0 has an empty name"),
    "duplicate column names": ("dupnames.parquet", "column 'x' appears twice"),
    "truncated parquet": ("truncated.parquet", "not a readable Parquet file"),
    "text named parquet": ("text.parquet", "not a readable Parquet file"),
    "truncated feather": ("truncated.feather", "not a readable Feather/Arrow IPC file"),
    "empty arrow file": ("empty.arrow", "not a readable Feather/Arrow IPC file"),
    "unknown extension": ("sheet.xlsx", "(read as JSON: the extension '.xlsx' is none of .arrow"),
}


@pytest.mark.parametrize("kind", list(BAD_TABLES))
def test_bad_table_files_are_one_line_usage_errors(kind, bad_tables, deploy_home):
    name, message = BAD_TABLES[kind]
    code, out, err = run_main("run", f"{bad_tables}/f.py:f", "--params", str(bad_tables / name))
    assert_usage_error(code, err, message)
    assert str(bad_tables / name) in err
    assert out == "" and nothing_written(deploy_home)


# -- DataFrames and Arrow tables into map_job.create ------------------------------------------

def kinds(**kwargs):
    return {k: type(v).__name__ for k, v in kwargs.items()}


def test_map_job_create_takes_a_dataframe_one_task_per_row():
    frame = pd.DataFrame({
        "i": [1, 2], "f": [1.5, float("nan")], "t": pd.to_datetime(["2024-01-01", None]),
        "s": ["a", None], "c": pd.Categorical(["u", "v"]), "n": pd.array([1, None], dtype="Int64"),
        "o": [{"k": 1}, [1]], "p": pd.period_range("2020-01", periods=2, freq="M"),
    }, index=[7, 8])
    job = deploy.map_job.create(kinds, frame, environment=Local())
    assert job.get_map_results() == [
        {"i": "int", "f": "float", "t": "datetime", "s": "str", "c": "str", "n": "int", "o": "dict",
         "p": "Period"},
        {"i": "int", "f": "NoneType", "t": "NoneType", "s": "NoneType", "c": "str", "n": "NoneType",
         "o": "list", "p": "Period"}]
    params = job.get_parameters()
    same(params[0]["t"], dt.datetime(2024, 1, 1))
    assert params[1]["o"] == [1] and params[0]["o"] == {"k": 1}
    assert [p["i"] for p in params] == [1, 2]


def test_map_job_create_takes_an_arrow_table_and_a_record_batch():
    job = deploy.map_job.create(lambda **kw: kw, TYPED, environment=Local())
    same(job.get_map_results(), EXPECTED)
    batch = TYPED.select(["i", "s"]).to_batches()[0]
    assert deploy.map_job.create(lambda i, s: [i, s], batch, environment=Local()).get_map_results() \
        == [[1, "a"], [None, ""], [-(2 ** 62), None]]


class DataFrame:
    """Another library's data frame: known only by the Arrow C stream protocol (as polars)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __arrow_c_stream__(self, requested_schema=None):
        return self.table.__arrow_c_stream__(requested_schema)


def test_map_job_create_takes_any_data_frame_speaking_the_arrow_stream_protocol():
    frame = DataFrame(TYPED.select(["i", "l"]))
    assert deploy.map_job.create(lambda i, l: [i, l], frame, environment=Local()).get_map_results() \
        == [[1, [1, 2]], [None, []], [-(2 ** 62), None]]


@pytest.mark.parametrize("frame, error, message", [
    (pd.DataFrame({0: [1]}), TypeError, "column 0 is named 0, an int, not a string"),
    (pd.DataFrame([[1, 2]], columns=["x", "x"]), ValueError, "column 'x' appears twice"),
    (pd.DataFrame({"x": []}), ValueError, "parameter_set is empty"),
    (pd.DataFrame(index=[1, 2]), ValueError, "has no columns"),
    (pd.DataFrame({"x": [1], "z": [2]}), TypeError, "unexpected keyword argument 'z'"),
    (pa.table({"x": pa.array([], pa.int64())}), ValueError, "parameter_set is empty"),
])
def test_bad_frames_are_refused_before_anything_is_written(frame, error, message, deploy_home):
    with pytest.raises(error, match=message):
        deploy.map_job.create(lambda x: x, frame, environment=Local())
    assert nothing_written(deploy_home)


def test_max_tasks_counts_rows():
    with pytest.raises(ValueError, match="more than max_tasks=2"):
        deploy.map_job.create(lambda x: x, pd.DataFrame({"x": range(5)}), environment=Local(),
                              max_tasks=2)
    assert deploy.map_job.create(lambda x: x, pd.DataFrame({"x": range(2)}), environment=Local(),
                                 max_tasks=2).get_map_results() == [0, 1]


def test_plain_lists_do_not_import_pandas_or_pyarrow():
    out = run_python("""
        import sys, deploy
        from deploy.environment import Local
        job = deploy.map_job.create(lambda x: x + 1, [{"x": 1}], environment=Local())
        print(job.get_map_results(), sorted(m for m in ("pandas", "pyarrow", "numpy") if m in sys.modules))
    """).stdout
    assert out.strip() == "[2] []"


# -- results and metrics out ---------------------------------------------------------------------

def divide(x, y):
    return {"q": x / y, "when": dt.datetime(2024, 1, 1) + dt.timedelta(days=x)}


def add_combiner(**results):
    return len(results)


DIVIDE = [{"x": 1, "y": 2}, {"x": 1, "y": 0}, {"x": 3, "y": 4}]


def test_results_table_holds_parameters_result_status_and_exception():
    job = deploy.map_job.create(divide, DIVIDE, environment=Local())
    table = job.get_results_table()
    assert table.schema.names == ["task_name", "x", "y", "result", "status", "exception"]
    assert table.schema.field("x").type == pa.int64()
    assert table.schema.field("result").type == pa.struct([("q", pa.float64()), ("when", pa.timestamp("us"))])
    same(table.to_pylist(), [
        {"task_name": "divide-0-0", "x": 1, "y": 2,
         "result": {"q": 0.5, "when": dt.datetime(2024, 1, 2)}, "status": "Completed", "exception": None},
        {"task_name": "divide-0-1", "x": 1, "y": 0, "result": None, "status": "Failed",
         "exception": "ZeroDivisionError"},
        {"task_name": "divide-0-2", "x": 3, "y": 4,
         "result": {"q": 0.75, "when": dt.datetime(2024, 1, 4)}, "status": "Completed", "exception": None}])
    frame = table.to_pandas()
    assert list(frame.task_name) == ["divide-0-0", "divide-0-1", "divide-0-2"]
    assert list(frame.status) == ["Completed", "Failed", "Completed"]


def test_results_table_of_deploy_map_and_clashing_names():
    job = deploy.map_job.submit(lambda a, b: a * b, [(1, "x"), (2, "y")], "args", environment=Local())
    same(job.get_results_table().to_pylist(), [
        {"task_name": "lambda-0-0", "arg0": 1, "arg1": "x", "result": "x", "status": "Completed",
         "exception": None},
        {"task_name": "lambda-0-1", "arg0": 2, "arg1": "y", "result": "yy", "status": "Completed",
         "exception": None}])
    clash = deploy.map_job.create(lambda status, result, param_status: status + result,
                                  [{"status": 1, "result": 2, "param_status": 0}], environment=Local())
    assert clash.get_results_table().to_pylist() == [
        {"task_name": "lambda-0-0", "param_param_status": 1, "param_result": 2, "param_status": 0,
         "result": 3, "status": "Completed", "exception": None}]


def test_dicts_with_other_keys_in_a_later_chunk_make_one_struct(tmp_path):
    job = deploy.map_job.create(lambda i: {"a": i} if i == 0 else {"b": str(i)},
                                [{"i": i} for i in range(3)], environment=Local(), chunk_size=1)
    expected = [{"a": 0, "b": None}, {"a": None, "b": "1"}, {"a": None, "b": "2"}]
    same(job.get_results_table().column("result").to_pylist(), expected)
    assert tables.write_results(job, str(tmp_path / "r.parquet")) == 3
    same(pq.read_table(tmp_path / "r.parquet").column("result").to_pylist(), expected)


def wide(i):
    if i < 4:
        return None                       # the first batches' result column is all null
    return i if i < 7 else i + 0.5       # then int64, then double


def test_types_widen_across_batches_and_the_file_starts_again(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "BATCH_ROWS", 2)
    params = [{"i": i} for i in range(9)]
    params[5]["extra"] = "late"           # a parameter only a later task has
    job = deploy.map_job.create(lambda i, extra=None: wide(i), params, environment=Local(), chunk_size=3)
    expected = [{"task_name": f"lambda-0-{i}", "i": i, "extra": "late" if i == 5 else None,
                 "result": None if i < 4 else float(wide(i)), "status": "Completed", "exception": None}
                for i in range(9)]
    table = job.get_results_table()
    assert table.schema.field("result").type == pa.float64()
    same(table.to_pylist(), expected)
    out = tmp_path / "out"
    out.mkdir()
    for suffix in ("parquet", "feather", "csv"):
        path = out / f"r.{suffix}"
        assert tables.write_results(job, str(path)) == 9
        back = read_back(path, table.schema)
        assert back.schema.field("result").type == pa.float64(), suffix
        same(back.to_pylist(), expected)
    assert sorted(os.listdir(out)) == ["r.csv", "r.feather", "r.parquet"]     # no temporary left


def read_back(path, schema: pa.Schema | None = None) -> pa.Table:
    """The file as Arrow reads it. CSV carries no types: its columns are read as `schema`
    says where given (else as inferred)."""
    path = str(path)
    if path.endswith(".parquet"):
        return pq.read_table(path)
    if path.endswith(".feather"):
        return feather.read_table(path)
    types = {f.name: f.type for f in schema or [] if not pa.types.is_dictionary(f.type)}
    return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
        strings_can_be_null=True, column_types=types))


@pytest.mark.parametrize("suffix", ["parquet", "feather", "csv"])
def test_cli_writes_results_and_metrics_that_read_back_the_same(suffix, tmp_path):
    job = deploy.map_job.create(lambda x, y: x * y, [{"x": 2, "y": 3}, {"x": None, "y": 1},
                                                     {"x": 1.5, "y": 2}], name="prod",
                                environment=Local())
    job.wait(timeout=60)
    results = tmp_path / f"results.{suffix}"
    code, out, err = run_main("jobs", "results", "prod", "--output", str(results))
    assert (code, err) == (1, "")               # a task failed: as `deploy jobs results` says
    assert out == f"wrote 3 rows of results of job prod to {results}\n"
    want = job.get_results_table()
    back = read_back(results, want.schema)
    assert back.column_names == want.column_names == ["task_name", "x", "y", "result", "status",
                                                       "exception"]
    same(back.column("x").to_pylist(), [2.0, None, 1.5])      # int and float: one float column
    same(back.column("y").to_pylist(), [3, 1, 2])
    same(back.column("exception").to_pylist(), [None, "TypeError", None])
    assert back.column("task_name").to_pylist() == ["lambda-0-0", "lambda-0-1", "lambda-0-2"]
    assert back.column("status").to_pylist() == ["Completed", "Failed", "Completed"]
    same(back.column("result").to_pylist(), [6.0, None, 3.0])
    metrics = tmp_path / f"metrics.{suffix}"
    code, out, err = run_main("jobs", "metrics", "prod", "-o", str(metrics))
    assert (code, err) == (0, "")
    back = read_back(metrics)
    frame = job.get_metrics()
    assert back.column_names == list(frame.columns)
    assert back.column("task_name").to_pylist() == list(frame.task_name)
    assert back.column("status").to_pylist() == list(frame.status)
    assert back.column("exception").to_pylist() == [None, "TypeError", None]
    assert back.column("attempt").to_pylist() == [1, 1, 1]
    assert back.schema.field("run_time").type == pa.float64()
    assert back.column("run_time").to_pylist() == pytest.approx(list(frame.run_time))
    starts = back.column("start_time")
    assert pa.types.is_timestamp(starts.type) and starts.type.tz in ("UTC", "+00:00")
    assert [t.replace(tzinfo=None) for t in starts.to_pylist()] == \
        [t.to_pydatetime() for t in frame.start_time]
    assert back.column("host").to_pylist() == list(frame.host)
    if suffix != "csv":
        assert back.column("exception_traceback").to_pylist()[1].startswith("Traceback")


def test_mixed_parameter_types_are_refused_naming_both_tasks(tmp_path, deploy_home):
    job = deploy.map_job.create(lambda x: x, [{"x": 2}, {"x": "a"}], name="mixed", environment=Local())
    with pytest.raises(tables.TableError, match="task lambda-0-1's parameter 'x' is a str, but task "
                                                "lambda-0-0's is an int"):
        job.get_results_table()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_main("jobs", "results", "mixed", "--output", str(out_dir / "r.parquet"))
    assert_usage_error(code, err, "task lambda-0-1's parameter 'x' is a str")
    assert out == "" and os.listdir(out_dir) == []


class Opaque:
    """A result Arrow has no type for."""


def opaque(i):
    return Opaque() if i == 2 else i


@pytest.mark.parametrize("suffix", ["parquet", "feather", "csv"])
def test_results_arrow_cannot_hold_are_refused_and_nothing_is_written(suffix, tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "BATCH_ROWS", 1)      # the bad value comes after rows were written
    job = deploy.map_job.create(opaque, [{"i": i} for i in range(4)], name="opaque", environment=Local())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    path = out_dir / f"r.{suffix}"
    code, out, err = run_main("jobs", "results", "opaque", "--output", str(path))
    assert_usage_error(code, err, "task opaque-0-2's result is a test_tables.Opaque, which an Arrow "
                                  "table cannot hold")
    assert out == "" and os.listdir(out_dir) == []
    with pytest.raises(tables.TableError, match="opaque-0-2's result is a test_tables.Opaque"):
        job.get_results_table()


def test_csv_refuses_lists_where_parquet_keeps_them(tmp_path):
    job = deploy.map_job.create(lambda n: list(range(n)), [{"n": 0}, {"n": 2}], name="lists",
                                environment=Local())
    code, out, err = run_main("jobs", "results", "lists", "--output", str(tmp_path / "r.csv"))
    assert_usage_error(code, err, "task lambda-0-0's result is a list (Arrow list<item: int64>): "
                                  "a CSV cell holds one number, text or time")
    assert not (tmp_path / "r.csv").exists()
    code, out, err = run_main("jobs", "results", "lists", "--output", str(tmp_path / "r.parquet"))
    assert code == 0, err
    same(pq.read_table(tmp_path / "r.parquet").column("result").to_pylist(), [[], [0, 1]])


@pytest.mark.parametrize("argv, message", [
    (["jobs", "results", "j", "--output", "{d}/r.xlsx"], "unknown output format '.xlsx'"),
    (["jobs", "metrics", "j", "--output", "{d}/r"], "unknown output format '(no extension)'"),
    (["jobs", "metrics", "j", "--output", "{d}/none/r.csv"], "no such directory"),
    (["jobs", "results", "j", "--output", "{d}"], "is a directory"),
    (["jobs", "show", "j", "--output", "{d}/r.csv"], "--output goes with"),
    (["jobs", "results", "nope", "--output", "{d}/r.csv"], "no job named 'nope'"),
])
def test_output_usage_errors_write_nothing(argv, message, tmp_path):
    deploy.map_job.create(lambda x: x, [{"x": 1}], name="j", environment=Local())
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    code, out, err = run_main(*(a.format(d=out_dir) for a in argv))
    assert_usage_error(code, err, message)
    assert out == "" and os.listdir(out_dir) == []


def test_get_metrics_dtypes_and_a_job_still_running(tmp_path):
    gate = tmp_path / "go"

    def held(i):
        import os
        import time
        while not os.path.exists(str(gate)):
            time.sleep(0.01)
        return i
    job = deploy.map_job.create(held, [{"i": i} for i in range(6)], environment=LocalAsync("h", num_workers=1),
                                chunk_size=2, combiner_function=add_combiner)
    frame = job.get_metrics()                 # nothing published yet: Pending / Running rows
    assert len(frame) == 6 and set(frame.status) <= {"Pending", "Running"}
    assert frame.start_time.isna().all() and frame.attempt.isna().all() and frame.host.isna().all()
    table = tables.metrics_table(job)
    assert set(table.column("status").to_pylist()) <= {"Pending", "Running"}
    waiting = job.get_results_table()
    assert waiting.column("i").to_pylist() == list(range(6))
    assert set(waiting.column("status").to_pylist()) <= {"Pending", "Running"}
    assert waiting.column("result").null_count == 6
    gate.write_text("")
    assert job.wait(timeout=60) == "Completed"
    frame = job.get_metrics()
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        "task_name": "str", "status": "category", "start_time": "datetime64[ns]",
        "end_time": "datetime64[ns]", "run_time": "float64", "exception": "str",
        "exception_message": "str", "exception_traceback": "str", "host": "category",
        "worker": "category", "attempt": "Int64", "peak_memory_mb": "float64"}
    assert list(frame.task_name) == [f"held-0-{i}" for i in range(6)] + ["add_combiner-1-0"]
    assert list(frame.status.cat.categories) == ["Completed"]
    assert frame.status.value_counts().to_dict() == {"Completed": 7}
    assert (frame.attempt == 1).all() and (frame.run_time > 0).all()
    now = pd.Timestamp.now(tz="UTC").tz_convert(None)
    assert ((now - frame.end_time) < pd.Timedelta(minutes=5)).all()
    assert (frame.end_time >= frame.start_time).all()
    # the same rows as the rows the text table is made of
    rows = job.metric_rows()
    assert [r["task_name"] for r in rows] == list(frame.task_name)
    assert [r["run_time"] for r in rows] == pytest.approx(list(frame.run_time), abs=1e-6)
    assert [r["peak_memory_mb"] for r in rows] == list(frame.peak_memory_mb)
    assert [r["worker"] for r in rows] == list(frame.worker)
