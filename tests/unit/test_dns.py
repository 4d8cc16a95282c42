"""The DNS resolver without sockets: names, shuffling, PTR, NXDOMAIN, forwarding, truncation."""

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from pyweave.dns import DnsIndex, WeaveResolver, _Handler, names_of, reverse_to_ip, upstream_servers

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
