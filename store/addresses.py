"""The overlay's two value types: an address (`OverlayAddress`) and a subnet (`OverlaySubnet`).

An address reaches pyweave from the command line, from a value someone wrote into etcd, or from the
agent's own records; whichever way it comes, it is checked here, once, by the same rules, and then
travels as one of these two types down to the kernel. Both are the standard library's types
(`ipaddress.IPv4Interface` and `IPv4Network`) with the rules added to their constructors, so the
dataplane, which knows nothing of pyweave's rules, takes them as they are.

The rules (weave's, plus what the kernel needs):
- IPv4 only, written `A.B.C.D/N`; a subnet has zero host bits; an address is neither the network nor
  the broadcast address of its subnet;
- prefix lengths /8 to /30: a /31 or /32 has no room for containers, a /7 swallows too much;
- nothing in the unspecified, loopback, link-local, multicast or reserved ranges;
- two networks conflict when they overlap without being the same subnet (`OverlaySubnet.conflicts`).

User-facing spellings (`ip:`, `net:`, `net:default`) are the CLI's business, not this module's.
Everything here is pure: no I/O, no cluster state.
"""

from __future__ import annotations

import ipaddress
import re

MIN_PREFIXLEN = 8
MAX_PREFIXLEN = 30

_CIDR_RE = re.compile(r"([0-9.]+)/([0-9]+)", re.ASCII)

_SPECIAL_RANGES: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "unspecified"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved"),
)
# The same ranges as integers (first, last): every record an agent parses is checked against them,
# and `IPv4Network.overlaps` goes through `functools.cached_property`, which in Python 3.11 takes one
# lock shared by every instance of the class (a third of an agent's CPU under a burst, by py-spy).
_SPECIAL_SPANS = tuple(
    (int(net.network_address), int(net.broadcast_address), net, kind) for net, kind in _SPECIAL_RANGES
)
_ALL_ONES = 0xFFFFFFFF


class AddressError(ValueError):
    """An address or subnet that cannot be used; the message is shown to the user as it is."""


class OverlaySubnet(ipaddress.IPv4Network):
    """The subnet of one overlay network, e.g. 10.0.0.0/24 (host bits zero, /8 to /30)."""

    def __init__(self, subnet: str | ipaddress.IPv4Network, *, text: str | None = None) -> None:
        """`text`: what the user wrote, quoted in error messages (default: `subnet` itself)."""
        shown, interface = _parse(subnet, text, example="10.2.0.0/16")
        network = interface.network
        if interface.ip != network.network_address:
            raise AddressError(f"{subnet} has host bits set; did you mean {network}?")
        _check_ordinary_range(shown, network)
        super().__init__(network)

    def conflicts(self, other: ipaddress.IPv4Network) -> bool:
        """The one overlap rule: two networks conflict when they overlap but are not the same."""
        return self != other and self.overlaps(other)


class OverlayAddress(ipaddress.IPv4Interface):
    """One address on one overlay network, e.g. 10.0.0.1/24: the IP and the subnet it lives in."""

    network: OverlaySubnet

    def __init__(self, address: str | ipaddress.IPv4Interface, *, text: str | None = None) -> None:
        """`text`: what the user wrote, quoted in error messages (default: `address` itself)."""
        shown, interface = _parse(address, text, example="10.0.0.1/24")
        network = interface.network
        _check_ordinary_range(shown, network)
        ip = interface.ip
        value = int(ip)
        if value in (int(network.network_address), _last(network)):
            which = "network" if value == int(network.network_address) else "broadcast"
            suggestion = f"{network.network_address + 1}/{network.prefixlen}"
            raise AddressError(
                f"{shown}: {ip} is the {which} address of {network}; pick a host address such as {suggestion}"
            )
        super().__init__((value, network.prefixlen))
        self.network = _checked_subnet(network)

    @property
    def subnet(self) -> OverlaySubnet:
        return self.network

    @property
    def cidr(self) -> str:
        """`10.0.0.1/24`: the form stored in etcd and shown to users."""
        return f"{self.ip}/{self.network.prefixlen}"


def _parse(value: object, text: str | None, *, example: str) -> tuple[str, ipaddress.IPv4Interface]:
    """(what to quote in errors, the parsed CIDR) with a prefix length /8 to /30."""
    body = str(value)
    shown = text if text is not None else body
    interface = _parse_cidr(shown, body, example)
    _check_prefixlen(shown, interface.network.prefixlen)
    return shown, interface


def _parse_cidr(text: str, body: str, example: str) -> ipaddress.IPv4Interface:
    match = _CIDR_RE.fullmatch(body)
    if match is None:
        raise AddressError(_describe_unparsable(text, body, example))
    try:
        ip = ipaddress.IPv4Address(match.group(1))
    except ValueError:
        raise AddressError(f"{text} is not a valid IPv4 CIDR (e.g. {example})") from None
    prefixlen = int(match.group(2))
    if prefixlen > 32:
        raise AddressError(
            f"{text} is not a valid IPv4 CIDR: prefix length /{prefixlen} is more than /32 (e.g. {example})"
        )
    return ipaddress.IPv4Interface((int(ip), prefixlen))  # an int: not formatted and parsed again


def _describe_unparsable(text: str, body: str, example: str) -> str:
    try:
        bare = ipaddress.ip_address(body)
    except ValueError:
        bare = None
    if isinstance(bare, ipaddress.IPv4Address):
        return f"{text} has no prefix length; write it as {bare}/24 or with the network's own prefix"
    try:
        version = ipaddress.ip_interface(body).version
    except ValueError:
        version = None
    if version == 6:
        return f"{text} is not a valid IPv4 CIDR: pyweave supports IPv4 only (e.g. {example})"
    return f"{text} is not a valid IPv4 CIDR (e.g. {example})"


def _check_prefixlen(text: str, prefixlen: int) -> None:
    if prefixlen > MAX_PREFIXLEN:
        raise AddressError(f"{text}: /{prefixlen} is too small for a network: use /{MAX_PREFIXLEN} or larger")
    if prefixlen < MIN_PREFIXLEN:
        raise AddressError(
            f"{text}: /{prefixlen} is too large for a network:"
            f" use a prefix of /{MIN_PREFIXLEN} or longer (/{MIN_PREFIXLEN} to /{MAX_PREFIXLEN})"
        )


def _last(network: ipaddress.IPv4Network) -> int:
    """The network's broadcast address as an integer (without the cached property's lock)."""
    return int(network.network_address) | (_ALL_ONES >> network.prefixlen)


def _checked_subnet(network: ipaddress.IPv4Network) -> OverlaySubnet:
    """`network` (already checked: host bits zero, prefix length and range) as an OverlaySubnet,
    without parsing and checking it again."""
    subnet = OverlaySubnet.__new__(OverlaySubnet)
    ipaddress.IPv4Network.__init__(subnet, (int(network.network_address), network.prefixlen))
    return subnet


def _check_ordinary_range(text: str, network: ipaddress.IPv4Network) -> None:
    first = int(network.network_address)
    last = _last(network)
    for low, high, special, kind in _SPECIAL_SPANS:
        if first <= high and low <= last:
            relation = "is in" if network.subnet_of(special) else "overlaps"
            raise AddressError(
                f"{text}: {network} {relation} the {kind} range {special}; use a private range such as 10.0.0.0/8"
            )
