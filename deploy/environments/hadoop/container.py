"""What a YARN container runs once bootstrap has unpacked the runtime.

mode "worker": note the container in the job directory (containers/<container id>: node,
log address, and at the end its exit code with the tail of its stderr), then run
`python -m deploy.worker JOB_URI --processes N` labelled `<container id>@<node>`, so the
metrics name the container of each task.
mode "packages": pip-install additional_packages into ./site with this node's Python and
publish the result as a tar.gz on HDFS (with pip's output beside it), once per package set.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from typing import Any

TAIL_BYTES = 4096


def host_label() -> str:
    """'<container id>@<node>': names the container in metrics and heartbeats ('/' and ':'
    are not allowed in HDFS names)."""
    node = os.environ.get("NM_HOST") or socket.gethostname()
    return f"{os.environ.get('CONTAINER_ID', 'container-' + str(os.getpid()))}@{node}"


def stderr_tail() -> str:
    """The end of this container's stderr log (YARN's <LOG_DIR>/stderr)."""
    for folder in os.environ.get("LOG_DIRS", "").split(","):
        path = os.path.join(folder, "stderr")
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            continue
    return ""


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def _worker_env() -> dict[str, str]:
    env = dict(os.environ, DEPLOY_HOST_LABEL=host_label(), PYTHONUNBUFFERED="1")
    tmp = os.path.join(os.getcwd(), "tmp")
    os.makedirs(tmp, mode=0o700, exist_ok=True)
    env["TMPDIR"] = tmp                        # inside the container: YARN removes it
    home = env.get("HOME", "")
    if not (home and os.path.isdir(home) and os.access(home, os.W_OK)):
        env["HOME"] = os.getcwd()              # containers get HOME=/home/ by default
    return env


def run_worker(config: dict[str, Any]) -> int:
    """Run the worker loop on the job; record the container before and after."""
    from ...jobdir import layout
    from ...store import open_store
    store = open_store(config["store"])
    container = os.environ.get("CONTAINER_ID") or host_label()
    node = os.environ.get("NM_HOST") or socket.gethostname()
    record: dict[str, Any] = {
        "container": container, "label": host_label(), "node": node,
        "node_http": f"{node}:{os.environ.get('NM_HTTP_PORT', '')}", "user": config["user"],
        "started": time.time()}

    def save() -> None:
        try:
            store.put(layout.container(container), json.dumps(record).encode())
        except Exception as exc:              # the record is a convenience, never fatal
            print(f"deploy: cannot record the container: {exc}", file=sys.stderr)
    save()
    from ...worker.spawn import start_worker
    pid = start_worker(config["store"], int(config.get("processes", 1)), _worker_env(), None)
    signal.signal(signal.SIGTERM, lambda signum, frame: _signal_group(pid, signum))
    code = os.waitstatus_to_exitcode(_wait(pid))
    record.update(exit=code, ended=time.time())
    if code != 0:
        record["stderr_tail"] = stderr_tail()
    save()
    return code if code >= 0 else 128 - code


def _tar_dir(folder: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
        for name in sorted(os.listdir(folder)):
            tar.add(os.path.join(folder, name), arcname=name)
    return raw.getvalue()


def build_packages(config: dict[str, Any]) -> int:
    """pip install --target ./site, then publish site as config['target'] (and the log)."""
    from ...store import open_store
    root = open_store(config["dist"])
    requirements = []
    for item in config["install"]:
        if "hdfs" in item:                     # a local wheel of the client, staged on HDFS
            os.makedirs("wheels", exist_ok=True)
            local = os.path.join("wheels", item["name"])
            with open(local, "wb") as f:
                f.write(root.get(item["hdfs"]))
            requirements.append(local)
        else:
            requirements.append(item["requirement"])
    command = [sys.executable, "-m", "pip", "install", "--target", "site", "--no-input",
               "--disable-pip-version-check", "--no-warn-script-location",
               *config.get("pip_options", []), *requirements]
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=_worker_env())
    log = f"$ {' '.join(command)}\n{proc.stdout}\n(exit {proc.returncode})\n"
    print(log)
    root.put(config["log"], log.encode())
    if proc.returncode == 0:
        os.makedirs("site", exist_ok=True)
        root.put(config["target"], _tar_dir("site"))
    return proc.returncode


def main(config: dict[str, Any]) -> int:
    """Entry point from bootstrap, by mode."""
    if config.get("mode") == "packages":
        return build_packages(config)
    return run_worker(config)
