#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
# Usage: scripts/test.sh [pytest args...]      (root, or sudo for the system packages)
#
# Every run builds a fresh virtual environment (.venv-test, or $DEPLOY_TEST_VENV) and installs
# the newest releases that setup.cfg allows, exactly as a newcomer gets them: packages already
# installed on this machine never hide a break in a new release.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: real sshd "hosts" for the SSH cluster tests, and the Python the hosts run.
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# CPython's own executor tests (run against deploy.Executor) and a headless browser for the dashboard.
[ -f /usr/lib/python3.11/test/test_concurrent_futures.py ] || need+=(libpython3.11-testsuite)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A fresh virtual environment with the package, its test extras and the newest allowed releases.
venv="${DEPLOY_TEST_VENV:-.venv-test}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager \
    -e '.[test]'
"$venv/bin/python" -m pip list --disable-pip-version-check --format=freeze \
    | grep -iE '^(cloudpickle|paramiko|pandas|pyarrow|boto3|moto|hdfs|hypothesis|pytest)==' \
    | tr '\n' ' '; echo

# Hadoop mini cluster jars from Maven Central (cached in ~/.m2 between runs).
if [ -f tests/infra/hadoop/pom.xml ] && command -v mvn >/dev/null; then
    "$venv/bin/python" -m tests.infra.hadoop_cluster --resolve
fi

exec "$venv/bin/python" -m pytest -q "$@"
