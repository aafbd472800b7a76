"""Byte-compile deploy before measuring, as installing it would.

`pip install` of a wheel writes every module's .pyc; an editable install writes them on
first import, unless PYTHONDONTWRITEBYTECODE is set (as on this machine), in which case
every fresh interpreter compiles deploy's modules from source again, while the peers are
installed compiled. Compiling once makes both sides start from bytecode.
"""
from __future__ import annotations

import compileall
import os
import sys

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy")


def ensure_compiled() -> None:
    """Write deploy's .pyc files when this interpreter would not write them itself."""
    if sys.dont_write_bytecode:
        compileall.compile_dir(PACKAGE, quiet=1)
