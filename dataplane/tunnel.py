"""The encrypted tunnel of one host (issue 14, docs/encryption.md): `python -m dataplane.tunnel --config PATH`.

The kernel VXLAN devices stay as they are. Their packets to other hosts (UDP to ports 4789..4792) are
marked by an nftables `route` chain (table `inet pyweave_tunnel`), and a policy rule sends marked
packets to a routing table whose default route is the TUN device `pwtun0`. This process reads each
outer IP packet from the TUN device, finds the peer by the packet's IPv4 destination, seals it with
that pair's keys (`dataplane.crypto`) and sends it over its UDP socket (port 6783) to the peer. The
peer's tunnel opens it (the peer is known by the datagram's source address) and writes the packet
into its own TUN device: its kernel sees the VXLAN packet arrive, as if from the underlay.

Kernel objects it owns, in the namespace it runs in; made idempotently at start, removed at a clean
exit (SIGTERM, SIGINT), and by `cleanup()` (or `--cleanup`) after a crash:
- the device `pwtun0` (not persistent: it vanishes with the process's file descriptors): a TAP
  device with NOARP and the fixed MAC TAP_MAC when offloads are on (see `open_tun` for why), else
  a TUN device;
- the nft table `inet pyweave_tunnel` (output, type route): mark FWMARK on UDP to VXLAN_PORTS and to
  the link probes' PROBE_PORT when the destination is in the set PEER_SET (the configured peers'
  addresses, kept in sync at start and on reload), drop the rest to those ports;
- the rule `fwmark FWMARK lookup ROUTE_TABLE` (priority RULE_PRIORITY) and, in ROUTE_TABLE, the
  route `default dev pwtun0` and a blackhole default with a higher metric: after a crash the TUN
  device is gone, and the marked packets are dropped rather than sent in clear on the underlay;
- rp_filter = 2 (loose) on pwtun0, and the address TUN_ADDRESS/32 on it (without an address the
  filter refuses everything): the packets it delivers come from peers' underlay addresses, whose
  reverse route is the underlay interface.

Speed (bench/tunnel_speed.py): with `offload` (the default), the device has IFF_VNET_HDR and
TUNSETOFFLOAD with checksum, TSO and UDP-tunnel GSO, so the kernel hands over whole VXLAN
super-packets (up to 64 KB of the inner TCP stream) with a virtio_net_hdr_v1_hash_tunnel (24 bytes)
and an Ethernet header in front. Header, frame and packet are sealed as one message; the receiver
writes them back as they came, and its kernel takes the super-packet as it would from a virtio NIC.
With `udp_gso` (the default) the sealed message goes out as underlay-MTU-sized CHUNKs in one UDP GSO
send and comes back in one UDP_GRO read (without it: one datagram, IP-fragmented on the underlay).
Both ends must run the same mode. A Python tunnel is bound by system calls and kernel work per
packet, not by the cipher (AES-GCM seals 64 KB in about 30 µs), so fewer, larger packets is what
counts: on the 2-core lab, 0.5 Gbit/s one packet at a time, 2.8 with super-packets, 3.7-4.7 with UDP
GSO (plain kernel VXLAN: 12-15).

Config (JSON, re-read on SIGHUP; the agent replaces it atomically):
    {"me": NAME, "address": UNDERLAY_ADDRESS, "port": 6783, "key_file": PATH, "secret_file": PATH,
     "peers": {UNDERLAY_ADDRESS: {"name": NAME, "public": BASE64_X25519}}, "stats_file": PATH,
     optional: "offload": true, "udp_gso": true, "socket_buffer": 7340032, "rekey_after": 120.0}
    rekey_after: seconds after which a session is rotated by a new handshake (crypto.Peer's; the
    default 120 s is the design's; tests and operators lower it through the agent's environment,
    PYWEAVE_TUNNEL_REKEY_AFTER). A reload applies a new value to the peers' running sessions.
Stats (stats_file, JSON, rewritten at most once a second): the counters of `crypto.PeerStats`
summed over peers ("total") and per peer ("peers", by address, with the name), and the tunnel's own
drops ("tunnel": unknown_source, no_peer, malformed, send_errors, write_errors, incomplete).
The stats file appears once the tunnel is up (the agent can wait for it).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import errno
import fcntl
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

TUN_NAME = "pwtun0"
TUNNEL_PORT = 6783
NFT_FAMILY = "inet"
NFT_TABLE = "pyweave_tunnel"
FWMARK = 0x7077
ROUTE_TABLE = 7077
RULE_PRIORITY = 7077
BLACKHOLE_METRIC = 4096
VXLAN_PORTS = (4789, 4792)  # the network's devices and the relays' hop budgets (MAX_HOPS = 4)
PROBE_PORT = 6784  # the agents' link probes (docs/routing.md): they measure the encrypted path, and a
# host whose secret is not the cluster's sees no link up (its handshakes fail)
# The reverse-path filter drops every packet that comes in on a device without an IPv4 address unless
# rp_filter is 0 (fib_validate_source: no address -> "last resort" -> refused), and the effective
# value is max(all, device): a link-local /32 on pwtun0 makes loose mode (2) work whatever `all` is.
TUN_ADDRESS = "169.254.70.77"
TUN_MTU = 65000  # no fragmentation before the tunnel: the VXLAN packets' size is the overlay MTU's business
SOCKET_BUFFER = 7 * 1024 * 1024  # as wireguard-go
TICK = 0.1
STATS_INTERVAL = 1.0
BATCH = 64  # packets read from one file descriptor per wake-up
READ_SIZE = 65600  # above the largest super-packet (64 KB + headers)
REKEY_AFTER = 120.0  # seconds: sessions rotate by time (docs/encryption.md), unless the config says otherwise

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NOARP = 0x80
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
TUN_F_USO4, TUN_F_USO6 = 0x20, 0x40
TUN_F_UDP_TUNNEL_GSO, TUN_F_UDP_TUNNEL_GSO_CSUM = 0x80, 0x100
OFFLOADS = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6
    | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM
)
# With UDP-tunnel GSO the kernel uses the longest virtio header (virtio_net_hdr_v1_hash_tunnel:
# 12 + hash 8 + outer/inner offsets 4); the header is opaque here, sealed and written back as it is.
VNET_HDR_SIZE = 24
# The TAP device's MAC, the same on every host: with NOARP, the kernel addresses every frame to the
# device's own MAC, which is then also the peer's, so frames are written back unchanged.
TAP_MAC = "02:70:77:00:00:01"
ETH_HLEN = 14


# UDP GSO/GRO (linux/udp.h): a sealed super-packet goes out as one send of CHUNKs, each a UDP datagram
# that fits the underlay MTU; the kernel carries them as one GSO packet as far as it can (through
# veths and bridges: all the way), and the receiver's UDP_GRO hands them back in one read. A CHUNK
# is not authenticated by itself: the reassembled message is, by its AEAD tag (a forged chunk only
# makes its message fail to open, and is counted as forged).
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
CHUNK_TYPE = 0x10  # crypto's messages are 0x01..0x03
CHUNK = struct.Struct(">BIBB")  # type, message id, index, count
MAX_SEND = 65000  # payload bytes per GSO send (a UDP datagram's limit is 65507)
MAX_PENDING = 32  # messages being reassembled from chunks, all peers together


class TunnelError(Exception):
    pass


# -- config ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerConfig:
    address: str
    name: str
    public: bytes


@dataclass(frozen=True)
class Config:
    me: str
    address: str
    port: int
    key_file: str
    secret_file: str
    stats_file: str | None
    peers: dict[str, PeerConfig] = field(default_factory=dict)
    offload: bool = True
    udp_gso: bool = True
    socket_buffer: int = SOCKET_BUFFER
    rekey_after: float = REKEY_AFTER


def _positive(value: Any, what: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return number


def load_config(path: str) -> Config:
    """Parse the config file; TunnelError says what is wrong with it."""
    try:
        with open(path) as f:
            raw = json.load(f)
        peers = {}
        for address, p in (raw.get("peers") or {}).items():
            socket.inet_aton(address)
            peers[address] = PeerConfig(address, str(p["name"]), base64.b64decode(p["public"], validate=True))
        socket.inet_aton(raw["address"])
        return Config(
            me=str(raw["me"]),
            address=raw["address"],
            port=int(raw.get("port", TUNNEL_PORT)),
            key_file=raw["key_file"],
            secret_file=raw["secret_file"],
            stats_file=raw.get("stats_file"),
            peers=peers,
            offload=bool(raw.get("offload", True)),
            udp_gso=bool(raw.get("udp_gso", True)),
            socket_buffer=int(raw.get("socket_buffer", SOCKET_BUFFER)),
            rekey_after=_positive(raw.get("rekey_after", REKEY_AFTER), "rekey_after"),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise TunnelError(f"bad tunnel config {path}: {err!r}") from err


# -- kernel plumbing -------------------------------------------------------------------------------
def open_tun(*, offload: bool, multi_queue: bool = False) -> tuple[int, bool]:
    """A queue of the device TUN_NAME (made if missing); (fd, whether offloads are on).

    With offloads it is a TAP device (Ethernet frames, NOARP, TAP_MAC), else a TUN device (IP
    packets). Why TAP: the kernel validates a written UDP-tunnel GSO packet as if it had an Ethernet
    header (virtio_net_hdr_tnl_to_skb: outer transport offset >= ETH_HLEN + 20), so on a TUN device
    it can read such super-packets but refuses them when written back. Offloads that the kernel
    refuses fall back to plain IP packets (one per read)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    kind = (IFF_TAP | IFF_VNET_HDR) if offload else IFF_TUN
    flags = kind | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(), flags))
        if offload:
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
                fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
            except OSError as err:
                log.warning("TUN offloads refused (%s): one packet per read", err)
                os.close(fd)
                return open_tun(offload=False, multi_queue=multi_queue)
    except BaseException:
        os.close(fd)
        raise
    return fd, offload


def _mtu_of(address: str) -> int:
    """The MTU of the interface that has `address` (1500 if none has)."""
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=socket.AF_INET, address=address):
            link = ipr.get_links(a["index"])[0]
            return int(link.get_attr("IFLA_MTU"))
    return 1500


def _sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def _nft(script: str) -> None:
    done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if done.returncode != 0:
        raise TunnelError(f"nft failed: {done.stderr.strip()}")


PEER_SET = "peers"
# Only packets to the peers' underlay addresses (the set PEER_SET, kept equal to the config's peers by
# `sync_peer_set`) are steered into the tunnel. The others to the same ports are dropped, not sent:
# the agent may program a new host's forwarding entries a moment before the tunnel has reloaded the
# config that names it, and those packets must not go out in clear (nor wake the tunnel to be
# dropped as no_peer); the counter shows them (`nft list table inet pyweave_tunnel`).
# Inbound, the kernel's VXLAN devices still listen on those ports: a frame sent to them in clear from
# the underlay (by anyone, without the secret) would reach the containers past the tunnel. Only what
# the tunnel opened and wrote into its device may reach them; the rest is dropped and counted.
_PORTS = f"{{ {VXLAN_PORTS[0]}-{VXLAN_PORTS[1]}, {PROBE_PORT} }}"
NFT_SCRIPT = f"""\
table {NFT_FAMILY} {NFT_TABLE} {{}}
delete table {NFT_FAMILY} {NFT_TABLE}
table {NFT_FAMILY} {NFT_TABLE} {{
    set {PEER_SET} {{
        type ipv4_addr
    }}
    chain out {{
        type route hook output priority 0; policy accept;
        ip daddr @{PEER_SET} udp dport {_PORTS} meta mark set {FWMARK:#x} accept
        udp dport {_PORTS} counter drop comment "not a peer"
    }}
    chain in {{
        type filter hook input priority 0; policy accept;
        udp dport {_PORTS} iifname != "{TUN_NAME}" counter drop comment "not from the tunnel"
    }}
}}
"""


def sync_peer_set(addresses: list[str]) -> None:
    """Make the nft set PEER_SET hold exactly `addresses` (one transaction: no moment without them)."""
    script = f"flush set {NFT_FAMILY} {NFT_TABLE} {PEER_SET}\n"
    if addresses:
        script += f"add element {NFT_FAMILY} {NFT_TABLE} {PEER_SET} {{ {', '.join(sorted(addresses))} }}\n"
    _nft(script)


def _our_rules(ipr: IPRoute) -> list:
    return [
        r for r in ipr.get_rules(family=socket.AF_INET)
        if r.get_attr("FRA_PRIORITY") == RULE_PRIORITY and r.get_attr("FRA_TABLE") == ROUTE_TABLE
    ]


def setup_kernel(*, tap: bool = False) -> None:
    """Route, blackhole, rule, rp_filter and nft table for the TUN device (which must exist);
    idempotent. The marking comes last, once the route is there."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=TUN_NAME)
        if not found:
            raise TunnelError(f"{TUN_NAME} is missing")
        idx = found[0]
        if tap:
            ipr.link("set", index=idx, address=TAP_MAC, flags=IFF_NOARP, change=IFF_NOARP)
        _sysctl(f"net/ipv6/conf/{TUN_NAME}/disable_ipv6", "1")
        _sysctl(f"net/ipv4/conf/{TUN_NAME}/rp_filter", "2")
        ipr.link("set", index=idx, mtu=TUN_MTU, state="up")
        if not ipr.get_addr(index=idx, family=socket.AF_INET):
            ipr.addr("add", index=idx, address=TUN_ADDRESS, prefixlen=32)
        ipr.route("replace", dst="0.0.0.0", dst_len=0, oif=idx, table=ROUTE_TABLE)
        ipr.route("replace", dst="0.0.0.0", dst_len=0, type="blackhole", table=ROUTE_TABLE, priority=BLACKHOLE_METRIC)
        rules = _our_rules(ipr)
        if not any(r.get_attr("FRA_FWMARK") == FWMARK for r in rules):
            for r in rules:
                ipr.rule("del", priority=RULE_PRIORITY, table=ROUTE_TABLE, fwmark=r.get_attr("FRA_FWMARK"))
            ipr.rule("add", priority=RULE_PRIORITY, table=ROUTE_TABLE, fwmark=FWMARK)
    _nft(NFT_SCRIPT)


def cleanup() -> None:
    """Remove everything the tunnel makes, in the namespace this process runs in; what is missing
    is success (for the agent, after the tunnel died)."""
    _nft(f"table {NFT_FAMILY} {NFT_TABLE} {{}}\ndelete table {NFT_FAMILY} {NFT_TABLE}\n")
    with IPRoute() as ipr:
        for r in _our_rules(ipr):
            try:
                ipr.rule("del", priority=RULE_PRIORITY, table=ROUTE_TABLE, fwmark=r.get_attr("FRA_FWMARK"))
            except NetlinkError as err:
                if err.code != errno.ENOENT:
                    raise
        try:
            ipr.flush_routes(table=ROUTE_TABLE, family=socket.AF_INET)
        except NetlinkError as err:
            if err.code not in (errno.ENOENT, errno.ESRCH):
                raise
        found = ipr.link_lookup(ifname=TUN_NAME)
        if found:
            try:
                ipr.link("del", index=found[0])
            except NetlinkError as err:
                if err.code != errno.ENODEV:
                    raise


# -- the tunnel ------------------------------------------------------------------------------------
TUNNEL_COUNTERS = ("unknown_source", "no_peer", "malformed", "send_errors", "write_errors", "incomplete")


def _counters(stats: Any) -> dict[str, int]:
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        items = dataclasses.asdict(stats).items()
    else:
        items = vars(stats).items()
    return {k: v for k, v in items if isinstance(v, int) and not isinstance(v, bool)}


class Tunnel:
    """The per-host tunnel: one TUN queue, one UDP socket, one crypto.Peer per peer address."""

    def __init__(self, config_path: str, crypto: Any = None) -> None:
        if crypto is None:
            from dataplane import crypto as crypto_module

            crypto = crypto_module
        self.crypto = crypto
        self.config_path = config_path
        self.config = load_config(config_path)
        self.tun = -1
        self.sock: socket.socket | None = None
        self.hdr = 0
        self.segment = 0  # UDP GSO segment size, 0 when off
        self._rbuf = bytearray(READ_SIZE)  # TUN reads land here (one at a time, sealed from it)
        self._rview = memoryview(self._rbuf)
        self._chunk_id = 0
        self._pending: dict[tuple[str, int], list] = {}
        self.peers: dict[str, Any] = {}  # address -> crypto.Peer
        self._peer_conf: dict[str, tuple[PeerConfig, bytes]] = {}
        self._by_dst: dict[bytes, tuple[Any, tuple[str, int]]] = {}  # packed address -> (Peer, sockaddr)
        self.counters = dict.fromkeys(TUNNEL_COUNTERS, 0)
        self._retired: dict[str, int] = {}  # counters of peers removed since the start
        self._reload = False
        self._stop = False
        self._last_stats: str | None = None

    # -- setup ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.tun, offload = open_tun(offload=self.config.offload)
        self.hdr = VNET_HDR_SIZE + ETH_HLEN if offload else 0  # what precedes the IP header
        try:
            setup_kernel(tap=offload)
            self._open_socket()
            self._apply_peers()
        except BaseException:
            self.stop()
            raise
        log.info("tunnel %s up on %s:%d, %d peers, offload %s", self.config.me, self.config.address,
                 self.config.port, len(self.peers), bool(self.hdr))

    def _open_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, self.config.socket_buffer)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, self.config.socket_buffer)
        sock.bind((self.config.address, self.config.port))
        sock.setblocking(False)
        self.segment = 0
        if self.config.offload and self.config.udp_gso:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.segment = _mtu_of(self.config.address) - 28
                sock.setsockopt(SOL_UDP, UDP_SEGMENT, self.segment)
            except OSError as err:
                log.warning("no UDP GSO/GRO (%s): large messages go out IP-fragmented", err)
                self.segment = 0
        self.sock = sock

    def _send_chunked(self, sock: socket.socket, message: bytes, sockaddr: tuple[str, int]) -> None:
        """One message as CHUNKs of the segment size, in as few GSO sends as fit. The chunks go to
        the kernel as one scatter list (header, slice, header, slice...): no joined copy."""
        size = self.segment - CHUNK.size
        count = -(-len(message) // size)
        self._chunk_id = mid = (self._chunk_id + 1) & 0xFFFFFFFF
        view = memoryview(message)
        per_send = MAX_SEND // self.segment
        pack = CHUNK.pack
        for first in range(0, count, per_send):
            parts: list = []
            for i in range(first, min(count, first + per_send)):
                parts.append(pack(CHUNK_TYPE, mid, i, count))
                parts.append(view[i * size:(i + 1) * size])
            try:
                sock.sendmsg(parts, (), 0, sockaddr)
            except OSError:
                self.counters["send_errors"] += 1

    def _pending_entry(self, key: tuple[str, int], count: int) -> list:
        """[chunks still missing, parts] of the message `key` (source, message id); a new one evicts
        the oldest when MAX_PENDING are being reassembled (counted as incomplete)."""
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= MAX_PENDING:
                del self._pending[next(iter(self._pending))]
                self.counters["incomplete"] += 1
            entry = self._pending[key] = [count, [None] * count]
        return entry

    def _chunk_run(self, source: str, view: memoryview, gso: int) -> tuple[bytes | None, int]:
        """The common case of a UDP_GRO read: it starts with a run of consecutive chunks of one
        message (one GSO send, coalesced whole; a 64 KB message takes two sends). Takes the run in one
        step: (the message if now complete, else None; bytes used, 0 if the read does not start with
        such a run, for the general path). Only the first and the last header of the run are checked:
        a message made of foreign chunks does not open (its AEAD tag) and is counted as forged, as a
        forged chunk is on the general path."""
        h = CHUNK.size
        if len(view) <= gso or view[0] != CHUNK_TYPE:
            return None, 0
        _, mid, first, count = CHUNK.unpack_from(view)
        run = min(count - first, -(-len(view) // gso))
        last = (run - 1) * gso
        if run < 2 or len(view) <= last + h or CHUNK.unpack_from(view, last) != (CHUNK_TYPE, mid, first + run - 1, count):
            return None, 0
        key = (source, mid)
        entry = self._pending_entry(key, count)
        parts = entry[1]
        if count != len(parts) or any(parts[first:first + run]):
            return None, 0
        end = min(run * gso, len(view))
        parts[first:first + run] = [view[start + h:min(start + gso, end)] for start in range(0, end, gso)]
        entry[0] -= run
        if entry[0] > 0:
            return None, end
        del self._pending[key]
        return b"".join(parts), end

    def _chunk(self, source: str, data: bytes | memoryview) -> bytes | None:
        """Collect a CHUNK; the whole message once its last chunk is in, else None."""
        if len(data) <= CHUNK.size:
            self.counters["malformed"] += 1
            return None
        _, mid, index, count = CHUNK.unpack_from(data)
        key = (source, mid)
        entry = self._pending_entry(key, count)
        parts = entry[1]
        if index >= count or count != len(parts) or parts[index] is not None:
            self.counters["malformed"] += 1
            return None
        parts[index] = memoryview(data)[CHUNK.size:]
        entry[0] -= 1
        if entry[0] > 0:
            return None
        del self._pending[key]
        return b"".join(parts)

    def _secret(self) -> bytes:
        with open(self.config.secret_file, "rb") as f:
            return f.read()

    def _apply_peers(self) -> None:
        """Make one crypto.Peer per configured peer; peers whose name, key and secret did not change
        keep their sessions."""
        cfg = self.config
        own = self.crypto.StaticKey.load_or_create(cfg.key_file)
        secret = self._secret()
        for address in list(self.peers):
            if address not in cfg.peers:
                self._retire(address)
        for address, pc in cfg.peers.items():
            key = self.crypto.pair_key(own, pc.public, secret, cfg.me, pc.name)
            if address in self.peers and self._peer_conf[address] == (pc, key):
                self.peers[address].set_rekey_after(cfg.rekey_after)
                continue
            if address in self.peers:
                self._retire(address)
            self.peers[address] = self.crypto.Peer(me=cfg.me, name=pc.name, pair_key=key, rekey_after=cfg.rekey_after)
            self._peer_conf[address] = (pc, key)
        self._by_dst = {socket.inet_aton(a): (p, (a, cfg.port)) for a, p in self.peers.items()}
        sync_peer_set(list(self.peers))

    def _retire(self, address: str) -> None:
        peer = self.peers.pop(address)
        self._peer_conf.pop(address, None)
        for k, v in _counters(peer.stats).items():
            self._retired[k] = self._retired.get(k, 0) + v

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except TunnelError as err:
            log.error("keeping the old config: %s", err)
            return
        old, self.config = self.config, new
        if (new.address, new.port, new.socket_buffer) != (old.address, old.port, old.socket_buffer):
            self._open_socket()
        try:
            self._apply_peers()
        except Exception as err:  # a bad key or secret file: keep going with what we have
            log.error("cannot apply the new peers: %r", err)
        log.info("config reloaded: %d peers", len(self.peers))

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            cleanup()
        except Exception as err:
            log.error("cleanup failed: %r", err)
        if self.tun >= 0:
            os.close(self.tun)
            self.tun = -1

    # -- the loop -------------------------------------------------------------------------------
    def _send(self, datagrams: list[bytes], sockaddr: tuple[str, int]) -> None:
        assert self.sock is not None
        for d in datagrams:
            try:
                self.sock.sendto(d, sockaddr)
            except OSError:
                self.counters["send_errors"] += 1

    def _from_tun(self) -> int:
        """Seal and send what the TUN device has (up to BATCH packets); the number read. Packets are
        read into one reused buffer and sealed from it (crypto copies what has to wait)."""
        tun, by_dst, buf, view = self.tun, self._by_dst, self._rbuf, self._rview
        sock = self.sock
        assert sock is not None
        offset = self.hdr + 16
        segment = self.segment
        readv = os.readv
        for n in range(BATCH):
            try:
                size = readv(tun, (buf,))
            except BlockingIOError:
                return n
            found = by_dst.get(bytes(view[offset:offset + 4]))
            if found is None:
                self.counters["no_peer" if size >= offset + 4 else "malformed"] += 1
                if self.counters["no_peer"] <= 5:
                    log.info("no peer for a packet from the TUN device: %s", view[:min(size, offset + 24)].hex())
                continue
            peer, sockaddr = found
            for d in peer.seal(view[:size]):
                if segment and len(d) > segment:
                    self._send_chunked(sock, d, sockaddr)
                    continue
                try:
                    sock.sendto(d, sockaddr)
                except OSError:
                    self.counters["send_errors"] += 1
        return BATCH

    def _from_socket(self) -> int:
        """Open and deliver what the UDP socket has (up to BATCH reads); the number read."""
        peers, sock = self.peers, self.sock
        assert sock is not None
        space = socket.CMSG_SPACE(4)
        for n in range(BATCH):
            try:
                data, ancillary, _flags, source = sock.recvmsg(READ_SIZE, space)
            except BlockingIOError:
                return n
            except OSError:  # e.g. ICMP errors reported on the socket
                continue
            peer = peers.get(source[0])
            if peer is None:
                self.counters["unknown_source"] += 1
                continue
            gso = 0
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    gso = int.from_bytes(value[:4], sys.byteorder)
            if gso and len(data) > gso:  # several datagrams, coalesced by UDP GRO
                view = memoryview(data)
                message, used = self._chunk_run(source[0], view, gso)
                if message is not None:
                    self._deliver(peer, source, message)
                for start in range(used, len(data), gso):
                    self._datagram(peer, source, view[start:start + gso])
            else:
                self._datagram(peer, source, data)
        return BATCH

    def _datagram(self, peer: Any, source: tuple[str, int], datagram: bytes | memoryview) -> None:
        if len(datagram) and datagram[0] == CHUNK_TYPE:
            message = self._chunk(source[0], datagram)
            if message is None:
                return
            datagram = message
        self._deliver(peer, source, datagram)

    def _deliver(self, peer: Any, source: tuple[str, int], datagram: bytes | memoryview) -> None:
        packets, replies = peer.receive(datagram)
        for p in packets:
            try:
                os.write(self.tun, p)
            except OSError as err:
                self.counters["write_errors"] += 1
                if self.counters["write_errors"] <= 5:
                    log.info("TUN refused a packet of %d bytes (%s): %s", len(p), err, p[:self.hdr + 60].hex())
        if replies:
            self._send(replies, source)

    def _tick(self) -> None:
        for address, peer in self.peers.items():
            out = peer.tick()
            if out:
                self._send(out, (address, self.config.port))

    def stats(self) -> dict:
        total = dict(self._retired)
        per_peer = {}
        for address, peer in self.peers.items():
            c = _counters(peer.stats)
            for k, v in c.items():
                total[k] = total.get(k, 0) + v
            per_peer[address] = {"name": self._peer_conf[address][0].name, "established": peer.established, **c}
        return {"me": self.config.me, "total": total, "tunnel": dict(self.counters), "peers": per_peer}

    def write_stats(self) -> None:
        path = self.config.stats_file
        if not path:
            return
        text = json.dumps(self.stats(), sort_keys=True)
        if text == self._last_stats:
            return
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        self._last_stats = text

    def run(self) -> None:
        """The loop: epoll on the TUN device and the socket (at most TICK, for the timers), then
        drain both. No busy polling: on the shared 2-core machine it made RTT and throughput worse
        (docs/encryption.md "Speed"). Signals wake the epoll through a socket pair (set_wakeup_fd), so
        a SIGHUP reload (a new peer in the nft set) is applied at once, not at the next TICK."""
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        next_tick = next_stats = time.monotonic()
        poller = select.epoll()
        polled: socket.socket | None = None
        polled_fd = -1
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        try:
            poller.register(self.tun, select.EPOLLIN)
            poller.register(wake_r.fileno(), select.EPOLLIN)
            while not self._stop:
                assert self.sock is not None
                if self.sock is not polled:  # first pass, or a reload opened a new socket
                    if polled is not None:
                        try:  # closing the old one may have removed it already (its fd may be reused)
                            poller.unregister(polled_fd)
                        except OSError:
                            pass
                    polled, polled_fd = self.sock, self.sock.fileno()
                    poller.register(polled_fd, select.EPOLLIN)
                try:
                    events = poller.poll(TICK)
                except InterruptedError:
                    events = []
                if events:
                    self._from_tun()
                    self._from_socket()
                    try:
                        while wake_r.recv(64):  # a signal's byte: its handler already ran
                            pass
                    except BlockingIOError:
                        pass
                if self._reload:
                    self._reload = False
                    self.reload()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK
                    self._tick()
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL
                    try:
                        self.write_stats()
                    except OSError as err:
                        log.warning("cannot write stats: %s", err)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            poller.close()
            wake_r.close()
            wake_w.close()
            try:
                self.write_stats()
            except OSError:
                pass
            self.stop()
            log.info("tunnel stopped, kernel state removed")

    def _on_hup(self, *_: Any) -> None:
        self._reload = True

    def _on_term(self, *_: Any) -> None:
        self._stop = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataplane.tunnel", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="the tunnel's JSON config")
    parser.add_argument("--cleanup", action="store_true", help="remove the tunnel's kernel state and exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s tunnel %(levelname)s %(message)s")
    if args.cleanup:
        cleanup()
        return 0
    if not args.config:
        parser.error("--config is required")
    try:
        tunnel = Tunnel(args.config)
        tunnel.start()
    except Exception as err:  # a bad config, key or secret file; a kernel that refuses: say so, exit 1
        log.error("cannot start the tunnel: %s", err)
        return 1
    tunnel.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
