"""What one host's kernel should look like: a pure function of the cluster snapshot and Docker.

`plan_host` takes the validated cluster state, this host's name, what Docker says of the containers
named in this host's attachments, and the ports the kernel already has (only to keep interface names
stable), and returns the desired networks, container ports, remote FDB/neighbour entries, the
endpoint records to publish, and the problems to report. It has no side effects, so it is tested
without root, etcd or Docker; the agent applies its result.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dataplane.api import LocalPort, PortState, RemoteEntry, bridge_name
from pyweave.containers import ContainerInfo
from pyweave.dnsnames import names_of
from store.addresses import OverlayAddress
from store.keys import EXPOSE_REF, attachment_key, endpoint_key
from store.records import AttachmentRecord, EndpointRecord, Invalid
from store.state import ClusterState

if TYPE_CHECKING:
    from pyweave.view import ClusterView

IFNAME_BASE = "ethwe"

# What of the host's own routes and addresses a subnet overlaps (`dataplane.hostroutes`, described
# for people: "the route 198.18.0.0/24 dev eth0 of this host"), or None.
HostOverlap = Callable[[ipaddress.IPv4Network], "str | None"]


@functools.lru_cache(maxsize=4096)  # asked for every local port on every pass; a host has few
def container_mac(container_id: str, vni: int) -> str:
    """Stable across agent and container restarts: derived, never random."""
    raw = bytearray(hashlib.sha256(f"{container_id}/{vni}".encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def ifname_for(index: int) -> str:
    return IFNAME_BASE if index == 0 else f"{IFNAME_BASE}{index}"


@dataclass
class HostPlan:
    vnis: set[int] = field(default_factory=set)
    ports: dict[tuple[str, int], LocalPort] = field(default_factory=dict)
    remote: dict[int, set[RemoteEntry]] = field(default_factory=dict)
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)
    exposes: dict[int, tuple[OverlayAddress, ...]] = field(default_factory=dict)  # the host's own addresses
    dns: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # container id -> records
    missing_networks: set[str] = field(default_factory=set)
    missing_claims: list[tuple[OverlayAddress, str, str]] = field(default_factory=list)  # (cidr, host, container ref)
    gone_containers: list[str] = field(default_factory=list)  # attachment refs whose container was removed
    deferred: list[str] = field(default_factory=list)  # attachment refs Docker was not asked about yet
    refused: list[str] = field(default_factory=list)  # attachment refs with a subnet over the host's routes
    problems: list[Invalid] = field(default_factory=list)


def _looks_like_full_id(ref: str) -> bool:
    return len(ref) == 64 and all(c in "0123456789abcdef" for c in ref)


def plan_host(
    state: ClusterState | ClusterView,
    me: str,
    containers: Mapping[str, ContainerInfo | None],
    existing_ports: Mapping[tuple[str, int], PortState],
    *,
    mtu: int,
    dns_domain: str | None = None,
    with_remote: bool = True,
    host_overlap: HostOverlap | None = None,
) -> HostPlan:
    """The plan of host `me`. `state` is a `ClusterState` or the agent's incremental
    `pyweave.view.ClusterView` (the same records); with `with_remote` false the remote entries are
    left out, for a caller that keeps them per event (`ClusterView.remote`). `host_overlap` says
    what of the host's own routing a subnet overlaps: such an address (an attachment written by
    hand, which `run` and `attach` would have refused) is a problem, never a port, a network or a
    claim, since programming it would route the host's own traffic into the overlay."""
    plan = HostPlan()
    for ref, att in state.local_attachments(me):
        if ref != EXPOSE_REF and ref not in containers:
            # Docker was not asked about it (the attachment arrived after the lookups of this
            # pass): plan it next pass. Absent is not gone; only Docker's None means gone.
            plan.deferred.append(ref)
            continue
        info = containers.get(ref)
        _plan_attachment(plan, state, me, ref, att, info, existing_ports, mtu, host_overlap)
        if dns_domain and info is not None and ref != EXPOSE_REF:
            _plan_names(plan, state, me, info, dns_domain)
    if with_remote:
        _plan_remote(plan, state, me)
    return plan


def _plan_names(plan: HostPlan, state: ClusterState | ClusterView, me: str, info: ContainerInfo, domain: str) -> None:
    """DNS records of a container with a port: its names times its addresses, plus dns-add."""
    ips = sorted({rec.ip for rec in plan.endpoints.values() if rec.container == info.id})
    if not ips:
        return
    records = [(name, ip) for name in names_of(info.name, info.hostname, domain) for ip in ips]
    add, remove = state.dns_extra.get((me, info.id), ((), ()))
    records += [r for r in add if r not in records]
    records = [r for r in records if r not in remove]
    if records:
        plan.dns[info.id] = tuple(sorted(records))


def expose_mac(host: str, vni: int) -> str:
    """The MAC of a host's bridge on vni: fixed, so peers can program the exposed address."""
    return container_mac(f"{EXPOSE_REF}/{host}", vni)


def _resolve(
    plan: HostPlan, state: ClusterState | ClusterView, me: str, ref: str, att: AttachmentRecord,
    host_overlap: HostOverlap | None = None,
) -> tuple[list[int], dict[int, list[OverlayAddress]]]:
    """The attachment's addresses grouped by VNI, in the order the attachment lists them.
    Addresses whose network or claim is missing are queued for the agent to create, and
    addresses held by someone else, or on a subnet over the host's own routes, are reported:
    none of them gets a port yet."""
    key = attachment_key(me, ref)
    by_vni: dict[int, list[OverlayAddress]] = {}
    order: list[int] = []
    for cidr in att.cidrs:
        overlap = host_overlap(cidr.network) if host_overlap is not None else None
        if overlap:
            plan.problems.append(Invalid(key, f"subnet {cidr.network} overlaps {overlap}: not programmed (it would "
                                              f"divert the host's own traffic); write the attachment with a subnet "
                                              f"that does not overlap it"))
            if ref not in plan.refused:
                plan.refused.append(ref)
            continue
        net = state.network_for(cidr.network)
        if net is None:
            other = state.conflicting_network(cidr.network)
            if other is not None:
                plan.problems.append(Invalid(key, f"address {cidr} overlaps network {other.subnet} but is not in it"))
            else:
                plan.missing_networks.add(str(cidr.network))
            continue
        claim = state.claims.get((net.subnet, str(cidr.ip)))
        if claim is None:
            plan.missing_claims.append((cidr, me, ref))
            continue
        if (claim.host, claim.container) != (me, ref):
            plan.problems.append(
                Invalid(key, f"address {cidr.ip} is held by container {claim.container[:12]} on host {claim.host}")
            )
            continue
        if net.vni not in by_vni:
            by_vni[net.vni] = []
            order.append(net.vni)
        by_vni[net.vni].append(cidr)
    return order, by_vni


def _endpoint_records(
    plan: HostPlan, me: str, container: str, vni: int, mac: str, ifname: str, cidrs: tuple[OverlayAddress, ...]
) -> None:
    subnet = str(cidrs[0].network)
    for cidr in cidrs:
        rec = EndpointRecord(
            host=me,
            container=container,
            ip=str(cidr.ip),
            prefixlen=cidr.network.prefixlen,
            subnet=subnet,
            vni=vni,
            mac=mac,
            ifname=ifname,
        )
        plan.endpoints[endpoint_key(me, container, rec.ip)] = rec


def _plan_expose(plan: HostPlan, state: ClusterState | ClusterView, me: str, att: AttachmentRecord,
                 host_overlap: HostOverlap | None) -> None:
    order, by_vni = _resolve(plan, state, me, EXPOSE_REF, att, host_overlap)
    for vni in order:
        cidrs = tuple(by_vni[vni])
        plan.vnis.add(vni)
        plan.exposes[vni] = cidrs
        _endpoint_records(plan, me, EXPOSE_REF, vni, expose_mac(me, vni), bridge_name(vni), cidrs)


def _plan_attachment(
    plan: HostPlan,
    state: ClusterState | ClusterView,
    me: str,
    ref: str,
    att: AttachmentRecord,
    info: ContainerInfo | None,
    existing_ports: Mapping[tuple[str, int], PortState],
    mtu: int,
    host_overlap: HostOverlap | None = None,
) -> None:
    if ref == EXPOSE_REF:
        _plan_expose(plan, state, me, att, host_overlap)
        return
    key = attachment_key(me, ref)
    if info is None:
        if _looks_like_full_id(ref):
            plan.gone_containers.append(ref)
        else:
            plan.problems.append(Invalid(key, f"container {ref} not found on this host's Docker"))
        return
    if not info.running:
        return  # a stopped container keeps its attachment; its port comes back when it starts
    order, by_vni = _resolve(plan, state, me, ref, att, host_overlap)

    # Interface names: a port that exists keeps its name; a new one takes the lowest free name,
    # networks in the order the attachment lists them (so the first network is `ethwe`).
    taken = {p.ifname for (cid, vni), p in existing_ports.items() if cid == info.id and vni in by_vni}
    for vni in order:
        existing = existing_ports.get((info.id, vni))
        if existing is not None and existing.ifname:
            name = existing.ifname
        else:
            index = 0
            while ifname_for(index) in taken:
                index += 1
            name = ifname_for(index)
            taken.add(name)
        mac = container_mac(info.id, vni)
        cidrs = tuple(by_vni[vni])
        plan.vnis.add(vni)
        plan.ports[(info.id, vni)] = LocalPort(info.id, info.pid, vni, name, mac, cidrs, mtu)
        _endpoint_records(plan, me, info.id, vni, mac, name, cidrs)


def _plan_remote(plan: HostPlan, state: ClusterState | ClusterView, me: str) -> None:
    seen: dict[tuple[int, str], str] = {}
    for key, ep in sorted(state.endpoints.items()):
        if ep.host == me or ep.vni not in plan.vnis:
            continue
        host = state.hosts.get(ep.host)
        if host is None:
            continue
        owner = seen.get((ep.vni, ep.ip))
        if owner is not None:
            plan.problems.append(Invalid(key, f"address {ep.ip} is also published by {owner}; ignored"))
            continue
        seen[(ep.vni, ep.ip)] = key
        plan.remote.setdefault(ep.vni, set()).add(RemoteEntry(ep.mac, ep.ip, host.address))
    for vni in plan.vnis:
        plan.remote.setdefault(vni, set())
