"""The host's links (and their IPv4 addresses and routes) as a pass reads them: one netlink request,
a few microseconds an object.

Every pass of the agent reads links: all of them (its ports, its networks, its transit devices)
and, at a full pass, each network's bridge and VXLAN device by name to compare them with what they
should be, and each network bridge's addresses and route. Through pyroute2 a link costs about 0.3 ms of CPU to decode (a rich message object with
every attribute, through an asyncio loop spun up per request), so these reads were most of an idle
agent's CPU (issue 11). Like `dataplane.neighbours`, this module packs the request and parses only
the attributes pyweave compares (struct, no objects per attribute). It only reads: links,
addresses and routes are written by `dataplane.linux` through pyroute2 (rarely: creating, changing,
removing one).

Message shapes (linux/rtnetlink.h, linux/if_link.h):
    ifinfomsg  family:u8 pad:u8 type:u16 index:i32 flags:u32 change:u32
    attrs      IFLA_ADDRESS (1), IFLA_IFNAME (3), IFLA_MTU (4), IFLA_MASTER (10), IFLA_OPERSTATE (16),
               IFLA_LINKINFO (18, nested: IFLA_INFO_KIND (1), IFLA_INFO_DATA (2, nested: per kind)),
               IFLA_IFALIAS (20)
    ifaddrmsg  family:u8 prefixlen:u8 flags:u8 scope:u8 index:u32; attrs IFA_ADDRESS (1)
    rtmsg      family:u8 dst_len:u8 src_len:u8 tos:u8 table:u8 protocol:u8 scope:u8 type:u8 flags:u32;
               attrs RTA_DST (1), RTA_OIF (4), RTA_PRIORITY (6), RTA_TABLE (15)
A VXLAN device's IFLA_INFO_DATA is given under pyroute2's names (`IFLA_VXLAN_ID`, ...) with pyroute2's
value types (the local address as text, the UDP port in host order), so comparisons read the same.
All calls act in the network namespace of the socket: the process's, or the named one.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from dataplane.neighbours import NLM_F_DUMP, NLM_F_REQUEST, netlink_request, route_socket

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFA_ADDRESS = 1
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_TABLE = 1, 4, 6, 15
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS = 16, 18, 20
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFF_UP = 0x1
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_T = TypeVar("_T")

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BBHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_ATTR = struct.Struct("=HH")
_U8, _U32, _BE16 = struct.Struct("=B"), struct.Struct("=I"), struct.Struct("!H")

# IFLA_VXLAN_*: (name, decoder)
_VXLAN = {
    1: ("IFLA_VXLAN_ID", lambda v: _U32.unpack_from(v)[0]),
    3: ("IFLA_VXLAN_LINK", lambda v: _U32.unpack_from(v)[0]),
    4: ("IFLA_VXLAN_LOCAL", socket.inet_ntoa),
    7: ("IFLA_VXLAN_LEARNING", lambda v: _U8.unpack_from(v)[0]),
    11: ("IFLA_VXLAN_PROXY", lambda v: _U8.unpack_from(v)[0]),
    15: ("IFLA_VXLAN_PORT", lambda v: _BE16.unpack_from(v)[0]),
}


@dataclass(frozen=True)
class Link:
    """One link as the kernel lists it (the attributes pyweave compares)."""

    index: int
    name: str
    flags: int = 0
    mtu: int | None = None
    master: int | None = None
    address: str | None = None
    operstate: str = "UNKNOWN"
    alias: str | None = None
    kind: str | None = None
    data: Mapping[str, object] = field(default_factory=dict)  # IFLA_INFO_DATA (VXLAN devices)

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True)
class Route:
    """One IPv4 route as the kernel lists it (the attributes pyweave compares)."""

    dst: str | None  # None: the default route
    dst_len: int
    oif: int | None
    priority: int | None
    table: int


def _attrs(payload: bytes, offset: int):
    """(type, value) of the netlink attributes in payload[offset:]."""
    end = len(payload)
    while offset + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(payload, offset)
        if length < _ATTR.size:
            return
        yield kind & NLA_TYPE_MASK, payload[offset + _ATTR.size:offset + length]
        offset += (length + 3) & ~3


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")


def parse_link(payload: bytes) -> Link:
    """A Link from an RTM_NEWLINK message's payload (after the netlink header)."""
    _family, _pad, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    got: dict = {}
    for kind, value in _attrs(payload, _IFINFO.size):
        if kind == IFLA_IFNAME:
            got["name"] = _text(value)
        elif kind == IFLA_MTU and len(value) >= 4:
            got["mtu"] = _U32.unpack_from(value)[0]
        elif kind == IFLA_MASTER and len(value) >= 4:
            got["master"] = _U32.unpack_from(value)[0]
        elif kind == IFLA_ADDRESS:
            got["address"] = ":".join(f"{b:02x}" for b in value)
        elif kind == IFLA_OPERSTATE and value:
            state = value[0]
            got["operstate"] = OPERSTATES[state] if state < len(OPERSTATES) else str(state)
        elif kind == IFLA_IFALIAS:
            got["alias"] = _text(value)
        elif kind == IFLA_LINKINFO:
            data_raw = b""
            for info_kind, info in _attrs(value, 0):
                if info_kind == IFLA_INFO_KIND:
                    got["kind"] = _text(info)
                elif info_kind == IFLA_INFO_DATA:
                    data_raw = info
            if got.get("kind") == "vxlan" and data_raw:
                data = {}
                for data_kind, item in _attrs(data_raw, 0):
                    known = _VXLAN.get(data_kind)
                    if known is not None and item:
                        data[known[0]] = known[1](item)
                got["data"] = data
    return Link(index=index, name=got.pop("name", ""), flags=flags, **got)


def parse_address(payload: bytes) -> tuple[int, ipaddress.IPv4Interface | None]:
    """(link index, IPv4 address with its prefix) of an RTM_NEWADDR message's payload."""
    family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(payload)
    if family != socket.AF_INET:
        return index, None
    for kind, value in _attrs(payload, _IFADDR.size):
        if kind == IFA_ADDRESS and len(value) == 4:
            return index, ipaddress.IPv4Interface(f"{socket.inet_ntoa(value)}/{prefixlen}")
    return index, None


def parse_route(payload: bytes) -> Route:
    """A Route from an RTM_NEWROUTE message's payload."""
    _family, dst_len, _src_len, _tos, table, _proto, _scope, _type, _flags = _RTMSG.unpack_from(payload)
    got: dict = {"table": table}
    for kind, value in _attrs(payload, _RTMSG.size):
        if kind == RTA_DST and len(value) == 4:
            got["dst"] = socket.inet_ntoa(value)
        elif kind == RTA_OIF and len(value) >= 4:
            got["oif"] = _U32.unpack_from(value)[0]
        elif kind == RTA_PRIORITY and len(value) >= 4:
            got["priority"] = _U32.unpack_from(value)[0]
        elif kind == RTA_TABLE and len(value) >= 4:
            got["table"] = _U32.unpack_from(value)[0]
    return Route(dst=got.get("dst"), dst_len=dst_len, oif=got.get("oif"), priority=got.get("priority"), table=got["table"])


class LinkReader:
    """A NETLINK_ROUTE socket that reads links (not thread-safe: one user), in the namespace this
    process runs in or the named one."""

    def __init__(self, netns: str | None = None) -> None:
        self.sock = route_socket(netns)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def dump(self) -> list[Link]:
        """Every link of the namespace."""
        return self._request(RTM_GETLINK, NLM_F_DUMP, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0), RTM_NEWLINK, parse_link)

    def addresses(self, index: int) -> set[ipaddress.IPv4Interface]:
        """The IPv4 addresses of link `index`."""
        found = self._request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0), RTM_NEWADDR, parse_address)
        return {address for at, address in found if at == index and address is not None}

    def routes(self, *, table: int = 254) -> list[Route]:
        """The IPv4 routes of `table` (254: main)."""
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        return [r for r in self._request(RTM_GETROUTE, NLM_F_DUMP, body, RTM_NEWROUTE, parse_route) if r.table == table]

    def get(self, name: str) -> Link | None:
        """The link named `name`, or None when there is none."""
        attr = name.encode() + b"\0"
        length = _ATTR.size + len(attr)
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0) + _ATTR.pack(length, IFLA_IFNAME) + attr + b"\0" * (-length % 4)
        try:
            found = self._request(RTM_GETLINK, 0, body, RTM_NEWLINK, parse_link)
        except OSError as err:
            if err.errno in (19, 2):  # ENODEV, ENOENT: no such link
                return None
            raise
        return found[0] if found else None

    def _request(self, kind: int, flags: int, body: bytes, answer: int, parse: Callable[[bytes], _T]) -> list[_T]:
        self._seq += 1
        message = _HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags, self._seq, 0) + body
        return netlink_request(self.sock, self._seq, message, answer, parse, dump=bool(flags & NLM_F_DUMP))
