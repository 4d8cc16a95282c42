"""The links record (`/pyweave/v1/links/<host>`, docs/keys.md) and `pyweave status connections`,
which computes routes from those records as the agents do (docs/routing.md)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pyweave.cli import app
from pyweave.cli.status import _render_connections
from store import keys
from store.cluster import Cluster
from store.memory import MemoryStore
from store.records import Bad, HostRecord, Invalid, LinkView, encode, links_value, parse_entry, parse_links
from store.state import ClusterState

SINCE = 1764331200.5  # 2025-11-28T12:00:00Z


# -- the record -----------------------------------------------------------------------------------
def test_links_value_is_the_documented_json_and_parses_back():
    raw = links_value({"hostC": LinkView(False, None, SINCE), "hostB": LinkView(True, 0.2149, SINCE)})
    assert json.loads(raw) == {
        "peers": {"hostB": {"up": True, "rtt_ms": 0.21, "since": SINCE}, "hostC": {"up": False, "rtt_ms": None, "since": SINCE}}
    }
    assert parse_links(raw) == {"hostB": LinkView(True, 0.21, SINCE), "hostC": LinkView(False, None, SINCE)}
    # the same views give the same bytes, whatever their order: an agent can skip a write
    assert raw == links_value({"hostB": LinkView(True, 0.2101, SINCE), "hostC": LinkView(False, None, SINCE)})


def test_an_omitted_rtt_is_unknown():
    assert parse_links(b'{"peers": {"b": {"up": true, "since": 5}}}') == {"b": LinkView(True, None, 5.0)}
    assert parse_links(b'{"peers": {}}') == {}


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"nope", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b"{}", 'missing field "peers"'),
        (b'{"peers": []}', 'field "peers" must be dict'),
        (b'{"peers": {"b": true}}', "peer b: expected a JSON object"),
        (b'{"peers": {"b": {"since": 1}}}', 'peer b: field "up" must be true or false'),
        (b'{"peers": {"b": {"up": 1, "since": 1}}}', 'field "up" must be true or false'),
        (b'{"peers": {"b": {"up": true}}}', 'peer b: missing field "since"'),
        (b'{"peers": {"b": {"up": true, "since": "now"}}}', 'field "since" must be a non-negative number'),
        (b'{"peers": {"b": {"up": true, "since": 1, "rtt_ms": -1}}}', 'field "rtt_ms" must be a non-negative number'),
        (b'{"peers": {"b": {"up": true, "since": 1, "rtt_ms": true}}}', 'field "rtt_ms" must be a non-negative number'),
        (b'{"peers": {"": {"up": true, "since": 1}}}', "is not a host name"),
    ],
)
def test_a_malformed_links_record_is_refused(raw, problem):
    with pytest.raises(Bad, match=problem):
        parse_links(raw)
    entry = parse_entry(keys.links_key("a"), raw)
    assert isinstance(entry, Invalid) and entry.key == "/pyweave/v1/links/a" and problem in entry.problem


def test_links_are_part_of_the_schema():
    assert keys.links_key("hostA") == "/pyweave/v1/links/hostA"
    raw = links_value({"b": LinkView(True, 1.0, SINCE)})
    assert parse_entry(keys.links_key("a"), raw) == ("links", "a", {"b": LinkView(True, 1.0, SINCE)})
    state = ClusterState.from_items([(keys.links_key("a"), raw)])
    assert state.invalid == [] and state.links == {"a": {"b": LinkView(True, 1.0, SINCE)}}
    assert isinstance(parse_entry(keys.LINKS + "a/b", raw), Invalid)


# -- status connections -----------------------------------------------------------------------------
class FakeContext:
    def __init__(self, raw: MemoryStore, me: str) -> None:
        self.raw = raw
        self.cluster = Cluster(raw)
        self.me = me


def host(store: MemoryStore, name: str, n: int, state: str = "alive") -> None:
    rec = HostRecord(name, f"198.18.0.{n}", f"02:00:00:00:00:0{n}", 1450, state)
    store.put(keys.host_key(name), encode(rec))


def links(store: MemoryStore, name: str, **peers: LinkView) -> None:
    store.put(keys.links_key(name), links_value(peers))


@pytest.fixture
def triangle(monkeypatch):
    """hostA, hostB, hostC (and hostD, alive but linked to no one; hostE stopped): A-C is cut,
    B reaches both."""
    store = MemoryStore()
    for i, name in enumerate(("hostA", "hostB", "hostC", "hostD"), 1):
        host(store, name, i)
    host(store, "hostE", 5, state="stopped")
    links(store, "hostA", hostB=LinkView(True, 0.2, SINCE), hostC=LinkView(False, None, SINCE + 60), hostD=LinkView(False, None, SINCE))
    links(store, "hostB", hostA=LinkView(True, 0.25, SINCE), hostC=LinkView(True, 0.3, SINCE))
    links(store, "hostC", hostA=LinkView(False, None, SINCE), hostB=LinkView(True, 0.3, SINCE))
    monkeypatch.setattr("pyweave.cli.status.Context", lambda: FakeContext(store, "hostA"))
    return store


def test_status_connections_shows_direct_relayed_and_unreachable_peers(triangle):
    result = CliRunner().invoke(app, ["status", "connections"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split() for line in lines] == [
        ["->", "198.18.0.2:4789", "established", "direct", "hostB", "rtt=0.25ms", "since=2025-11-28T12:00:00Z"],
        ["->", "198.18.0.3:4789", "established", "via", "hostB", "hostC", "rtt=0.55ms", "since=2025-11-28T12:01:00Z"],
        ["->", "198.18.0.4:4789", "failed", "unreachable", "hostD", "rtt=-", "since=2025-11-28T12:00:00Z"],
    ]
    # aligned columns: the peer names, the RTTs
    assert len({line.index(peer) for line, peer in zip(lines, ("hostB", "hostC", "hostD"))}) == 1
    assert len({line.index("rtt=") for line in lines}) == 1


def test_status_connections_json(triangle):
    for argv in (["status", "connections", "--json"], ["status", "--json", "connections"]):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert rows == [
            {"peer": "hostB", "address": "198.18.0.2", "mode": "direct", "via": None, "hops": 1, "rtt_ms": 0.25, "since": SINCE},
            {"peer": "hostC", "address": "198.18.0.3", "mode": "via", "via": "hostB", "hops": 2, "rtt_ms": 0.55, "since": SINCE + 60},
            {"peer": "hostD", "address": "198.18.0.4", "mode": "unreachable", "via": None, "hops": None, "rtt_ms": None, "since": SINCE},
        ]


def test_status_connections_says_so_when_no_agent_publishes_links(monkeypatch):
    store = MemoryStore()
    host(store, "hostA", 1)
    host(store, "hostB", 2)
    monkeypatch.setattr("pyweave.cli.status.Context", lambda: FakeContext(store, "hostA"))
    result = CliRunner().invoke(app, ["status", "connections"])
    assert result.exit_code == 0 and result.stdout == ""
    assert "no host publishes its links" in result.stderr
    result = CliRunner().invoke(app, ["status", "connections", "--json"])
    assert json.loads(result.stdout) == []


def test_a_relay_beyond_two_hops_shows_its_hop_count():
    rows = [{"peer": "hostD", "address": "198.18.0.4", "mode": "via", "via": "hostB", "hops": 3, "rtt_ms": 1.5, "since": None}]
    assert _render_connections(rows).split() == [
        "->", "198.18.0.4:4789", "established", "via", "hostB", "(3", "hops)", "hostD", "rtt=1.5ms", "since=-",
    ]
