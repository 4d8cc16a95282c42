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
source scripts/machine.sh
prepare_machine test.sh "the tests create network namespaces, kernel devices and containers"

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
