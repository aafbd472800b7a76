"""No public name dangles: every name `dir(deploy)` shows, and every name in a module's
`__all__`, resolves; listing them loads nothing."""
from __future__ import annotations

import json

from conftest import run_python
from test_imports import HEAVY


def test_every_public_name_resolves():
    """Looked up in a fresh interpreter, top-level names first: none of them resolves only
    because the walk over every module imported it already."""
    names = json.loads(run_python("""
        import importlib, json, pkgutil, deploy
        names = [("deploy", n) for n in dir(deploy)]
        for info in pkgutil.walk_packages(deploy.__path__, "deploy."):
            if info.name.endswith(".__main__"):
                continue                    # a program (python -m), not a module to import
            module = importlib.import_module(info.name)
            names += [(info.name, n) for n in getattr(module, "__all__", ())]
        print(json.dumps(names))
    """).stdout)
    modules = {m for m, _ in names}
    assert {"deploy", "deploy.environment", "deploy.environments", "deploy.store"} <= modules
    assert ("deploy", "map_job") in [tuple(n) for n in names]
    script = "".join(f"import importlib; getattr(importlib.import_module({m!r}), {n!r})\n"
                     for m, n in names)
    proc = run_python(script, check=False)
    assert proc.returncode == 0, proc.stderr


def test_dir_matches_all_and_star_import():
    out = run_python("""
        import deploy
        namespace = {}
        exec("from deploy import *", namespace)
        print(sorted(deploy.__all__) == sorted(dir(deploy)),
              sorted(n for n in namespace if n != "__builtins__") == sorted(deploy.__all__))
    """).stdout.split()
    assert out == ["True", "True"]


def test_unknown_names_raise_attribute_error():
    out = run_python("""
        import deploy, deploy.environment
        for module, name in ((deploy, "gcp_cluster"), (deploy, "nope"), (deploy.environment, "Nope")):
            try:
                getattr(module, name)
            except AttributeError as exc:
                print("AttributeError", name in str(exc))
        print(hasattr(deploy, "gcp_cluster"))
    """).stdout.split()
    assert out == ["AttributeError", "True"] * 3 + ["False"]


def test_listing_names_loads_nothing():
    """`import deploy` and `dir(deploy)` load no submodule of deploy and no heavy library."""
    out = run_python(f"""
        import sys
        import deploy
        dir(deploy), deploy.__all__, deploy.__version__
        print(sorted(m for m in sys.modules if m.startswith("deploy.") or m in {HEAVY!r}))
    """).stdout
    assert out.strip() == "[]"
