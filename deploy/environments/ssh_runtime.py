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
    ~/.deploy/remote/jobs/<job id>/      the workers' own stderr (per host label), their TMPDIR
    ~/.deploy/remote/agent.log           the agents' own stray output

Bundles, uploaded wheels and job folders unused for 14 days are pruned when a client probes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import sys
from typing import Any, Iterable

from ..runtime import Bundle, libs_bundle, runtime_bundle
from ..runtime import wheel_files as _wheel_files
from .ssh_connect import HostError, run

MIN_PYTHON = (3, 10)
DEFAULT_ROOT = "~/.deploy/remote"


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

    def command(self, args: str, label: str = "") -> str:
        """A shell command running `python ARGS` with the runtime importable (and the host
        label for metrics), from the runtime root so that nothing in the user's working
        directory can shadow the runtime's modules."""
        return python_command(self.root, self.pythonpath, self.python, args, label)


def python_command(root: str, pythonpath: str, python: str, args: str, label: str = "") -> str:
    """See HostRuntime.command (also used with the values a launch handle recorded)."""
    extra = f" DEPLOY_HOST_LABEL={shlex.quote(label)}" if label else ""
    return (f"cd {shlex.quote(root)} && umask 077 && exec env PYTHONPATH={shlex.quote(pythonpath)}"
            f"{extra} {shlex.quote(python)} {args}")


_PROBE = r"""
import json, os, shutil, sys, time
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
        if rel.endswith(".complete"):
            os.utime(os.path.join(root, rel))      # a bundle in use: not pruned below
    except OSError:
        files[rel] = None
old = time.time() - 14 * 86400
for kind in ("runtime", "libs", "wheels", "jobs"):
    folder = os.path.join(root, kind)
    for name in (os.listdir(folder) if os.path.isdir(folder) else []):
        path = os.path.join(folder, name)
        try:
            seen = max([os.stat(path).st_mtime] + [e.stat().st_mtime for e in os.scandir(path)])
        except OSError:
            continue
        if seen < old:
            shutil.rmtree(path, ignore_errors=True)
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
    """A shell command running `code` (standard library only: isolated mode) with the host's
    `python`, failing clearly without it."""
    quoted = shlex.quote(python)
    return (f"umask 077; command -v {quoted} >/dev/null 2>&1 || "
            f"{{ echo \"deploy: {python} not found on PATH ($PATH)\" >&2; exit 127; }}; "
            f"exec {quoted} -I -c {shlex.quote(code)} " + " ".join(shlex.quote(a) for a in args))


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


def venv_digest(options: Options, version: tuple[int, ...]) -> str:
    """What the cluster's venv was built from: a changed package list rebuilds it."""
    wheels = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in _wheel_files(options.packages).items()}
    text = json.dumps([list(version[:2]), list(options.packages), list(options.pip_options), wheels])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


_VENV = """umask 077; set -e
final={final}; tmp="$final.tmp-$$"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$final")"; cd "$(dirname "$final")"
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


def has_module(client: Any, root: str, python: str, pythonpath: str, module: str) -> bool:
    """Whether the workers' Python on the host can import `module`."""
    code = f"import importlib.util as u, sys; sys.exit(0 if u.find_spec({module!r}) else 3)"
    rc, _, _ = run(client, python_command(root, pythonpath, python, f"-c {shlex.quote(code)}"), timeout=60)
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
        if has_module(client, root, python, ":".join(paths), module):
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
