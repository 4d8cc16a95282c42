"""The agent's incremental view of the store: the validated records, kept current per watch event.

`ClusterState.from_items` validates a whole snapshot; doing that on every event makes an agent's
work grow with the cluster. `ClusterView` holds the same records and applies one change at a time
(`apply`), or a whole new listing as the difference to what it holds (`replace`, after a compaction
or a reconnect). Indexes answer what a reconcile asks without a walk over the cluster:

- the records of this host (attachments, claims, endpoints, names) by host;
- endpoints by network and by host, so a network or host that changes re-checks only its own;
- per VNI, the remote entries this host would program (one per IP: the endpoint with the smallest
  key wins, as the full planner decides), and which of them changed since the agent last looked
  (`take_remote_changes`);
- the weaveDNS index, updated per name record.

The cross-checks of `ClusterState` hold here too, and a property test (tests/unit/test_view.py)
drives random sequences of puts, deletes and re-lists through both and compares them: networks
sharing a VNI (the one holding the VNI's claim wins), endpoints of unknown networks or hosts.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dataplane.api import RemoteEntry
from pyweave.dns import DnsIndex
from store import keys
from store.records import (
    AttachmentRecord,
    ClusterConfig,
    DnsRecords,
    EndpointRecord,
    HostRecord,
    Invalid,
    IpClaim,
    NetworkRecord,
    parse_entry,
)


@dataclass
class RemoteChanges:
    """What changed in the remote entries since the last `take_remote_changes`: per VNI, the IPs
    whose entry changed (the entry is in `ClusterView.remote(vni)`, or gone), and whether any
    host record changed (a peer's address moves every entry of that peer)."""

    ips: dict[int, set[str]] = field(default_factory=dict)
    local: bool = False  # something this host's own plan depends on changed
    hosts: bool = False  # a host record came, went or changed (routes, probes)
    links: bool = False  # a host's link views changed (routes)
    names: bool = False  # weaveDNS records changed
    reset: bool = False  # the view was cleared and listed again: trust nothing applied before


class ClusterView:
    """Validated records of one store prefix, per event; the agent of host `me` owns one."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.lock = threading.RLock()
        self.revision = 0
        self._changes = RemoteChanges()
        self._init()

    def clear(self) -> None:
        """Forget every record (after a failure that may have left the indexes inconsistent); the
        next `replace` rebuilds them, and the changes taken next say `reset`."""
        with self.lock:
            revision = self.revision
            self._init()
            self.revision = revision
            self._changes.reset = True

    def _init(self) -> None:
        self.items: dict[str, tuple[bytes, int]] = {}  # the mirror: key -> (value, lease)
        self.revision = 0
        self._entries: dict[str, Any] = {}  # key -> parse_entry's result
        # -- records, as ClusterState names them --------------------------------------------------
        self.hosts: dict[str, HostRecord] = {}
        self.members: dict[str, HostRecord] = {}
        self.networks: dict[str, NetworkRecord] = {}  # effective: the VNI check passed
        self.attachments: dict[tuple[str, str], AttachmentRecord] = {}
        self.endpoints: dict[str, EndpointRecord] = {}  # effective: network and host checks passed
        self.claims: dict[tuple[str, str], IpClaim] = {}
        self.dns: dict[tuple[str, str], DnsRecords] = {}
        self.dns_extra: dict[tuple[str, str], tuple[tuple, tuple]] = {}
        self.tombstones: dict[str, float] = {}
        self.vni_claims: dict[int, str] = {}
        self.links: dict[str, dict] = {}  # host -> peer -> LinkView (pyweave.routes)
        self.waits: dict[str, Any] = {}  # id -> WaitRecord: someone waits for the peers' progress
        self.config: ClusterConfig | None = None
        # -- what the cross-checks work from ------------------------------------------------------
        self._parse_invalid: dict[str, Invalid] = {}
        self._cross_invalid: dict[str, Invalid] = {}
        self._all_networks: dict[str, NetworkRecord] = {}  # every valid network record
        self._all_endpoints: dict[str, EndpointRecord] = {}  # every valid endpoint record
        self._losers: dict[int, set[str]] = {}  # vni -> subnets that lost it to another network
        self._eps_by_subnet: dict[str, set[str]] = defaultdict(set)
        self._eps_by_host: dict[str, set[str]] = defaultdict(set)
        # -- this host's records ------------------------------------------------------------------
        self._my_attachments: dict[str, AttachmentRecord] = {}  # by container ref
        self._claims_by_host: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self._own: set[str] = set()
        self._claim_holder: dict[tuple[str, str], str] = {}  # keys of this host's observed records (endpoints, names)
        # -- remote entries -----------------------------------------------------------------------
        self._by_vni_ip: dict[tuple[int, str], set[str]] = defaultdict(set)  # effective remote endpoint keys
        self._remote: dict[int, dict[str, RemoteEntry]] = defaultdict(dict)  # vni -> ip -> winner
        self._dups: set[tuple[int, str]] = set()  # (vni, ip) published by more than one endpoint
        self._changes = RemoteChanges()
        self.dns_index = DnsIndex()

    # -- feeding -------------------------------------------------------------------------------
    def apply(self, key: str, value: bytes | None, lease: int = 0, revision: int = 0) -> None:
        """One watch event (`value` None: deleted)."""
        with self.lock:
            self.revision = max(self.revision, revision)
            own = key.startswith(self._own_prefixes())
            if value is None:
                if self.items.pop(key, None) is None:
                    return
                self._own.discard(key)
                self._set_entry(key, None)
                return
            if own:
                self._own.add(key)
            old = self.items.get(key)
            self.items[key] = (value, lease)
            if old is not None and old[0] == value:
                if old[1] != lease and own:
                    self._changes.local = True
                return
            self._set_entry(key, parse_entry(key, value))

    def replace(self, items: Mapping[str, tuple[bytes, int]], revision: int) -> None:
        """A new listing: applied as the difference to what the view holds, so a key deleted while
        the watch was broken disappears, and only what differs is marked changed."""
        with self.lock:
            for key in [k for k in self.items if k not in items]:
                self.apply(key, None)
            # What others are checked against first (networks, VNI claims, hosts), so that each
            # endpoint is checked once, not again when its network and its host arrive.
            first = (keys.NETWORKS, keys.VNIS, keys.HOSTS)
            for key in sorted(items, key=lambda k: not k.startswith(first)):
                value, lease = items[key]
                self.apply(key, value, lease)
            self.revision = revision

    def snapshot(self) -> tuple[dict[str, tuple[bytes, int]], int]:
        with self.lock:
            return dict(self.items), self.revision

    def take_remote_changes(self) -> RemoteChanges:
        with self.lock:
            out, self._changes = self._changes, RemoteChanges()
            return out

    # -- queries -------------------------------------------------------------------------------
    @property
    def invalid(self) -> list[Invalid]:
        with self.lock:
            return sorted([*self._parse_invalid.values(), *self._cross_invalid.values()], key=lambda i: i.key)

    def local_attachments(self, me: str) -> Iterator[tuple[str, AttachmentRecord]]:
        """(container ref, attachment) of host `me`, in key order."""
        if me != self.me:
            yield from ((ref, att) for (host, ref), att in sorted(self.attachments.items()) if host == me)
            return
        yield from sorted(self._my_attachments.items())

    def claims_of(self, host: str) -> dict[tuple[str, str], IpClaim]:
        return {k: self.claims[k] for k in self._claims_by_host.get(host, ())}

    def network_for(self, subnet) -> NetworkRecord | None:
        return self.networks.get(str(subnet))

    def conflicting_network(self, subnet) -> NetworkRecord | None:
        return next((net for net in self.networks.values() if subnet.conflicts(net.network)), None)

    def vni_owner(self) -> Mapping[int, NetworkRecord]:
        return {rec.vni: rec for rec in self.networks.values()}

    def remote(self, vni: int) -> Mapping[str, RemoteEntry]:
        """The remote entries of a VNI by IP (this host's own endpoints excluded)."""
        return self._remote.get(vni, {})

    def remote_vnis(self) -> list[int]:
        """The VNIs that have remote entries."""
        return list(self._remote)

    def own_items(self) -> dict[str, tuple[bytes, int]]:
        """This host's observed records in the mirror (its endpoints and names)."""
        with self.lock:
            return {k: self.items[k] for k in self._own}

    # -- internals -----------------------------------------------------------------------------
    def _own_prefixes(self) -> tuple[str, str]:
        return keys.endpoint_prefix(self.me), keys.dns_prefix(self.me)

    def _set_entry(self, key: str, entry: Any) -> None:
        old = self._entries.pop(key, None)
        self._parse_invalid.pop(key, None)
        if old is not None and not isinstance(old, Invalid):
            self._unplace(key, old)
        if entry is None:
            return
        self._entries[key] = entry
        if isinstance(entry, Invalid):
            self._parse_invalid[key] = entry
            if key.startswith(keys.attachment_key(self.me, "")):
                self._changes.local = True
            return
        self._place(key, entry)

    def _place(self, key: str, entry: tuple[str, Any, Any]) -> None:
        slot, index, record = entry
        if slot == "networks":
            self._all_networks[index] = record
            self._recheck_vni(record.vni)
        elif slot == "vni_claims":
            self.vni_claims[index] = record
            self._recheck_vni(index)
        elif slot == "endpoints":
            self._all_endpoints[key] = record
            self._eps_by_subnet[record.subnet].add(key)
            self._eps_by_host[record.host].add(key)
            self._recheck_endpoint(key)
        elif slot == "hosts":
            old = self.hosts.get(index)
            self.hosts[index] = record
            if old is None or old.address != record.address:
                for ep_key in list(self._eps_by_host.get(index, ())):
                    self._recheck_endpoint(ep_key)
            self._changes.local = True
            self._changes.hosts = True
        elif slot == "config":
            self.config = record
            self._changes.local = True
        else:
            if slot == "dns":
                self.dns_index.add(record.records)
            getattr(self, slot)[index] = record
            self._note_other(slot, index, record)

    def _unplace(self, key: str, entry: tuple[str, Any, Any]) -> None:
        slot, index, record = entry
        if slot == "networks":
            self._all_networks.pop(index, None)
            self._recheck_vni(record.vni)
        elif slot == "vni_claims":
            self.vni_claims.pop(index, None)
            self._recheck_vni(index)
        elif slot == "endpoints":
            self._all_endpoints.pop(key, None)
            self._eps_by_subnet[record.subnet].discard(key)
            self._eps_by_host[record.host].discard(key)
            self._recheck_endpoint(key)
        elif slot == "hosts":
            self.hosts.pop(index, None)
            for ep_key in list(self._eps_by_host.get(index, ())):
                self._recheck_endpoint(ep_key)
            self._changes.local = True
            self._changes.hosts = True
        elif slot == "config":
            self.config = None
            self._changes.local = True
        else:
            if slot == "dns":
                self.dns_index.remove(record.records)
            getattr(self, slot).pop(index, None)
            self._note_other(slot, index, None)

    def _note_other(self, slot: str, index: Any, record: Any) -> None:
        if slot == "attachments":
            host, ref = index
            if host == self.me:
                if record is None:
                    self._my_attachments.pop(ref, None)
                else:
                    self._my_attachments[ref] = record
                self._changes.local = True
        elif slot == "claims":
            if record is None:
                old = self._claim_holder.pop(index, None)
                if old is not None:
                    self._claims_by_host[old].discard(index)
            else:
                self._claim_holder[index] = record.host
                self._claims_by_host[record.host].add(index)
            self._changes.local = True
        elif slot == "dns":
            self._changes.names = True
            if index[0] == self.me:
                self._changes.local = True
        elif slot == "dns_extra":
            if index[0] == self.me:
                self._changes.local = True
        elif slot == "links":
            self._changes.links = True
        elif slot == "waits":
            pass  # read by the pass that writes the progress record
        elif slot == "members" or slot == "tombstones":
            pass

    # -- cross-checks --------------------------------------------------------------------------
    def _recheck_vni(self, vni: int) -> None:
        """Of the valid networks with this VNI, the one its VNI claim names wins (else the smallest
        subnet); the others are invalid. Endpoints of every network that changed are checked again."""
        candidates = sorted(
            (s for s, rec in self._all_networks.items() if rec.vni == vni),
            key=lambda s: (self.vni_claims.get(vni) != s, s),
        )
        winner = candidates[0] if candidates else None
        touched: set[str] = set()
        for subnet in self._losers.pop(vni, set()):
            self._cross_invalid.pop(keys.network_key(subnet), None)
        for subnet in [s for s, rec in self.networks.items() if rec.vni == vni and s != winner]:
            del self.networks[subnet]
            touched.add(subnet)
        if winner is not None:
            if self.networks.get(winner) != self._all_networks[winner]:
                self.networks[winner] = self._all_networks[winner]
                touched.add(winner)
            losers = set(candidates[1:])
            for subnet in losers:
                key = keys.network_key(subnet)
                self._cross_invalid[key] = Invalid(key, f"vni {vni} is already used by {winner}")
            if losers:
                self._losers[vni] = losers
        for subnet in touched:
            for ep_key in list(self._eps_by_subnet.get(subnet, ())):
                self._recheck_endpoint(ep_key)
        if touched:
            self._changes.local = True

    def _recheck_endpoint(self, key: str) -> None:
        ep = self._all_endpoints.get(key)
        old = self.endpoints.pop(key, None)
        self._cross_invalid.pop(key, None)
        if ep is not None:
            net = self.networks.get(ep.subnet)
            if net is None or net.vni != ep.vni:
                self._cross_invalid[key] = Invalid(key, f"network {ep.subnet} with vni {ep.vni} is unknown")
            elif ep.host not in self.hosts:
                self._cross_invalid[key] = Invalid(key, f"host {ep.host} is not registered")
            else:
                self.endpoints[key] = ep
        new = self.endpoints.get(key)
        if old is not None and old.host != self.me:
            self._by_vni_ip[(old.vni, old.ip)].discard(key)
            self._elect(old.vni, old.ip)
        if new is not None and new.host != self.me:
            self._by_vni_ip[(new.vni, new.ip)].add(key)
            self._elect(new.vni, new.ip)
        if (old is not None and old.host == self.me) or (new is not None and new.host == self.me):
            self._changes.local = True

    def _elect(self, vni: int, ip: str) -> None:
        """The remote entry of (vni, ip): the endpoint with the smallest key (the full planner's
        rule); the others are reported by the planner as duplicates."""
        candidates = self._by_vni_ip.get((vni, ip))
        table = self._remote[vni]
        before = table.get(ip)
        if candidates and len(candidates) > 1:
            self._dups.add((vni, ip))
        else:
            self._dups.discard((vni, ip))
        host = None
        if candidates:
            ep = self.endpoints[min(candidates)]
            host = self.hosts.get(ep.host)  # None only mid-way through a host's removal
        if not candidates:
            self._by_vni_ip.pop((vni, ip), None)
        if host is not None:
            table[ip] = RemoteEntry(ep.mac, ep.ip, host.address)
        else:
            table.pop(ip, None)
            if not table:
                self._remote.pop(vni, None)
        if table.get(ip) != before:
            self._changes.ips.setdefault(vni, set()).add(ip)

    def duplicates(self, vnis: Iterable[int]) -> list[Invalid]:
        """Endpoints of these VNIs that publish an IP another endpoint already has (the full
        planner's problem for the losers: every key but the smallest)."""
        wanted = set(vnis)
        out = []
        for vni, ip in sorted(self._dups):
            if vni in wanted:
                candidates = self._by_vni_ip[(vni, ip)]
                winner = min(candidates)
                out += [Invalid(k, f"address {ip} is also published by {winner}; ignored") for k in sorted(candidates - {winner})]
        return out

    def local_refs(self) -> list[str]:
        """The container refs of this host's attachments."""
        with self.lock:
            return list(self._my_attachments)
