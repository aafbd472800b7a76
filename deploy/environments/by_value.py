"""Pickling a job's function for machines that lack the caller's own modules.

Functions from installed packages travel by reference (the host imports them); functions
from the caller's own modules (a script, a project directory, an editable install) travel
by value, because a remote host cannot import them. Shared by every remote environment.
"""
from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig
from typing import Callable, Iterator


_installed: dict[str, bool] = {}        # module file -> installed? (files do not move)


@functools.lru_cache(maxsize=None)
def _installed_roots() -> tuple[str, ...]:
    """Directories whose modules count as installed: the standard library and site-packages."""
    paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(getattr(site, "getsitepackages", lambda: [])())
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    paths.add(user_site if isinstance(user_site, str) else None)
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def local_modules(skip: tuple[str, ...] = ("deploy",)) -> Iterator[str]:
    """Names of imported pure-Python modules that live outside the standard library and
    site-packages (the caller's own code); packages named in `skip` are left out."""
    for name, module in list(sys.modules.items()):
        if name == "__main__" or name.split(".")[0] in skip or module is None:
            continue
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not file.endswith(".py"):
            continue
        installed = _installed.get(file)
        if installed is None:
            installed = _installed[file] = os.path.realpath(file).startswith(_installed_roots())
        if not installed:
            yield name


def dumps(fn: Callable) -> bytes:
    """cloudpickle `fn`, carrying the caller's own modules by value (with their source
    text, so that tracebacks on hosts without the files still show the lines)."""
    import cloudpickle

    from ..jobdir import source
    already = cloudpickle.list_registry_pickle_by_value()
    added = []
    try:
        for name in local_modules():
            if name not in already and name in sys.modules:
                cloudpickle.register_pickle_by_value(sys.modules[name])
                added.append(sys.modules[name])
        return source.dumps(fn)
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)
