"""Every command's --help shows an example; the status text has weave's sections."""

import pytest
from typer.testing import CliRunner

from pyweave.cli import app
from pyweave.cli.status import _render_peers, _render_status

COMMANDS = [
    ["launch"], ["stop"], ["reset"], ["status"], ["status", "peers"], ["status", "ipam"], ["status", "connections"], ["run"], ["attach"],
    ["detach"], ["expose"], ["hide"], ["rmpeer"], ["dns-add"], ["dns-remove"], ["dns-lookup"], ["ps"], ["report"],
    ["version"], ["store-recover"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_an_example(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_completion_is_installable():
    result = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in result.output


DATA = {
    "version": "0.1.0",
    "host": {"name": "h1", "address": "198.18.0.1", "vtep_mac": "02:00:00:00:00:01", "mtu": 1450,
             "data_path": "kernel vxlan", "agent": {"running": True, "pid": 42}},
    "peers": [
        {"name": "h1", "address": "198.18.0.1", "vtep_mac": "02:00:00:00:00:01", "state": "alive", "alive": True, "self": True},
        {"name": "h2", "address": "198.18.0.2", "vtep_mac": "02:00:00:00:00:02", "state": "dead", "alive": False, "self": False},
    ],
    "store": {"endpoints": ["http://198.18.0.1:2379"], "reachable": True, "revision": 7, "embedded": True},
    "problems": [{"key": "/pyweave/v1/x", "problem": "unknown key"}],
}


def test_status_text_has_aligned_sections_and_problems():
    text = _render_status(DATA)
    lines = text.splitlines()
    for section in ("host", "peers", "store"):
        assert f"        Service: {section}" in lines
    assert "           Name: h1" in lines and "          Peers: 2 (1 alive)" in lines
    assert "  problem: /pyweave/v1/x: unknown key" in lines


def test_peers_table_is_aligned():
    rows = _render_peers(DATA).splitlines()
    assert rows[0].split() == ["NAME", "ADDRESS", "VTEP-MAC", "STATE"]
    assert rows[1].index("198.18.0.1") == rows[2].index("198.18.0.2")
    assert rows[1].endswith("alive (this host)") and rows[2].endswith("dead")
