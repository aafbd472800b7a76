"""The first Python a YARN container runs: fetch the deploy runtime from HDFS, then hand over.

Sent inline (base64 on the container's command line), so it is standard library only and
plain Python 3 syntax: an old interpreter gets a clear message, not a SyntaxError.
    python -c 'import base64,sys;exec(base64.b64decode(sys.argv[1]))' <this, base64> <config, base64 JSON>
It downloads the runtime tarballs through WebHDFS (any NameNode of an HA pair), unpacks them
into the container's working directory (YARN removes it afterwards), puts them on
PYTHONPATH and runs deploy.environments.hadoop.container.main(config).
"""
import base64
import importlib.util
import io
import json
import os
import sys
import tarfile
import urllib.parse
import urllib.request


def fail(code, message):
    sys.stderr.write("deploy: " + message + "\n")
    sys.stderr.flush()
    sys.exit(code)


def fetch(config, path, dest):
    """Download the tar.gz at HDFS `path` and unpack it into ./dest (once per container)."""
    dest = os.path.abspath(dest)
    if os.path.isdir(dest):
        return dest
    errors = []
    data = None
    for base in config["webhdfs"]:
        url = "{0}/webhdfs/v1{1}?op=OPEN&user.name={2}".format(
            base.rstrip("/"), urllib.parse.quote(path), urllib.parse.quote(config["user"]))
        try:
            with urllib.request.urlopen(url, timeout=300) as answer:
                data = answer.read()
            break
        except Exception as exc:
            errors.append("{0}: {1}".format(base, exc))
    if data is None:
        fail(69, "cannot download {0} through WebHDFS: {1}".format(path, "; ".join(errors)))
    tmp = "{0}.tmp-{1}".format(dest, os.getpid())
    options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp, **options)
    os.rename(tmp, dest)
    return dest


def main():
    config = json.loads(base64.b64decode(sys.argv[2]).decode())   # argv[1]: this program
    want = tuple(config["python"])
    if tuple(sys.version_info[:2]) != want:
        fail(65, "{0} is Python {1}.{2} but the client runs {3}.{4}: functions travel as pickled "
                 "bytecode, which needs the same minor version (set python= to such an "
                 "interpreter on every node, or python_env=)".format(
                     sys.executable, sys.version_info[0], sys.version_info[1], want[0], want[1]))
    paths = [fetch(config, config["runtime"], "deploy-runtime")]
    if config.get("packages"):
        paths.append(fetch(config, config["packages"], "deploy-packages"))
    sys.path[:0] = paths
    if any(importlib.util.find_spec(m) is None for m in config.get("needs", ())):
        paths.append(fetch(config, config["libs"], "deploy-libs"))
        sys.path.insert(len(paths) - 1, paths[-1])
    before = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + before)
    from deploy.environments.hadoop.container import main as run
    sys.exit(run(config))


if __name__ == "__main__":
    main()
