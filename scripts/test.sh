#!/usr/bin/env bash
# Set this machine up and run pyweave's tests: scripts/test.sh [PYTEST-ARGS...]
#
#   sudo scripts/test.sh                    every tier: tests/unit, tests/kernel, tests/lab
#   sudo scripts/test.sh tests/unit -q      one tier (arguments go to pytest; a path replaces "tests")
#
# Runs scripts/setup.sh, starts a Docker daemon if none answers (and stops it at the end, only if it
# was started here), builds the local busybox test image, then pytest. Exits with pytest's code.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: the tests create network namespaces, kernel devices and containers: run as root (sudo $0)" >&2
    exit 1
fi

bash scripts/setup.sh

# Stop the daemon at the end only if this run started it.
started_docker=0
cleanup() {
    if [ "$started_docker" -eq 1 ]; then
        bash scripts/dockerd.sh stop || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if ! bash scripts/dockerd.sh status >/dev/null 2>&1; then
    started_docker=1
fi
bash scripts/dockerd.sh start

echo "test.sh: test image busybox:latest (built locally from busybox-static if missing)"
.venv/bin/python -c 'from pyweave_lab import ensure_test_image; ensure_test_image()'

# Paths given (tests/unit, tests/lab/test_x.py::test_y) replace the default "tests".
given_path=0
for arg in "$@"; do
    if [ -e "${arg%%::*}" ]; then given_path=1; fi
done
if [ "$given_path" -eq 0 ]; then set -- tests "$@"; fi
echo "test.sh: pytest -ra --timeout=600 $*"
rc=0
.venv/bin/python -m pytest -ra --timeout=600 "$@" || rc=$?
exit "$rc"
