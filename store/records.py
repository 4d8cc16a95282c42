"""The records of the key schema: their types, their JSON, and the validation of every value read.

Every value is a JSON object. Writing goes through the `*_value` encoders here; reading goes through
`parse_entry`, which validates: a bad value becomes an `Invalid` naming the key and the problem, never
an exception, so one hand-edited mistake cannot stop an agent from applying everything else.
Addresses and subnets are checked by `store.addresses`, the one place that knows their rules.
"""

from __future__ import annotations

import functools
import json
import math
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from store import keys
from store.addresses import AddressError, OverlayAddress, OverlaySubnet

FIRST_VNI = 0x10000  # leaves the low range free for hand-made VXLANs
MAX_VNI = 0xFFFFFF
DEFAULT_IPALLOC_RANGE = "10.32.0.0/12"
DEFAULT_DEAD_HOST_GRACE = 600.0  # seconds a dead host's addresses are kept before others reuse them
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
PUBLIC_KEY_RE = re.compile(r"^[A-Za-z0-9+/]{43}=$")  # 32 bytes in base64


# -- records ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostRecord:
    name: str
    address: str
    vtep_mac: str
    mtu: int
    state: str = "alive"  # "alive" while the agent runs; "stopped" after `pyweave stop`; "member"
    version: str = ""
    public_key: str = ""  # base64 X25519 key of an encrypted cluster's host (docs/encryption.md); else ""


@dataclass(frozen=True)
class NetworkRecord:
    subnet: str
    vni: int

    @property
    def network(self) -> OverlaySubnet:
        return OverlaySubnet(self.subnet)


@dataclass(frozen=True)
class AttachmentRecord:
    host: str
    container: str
    cidrs: tuple[OverlayAddress, ...]


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
    ipalloc_range: str = DEFAULT_IPALLOC_RANGE
    default_subnet: str = DEFAULT_IPALLOC_RANGE
    dead_host_grace: float = DEFAULT_DEAD_HOST_GRACE
    encrypted: bool = False  # every host gives the cluster's secret (`launch --password`)


@dataclass(frozen=True)
class DnsRecords:
    host: str
    container: str
    records: tuple[tuple[str, str], ...]  # (fqdn with trailing dot, lower case; ip)


@dataclass(frozen=True)
class LinkView:
    """One host's view of its underlay link to one peer (`links/<host>`, docs/routing.md): up or
    down, the RTT it measured (ms, None when never answered) and since when (unix time) it has been
    up or down. `pyweave.routes` computes routes from these."""

    up: bool
    rtt_ms: float | None
    since: float


@dataclass(frozen=True)
class Invalid:
    key: str
    problem: str


@dataclass(frozen=True)
class Progress:
    """What an agent last applied (`/pyweave/progress/v1/<host>`): a store revision, problems, and
    the VNIs of the networks it programs (None: not said, as by an older agent)."""

    revision: int = 0
    problems: tuple[Invalid, ...] = ()
    vnis: tuple[int, ...] | None = None


@dataclass(frozen=True)
class WaitRecord:
    """Someone waits until the peers that program these networks have applied `revision`
    (`waits/<id>`, written by `pyweave run`): those agents acknowledge at once; when nobody waits,
    they do not write their progress for a revision alone."""

    revision: int
    vnis: tuple[int, ...]


# -- encoding ---------------------------------------------------------------------------------
def _dump(obj: Any, *, compact: bool = True) -> bytes:
    if compact:
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps(obj).encode()


def encode(record: object) -> bytes:
    """The JSON of a record dataclass with plain fields (hosts, networks, config). Fields of the
    encrypted cluster are left out when unused, so a plain cluster's records stay as they were."""
    data = asdict(record)  # type: ignore[call-overload]
    if isinstance(record, HostRecord) and not record.public_key:
        del data["public_key"]
    if isinstance(record, ClusterConfig) and not record.encrypted:
        del data["encrypted"]
    return _dump(data)


def attachment_value(cidrs: Iterable[OverlayAddress | str]) -> bytes:
    return _dump({"cidrs": [str(c) for c in cidrs]}, compact=False)


def claim_value(host: str, container: str) -> bytes:
    return _dump({"host": host, "container": container}, compact=False)


def vni_claim_value(subnet: str) -> bytes:
    return _dump({"subnet": str(subnet)}, compact=False)


def endpoint_value(rec: EndpointRecord) -> bytes:
    data = {k: v for k, v in asdict(rec).items() if k not in ("host", "container")}
    return _dump(data)


def dns_value(records: Iterable[tuple[str, str]]) -> bytes:
    return json.dumps({"records": [list(r) for r in records]}, separators=(",", ":")).encode()


def dns_extra_value(add: Iterable[tuple[str, str]], remove: Iterable[tuple[str, str]]) -> bytes:
    return _dump({"add": [list(p) for p in add], "remove": [list(p) for p in remove]}, compact=False)


def tombstone_value(since: float) -> bytes:
    return _dump({"since": since}, compact=False)


def links_value(peers: Mapping[str, LinkView]) -> bytes:
    """`{"peers": {"<peer>": {"up": true, "rtt_ms": 0.21, "since": 1764331200.5}}}`: the same bytes
    for the same views (peers sorted, RTT rounded to 0.01 ms, null when unknown), so an agent can
    skip a write that changes nothing."""
    body = {
        peer: {"up": bool(v.up), "rtt_ms": None if v.rtt_ms is None else round(float(v.rtt_ms), 2), "since": float(v.since)}
        for peer, v in peers.items()
    }
    return _dump({"peers": body})


def progress_value(revision: int, problems: Iterable[Invalid], vnis: Iterable[int] = ()) -> bytes:
    body = {"revision": revision, "problems": [asdict(p) for p in problems], "vnis": sorted(vnis)}
    return json.dumps(body, sort_keys=True).encode()


def wait_value(revision: int, vnis: Iterable[int]) -> bytes:
    return _dump({"revision": revision, "vnis": sorted(vnis)})


def parse_wait(obj: dict) -> WaitRecord:
    revision = _field(obj, "revision", int)
    vnis = _field(obj, "vnis", list)
    if isinstance(revision, bool) or revision < 0 or not all(isinstance(v, int) and not isinstance(v, bool) for v in vnis):
        raise Bad('a wait is {"revision": N, "vnis": [VNI, ...]}')
    return WaitRecord(int(revision), tuple(int(v) for v in vnis))


def parse_progress(raw: bytes) -> Progress:
    """An agent's progress record; an unreadable one counts as nothing applied yet."""
    try:
        obj = json.loads(raw)
        problems = tuple(Invalid(str(p["key"]), str(p["problem"])) for p in obj.get("problems", []))
        vnis = tuple(int(v) for v in obj["vnis"]) if isinstance(obj.get("vnis"), list) else None
        return Progress(int(obj.get("revision", 0)), problems, vnis)
    except (ValueError, TypeError, KeyError, AttributeError):
        return Progress()


# -- validation -------------------------------------------------------------------------------
class Bad(ValueError):
    """A value that breaks the schema; becomes an `Invalid` naming its key."""


def obj_of(raw: bytes) -> dict:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise Bad(f"not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise Bad(f"expected a JSON object, got {type(value).__name__}")
    return value


def _field(obj: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise Bad(f'missing field "{name}"')
    value = obj[name]
    if isinstance(value, bool) and kind is not bool:
        raise Bad(f'field "{name}" must be {getattr(kind, "__name__", kind)}, not a boolean')
    if not isinstance(value, kind):
        raise Bad(f'field "{name}" must be {getattr(kind, "__name__", kind)}, got {json.dumps(value)}')
    return value


def _ipv4(text: str, what: str) -> str:
    """The address as written, if it is a canonical dotted quad (inet_pton refuses leading zeros
    and short forms): an agent parses tens of thousands of these, and ipaddress is 20x slower."""
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError) as err:
        raise Bad(f"{what} {text!r} is not an IPv4 address") from err
    return text


@functools.lru_cache(maxsize=4096)
def _checked_subnet(text: str) -> OverlaySubnet | str:
    """A subnet's validation, once per distinct text (a cluster has few; every endpoint names one)."""
    try:
        return OverlaySubnet(text)
    except AddressError as err:
        return f"subnet {err}"


def _subnet(text: str) -> OverlaySubnet:
    checked = _checked_subnet(text)
    if isinstance(checked, str):
        raise Bad(checked)
    return checked


def _in_subnet(ip: str, subnet: OverlaySubnet) -> bool:
    value = int.from_bytes(socket.inet_aton(ip), "big")
    return value & int(subnet.netmask) == int(subnet.network_address)


def overlay_address(text: object) -> OverlayAddress:
    """An attachment's address; weave's `ip:` spelling is part of the schema (docs/keys.md)."""
    if not isinstance(text, str):
        raise Bad(f"address {json.dumps(text)} must be a string like 10.0.0.1/24")
    try:
        return OverlayAddress(text.removeprefix("ip:"), text=text)
    except AddressError as err:
        raise Bad(f"address {err}") from err


def parse_host(name: str, obj: dict) -> HostRecord:
    rec = HostRecord(
        name=str(_field(obj, "name", str)),
        address=_ipv4(str(_field(obj, "address", str)), "address"),
        vtep_mac=str(_field(obj, "vtep_mac", str)).lower(),
        mtu=int(_field(obj, "mtu", int)),
        state=str(obj.get("state", "alive")),
        version=str(obj.get("version", "")),
        public_key=str(obj.get("public_key", "")),
    )
    if rec.public_key and not PUBLIC_KEY_RE.match(rec.public_key):
        raise Bad(f"public_key {rec.public_key!r} is not a base64 X25519 key")
    if rec.name != name:
        raise Bad(f'field "name" is {rec.name!r} but the key names host {name!r}')
    if not MAC_RE.match(rec.vtep_mac):
        raise Bad(f"vtep_mac {rec.vtep_mac!r} is not a MAC address")
    if not 576 <= rec.mtu <= 65535:
        raise Bad(f"mtu {rec.mtu} is out of range")
    return rec


def parse_network(nid: str, obj: dict) -> NetworkRecord:
    subnet = _subnet(str(_field(obj, "subnet", str)))
    vni = int(_field(obj, "vni", int))
    if keys.net_id(subnet) != nid:
        raise Bad(f"subnet {subnet} does not match the key (expected networks/{keys.net_id(subnet)})")
    if not 1 <= vni <= MAX_VNI:
        raise Bad(f"vni {vni} is out of range 1..{MAX_VNI}")
    return NetworkRecord(subnet=str(subnet), vni=vni)


def parse_attachment(host: str, container: str, obj: dict) -> AttachmentRecord:
    parsed = [overlay_address(c) for c in _field(obj, "cidrs", list)]
    if len({p.ip for p in parsed}) != len(parsed):
        raise Bad("the same address is listed twice")
    return AttachmentRecord(host=host, container=container, cidrs=tuple(parsed))


def parse_endpoint(host: str, container: str, ip: str, obj: dict) -> EndpointRecord:
    subnet = _subnet(str(_field(obj, "subnet", str)))
    rec = EndpointRecord(
        host=host,
        container=container,
        ip=_ipv4(str(_field(obj, "ip", str)), "ip"),
        prefixlen=int(_field(obj, "prefixlen", int)),
        subnet=str(subnet),
        vni=int(_field(obj, "vni", int)),
        mac=str(_field(obj, "mac", str)).lower(),
        ifname=str(_field(obj, "ifname", str)),
    )
    if rec.ip != ip:
        raise Bad(f"ip {rec.ip} does not match the key's {ip}")
    if not _in_subnet(rec.ip, subnet):
        raise Bad(f"ip {rec.ip} is outside its subnet {rec.subnet}")
    if not MAC_RE.match(rec.mac):
        raise Bad(f"mac {rec.mac!r} is not a MAC address")
    return rec


def fqdn(text: object) -> str:
    if not isinstance(text, str) or not text.strip(".") or " " in text or len(text) > 253:
        raise Bad(f"name {json.dumps(text)} is not a DNS name")
    return text.lower().rstrip(".") + "."


def name_pairs(value: object, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise Bad(f'field "{what}" must be a list of [name, ip] pairs')
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise Bad(f'field "{what}" must be a list of [name, ip] pairs, got {json.dumps(item)}')
        out.append((fqdn(item[0]), _ipv4(str(item[1]), "ip")))
    return tuple(out)


def parse_dns_extra(obj: dict) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    return name_pairs(obj.get("add", []), "add"), name_pairs(obj.get("remove", []), "remove")


def parse_config(obj: dict) -> ClusterConfig:
    rng = _subnet(str(_field(obj, "ipalloc_range", str)))
    default = _subnet(str(_field(obj, "default_subnet", str)))
    grace = obj.get("dead_host_grace", DEFAULT_DEAD_HOST_GRACE)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        raise Bad('field "dead_host_grace" must be a number of seconds')
    encrypted = obj.get("encrypted", False)
    if not isinstance(encrypted, bool):
        raise Bad('field "encrypted" must be true or false')
    return ClusterConfig(str(rng), str(default), float(grace), encrypted)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise Bad(f"{what} must be a non-negative number, got {json.dumps(value)}")
    return float(value)


def parse_links(value: bytes) -> dict[str, LinkView]:
    """A host's view of its links (`links/<host>`): peer -> LinkView. Raises `Bad` for a malformed one."""
    peers = _field(obj_of(value), "peers", dict)
    out: dict[str, LinkView] = {}
    for peer, link in peers.items():
        if not peer or "/" in peer:
            raise Bad(f"peer name {json.dumps(peer)} is not a host name")
        if not isinstance(link, dict):
            raise Bad(f"peer {peer}: expected a JSON object, got {json.dumps(link)}")
        up = link.get("up")
        if not isinstance(up, bool):
            raise Bad(f'peer {peer}: field "up" must be true or false, got {json.dumps(up)}')
        rtt = link.get("rtt_ms")
        if "since" not in link:
            raise Bad(f'peer {peer}: missing field "since"')
        out[peer] = LinkView(
            up=up,
            rtt_ms=None if rtt is None else _number(rtt, f'peer {peer}: field "rtt_ms"'),
            since=_number(link["since"], f'peer {peer}: field "since"'),
        )
    return out


def parse_claim(nid: str, ip: str, obj: dict) -> IpClaim:
    return IpClaim(
        subnet=keys.subnet_of_net_id(nid),
        ip=_ipv4(ip, "ip"),
        host=str(_field(obj, "host", str)),
        container=str(_field(obj, "container", str)),
    )


Entry = tuple[str, Any, Any]  # (slot of ClusterState, index in it, record)


def parse_entry(key: str, raw: bytes) -> Entry | Invalid | None:
    """(slot, index, record) for a key of the schema, Invalid for a bad one, None outside ROOT."""
    parts = keys.split(key)
    if parts is None:
        return None
    kind, rest = parts
    try:
        if kind == "hosts" and len(rest) == 1:
            return "hosts", rest[0], parse_host(rest[0], obj_of(raw))
        if kind == "members" and len(rest) == 1:
            return "members", rest[0], parse_host(rest[0], obj_of(raw))
        if kind == "networks" and len(rest) == 1:
            rec = parse_network(rest[0], obj_of(raw))
            return "networks", rec.subnet, rec
        if kind == "attachments" and len(rest) == 2:
            return "attachments", (rest[0], rest[1]), parse_attachment(rest[0], rest[1], obj_of(raw))
        if kind == "endpoints" and len(rest) == 3:
            return "endpoints", key, parse_endpoint(rest[0], rest[1], rest[2], obj_of(raw))
        if kind == "ips" and len(rest) == 2:
            claim = parse_claim(rest[0], rest[1], obj_of(raw))
            return "claims", (claim.subnet, claim.ip), claim
        if kind == "vnis" and len(rest) == 1:
            if not rest[0].isdigit():
                raise Bad("a VNI key must be a number")
            return "vni_claims", int(rest[0]), str(_field(obj_of(raw), "subnet", str))
        if kind == "config" and not rest:
            return "config", None, parse_config(obj_of(raw))
        if kind == "dns" and len(rest) == 2:
            obj = obj_of(raw)
            return "dns", (rest[0], rest[1]), DnsRecords(rest[0], rest[1], name_pairs(obj.get("records", []), "records"))
        if kind == "dnsextra" and len(rest) == 2:
            return "dns_extra", (rest[0], rest[1]), parse_dns_extra(obj_of(raw))
        if kind == "links" and len(rest) == 1:
            return "links", rest[0], parse_links(raw)
        if kind == "waits" and len(rest) == 1:
            return "waits", rest[0], parse_wait(obj_of(raw))
        if kind == "tombstones" and len(rest) == 1:
            return "tombstones", rest[0], float(_field(obj_of(raw), "since", (int, float)))
        raise Bad("unknown key: not part of the schema in docs/keys.md")
    except Bad as err:
        return Invalid(key, str(err))
