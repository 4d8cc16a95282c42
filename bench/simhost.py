"""The pieces of a simulated host for the control-plane benchmark (section 6).

The real `pyweave.agent.Agent` runs unchanged; only its two sides are replaced through the seams
of `pyweave.interfaces`: a dataplane that records what it is told instead of programming a kernel,
and a container runtime that knows every container the benchmark attached. Around the agent:
`CountingStore` counts the etcd requests it makes, and `TimedAgent` adds up the CPU time its
reconcile thread spends in `Agent.reconcile`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from dataplane.api import LocalPort, PortState, RemoteDelta, RemoteEntry, host_veth_name
from pyweave.agent import Agent
from pyweave.containers import ContainerInfo


class RecordingDataplane:
    """Implements `dataplane.api.Dataplane` in memory. `set_target` arms a convergence check:
    the wall-clock time at which the remote entries of a VNI first number `count` is recorded by
    `sync_remote` / `update_remote` itself, in the agent's thread, so detecting it later costs no
    precision.

    Remote entries are held as a kernel holds them, per VNI an FDB (MAC -> underlay) and a neighbour
    table (IP -> MAC), and a delta is applied in place: O(delta), as the kernel's writes are. (Building
    the whole table again per delta, as `RemoteDelta.applied_to` does for the unit tests, cost the
    simulation 40 % of its CPU at 100 hosts: work a real host never does, charged to the agents.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._networks: set[int] = set()
        self._ports: dict[tuple[str, int], PortState] = {}
        self._fdb: dict[int, dict[str, str]] = {}
        self._neigh: dict[int, dict[str, str]] = {}
        self.calls: Counter = Counter()
        self._target: tuple[int, int] | None = None
        self.reached_at: float | None = None

    @property
    def remote(self) -> dict[int, frozenset[RemoteEntry]]:
        """Per VNI, the entries with both a neighbour and an FDB entry (what `ip neigh` + `bridge fdb` show)."""
        with self._lock:
            return {vni: self._entries(vni) for vni in self._neigh}

    def remote_count(self, vni: int) -> int:
        with self._lock:
            return len(self._entries(vni))

    def _entries(self, vni: int) -> frozenset[RemoteEntry]:
        fdb, neigh = self._fdb.get(vni, {}), self._neigh.get(vni, {})
        return frozenset(RemoteEntry(mac, ip, fdb[mac]) for ip, mac in neigh.items() if mac in fdb)

    def networks(self) -> set[int]:
        return set(self._networks)

    def ports(self) -> dict[tuple[str, int], PortState]:
        return dict(self._ports)

    def ensure_network(self, vni: int) -> None:
        self.calls["ensure_network"] += 1
        self._networks.add(vni)

    def remove_network(self, vni: int) -> None:
        self.calls["remove_network"] += 1
        self._networks.discard(vni)
        with self._lock:
            self._fdb.pop(vni, None)
            self._neigh.pop(vni, None)

    def ensure_exposed(self, vni: int, *, mac: str, cidrs: Iterable[str], subnet: str | None = None, **_more) -> None:
        self.calls["ensure_exposed"] += 1

    def ensure_port(self, port: LocalPort) -> None:
        self.calls["ensure_port"] += 1
        self._ports[(port.container_id, port.vni)] = PortState(
            host_ifname=host_veth_name(port.container_id, port.vni),
            container_id=port.container_id,
            vni=port.vni,
            ifname=port.ifname,
            pid=port.pid,
            mac=port.mac,
            cidrs=tuple(port.cidrs),
        )

    def remove_port(self, state: PortState) -> None:
        self.calls["remove_port"] += 1
        self._ports.pop((state.container_id, state.vni), None)

    def sync_remote(self, vni: int, entries: Iterable[RemoteEntry]) -> int:
        self.calls["sync_remote"] += 1
        new = frozenset(entries)
        with self._lock:
            old = self._entries(vni)
            self._fdb[vni] = {e.mac: e.underlay for e in new}
            self._neigh[vni] = {e.ip: e.mac for e in new}
            self._check()
        return len(new ^ old)

    def update_remote(self, vni: int, delta: RemoteDelta) -> None:
        self.calls["update_remote"] += 1
        with self._lock:
            fdb, neigh = self._fdb.setdefault(vni, {}), self._neigh.setdefault(vni, {})
            for mac, _dst in delta.fdb_del:
                fdb.pop(mac, None)
            for ip, _mac in delta.neigh_del:
                neigh.pop(ip, None)
            fdb.update(delta.fdb_add)
            neigh.update(delta.neigh_add)
            self._check()

    # Relaying (docs/routing.md): simulated hosts are a full mesh and never relay.
    def transits(self) -> set[tuple[int, int]]:
        return set()

    def ensure_transit(self, vni: int, budget: int) -> None:
        self.calls["ensure_transit"] += 1

    def remove_transit(self, vni: int, budget: int) -> None:
        self.calls["remove_transit"] += 1

    def sync_transit(self, vni: int, budget: int, fdb) -> int:
        self.calls["sync_transit"] += 1
        return 0

    def set_target(self, vni: int, count: int) -> None:
        with self._lock:
            self._target = (vni, count)
            self.reached_at = None
            self._check()

    def _check(self) -> None:
        if self._target and self.reached_at is None:
            vni, count = self._target
            # The sizes first (O(1) per delta); the full count only when they match.
            if len(self._neigh.get(vni, ())) >= count and len(self._entries(vni)) == count:
                self.reached_at = time.time()


def container_id(host: str, index: int) -> str:
    return hashlib.sha256(f"{host}/{index}".encode()).hexdigest()


class FakeRuntime:
    """Implements `pyweave.interfaces.ContainerRuntime`: every full container ID is a running
    container (the benchmark attaches only IDs it made), with a name, so it gets DNS records."""

    def inspect(self, ref: str) -> ContainerInfo | None:
        if len(ref) != 64:
            return None
        return ContainerInfo(
            id=ref, name=f"c{ref[:11]}", pid=100000 + int(ref[:5], 16), running=True, hostname=ref[:12], labels={}
        )

    def follow_events(self, on_event: Callable[[str, str], None], stop: threading.Event) -> None:
        stop.wait()


def _label(method: str, args: tuple) -> str:
    """'put endpoints', 'get ips', 'list v1', 'keepalive': the method, and for keyed calls the kind
    of key (the first component after /pyweave/v1/, or 'progress')."""
    if not args or not isinstance(args[0], str) or not args[0].startswith("/pyweave/"):
        return method
    rest = args[0][len("/pyweave/"):]
    parts = rest.split("/")
    kind = parts[1] if parts[0] == "v1" and len(parts) > 1 and parts[1] else parts[0]
    return f"{method} {kind}"


class CountingStore:
    """Forwards everything to a store.etcd.EtcdStore (or anything alike), counting calls by name."""

    def __init__(self, inner, *, slow_s: float = 3.0) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.calls: Counter = Counter()
        self.slow_s = slow_s
        self.slow: Counter = Counter()  # calls that took longer than slow_s, by label
        self.slowest = 0.0  # seconds, the slowest call since take_slowest()

    @property
    def inner(self):
        """The store counted: its own `retried` counts the attempts it made again inside one call."""
        return self._inner

    def counts(self) -> dict[str, int]:
        """A copy of the counts, taken under the lock (the agents' threads add to them meanwhile)."""
        with self._lock:
            return dict(self.calls)

    def slow_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.slow)

    def take_slowest(self) -> float:
        """The slowest call's seconds since the last take (and start over)."""
        with self._lock:
            slowest, self.slowest = self.slowest, 0.0
            return slowest

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            label = _label(name, args)
            with self._lock:
                self.calls[label] += 1
            t0 = time.monotonic()
            try:
                return attr(*args, **kwargs)
            finally:
                took = time.monotonic() - t0
                if name != "watch":  # a watch call returns its handle at once; what it delivers is not timed
                    with self._lock:
                        self.slowest = max(self.slowest, took)
                        if took > self.slow_s:
                            self.slow[label] += 1

        return counted


class CapturingStore:
    """Records writes instead of making them: the preload asks the real agent code what it
    would publish, and writes it in batches."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, bytes, int]] = []

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self.puts.append((key, value, lease))
        return 0

    def delete(self, key: str) -> bool:
        return False

    def __getattr__(self, name: str):
        raise AttributeError(f"the preload's store does not support {name}()")


class TimedAgent(Agent):
    """The real agent, with CPU and wall time of every reconcile added up, and `register` done
    once: the worker registers every agent before any starts watching, so that 200 registrations
    do not each wake 199 agents (a real cluster is not started in the same second)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reconcile_cpu = 0.0
        self.reconcile_wall = 0.0
        self.reconcile_calls = 0
        self._registered = False

    def register(self) -> None:
        if self._registered:
            return
        super().register()
        self._registered = bool(self.lease)

    def reconcile(self, *args, **kwargs):
        cpu = time.thread_time()
        wall = time.perf_counter()
        try:
            return super().reconcile(*args, **kwargs)
        finally:
            self.reconcile_cpu += time.thread_time() - cpu
            self.reconcile_wall += time.perf_counter() - wall
            self.reconcile_calls += 1
