"""Preparing a host to run workers: its Python, the shipped runtime, the cluster's venv.

The runtime is the exact `deploy` package the client runs plus cloudpickle (the worker's
only third-party dependency), taken from the client's own files because a host may not
reach a package index. Bundles are cached on the host by content hash, so a host gets
each version once. Layout on the host (all 0700, private to the remote user):

    ~/.deploy/remote/runtime/<hash>/     deploy/ and cloudpickle/ (PYTHONPATH)
    ~/.deploy/remote/libs/<hash>/        boto3 and its pure-Python dependencies (S3 stores,
                                         shipped only when the host's Python lacks boto3)
    ~/.deploy/remote/wheels/<hash>/      local wheel files named in additional_packages
    ~/.deploy/remote/venvs/<cluster>/    venv (--system-site-packages) with additional_packages
    ~/.deploy/remote/jobs/<job id>/      the workers' own stderr, per host label
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata as metadata
import io
import json
import os
import re
import shlex
import sys
import tarfile
from pathlib import Path
from typing import Any, Iterable

from .ssh_connect import HostError, run

MIN_PYTHON = (3, 10)
DEFAULT_ROOT = "~/.deploy/remote"


# ---------------------------------------------------------------------------- bundles

@dataclasses.dataclass(frozen=True)
class Bundle:
    """A tar.gz of files for a host's PYTHONPATH, named by the hash of its content."""

    kind: str
    digest: str
    data: bytes


def _package_files(package_dir: Path, prefix: str) -> list[tuple[str, Path]]:
    return [(f"{prefix}/{p.relative_to(package_dir).as_posix()}", p)
            for p in sorted(package_dir.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def _distribution_files(dist: metadata.Distribution) -> list[tuple[str, Path]]:
    """The installed files of a pure-Python distribution, relative to its site-packages."""
    files = []
    for entry in dist.files or ():
        name = entry.as_posix()
        if name.startswith("..") or "__pycache__" in name or name.endswith(".pyc"):
            continue
        if name.endswith((".so", ".pyd", ".dylib")):
            raise ValueError(f"{dist.metadata['Name']} has compiled extensions and cannot be "
                             "shipped: install it on the hosts (additional_packages=...)")
        path = Path(dist.locate_file(entry))
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
                                 "shipped to the hosts") from None
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


# ---------------------------------------------------------------------------- the host

@dataclasses.dataclass
class Options:
    """What a host needs prepared (the cluster's settings that concern hosts)."""

    cluster: str
    python: str = "python3"
    root: str = DEFAULT_ROOT
    packages: tuple[str, ...] = ()
    pip_options: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()          # importable modules the workers need, e.g. boto3


@dataclasses.dataclass
class HostRuntime:
    """A prepared host: how to start Python there with the runtime importable."""

    python: str
    pythonpath: str
    cpus: int
    root: str
    version: tuple[int, ...]

    def env_prefix(self, label: str) -> str:
        """`env ...` that starts a worker-side command with the runtime and the host label."""
        return (f"env PYTHONPATH={shlex.quote(self.pythonpath)} PYTHONNOUSERSITE=1 "
                f"DEPLOY_HOST_LABEL={shlex.quote(label)} {shlex.quote(self.python)}")


_PROBE = r"""
import json, os, sys
root = os.path.expanduser(sys.argv[1])
os.makedirs(root, mode=0o700, exist_ok=True)
os.chmod(root, 0o700)
try:
    cpus = len(os.sched_getaffinity(0))
except (AttributeError, OSError):
    cpus = os.cpu_count() or 1
files = {}
for rel in sys.argv[2:]:
    try:
        with open(os.path.join(root, rel)) as f:
            files[rel] = f.read().strip()
    except OSError:
        files[rel] = None
print(json.dumps({"version": list(sys.version_info[:3]), "cpus": cpus, "root": root,
                  "executable": sys.executable, "files": files}))
"""

_EXTRACT = r"""
import os, shutil, sys, tarfile
src, final = sys.argv[1], sys.argv[2]
tmp = "%s.tmp-%d" % (final, os.getpid())
kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
with tarfile.open(src) as t:
    t.extractall(tmp, **kw)
with open(os.path.join(tmp, ".complete"), "w") as f:
    f.write("ok")
try:
    os.rename(tmp, final)
except OSError:
    shutil.rmtree(tmp)  # another client shipped the same bundle first
os.unlink(src)
"""


def _python_script(python: str, code: str, *args: str) -> str:
    """A shell command running `code` with the host's `python`, failing clearly without it."""
    quoted = shlex.quote(python)
    return (f"umask 077; command -v {quoted} >/dev/null 2>&1 || "
            f"{{ echo \"deploy: {python} not found on PATH ($PATH)\" >&2; exit 127; }}; "
            f"exec {quoted} -c {shlex.quote(code)} " + " ".join(shlex.quote(a) for a in args))


def _marker(bundle: Bundle) -> str:
    return f"{bundle.kind}/{bundle.digest}/.complete"


def probe(client: Any, host: str, options: Options, extra: Iterable[str] = ()) -> dict:
    """Ask the host for its Python, core count, and which cached files it already has."""
    rc, out, err = run(client, _python_script(options.python, _PROBE, options.root, *extra), timeout=60)
    if rc == 127:
        raise HostError(host, f"no {options.python} on the host's PATH: install Python "
                              f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ (with venv), or set python= to "
                              f"its path. ({err.strip()[-300:]})")
    if rc != 0:
        raise HostError(host, f"probing the host with {options.python} failed (exit {rc}): "
                              f"{err.strip()[-500:]}")
    info = json.loads(out.strip().splitlines()[-1])
    version = tuple(info["version"])
    if version[:2] < MIN_PYTHON:
        raise HostError(host, f"{options.python} is Python {'.'.join(map(str, version))}; "
                              f"workers need {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ (set python=)")
    if version[:2] != sys.version_info[:2]:
        raise HostError(host, f"{options.python} is Python {version[0]}.{version[1]} but the client "
                              f"runs {sys.version_info[0]}.{sys.version_info[1]}: functions travel "
                              "as pickled bytecode, which needs the same minor version (set "
                              "python= to a matching interpreter on the hosts)")
    return info


def ship(client: Any, host: str, bundle: Bundle, root: str, python: str) -> str:
    """Upload and unpack `bundle` under root/<kind>/<digest> unless it is there; its path."""
    final = f"{root}/{bundle.kind}/{bundle.digest}"
    upload = f"{root}/{bundle.kind}/.upload-{bundle.digest}-{os.urandom(4).hex()}.tgz"
    rc, _, err = run(client, f"umask 077; mkdir -p {shlex.quote(root + '/' + bundle.kind)}", timeout=60)
    if rc != 0:
        raise HostError(host, f"cannot create {root}/{bundle.kind}: {err.strip()[-300:]}")
    try:
        sftp = client.open_sftp()
        try:
            with sftp.open(upload, "wb") as f:
                sftp.chmod(upload, 0o600)
                f.set_pipelined(True)
                f.write(bundle.data)
        finally:
            sftp.close()
    except (OSError, EOFError) as exc:
        raise HostError(host, f"cannot upload the {bundle.kind} bundle by SFTP: {exc}") from None
    rc, _, err = run(client, _python_script(python, _EXTRACT, upload, final), timeout=300)
    if rc != 0:
        raise HostError(host, f"cannot unpack the {bundle.kind} bundle: {err.strip()[-500:]}")
    return final


def _wheel_files(packages: Iterable[str]) -> dict[str, Path]:
    """Local files among the packages (wheels, sdists), by the name given."""
    local = {}
    for pkg in packages:
        path = Path(os.path.expanduser(pkg))
        if pkg.endswith((".whl", ".tar.gz", ".zip")) or os.sep in pkg:
            if not path.is_file():
                raise ValueError(f"additional package {pkg!r} looks like a file but there is no such file")
            local[pkg] = path
    return local


def venv_digest(options: Options, version: tuple[int, ...]) -> str:
    """What the cluster's venv was built from: a changed package list rebuilds it."""
    wheels = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in _wheel_files(options.packages).items()}
    text = json.dumps([list(version[:2]), list(options.packages), list(options.pip_options), wheels])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


_VENV = """umask 077; set -e
final={final}; tmp="$final.tmp-$$"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$final")"
{python} -m venv --system-site-packages --without-pip "$tmp"
"$tmp/bin/python" -m pip --version >/dev/null 2>&1 || {{ rm -rf "$tmp"; {python} -m venv --system-site-packages "$tmp"; }}
"$tmp/bin/python" -m pip install --disable-pip-version-check --no-input {args} 2>&1
echo {digest} > "$tmp/.deploy-stamp"
chmod -R go-rwx "$tmp"
rm -rf "$final.old"; if [ -e "$final" ]; then mv "$final" "$final.old"; fi
mv "$tmp" "$final"; rm -rf "$final.old"
"""


def build_venv(client: Any, host: str, options: Options, info: dict, digest: str) -> None:
    """Create the cluster's venv and pip-install its packages (local wheels uploaded first)."""
    root = info["root"]
    args = list(options.pip_options)
    local = _wheel_files(options.packages)
    if local:
        sftp = client.open_sftp()
        try:
            for pkg in options.packages:
                if pkg not in local:
                    args.append(pkg)
                    continue
                data = local[pkg].read_bytes()
                folder = f"{root}/wheels/{hashlib.sha256(data).hexdigest()[:20]}"
                run(client, f"umask 077; mkdir -p {shlex.quote(folder)}", timeout=60)
                target = f"{folder}/{local[pkg].name}"
                with sftp.open(target, "wb") as f:
                    sftp.chmod(target, 0o600)
                    f.set_pipelined(True)
                    f.write(data)
                args.append(target)
        finally:
            sftp.close()
    else:
        args += list(options.packages)
    script = _VENV.format(final=shlex.quote(f"{root}/venvs/{options.cluster}"),
                          python=shlex.quote(options.python), digest=digest,
                          args=" ".join(shlex.quote(a) for a in args))
    rc, out, err = run(client, script, timeout=1800)
    if rc != 0:
        tail = "\n".join((out + err).strip().splitlines()[-15:])
        raise HostError(host, f"pip install of additional_packages {list(options.packages)} failed "
                              f"(exit {rc}):\n{tail}")


def has_module(client: Any, python: str, pythonpath: str, module: str) -> bool:
    code = f"import importlib.util as u, sys; sys.exit(0 if u.find_spec({module!r}) else 3)"
    rc, _, _ = run(client, f"env PYTHONPATH={shlex.quote(pythonpath)} {shlex.quote(python)} "
                           f"-c {shlex.quote(code)}", timeout=60)
    return rc == 0


def prepare(client: Any, host: str, options: Options) -> HostRuntime:
    """Make the host ready to run workers (each step skipped when its cache is current)."""
    runtime = runtime_bundle()
    stamp = f"venvs/{options.cluster}/.deploy-stamp"
    info = probe(client, host, options, [_marker(runtime), stamp])
    root, version = info["root"], tuple(info["version"])
    paths = [f"{root}/runtime/{runtime.digest}"]
    if not info["files"][_marker(runtime)]:
        ship(client, host, runtime, root, options.python)
    python = info["executable"]
    if options.packages:
        digest = venv_digest(options, version)
        if info["files"][stamp] != digest:
            build_venv(client, host, options, info, digest)
        python = f"{root}/venvs/{options.cluster}/bin/python"
    for module in options.needs:
        if has_module(client, python, ":".join(paths), module):
            continue
        try:
            libs = libs_bundle(module)
        except ValueError as exc:
            raise HostError(host, f"the workers need {module}, which the host lacks: {exc}") from None
        final = f"{root}/{libs.kind}/{libs.digest}"
        if run(client, f"test -f {shlex.quote(final + '/.complete')}", timeout=60)[0] != 0:
            ship(client, host, libs, root, options.python)
        paths.append(final)
    return HostRuntime(python=python, pythonpath=":".join(paths), cpus=int(info["cpus"]),
                       root=root, version=version)
