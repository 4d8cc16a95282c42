"""A validated snapshot of the schema (`ClusterState`): what every reader of the store plans from.

`from_items` validates each key and value (`store.records.parse_entry`), places the records by kind,
then checks what no single record can: two networks with one VNI, endpoints of unknown networks
or hosts. Everything rejected is listed in `invalid`, by key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from store import keys
from store.addresses import OverlaySubnet
from store.records import (
    AttachmentRecord,
    ClusterConfig,
    DnsRecords,
    EndpointRecord,
    HostRecord,
    Invalid,
    IpClaim,
    LinkView,
    NetworkRecord,
    WaitRecord,
    parse_entry,
)


@dataclass
class ClusterState:
    """A validated snapshot of everything under ROOT."""

    hosts: dict[str, HostRecord] = field(default_factory=dict)  # alive or stopped (lease-bound)
    members: dict[str, HostRecord] = field(default_factory=dict)  # every host ever launched
    networks: dict[str, NetworkRecord] = field(default_factory=dict)  # by subnet string
    attachments: dict[tuple[str, str], AttachmentRecord] = field(default_factory=dict)
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)  # by key
    claims: dict[tuple[str, str], IpClaim] = field(default_factory=dict)  # (subnet, ip)
    dns: dict[tuple[str, str], DnsRecords] = field(default_factory=dict)  # observed, by (host, container)
    dns_extra: dict[tuple[str, str], tuple[tuple, tuple]] = field(default_factory=dict)  # (add, remove)
    tombstones: dict[str, float] = field(default_factory=dict)
    links: dict[str, dict[str, LinkView]] = field(default_factory=dict)  # host -> peer -> its view (docs/routing.md)
    waits: dict[str, WaitRecord] = field(default_factory=dict)  # id -> a CLI waiting for the peers' progress
    vni_claims: dict[int, str] = field(default_factory=dict)  # vni -> subnet (written with the network)
    config: ClusterConfig | None = None
    invalid: list[Invalid] = field(default_factory=list)

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, bytes]], cache: dict | None = None) -> ClusterState:
        """Validate every item. With a cache (a dict the caller keeps between calls), a key whose
        value did not change is not parsed again: an agent re-plans on every event, and parsing
        thousands of unchanged records each time would make its work grow with the cluster."""
        state = cls()
        fresh: dict = {}
        for key, raw in items:
            hit = cache.get(key) if cache is not None else None
            entry = hit[1] if hit is not None and hit[0] == raw else parse_entry(key, raw)
            fresh[key] = (raw, entry)
            state._place(key, entry)
        if cache is not None:
            cache.clear()
            cache.update(fresh)
        state._cross_check()
        return state

    def _place(self, key: str, entry) -> None:
        if entry is None:
            return
        if isinstance(entry, Invalid):
            self.invalid.append(entry)
            return
        slot, index, value = entry
        if slot == "config":
            self.config = value
        else:
            getattr(self, slot)[index] = value

    def _cross_check(self) -> None:
        # Two networks with one VNI: the one that holds the VNI's claim (written in the same
        # transaction as the network) keeps it, so a hand-made duplicate never evicts a working one.
        by_vni: dict[int, str] = {}
        ordered = sorted(self.networks.items(), key=lambda kv: (self.vni_claims.get(kv[1].vni) != kv[0], kv[0]))
        for subnet, rec in ordered:
            if rec.vni in by_vni:
                self.invalid.append(
                    Invalid(keys.network_key(subnet), f"vni {rec.vni} is already used by {by_vni[rec.vni]}")
                )
                del self.networks[subnet]
            else:
                by_vni[rec.vni] = subnet
        for key, ep in list(self.endpoints.items()):
            net = self.networks.get(ep.subnet)
            if net is None or net.vni != ep.vni:
                self.invalid.append(Invalid(key, f"network {ep.subnet} with vni {ep.vni} is unknown"))
                del self.endpoints[key]
            elif ep.host not in self.hosts:
                self.invalid.append(Invalid(key, f"host {ep.host} is not registered"))
                del self.endpoints[key]

    def local_attachments(self, me: str) -> list[tuple[str, AttachmentRecord]]:
        """(container ref, attachment) of host `me`, in key order."""
        return [(ref, att) for (host, ref), att in sorted(self.attachments.items()) if host == me]

    def claims_of(self, host: str) -> dict[tuple[str, str], IpClaim]:
        return {k: claim for k, claim in self.claims.items() if claim.host == host}

    def network_for(self, subnet: ipaddress.IPv4Network | str) -> NetworkRecord | None:
        return self.networks.get(str(subnet))

    def conflicting_network(self, subnet: OverlaySubnet) -> NetworkRecord | None:
        """An existing network that `subnet` overlaps without being it (the one overlap rule)."""
        return next((net for net in self.networks.values() if subnet.conflicts(net.network)), None)

    def vni_owner(self) -> Mapping[int, NetworkRecord]:
        return {rec.vni: rec for rec in self.networks.values()}
