"""What of this host's own IPv4 routing an overlay subnet would collide with: routes and addresses.

`pyweave launch` refuses an allocation range, and `run`, `attach` and `expose` a subnet, that
overlaps a route or an address of the host (weave refuses such a range): the agent adds a route for
every network it programs, so an overlapping subnet would divert the host's own traffic (the return
route of the DNS service included) into the overlay, or hide a network the host is on.

Read from /proc/net (`route`: the main table with device names; `fib_trie`: the local addresses)
of the namespace the process runs in, not through pyroute2: the CLI checks this on every `run`,
where loading pyroute2 would cost more than the rest of the command. The parsers are pure; the
readers are two file reads. Not counted as the host's: the default route, and routes and
addresses on pyweave's own devices (an exposed address lives on a pyweave bridge).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from dataplane.api import OWNED_PREFIXES

ROUTE_FILE = "/proc/net/route"
FIB_TRIE_FILE = "/proc/net/fib_trie"
_NOT_THE_HOSTS = (
    ipaddress.IPv4Network("127.0.0.0/8"),  # loopback: never an overlay range anyway
    ipaddress.IPv4Network("169.254.0.0/16"),  # link-local: the DNS service address lives here
)


@dataclass(frozen=True)
class HostOverlap:
    """A route (with its device) or an address of this host that a subnet overlaps."""

    network: ipaddress.IPv4Network
    dev: str | None = None  # None: an address

    def describe(self) -> str:
        if self.dev is None:
            shown = self.network.network_address if self.network.prefixlen == 32 else self.network
            return f"the address {shown} of this host"
        return f"the route {self.network} dev {self.dev} of this host"


def parse_routes(text: str) -> list[tuple[ipaddress.IPv4Network, str]]:
    """/proc/net/route -> [(destination, device)] (the default route included)."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dst = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
            mask = socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
            out.append((ipaddress.IPv4Network(f"{dst}/{mask}", strict=False), fields[0]))
        except (ValueError, struct.error, OSError):
            continue
    return out


def parse_local_networks(text: str) -> list[ipaddress.IPv4Network]:
    """/proc/net/fib_trie -> the host's own addresses (`/32 host LOCAL`), and local ranges such
    as 127.0.0.0/8 (`/8 host LOCAL`). Each appears once however many tables list it."""
    found: list[ipaddress.IPv4Network] = []
    leaf: str | None = None
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].endswith("|--"):
            leaf = words[1]
        elif leaf and len(words) >= 3 and words[0].startswith("/") and words[-1] == "LOCAL":
            try:
                net = ipaddress.IPv4Network(f"{leaf}/{words[0][1:]}", strict=False)
            except ValueError:
                continue
            if net not in found:
                found.append(net)
    return found


def overlaps_with_host(
    net: ipaddress.IPv4Network,
    routes: Iterable[tuple[ipaddress.IPv4Network, str]],
    local: Iterable[ipaddress.IPv4Network],
) -> list[HostOverlap]:
    """The host's routes and addresses that net overlaps (pure). An address is named only when
    no route already reported covers it (an address's own connected route is reported instead)."""
    routes = list(routes)
    pyweaves = [dst for dst, dev in routes if dev.startswith(OWNED_PREFIXES) and dst.prefixlen > 0]
    found = [
        HostOverlap(dst, dev)
        for dst, dev in routes
        if dst.prefixlen > 0 and not dev.startswith(OWNED_PREFIXES) and dst.overlaps(net)
    ]
    for addr in local:
        if any(addr.subnet_of(n) for n in _NOT_THE_HOSTS) or any(addr.subnet_of(p) for p in pyweaves):
            continue
        if addr.overlaps(net) and not any(addr.subnet_of(o.network) for o in found):
            found.append(HostOverlap(addr))
    return found


def host_overlaps(net: ipaddress.IPv4Network) -> list[HostOverlap]:
    """The routes and addresses of this host (the namespace this process runs in) that net overlaps."""
    return overlaps_with_host(net, parse_routes(_read(ROUTE_FILE)), parse_local_networks(_read(FIB_TRIE_FILE)))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
