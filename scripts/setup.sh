#!/usr/bin/env bash
# Make this machine ready for pyweave's demo and tests. Idempotent: run it as often as you like.
#
#   1. Debian packages (installed only when missing): Docker, etcd, iproute2, nftables, iperf3,
#      busybox-static (the test image is built from it), tcpdump.
#   2. A virtualenv at .venv in the repository root, with pyweave installed editable plus its test
#      extras. pip runs only when the venv is new or pyproject.toml changed since the last install.
#
# Needs root for step 1 only when a package is missing. Works with Debian's python3 or any other
# python3 >= 3.11 first on PATH (set PYTHON=/path/to/python3 to choose one).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

PACKAGES=(docker.io etcd-server etcd-client iproute2 nftables iperf3 busybox-static tcpdump docker-compose debootstrap)

step() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

apt_updated=0
apt_install() {
    [ "$(id -u)" -eq 0 ] || die "packages missing ($*); run as root: sudo scripts/setup.sh"
    command -v apt-get >/dev/null || die "packages missing ($*) and apt-get is not available; install them by hand"
    if [ "$apt_updated" -eq 0 ]; then
        step "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null
        apt_updated=1
    fi
    step "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null
}

# Read the whole of dpkg's answer first: `dpkg -s | grep -q` fails under pipefail whenever grep
# exits early and dpkg dies of SIGPIPE on a long entry (docker.io's is).
installed() {
    local info
    info=$(dpkg -s "$1" 2>/dev/null) || return 1
    grep -q '^Status: install ok installed' <<<"$info"
}

# -- 1. Debian packages ---------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
else
    step "Debian packages present: ${PACKAGES[*]}"
fi

# -- 2. virtualenv ----------------------------------------------------------------------------------
PY=${PYTHON:-$(command -v python3 || true)}
[ -n "$PY" ] || die "python3 not found; apt-get install python3"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); pyweave needs 3.11 or newer"

venv_ok() { [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys' 2>/dev/null; }

if ! venv_ok; then
    rm -rf .venv
    step "create virtualenv .venv ($PY, Python $("$PY" -c 'import platform; print(platform.python_version())'))"
    if ! "$PY" -m venv .venv >/dev/null 2>&1; then
        # Debian's python3 has no ensurepip until python3-venv (python3.X-venv) is installed.
        rm -rf .venv
        ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        if apt-cache show "python$ver-venv" >/dev/null 2>&1; then
            apt_install python3-venv "python$ver-venv"
        else
            apt_install python3-venv
        fi
        "$PY" -m venv .venv || die "could not create the virtualenv with $PY"
    fi
else
    step "virtualenv .venv present ($(.venv/bin/python -c 'import platform; print("Python", platform.python_version())'))"
fi

# pip only when needed: a stamp records the pyproject.toml that was installed, and the import must
# resolve to this checkout (a venv copied from elsewhere would point at another tree).
stamp=.venv/.pyweave-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $ROOT"
have=$(cat "$stamp" 2>/dev/null || true)
where=$(.venv/bin/python -c 'import os, pyweave; print(os.path.dirname(os.path.dirname(os.path.abspath(pyweave.__file__))))' 2>/dev/null || true)
if [ "$want" != "$have" ] || [ "$where" != "$ROOT" ]; then
    step "pip install -e '.[test,bench]' into .venv"
    # (The filter drops pip's warnings about find-links folders a machine's pip.conf may name
    # but that do not exist; pip's exit status still counts, through pipefail.)
    .venv/bin/python -m pip install -q --disable-pip-version-check -e "$ROOT[test,bench]" </dev/null 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    printf '%s\n' "$want" >"$stamp"
else
    step "pyweave installed in .venv (editable, $ROOT)"
fi
step "ready"
