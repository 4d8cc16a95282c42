#!/usr/bin/env bash
# The weave tutorial with pyweave, on a lab of 3 hosts on this machine: sudo scripts/demo.sh [--hosts N]
#
# Sets the machine up (scripts/setup.sh), starts a Docker daemon if none answers (and stops it at the
# end, only if it was started here), builds the local busybox image, then runs `pyweave-demo`,
# which builds the lab, plays the tutorial and removes the lab again. Ctrl-C or SIGTERM stop it cleanly.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/machine.sh
prepare_machine demo.sh "the demo creates network namespaces and containers"

# The demo runs in the background so that this shell can pass a SIGTERM (or Ctrl-C) on to it at once
# and still stop the Docker daemon after the demo has removed its lab.
.venv/bin/pyweave-demo "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
rc=0
while :; do
    wait "$child" && rc=0 || rc=$?
    # wait returns early (status > 128) when a trapped signal arrives; the demo is then still cleaning up.
    kill -0 "$child" 2>/dev/null || break
done
trap 'exit 130' INT
trap 'exit 143' TERM
exit "$rc"
