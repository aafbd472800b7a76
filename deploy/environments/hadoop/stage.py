"""What YARN containers fetch from HDFS, put under dist_path once and named by content.

    <dist_path>/runtime/runtime-<hash>.tar.gz  deploy + cloudpickle, from the client's files
    <dist_path>/runtime/libs-<hash>.tar.gz     hdfs, requests and their pure-Python deps
                                               (fetched only where the node's Python lacks them)
    <dist_path>/files/<hash>/<name>            local files named in the settings: the
                                               DistributedShell jar, a python_env archive, wheels
    <dist_path>/packages/<hash>.tar.gz (.log)  additional_packages, pip-installed on a node
A second client, or the same one again, finds them there and uploads nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ..bundles import libs_bundle, runtime_bundle, wheel_files
from ...store import worker_needs
from ...store.hdfs import HdfsStorage

WORKER_NEEDS = worker_needs("hdfs://")     # what the workers' store imports


def upload_once(root: HdfsStorage, path: str, data: bytes) -> str:
    """Publish `data` at `path` unless something is there (content-named: the same bytes)."""
    if root.status(path) is None:
        root.create_exclusive(path, data)
    return root.absolute(path)


def stage_runtime(root: HdfsStorage) -> dict[str, str]:
    """The runtime and libs tarballs on HDFS: {'runtime': path, 'libs': path}."""
    (need,) = WORKER_NEEDS                  # one libs tarball: the HDFS client and its requirements
    runtime, libs = runtime_bundle(), libs_bundle(need)
    return {"runtime": upload_once(root, f"runtime/runtime-{runtime.digest}.tar.gz", runtime.data),
            "libs": upload_once(root, f"runtime/libs-{libs.digest}.tar.gz", libs.data)}


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


def stage_file(root: HdfsStorage, reference: str, what: str) -> str:
    """The absolute HDFS path of a file named in the settings: an hdfs:// URI is used as it
    is; a local file is uploaded once under files/<hash>/."""
    if reference.startswith("hdfs://"):
        path = "/" + reference[len("hdfs://"):].partition("/")[2]
        if root.subdir(path).status("") is None:
            raise FileNotFoundError(f"{what} {reference!r} does not exist on HDFS")
        return path
    local = os.path.expanduser(reference)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{what} {reference!r} is not a local file (for a file on HDFS "
                                "give hdfs:///path/to/it)")
    target = f"files/{file_digest(local)}/{os.path.basename(local)}"
    if root.status(target) is None:
        root.put_file(target, local)
    return root.absolute(target)


def packages_plan(root: HdfsStorage, packages: list[str], pip_options: list[str],
                  python_key: list[Any]) -> tuple[str, list[dict[str, str]]]:
    """(content name of the package set, what to pip-install): local wheels are staged on
    HDFS for the node to fetch; requirements are passed to pip as they are."""
    local = wheel_files(packages)
    items, key = [], []
    for pkg in packages:
        if pkg in local:
            staged = stage_file(root, pkg, "additional package")
            items.append({"hdfs": staged[len(root.root):].lstrip("/"), "name": os.path.basename(staged)})
            key.append(staged)
        else:
            items.append({"requirement": pkg})
            key.append(pkg)
    text = json.dumps([python_key, key, list(pip_options)])
    return hashlib.sha256(text.encode()).hexdigest()[:20], items
