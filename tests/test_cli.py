"""The `deploy` command: run, jobs, envs; exit codes 0 / 1 / 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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


def test_usage_errors_exit_2(params_files, tmp_path):
    assert deploy_cmd("run", "nocolon", "--params", str(params_files / "p.json"), check=2).stderr
    assert "no such file" in deploy_cmd("run", "missing.py:f", "--params", "p.json", check=2).stderr
    assert "no such parameter file" in deploy_cmd("run", f"{EXAMPLE}:add", "--params",
                                                  str(tmp_path / "none.json"), check=2).stderr
    (tmp_path / "broken.json").write_text("[{")
    assert "not valid JSON" in deploy_cmd("run", f"{EXAMPLE}:add", "--params",
                                          str(tmp_path / "broken.json"), check=2).stderr
    (tmp_path / "empty.json").write_text("[]")
    assert "empty" in deploy_cmd("run", f"{EXAMPLE}:add", "--params",
                                 str(tmp_path / "empty.json"), check=2).stderr
    assert "no function 'nope'" in deploy_cmd("run", f"{EXAMPLE}:nope", "--params",
                                              str(params_files / "p.json"), check=2).stderr
    assert "no environment named" in deploy_cmd("run", f"{EXAMPLE}:add", "--params",
                                                str(params_files / "p.json"), "--env", "zz", check=2).stderr
    deploy_cmd("frobnicate", check=2)
    deploy_cmd("run", check=2)


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
