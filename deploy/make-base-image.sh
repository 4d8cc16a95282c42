#!/usr/bin/env bash
# Make the base image of the compose lab locally, for a machine that reaches Debian's package mirror
# but no container registry:   sudo deploy/make-base-image.sh [IMAGE]     (default debian:bookworm-slim)
#
# On a machine that reaches Docker Hub you do not need this: `docker compose build` pulls
# debian:bookworm-slim as usual. Here the same name is made from Debian itself:
#
#   1. `debootstrap --variant=minbase bookworm` into a temporary directory (about 1-2 minutes),
#      with apt sources like the official image's (bookworm, bookworm-updates, bookworm-security);
#   2. the root file system is packed into a tarball cached under $PYWEAVE_LAB_CACHE
#      (default /var/cache/pyweave-lab), so the next time only step 3 runs (seconds);
#   3. `docker import` of the tarball as IMAGE, with the official image's PATH and CMD.
#
# Does nothing when IMAGE already exists (set PYWEAVE_LAB_REIMPORT=1 to import it again from the
# cached tarball; delete the tarball to bootstrap again). Concurrent runs wait for each other (flock).
# Environment: PYWEAVE_LAB_CACHE, PYWEAVE_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

IMAGE=${1:-debian:bookworm-slim}
CACHE=${PYWEAVE_LAB_CACHE:-/var/cache/pyweave-lab}
MIRROR=${PYWEAVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
TARBALL=$CACHE/debian-$SUITE-minbase.tar

say() { printf 'make-base-image: %s\n' "$*"; }
die() { printf 'make-base-image: error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "the docker client is not installed"
if [ "${PYWEAVE_LAB_REIMPORT:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE exists; nothing to do"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root: sudo $0"
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9

if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install debootstrap"
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    say "debootstrap --variant=minbase $SUITE from $MIRROR (about 1-2 minutes)"
    start=$SECONDS
    if ! debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE/debootstrap.log" >&2
        die "debootstrap failed; see $CACHE/debootstrap.log"
    fi
    # apt sources as in the official image; no package lists or .debs kept (apt-get update first).
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*
    printf 'container\n' >"$root/etc/hostname"
    tar --numeric-owner -C "$root" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$root"
    trap - EXIT
    say "cached $TARBALL ($(du -h "$TARBALL" | cut -f1), $((SECONDS - start))s)"
fi

say "docker import $TARBALL as $IMAGE"
docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["bash"]' \
    -m "debootstrap --variant=minbase $SUITE (pyweave deploy/make-base-image.sh)" \
    "$TARBALL" "$IMAGE" >/dev/null
say "ready: $IMAGE"
