"""The kernel applier: makes the host's kernel match a plan, touching only what changed.

It remembers what it last applied per object (a network's exposed addresses, a port) and, per
network, the remote entries in the kernel (`RemoteTable`). Between full resyncs an object whose
desired state did not change is trusted, and remote entries change by the few FDB and neighbour
writes an event needs (`Dataplane.update_remote`, no dump), so an event costs kernel work for what it
changed, not for the size of the cluster. A full resync (`forget`) re-reads and re-checks everything
(`sync_remote` dumps and diffs each network once) and repairs what someone deleted by hand. A port whose creation failed with a
permanent error (`DataplaneError.retryable` false, e.g. the interface name is taken in the container)
is not tried again until its desired state changes; it is reported as a problem meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from dataplane.api import Dataplane, DataplaneError, LocalPort, PortState, RemoteEntry, RemoteTable
from pyweave.plan import HostPlan, expose_mac
from store import keys
from store.records import Invalid, NetworkRecord

log = logging.getLogger("pyweave.agent")

TRANSIT_GRACE = 30.0  # seconds a transit device nobody needs is kept (a flapping link does not churn it)
REMOTE_CHECK_RATE = 1000.0  # remote entries re-read from the kernel per second, at most, by the resync


@dataclass
class Applied:
    """The outcome of one pass: problems to report, and containers whose port failed."""

    problems: list[Invalid] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    wrote: bool = False  # the kernel was written to (a network, a port, remote entries)
    ports_changed: bool = False  # a port was made, changed or removed


class KernelApplier:
    def __init__(self, dataplane: Dataplane, *, me: str) -> None:
        self.dataplane = dataplane
        self.me = me
        self._applied: dict[tuple, object] = {}
        self._remote: dict[int, RemoteTable] = {}  # vni -> what its VXLAN device holds
        self._refused: dict[tuple[str, int], tuple[LocalPort, str]] = {}  # permanent failures
        self._transit: dict[tuple[int, int], dict[str, str]] = {}  # (vni, budget) -> FDB as applied
        self._transit_present: set[tuple[int, int]] | None = None  # as the kernel has them
        self._transit_unwanted: dict[tuple[int, int], float] = {}  # -> since when nobody needs it

    def forget(self, *, all_remote: bool = True) -> None:
        """Trust nothing: the next pass re-reads and re-checks every object (full resync).

        With `all_remote` false (the periodic resync), a network's remote entries are re-read only
        when their last check is older than their size allows: dumping and diffing costs about
        50 us an entry, so at REMOTE_CHECK_RATE entries a second it stays near 5 % of a core
        (50,000 entries: every 50 s; up to 8,000: at every resync)."""
        self._applied.clear()
        self._transit.clear()
        self._transit_present = None
        now = time.monotonic()
        for vni in list(self._remote):
            table = self._remote[vni]
            if all_remote or now - table.checked_at >= len(table.entries) / REMOTE_CHECK_RATE:
                del self._remote[vni]

    def knows_remote(self, vni: int) -> bool:
        """Whether the remote entries of vni are known, so that changes can be applied as deltas."""
        return vni in self._remote

    @property
    def remote_count(self) -> int:
        return sum(len(t.entries) for t in self._remote.values())

    def apply(
        self,
        plan: HostPlan,
        existing: Mapping[tuple[str, int], PortState],
        owners: Mapping[int, NetworkRecord],
        *,
        docker_ok: bool,
        frozen: set[str],
        remote_full: Mapping[int, list[RemoteEntry]] | None = None,
        remote_changes: Mapping[int, dict[str, RemoteEntry | None]] | None = None,
    ) -> Applied:
        """Networks first (ports join their bridges), then ports, then remote entries; networks no
        port needs any more go last. Without Docker, local ports are kept exactly as they are."""
        out = Applied()
        for vni in sorted(plan.vnis):
            net = owners.get(vni)
            want = (expose_mac(self.me, vni), plan.exposes.get(vni, ()), net.subnet if net else None)
            if self._applied.get(("net", vni)) != want:
                out.wrote = True
                self.dataplane.ensure_network(vni)
                self.dataplane.ensure_exposed(vni, mac=want[0], cidrs=want[1], subnet=want[2])
                self._applied[("net", vni)] = want
        if docker_ok:
            self._apply_ports(plan, existing, frozen, out)
        # Remote entries: the whole set of a network (the plan's, or `remote_full`) is synced
        # against the kernel; `remote_changes` are applied as deltas to a network already known.
        full = dict(remote_full or {})
        if remote_full is None and remote_changes is None:
            full = {vni: list(plan.remote.get(vni, ())) for vni in plan.vnis if self._remote_differs(vni, plan)}
        for vni in sorted(full):
            out.wrote = True
            self.dataplane.sync_remote(vni, full[vni])
            self._remote[vni] = RemoteTable(full[vni])
            self._remote[vni].checked_at = time.monotonic()
        for vni, changes in sorted((remote_changes or {}).items()):
            table = self._remote.get(vni)
            if table is None:
                continue
            delta = table.update(changes)
            if delta:
                out.wrote = True
                self.dataplane.update_remote(vni, delta)
        if docker_ok:
            kept = plan.vnis | {vni for (cid, vni) in existing if (cid, vni) in plan.ports or cid in frozen}
            for vni in self.dataplane.networks() - kept:
                out.wrote = True
                self.dataplane.remove_network(vni)
                self._applied.pop(("net", vni), None)
        for vni in [v for v in self._remote if v not in plan.vnis]:
            del self._remote[vni]  # not of interest any more (its devices go, or stay frozen)
        return out

    def apply_transit(self, wanted: Mapping[tuple[int, int], Mapping[str, str]]) -> bool:
        """Transit devices (relaying, docs/routing.md) with exactly the FDB `wanted` says; one no
        longer wanted is emptied at once and removed after TRANSIT_GRACE. Whether the kernel was
        written to."""
        wrote = False
        if self._transit_present is None:
            self._transit_present = self.dataplane.transits()
        now = time.monotonic()
        for key, fdb in sorted(wanted.items()):
            self._transit_unwanted.pop(key, None)
            if self._transit.get(key) == fdb:
                continue
            if key not in self._transit:
                self.dataplane.ensure_transit(*key)
                self._transit_present.add(key)
            self.dataplane.sync_transit(key[0], key[1], fdb)
            self._transit[key] = dict(fdb)
            wrote = True
        for key in sorted(self._transit_present - set(wanted)):
            # Not needed any more: it relays nothing from now on (its entries go at once, so none
            # outlives the endpoint it names), and the device itself goes after the grace period.
            if self._transit.get(key, True):
                self.dataplane.sync_transit(key[0], key[1], {})
                self._transit[key] = {}
                wrote = True
            since = self._transit_unwanted.setdefault(key, now)
            if now - since >= TRANSIT_GRACE:
                self.dataplane.remove_transit(*key)
                self._transit_present.discard(key)
                self._transit.pop(key, None)
                self._transit_unwanted.pop(key, None)
                wrote = True
        return wrote

    @property
    def has_transit(self) -> bool:
        """Whether this host has transit devices (to empty or remove when no longer wanted)."""
        return bool(self._transit_present)

    @property
    def transit_pending(self) -> bool:
        """Whether a transit device waits for its grace period to end (a pass must come then)."""
        return bool(self._transit_unwanted)

    def _remote_differs(self, vni: int, plan: HostPlan) -> bool:
        table = self._remote.get(vni)
        return table is None or set(table.entries.values()) != set(plan.remote.get(vni, ()))

    def _apply_ports(
        self, plan: HostPlan, existing: Mapping[tuple[str, int], PortState], frozen: set[str], out: Applied
    ) -> None:
        for key, port in plan.ports.items():
            if key in existing and self._applied.get(("port", key)) == port:
                continue
            refused = self._refused.get(key)
            if refused is not None and refused[0] == port:
                self._problem(out, port, refused[1])
                continue
            out.wrote = out.ports_changed = True
            try:
                self.dataplane.ensure_port(port)
                self._applied[("port", key)] = port
                self._refused.pop(key, None)
            except DataplaneError as err:
                if not err.retryable:
                    self._refused[key] = (port, str(err))
                self._problem(out, port, str(err))
        for key, port_state in existing.items():
            if key not in plan.ports and port_state.container_id not in frozen:
                out.wrote = out.ports_changed = True
                self.dataplane.remove_port(port_state)
                self._applied.pop(("port", key), None)
        for key in [k for k in self._refused if k not in plan.ports]:
            del self._refused[key]

    def _problem(self, out: Applied, port: LocalPort, problem: str) -> None:
        out.problems.append(Invalid(keys.attachment_key(self.me, port.container_id), problem))
        out.failed.add(port.container_id)
