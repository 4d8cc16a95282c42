"""Address forms users type, and the rules that make an address usable.

Addresses reach pyweave from the command line (``pyweave run 10.0.0.1/24
busybox``, weave's ``ip:10.0.0.1/24`` and ``net:10.2.0.0/16``) and from
network definitions. They are checked here, before anything touches etcd or
the kernel, so a typo is reported against the text the user wrote rather
than surfacing later as a kernel or allocation error. Everything here is
pure: no I/O, no cluster state.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "AddressError",
    "EndpointAddress",
    "looks_like_address",
    "parse_endpoint_cidr",
    "parse_subnet",
    "subnets_conflict",
]

IP_PREFIX = "ip:"
NET_PREFIX = "net:"
MIN_PREFIXLEN = 8
MAX_PREFIXLEN = 30

_CIDR_RE = re.compile(r"([0-9.]+)/([0-9]+)", re.ASCII)
_SLASHED_DIGITS_RE = re.compile(r"[0-9][0-9.]*/[0-9]*", re.ASCII)
_DOTTED_DIGITS_RE = re.compile(r"[0-9]+(\.[0-9]*){3,}", re.ASCII)
_IPV6_ISH_RE = re.compile(r"[0-9a-fA-F]*:[0-9a-fA-F]*:[0-9a-fA-F:.]*(/[0-9]*)?", re.ASCII)

_SPECIAL_RANGES: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "unspecified"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved"),
)


class AddressError(ValueError):
    """An address or subnet that cannot be used; the message is shown to the user."""


@dataclass(frozen=True)
class EndpointAddress:
    """One address of one container on one network, e.g. 10.0.0.1/24."""

    ip: ipaddress.IPv4Address
    network: ipaddress.IPv4Network

    def __post_init__(self) -> None:
        if self.ip not in self.network:
            raise ValueError(f"{self.ip} is not in {self.network}")

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.network.prefixlen}"

    def __str__(self) -> str:
        return self.cidr


def looks_like_address(word: str) -> bool:
    """Whether the CLI should read *word* as an ADDRESS argument rather than the image.

    Deliberately generous with digit-and-dot garbage (``300.1.1.1/24``,
    ``10.0.0.1``, ``10.0.0/24``) so that a typo is reported as a bad address
    instead of docker failing to find an image by that name. Image references
    such as ``busybox``, ``ubuntu:22.04`` or ``localhost:5000/img`` never match.
    """
    return (
        word.startswith((IP_PREFIX, NET_PREFIX))
        or _SLASHED_DIGITS_RE.fullmatch(word) is not None
        or _DOTTED_DIGITS_RE.fullmatch(word) is not None
        or _IPV6_ISH_RE.fullmatch(word) is not None
    )


def parse_endpoint_cidr(text: str) -> EndpointAddress:
    """Parse ``10.0.0.1/24`` or ``ip:10.0.0.1/24`` into a usable host address."""
    body = text.strip()
    if body.startswith(NET_PREFIX):
        raise AddressError(
            f"{text} names a subnet to allocate from, not an address;"
            f" give a host address such as ip:10.0.0.1/24"
        )
    body = body.removeprefix(IP_PREFIX)
    interface = _parse_cidr(text, body, example="10.0.0.1/24")
    ip, network = interface.ip, interface.network
    _check_prefixlen(text, network.prefixlen)
    _check_ordinary_range(text, network)
    suggestion = f"{network.network_address + 1}/{network.prefixlen}"
    if ip == network.network_address:
        raise AddressError(
            f"{text}: {ip} is the network address of {network}; pick a host address such as {suggestion}"
        )
    if ip == network.broadcast_address:
        raise AddressError(
            f"{text}: {ip} is the broadcast address of {network}; pick a host address such as {suggestion}"
        )
    return EndpointAddress(ip=ip, network=network)


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """Parse a subnet such as ``10.2.0.0/16`` or ``net:10.2.0.0/16`` (host bits must be zero)."""
    body = text.strip().removeprefix(NET_PREFIX)
    interface = _parse_cidr(text, body, example="10.2.0.0/16")
    network = interface.network
    _check_prefixlen(text, network.prefixlen)
    if interface.ip != network.network_address:
        raise AddressError(f"{body} has host bits set; did you mean {network}?")
    _check_ordinary_range(text, network)
    return network


def subnets_conflict(a: ipaddress.IPv4Network, b: ipaddress.IPv4Network) -> bool:
    """Whether two subnets overlap without being the same subnet."""
    return a != b and a.overlaps(b)


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
    return ipaddress.IPv4Interface((ip, prefixlen))


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
        raise AddressError(
            f"{text}: /{prefixlen} is too small for a network: use /{MAX_PREFIXLEN} or larger"
        )
    if prefixlen < MIN_PREFIXLEN:
        raise AddressError(
            f"{text}: /{prefixlen} is too large for a network:"
            f" use a prefix of /{MIN_PREFIXLEN} or longer (/{MIN_PREFIXLEN} to /{MAX_PREFIXLEN})"
        )


def _check_ordinary_range(text: str, network: ipaddress.IPv4Network) -> None:
    for special, kind in _SPECIAL_RANGES:
        if network.overlaps(special):
            relation = "is in" if network.subnet_of(special) else "overlaps"
            raise AddressError(
                f"{text}: {network} {relation} the {kind} range {special};"
                " use a private range such as 10.0.0.0/8"
            )
