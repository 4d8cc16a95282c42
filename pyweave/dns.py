"""weaveDNS for pyweave: every agent answers for the cluster's names, from its etcd mirror.

Records are published by each agent for its running containers (`dns/<host>/<container>`, bound to
the host's lease), so a name disappears everywhere when its container stops or its host dies. The
agent answers at `SERVICE_ADDRESS` (a link-local address on the host's loopback; each container
gets a /32 route to it through its `ethwe`), over UDP and TCP:
- names in the domain (default `weave.local.`): every address of the name, shuffled per answer,
  case-insensitive, TTL 1 s; an unknown name is NXDOMAIN;
- PTR for addresses it knows; everything else is forwarded to the host's upstream resolvers.
Library: dnslib (small, pure Python, ships a threaded UDP/TCP server we only need to subclass for
EDNS-sized UDP answers; dnspython would need the server written by hand).
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dnslib import PTR, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from pyweave.dnsnames import DEFAULT_DOMAIN, SERVICE_ADDRESS, names_of, normalise_domain

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_DOMAIN", "SERVICE_ADDRESS", "DnsIndex", "DnsService", "WeaveResolver", "names_of", "normalise_domain"]

DEFAULT_TTL = 1


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
        ttl: int = DEFAULT_TTL,
    ) -> None:
        self.index = index
        self.domain = normalise_domain(domain)
        self.upstreams = upstreams or []
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
        return self.forward(request, tcp=getattr(handler, "protocol", "udp") == "tcp")

    def forward(self, request: DNSRecord, *, tcp: bool) -> DNSRecord:
        for upstream in self.upstreams:
            try:
                raw = request.send(upstream, 53, tcp=tcp, timeout=2)
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


class DnsService:
    """The UDP and TCP servers of one agent."""

    def __init__(self, resolver: WeaveResolver, *, address: str = SERVICE_ADDRESS, port: int = 53) -> None:
        self.servers = [
            DNSServer(resolver, address=address, port=port, tcp=tcp, handler=_Handler, logger=_QuietLogger())
            for tcp in (False, True)
        ]
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for server in self.servers:
            server.start_thread()

    def stop(self) -> None:
        # Closing the sockets is enough: the serving threads are daemons and the process is ending.
        for server in self.servers:
            try:
                server.server.server_close()
            except OSError:
                pass
