"""The DNS resolver without sockets: names, shuffling, PTR, NXDOMAIN, forwarding, truncation; and its
servers on a real socket on loopback: the worker pool's bound and the per-source rate limit."""

import socket
import threading
import time

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from pyweave.dns import (
    DnsIndex,
    DnsService,
    SourceRateLimiter,
    WeaveResolver,
    _Handler,
    names_of,
    reverse_to_ip,
    upstream_servers,
)

INDEX = DnsIndex.from_records(
    [("web.weave.local.", "10.0.0.1"), ("web.weave.local.", "10.0.0.2"), ("db.weave.local.", "10.0.0.3")]
)


class FakeHandler:
    protocol = "udp"


def ask(resolver, name, qtype="A"):
    return resolver.resolve(DNSRecord.question(name, qtype), FakeHandler())


def test_names_from_container_name_and_hostname_inside_the_domain():
    assert names_of("web", "abc123", "weave.local.") == ["web.weave.local."]
    assert names_of("", "DB.Weave.Local", "weave.local.") == ["db.weave.local."]
    assert names_of("x", "db.example.com", "weave.local.") == ["x.weave.local."]


def test_all_addresses_case_insensitive_ttl_one():
    r = ask(WeaveResolver(lambda: INDEX), "WEB.weave.LOCAL")
    assert sorted(str(rr.rdata) for rr in r.rr) == ["10.0.0.1", "10.0.0.2"]
    assert {rr.ttl for rr in r.rr} == {1}


def test_answers_are_shuffled():
    many = DnsIndex.from_records([("m.weave.local.", f"10.1.0.{i}") for i in range(1, 21)])
    orders = {tuple(str(rr.rdata) for rr in ask(WeaveResolver(lambda: many), "m.weave.local").rr) for _ in range(10)}
    assert len(orders) > 1


def test_unknown_name_in_domain_is_nxdomain_and_known_name_without_a_is_empty():
    resolver = WeaveResolver(lambda: INDEX)
    assert ask(resolver, "nosuch.weave.local").header.rcode == RCODE.NXDOMAIN
    aaaa = ask(resolver, "web.weave.local", "AAAA")
    assert aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr


def test_ptr_for_known_addresses():
    assert reverse_to_ip("3.0.0.10.in-addr.arpa.") == "10.0.0.3"
    r = ask(WeaveResolver(lambda: INDEX), "3.0.0.10.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in r.rr] == ["db.weave.local."]


def test_other_names_without_upstream_are_servfail():
    r = ask(WeaveResolver(lambda: INDEX, upstreams=[]), "example.com")
    assert r.header.rcode == RCODE.SERVFAIL


def test_udp_answer_fits_the_edns_buffer_or_is_truncated():
    many = DnsIndex.from_records([("m.weave.local.", f"10.1.0.{i}") for i in range(1, 51)])
    handler = _Handler.__new__(_Handler)
    handler.protocol = "udp"
    handler.server = type("S", (), {"resolver": WeaveResolver(lambda: many)})()
    plain = DNSRecord.parse(handler.get_reply(DNSRecord.question("m.weave.local").pack()))
    assert plain.header.tc and not plain.rr
    q = DNSRecord.question("m.weave.local")
    q.add_ar(EDNS0(udp_len=4096))
    big = DNSRecord.parse(handler.get_reply(q.pack()))
    assert not big.header.tc and len([rr for rr in big.rr if rr.rtype == QTYPE.A]) == 50


def test_upstreams_skip_ourselves_and_ipv6(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 169.254.53.53\nnameserver ::1\nnameserver 198.18.0.250\nsearch x\n")
    assert upstream_servers(str(conf)) == ["198.18.0.250"]


def test_forwarding_off_refuses_names_outside_the_domain_and_still_answers_inside():
    resolver = WeaveResolver(lambda: INDEX, upstreams=["192.0.2.1"], forward=False)
    assert ask(resolver, "example.com").header.rcode == RCODE.REFUSED
    assert ask(resolver, "9.9.9.10.in-addr.arpa", "PTR").header.rcode == RCODE.REFUSED
    assert [str(rr.rdata) for rr in ask(resolver, "db.weave.local").rr] == ["10.0.0.3"]
    assert [str(rr.rdata) for rr in ask(resolver, "3.0.0.10.in-addr.arpa", "PTR").rr] == ["db.weave.local."]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_a_burst_then_the_rate_per_source():
    clock = Clock()
    limiter = SourceRateLimiter(rate=10, burst=5, clock=clock)
    assert [limiter.allow("10.0.0.1") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("10.0.0.2")  # another source has its own bucket
    clock.now = 0.3  # three tokens back, not more
    assert [limiter.allow("10.0.0.1") for _ in range(4)] == [True] * 3 + [False]
    clock.now = 100.0  # refilled up to the burst only
    assert sum(limiter.allow("10.0.0.1") for _ in range(10)) == 5


def test_rate_limiter_remembers_a_bounded_number_of_sources():
    limiter = SourceRateLimiter(rate=1, burst=1, max_sources=3, clock=Clock())
    for i in range(10):
        assert limiter.allow(f"10.0.0.{i}")
    assert len(limiter._buckets) == 3
    assert not limiter.allow("10.0.0.9")  # the most recent ones are kept


# -- the servers, on a real UDP socket on loopback ------------------------------------------------

def _query_many(address, count, *, source="127.0.0.1", name="db.weave.local", wait=1.0):
    """Send count queries from one socket bound to source; return how many answers came back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    try:
        for i in range(count):
            q = DNSRecord.question(name)
            q.header.id = i + 1
            sock.sendto(q.pack(), address)
        answers = set()
        sock.settimeout(wait)
        while True:
            try:
                data, _ = sock.recvfrom(4096)
            except TimeoutError:
                return len(answers)
            answers.add(DNSRecord.parse(data).header.id)
    finally:
        sock.close()


@pytest.fixture
def service():
    made = []

    def make(resolver, **kwargs):
        svc = DnsService(resolver, address="127.0.0.1", port=0, **kwargs)
        svc.start()
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop()


def test_server_answers_over_udp_and_tcp(service):
    svc = service(WeaveResolver(lambda: INDEX))
    host, port = svc.address
    udp = DNSRecord.parse(DNSRecord.question("db.weave.local").send(host, port, timeout=2))
    tcp = DNSRecord.parse(DNSRecord.question("db.weave.local").send(host, port, tcp=True, timeout=2))
    assert [str(rr.rdata) for rr in udp.rr] == [str(rr.rdata) for rr in tcp.rr] == ["10.0.0.3"]


def test_a_flooding_source_is_limited_and_others_are_still_answered(service):
    svc = service(WeaveResolver(lambda: INDEX), rate=5, burst=10)
    started = time.monotonic()
    answered = _query_many(svc.address, 100, wait=0.5)
    # The burst, plus what the rate refills while the 100 queries are sent and answered.
    assert 10 <= answered <= 10 + 5 * (time.monotonic() - started) + 1, answered
    assert svc.dropped()["rate"] >= 80
    assert _query_many(svc.address, 5, source="127.0.0.2", wait=0.5) == 5


def test_queries_wait_for_a_bounded_pool_and_beyond_its_queue_are_dropped(service):
    release = threading.Event()
    entered = threading.Semaphore(0)

    class Blocking(WeaveResolver):
        def resolve(self, request, handler):
            entered.release()
            release.wait(10)
            return super().resolve(request, handler)

    before = set(threading.enumerate())  # other tests' threads may end meanwhile: count new ones only
    svc = service(Blocking(lambda: INDEX), workers=2, queue_size=3, rate=1000, burst=1000)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        for i in range(20):
            q = DNSRecord.question("db.weave.local")
            q.header.id = i + 1
            sock.sendto(q.pack(), svc.address)
            if i < 2:  # both workers busy before the rest arrive
                assert entered.acquire(timeout=5)
        deadline = time.monotonic() + 5
        while svc.dropped()["busy"] < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Two workers busy, three queries queued, the other fifteen dropped; no thread per query.
        assert svc.dropped()["busy"] == 15
        started = [t for t in threading.enumerate() if t not in before]
        assert len(started) == 2 + 2, [t.name for t in started]  # the workers and the two serving loops
        release.set()
        sock.settimeout(1)
        answers = set()
        try:
            while True:
                answers.add(DNSRecord.parse(sock.recvfrom(4096)[0]).header.id)
        except TimeoutError:
            pass
        assert len(answers) == 5
    finally:
        release.set()
        sock.close()
