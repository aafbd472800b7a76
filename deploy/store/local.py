"""Local-disk storage: temp file + rename for whole files, link() for exclusive publish."""
from __future__ import annotations

import itertools
import os
import shutil

from .base import Storage

_temp_names = itertools.count()


def private_dirs(path: str) -> None:
    """Make `path` and its missing parents, each 0700 (makedirs gives parents the umask's
    mode, and a store's job directory is a parent of the files written first)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        private_dirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def _write_temp(target: str, data: bytes) -> str:
    """Write `data` to a new private file beside `target` (unique per process and call)."""
    directory = os.path.dirname(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(directory, f".tmp-{os.getpid()}-{next(_temp_names)}")
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileNotFoundError:
            private_dirs(directory)
        except FileExistsError:
            pass                        # left by a crashed process that had this pid
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return tmp


def create_file_exclusive(target: str, data: bytes) -> bool:
    """Publish `data` at the absolute path `target` unless a file is there already: a temp
    file, then link() (atomic, fails if the name exists). True if this call created it."""
    tmp = _write_temp(target, data)
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


class LocalStorage(Storage):
    """A job store in a directory of this machine; directories are private to the user."""

    poll_seconds = 0.25          # LocalAsync also wakes waiters when a worker exits

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.uri = "file://" + self.root

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def local_path(self, path: str) -> str:
        return self._abs(path)

    def get(self, path: str) -> bytes:
        try:
            with open(self._abs(path), "rb") as f:
                return f.read()
        except NotADirectoryError:      # a path below a file: nothing is there
            raise FileNotFoundError(self._abs(path)) from None

    def put(self, path: str, data: bytes) -> None:
        target = self._abs(path)
        os.replace(_write_temp(target, data), target)

    def create_exclusive(self, path: str, data: bytes = b"") -> bool:
        return create_file_exclusive(self._abs(path), data)

    def list(self, path: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self._abs(path)) if not n.startswith(".tmp-"))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(self._abs(path))

    def delete(self, path: str) -> None:
        target = self._abs(path)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            try:
                os.unlink(target)
            except (FileNotFoundError, NotADirectoryError):
                pass


def home_job_store(job_id: str) -> LocalStorage:
    """A new job directory under the deploy home (private to the user): where jobs live
    when their environment keeps them on the client."""
    from .. import config
    root = config.home() / "jobs"
    root.mkdir(mode=0o700, exist_ok=True)
    return LocalStorage(str(root / job_id))
