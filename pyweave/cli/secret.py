"""The cluster's secret on the command line (`launch --password`, `$PYWEAVE_PASSWORD`, `--password-file`),
and the checks that a host joins a cluster encrypted like itself (docs/encryption.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pyweave.cli.base import fail

MAX_SECRET = 4096  # bytes; a secret is a passphrase or a key, not a file's worth of data


def read_secret(password: str | None, password_file: str | None) -> bytes | None:
    """The secret given, or None; exit 2 for an unusable one (empty, both forms, unreadable file)."""
    if password is not None and password_file is not None:
        fail("give the secret once: --password (or $PYWEAVE_PASSWORD) or --password-file, not both", 2)
    if password_file is not None:
        try:
            raw = Path(password_file).read_bytes()
        except OSError as err:
            fail(f"--password-file {password_file} cannot be read ({err.strerror}); give a readable file", 2)
        secret = raw.rstrip(b"\r\n")
        what = f"--password-file {password_file}"
    elif password is not None:
        secret = password.encode()
        what = "--password"
    else:
        return None
    if not secret:
        fail(f"{what} is empty; give a non-empty secret", 2)
    if len(secret) > MAX_SECRET:
        fail(f"{what} is longer than {MAX_SECRET} bytes; give a shorter secret", 2)
    return secret


def check_same_encryption(cluster_encrypted: bool, have_secret: bool) -> None:
    """A cluster is encrypted or not as a whole: refuse a host that would mix them."""
    if cluster_encrypted and not have_secret:
        fail("the cluster is encrypted: launch with the cluster's secret (--password, $PYWEAVE_PASSWORD or --password-file)")
    if have_secret and not cluster_encrypted:
        fail("the cluster is not encrypted: launch without --password (a cluster is encrypted as a whole, from its first host)")


def wait_tunnel_peer(stats_file: Path, peers: set[str], timeout: float) -> bool:
    """Whether this host's tunnel establishes a session with one of `peers` (names) within
    `timeout`: with a wrong secret no peer completes a handshake (docs/encryption.md)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stats = json.loads(stats_file.read_text())
        except (FileNotFoundError, ValueError):
            stats = {}
        for peer in (stats.get("peers") or {}).values():  # by address, each with its name
            if peer.get("name") in peers and (peer.get("established") or peer.get("opened", 0) > 0):
                return True
        time.sleep(0.1)
    return False


def exposure_warning(*, encrypted: bool, store: list[str]) -> str | None:
    """The one line `launch` and `status` print on stderr when this host's store or traffic is open
    to the underlay (docs/security.md): no secret means plain frames between hosts, and a store in
    plain HTTP (the embedded one without a secret, or `--store http://...`) answers anyone who
    reaches it. None when both are protected. One line per command, not one per peer: the cause is
    the host's configuration, not a peer."""
    store_open = not store or any(not url.lower().startswith("https://") for url in store)
    if encrypted and not store_open:
        return None
    if not encrypted:
        what = "the store (etcd) and the traffic between hosts are" if store_open else "the traffic between hosts is"
        return f"WARNING: no --password given: {what} open to anyone on the underlay network; see docs/security.md"
    return ("WARNING: the store (etcd) is in plain HTTP: it is open to anyone on the underlay network; give "
            "--store https://... with --store-ca/--store-cert/--store-key; see docs/security.md")
