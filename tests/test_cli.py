"""The `deploy` command: run, jobs, envs; exit codes 0 / 1 / 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import deploy
from cli_run import assert_usage_error, nothing_written, run_main
from conftest import ROOT

EXAMPLE = os.path.join(ROOT, "examples", "add.py")


def deploy_cmd(*args, check=None, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def params_files(tmp_path):
    rows = [{"x": 20, "y": 20}, {"x": 10, "y": 10}, {"x": 5, "y": 5}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "p.csv").write_text("x,y\n20,20\n10,10\n5,5\n")
    (tmp_path / "bad.json").write_text('[{"x": null, "y": 1}]')
    return tmp_path


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv"])
def test_run_with_each_params_format(params_files, suffix):
    out = deploy_cmd("run", f"{EXAMPLE}:add", "--params", str(params_files / f"p.{suffix}"),
                     "--combiner", f"{EXAMPLE}:add_combiner", "--name", f"cli-{suffix}", check=0)
    assert "results: [40, 20, 10]" in out.stdout
    assert "combined: 70" in out.stdout
    assert "add-0-2" in out.stdout and "Completed" in out.stdout


def test_run_failure_exit_code_and_streamed_output(params_files, tmp_path):
    script = tmp_path / "talk.py"
    script.write_text("def talk(x, y):\n    print('adding', x, y)\n    return x + y\n")
    out = deploy_cmd("run", f"{script}:talk", "--params", str(params_files / "bad.json"), check=1)
    assert "[talk-0-0] adding None 1" in out.stdout
    assert "TypeError" in out.stdout


def test_run_detach_then_jobs_commands(params_files):
    name = deploy_cmd("run", f"{EXAMPLE}:add", "--params", str(params_files / "p.json"),
                      "--detach", "--name", "det", check=0).stdout.strip()
    assert name == "det"
    import deploy
    assert deploy.jobs["det"].wait(timeout=60) == "Completed"
    assert "det" in deploy_cmd("jobs", check=0).stdout
    assert "det" in deploy_cmd("jobs", "list", check=0).stdout
    assert "Completed" in deploy_cmd("jobs", "show", "det", check=0).stdout
    assert "add-0-1" in deploy_cmd("jobs", "metrics", "0", check=0).stdout
    assert "[40, 20, 10]" in deploy_cmd("jobs", "results", "det", check=0).stdout
    deploy_cmd("jobs", "logs", "det", check=0)
    deploy_cmd("jobs", "logs", "det", "add-0-0", check=0)
    assert "no task" in deploy_cmd("jobs", "logs", "det", "add-0-7", check=2).stderr
    deploy_cmd("jobs", "cancel", "det", check=0)
    assert "removed det" in deploy_cmd("jobs", "rm", "de*", check=0).stdout
    assert "no job named 'det'" in deploy_cmd("jobs", "show", "det", check=2).stderr


@pytest.fixture
def bad_inputs(tmp_path):
    """Files for every kind of bad input the CLI gets; returns their folder."""
    files = {
        "good.json": '[{"x": 1, "y": 2}]', "broken.json": "[{", "obj.json": '{"x": 1}',
        "ints.json": "[1, 2]", "empty.json": "[]", "deep.json": "[" * 100_000 + "]" * 100_000,
        "dupkey.json": '[{"x": 1, "x": 2, "y": 3}]', "longint.json": '[{"x": ' + "1" * 5000 + "}]",
        "nokey.json": '[{"x": 1}]', "extra.json": '[{"x": 1, "y": 2, "z": 3}]',
        "bad.jsonl": '{"x": 1, "y": 2}\nnot json\n', "wide.csv": "x,y\n1,2,3\n",
        "dupcol.csv": "x,x\n1,2\n", "empty.csv": "",
        "syntax.py": "def f(:\n", "raises.py": "x = 1\n\nraise RuntimeError('boom\\nsecond')\n",
        "exits.py": "import sys\nsys.exit(3)\n", "notcall.py": "f = 5\n",
        "nokw.py": "def comb(a, b):\n    return a\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.json").write_bytes(b'[{"x": "\xe9"}]')
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "dir.py").mkdir()
    os.symlink(tmp_path / "loop.json", tmp_path / "loop.json")
    return tmp_path


RUN = ["run", "{ex}:add", "--params", "{d}/good.json"]

# kind of bad input -> argv, and what the one-line error says
USAGE_ERRORS = {
    "no command": ([], "arguments are required: command"),
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "run without a function": (["run"], "arguments are required"),
    "run without --params": (["run", "{ex}:add"], "--params"),
    "unknown option": (RUN + ["--retries", "3"], "unrecognized arguments: --retries"),
    "option not a number": (RUN + ["--max-retries", "x"], "invalid int value: 'x'"),
    "negative retries": (RUN + ["--max-retries", "-1"], "max_retries must be an integer >= 0"),
    "zero timeout": (RUN + ["--task-timeout", "0"], "task_timeout must be a positive"),
    "NaN timeout": (RUN + ["--task-timeout", "nan"], "task_timeout must be a positive"),
    "infinite timeout": (RUN + ["--task-timeout", "inf"], "task_timeout must be a positive"),
    "zero chunk size": (RUN + ["--chunk-size", "0"], "chunk_size must be an integer >= 1"),
    "zero concurrency": (RUN + ["--max-concurrent-tasks", "0"], "max_concurrent_tasks"),
    "job name with a space": (RUN + ["--name", "a b"], "bad job name 'a b'"),
    "job name with a slash": (RUN + ["--name", "a/b"], "bad job name"),
    "job name not ASCII": (RUN + ["--name", "j\u00f6b"], "bad job name"),
    "job name too long": (RUN + ["--name", "n" * 201], "at most 200"),
    "job name like an option": (RUN + ["--name=-x"], "would read as an option"),
    "job name like an index": (RUN + ["--name", "42"], "would read as an index"),
    "reference without a colon": (["run", "nocolon", "--params", "{d}/good.json"],
                                  "bad function reference"),
    "missing file": (["run", "{d}/missing.py:f", "--params", "{d}/good.json"], "no such file"),
    "file is a directory": (["run", "{d}/dir.py:f", "--params", "{d}/good.json"],
                            "is not a Python file"),
    "syntax error in the file": (["run", "{d}/syntax.py:f", "--params", "{d}/good.json"],
                                 "SyntaxError"),
    "module raises at import": (["run", "{d}/raises.py:f", "--params", "{d}/good.json"],
                                "RuntimeError: boom second (line 3)"),
    "module exits at import": (["run", "{d}/exits.py:f", "--params", "{d}/good.json"],
                               "it called sys.exit(3)"),
    "function not found": (["run", "{ex}:nope", "--params", "{d}/good.json"],
                           "has no function 'nope'"),
    "name not callable": (["run", "{d}/notcall.py:f", "--params", "{d}/good.json"],
                          "notcall.py:f is an int, not a function"),
    "bad function name": (["run", "{ex}:1f", "--params", "{d}/good.json"], "bad function name"),
    "module not importable": (["run", "no_such_module_zz:f", "--params", "{d}/good.json"],
                              "cannot import module 'no_such_module_zz'"),
    "relative module name": (["run", "..x:f", "--params", "{d}/good.json"], "cannot import module"),
    "combiner without **kwargs": (RUN + ["--combiner", "{d}/nokw.py:comb"], "**kwargs"),
    "params file missing": (["run", "{ex}:add", "--params", "{d}/none.json"],
                            "no such parameter file"),
    "params file a directory": (["run", "{ex}:add", "--params", "{d}/dir.json"], "is a directory"),
    "params file a device": (["run", "{ex}:add", "--params", "/dev/null"], "not a regular file"),
    "params file unreadable": (["run", "{ex}:add", "--params", "{d}/loop.json"],
                               "cannot read parameter file"),
    "params not UTF-8": (["run", "{ex}:add", "--params", "{d}/latin1.json"],
                         "not UTF-8 text (byte 0xe9 at offset 8)"),
    "params not JSON": (["run", "{ex}:add", "--params", "{d}/broken.json"], "not valid JSON"),
    "params not a list": (["run", "{ex}:add", "--params", "{d}/obj.json"],
                          "expected a JSON list of objects, got a JSON object"),
    "params items not objects": (["run", "{ex}:add", "--params", "{d}/ints.json"],
                                 "item 0 is a JSON number"),
    "params empty": (["run", "{ex}:add", "--params", "{d}/empty.json"], "no parameter sets"),
    "params nested too deeply": (["run", "{ex}:add", "--params", "{d}/deep.json"],
                                 "nested too deeply"),
    "params duplicate key": (["run", "{ex}:add", "--params", "{d}/dupkey.json"],
                             "the key 'x' appears twice"),
    "params number too long": (["run", "{ex}:add", "--params", "{d}/longint.json"], "4300 digits"),
    "params bad JSON line": (["run", "{ex}:add", "--params", "{d}/bad.jsonl"],
                             "bad.jsonl, line 2: not valid JSON"),
    "CSV row wider than header": (["run", "{ex}:add", "--params", "{d}/wide.csv"],
                                  "wide.csv, line 2: 3 fields, but the header has 2"),
    "CSV duplicate column": (["run", "{ex}:add", "--params", "{d}/dupcol.csv"],
                             "column 'x' appears twice"),
    "CSV empty": (["run", "{ex}:add", "--params", "{d}/empty.csv"], "empty file"),
    "params miss an argument": (["run", "{ex}:add", "--params", "{d}/nokey.json"],
                                "parameter_set[0] does not fit add(x, y): no value for 'y'"),
    "params unexpected argument": (["run", "{ex}:add", "--params", "{d}/extra.json"],
                                   "unexpected keyword argument 'z'"),
    "unknown environment": (RUN + ["--env", "zz"], "no environment named 'zz'"),
    "jobs: unknown action": (["jobs", "frob"], "invalid choice: 'frob'"),
    "jobs show: unknown job": (["jobs", "show", "nope"], "no job named 'nope'"),
    "jobs show: unknown index": (["jobs", "show", "7"], "no job at index 7"),
    "jobs show: no job": (["jobs", "show"], "takes a job name or index"),
    "jobs show: two jobs": (["jobs", "show", "a", "b"], "got 2 arguments"),
    "jobs list: an argument": (["jobs", "list", "x"], "takes no arguments"),
    "jobs rm: nothing": (["jobs", "rm"], "at least one job"),
    "jobs rm: unknown job": (["jobs", "rm", "nope"], "no job named 'nope'"),
    "envs: unknown action": (["envs", "frob"], "invalid choice: 'frob'"),
    "envs show: unknown": (["envs", "show", "zz"], "no environment named 'zz'"),
    "envs show: no name": (["envs", "show"], "takes one environment name"),
    "envs rm: unknown": (["envs", "rm", "zz"], "no environment named 'zz'"),
    "envs create: unknown kind": (["envs", "create", "cloud", "x"], "invalid choice: 'cloud'"),
    "envs create: bad name": (["envs", "create", "local", "a b"], "bad environment name"),
    "envs create: zero workers": (["envs", "create", "local-async", "z", "--workers", "0"],
                                  "positive integer"),
    "envs create ssh: no host": (["envs", "create", "ssh", "lab"], "--host"),
    "envs create ssh: workers not a number": (["envs", "create", "ssh", "lab", "--host", "h",
                                               "--workers-per-host", "x"], "invalid int value"),
    "envs create hadoop: no dist path": (["envs", "create", "hadoop", "h"], "--dist-path"),
}


@pytest.mark.parametrize("kind", list(USAGE_ERRORS))
def test_usage_errors(kind, bad_inputs, deploy_home):
    """Each bad input: exit 2, one line on stderr, nothing on stdout, nothing written."""
    argv, message = USAGE_ERRORS[kind]
    code, out, err = run_main(*(a.format(d=bad_inputs, ex=EXAMPLE) for a in argv))
    assert_usage_error(code, err, message)
    assert out == ""
    assert nothing_written(deploy_home)
    assert deploy.environments.names() == []


@pytest.mark.parametrize("variable, value, message", [
    ("DEPLOY_CONFIG", "{d}/broken.json", "bad configuration file"),
    ("DEPLOY_MAX_TASKS", "many", "DEPLOY_MAX_TASKS='many' is not a valid max_tasks"),
    ("DEPLOY_LEASE_SECONDS", "nan", "must be a finite number > 0"),
    ("DEPLOY_HOME", "{d}/good.json", "cannot use"),
])
def test_bad_configuration_is_a_usage_error(variable, value, message, bad_inputs, deploy_home,
                                            monkeypatch):
    monkeypatch.setenv(variable, value.format(d=bad_inputs))
    code, out, err = run_main("run", f"{EXAMPLE}:add", "--params", str(bad_inputs / "good.json"))
    assert_usage_error(code, err, message)
    monkeypatch.delenv("DEPLOY_HOME")
    monkeypatch.setenv("DEPLOY_HOME", str(deploy_home))
    monkeypatch.delenv("DEPLOY_CONFIG")
    monkeypatch.delenv("DEPLOY_MAX_TASKS", raising=False)
    monkeypatch.delenv("DEPLOY_LEASE_SECONDS", raising=False)
    assert nothing_written(deploy_home)


def test_usage_errors_through_the_installed_command(bad_inputs):
    """The console script and `python -m deploy.cli` print one line and exit 2."""
    script = os.path.join(os.path.dirname(sys.executable), "deploy")
    for argv in ([script, "run", f"{bad_inputs}/raises.py:f", "--params", f"{bad_inputs}/good.json"],
                 [sys.executable, "-m", "deploy.cli", "run", f"{EXAMPLE}:add", "--params",
                  f"{bad_inputs}/latin1.json"],
                 [script, "jobs", "show", "a", "b"]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert_usage_error(proc.returncode, proc.stderr)
        assert proc.stdout == ""


def test_help_and_version_exit_0():
    code, out, err = run_main("--version")
    assert (code, out.strip(), err) == (0, f"deploy {deploy.__version__}", "")
    code, out, _ = run_main("run", "--help")
    assert code == 0 and "--params" in out


def test_params_from_a_pipe(tmp_path):
    """`--params <(...)`: a fifo is read like a file; its content is checked the same way."""
    import threading
    from deploy.param_files import read
    fifo = tmp_path / "params.json"
    for content, expect in (('[{"x": 1, "y": 2}]', [{"x": 1, "y": 2}]), ("nope", None)):
        os.mkfifo(fifo)
        writer = threading.Thread(target=fifo.write_text, args=(content,))
        writer.start()
        if expect is None:
            code, _, err = run_main("run", f"{EXAMPLE}:add", "--params", str(fifo))
            assert_usage_error(code, err, "not valid JSON")
        else:
            assert read(str(fifo)) == expect
        writer.join(10)
        fifo.unlink()


def test_csv_cells(tmp_path):
    """Decimal numbers become numbers; other text (nan, 1_000, padded words) stays text."""
    from deploy.param_files import read
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeffa, b,c\n1, 2.5,nan\n-3,1e3,1_000\n,\" x, y\",\"multi\nline\"\n"
                     .encode())
    assert read(str(path)) == [{"a": 1, "b": 2.5, "c": "nan"}, {"a": -3, "b": 1000.0, "c": "1_000"},
                               {"a": "", "b": " x, y", "c": "multi\nline"}]


def test_rm_by_index(params_files):
    deploy_cmd("run", f"{EXAMPLE}:add", "--params", str(params_files / "p.json"), "--name", "first",
               check=0)
    assert "removed first" in deploy_cmd("jobs", "rm", "0", check=0).stdout
    assert len(deploy.jobs) == 0


def test_module_reference_and_envs(params_files):
    deploy_cmd("envs", "create", "local-async", "duo", "--workers", "2", check=0)
    assert "duo" in deploy_cmd("envs", check=0).stdout
    assert '"num_workers": 2' in deploy_cmd("envs", "show", "duo", check=0).stdout
    out = deploy_cmd("run", "examples.add:add", "--params", str(params_files / "p.json"),
                     "--env", "duo", check=0)
    assert "results: [40, 20, 10]" in out.stdout
    deploy_cmd("envs", "rm", "duo", check=0)
    assert "no environment named 'duo'" in deploy_cmd("envs", "show", "duo", check=2).stderr
    assert "positive integer" in deploy_cmd("envs", "create", "local-async", "z", "--workers", "0",
                                            check=2).stderr
