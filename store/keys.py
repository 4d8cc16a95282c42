"""The key schema: where each kind of record lives in etcd (docs/keys.md is its page for people).

Everything pyweave shares lives under one versioned prefix, `/pyweave/v1/`; progress records live
beside it, so that writing them wakes no watcher of the schema. Every key is built here, and every
key read is split here (`split`), so no other module spells a path.

Desired state (written by the CLI or a person):
    networks/<net-id>                 vnis/<vni>
    attachments/<host>/<container>    ips/<net-id>/<ip>
    config                            dnsextra/<host>/<container>
Observed state (written only by the agent that owns it, bound to its host's lease):
    hosts/<host>    members/<host>    endpoints/<host>/<container>/<ip>
    dns/<host>/<container>            tombstones/<host>
    links/<host>                      (its view of its underlay links: docs/routing.md)
Waits (written by a CLI command that waits for the peers, deleted when it is done):
    waits/<id>
Progress (outside the watched prefix):
    /pyweave/progress/v1/<host>

`<net-id>` is the subnet with "/" replaced by "-" (10.0.0.0-24).
"""

from __future__ import annotations

import ipaddress

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
WAITS = ROOT + "waits/"
LINKS = ROOT + "links/"

Subnetish = ipaddress.IPv4Network | str

# The container name that stands for the host itself in attachments (weave's name for it):
# `pyweave expose 10.0.0.100/24` writes attachments/<host>/weave:expose.
EXPOSE_REF = "weave:expose"


def net_id(subnet: Subnetish) -> str:
    return str(subnet).replace("/", "-")


def subnet_of_net_id(nid: str) -> str:
    return nid.replace("-", "/")


def host_key(host: str) -> str:
    return HOSTS + host


def member_key(host: str) -> str:
    return MEMBERS + host


def network_key(subnet: Subnetish) -> str:
    return NETWORKS + net_id(subnet)


def vni_key(vni: int) -> str:
    return f"{VNIS}{vni}"


def attachment_key(host: str, container: str) -> str:
    return f"{ATTACHMENTS}{host}/{container}"


def endpoint_prefix(host: str, container: str | None = None) -> str:
    """Every endpoint of a host, or of one of its containers."""
    return f"{ENDPOINTS}{host}/" if container is None else f"{ENDPOINTS}{host}/{container}/"


def endpoint_key(host: str, container: str, ip: str) -> str:
    return f"{ENDPOINTS}{host}/{container}/{ip}"


def ip_claim_prefix(subnet: Subnetish) -> str:
    return f"{IPS}{net_id(subnet)}/"


def ip_claim_key(subnet: Subnetish, ip: str | ipaddress.IPv4Address) -> str:
    return f"{IPS}{net_id(subnet)}/{ip}"


def dns_prefix(host: str) -> str:
    return f"{DNS}{host}/"


def dns_key(host: str, container: str) -> str:
    return f"{DNS}{host}/{container}"


def dns_extra_key(host: str, container: str) -> str:
    return f"{DNS_EXTRA}{host}/{container}"


def tombstone_key(host: str) -> str:
    return TOMBSTONES + host


def links_key(host: str) -> str:
    return LINKS + host


def wait_key(wait_id: str) -> str:
    return WAITS + wait_id


def progress_key(host: str) -> str:
    return PROGRESS_ROOT + host


def host_prefixes(host: str) -> tuple[str, ...]:
    """Every prefix holding records that belong to one host (what `take_over` clears)."""
    return (f"{ATTACHMENTS}{host}/", f"{DNS_EXTRA}{host}/", dns_prefix(host), endpoint_prefix(host))


def split(key: str) -> tuple[str, list[str]] | None:
    """("attachments", ["hostA", "c1"]) for a key under ROOT; None for any other key."""
    if not key.startswith(ROOT):
        return None
    kind, *rest = key[len(ROOT):].split("/")
    return kind, rest
