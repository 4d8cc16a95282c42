"""The cluster's key schema and domain records: the upper tier of `store/`.

Everything pyweave shares lives under one versioned prefix, `/pyweave/v1/` (documented for people who
edit it with etcdctl in docs/keys.md). Values are JSON objects. Every value read is validated here:
a bad one becomes an `Invalid` entry naming the key and the problem, never an exception, so one
hand-edited mistake cannot stop an agent from applying everything else.

Desired state (written by the CLI or a person):
    networks/<net-id>                 {"subnet": "10.0.0.0/24", "vni": 65536}
    attachments/<host>/<container>    {"cidrs": ["10.0.0.1/24"]}
    ips/<net-id>/<ip>                 {"host": "...", "container": "..."}   (address claims)
    config                            {"ipalloc_range", "default_subnet", "dead_host_grace"}
    dnsextra/<host>/<container>       {"add": [["web.weave.local.", "10.0.0.5"]], "remove": [...]}
Observed state (written only by the agent that owns it, bound to its host's lease):
    hosts/<host>                      {"name", "address", "vtep_mac", "mtu", "state", ...}
    members/<host>                    the same, not lease-bound: hosts that were ever launched
    endpoints/<host>/<container>/<ip> {"ip", "prefixlen", "subnet", "vni", "mac", "ifname", ...}
    dns/<host>/<container>            {"records": [["web.weave.local.", "10.0.0.5"], ...]}
    tombstones/<host>                 {"since": <unix time>}  (a member whose lease is gone)
Progress (outside the watched prefix, so writing it wakes no agent):
    /pyweave/progress/v1/<host>       {"revision": N, "problems": [{"key", "problem"}]}

`<net-id>` is the subnet with "/" replaced by "-" (10.0.0.0-24).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

ROOT = "/pyweave/v1/"
PROGRESS_ROOT = "/pyweave/progress/v1/"
HOSTS = ROOT + "hosts/"
MEMBERS = ROOT + "members/"
NETWORKS = ROOT + "networks/"
ATTACHMENTS = ROOT + "attachments/"
ENDPOINTS = ROOT + "endpoints/"
IPS = ROOT + "ips/"
CONFIG = ROOT + "config"
DNS = ROOT + "dns/"
DNS_EXTRA = ROOT + "dnsextra/"
TOMBSTONES = ROOT + "tombstones/"
VNIS = ROOT + "vnis/"

FIRST_VNI = 0x10000  # leaves the low range free for hand-made VXLANs
MAX_VNI = 0xFFFFFF
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class RawStore(Protocol):
    """What the domain tier needs of the raw tier (store.etcd.EtcdStore, or an in-memory fake)."""

    def list(self, prefix: str) -> tuple[list, int]: ...
    def get(self, key: str): ...
    def put(self, key: str, value: bytes, *, lease: int = 0) -> int: ...
    def delete(self, key: str) -> bool: ...
    def create(self, key: str, value: bytes, *, lease: int = 0) -> bool: ...
    def commit(self, *, absent=(), unchanged=None, puts=(), deletes=(), lease: int = 0) -> bool: ...
    def delete_if(self, key: str, *, mod_revision: int) -> bool: ...


def net_id(subnet: ipaddress.IPv4Network | str) -> str:
    return str(subnet).replace("/", "-")


def host_key(host: str) -> str:
    return HOSTS + host


def member_key(host: str) -> str:
    return MEMBERS + host


def network_key(subnet: ipaddress.IPv4Network | str) -> str:
    return NETWORKS + net_id(subnet)


def attachment_key(host: str, container: str) -> str:
    return f"{ATTACHMENTS}{host}/{container}"


def endpoint_key(host: str, container: str, ip: str) -> str:
    return f"{ENDPOINTS}{host}/{container}/{ip}"


def ip_claim_key(subnet: ipaddress.IPv4Network | str, ip: str) -> str:
    return f"{IPS}{net_id(subnet)}/{ip}"


def progress_key(host: str) -> str:
    return PROGRESS_ROOT + host


def encode(record: object) -> bytes:
    return json.dumps(asdict(record), sort_keys=True, separators=(",", ":")).encode()


# -- records ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostRecord:
    name: str
    address: str
    vtep_mac: str
    mtu: int
    state: str = "alive"  # "alive" while the agent runs; "stopped" after `pyweave stop`
    version: str = ""


@dataclass(frozen=True)
class NetworkRecord:
    subnet: str
    vni: int

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)


@dataclass(frozen=True)
class AttachmentRecord:
    host: str
    container: str
    cidrs: tuple[str, ...]


@dataclass(frozen=True)
class EndpointRecord:
    host: str
    container: str
    ip: str
    prefixlen: int
    subnet: str
    vni: int
    mac: str
    ifname: str

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"


@dataclass(frozen=True)
class IpClaim:
    subnet: str
    ip: str
    host: str
    container: str


@dataclass(frozen=True)
class ClusterConfig:
    ipalloc_range: str = "10.32.0.0/12"
    default_subnet: str = "10.32.0.0/12"
    dead_host_grace: float = 600.0


@dataclass(frozen=True)
class DnsRecords:
    host: str
    container: str
    records: tuple[tuple[str, str], ...]  # (fqdn with trailing dot, lower case; ip)


@dataclass(frozen=True)
class Invalid:
    key: str
    problem: str


# -- parsing ----------------------------------------------------------------------------------
class _Bad(ValueError):
    pass


def _obj(raw: bytes) -> dict:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise _Bad(f"not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise _Bad(f"expected a JSON object, got {type(value).__name__}")
    return value


def _field(obj: dict, name: str, kind: type | tuple[type, ...]) -> object:
    if name not in obj:
        raise _Bad(f'missing field "{name}"')
    value = obj[name]
    if isinstance(value, bool) and kind is not bool:
        raise _Bad(f'field "{name}" must be {getattr(kind, "__name__", kind)}, not a boolean')
    if not isinstance(value, kind):
        raise _Bad(f'field "{name}" must be {getattr(kind, "__name__", kind)}, got {json.dumps(value)}')
    return value


def _ipv4(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as err:
        raise _Bad(f"{what} {text!r} is not an IPv4 address") from err


def _subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as err:
        raise _Bad(f"subnet {text!r} is not an IPv4 network with zero host bits ({err})") from err
    if not 8 <= net.prefixlen <= 30:
        raise _Bad(f"subnet {text} must have a prefix length between /8 and /30")
    return net


def _endpoint_cidr(text: object) -> ipaddress.IPv4Interface:
    if not isinstance(text, str):
        raise _Bad(f"address {json.dumps(text)} must be a string like 10.0.0.1/24")
    if text.startswith("ip:"):
        text = text[3:]
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError as err:
        raise _Bad(f"address {text!r} is not an IPv4 CIDR like 10.0.0.1/24") from err
    if "/" not in text:
        raise _Bad(f"address {text!r} needs a prefix length, like {text}/24")
    net = iface.network
    if not 8 <= net.prefixlen <= 30:
        raise _Bad(f"address {text} must have a prefix length between /8 and /30")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise _Bad(f"address {text} is the network or broadcast address of {net}")
    return iface


def _parse_host(name: str, obj: dict) -> HostRecord:
    rec = HostRecord(
        name=str(_field(obj, "name", str)),
        address=str(_ipv4(str(_field(obj, "address", str)), "address")),
        vtep_mac=str(_field(obj, "vtep_mac", str)).lower(),
        mtu=int(_field(obj, "mtu", int)),
        state=str(obj.get("state", "alive")),
        version=str(obj.get("version", "")),
    )
    if rec.name != name:
        raise _Bad(f'field "name" is {rec.name!r} but the key names host {name!r}')
    if not MAC_RE.match(rec.vtep_mac):
        raise _Bad(f"vtep_mac {rec.vtep_mac!r} is not a MAC address")
    if not 576 <= rec.mtu <= 65535:
        raise _Bad(f"mtu {rec.mtu} is out of range")
    return rec


def _parse_network(nid: str, obj: dict) -> NetworkRecord:
    subnet = _subnet(str(_field(obj, "subnet", str)))
    vni = int(_field(obj, "vni", int))
    if net_id(subnet) != nid:
        raise _Bad(f"subnet {subnet} does not match the key (expected networks/{net_id(subnet)})")
    if not 1 <= vni <= MAX_VNI:
        raise _Bad(f"vni {vni} is out of range 1..{MAX_VNI}")
    return NetworkRecord(subnet=str(subnet), vni=vni)


def _parse_attachment(host: str, container: str, obj: dict) -> AttachmentRecord:
    cidrs = _field(obj, "cidrs", list)
    parsed = [_endpoint_cidr(c) for c in cidrs]
    if len({p.ip for p in parsed}) != len(parsed):
        raise _Bad("the same address is listed twice")
    return AttachmentRecord(host=host, container=container, cidrs=tuple(str(p) for p in parsed))


def _parse_endpoint(host: str, container: str, ip: str, obj: dict) -> EndpointRecord:
    rec = EndpointRecord(
        host=host,
        container=container,
        ip=str(_ipv4(str(_field(obj, "ip", str)), "ip")),
        prefixlen=int(_field(obj, "prefixlen", int)),
        subnet=str(_subnet(str(_field(obj, "subnet", str)))),
        vni=int(_field(obj, "vni", int)),
        mac=str(_field(obj, "mac", str)).lower(),
        ifname=str(_field(obj, "ifname", str)),
    )
    if rec.ip != ip:
        raise _Bad(f"ip {rec.ip} does not match the key's {ip}")
    if ipaddress.IPv4Address(rec.ip) not in ipaddress.IPv4Network(rec.subnet):
        raise _Bad(f"ip {rec.ip} is outside its subnet {rec.subnet}")
    if not MAC_RE.match(rec.mac):
        raise _Bad(f"mac {rec.mac!r} is not a MAC address")
    return rec


def _fqdn(text: object) -> str:
    if not isinstance(text, str) or not text.strip(".") or " " in text or len(text) > 253:
        raise _Bad(f"name {json.dumps(text)} is not a DNS name")
    return text.lower().rstrip(".") + "."


def _pairs(value: object, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise _Bad(f'field "{what}" must be a list of [name, ip] pairs')
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise _Bad(f'field "{what}" must be a list of [name, ip] pairs, got {json.dumps(item)}')
        out.append((_fqdn(item[0]), str(_ipv4(str(item[1]), "ip"))))
    return tuple(out)


def _parse_config(obj: dict) -> ClusterConfig:
    rng = _subnet(str(_field(obj, "ipalloc_range", str)))
    default = _subnet(str(_field(obj, "default_subnet", str)))
    grace = obj.get("dead_host_grace", 600.0)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        raise _Bad('field "dead_host_grace" must be a number of seconds')
    return ClusterConfig(str(rng), str(default), float(grace))


def _parse_claim(nid: str, ip: str, obj: dict) -> IpClaim:
    return IpClaim(
        subnet=nid.replace("-", "/"),
        ip=str(_ipv4(ip, "ip")),
        host=str(_field(obj, "host", str)),
        container=str(_field(obj, "container", str)),
    )


def _parse_entry(key: str, raw: bytes):
    """(slot, index, record) for a key of the schema, Invalid for a bad one, None outside ROOT."""
    if not key.startswith(ROOT):
        return None
    parts = key[len(ROOT):].split("/")
    kind, rest = parts[0], parts[1:]
    try:
        if kind == "hosts" and len(rest) == 1:
            return "hosts", rest[0], _parse_host(rest[0], _obj(raw))
        if kind == "members" and len(rest) == 1:
            return "members", rest[0], _parse_host(rest[0], _obj(raw))
        if kind == "networks" and len(rest) == 1:
            rec = _parse_network(rest[0], _obj(raw))
            return "networks", rec.subnet, rec
        if kind == "attachments" and len(rest) == 2:
            return "attachments", (rest[0], rest[1]), _parse_attachment(rest[0], rest[1], _obj(raw))
        if kind == "endpoints" and len(rest) == 3:
            return "endpoints", key, _parse_endpoint(rest[0], rest[1], rest[2], _obj(raw))
        if kind == "ips" and len(rest) == 2:
            claim = _parse_claim(rest[0], rest[1], _obj(raw))
            return "claims", (claim.subnet, claim.ip), claim
        if kind == "vnis" and len(rest) == 1:
            if not rest[0].isdigit():
                raise _Bad("a VNI key must be a number")
            return "vni_claims", int(rest[0]), str(_field(_obj(raw), "subnet", str))
        if kind == "config" and not rest:
            return "config", None, _parse_config(_obj(raw))
        if kind == "dns" and len(rest) == 2:
            obj = _obj(raw)
            return "dns", (rest[0], rest[1]), DnsRecords(rest[0], rest[1], _pairs(obj.get("records", []), "records"))
        if kind == "dnsextra" and len(rest) == 2:
            obj = _obj(raw)
            return "dns_extra", (rest[0], rest[1]), (_pairs(obj.get("add", []), "add"), _pairs(obj.get("remove", []), "remove"))
        if kind == "tombstones" and len(rest) == 1:
            return "tombstones", rest[0], float(_field(_obj(raw), "since", (int, float)))
        raise _Bad("unknown key: not part of the schema in docs/keys.md")
    except _Bad as err:
        return Invalid(key, str(err))


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
            entry = hit[1] if hit is not None and hit[0] == raw else _parse_entry(key, raw)
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
                    Invalid(network_key(subnet), f"vni {rec.vni} is already used by {by_vni[rec.vni]}")
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

    def network_for(self, subnet: ipaddress.IPv4Network | str) -> NetworkRecord | None:
        return self.networks.get(str(subnet))

    def vni_owner(self) -> Mapping[int, NetworkRecord]:
        return {rec.vni: rec for rec in self.networks.values()}


# -- domain operations ------------------------------------------------------------------------
class ClusterError(Exception):
    """A request the cluster's state refuses; the message says what to do."""


class AddressInUse(ClusterError):
    pass


class SubnetConflict(ClusterError):
    pass


_RETRIES = 8


class Cluster:
    """Domain operations over a raw store: every multi-writer change is one transaction."""

    def __init__(self, raw: RawStore) -> None:
        self.raw = raw

    def state(self, *kinds: str) -> tuple[ClusterState, int]:
        """The validated state: all of it, or only the given kinds ("networks/", "hosts/", ...),
        which costs one range read each instead of reading everything."""
        if not kinds:
            kvs, revision = self.raw.list(ROOT)
            return ClusterState.from_items((kv.key, kv.value) for kv in kvs), revision
        items: list[tuple[str, bytes]] = []
        revision = 0
        for kind in kinds:
            kvs, revision = self.raw.list(ROOT + kind)
            items += [(kv.key, kv.value) for kv in kvs]
        return ClusterState.from_items(items), revision

    def attachment(self, host: str, container: str) -> AttachmentRecord | None:
        kv = self.raw.get(attachment_key(host, container))
        if kv is None:
            return None
        try:
            return _parse_attachment(host, container, _obj(kv.value))
        except _Bad:
            return None

    def ensure_network(self, subnet: ipaddress.IPv4Network) -> NetworkRecord:
        """The network record of subnet, created with a fresh VNI if needed.

        Refuses a subnet that overlaps a different existing one: two overlapping networks could not
        be routed from a host exposed on both, and a user who typed /16 for /24 wants to hear it.
        """
        for _ in range(_RETRIES):
            state, _rev = self.state("networks/", "vnis/")
            existing = state.networks.get(str(subnet))
            if existing:
                return existing
            for other in state.networks.values():
                if other.network.overlaps(subnet):
                    raise SubnetConflict(
                        f"subnet {subnet} overlaps existing network {other.subnet}; "
                        f"use {other.subnet} or a subnet that does not overlap it"
                    )
            used = {rec.vni for rec in state.networks.values()}
            kvs, _ = self.raw.list(VNIS)
            used |= {int(kv.key[len(VNIS):]) for kv in kvs if kv.key[len(VNIS):].isdigit()}
            vni = next(v for v in range(FIRST_VNI, MAX_VNI) if v not in used)
            rec = NetworkRecord(subnet=str(subnet), vni=vni)
            if self.raw.commit(
                absent=[network_key(subnet), VNIS + str(vni)],
                puts=[(network_key(subnet), encode(rec)), (VNIS + str(vni), json.dumps({"subnet": str(subnet)}).encode())],
            ):
                return rec
        raise ClusterError(f"could not create network {subnet}: too much contention, try again")

    def holder_of(self, subnet: ipaddress.IPv4Network, ip: ipaddress.IPv4Address) -> IpClaim | None:
        kv = self.raw.get(ip_claim_key(subnet, str(ip)))
        if kv is None:
            return None
        try:
            return _parse_claim(net_id(subnet), str(ip), _obj(kv.value))
        except _Bad:
            return None

    def attach(self, host: str, container: str, cidrs: Iterable[ipaddress.IPv4Interface]) -> list[str]:
        """Add addresses to a container's attachment, claiming each address in one transaction.

        Returns the CIDRs that were added (already attached ones are skipped, so this is idempotent).
        """
        wanted = list(cidrs)
        for _ in range(_RETRIES):
            key = attachment_key(host, container)
            kv = self.raw.get(key)
            current: list[str] = []
            if kv is not None:
                try:
                    current = list(_parse_attachment(host, container, _obj(kv.value)).cidrs)
                except _Bad:
                    current = []
            have = {ipaddress.IPv4Interface(c).ip for c in current}
            added = [c for c in wanted if c.ip not in have]
            if not added:
                return []
            unclaimed = []
            for c in added:
                holder = self.holder_of(c.network, c.ip)
                if holder is None:
                    unclaimed.append(c)
                elif (holder.host, holder.container) != (host, container):
                    raise AddressInUse(
                        f"address {c.ip} in {c.network} is already held by container "
                        f"{holder.container[:12]} on host {holder.host}; choose another address"
                    )
            claims = [
                (ip_claim_key(c.network, str(c.ip)), json.dumps({"host": host, "container": container}).encode())
                for c in unclaimed
            ]
            value = json.dumps({"cidrs": current + [str(c) for c in added]}).encode()
            unchanged = {key: kv.mod_revision} if kv is not None else {}
            absent = [k for k, _ in claims] + ([] if kv is not None else [key])
            if self.raw.commit(absent=absent, unchanged=unchanged, puts=claims + [(key, value)]):
                return [str(c) for c in added]
        raise ClusterError(f"could not attach {container[:12]}: too much contention, try again")

    def detach(self, host: str, container: str, cidrs: Iterable[ipaddress.IPv4Interface] | None) -> list[str]:
        """Remove addresses (all if cidrs is None) from an attachment and release their claims."""
        for _ in range(_RETRIES):
            key = attachment_key(host, container)
            kv = self.raw.get(key)
            if kv is None:
                return []
            try:
                current = list(_parse_attachment(host, container, _obj(kv.value)).cidrs)
            except _Bad:
                current = []
            if cidrs is None:
                removed = current
            else:
                drop = {c.ip for c in cidrs}
                removed = [c for c in current if ipaddress.IPv4Interface(c).ip in drop]
            keep = [c for c in current if c not in removed]
            deletes = [ip_claim_key(ipaddress.IPv4Interface(c).network, str(ipaddress.IPv4Interface(c).ip)) for c in removed]
            puts: list[tuple[str, bytes]] = []
            if keep:
                puts.append((key, json.dumps({"cidrs": keep}).encode()))
            else:
                deletes.append(key)
            if self.raw.commit(unchanged={key: kv.mod_revision}, puts=puts, deletes=deletes):
                return removed
        raise ClusterError(f"could not detach {container[:12]}: too much contention, try again")

    def claim(self, cidr: ipaddress.IPv4Interface, *, host: str, container: str) -> bool:
        """Claim one address for an attachment written by hand (the CLI claims in `attach`).
        False if another container holds it."""
        key = ip_claim_key(cidr.network, str(cidr.ip))
        value = json.dumps({"host": host, "container": container}).encode()
        if self.raw.create(key, value):
            return True
        holder = self.holder_of(cidr.network, cidr.ip)
        return holder is not None and (holder.host, holder.container) == (host, container)

    # -- IPAM --------------------------------------------------------------------------------
    def config(self) -> ClusterConfig | None:
        kv = self.raw.get(CONFIG)
        if kv is None:
            return None
        try:
            return _parse_config(_obj(kv.value))
        except _Bad as err:
            raise ClusterError(f"{CONFIG} is invalid: {err}; fix it with etcdctl") from err

    def ensure_config(self, wanted: ClusterConfig) -> ClusterConfig:
        """The first host sets the cluster's allocation range; later hosts must agree."""
        if self.raw.create(CONFIG, encode(wanted)):
            return wanted
        have = self.config()
        assert have is not None
        for field_name, label in (("ipalloc_range", "--ipalloc-range"), ("default_subnet", "--ipalloc-default-subnet")):
            if getattr(have, field_name) != getattr(wanted, field_name):
                raise ClusterError(
                    f"this cluster uses {label} {getattr(have, field_name)}, not {getattr(wanted, field_name)}; "
                    f"launch with {label} {getattr(have, field_name)} (or leave it out)"
                )
        return have

    def allocate(self, host: str, container: str, subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
        """Claim the lowest free address of subnet for container, in one transaction with its
        attachment. Under contention, later attempts pick among the lowest few free addresses at
        random, so parallel allocators spread out instead of colliding on the same one."""
        import random

        prefix = f"{IPS}{net_id(subnet)}/"
        first, last = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
        for attempt in range(200):
            kvs, _ = self.raw.list(prefix)
            taken = set()
            for kv in kvs:
                try:
                    taken.add(int(ipaddress.IPv4Address(kv.key[len(prefix):])))
                except ValueError:
                    continue
            spread = 1 if attempt == 0 else min(4 * attempt, 64)
            free: list[int] = []
            candidate = first
            while candidate <= last and len(free) < spread:
                if candidate not in taken:
                    free.append(candidate)
                candidate += 1
            if not free:
                raise ClusterError(f"no free address in {subnet}; remove containers or use another subnet")
            ip = ipaddress.IPv4Address(random.choice(free))
            cidr = ipaddress.IPv4Interface(f"{ip}/{subnet.prefixlen}")
            key = attachment_key(host, container)
            att = self.raw.get(key)
            current: list[str] = []
            if att is not None:
                try:
                    current = list(_parse_attachment(host, container, _obj(att.value)).cidrs)
                except _Bad:
                    current = []
            claim = (ip_claim_key(subnet, str(ip)), json.dumps({"host": host, "container": container}).encode())
            value = json.dumps({"cidrs": current + [str(cidr)]}).encode()
            if self.raw.commit(
                absent=[claim[0]] + ([] if att is not None else [key]),
                unchanged={key: att.mod_revision} if att is not None else {},
                puts=[claim, (key, value)],
            ):
                return cidr
        raise ClusterError(f"could not allocate in {subnet}: too much contention, try again")

    def take_over(self, host: str) -> int:
        """Release everything a dead host held (its addresses, attachments, names) and forget it.
        Returns the number of addresses freed. Only one of several concurrent callers frees:
        the one whose transaction removes the host's member record."""
        member = self.raw.get(member_key(host))
        tomb = self.raw.get(TOMBSTONES + host)
        unchanged = {}
        deletes = []
        if member is not None:
            unchanged[member_key(host)] = member.mod_revision
            deletes.append(member_key(host))
        if tomb is not None:
            unchanged[TOMBSTONES + host] = tomb.mod_revision
            deletes.append(TOMBSTONES + host)
        if deletes and not self.raw.commit(unchanged=unchanged, deletes=deletes):
            return 0
        freed = 0
        kvs, _ = self.raw.list(IPS)
        for kv in kvs:
            try:
                holder = json.loads(kv.value).get("host")
            except (ValueError, AttributeError):
                continue
            if holder == host and self.raw.delete_if(kv.key, mod_revision=kv.mod_revision):
                freed += 1
        for prefix in (f"{ATTACHMENTS}{host}/", f"{DNS_EXTRA}{host}/", f"{DNS}{host}/", f"{ENDPOINTS}{host}/"):
            kvs, _ = self.raw.list(prefix)
            for kv in kvs:
                self.raw.delete(kv.key)
        self.raw.delete(host_key(host))
        self.raw.delete(progress_key(host))
        return freed

    # -- DNS ---------------------------------------------------------------------------------
    def dns_extra(self, host: str, container: str, *, add: Iterable[tuple[str, str]] = (), remove: Iterable[tuple[str, str]] = ()) -> None:
        """Add or remove names of a container (`dns-add`, `dns-remove`) in one transaction."""
        key = f"{DNS_EXTRA}{host}/{container}"
        add, remove = [(_fqdn(n), ip) for n, ip in add], [(_fqdn(n), ip) for n, ip in remove]
        for _ in range(_RETRIES):
            kv = self.raw.get(key)
            have_add: list = []
            have_remove: list = []
            if kv is not None:
                try:
                    obj = _obj(kv.value)
                    have_add = [tuple(p) for p in _pairs(obj.get("add", []), "add")]
                    have_remove = [tuple(p) for p in _pairs(obj.get("remove", []), "remove")]
                except _Bad:
                    pass
            new_add = [p for p in have_add if p not in remove] + [p for p in add if p not in have_add]
            new_remove = [p for p in have_remove if p not in add] + [p for p in remove if p not in have_remove]
            value = json.dumps({"add": [list(p) for p in new_add], "remove": [list(p) for p in new_remove]}).encode()
            ok = self.raw.commit(
                absent=[] if kv is not None else [key],
                unchanged={key: kv.mod_revision} if kv is not None else {},
                puts=[(key, value)],
            )
            if ok:
                return
        raise ClusterError(f"could not update names of {container[:12]}: too much contention, try again")
