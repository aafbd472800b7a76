"""`import deploy` stays light and the worker imports no client-only library."""
from __future__ import annotations

from conftest import run_python

HEAVY = ["pandas", "pyarrow", "boto3", "botocore", "paramiko", "hdfs", "tqdm", "tabulate", "numpy",
         "requests", "sqlite3"]


def loaded_after(statement: str) -> set[str]:
    out = run_python(f"""
        import sys
        {statement}
        print(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
    """).stdout.split()
    return set(out)


def test_import_deploy_is_light():
    assert loaded_after("import deploy") == set()


def test_worker_imports_no_client_libraries():
    assert loaded_after("import deploy.worker.loop") == set()


def test_environment_classes_load_without_heavy_libraries():
    assert loaded_after("import deploy; deploy.environment.LocalAsync('a', num_workers=1)") == set()
