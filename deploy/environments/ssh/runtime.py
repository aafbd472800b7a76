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

Bundles, uploaded wheels, job folders and what interrupted transfers or venv builds left
behind are pruned after 14 days unused, when a client probes.

Files travel as the stdin of an exec channel, never by SFTP (hardened servers often offer no
SFTP subsystem): a receiver on the host checks the bytes' length and SHA-256, unpacks them
into a temporary folder beside the final one and renames it into place, so a half-sent
bundle is never taken for a whole one, also when several clients prepare a host at once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shlex
import sys
from typing import Any, Iterable

from ..base import machine_facts
from ..bundles import Bundle, libs_bundle, runtime_bundle, wheels_bundle
from ..bundles import wheel_files as _wheel_files
from .connect import HostError, ended, run

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
    memory_gb: float = 0.0
    gpus: int = 0

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


_PROBE = "from __future__ import annotations\n" + inspect.getsource(machine_facts) + r"""
import json, os, shutil, sys, time
root = os.path.expanduser(sys.argv[1])
try:
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
except OSError as exc:
    sys.stderr.write("%s\n" % exc)
    sys.exit(3)
facts = machine_facts()
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
for kind in ("runtime", "libs", "wheels", "jobs", "venvs"):
    folder = os.path.join(root, kind)
    for name in (os.listdir(folder) if os.path.isdir(folder) else []):
        if kind == "venvs" and ".tmp-" not in name and ".old-" not in name:
            continue        # a cluster's venv stays; what an interrupted build left goes
        path = os.path.join(folder, name)
        try:
            seen = max([os.stat(path).st_mtime] + [e.stat().st_mtime for e in os.scandir(path)])
        except OSError:
            continue
        if seen < old:      # out of sight first: a half-deleted bundle is never seen whole
            trash = os.path.join(folder, ".pruned-%d-%s" % (os.getpid(), name))
            try:
                os.rename(path, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
print(json.dumps({"version": list(sys.version_info[:3]), **facts, "root": root,
                  "executable": sys.executable, "files": files}))
"""

_RECEIVE = r"""
import hashlib, os, shutil, sys, tarfile, tempfile
final, size, sha = os.path.expanduser(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
parent, name = os.path.split(final)
kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
tmp = None
try:
    os.makedirs(parent, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-%s-" % name, dir=parent)     # 0700, unique per client
    received, digest, count = os.path.join(tmp, ".received"), hashlib.sha256(), 0
    with open(received, "wb") as f:         # to disk as it comes: a large wheel costs no memory
        for block in iter(lambda: sys.stdin.buffer.read(1 << 16), b""):
            digest.update(block)
            count += len(block)
            f.write(block)
    if count != size or digest.hexdigest() != sha:
        sys.exit("deploy: the bundle arrived damaged (%d of %d bytes, sha256 %s..., expected %s...); "
                 "nothing was unpacked" % (count, size, digest.hexdigest()[:12], sha[:12]))
    os.mkdir(os.path.join(tmp, "files"), 0o700)
    with tarfile.open(received) as t:
        t.extractall(os.path.join(tmp, "files"), **kw)
    os.unlink(received)
    with open(os.path.join(tmp, "files", ".complete"), "w") as f:
        f.write("ok")
    for attempt in range(5):
        try:
            os.rename(os.path.join(tmp, "files"), final)   # atomic; never replaces a non-empty folder
            break
        except OSError:
            if os.path.exists(os.path.join(final, ".complete")):
                break                   # another client put the same bundle in place first
            aside = "%s.broken-%d-%d" % (final, os.getpid(), attempt)
            try:                        # a folder without .complete is never whole: aside, gone
                os.rename(final, aside)
                shutil.rmtree(aside, ignore_errors=True)
            except OSError:
                pass
    else:
        sys.exit("deploy: cannot put %s in place" % final)
except (OSError, tarfile.TarError) as exc:
    sys.exit("deploy: cannot unpack into %s: %s" % (parent, exc))
finally:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
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
    if rc == 3:
        raise HostError(host, f"cannot use remote_dir {options.root}: {err.strip()[-300:]} (set "
                              "remote_dir= to a folder the remote user can write)")
    if rc != 0:
        raise HostError(host, f"probing the host with {options.python} failed ({ended(rc)}): "
                              f"{err.strip()[-500:]}")
    try:
        info = json.loads(out.strip().splitlines()[-1])
        version = tuple(info["version"])
    except (ValueError, IndexError, KeyError, TypeError):
        raise HostError(host, f"unexpected answer from {options.python} on the host: "
                              f"{(out + err).strip()[-300:]!r}") from None
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
    """Send `bundle` over an exec channel and unpack it at root/<kind>/<digest>; its path."""
    final = f"{root}/{bundle.kind}/{bundle.digest}"
    command = _python_script(python, _RECEIVE, final, str(len(bundle.data)),
                             hashlib.sha256(bundle.data).hexdigest())
    rc, _, err = run(client, command, stdin=bundle.data, timeout=300)
    if rc != 0:
        raise HostError(host, f"cannot put the {bundle.kind} bundle in {root}/{bundle.kind} ({ended(rc)}): "
                              f"{err.strip()[-500:]}")
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
# rename(2) never replaces a non-empty folder (mv would move into it): the old venv goes
# aside first, and a client that built this same venv meanwhile wins
for attempt in 1 2 3 4 5; do
  {python} -I -c 'import os, sys; os.rename(*sys.argv[1:])' "$tmp" "$final" 2>/dev/null && exit 0
  [ "$(cat "$final/.deploy-stamp" 2>/dev/null)" = {digest} ] && exit 0
  old="$final.old-$$-$attempt"
  {python} -I -c 'import os, sys; os.rename(*sys.argv[1:])' "$final" "$old" 2>/dev/null && rm -rf "$old"
done
echo "deploy: cannot put the venv in place at $final" >&2; exit 1
"""


def build_venv(client: Any, host: str, options: Options, info: dict, digest: str,
               wheels: Bundle | None) -> None:
    """Create the cluster's venv and pip-install its packages (local files from `wheels`)."""
    root = info["root"]
    local = _wheel_files(options.packages)
    if wheels is not None and not info["files"][_marker(wheels)]:
        ship(client, host, wheels, root, options.python)
    args = list(options.pip_options)
    args += [f"{root}/wheels/{wheels.digest}/{local[p].name}" if p in local else p for p in options.packages]
    script = _VENV.format(final=shlex.quote(f"{root}/venvs/{options.cluster}"),
                          python=shlex.quote(options.python), digest=digest,
                          args=" ".join(shlex.quote(a) for a in args))
    rc, out, err = run(client, script, timeout=1800)
    if rc != 0:
        tail = "\n".join((out + err).strip().splitlines()[-15:])
        raise HostError(host, f"pip install of additional_packages {list(options.packages)} failed "
                              f"({ended(rc)}):\n{tail}")


def has_module(client: Any, root: str, python: str, pythonpath: str, module: str) -> bool:
    """Whether the workers' Python on the host can import `module`."""
    code = f"import importlib.util as u, sys; sys.exit(0 if u.find_spec({module!r}) else 3)"
    rc, _, _ = run(client, python_command(root, pythonpath, python, f"-c {shlex.quote(code)}"), timeout=60)
    return rc == 0


def prepare(client: Any, host: str, options: Options) -> HostRuntime:
    """Make the host ready to run workers (each step skipped when its cache is current)."""
    runtime = runtime_bundle()
    stamp = f"venvs/{options.cluster}/.deploy-stamp"
    wheels = wheels_bundle(tuple(_wheel_files(options.packages).values()))
    markers = [_marker(runtime), stamp] + ([_marker(wheels)] if wheels else [])
    info = probe(client, host, options, markers)
    root, version = info["root"], tuple(info["version"])
    paths = [f"{root}/runtime/{runtime.digest}"]
    if not info["files"][_marker(runtime)]:
        ship(client, host, runtime, root, options.python)
    python = info["executable"]
    if options.packages:
        digest = venv_digest(options, version)
        if info["files"][stamp] != digest:
            build_venv(client, host, options, info, digest, wheels)
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
                       root=root, version=version, memory_gb=float(info.get("memory_gb") or 0),
                       gpus=int(info.get("gpus") or 0))
