"""The worker runtime that remote environments ship: tarballs of the client's own files.

A remote machine (an SSH host, a YARN container) may not reach a package index, so the
`deploy` package the client runs, cloudpickle, and the pure-Python libraries a store needs
travel from the client's own installed files. Bundles are named by the hash of their
content, so each version is shipped (and cached) once. Shared by every remote environment.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata as metadata
import io
import os
import re
import tarfile
from pathlib import Path
from typing import Iterable

_COMPILED = (".so", ".pyd", ".dylib")


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A tar.gz of files for a PYTHONPATH entry, named by the hash of its content."""

    kind: str
    digest: str
    data: bytes


def _package_files(package_dir: Path, prefix: str) -> list[tuple[str, Path]]:
    return [(f"{prefix}/{p.relative_to(package_dir).as_posix()}", p)
            for p in sorted(package_dir.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def _optional_compiled(name: str, names: set[str]) -> bool:
    """A compiled file the distribution works without: an accelerator whose module also
    exists as a .py beside it, or mypyc's runtime helper that only such modules import."""
    folder, _, base = name.rpartition("/")
    twin = (folder + "/" if folder else "") + base.split(".", 1)[0] + ".py"
    return twin in names or "__mypyc." in base


def _distribution_files(dist: metadata.Distribution) -> list[tuple[str, Path]]:
    """The installed pure-Python files of a distribution, relative to its site-packages.
    Optional compiled accelerators are left out; required compiled code is an error."""
    entries = [e.as_posix() for e in dist.files or ()]
    names = set(entries)
    files = []
    for name in entries:
        if name.startswith("..") or "__pycache__" in name or name.endswith(".pyc"):
            continue
        if name.endswith(_COMPILED):
            if _optional_compiled(name, names):
                continue
            raise ValueError(f"{dist.metadata['Name']} has compiled extensions and cannot be "
                             "shipped: install it where the workers run (additional_packages=...)")
        path = Path(dist.locate_file(name))
        if path.is_file():
            files.append((name, path))
    return files


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    """Names of the distribution's unconditional requirements (extras left out)."""
    names = []
    for req in dist.requires or ():
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        if marker.strip():
            try:
                from packaging.markers import Marker
                if not Marker(marker.strip()).evaluate():
                    continue
            except ImportError:
                pass
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match:
            names.append(match.group(1))
    return names


def closure(name: str) -> list[metadata.Distribution]:
    """The installed distribution `name` and everything it requires, each once."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        key = re.sub(r"[-_.]+", "-", current).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(current)
        except metadata.PackageNotFoundError:
            if current == name:
                raise ValueError(f"{name} is not installed on the client, so it cannot be "
                                 "shipped to the workers") from None
            continue
        seen[key] = dist
        todo.extend(_requirement_names(dist))
    return list(seen.values())


def _tar(files: Iterable[tuple[str, Path]]) -> tuple[str, bytes]:
    """(content hash, deterministic tar.gz) of the files; members private to the owner."""
    digest = hashlib.sha256()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
        for name, path in sorted(files):
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tar.addfile(info, io.BytesIO(data))
    return digest.hexdigest()[:20], raw.getvalue()


@functools.lru_cache(maxsize=None)
def runtime_bundle() -> Bundle:
    """The client's own `deploy` package and cloudpickle."""
    import deploy
    files = _package_files(Path(deploy.__file__).parent, "deploy")
    files += _distribution_files(metadata.distribution("cloudpickle"))
    digest, data = _tar(files)
    return Bundle("runtime", digest, data)


@functools.lru_cache(maxsize=None)
def libs_bundle(requirement: str) -> Bundle:
    """A pure-Python distribution and its requirements, as installed on the client."""
    files = [f for dist in closure(requirement) for f in _distribution_files(dist)]
    digest, data = _tar(files)
    return Bundle("libs", digest, data)


def wheels_bundle(paths: Iterable[Path]) -> Bundle | None:
    """Local package files (named in additional_packages) as one bundle, None for none."""
    files: dict[str, Path] = {}
    for path in paths:
        other = files.setdefault(path.name, path)
        if other != path and other.read_bytes() != path.read_bytes():
            raise ValueError(f"two different additional packages are named {path.name}: {other}, {path}")
    if not files:
        return None
    digest, data = _tar([(name, path) for name, path in files.items()])
    return Bundle("wheels", digest, data)


def wheel_files(packages: Iterable[str]) -> dict[str, Path]:
    """Local files among the packages (wheels, sdists), by the name given."""
    local = {}
    for pkg in packages:
        path = Path(os.path.expanduser(pkg))
        if pkg.endswith((".whl", ".tar.gz", ".zip")) or os.sep in pkg:
            if not path.is_file():
                raise ValueError(f"additional package {pkg!r} looks like a file but there is no such file")
            local[pkg] = path
    return local
