"""Fakes for unit tests of the watcher and the agent: a store that can go down, a dataplane that
records what it is told, a container runtime that knows the containers it is given. No root, no
etcd, no Docker. The store itself is `store.memory.MemoryStore` (watches, leases, compaction)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import polling

from dataplane.api import LocalPort, PortState, RemoteDelta, RemoteEntry, host_veth_name
from pyweave.containers import ContainerInfo
from store.errors import StoreUnavailable
from store.memory import MemoryStore


def wait_for(condition: Callable[[], object], *, timeout: float = 5.0, message: str = "condition"):
    """`polling.wait_for` with the unit tier's pace: the fakes answer at once, so poll every 5 ms."""
    return polling.wait_for(condition, timeout=timeout, interval=0.005, message=message)


class FlakyStore:
    """One client's view of a MemoryStore that can become unreachable. While `down`, every call
    raises `StoreUnavailable` (and going down breaks this client's watches); other clients keep
    writing to `inner` meanwhile. `refused` counts the calls refused."""

    def __init__(self, inner: MemoryStore | None = None) -> None:
        self.inner = inner or MemoryStore()
        self.endpoints = self.inner.endpoints
        self.down = False
        self.refused = 0
        self._cancels: list[Callable[[], None]] = []
        self._callbacks: list[Callable] = []

    def go_down(self) -> None:
        self.down = True
        for cancel in self._cancels:
            cancel()
        for callback in self._callbacks:
            callback(StoreUnavailable(self.endpoints, "connection refused"))
        self._cancels.clear()
        self._callbacks.clear()

    def come_back(self) -> None:
        self.down = False

    def watch(self, prefix: str, *, start_revision: int, callback: Callable) -> Callable[[], None]:
        self._check()
        cancel = self.inner.watch(prefix, start_revision=start_revision, callback=callback)
        self._cancels.append(cancel)
        self._callbacks.append(callback)
        return cancel

    def _check(self) -> None:
        if self.down:
            self.refused += 1
            raise StoreUnavailable(self.endpoints, "connection refused")

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._check()
            return attr(*args, **kwargs)

        return call


class RecordingDataplane:
    """Implements `dataplane.api.Dataplane` in memory; `writes` lists every call that changes
    something, as (method, vni or container id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._networks: set[int] = set()
        self._ports: dict[tuple[str, int], PortState] = {}
        self.remote: dict[int, frozenset[RemoteEntry]] = {}
        self.exposed: dict[int, tuple] = {}
        self.writes: list[tuple[str, object]] = []
        self.transit: dict[tuple[int, int], dict[str, str]] = {}  # (vni, budget) -> FDB

    def _write(self, method: str, what: object) -> None:
        with self._lock:
            self.writes.append((method, what))

    def calls(self, method: str) -> list[object]:
        with self._lock:
            return [what for m, what in self.writes if m == method]

    def networks(self) -> set[int]:
        with self._lock:
            return set(self._networks)

    def ports(self) -> dict[tuple[str, int], PortState]:
        with self._lock:
            return dict(self._ports)

    def ensure_network(self, vni: int) -> None:
        self._write("ensure_network", vni)
        with self._lock:
            self._networks.add(vni)

    def remove_network(self, vni: int) -> None:
        self._write("remove_network", vni)
        with self._lock:
            self._networks.discard(vni)
            self.remote.pop(vni, None)

    def ensure_exposed(self, vni: int, *, mac: str, cidrs: Iterable, subnet: str | None = None, **_more) -> None:
        self._write("ensure_exposed", vni)
        with self._lock:
            self.exposed[vni] = (mac, tuple(cidrs), subnet)

    def ensure_port(self, port: LocalPort) -> None:
        self._write("ensure_port", port.container_id)
        with self._lock:
            self._ports[(port.container_id, port.vni)] = PortState(
                host_ifname=host_veth_name(port.container_id, port.vni), container_id=port.container_id,
                vni=port.vni, ifname=port.ifname, pid=port.pid, mac=port.mac, cidrs=tuple(port.cidrs),
            )

    def remove_port(self, state: PortState) -> None:
        self._write("remove_port", state.container_id)
        with self._lock:
            self._ports.pop((state.container_id, state.vni), None)

    def sync_remote(self, vni: int, entries: Iterable[RemoteEntry]) -> int:
        new = frozenset(entries)
        with self._lock:
            old = self.remote.get(vni, frozenset())
            self.remote[vni] = new
        self._write("sync_remote", vni)
        return len(new ^ old)

    def update_remote(self, vni: int, delta: RemoteDelta) -> None:
        """The kernel's view of a delta: FDB (MAC -> underlay) and neighbour (IP -> MAC) entries."""
        with self._lock:
            self.remote[vni] = delta.applied_to(self.remote.get(vni, ()))
        self._write("update_remote", vni)

    def transits(self) -> set[tuple[int, int]]:
        with self._lock:
            return set(self.transit)

    def ensure_transit(self, vni: int, budget: int) -> None:
        self._write("ensure_transit", (vni, budget))
        with self._lock:
            self.transit.setdefault((vni, budget), {})

    def remove_transit(self, vni: int, budget: int) -> None:
        self._write("remove_transit", (vni, budget))
        with self._lock:
            self.transit.pop((vni, budget), None)

    def sync_transit(self, vni: int, budget: int, fdb) -> int:
        self._write("sync_transit", (vni, budget))
        with self._lock:
            old = self.transit.get((vni, budget), {})
            self.transit[(vni, budget)] = dict(fdb)
        return len(set(old.items()) ^ set(dict(fdb).items()))

    def close(self) -> None:
        pass


class FakeRuntime:
    """Implements `pyweave.containers.ContainerRuntime`: the containers it is given, by ID or name."""

    def __init__(self, *containers: ContainerInfo) -> None:
        self.containers = {c.id: c for c in containers}

    def add(self, info: ContainerInfo) -> None:
        self.containers[info.id] = info

    def inspect(self, ref: str) -> ContainerInfo | None:
        if ref in self.containers:
            return self.containers[ref]
        return next((c for c in self.containers.values() if c.name == ref), None)

    def follow_events(self, on_event: Callable[[str, str], None], stop: threading.Event) -> None:
        stop.wait()


def running(cid: str, name: str = "c", pid: int = 4242) -> ContainerInfo:
    return ContainerInfo(id=cid, name=name, pid=pid, running=True, hostname=name, labels={})
