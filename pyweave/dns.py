"""weaveDNS for pyweave: every agent answers for the cluster's names, from its etcd mirror.

Records are published by each agent for its running containers (`dns/<host>/<container>`, bound to
the host's lease), so a name disappears everywhere when its container stops or its host dies. The
agent answers at `SERVICE_ADDRESS` (a link-local address on the host's loopback; each container
gets a /32 route to it through its `ethwe`), over UDP and TCP:
- names in the domain (default `weave.local.`): every address of the name, shuffled per answer,
  case-insensitive, TTL 1 s; an unknown name is NXDOMAIN;
- PTR for addresses it knows; everything else is forwarded to the host's upstream resolvers, or
  refused (REFUSED) when forwarding is off (`pyweave launch --dns-no-forward`).
Library: dnslib for the messages and the request handler (subclassed for EDNS-sized UDP answers).
Its servers start one thread per query, without bound; ours are socketserver's plain servers that
hand each query to a fixed pool of workers (`WorkerPool`) through a bounded queue, after a per-source
token bucket (`SourceRateLimiter`). A query over either limit is dropped, as a busy resolver does:
the client retries. So a container flooding the resolver costs the agent a bounded number of
threads and a bounded share of them, and its reconcile loop keeps running.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import random
import socket
import socketserver
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dnslib import PTR, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger

from pyweave.dnsnames import DEFAULT_DOMAIN, SERVICE_ADDRESS, names_of, normalise_domain
from pyweave.serving import Quiet

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DOMAIN", "SERVICE_ADDRESS", "DnsIndex", "DnsService", "SourceRateLimiter", "WeaveResolver",
    "WorkerPool", "names_of", "normalise_domain",
]

DEFAULT_TTL = 1
# Workers answering queries, for UDP and TCP together, and the queries waiting for one. A worker
# may wait up to FORWARD_TIMEOUT per upstream on a forwarded name, so the queue is what absorbs a
# burst; beyond it queries are dropped.
DEFAULT_WORKERS = 8
DEFAULT_QUEUE = 256
# Per source address: a sustained rate and a burst, in queries per second. A container resolving
# names for every connection it opens stays far below; a flood does not.
DEFAULT_RATE = 200.0
DEFAULT_BURST = 400.0
MAX_SOURCES = 4096  # sources remembered by the rate limiter; the least recently seen is forgotten
FORWARD_TIMEOUT = 2.0
TCP_TIMEOUT = 5.0  # a TCP client that sends its query slower than this loses its worker


@dataclass
class DnsIndex:
    """Names to addresses and back. Kept current record by record (`add`, `remove`): a name with
    several records keeps each address once, until its last record goes."""

    by_name: dict[str, list[str]] = field(default_factory=dict)
    by_ip: dict[str, list[str]] = field(default_factory=dict)
    _count: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, str]]) -> DnsIndex:
        index = cls()
        index.add(records)
        return index

    def add(self, records: Iterable[tuple[str, str]]) -> None:
        for name, ip in records:
            name = name.lower()
            n = self._count.get((name, ip), 0)
            self._count[(name, ip)] = n + 1
            if n == 0:
                self.by_name.setdefault(name, []).append(ip)
                self.by_ip.setdefault(ip, []).append(name)

    def remove(self, records: Iterable[tuple[str, str]]) -> None:
        for name, ip in records:
            name = name.lower()
            n = self._count.get((name, ip), 0)
            if n > 1:
                self._count[(name, ip)] = n - 1
            elif n == 1:
                del self._count[(name, ip)]
                _drop(self.by_name, name, ip)
                _drop(self.by_ip, ip, name)


def _drop(index: dict[str, list[str]], key: str, value: str) -> None:
    # A new list, not an edit in place: a resolver thread may be reading the old one.
    rest = [v for v in index.get(key, ()) if v != value]
    if rest:
        index[key] = rest
    else:
        index.pop(key, None)


def reverse_to_ip(qname: str) -> str | None:
    labels = qname.lower().rstrip(".").split(".")
    if len(labels) != 6 or labels[-2:] != ["in-addr", "arpa"]:
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
    except ValueError:
        return None


def upstream_servers(path: str = "/etc/resolv.conf") -> list[str]:
    """Nameservers of the host, without ourselves (a loop) and without IPv6 ones."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] != SERVICE_ADDRESS:
                    try:
                        ipaddress.IPv4Address(parts[1])
                    except ValueError:
                        continue
                    out.append(parts[1])
    except OSError:
        pass
    return out


class WeaveResolver(BaseResolver):
    def __init__(
        self,
        index: Callable[[], DnsIndex],
        *,
        domain: str = DEFAULT_DOMAIN,
        upstreams: list[str] | None = None,
        forward: bool = True,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        """forward: False answers REFUSED for names outside the domain instead of asking upstreams."""
        self.index = index
        self.domain = normalise_domain(domain)
        self.upstreams = upstreams or []
        self.forward_enabled = forward
        self.ttl = ttl

    def in_domain(self, qname: str) -> bool:
        return qname == self.domain or qname.endswith("." + self.domain)

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        qname = str(request.q.qname).lower()
        qtype = request.q.qtype
        reply = request.reply()
        if self.in_domain(qname):
            ips = list(self.index().by_name.get(qname, []))
            if not ips:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            if qtype in (QTYPE.A, QTYPE.ANY):
                random.shuffle(ips)
                for ip in ips:
                    reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=self.ttl))
            return reply
        if qtype == QTYPE.PTR:
            reversed_ip = reverse_to_ip(qname)
            names = self.index().by_ip.get(reversed_ip or "", [])
            if names:
                for name in names:
                    reply.add_answer(RR(request.q.qname, QTYPE.PTR, rdata=PTR(name), ttl=self.ttl))
                return reply
        if not self.forward_enabled:
            reply.header.rcode = RCODE.REFUSED
            return reply
        return self.forward(request, tcp=getattr(handler, "protocol", "udp") == "tcp")

    def forward(self, request: DNSRecord, *, tcp: bool) -> DNSRecord:
        for upstream in self.upstreams:
            try:
                raw = request.send(upstream, 53, tcp=tcp, timeout=FORWARD_TIMEOUT)
                return DNSRecord.parse(raw)
            except (TimeoutError, OSError, Exception) as err:  # noqa: BLE001 - try the next upstream
                log.debug("upstream %s failed: %s", upstream, err)
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return reply


class _Handler(DNSHandler):
    """UDP answers up to the client's EDNS buffer size (512 without EDNS), truncated beyond, so
    large answer sets come back complete to EDNS clients and over TCP."""

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        rdata = reply.pack()
        if self.protocol == "udp":
            limit = 512
            for rr in request.ar:
                if rr.rtype == QTYPE.OPT:
                    limit = max(512, min(int(rr.rclass), 65000))
            if len(rdata) > limit:
                rdata = reply.truncate().pack()
        return rdata


class _QuietLogger(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data")


class SourceRateLimiter:
    """A token bucket per source address: `rate` queries per second sustained, `burst` at once.
    Remembers at most `max_sources` sources (least recently seen forgotten first), so a spoofed
    flood from many addresses costs bounded memory. Thread-safe."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST, *,
                 max_sources: int = MAX_SOURCES, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, when)
        self._lock = threading.Lock()

    def allow(self, source: str) -> bool:
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.pop(source, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
            return allowed


class WorkerPool:
    """A fixed number of worker threads fed by a bounded queue. `submit` never blocks: it returns
    False when the queue is full (the caller drops the work)."""

    def __init__(self, workers: int = DEFAULT_WORKERS, queue_size: int = DEFAULT_QUEUE, *, name: str = "dns") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.threads = [
            threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, fn: Callable[..., None], *args) -> bool:
        try:
            self._queue.put_nowait((fn, args))
        except queue.Full:
            return False
        return True

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one bad query must not cost a worker
                log.debug("dns worker: query failed", exc_info=True)

    def stop(self) -> None:
        for _ in self.threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break  # daemons: they go with the process


class _PooledServer(socketserver.BaseServer):
    """socketserver's serving loop, with each request handed to a WorkerPool after the source's
    rate limit; what either refuses is dropped (counted in `dropped`)."""

    pool: WorkerPool
    limiter: SourceRateLimiter

    def setup_service(self, resolver: WeaveResolver, pool: WorkerPool, limiter: SourceRateLimiter) -> None:
        self.resolver = resolver
        self.logger = _QuietLogger()
        self.pool = pool
        self.limiter = limiter
        self.dropped = {"rate": 0, "busy": 0}

    def process_request(self, request, client_address) -> None:
        if not self.limiter.allow(client_address[0]):
            self.dropped["rate"] += 1
            self.shutdown_request(request)
        elif not self.pool.submit(self._handle, request, client_address):
            self.dropped["busy"] += 1
            self.shutdown_request(request)

    def _handle(self, request, client_address) -> None:
        try:
            if isinstance(request, socket.socket):
                request.settimeout(TCP_TIMEOUT)
            self.finish_request(request, client_address)
        except Exception as err:  # noqa: BLE001 - a client that hangs up or times out
            log.debug("dns query from %s failed: %s", client_address[0], err)
        finally:
            self.shutdown_request(request)


class _UdpServer(Quiet, _PooledServer, socketserver.UDPServer):
    allow_reuse_address = True


class _TcpServer(Quiet, _PooledServer, socketserver.TCPServer):
    allow_reuse_address = True


class DnsService:
    """The UDP and TCP servers of one agent: one serving thread each, and one worker pool for both."""

    def __init__(
        self,
        resolver: WeaveResolver,
        *,
        address: str = SERVICE_ADDRESS,
        port: int = 53,
        workers: int = DEFAULT_WORKERS,
        queue_size: int = DEFAULT_QUEUE,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
    ) -> None:
        self.pool = WorkerPool(workers, queue_size)
        self.limiter = SourceRateLimiter(rate, burst)
        self.servers: list[_UdpServer | _TcpServer] = []
        self._threads: list[threading.Thread] = []
        try:
            for server_class in (_UdpServer, _TcpServer):
                server = server_class((address, port), _Handler)
                server.setup_service(resolver, self.pool, self.limiter)
                self.servers.append(server)
                port = int(server.socket.getsockname()[1])  # port 0 (tests): TCP on the port UDP was given
        except OSError:
            self.stop()
            raise

    @property
    def address(self) -> tuple[str, int]:
        """Where the UDP server listens (with port 0 given, the port the kernel chose)."""
        host, port = self.servers[0].socket.getsockname()[:2]
        return str(host), int(port)

    def dropped(self) -> dict[str, int]:
        """Queries dropped so far, by reason: over a source's rate, or no worker free."""
        total = {"rate": 0, "busy": 0}
        for server in self.servers:
            for reason, count in server.dropped.items():
                total[reason] += count
        return total

    def start(self) -> None:
        for server in self.servers:
            thread = threading.Thread(target=server.serve_forever,
                                      name=f"dns-{type(server).__name__.strip('_').lower()}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        # Both serving loops are told at once (each wakes on its pipe), then the sockets are
        # closed: the agent's stop waits for neither longer than it must.
        stopping = [threading.Thread(target=server.shutdown, daemon=True) for server in self.servers if self._threads]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join(timeout=1.0)
        for server in self.servers:
            try:
                server.server_close()
            except OSError:
                pass
        self.pool.stop()
