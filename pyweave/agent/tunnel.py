"""The tunnel keeper: runs this host's encryption tunnel and tells it who the peers are.

In an encrypted cluster (docs/encryption.md) every frame between hosts goes through a per-host tunnel
process (`python -m dataplane.tunnel`), which outlives the agent: `pyweave stop` or an agent restart
leaves it running, so containers keep talking. The keeper starts it when it is not running (at agent
start, and whenever a pass finds it dead: supervision), and keeps its configuration file current: the
peers (underlay address -> name and public key, from their host records), rewritten atomically and
signalled with SIGHUP only when it changed. `pyweave reset` stops it (`stop`).

PYWEAVE_TUNNEL_REKEY_AFTER (seconds, in the agent's environment, which `pyweave launch` passes on):
how often the tunnel rotates its sessions' keys, instead of the design's 120 s. For tests (a
rotation under traffic within seconds) and operators who want shorter-lived keys; it is written into
the tunnel's config, which the running tunnel re-reads (a relaunch without it goes back to 120 s).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from pyweave.host import HostState, pid_alive, stop_process, write_atomically

log = logging.getLogger("pyweave.agent")

TUNNEL_PORT = 6783  # weave's data port
CHECK_INTERVAL = 1.0  # seconds between two checks that the tunnel still runs
REKEY_ENV = "PYWEAVE_TUNNEL_REKEY_AFTER"


def rekey_after_from_env() -> float | None:
    """The rotation period asked for in the environment (None: the tunnel's default); a value that
    is not a positive number of seconds is ignored, with a warning."""
    raw = os.environ.get(REKEY_ENV, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        log.warning("%s=%r is not a positive number of seconds: ignored", REKEY_ENV, raw)
        return None
    return seconds


# What the tunnel's stats file counts as dropped (dataplane/tunnel.py): per peer ("total") and by
# the tunnel itself ("tunnel").
PEER_DROPS = ("forged", "replayed", "too_old", "queued_dropped")
TUNNEL_DROPS = ("unknown_source", "no_peer", "malformed", "send_errors", "write_errors", "incomplete")


def drops(stats: Mapping) -> dict[str, int]:
    """Packets dropped, by kind, from the tunnel's stats (`TunnelKeeper.stats()`); {} without any."""
    total, own = stats.get("total") or {}, stats.get("tunnel") or {}
    if not total and not own:
        return {}
    return {kind: int(total.get(kind, 0)) for kind in PEER_DROPS} | {kind: int(own.get(kind, 0)) for kind in TUNNEL_DROPS}


def read_stats(state: HostState) -> dict:
    """The tunnel's last stats file ({} before it wrote one)."""
    try:
        data = json.loads(TunnelPaths(state).stats.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class TunnelPaths:
    """The tunnel's files in the host's state directory."""

    def __init__(self, state: HostState) -> None:
        d = state.dir
        self.config = d / "tunnel.json"
        self.pid = d / "tunnel.pid"
        self.log = d / "tunnel.log"
        self.stats = d / "tunnel-stats.json"
        self.key = d / "host.key"
        self.secret = d / "secret"


def save_secret(state: HostState, secret: bytes) -> None:
    """The cluster's secret, readable by root only (the tunnel process reads it at start)."""
    state.dir.mkdir(parents=True, exist_ok=True)
    write_atomically(TunnelPaths(state).secret, secret, mode=0o600)


def tunnel_pid(state: HostState) -> int | None:
    try:
        pid = int(TunnelPaths(state).pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def stop(state: HostState) -> None:
    """Stop the tunnel (reset): it removes its own device and rules on the way out."""
    pid = tunnel_pid(state)
    if pid is not None:
        stop_process(pid)
    TunnelPaths(state).pid.unlink(missing_ok=True)


class TunnelKeeper:
    def __init__(self, state: HostState, *, me: str, address: str) -> None:
        self.state = state
        self.paths = TunnelPaths(state)
        self.me = me
        self.address = address
        self._peers: dict[str, dict[str, str]] = {}
        self._checked = 0.0
        self._proc: subprocess.Popen | None = None
        self.rekey_after = rekey_after_from_env()

    def _config(self) -> dict:
        extra = {"rekey_after": self.rekey_after} if self.rekey_after is not None else {}
        return extra | {
            "me": self.me,
            "address": self.address,
            "port": TUNNEL_PORT,
            "key_file": str(self.paths.key),
            "secret_file": str(self.paths.secret),
            "stats_file": str(self.paths.stats),
            "peers": self._peers,
        }

    def _write_config(self) -> None:
        write_atomically(self.paths.config, json.dumps(self._config(), indent=2, sort_keys=True).encode())

    def ensure_running(self, *, force: bool = False) -> None:
        """Start the tunnel if it does not run (checked at most once a CHECK_INTERVAL)."""
        now = time.monotonic()
        if not force and now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None  # reaped: it died
        if tunnel_pid(self.state) is not None:
            return
        self._write_config()
        with open(self.paths.log, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "dataplane.tunnel", "--config", str(self.paths.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )
        self.paths.pid.write_text(str(self._proc.pid))
        log.info("tunnel started pid=%d", self._proc.pid)

    def update(self, peers: Mapping[str, tuple[str, str]]) -> None:
        """The peers as the host records say (address -> (name, public key)); the tunnel is told
        (SIGHUP) only when they changed."""
        wanted = {address: {"name": name, "public": key} for address, (name, key) in peers.items()}
        if wanted == self._peers:
            return
        self._peers = wanted
        self._write_config()
        pid = tunnel_pid(self.state)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
        log.info("tunnel peers: %s", ", ".join(sorted(p["name"] for p in wanted.values())) or "none")

    def stats(self) -> dict:
        return read_stats(self.state)

