"""The host's links as a pass reads them: one netlink request, a few microseconds a link.

Every pass of the agent reads links: all of them (its ports, its networks, its transit devices)
and, at a full pass, each network's bridge and VXLAN device by name to compare them with what they
should be. Through pyroute2 a link costs about 0.3 ms of CPU to decode (a rich message object with
every attribute, through an asyncio loop spun up per request), so these reads were most of an idle
agent's CPU (issue 11). Like `dataplane.neighbours`, this module packs the request and parses only
the attributes pyweave compares (struct, no objects per attribute). It only reads: links are
written by `dataplane.linux` through pyroute2 (rarely: creating, changing, removing a device).

Message shapes (linux/rtnetlink.h, linux/if_link.h):
    ifinfomsg  family:u8 pad:u8 type:u16 index:i32 flags:u32 change:u32
    attrs      IFLA_ADDRESS (1), IFLA_IFNAME (3), IFLA_MTU (4), IFLA_MASTER (10), IFLA_OPERSTATE (16),
               IFLA_LINKINFO (18, nested: IFLA_INFO_KIND (1), IFLA_INFO_DATA (2, nested: per kind)),
               IFLA_IFALIAS (20)
A VXLAN device's IFLA_INFO_DATA is given under pyroute2's names (`IFLA_VXLAN_ID`, ...) with pyroute2's
value types (the local address as text, the UDP port in host order), so comparisons read the same.
All calls act in the network namespace of the socket: the process's, or the named one.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from dataplane.neighbours import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, netlink_messages, route_socket

RTM_NEWLINK, RTM_GETLINK = 16, 18
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS = 16, 18, 20
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFF_UP = 0x1
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BBHiII")
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
        return self._request(NLM_F_DUMP, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0))

    def get(self, name: str) -> Link | None:
        """The link named `name`, or None when there is none."""
        attr = name.encode() + b"\0"
        length = _ATTR.size + len(attr)
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0) + _ATTR.pack(length, IFLA_IFNAME) + attr + b"\0" * (-length % 4)
        try:
            found = self._request(0, body)
        except OSError as err:
            if err.errno in (19, 2):  # ENODEV, ENOENT: no such link
                return None
            raise
        return found[0] if found else None

    def _request(self, flags: int, body: bytes) -> list[Link]:
        self._seq += 1
        seq = self._seq
        self.sock.send(_HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST | flags, seq, 0) + body)
        out: list[Link] = []
        while True:
            data = self.sock.recv(1 << 20)
            for kind, _flags, msg_seq, payload in netlink_messages(data):
                if msg_seq != seq:
                    continue  # an answer to an earlier request given up on (an error midway)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return out
                if kind == RTM_NEWLINK:
                    out.append(parse_link(payload))
                    if not flags & NLM_F_DUMP:
                        return out
