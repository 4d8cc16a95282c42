"""Neighbour and FDB entries in bulk: one netlink socket, many messages per system call.

Remote endpoints are two kernel entries each (an FDB entry MAC -> peer, a neighbour entry IP ->
MAC) on a network's VXLAN device, and a host in a large cluster holds tens of thousands of them.
pyroute2 spends about 0.3 ms of CPU on each request and on each entry of a dump (it builds a rich
message object for every one), so programming 50,000 endpoints took minutes. These are the only
kernel objects pyweave writes in such numbers, and their messages are tiny and fixed in shape, so
this module packs and parses them itself (struct, a few microseconds each), sends them in batches
of a few hundred per `send`, and reads the acknowledgements in bulk. Links are read the same way
(`dataplane.links`, on this module's socket helpers); everything else (writing links, addresses,
routes) stays with pyroute2 in `dataplane.linux`.

Message shapes (linux/neighbour.h, linux/netlink.h):
    nlmsghdr  len:u32 type:u16 flags:u16 seq:u32 pid:u32
    ndmsg     family:u8 pad:u8 pad:u16 ifindex:i32 state:u16 flags:u8 type:u8
    attrs     NDA_DST (1): IPv4 address; NDA_LLADDR (2): MAC; NDA_PORT (6): UDP port, big-endian u16
FDB entries of a VXLAN device are AF_BRIDGE neighbours with the NTF_SELF flag; their NDA_DST is the
peer's underlay address. An FDB destination is written here as a string, "ADDRESS" (the device's
own UDP port) or "ADDRESS:PORT" (a relay's hop-budget port, docs/routing.md); the kernel lists the port
only when it differs from the device's, so the same string comes back from a dump. All calls act in
the network namespace the process runs in.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

NETLINK_ROUTE = 0
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NDA_DST, NDA_LLADDR, NDA_PORT = 1, 2, 6
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7

_HDR = struct.Struct("=IHHII")
_T = TypeVar("_T")
_NDMSG = struct.Struct("=BBHiHBB")
_ATTR = struct.Struct("=HH")
BATCH = 512  # messages per send: well inside the socket buffers set below


class NeighbourError(OSError):
    """The kernel refused one of a batch's messages; `errno` says why, `op` which."""

    def __init__(self, code: int, op: tuple) -> None:
        super().__init__(code, f"{os.strerror(code)} ({op[0]} {op[1:]})")
        self.op = op


@dataclass(frozen=True)
class Entry:
    """One neighbour (IP -> MAC) or FDB (MAC -> dst) entry as the kernel lists it."""

    ifindex: int
    mac: str
    dst: str | None
    state: int


def _attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _fdb_attrs(mac: str, dst: str) -> bytes:
    """NDA_LLADDR, NDA_DST and, for "ADDRESS:PORT", NDA_PORT."""
    address, _, port = dst.partition(":")
    attrs = _attr(NDA_LLADDR, _mac(mac)) + _attr(NDA_DST, socket.inet_aton(address))
    if port:
        attrs += _attr(NDA_PORT, struct.pack("!H", int(port)))
    return attrs


def _message(kind: int, flags: int, seq: int, family: int, ifindex: int, state: int, ntf: int, attrs: bytes) -> bytes:
    body = _NDMSG.pack(family, 0, 0, ifindex, state, ntf, 0) + attrs
    return _HDR.pack(_HDR.size + len(body), kind, flags, seq, 0) + body


def route_socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket of the named namespace (/run/netns/NAME), or of this process's. A
    socket belongs to the namespace it was made in: this thread enters the named one just for that."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    clone_newnet = 0x40000000
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as there:
        if libc.setns(there.fileno(), clone_newnet) != 0:
            raise OSError(ctypes.get_errno(), f"cannot enter network namespace {netns}")
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        finally:
            if libc.setns(home.fileno(), clone_newnet) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to this thread's network namespace")


class Neighbours:
    """A NETLINK_ROUTE socket for bulk neighbour and FDB work (not thread-safe: one user), in the
    namespace this process runs in or the named one."""

    def __init__(self, netns: str | None = None) -> None:
        self.sock = route_socket(netns)
        for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # SO_*BUFFORCE as root
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    # -- writes --------------------------------------------------------------------------------
    def apply(
        self,
        ifindex: int,
        *,
        fdb_del: Iterable[tuple[str, str]] = (),
        neigh_del: Iterable[tuple[str, str]] = (),
        fdb_add: Iterable[tuple[str, str]] = (),
        neigh_add: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Removals (a missing entry is fine), then additions (FDB entries appended: an existing
        one is fine; neighbour entries replaced), all permanent. Raises NeighbourError for the first
        other refusal, after the whole batch was tried."""
        ops: list[tuple[tuple, bytes]] = []
        for mac, dst in fdb_del:
            attrs = _fdb_attrs(mac, dst)
            ops.append((("fdb del", mac, dst), self._msg(RTM_DELNEIGH, 0, AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, attrs)))
        for ip, mac in neigh_del:
            attrs = _attr(NDA_DST, socket.inet_aton(ip)) + _attr(NDA_LLADDR, _mac(mac))
            ops.append((("neigh del", ip, mac), self._msg(RTM_DELNEIGH, 0, socket.AF_INET, ifindex, NUD_PERMANENT, 0, attrs)))
        for mac, dst in fdb_add:
            attrs = _fdb_attrs(mac, dst)
            flags = NLM_F_CREATE | NLM_F_APPEND
            ops.append((("fdb add", mac, dst), self._msg(RTM_NEWNEIGH, flags, AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, attrs)))
        for ip, mac in neigh_add:
            attrs = _attr(NDA_DST, socket.inet_aton(ip)) + _attr(NDA_LLADDR, _mac(mac))
            flags = NLM_F_CREATE | NLM_F_REPLACE
            ops.append((("neigh add", ip, mac), self._msg(RTM_NEWNEIGH, flags, socket.AF_INET, ifindex, NUD_PERMANENT, 0, attrs)))
        failure: NeighbourError | None = None
        for start in range(0, len(ops), BATCH):
            chunk = ops[start:start + BATCH]
            failure = self._send(chunk) or failure
        if failure is not None:
            raise failure

    def _msg(self, kind: int, flags: int, family: int, ifindex: int, state: int, ntf: int, attrs: bytes) -> bytes:
        self._seq += 1
        return _message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, self._seq, family, ifindex, state, ntf, attrs)

    def _send(self, chunk: list[tuple[tuple, bytes]]) -> NeighbourError | None:
        by_seq = {_HDR.unpack_from(msg)[3]: op for op, msg in chunk}
        self.sock.send(b"".join(msg for _, msg in chunk))
        failure = None
        while by_seq:
            data = self.sock.recv(1 << 20)
            for kind, _flags, seq, payload in netlink_messages(data):
                if kind != NLMSG_ERROR or seq not in by_seq:
                    continue
                op = by_seq.pop(seq)
                code = -struct.unpack_from("=i", payload)[0]
                if code and not _harmless(op[0], code) and failure is None:
                    failure = NeighbourError(code, op)
        return failure

    # -- reads ---------------------------------------------------------------------------------
    def fdb(self, ifindex: int) -> list[Entry]:
        """The FDB entries of a device that have a destination (a VXLAN device's remote entries)."""
        return [e for e in self._dump(AF_BRIDGE) if e.ifindex == ifindex and e.dst is not None]

    def neighbours(self, ifindex: int) -> list[Entry]:
        """The IPv4 neighbour entries of a device (`mac` may be empty for an incomplete one)."""
        return [e for e in self._dump(socket.AF_INET) if e.ifindex == ifindex and e.dst is not None]

    def _dump(self, family: int) -> list[Entry]:
        self._seq += 1
        message = _message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, self._seq, family, 0, 0, 0, b"")
        return netlink_request(self.sock, self._seq, message, RTM_NEWNEIGH, lambda p: _entry(p, family), dump=True)


def netlink_request(sock: socket.socket, seq: int, message: bytes, answer: int, parse: Callable[[bytes], _T], *,
                    dump: bool) -> list[_T]:
    """Send one request (`message`, its header carrying `seq`) and collect its answers of type
    `answer`, parsed: every one of a dump, the one of a get. Messages of other seqs (answers to a
    request given up on midway) are skipped; an error answer raises OSError."""
    sock.send(message)
    out: list[_T] = []
    while True:
        data = sock.recv(1 << 20)
        for kind, _flags, msg_seq, payload in netlink_messages(data):
            if msg_seq != seq:
                continue
            if kind == NLMSG_DONE:
                return out
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    raise OSError(code, os.strerror(code))
                if not dump:
                    return out
                continue
            if kind == answer:
                out.append(parse(payload))
                if not dump:
                    return out


def _harmless(what: str, code: int) -> bool:
    """Removing what is gone, or appending an FDB entry that exists, changes nothing."""
    if what.endswith("del"):
        return code in (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)
    return what == "fdb add" and code == errno.EEXIST


def netlink_messages(data: bytes):
    """(type, flags, seq, payload) of every netlink message in one datagram."""
    offset = 0
    while offset + _HDR.size <= len(data):
        length, kind, flags, seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size:
            return
        yield kind, flags, seq, data[offset + _HDR.size:offset + length]
        offset += (length + 3) & ~3


def _entry(payload: bytes, family: int) -> Entry:
    _fam, _p1, _p2, ifindex, state, _flags, _type = _NDMSG.unpack_from(payload)
    mac, dst, port = "", None, 0
    offset = _NDMSG.size
    while offset + _ATTR.size <= len(payload):
        length, kind = _ATTR.unpack_from(payload, offset)
        if length < _ATTR.size:
            break
        value = payload[offset + _ATTR.size:offset + length]
        if kind == NDA_LLADDR and len(value) == 6:
            mac = ":".join(f"{b:02x}" for b in value)
        elif kind == NDA_DST and len(value) == 4:
            dst = socket.inet_ntoa(value)
        elif kind == NDA_PORT and len(value) == 2:
            port = struct.unpack("!H", value)[0]
        offset += (length + 3) & ~3
    if dst is not None and port:
        dst = f"{dst}:{port}"
    return Entry(ifindex, mac, dst, state)
