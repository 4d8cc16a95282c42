"""The encryption tunnel's counters where operators look (issue 14): the agent's metrics, read from
the tunnel's stats file at scrape time, and the `Encryption` line of `pyweave status`; and the
rotation period a test or an operator can set (PYWEAVE_TUNNEL_REKEY_AFTER -> the tunnel's config)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dataplane.tunnel import REKEY_AFTER, TunnelError, load_config
from pyweave.agent.stats import AgentStats
from pyweave.agent.tunnel import REKEY_ENV, TunnelKeeper, drops
from pyweave.cli.status import _encryption_line
from pyweave.host import HostState
from pyweave.metrics import AgentCollector

STATS = {
    "me": "h1",
    "total": {"sealed": 120, "opened": 118, "forged": 3, "replayed": 2, "too_old": 1, "queued_dropped": 0,
              "rekeys": 4, "handshakes_sent": 5, "handshakes_received": 6},
    "tunnel": {"unknown_source": 7, "no_peer": 0, "malformed": 1, "send_errors": 0, "write_errors": 0, "incomplete": 0},
    "peers": {"198.18.0.2": {"name": "h2", "established": True, "sealed": 60},
              "198.18.0.3": {"name": "h3", "established": False, "sealed": 60}},
}


def scrape(stats: AgentStats) -> str:
    watcher = SimpleNamespace(stats=SimpleNamespace(rewatches=0, lists=1, compactions=0), connected=True)
    registry = CollectorRegistry()
    registry.register(AgentCollector(stats, watcher))
    return generate_latest(registry).decode()


def test_the_metrics_carry_the_tunnels_counters_read_at_scrape_time():
    current = dict(STATS)
    text = scrape(AgentStats(tunnel=lambda: current))
    assert "pyweave_tunnel_sealed_total 120.0" in text
    assert "pyweave_tunnel_opened_total 118.0" in text
    for kind, count in (("forged", 3), ("replayed", 2), ("too_old", 1), ("unknown_source", 7), ("malformed", 1),
                        ("no_peer", 0), ("queued_dropped", 0)):
        assert f'pyweave_tunnel_dropped_total{{kind="{kind}"}} {count}.0' in text, text
    assert "pyweave_tunnel_rekeys_total 4.0" in text
    assert 'pyweave_tunnel_handshakes_total{direction="received"} 6.0' in text
    assert 'pyweave_tunnel_established{peer="h2"} 1.0' in text
    assert 'pyweave_tunnel_established{peer="h3"} 0.0' in text
    current["total"] = {**STATS["total"], "forged": 10}  # the next scrape reads the file again
    assert 'pyweave_tunnel_dropped_total{kind="forged"} 10.0' in scrape(AgentStats(tunnel=lambda: current))


def test_no_tunnel_metrics_without_encryption_or_before_the_tunnel_wrote_its_stats():
    assert "pyweave_tunnel" not in scrape(AgentStats())
    assert "pyweave_tunnel" not in scrape(AgentStats(tunnel=dict))


def test_drops_and_the_status_line():
    assert sum(drops(STATS).values()) == 14
    assert drops({}) == {}
    host = {"encryption": "on", "tunnel": {"pid": 42, "established": 1, "dropped": 14, "drops": drops(STATS)}}
    assert _encryption_line(host) == ("on (1 peers established, 14 packets dropped: forged 3, malformed 1, "
                                      "replayed 2, too_old 1, unknown_source 7)")
    assert _encryption_line({**host, "tunnel": {"pid": 42, "established": 2, "dropped": 0, "drops": {}}}) == (
        "on (2 peers established, 0 packets dropped)")
    assert _encryption_line({**host, "tunnel": {"pid": None}}) == "on (tunnel not running)"
    assert _encryption_line({"encryption": "off"}) == "off"


def test_the_rotation_period_goes_from_the_agents_environment_into_the_tunnels_config(tmp_path, monkeypatch):
    state = HostState(tmp_path)
    keeper = TunnelKeeper(state, me="h1", address="198.18.0.1")
    keeper.update({"198.18.0.2": ("h2", "A" * 43 + "=")})
    assert "rekey_after" not in json.loads(keeper.paths.config.read_text())
    assert load_config(str(keeper.paths.config)).rekey_after == REKEY_AFTER
    monkeypatch.setenv(REKEY_ENV, "2.5")
    keeper = TunnelKeeper(state, me="h1", address="198.18.0.1")
    keeper.update({"198.18.0.2": ("h2", "A" * 43 + "=")})
    assert load_config(str(keeper.paths.config)).rekey_after == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv(REKEY_ENV, bad)
        assert TunnelKeeper(state, me="h1", address="198.18.0.1").rekey_after is None


def test_the_tunnel_refuses_a_rotation_period_that_is_not_positive(tmp_path):
    path = tmp_path / "tunnel.json"
    base = {"me": "h1", "address": "198.18.0.1", "key_file": "k", "secret_file": "s", "stats_file": None}
    for bad in (0, -3, "x"):
        path.write_text(json.dumps(base | {"rekey_after": bad}))
        with pytest.raises(TunnelError):
            load_config(str(path))
