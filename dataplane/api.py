"""The dataplane's seam: what the agent asks of a host's kernel, and the values it passes.

No kernel imports here: the pure planner (`pyweave.plan`) and the agent's tests build these values
without pyroute2. `dataplane.linux.LinuxDataplane` is the real implementation; tests and the
control-plane benchmark plug in recording ones.

Names are the contract with the kernel: one network = one VNI = bridge `pwb-<vni>` + VXLAN device
`pwx-<vni>`; a container's port is the veth `pwv<hash>` whose peer is `ethwe` in the container. The
agent recognises what it owns by these prefixes (and the veth's alias), so it can garbage-collect.
A host that relays network `vni` for others (docs/routing.md) also has, per hop budget k, a transit
VXLAN device `pwrx<k>-<vni>` (UDP port VXLAN_PORT + k) alone on a transit bridge `pwrb<k>-<vni>`.
Besides devices, pyweave owns two nft tables: `inet pyweave_hostfilter` (the agent's: containers
reach their host only for DNS, `dataplane.hostfilter`) and `inet pyweave_tunnel` (the encrypted
tunnel's, `dataplane.tunnel`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Protocol

BRIDGE_PREFIX = "pwb-"
VXLAN_PREFIX = "pwx-"
VETH_PREFIX = "pwv"
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
TRANSIT_BRIDGE_PREFIX = "pwrb"
TRANSIT_VXLAN_PREFIX = "pwrx"
OWNED_PREFIXES = (BRIDGE_PREFIX, VXLAN_PREFIX, VETH_PREFIX, TRANSIT_BRIDGE_PREFIX, TRANSIT_VXLAN_PREFIX)


class DataplaneError(Exception):
    """A kernel operation failed. `retryable`: whether trying the same again later may help (a
    missing bridge will be there after the next pass; a name already taken in a container will not)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Underlay:
    ifname: str
    ifindex: int
    address: str
    mtu: int


@dataclass(frozen=True)
class LocalPort:
    """Desired: one container on one network."""

    container_id: str
    pid: int
    vni: int
    ifname: str  # inside the container
    mac: str
    cidrs: tuple[IPv4Interface, ...]
    mtu: int


@dataclass(frozen=True)
class PortState:
    """Observed: what the host end's alias says about a port."""

    host_ifname: str
    container_id: str
    vni: int
    ifname: str
    pid: int
    mac: str
    cidrs: tuple[IPv4Interface, ...]


@dataclass(frozen=True)
class RemoteEntry:
    """A remote endpoint: its MAC and IP, and where its frames go: the underlay address of the host
    that has it, or, when that host is reached through a relay, "RELAY-ADDRESS:PORT" (the port
    carries the hop budget, docs/routing.md)."""

    mac: str
    ip: str
    underlay: str


@dataclass(frozen=True)
class RemoteDelta:
    """Changes to one VNI's remote entries, as kernel objects: FDB entries (MAC -> underlay) and
    neighbour entries (IP -> MAC) to remove, then to add. Made by `RemoteTable.update`."""

    fdb_del: tuple[tuple[str, str], ...] = ()  # (mac, underlay)
    neigh_del: tuple[tuple[str, str], ...] = ()  # (ip, mac)
    fdb_add: tuple[tuple[str, str], ...] = ()
    neigh_add: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fdb_del or self.neigh_del or self.fdb_add or self.neigh_add)

    def applied_to(self, entries: Iterable[RemoteEntry]) -> frozenset[RemoteEntry]:
        """The remote entries a device holds after this delta: what a kernel would list, for the
        dataplanes that record instead of programming (tests, the control-plane benchmark)."""
        fdb = {e.mac: e.underlay for e in entries}
        neigh = {e.ip: e.mac for e in entries}
        for mac, _dst in self.fdb_del:
            fdb.pop(mac, None)
        for ip, _mac in self.neigh_del:
            neigh.pop(ip, None)
        fdb.update(dict(self.fdb_add))
        neigh.update(dict(self.neigh_add))
        return frozenset(RemoteEntry(mac, ip, fdb[mac]) for ip, mac in neigh.items() if mac in fdb)


class RemoteTable:
    """One VNI's remote entries as they are in the kernel, by IP, kept by the agent so that a
    change of a few entries becomes a few kernel writes (no dump). A container with several
    addresses on one network has one MAC for all: its FDB entry stays while any of them does."""

    def __init__(self, entries: Iterable[RemoteEntry] = ()) -> None:
        self.entries: dict[str, RemoteEntry] = {}
        self._fdb: dict[tuple[str, str], int] = {}  # (mac, underlay) -> entries using it
        self.checked_at = 0.0  # when its user last compared it with the kernel (time.monotonic())
        self.update({e.ip: e for e in entries})

    def update(self, changes: dict[str, RemoteEntry | None]) -> RemoteDelta:
        """Apply changes (IP -> its entry now, or None: gone); returns the kernel writes needed."""
        fdb_del, neigh_del, fdb_add, neigh_add = [], [], [], []
        for ip, new in changes.items():
            old = self.entries.get(ip)
            if old == new:
                continue
            if old is not None:
                del self.entries[ip]
                if new is None or new.mac != old.mac:
                    neigh_del.append((ip, old.mac))
                fdb = (old.mac, old.underlay)
                self._fdb[fdb] -= 1
                if not self._fdb[fdb]:
                    del self._fdb[fdb]
                    fdb_del.append(fdb)
            if new is not None:
                self.entries[ip] = new
                if old is None or new.mac != old.mac:
                    neigh_add.append((ip, new.mac))
                fdb = (new.mac, new.underlay)
                self._fdb[fdb] = self._fdb.get(fdb, 0) + 1
                if self._fdb[fdb] == 1:
                    fdb_add.append(fdb)
        # An FDB entry removed and added again in one batch (an address moved between two IPs of
        # one container) is simply kept.
        both = set(fdb_del) & set(fdb_add)
        return RemoteDelta(
            tuple(f for f in fdb_del if f not in both), tuple(neigh_del),
            tuple(f for f in fdb_add if f not in both), tuple(neigh_add),
        )


def bridge_name(vni: int) -> str:
    return f"{BRIDGE_PREFIX}{vni}"


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def transit_bridge_name(vni: int, budget: int) -> str:
    return f"{TRANSIT_BRIDGE_PREFIX}{budget}-{vni}"


def transit_vxlan_name(vni: int, budget: int) -> str:
    return f"{TRANSIT_VXLAN_PREFIX}{budget}-{vni}"


def parse_transit_name(name: str) -> tuple[int, int] | None:
    """(vni, budget) of a transit device or bridge name, else None."""
    for prefix in (TRANSIT_VXLAN_PREFIX, TRANSIT_BRIDGE_PREFIX):
        if name.startswith(prefix):
            budget, _, vni = name[len(prefix):].partition("-")
            if budget.isdigit() and vni.isdigit():
                return int(vni), int(budget)
    return None


def host_veth_name(container_id: str, vni: int) -> str:
    digest = hashlib.sha1(f"{container_id}:{vni}".encode()).hexdigest()
    return VETH_PREFIX + digest[:12]


class Dataplane(Protocol):
    """One host's kernel, as the agent drives it. Every method is idempotent."""

    def networks(self) -> set[int]: ...
    def ports(self) -> dict[tuple[str, int], PortState]: ...
    def ensure_network(self, vni: int) -> None: ...
    def remove_network(self, vni: int) -> None: ...
    def ensure_exposed(self, vni: int, *, mac: str, cidrs: Iterable[IPv4Interface], subnet: str | None = None) -> None: ...
    def ensure_port(self, port: LocalPort) -> None: ...
    def remove_port(self, state: PortState) -> None: ...
    def sync_remote(self, vni: int, entries: Iterable[RemoteEntry]) -> int: ...
    def update_remote(self, vni: int, delta: RemoteDelta) -> None: ...
    def transits(self) -> set[tuple[int, int]]: ...
    def ensure_transit(self, vni: int, budget: int) -> None: ...
    def remove_transit(self, vni: int, budget: int) -> None: ...
    def sync_transit(self, vni: int, budget: int, fdb: Mapping[str, str]) -> int: ...
    def close(self) -> None: ...
