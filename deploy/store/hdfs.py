"""HDFS storage over WebHDFS (the `hdfs` package): nothing but HTTP, no Java or Hadoop install.

URIs (the user name is not a secret; it says whose files these are):
    webhdfs://[user@]host:port[,host2:port2]/path   NameNode web address(es), an HA pair
    swebhdfs://...                                  the same over HTTPS
    hdfs://[user@]authority/path, hdfs:///path      NameNodes found in $HADOOP_CONF_DIR
                                                    (HA nameservices too), else host:9870
The user is the URI's, else $HADOOP_USER_NAME, else the login name (simple auth).

Reached through `open_store`, the verbs are retried through an outage (deploy.store.retrying);
a retried `put` may leave a hidden temp file behind (`.tmp-*`, never listed).

Whole files: written to a temp name beside the target, then renamed over it with WebHDFS's
`renameoptions=OVERWRITE`, one NameNode operation: a reader sees the old file or the new
one, never a gap (delete + rename would leave a moment with no file). Exclusive creates:
the temp file renamed with `renameoptions=NONE`, which fails when the target exists.
"""
from __future__ import annotations

import getpass
import os
import posixpath
import uuid
from typing import Any, Callable

from . import hadoop_conf
from .base import Storage, StorageError
from .retrying import mark

SCHEMES = {"webhdfs": "http", "swebhdfs": "https"}
TEMP_PREFIX = ".tmp-"
FILE_MODE, DIR_MODE = "600", "700"      # a store's files and its root: the user's alone
TIMEOUT = (10.0, 120.0)          # seconds to connect, to read


def default_user() -> str:
    """$HADOOP_USER_NAME, else the login name: who HDFS takes us for under simple auth."""
    return os.environ.get("HADOOP_USER_NAME") or getpass.getuser()


def parse_uri(uri: str) -> tuple[list[str], str | None, str]:
    """(NameNode web URLs, user or None, absolute path) of an HDFS store URI."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in (*SCHEMES, "hdfs"):
        raise ValueError(f"bad HDFS URI {uri!r}: use webhdfs://host:port/path or hdfs://namenode/path")
    netloc, slash, path = rest.partition("/")
    user, at, hosts = netloc.rpartition("@")
    path = posixpath.normpath("/" + path) if slash else "/"
    if scheme == "hdfs":
        urls = _hdfs_authority_urls(hosts)
    else:
        if not hosts:
            raise ValueError(f"bad HDFS URI {uri!r}: {scheme}:// needs host:port of the NameNode's web server")
        urls = [f"{SCHEMES[scheme]}://{h.strip()}" for h in hosts.split(",") if h.strip()]
    return urls, (user or None) if at else None, path


def _hdfs_authority_urls(authority: str) -> list[str]:
    """NameNode web URLs for an hdfs:// authority ('' = fs.defaultFS), from $HADOOP_CONF_DIR."""
    conf_dir = hadoop_conf.conf_dir_from_env()
    if conf_dir:
        conf = hadoop_conf.read_conf(conf_dir)
        return hadoop_conf.namenode_web_urls(conf, authority or None)
    if not authority:
        raise ValueError("hdfs:///path names the default filesystem, but $HADOOP_CONF_DIR is not "
                         "set: give hdfs://namenode/path or webhdfs://host:port/path")
    host = authority.rpartition(":")[0] if ":" in authority else authority
    return [f"http://{host}:{hadoop_conf.NAMENODE_HTTP_PORT}"]


def make_uri(urls: list[str], user: str | None, path: str) -> str:
    """The webhdfs:// (or swebhdfs://) URI of `path` on the NameNodes at `urls`."""
    schemes = {u.partition("://")[0] for u in urls}
    scheme = "swebhdfs" if schemes == {"https"} else "webhdfs"
    hosts = ",".join(u.partition("://")[2].rstrip("/") for u in urls)
    return f"{scheme}://{user + '@' if user else ''}{hosts}{posixpath.normpath('/' + path.lstrip('/'))}"


def _first_line(text: Any) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return text.strip().splitlines()[0] if text.strip() else ""


class HdfsStorage(Storage):
    """A job store under an HDFS directory, reached through WebHDFS."""

    poll_seconds = 0.25

    def __init__(self, uri: str, user: str | None = None) -> None:
        self.urls, uri_user, self.root = parse_uri(uri)
        self.user = user or uri_user or default_user()
        self.uri = make_uri(self.urls, self.user, self.root)
        self._root_private = False
        self._client: Any = None
        self._pid = 0

    @property
    def client(self) -> Any:
        """The WebHDFS client (made again after a fork: connections are not shared)."""
        if self._client is None or self._pid != os.getpid():
            import hdfs
            self._client = hdfs.InsecureClient(";".join(self.urls), user=self.user, timeout=TIMEOUT)
            self._pid = os.getpid()
        return self._client

    def absolute(self, path: str) -> str:
        """The absolute HDFS path of `path` (relative to the store's root)."""
        return posixpath.join(self.root, path.strip("/")) if path.strip("/") else self.root

    def _call(self, what: str, path: str, fn: Callable[[], Any]) -> Any:
        """Run a WebHDFS call; its failure as FileNotFoundError, PermissionError, FileExistsError
        or StorageError naming what was done, where, and as whom (marked transient when the
        NameNode could not be reached, timed out, or is failing over or in safe mode)."""
        import hdfs
        import requests
        try:
            return fn()
        except hdfs.HdfsError as exc:
            kind, message = getattr(exc, "exception", None), _first_line(exc.message)
            where = self.absolute(path)
            if kind == "FileNotFoundException":
                raise FileNotFoundError(f"{where}: {message}") from None
            if kind == "AccessControlException" and message.rstrip().endswith("(is not a directory)"):
                raise FileNotFoundError(f"{where}: {message}") from None   # a path below a file
            if kind == "AccessControlException":
                raise PermissionError(f"HDFS refused to {what} {where} for user {self.user!r}: "
                                      f"{message}") from None
            if kind == "FileAlreadyExistsException":
                raise FileExistsError(f"{where}: {message}") from None
            raise mark(StorageError(f"cannot {what} {where} on HDFS ({', '.join(self.urls)}): "
                                    f"{kind or 'error'}: {message}"), exc) from None
        except requests.exceptions.RequestException as exc:
            raise mark(StorageError(f"cannot reach the HDFS NameNode (WebHDFS at "
                                    f"{', '.join(self.urls)}) to {what} {self.absolute(path)}: "
                                    f"{type(exc).__name__}: {_first_line(exc)}"), exc) from None

    def _temp(self, target: str) -> str:
        folder, _, name = target.rpartition("/")
        return f"{folder}/{TEMP_PREFIX}{name}-{uuid.uuid4().hex[:12]}"

    def _write_temp(self, path: str, data: bytes) -> tuple[str, str]:
        target = self.absolute(path)
        tmp = self._temp(target)
        self._private_root()
        self._call("write", path, lambda: self.client.write(tmp, data, overwrite=False,
                                                             permission=FILE_MODE))
        return target, tmp

    def _private_root(self) -> None:
        """Before the first write through this object, make the store's root 0700 if it is
        not there yet (a job's directory: WebHDFS would make it 0755); subdirectories
        inside it are then out of others' reach. A root that exists is left as it is."""
        if not self._root_private:
            self._call("create the directory", "", lambda: self.client.makedirs(
                self.root, permission=DIR_MODE))
            self._root_private = True

    def _rename(self, tmp: str, target: str, option: str) -> None:
        """WebHDFS RENAME with renameoptions (the `hdfs` package's rename() has none): its
        raw endpoint sends the parameters as given, failing over between HA NameNodes."""
        self.client._rename(tmp, destination=target, renameoptions=option)

    # -- the verbs --------------------------------------------------------------------

    def get(self, path: str) -> bytes:
        def read() -> bytes:
            with self.client.read(self.absolute(path)) as reader:
                return reader.read()
        return self._call("read", path, read)

    def put(self, path: str, data: bytes) -> None:
        target, tmp = self._write_temp(path, data)
        try:
            self._call("publish", path, lambda: self._rename(tmp, target, "OVERWRITE"))
        except BaseException:
            self._drop(tmp)
            raise

    def create_exclusive(self, path: str, data: bytes = b"") -> bool:
        target, tmp = self._write_temp(path, data)
        try:
            self._call("create", path, lambda: self._rename(tmp, target, "NONE"))
            return True
        except FileExistsError:
            self._drop(tmp)
            return False
        except BaseException:
            self._drop(tmp)
            raise

    def _drop(self, tmp: str) -> None:
        try:
            self.client.delete(tmp)
        except Exception:
            pass

    def list(self, path: str) -> list[str]:
        try:
            names = self._call("list", path, lambda: self.client.list(self.absolute(path)))
        except FileNotFoundError:
            return []
        except StorageError as exc:
            if "is not a directory" in str(exc):
                return []
            raise
        return sorted(n for n in names if not n.startswith(TEMP_PREFIX))

    def exists(self, path: str) -> bool:
        status = self._call("check", path, lambda: self.client.status(self.absolute(path), strict=False))
        if status is None:
            return False
        return status["type"] != "DIRECTORY" or status.get("childrenNum", 1) > 0

    def delete(self, path: str) -> None:
        try:
            self._call("delete", path, lambda: self.client.delete(self.absolute(path), recursive=True))
        except FileNotFoundError:
            pass

    def status(self, path: str) -> dict | None:
        """WebHDFS FileStatus of `path` (length, modificationTime, type...), None if absent."""
        return self._call("check", path, lambda: self.client.status(self.absolute(path), strict=False))

    def put_file(self, path: str, local: str) -> None:
        """Publish a local file at `path` (streamed, not read into memory), atomically."""
        target = self.absolute(path)
        tmp = self._temp(target)
        self._private_root()
        with open(local, "rb") as f:
            self._call("upload", path, lambda: self.client.write(tmp, f, overwrite=False,
                                                                 permission=FILE_MODE))
        try:
            self._call("publish", path, lambda: self._rename(tmp, target, "OVERWRITE"))
        except BaseException:
            self._drop(tmp)
            raise

    def makedirs(self, path: str = "") -> None:
        """Create the directory `path` (and its parents)."""
        self._call("create the directory", path, lambda: self.client.makedirs(self.absolute(path)))

    def subdir(self, path: str) -> "HdfsStorage":
        """The store rooted at `path` (below this one; absolute when it starts with '/'),
        on the same NameNodes as the same user."""
        return HdfsStorage(make_uri(self.urls, self.user,
                                    path if path.startswith("/") else self.absolute(path)))
