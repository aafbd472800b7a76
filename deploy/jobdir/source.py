"""Pickling a job's callables so that a failed task's traceback names the user's source.

cloudpickle carries functions of the caller's own modules by value, and 3.1 renames their
code to `<dynamic-code>`: a traceback from a worker would lose the file, the line's text,
and on a host without the file the text anyway. `dumps` keeps each code object's real file
name and ships the text of those files inside the pickle; unpickling puts the text into
`linecache` (as an entry `checkcache` keeps), so traceback formatting wherever the pickle
is loaded shows the user's lines, with no step of its own. Loading needs only this module's
`_code` (standard library only); pickling needs cloudpickle.
"""
from __future__ import annotations

import functools
import linecache
import pickle
import types
from typing import Any, BinaryIO

MAX_SOURCE_CHARS = 4 * 1024 * 1024     # longer files travel without their text


def dumps(obj: Any) -> bytes:
    """cloudpickle `obj`, keeping code objects' file names and shipping their source text."""
    import io
    buf = io.BytesIO()
    pickler(buf).dump(obj)
    return buf.getvalue()


def pickler(file: BinaryIO) -> Any:
    """A cloudpickle Pickler (highest protocol) writing to `file`, as `dumps` uses it."""
    return _pickler_class()(file, protocol=pickle.HIGHEST_PROTOCOL)


@functools.lru_cache(maxsize=None)
def _pickler_class() -> type:
    import cloudpickle
    reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]

    class SourcePickler(cloudpickle.Pickler):
        """Reduces a code object as cloudpickle does, then restores its file name; the
        first code object of each file also carries that file's text."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.shipped: set[str] = set()

        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is types.CodeType:
                make, args = reduce_code(obj)[:2]
                filename = obj.co_filename
                text = None
                if filename not in self.shipped:
                    self.shipped.add(filename)
                    text = _source_text(filename)
                return _code, (make, args, filename, text)
            return super().reducer_override(obj)

    return SourcePickler


def _source_text(filename: str) -> str | None:
    """The text Python would show for `filename` here (a file, or a notebook cell that
    registered itself in linecache), or None."""
    try:
        text = "".join(linecache.getlines(filename))
    except Exception:       # linecache reads through loaders too: anything may go wrong
        return None
    return text if text and len(text) <= MAX_SOURCE_CHARS else None


def _code(make: Any, args: tuple, filename: str, text: str | None) -> types.CodeType:
    """Unpickle a code object under its real file name, registering the shipped text."""
    if text is not None:
        register_source(filename, text)
    code = make(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


def register_source(filename: str, text: str) -> None:
    """Make `text` the lines linecache (and so traceback) shows for `filename` in this
    process; an entry without mtime survives `linecache.checkcache`."""
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
