"""Running the `deploy` command in this process and checking what a usage error leaves."""
from __future__ import annotations

import contextlib
import io
import os

import deploy
from deploy.cli import main


def run_main(*argv: str) -> tuple[int, str, str]:
    """deploy.cli.main(argv) in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_usage_error(code: int, stderr: str, match: str | None = None) -> None:
    """Exit 2 and exactly one line on stderr: 'deploy: error: ...' (no traceback)."""
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("deploy: error: ") and lines[0].strip() != \
        "deploy: error:", stderr
    if match is not None:
        assert match in lines[0], lines[0]


def nothing_written(home) -> bool:
    """No job directory and no job row in the registry."""
    jobs = os.path.join(str(home), "jobs")
    return (not os.path.isdir(jobs) or not os.listdir(jobs)) and len(deploy.jobs) == 0
