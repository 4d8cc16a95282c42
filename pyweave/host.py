"""Who "this host" is, and where its state lives.

A host is a network namespace: the root one on a real machine, a named one (`ip netns exec H ...`)
in the lab. Its state directory is chosen by that namespace, so `ip netns exec H pyweave ...` acts as
host H with no extra flags: `/var/lib/pyweave/<netns>` (or `default` in the root namespace), under
`$PYWEAVE_STATE_ROOT` when set. The directory holds the persisted identity (name, VTEP MAC), the
cluster configuration chosen at launch, the pid files of the agent and the embedded etcd, and logs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

DEFAULT_STATE_ROOT = "/var/lib/pyweave"
NETNS_DIR = Path("/run/netns")


def current_netns_name() -> str | None:
    """The name under /run/netns of the namespace this process is in, or None for any other."""
    try:
        mine = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    if NETNS_DIR.is_dir():
        for entry in sorted(NETNS_DIR.iterdir()):
            try:
                st = entry.stat()
            except OSError:
                continue
            if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
                return entry.name
    return None


def state_dir() -> Path:
    root = Path(os.environ.get("PYWEAVE_STATE_ROOT", DEFAULT_STATE_ROOT))
    return root / (current_netns_name() or "default")


def _random_mac() -> str:
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in raw)


@dataclass
class HostConfig:
    """What `launch` decided; read by every later command on this host."""

    name: str
    vtep_mac: str
    store: list[str] = field(default_factory=list)
    embedded_etcd: bool = False  # this host runs a member of the embedded store
    store_members: int = 1  # members the embedded store forms itself with; 0: a store of the user's own
    address: str | None = None  # underlay address; None = found at agent start
    mtu: int | None = None  # overlay MTU override
    lease_ttl: int = 10
    resync_interval: float = 8.0  # full resync: repairs objects deleted by hand within this period
    dns: bool = True
    dns_domain: str = "weave.local."
    dns_forward: bool = True  # names outside the domain go to the host's resolvers (else REFUSED)
    metrics_port: int = 6782  # 0: no metrics
    metrics_addr: str = "127.0.0.1"  # loopback: only this host scrapes, unless launch says otherwise
    encrypted: bool = False  # the cluster has a secret: frames between hosts cross the tunnel (docs/encryption.md)
    store_ca: str | None = None  # a store of the user's own over TLS: its CA, our client certificate and key
    store_cert: str | None = None
    store_key: str | None = None


class HostStateError(Exception):
    """This host's saved state cannot be used; the message says which file and what to do."""


class HostState:
    """Files of this host's state directory."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or state_dir()

    @property
    def config_path(self) -> Path:
        return self.dir / "config.json"

    @property
    def agent_pid_path(self) -> Path:
        return self.dir / "agent.pid"

    @property
    def etcd_pid_path(self) -> Path:
        return self.dir / "etcd.pid"

    @property
    def etcd_hold_path(self) -> Path:
        """While this file exists, the agent's supervisor leaves the embedded etcd down (maintenance)."""
        return self.dir / "etcd.hold"

    @property
    def lease_path(self) -> Path:
        return self.dir / "lease"

    @property
    def log_path(self) -> Path:
        return self.dir / "agent.log"

    @property
    def etcd_dir(self) -> Path:
        return self.dir / "etcd"

    def default_name(self) -> str:
        return current_netns_name() or socket.gethostname()

    def load(self) -> HostConfig | None:
        """The saved configuration, or None before the first launch. Fields this version does not
        know are ignored; a file that is not a configuration raises HostStateError."""
        try:
            data = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise HostStateError(f"{self.config_path} cannot be read ({err}); fix it, or `pyweave reset` to start over") from err
        known = {f.name for f in fields(HostConfig)}
        try:
            return HostConfig(**{k: v for k, v in data.items() if k in known})
        except (AttributeError, TypeError) as err:
            raise HostStateError(f"{self.config_path} is not a pyweave configuration ({err}); fix it, or "
                                 f"`pyweave reset` to start over") from err

    def save(self, config: HostConfig) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.config_path, json.dumps(asdict(config), indent=2).encode())

    def load_or_create(self, *, name: str | None = None) -> HostConfig:
        """The persisted identity, or a new one: the VTEP MAC is made once and kept for good."""
        config = self.load()
        if config is None:
            config = HostConfig(name=name or self.default_name(), vtep_mac=_random_mac())
        elif name and name != config.name:
            config.name = name
        return config

    # -- processes -----------------------------------------------------------------------------
    @staticmethod
    def _read_pid(path: Path) -> int | None:
        try:
            pid = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def agent_pid(self) -> int | None:
        return self._read_pid(self.agent_pid_path)

    def etcd_pid(self) -> int | None:
        return self._read_pid(self.etcd_pid_path)

    def read_lease(self) -> int:
        try:
            return int(self.lease_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    def write_lease(self, lease_id: int) -> None:
        self.lease_path.write_text(str(lease_id))


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write a file whole or not at all: a temporary file of its own (the agent and a command may
    write the same file at once: with one shared temporary name, one's rename took the other's file
    away), with `mode` from its creation, renamed into place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_process(pid: int, *, timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL."""
    import time

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
