"""The link prober (docs/routing.md, section 1): measures the underlay link to every peer.

One UDP socket bound to this host's underlay address, port 6784 (weave's data port): the same path
the VXLAN tunnels take. Every `interval` each peer gets one **hello**; a hello also echoes the last
hello heard from that peer (its seq and sent_ns, and how long it was held before this one went out),
the way BFD's control packets carry the other side's state. So one packet each way per interval
measures both directions: an echo of one of this host's hellos proves a round trip (RTT = now -
echoed sent_ns - held time, the peer's clock used only for a duration); no echo with news for
`down_after` takes the link down, whichever direction broke. A link is **up** after 2 echoes of
consecutive sequence numbers; a link never answered is down. A hello is answered at once (by a
hello of the answerer's, repeating its last seq) when it asks (flag ANSWER: the sender's link is not
up yet) or when it echoes nothing (its sender has heard nothing from this host: it just started, or
restarted). Such an answer asks back only in the second case, so that the starting host answers at
once too and its peers get their news within a round trip, not an interval later; an answer always
echoes, so answers end after two: a link comes up within an interval or two, and an agent restart
does not leave its peers without news for longer than the ICMP answers of its kernel kept them.
("At once" when the hello is read: a prober whose links are all steady reads at its next round, at
most an interval later, and from then on reads as hellos come; see Cost.)

Against a ping answered by a pong from both sides (4 packets a peer a interval: 2 sent, 2 received,
each a system call and a Python wake-up), a hello is 2; with the longer interval (0.2 s, down after
0.6 s: re-routing still within a second) the prober costs a quarter of what it did.

The agent runs `Prober.run` in a thread, feeds it the alive hosts (`set_peers`) and, when told by
`on_change()`, reads `snapshot()` and writes its links record if `publish_due` says so.

Cost: a wake-up costs what is due, never a walk over every peer. The hellos wait in a heap by due
time and the up links in a heap by the time they would go down (a link's deadline only moves later,
so an entry is checked when it comes up and pushed back if news came meanwhile). The thread sleeps
in one poll() until the next round or a wake from `set_peers`/`close`. A round sends the hellos due
within MIN_WAIT and, unless the rate cap stretched the period, those due within half an interval
(peers fall into one phase), reads every hello that came since (each timed by its arrival, the
kernel's SO_TIMESTAMPNS, so a late read adds nothing to an RTT or a held time) and takes down the
links past their deadline: while links are steady, one wake-up per interval whatever the number of
peers. For QUICK_INTERVALS after something wants answers within a round trip (a hello that asks or
echoes nothing, or from a peer whose link is not up, new peers) the socket is polled too and each
hello read as it comes, and down deadlines wake the thread on time. Thousands of peers (say, hosts
that never answer) cost about max_rate sends a second and nothing more. `snapshot()` is rebuilt
only after a change.

Wire format (network byte order):

    magic b"PWP2" | flags u8 (1 = ANSWER: answer now; 2 = ECHO: the echo fields are set)
    | seq u32 | sent_ns u64 | echo_seq u32 | echo_sent_ns u64 | held_us u32 | sender name (utf-8, rest)
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
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
MAGIC = b"PWP2"
ANSWER, ECHO = 1, 2  # flags: answer this hello at once; the echo fields carry the last hello heard
HEADER = struct.Struct("!4sBIQIQI")  # magic, flags, seq, sent_ns, echo_seq, echo_sent_ns, held_us
MAX_NAME = 255  # bytes of a sender name accepted
MAX_HELD_US = 0xFFFFFFFF

# The publishing rule (docs/routing.md): an RTT change is worth a write when it moved by more than
# half AND by at least 1 ms, at most every RTT_WRITE_INTERVAL seconds; up/down changes at once.
RTT_CHANGE_RATIO = 0.5
RTT_CHANGE_MIN_MS = 1.0
RTT_WRITE_INTERVAL = 5.0
RTT_SMOOTHING = 0.3  # weight of a new sample in the smoothed RTT (EWMA)
SEQ_WINDOW = 1024  # an echo must name one of the last SEQ_WINDOW hellos sent to that peer
MAX_WAIT = 0.5  # longest sleep: how fast run() notices the agent's `stop` (close() wakes it at once)
MIN_WAIT = 0.02  # hellos due this soon go out with the round being sent (one wake-up for many peers)
QUICK_INTERVALS = 3  # how long (in intervals) hellos are read as they come after something asked for it
THREAD_NAME = "pyweave-prober"  # the kernel's name of the thread (/proc/<pid>/task/<tid>/comm)
# A peer's kernel that answers a hello with ICMP "port unreachable" is reachable: its agent is down
# (restarting), not the link. The kernel rate-limits those replies (a burst of 6, then 1 a second by
# default: net.ipv4.icmp_ratelimit), so such an answer keeps the link up for longer than an echo does.
KERNEL_ANSWER_GRACE = 1.5
SO_EE_ORIGIN_ICMP = 2
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # linux/in.h (the socket module has it from 3.12 on)
SO_TIMESTAMPNS = 35  # asm-generic/socket.h (SO_TIMESTAMPNS_OLD): each datagram's arrival, a struct timespec
TIMESPEC = struct.Struct("@qq")
TIMESTAMP_SPACE = socket.CMSG_SPACE(TIMESPEC.size)


@dataclass(frozen=True)
class Hello:
    flags: int
    seq: int
    sent_ns: int
    sender: str
    echo_seq: int = 0
    echo_sent_ns: int = 0
    held_us: int = 0

    @property
    def echo(self) -> bool:
        return bool(self.flags & ECHO)

    @property
    def answer(self) -> bool:
        return bool(self.flags & ANSWER)


def encode(hello: Hello) -> bytes:
    return HEADER.pack(
        MAGIC, hello.flags & 0xFF, hello.seq & 0xFFFFFFFF, hello.sent_ns & 0xFFFFFFFFFFFFFFFF,
        hello.echo_seq & 0xFFFFFFFF, hello.echo_sent_ns & 0xFFFFFFFFFFFFFFFF, min(max(hello.held_us, 0), MAX_HELD_US),
    ) + hello.sender.encode()


def decode(data: bytes) -> Hello | None:
    """The hello, or None for anything that is not a well-formed one."""
    if len(data) <= HEADER.size or len(data) > HEADER.size + MAX_NAME:
        return None
    magic, flags, seq, sent_ns, echo_seq, echo_sent_ns, held_us = HEADER.unpack_from(data)
    if magic != MAGIC or flags & ~(ANSWER | ECHO):
        return None
    try:
        sender = data[HEADER.size:].decode()
    except UnicodeDecodeError:
        return None
    return Hello(flags, seq, sent_ns, sender, echo_seq, echo_sent_ns, held_us)


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

    hellos_sent: int = 0  # on schedule and answers
    answers_sent: int = 0  # hellos sent at once because the peer asked (ANSWER)
    hellos_received: int = 0  # from known peers
    echoes: int = 0  # echoes with news: one of this host's hellos came back
    send_errors: int = 0
    malformed: int = 0  # not a hello, bad flags or name, an echo of a hello never sent
    unknown: int = 0  # a well-formed hello from a name (or an address) that is not a peer
    kernel_answers: int = 0  # ICMP port unreachable from a peer: its kernel answered, its agent did not
    changes: dict[str, int] = field(default_factory=dict)  # peer -> up/down changes


@dataclass
class _Peer:
    address: str
    since: float  # wall time of the last up/down change (or when the peer became known)
    up: bool = False
    rtt_ms: float | None = None
    seq: int = 0  # last seq sent
    answered: int | None = None  # last seq echoed with news
    streak: int = 0  # echoes in a row (consecutive seqs)
    last_news: float = 0.0  # clock time of the last echo with news (or of the seed, for a link seeded up)
    due: float = 0.0  # clock time of the next hello
    seeded: bool = False  # up from a seed, not yet confirmed by an echo
    kernel_seen: float = float("-inf")  # clock time of the last ICMP port unreachable from the peer
    expiry_queued: bool = False  # has an entry in the prober's heap of down deadlines
    heard: Hello | None = None  # the last hello heard from the peer (echoed in the next one sent)
    heard_at: float = 0.0  # clock time it came

    def view(self) -> LinkView:
        return LinkView(up=self.up, rtt_ms=None if self.rtt_ms is None else round(self.rtt_ms, 3), since=self.since)


class Prober:
    def __init__(
        self,
        me: str,
        address: str,
        *,
        port: int = PROBE_PORT,
        interval: float = 0.2,
        down_after: float = 0.6,
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
        self.wakeups = 0  # times run() woke up (for the benchmarks and tests)
        # Test hook: a hello for which it returns True is dropped on receipt.
        self.drop: Callable[[Hello], bool] | None = None
        self._lock = threading.Lock()
        self._peers: dict[str, _Peer] = {}
        self._by_address: dict[str, list[str]] = {}  # underlay address -> peers (ICMP answers name none)
        self._seeded: dict[str, LinkView] = {}
        # (due, order, name, peer): one entry per peer; an entry whose peer was forgotten is skipped
        self._hellos: list[tuple[float, int, str, _Peer]] = []
        # (deadline, order, name, peer): up links, by when they go down unless news comes
        self._deadlines: list[tuple[float, int, str, _Peer]] = []
        self._order = itertools.count()
        self._dirty = True  # a peer or an up/down changed since the last on_change()
        self._notified: dict[str, LinkView] | None = None
        self._notified_at = float("-inf")
        self._views: dict[str, LinkView] | None = None  # snapshot(), until something changes
        self._up: frozenset[str] | None = None  # up_peers(), until a link goes up or down
        self._quick_until = float("-inf")  # clock time until which run() reads each hello as it comes
        self._closed = threading.Event()
        self._sock: socket.socket | None = None
        self._wake_fd: int | None = None  # write end of the pipe run() polls with the socket

    # -- the agent's side ----------------------------------------------------------------------
    def set_peers(self, peers: Mapping[str, str]) -> None:
        """The peers to probe (name -> underlay address). Peers not named are forgotten; a peer
        whose address changed starts over (down). New peers are spread at max_rate."""
        with self._lock:
            changed = False
            for name in [n for n, p in self._peers.items() if peers.get(n) != p.address]:
                del self._peers[name]
                changed = True
            new = [name for name in sorted(peers) if name != self.me and name not in self._peers]
            now, wall = self.clock(), self.wall()
            step = 1.0 / self.max_rate if self.max_rate > 0 else 0.0
            for i, name in enumerate(new):
                peer = _Peer(address=peers[name], since=wall, due=now + step * i)
                self._peers[name] = peer
                heapq.heappush(self._hellos, (peer.due, next(self._order), name, peer))
                seed = self._seeded.get(name)
                if seed is not None:
                    self._apply_seed(name, peer, seed, now)
            if new:
                self._hurry(now)
            if changed or new:
                self._dirty = True
                self._views = self._up = None
                self._reindex()
        if new:
            self._wake()

    def seed(self, views: Mapping[str, LinkView]) -> None:
        """Start from a previously published view (after an agent restart): a link seeded up counts
        as having answered just now (it goes down only if no echo comes for down_after); a link
        seeded down keeps its `since`. Applies to the current peers and to peers named later."""
        with self._lock:
            now = self.clock()
            self._seeded = dict(views)
            for name, peer in self._peers.items():
                if name in views and peer.answered is None:
                    self._apply_seed(name, peer, views[name], now)
            self._notified = None  # the agent publishes its first view, seeded or not
            self._dirty = True
            self._views = self._up = None

    def snapshot(self) -> Mapping[str, LinkView]:
        """Every peer's link (read-only: the same mapping is handed out until a change). Up/down
        and peers are as they are now; RTTs as of the last change or of the last time one moved
        enough to be published (`rtt_moved`, then on_change() is called): an echo that only
        refines an RTT does not make every reader walk the peers again."""
        with self._lock:
            return self._current_views()

    def up_peers(self) -> frozenset[str]:
        """The peers whose link is up (the same set until one goes up or down, or peers change)."""
        with self._lock:
            if self._up is None:
                self._up = frozenset(name for name, peer in self._peers.items() if peer.up)
            return self._up

    @property
    def period(self) -> float:
        """Seconds between two hellos to one peer: `interval`, longer when there are so many peers
        that the host would send more than `max_rate` hellos a second."""
        with self._lock:
            return self._period(len(self._peers))

    def close(self) -> None:
        self._closed.set()
        self._wake()

    # -- the thread ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Thread body: probe until `stop` is set or `close()` is called. Never raises for the
        network's sake: a bind failure is retried every second, send and receive errors are counted."""
        _name_thread(THREAD_NAME)
        sock = self._bind(stop)
        if sock is None:
            return
        wake_r, self._wake_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        listening = False  # the socket is in the poll set (quick mode); POLLERR would come unasked
        try:
            with self._lock:
                now = self.clock()
                for peer in self._peers.values():
                    if peer.seeded:
                        peer.last_news = now  # the seed counts from when probing starts
            self._notify_if_due()
            while not (stop.is_set() or self._closed.is_set()):
                self._receive(sock)  # what came since the last wake-up, each at its arrival time
                self._kernel_answers(sock)
                now = self.clock()
                self._expire(now)
                self._send_due(sock, now)
                self._notify_if_due()
                quick = self._quick_until > now
                if quick != listening:
                    if quick:
                        poller.register(sock, select.POLLIN)
                    else:
                        poller.unregister(sock)
                    listening = quick
                timeout = min(self._next_wakeup(now, quick=quick) - self.clock(), MAX_WAIT)
                try:
                    events = poller.poll(max(timeout, 0.0) * 1000)
                except (OSError, ValueError):
                    break  # the socket was closed under us
                self.wakeups += 1
                if any(fd == wake_r for fd, _mask in events):
                    _drain(wake_r)
        finally:
            self.bound.clear()
            self._sock = None
            wake_w, self._wake_fd = self._wake_fd, None
            for fd in (wake_r, wake_w):
                if fd is not None:
                    os.close(fd)
            sock.close()

    def _wake(self) -> None:
        """Make run() look again now (peers came, or close())."""
        fd = self._wake_fd
        if fd is None:
            return
        try:
            os.write(fd, b"w")
        except OSError:  # full (a wake is pending anyway) or closed (run() ended)
            pass

    def _bind(self, stop: threading.Event) -> socket.socket | None:
        while not (stop.is_set() or self._closed.is_set()):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # ICMP errors, with their address
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # read late, timed right
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

    def _deadline(self, peer: _Peer) -> float:
        """When an up link goes down if no echo (nor kernel answer) comes before: `down_after`, as
        many periods as it is intervals when many peers stretch the period (else a link would go down
        between two hellos)."""
        down_after = self.down_after * self._period(len(self._peers)) / self.interval
        return max(peer.last_news + down_after, peer.kernel_seen + KERNEL_ANSWER_GRACE)

    def _next_wakeup(self, now: float, *, quick: bool = True) -> float:
        """The next hello due; in quick mode also the next down deadline (else deadlines are
        looked at with the hellos: a link goes down at most a period after its deadline)."""
        with self._lock:
            heaps = (self._hellos, self._deadlines) if quick or not self._hellos else (self._hellos,)
            times = [heap[0][0] for heap in heaps if heap]
        return min(times, default=now + MAX_WAIT)

    def _hurry(self, now: float) -> None:
        """With the lock held: something wants answers within a round trip (a link coming up, a
        peer that asked): read every hello as it comes for QUICK_INTERVALS intervals."""
        self._quick_until = max(self._quick_until, now + QUICK_INTERVALS * self.interval)

    def _hello(self, peer: _Peer, now: float, *, scheduled: bool, answer: bool = False) -> bytes:
        """With the lock held: a hello to `peer`, echoing what was heard. A scheduled one takes the
        next seq; an answer repeats the last (so the echoes of scheduled hellos follow each other and
        `up_after` in a row means that many intervals answered, whatever answers went between)."""
        if scheduled:
            peer.seq = (peer.seq + 1) & 0xFFFFFFFF
        heard = peer.heard
        flags = ANSWER if answer else 0
        if heard is None:
            return encode(Hello(flags, peer.seq, int(now * 1e9), self.me))
        held_us = int((now - peer.heard_at) * 1e6)
        return encode(Hello(flags | ECHO, peer.seq, int(now * 1e9), self.me, heard.seq, heard.sent_ns, held_us))

    def _send_due(self, sock: socket.socket, now: float) -> None:
        sends = []
        with self._lock:
            period = self._period(len(self._peers))
            hellos, peers = self._hellos, self._peers
            if not hellos or hellos[0][0] > now + MIN_WAIT:
                return
            # A round is due. Unless the rate cap stretched the period, hellos due within half an
            # interval come along: peers that became known at different times fall into one phase
            # after two rounds, and the thread wakes once an interval for all of them.
            align = period <= self.interval
            horizon = now + (self.interval / 2 if align else MIN_WAIT)
            while hellos and hellos[0][0] <= horizon:
                _due, _order, name, peer = heapq.heappop(hellos)
                if peers.get(name) is not peer:
                    continue  # forgotten, or started over
                # keep the phase (a hello pulled in early takes the round's); a peer far behind (a
                # stalled thread) starts again from now
                early = align and peer.due > now
                peer.due = now + period if early or peer.due + period <= now else peer.due + period
                heapq.heappush(hellos, (peer.due, next(self._order), name, peer))
                # a link not up (or only seeded) asks to be answered at once
                sends.append((peer.address, self._hello(peer, self.clock(), scheduled=True, answer=not peer.up or peer.seeded)))
        for address, packet in sends:
            if self._sendto(sock, packet, address):
                self.stats.hellos_sent += 1

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
                    for name in self._by_address.get(address[0], ()):
                        self._peers[name].kernel_seen = now
                        self.stats.kernel_answers += 1

    def _receive(self, sock: socket.socket) -> None:
        """Read what is queued. A hello counts from when it arrived (the kernel's time stamp), not
        from when it is read: between rounds hellos wait in the socket, and an RTT or a held time
        measured from the read would add that wait."""
        wall, now = time.time(), self.clock()
        for _ in range(1024):  # drain what is queued, but come back to sending in time
            try:
                data, ancdata, _flags, (src, _port) = sock.recvmsg(2048, TIMESTAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error reported on the socket: nothing to read
                continue
            at = now
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= TIMESPEC.size:
                    sec, nsec = TIMESPEC.unpack_from(payload)
                    at = now - min(max(wall - (sec + nsec * 1e-9), 0.0), 60.0)
            hello = decode(data)
            if hello is None:
                self.stats.malformed += 1
                continue
            if self.drop is not None and self.drop(hello):
                continue
            answer, notify = self._heard(hello, src, at)
            if answer is not None and self._sendto(sock, answer, src):
                self.stats.hellos_sent += 1
                self.stats.answers_sent += 1
            if notify:
                self._notify()

    def _heard(self, hello: Hello, src: str, at: float | None = None) -> tuple[bytes | None, bool]:
        """A hello came from `src` at clock time `at` (now if not given): remember it (for the echo
        in the next hello), take the news its echo brings, and build the answer it asks for (or that
        a hello echoing nothing needs). Returns (answer to send or None, notify)."""
        sending = self.clock()
        now = sending if at is None else at
        with self._lock:
            peer = self._peers.get(hello.sender)
            if peer is None or peer.address != src:
                self.stats.unknown += 1
                return None, False
            self.stats.hellos_received += 1
            peer.heard, peer.heard_at = hello, now
            notify = self._echoed(hello.sender, peer, hello, now) if hello.echo else False
            # Answered at once when asked, or when the sender has heard nothing from here (it gets no
            # news from its own hellos until it echoes one of ours: ask it to, now). An answer echoes
            # this hello, so it never draws an answer that asks again: at most two answers in a row.
            fresh = not hello.echo
            answer = self._hello(peer, sending, scheduled=False, answer=fresh) if hello.answer or fresh else None
            if answer is not None or not peer.up or peer.seeded:
                self._hurry(sending)  # a link coming up (either side): answers within a round trip
        return answer, notify

    def _echoed(self, name: str, peer: _Peer, hello: Hello, now: float) -> bool:
        """With the lock held: one of this host's hellos came back. True when the links record may
        be worth a write for the RTT (up/down changes mark the prober dirty instead)."""
        behind = (peer.seq - hello.echo_seq) & 0xFFFFFFFF
        rtt_ms = (now - hello.echo_sent_ns / 1e9 - hello.held_us / 1e6) * 1e3
        if behind >= SEQ_WINDOW or rtt_ms < -1.0:  # a hello never sent, or an impossible time
            self.stats.malformed += 1
            return False
        ahead = None if peer.answered is None else (hello.echo_seq - peer.answered) & 0xFFFFFFFF
        if ahead == 1:
            peer.streak += 1
        elif ahead is None or 0 < ahead < SEQ_WINDOW:
            peer.streak = 1  # the first echo, or a newer one after a gap: a new row begins
        else:
            return False  # the same echo again, or an older one: no news
        self.stats.echoes += 1
        rtt_ms = max(rtt_ms, 0.0)
        peer.answered = hello.echo_seq
        peer.last_news = now  # its deadline moves later: the heap entry is checked when due
        peer.kernel_seen = float("-inf")  # its agent answers again
        peer.seeded = False
        if peer.rtt_ms is None:
            peer.rtt_ms = rtt_ms
            self._views = None  # its first RTT: a link that answered is listed (up or not)
        else:
            peer.rtt_ms = (1 - RTT_SMOOTHING) * peer.rtt_ms + RTT_SMOOTHING * rtt_ms
        if not peer.up and peer.streak >= self.up_after:
            self._flip(name, peer, True)
        elif self._notified is not None and now - self._notified_at >= RTT_WRITE_INTERVAL:
            old = self._notified.get(name)
            if old is not None and rtt_moved(old.rtt_ms, peer.view().rtt_ms):
                self._views = None  # the snapshot shows RTTs worth publishing
                return True
        return False

    def _expire(self, now: float) -> None:
        """Links whose deadline passed go down; a deadline that moved (news came) is queued again."""
        with self._lock:
            deadlines, peers = self._deadlines, self._peers
            while deadlines and deadlines[0][0] < now:
                _at, _order, name, peer = heapq.heappop(deadlines)
                peer.expiry_queued = False
                if peers.get(name) is not peer or not peer.up:
                    continue
                deadline = self._deadline(peer)
                if now > deadline:
                    self._flip(name, peer, False)
                else:
                    self._queue_deadline(name, peer, deadline)

    def _queue_deadline(self, name: str, peer: _Peer, deadline: float) -> None:
        """With the lock held: an up link gets its (single) entry in the heap of deadlines."""
        if not peer.expiry_queued:
            peer.expiry_queued = True
            heapq.heappush(self._deadlines, (deadline, next(self._order), name, peer))

    def _reindex(self) -> None:
        """With the lock held, after peers changed: the address index, and the heaps rebuilt
        without the entries of forgotten peers once those are half of them."""
        self._by_address = {}
        for name, peer in self._peers.items():
            self._by_address.setdefault(peer.address, []).append(name)
        if len(self._hellos) > 2 * len(self._peers) + 64:
            self._hellos = [entry for entry in self._hellos if self._peers.get(entry[2]) is entry[3]]
            heapq.heapify(self._hellos)
        if len(self._deadlines) > 2 * len(self._peers) + 64:
            for entry in self._deadlines:
                entry[3].expiry_queued = False
            self._deadlines = []
            for name, peer in self._peers.items():
                if peer.up:
                    self._queue_deadline(name, peer, self._deadline(peer))

    def _flip(self, name: str, peer: _Peer, up: bool) -> None:
        """With the lock held: a link goes up or down."""
        peer.up = up
        peer.since = self.wall()
        peer.seeded = False
        if up:
            self._queue_deadline(name, peer, self._deadline(peer))
        else:
            peer.streak = 0
        self.stats.changes[name] = self.stats.changes.get(name, 0) + 1
        self._dirty = True
        self._views = self._up = None
        log.info("link %s -> %s %s%s", self.me, name, "up" if up else "down",
                 f" (rtt {peer.rtt_ms:.2f} ms)" if up and peer.rtt_ms is not None else "")

    def _apply_seed(self, name: str, peer: _Peer, view: LinkView, now: float) -> None:
        peer.up = view.up
        peer.since = view.since
        peer.rtt_ms = view.rtt_ms
        peer.seeded = view.up
        if view.up:
            peer.last_news = now
            self._queue_deadline(name, peer, self._deadline(peer))

    def _current_views(self) -> dict[str, LinkView]:
        """With the lock held: every peer's view, built again only after a change."""
        if self._views is None:
            self._views = {name: peer.view() for name, peer in self._peers.items()}
        return self._views

    def _notify_if_due(self) -> None:
        with self._lock:
            due = self._dirty
        if due:
            self._notify()

    def _notify(self) -> None:
        with self._lock:
            self._dirty = False
            self._notified = self._current_views()
            self._notified_at = self.clock()
        try:
            self.on_change()
        except Exception:
            log.exception("prober: on_change failed")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except OSError:  # empty (EAGAIN)
        pass


def _name_thread(name: str) -> None:
    """Give the calling thread a name the kernel shows (ps -L, /proc/<pid>/task/<tid>/comm), so
    its CPU can be told apart from the agent's other threads. Best effort."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass
