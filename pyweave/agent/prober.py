"""The link prober (docs/routing.md, section 1): measures the underlay link to every peer.

One UDP socket bound to this host's underlay address, port 6784 (weave's data port): the same path
the VXLAN tunnels take. Every `interval` each peer gets one ping; the peer's prober answers with a
pong echoing seq and sent_ns, so the RTT is measured on the sender's clock alone. A link is **up**
after 2 pongs in a row (consecutive sequence numbers) and **down** when no pong came for
`down_after`; a link never answered is down.

The agent runs `Prober.run` in a thread, feeds it the alive hosts (`set_peers`) and, when told by
`on_change()`, reads `snapshot()` and writes its links record if `publish_due` says so.

Wire format (network byte order):

    magic b"PWP1" | kind u8 (1 = ping, 2 = pong) | seq u32 | sent_ns u64 | sender name (utf-8, rest)
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pyweave.routes import LinkView

log = logging.getLogger("pyweave.agent")

PROBE_PORT = 6784
MAGIC = b"PWP1"
PING, PONG = 1, 2
HEADER = struct.Struct("!4sBIQ")  # magic, kind, seq, sent_ns
MAX_NAME = 255  # bytes of a sender name accepted

# The publishing rule (docs/routing.md): an RTT change is worth a write when it moved by more than
# half AND by at least 1 ms, at most every RTT_WRITE_INTERVAL seconds; up/down changes at once.
RTT_CHANGE_RATIO = 0.5
RTT_CHANGE_MIN_MS = 1.0
RTT_WRITE_INTERVAL = 5.0
RTT_SMOOTHING = 0.3  # weight of a new sample in the smoothed RTT (EWMA)
SEQ_WINDOW = 1024  # a pong must echo one of the last SEQ_WINDOW pings sent to that peer
MAX_WAIT = 0.05  # longest select(): how fast run() notices `stop`
MIN_WAIT = 0.02  # shortest wait between two rounds of sends (a pong wakes it at once anyway)
# A peer's kernel that answers a ping with ICMP "port unreachable" is reachable: its agent is down
# (restarting), not the link. The kernel rate-limits those replies (a burst of 6, then 1 a second by
# default: net.ipv4.icmp_ratelimit), so such an answer keeps the link up for longer than a pong does.
KERNEL_ANSWER_GRACE = 1.5
SO_EE_ORIGIN_ICMP = 2
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # linux/in.h (the socket module has it from 3.12 on)


def encode(kind: int, seq: int, sent_ns: int, sender: str) -> bytes:
    return HEADER.pack(MAGIC, kind, seq & 0xFFFFFFFF, sent_ns & 0xFFFFFFFFFFFFFFFF) + sender.encode()


def decode(data: bytes) -> tuple[int, int, int, str] | None:
    """(kind, seq, sent_ns, sender), or None for anything that is not a well-formed probe."""
    if len(data) <= HEADER.size or len(data) > HEADER.size + MAX_NAME:
        return None
    magic, kind, seq, sent_ns = HEADER.unpack_from(data)
    if magic != MAGIC or kind not in (PING, PONG):
        return None
    try:
        sender = data[HEADER.size:].decode()
    except UnicodeDecodeError:
        return None
    return kind, seq, sent_ns, sender


def rtt_moved(old: float | None, new: float | None) -> bool:
    """Has an RTT moved enough to be published again (more than half, and at least 1 ms)?"""
    if new is None:
        return False
    if old is None:
        return True
    delta = abs(new - old)
    return delta > RTT_CHANGE_RATIO * old and delta >= RTT_CHANGE_MIN_MS


def publish_due(
    last_published: Mapping[str, LinkView] | None, now_view: Mapping[str, LinkView], last_write: float, now: float
) -> bool:
    """Should the links record be written now? At once when a link went up or down or a peer
    appeared or disappeared (or nothing was ever published); for RTT changes (`rtt_moved`) only when
    the last write is RTT_WRITE_INTERVAL seconds old. `last_write` and `now` are on one clock."""
    if last_published is None or last_published.keys() != now_view.keys():
        return True
    if any(last_published[peer].up != view.up for peer, view in now_view.items()):
        return True
    if now - last_write < RTT_WRITE_INTERVAL:
        return False
    return any(rtt_moved(last_published[peer].rtt_ms, view.rtt_ms) for peer, view in now_view.items())


@dataclass
class ProbeStats:
    """What the prober counts (for metrics and tests)."""

    pings_sent: int = 0
    pongs_sent: int = 0
    pongs_received: int = 0
    send_errors: int = 0
    malformed: int = 0  # not a probe, a bad kind or name, a pong for a ping never sent
    unknown: int = 0  # a well-formed probe from a name (or an address) that is not a peer
    kernel_answers: int = 0  # ICMP port unreachable from a peer: its kernel answered, its agent did not
    changes: dict[str, int] = field(default_factory=dict)  # peer -> up/down changes


@dataclass
class _Peer:
    address: str
    since: float  # wall time of the last up/down change (or when the peer became known)
    up: bool = False
    rtt_ms: float | None = None
    seq: int = 0  # last seq sent
    answered: int | None = None  # last seq answered
    streak: int = 0  # pongs in a row (consecutive seqs)
    last_pong: float = 0.0  # clock time of the last pong (or of the seed, for a link seeded up)
    due: float = 0.0  # clock time of the next ping
    seeded: bool = False  # up from a seed, not yet confirmed by a pong
    kernel_seen: float = float("-inf")  # clock time of the last ICMP port unreachable from the peer

    def view(self) -> LinkView:
        return LinkView(up=self.up, rtt_ms=None if self.rtt_ms is None else round(self.rtt_ms, 3), since=self.since)


class Prober:
    def __init__(
        self,
        me: str,
        address: str,
        *,
        port: int = PROBE_PORT,
        interval: float = 0.1,
        down_after: float = 0.5,
        up_after: int = 2,
        max_rate: float = 200.0,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.me = me
        self.address = address
        self.port = port
        self.interval = interval
        self.down_after = down_after
        self.up_after = up_after
        self.max_rate = max_rate
        self.on_change = on_change
        self.clock = clock
        self.wall = wall
        self.stats = ProbeStats()
        self.bound = threading.Event()  # set once the socket is bound (cleared when run() ends)
        self.bind_error: OSError | None = None  # the last failure to bind, while run() retries
        # Test hook: a packet (sender name, kind) for which it returns True is dropped on receipt.
        self.drop: Callable[[str, int], bool] | None = None
        self._lock = threading.Lock()
        self._peers: dict[str, _Peer] = {}
        self._seeded: dict[str, LinkView] = {}
        self._dirty = True  # a peer or an up/down changed since the last on_change()
        self._notified: dict[str, LinkView] | None = None
        self._notified_at = float("-inf")
        self._closed = threading.Event()
        self._sock: socket.socket | None = None

    # -- the agent's side ----------------------------------------------------------------------
    def set_peers(self, peers: Mapping[str, str]) -> None:
        """The peers to probe (name -> underlay address). Peers not named are forgotten; a peer
        whose address changed starts over (down)."""
        with self._lock:
            now, wall = self.clock(), self.wall()
            for name in list(self._peers):
                if name not in peers or peers[name] != self._peers[name].address:
                    del self._peers[name]
                    self._dirty = True
            new = [name for name in sorted(peers) if name != self.me and name not in self._peers]
            period = self._period(len(peers))
            for i, name in enumerate(new):
                peer = _Peer(address=peers[name], since=wall, due=now + period * i / max(len(new), 1))
                seed = self._seeded.get(name)
                if seed is not None:
                    self._apply_seed(peer, seed, now)
                self._peers[name] = peer
                self._dirty = True

    def seed(self, views: Mapping[str, LinkView]) -> None:
        """Start from a previously published view (after an agent restart): a link seeded up counts
        as having answered just now (it goes down only if no pong comes for down_after); a link
        seeded down keeps its `since`. Applies to the current peers and to peers named later."""
        with self._lock:
            now = self.clock()
            self._seeded = dict(views)
            for name, peer in self._peers.items():
                if name in views and peer.answered is None:
                    self._apply_seed(peer, views[name], now)
            self._notified = None  # the agent publishes its first view, seeded or not
            self._dirty = True

    def snapshot(self) -> dict[str, LinkView]:
        with self._lock:
            return {name: peer.view() for name, peer in self._peers.items()}

    @property
    def period(self) -> float:
        """Seconds between two pings to one peer: `interval`, longer when there are so many peers
        that the host would send more than `max_rate` probes a second."""
        with self._lock:
            return self._period(len(self._peers))

    def close(self) -> None:
        self._closed.set()

    # -- the thread ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Thread body: probe until `stop` is set or `close()` is called. Never raises for the
        network's sake: a bind failure is retried every second, send and receive errors are counted."""
        sock = self._bind(stop)
        if sock is None:
            return
        try:
            with self._lock:
                now = self.clock()
                for peer in self._peers.values():
                    if peer.seeded:
                        peer.last_pong = now  # the seed counts from when probing starts
            self._notify_if_due()
            while not (stop.is_set() or self._closed.is_set()):
                now = self.clock()
                self._send_due(sock, now)
                self._expire(now)
                self._notify_if_due()
                # Sends are batched in MIN_WAIT steps: with many peers, waking for each one's ping
                # (each wake-up walks every peer) cost more than the probes themselves.
                timeout = max(MIN_WAIT, min(self._next_wakeup() - self.clock(), MAX_WAIT))
                try:
                    readable, _, _ = select.select([sock], [], [], timeout)
                except (OSError, ValueError):
                    break  # the socket was closed under us
                if readable:
                    self._receive(sock)
        finally:
            self.bound.clear()
            self._sock = None
            sock.close()

    def _bind(self, stop: threading.Event) -> socket.socket | None:
        while not (stop.is_set() or self._closed.is_set()):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # ICMP errors, with their address
                sock.bind((self.address, self.port))
                sock.setblocking(False)
            except OSError as e:
                sock.close()
                if self.bind_error is None or self.bind_error.errno != e.errno:
                    log.warning("prober: cannot bind %s:%d: %s (retrying)", self.address, self.port, e)
                self.bind_error = e
                if stop.wait(1.0) or self._closed.wait(0):
                    return None
                continue
            self.bind_error = None
            self._sock = sock
            self.bound.set()
            return sock
        return None

    def _period(self, peers: int) -> float:
        return max(self.interval, peers / self.max_rate) if self.max_rate > 0 else self.interval

    def _next_wakeup(self) -> float:
        with self._lock:
            times = [p.due for p in self._peers.values()]
            times += [max(p.last_pong + self.down_after, p.kernel_seen + KERNEL_ANSWER_GRACE)
                      for p in self._peers.values() if p.up]
        return min(times, default=self.clock() + MAX_WAIT)

    def _send_due(self, sock: socket.socket, now: float) -> None:
        sends = []
        with self._lock:
            period = self._period(len(self._peers))
            for peer in self._peers.values():
                if peer.due > now:
                    continue
                peer.seq = (peer.seq + 1) & 0xFFFFFFFF
                # keep the phase; a peer far behind (a stalled thread) starts again from now
                peer.due = peer.due + period if peer.due + period > now else now + period
                sends.append((peer.address, encode(PING, peer.seq, int(self.clock() * 1e9), self.me)))
        for address, packet in sends:
            if self._sendto(sock, packet, address):
                self.stats.pings_sent += 1

    def _sendto(self, sock: socket.socket, packet: bytes, address: str) -> bool:
        try:
            sock.sendto(packet, (address, self.port))
            return True
        except OSError as e:  # ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EAGAIN, EPERM (a firewall)...
            self.stats.send_errors += 1
            if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EAGAIN, errno.EPERM):
                log.debug("prober: send to %s: %s", address, e)
            return False

    def _kernel_answers(self, sock: socket.socket) -> None:
        """Drain the socket's error queue: an ICMP port unreachable from a peer's address means its
        kernel is there (the path works) while nothing listens: its agent is restarting."""
        for _ in range(256):
            try:
                _data, ancdata, _flags, address = sock.recvmsg(64, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            for level, kind, payload in ancdata:
                if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(payload) < 8:
                    continue
                ee_errno, ee_origin = struct.unpack_from("=IB", payload)
                if ee_errno != errno.ECONNREFUSED or ee_origin != SO_EE_ORIGIN_ICMP:
                    continue
                now = self.clock()
                with self._lock:
                    for peer in self._peers.values():
                        if peer.address == address[0]:
                            peer.kernel_seen = now
                            self.stats.kernel_answers += 1

    def _receive(self, sock: socket.socket) -> None:
        self._kernel_answers(sock)
        for _ in range(1024):  # drain what is queued, but come back to sending in time
            try:
                data, (src, _port) = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error reported on the socket: nothing to read
                continue
            probe = decode(data)
            if probe is None:
                self.stats.malformed += 1
                continue
            kind, seq, sent_ns, sender = probe
            if self.drop is not None and self.drop(sender, kind):
                continue
            with self._lock:
                peer = self._peers.get(sender)
                known = peer is not None and peer.address == src
            if not known:
                self.stats.unknown += 1
                continue
            if kind == PING:
                if self._sendto(sock, encode(PONG, seq, sent_ns, self.me), src):
                    self.stats.pongs_sent += 1
            else:
                self._pong(sender, seq, sent_ns)

    def _pong(self, sender: str, seq: int, sent_ns: int) -> None:
        now = self.clock()
        rtt_ms = (now - sent_ns / 1e9) * 1e3
        notify = False
        with self._lock:
            peer = self._peers.get(sender)
            if peer is None:
                return
            behind = (peer.seq - seq) & 0xFFFFFFFF
            if behind >= SEQ_WINDOW or rtt_ms < 0:
                self.stats.malformed += 1
                return
            self.stats.pongs_received += 1
            ahead = None if peer.answered is None else (seq - peer.answered) & 0xFFFFFFFF
            if ahead == 1:
                peer.streak += 1
            elif ahead is None or 0 < ahead < SEQ_WINDOW:
                peer.streak = 1  # the first pong, or a newer one after a gap: a new row begins
            else:
                return  # a duplicate, or a late pong for an older ping: no news
            peer.answered = seq
            peer.last_pong = now
            peer.kernel_seen = float("-inf")  # its agent answers again
            peer.seeded = False
            peer.rtt_ms = rtt_ms if peer.rtt_ms is None else (1 - RTT_SMOOTHING) * peer.rtt_ms + RTT_SMOOTHING * rtt_ms
            if not peer.up and peer.streak >= self.up_after:
                self._flip(sender, peer, True)
            elif self._notified is not None and now - self._notified_at >= RTT_WRITE_INTERVAL:
                old = self._notified.get(sender)
                notify = old is not None and rtt_moved(old.rtt_ms, peer.view().rtt_ms)
        if notify:
            self._notify()

    def _expire(self, now: float) -> None:
        with self._lock:
            for name, peer in self._peers.items():
                if peer.up and now - peer.last_pong > self.down_after and now - peer.kernel_seen > KERNEL_ANSWER_GRACE:
                    self._flip(name, peer, False)

    def _flip(self, name: str, peer: _Peer, up: bool) -> None:
        """With the lock held: a link goes up or down."""
        peer.up = up
        peer.since = self.wall()
        peer.seeded = False
        if not up:
            peer.streak = 0
        self.stats.changes[name] = self.stats.changes.get(name, 0) + 1
        self._dirty = True
        log.info("link %s -> %s %s%s", self.me, name, "up" if up else "down",
                 f" (rtt {peer.rtt_ms:.2f} ms)" if up and peer.rtt_ms is not None else "")

    def _apply_seed(self, peer: _Peer, view: LinkView, now: float) -> None:
        peer.up = view.up
        peer.since = view.since
        peer.rtt_ms = view.rtt_ms
        peer.seeded = view.up
        if view.up:
            peer.last_pong = now

    def _notify_if_due(self) -> None:
        with self._lock:
            due = self._dirty
        if due:
            self._notify()

    def _notify(self) -> None:
        with self._lock:
            self._dirty = False
            self._notified = {name: peer.view() for name, peer in self._peers.items()}
            self._notified_at = self.clock()
        try:
            self.on_change()
        except Exception:
            log.exception("prober: on_change failed")
