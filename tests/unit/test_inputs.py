"""Issue 15, item 4, the pure tier: every value of `pyweave launch` is checked before anything is saved
or started (the checks, and the CLI's exit code and message with nothing left in the state
directory); the host's routes and addresses that `run`, `attach`, `expose` and `launch` refuse to
overlap, parsed from /proc text; a saved configuration that cannot be used is a message, not a
traceback. The same refusals end to end, on a lab with real etcd and Docker: tests/lab/test_refused_inputs.py."""

import ipaddress
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dataplane.hostroutes import HostOverlap, overlaps_with_host, parse_local_networks, parse_routes
from pyweave.cli import app, inputs
from pyweave.host import HostState, HostStateError

# -- the checks ------------------------------------------------------------------------------------
# (check, value, words the message must contain)
BAD = [
    (inputs.host_name, "a/b", ["'a/b'", "letters, digits"]),
    (inputs.host_name, "a=b", ["'a=b'", "'='"]),
    (inputs.host_name, "a,b", ["'a,b'", "','"]),
    (inputs.host_name, "a b", ["'a b'"]),
    (inputs.host_name, "", ["''"]),
    (inputs.host_name, "-h", ["'-h'", "starting with a letter or digit"]),
    (inputs.host_name, "weave:expose", ["'weave:expose'"]),
    (inputs.host_name, "x" * 64, ["1 to 63"]),
    (inputs.store_endpoints, "ftp://10.0.0.1", ["ftp://", "http://HOST:PORT"]),
    (inputs.store_endpoints, "10.0.0.1:99999", ["10.0.0.1:99999", "1 to 65535"]),
    (inputs.store_endpoints, "10.0.0.1:0", ["10.0.0.1:0", "1 to 65535"]),
    (inputs.store_endpoints, "10.0.0.1:abc", ["10.0.0.1:abc", "1 to 65535"]),
    (inputs.store_endpoints, "http://", ["http://", "no host"]),
    (inputs.store_endpoints, "", ["''", "names no store"]),
    (inputs.store_endpoints, ",", ["names no store"]),
    (inputs.store_endpoints, "10.0.0.1,,10.0.0.2", ["empty endpoint"]),
    (inputs.store_endpoints, "http://10.0.0.1:2379/v3", ["no path"]),
    (inputs.store_endpoints, "http://u:p@10.0.0.1", ["no path, query or user"]),
    (inputs.store_endpoints, "300.1.1.1", ["300.1.1.1 is not an IPv4 address or host name"]),
    (inputs.store_endpoints, "bad_host!", ["bad_host!"]),
    (inputs.ipv4_address, "eth0", ["'eth0'", "IPv4 address"]),
    (inputs.overlay_mtu, -5, ["-5", "68 to 65485"]),
    (inputs.overlay_mtu, 0, ["0", "68 to"]),
    (inputs.overlay_mtu, 67, ["67"]),
    (inputs.overlay_mtu, 70000, ["70000"]),
    (inputs.lease_ttl, 0, ["0 s", "2 to 3600"]),
    (inputs.lease_ttl, -1, ["-1 s"]),
    (inputs.lease_ttl, 100000, ["100000 s"]),
    (inputs.dead_host_grace, -1.0, ["-1", "above 0", "rmpeer"]),
    (inputs.dead_host_grace, 0.0, ["0 is not"]),
    (inputs.dead_host_grace, float("nan"), ["nan"]),
    (inputs.dead_host_grace, float("inf"), ["inf"]),
    (inputs.dead_host_grace, 1e12, ["1e+12"]),
    (inputs.metrics_port, -1, ["-1", "1 to 65535, or 0"]),
    (inputs.metrics_port, 65536, ["65536"]),
    (inputs.metrics_addr, "localhost", ["'localhost'", "127.0.0.1", "0.0.0.0"]),
    (inputs.metrics_addr, "1.2.3", ["'1.2.3'"]),
    (inputs.dns_domain, ".", ["'.'", "not the root"]),
    (inputs.dns_domain, "", ["''"]),
    (inputs.dns_domain, "a..b", ["'a..b'"]),
    (inputs.dns_domain, "we ave.local", ["'we ave.local'"]),
    (inputs.dns_domain, "x" * 64 + ".local", ["labels"]),
]


@pytest.mark.parametrize(("check", "value", "words"), BAD, ids=[f"{c.__name__}={v!r}"[:60] for c, v, _ in BAD])
def test_a_bad_value_is_refused_with_a_message_naming_it(check, value, words):
    with pytest.raises(inputs.InputError) as err:
        check(value)
    for word in words:
        assert word in str(err.value), str(err.value)


GOOD = [
    (inputs.host_name, "pw1a2b3c-h1", "pw1a2b3c-h1"),
    (inputs.host_name, "Host_2.example", "Host_2.example"),
    (inputs.store_endpoints, "10.0.0.1", ["http://10.0.0.1:2379"]),
    (inputs.store_endpoints, "http://etcd:2379", ["http://etcd:2379"]),
    (inputs.store_endpoints, "https://10.0.0.1", ["https://10.0.0.1:2379"]),
    (inputs.store_endpoints, " http://10.0.0.1:2379, 10.0.0.2:2479 ,HTTP://10.0.0.3",
     ["http://10.0.0.1:2379", "http://10.0.0.2:2479", "http://10.0.0.3:2379"]),
    (inputs.ipv4_address, "198.18.0.1", "198.18.0.1"),
    (inputs.overlay_mtu, 68, 68),
    (inputs.overlay_mtu, 1450, 1450),
    (inputs.lease_ttl, 2, 2),
    (inputs.dead_host_grace, 0.5, 0.5),
    (inputs.dead_host_grace, 600.0, 600.0),
    (inputs.metrics_port, 0, 0),
    (inputs.metrics_port, 6782, 6782),
    (inputs.metrics_addr, "0.0.0.0", "0.0.0.0"),
    (inputs.metrics_addr, "::1", "::1"),
    (inputs.dns_domain, "Weave.Local", "weave.local."),
    (inputs.dns_domain, "my-corp.internal.", "my-corp.internal."),
]


@pytest.mark.parametrize(("check", "value", "expected"), GOOD, ids=[f"{c.__name__}={v!r}"[:60] for c, v, _ in GOOD])
def test_a_good_value_passes_normalised(check, value, expected):
    assert check(value) == expected


def test_the_mtu_must_leave_room_for_vxlan_on_the_underlay():
    assert inputs.mtu_for_underlay(1450, 1500, "eth0") == 1450
    with pytest.raises(inputs.InputError, match=r"--mtu 1451 does not fit the underlay eth0 .*use --mtu 1450 or less"):
        inputs.mtu_for_underlay(1451, 1500, "eth0")


# -- the command: exit 2, the option named, nothing saved ------------------------------------------
# Every one of these is refused before `launch` looks at the host, so it runs without root.
LAUNCH = [
    (["--store", "10.0.0.1:99999"], "--store"),
    (["--store", ""], "--store"),
    (["10.0.0.1:abc"], "PEER"),
    (["http://"], "PEER"),
    (["--mtu", "-5"], "--mtu"),
    (["--mtu", "0"], "--mtu"),
    (["--mtu", "abc"], "--mtu"),
    (["--lease-ttl", "0"], "--lease-ttl"),
    (["--lease-ttl", "-3"], "--lease-ttl"),
    (["--dead-host-grace", "-1"], "--dead-host-grace"),
    (["--dead-host-grace", "0"], "--dead-host-grace"),
    (["--dead-host-grace", "nan"], "--dead-host-grace"),
    (["--metrics-port", "70000"], "--metrics-port"),
    (["--metrics-port", "-1"], "--metrics-port"),
    (["--metrics-addr", "nowhere"], "--metrics-addr"),
    (["--name", "a/b"], "--name"),
    (["--name", "a=b"], "--name"),
    (["--name", "a,b"], "--name"),
    (["--name", "a b"], "--name"),
    (["--address", "eth0"], "--address"),
    (["--dns-domain", "."], "--dns-domain"),
]


@pytest.mark.parametrize(("args", "option"), LAUNCH, ids=[" ".join(a) or "empty" for a, _ in LAUNCH])
def test_launch_refuses_a_bad_value_before_saving_anything(tmp_path, monkeypatch, args, option):
    monkeypatch.setenv("PYWEAVE_STATE_ROOT", str(tmp_path / "state"))
    monkeypatch.delenv("PYWEAVE_STORE", raising=False)
    result = CliRunner().invoke(app, ["launch", *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output or f"Invalid value for '[{option}]'" in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("args", [["--store", "https://10.0.0.1:2379"], ["--store-ca", "/etc/hostname"],
                                  ["--store", "https://10.0.0.1", "--store-ca", "/x", "--store-cert", "/x", "--store-key", "/x"]])
def test_a_store_over_tls_needs_its_certificate_files(tmp_path, monkeypatch, args):
    monkeypatch.setenv("PYWEAVE_STATE_ROOT", str(tmp_path / "state"))
    monkeypatch.delenv("PYWEAVE_STORE", raising=False)
    from pyweave.cli.base import CliError

    result = CliRunner().invoke(app, ["launch", *args])
    assert isinstance(result.exception, CliError), result.output
    assert result.exception.code == 2 and "--store-ca" in str(result.exception)
    assert not (tmp_path / "state").exists()


def test_a_bad_store_in_the_environment_is_refused_too(tmp_path, monkeypatch):
    monkeypatch.setenv("PYWEAVE_STATE_ROOT", str(tmp_path / "state"))
    monkeypatch.setenv("PYWEAVE_STORE", "ftp://10.0.0.1:2379")
    result = CliRunner().invoke(app, ["launch"])
    assert result.exit_code == 2 and "PYWEAVE_STORE" in result.output, result.output
    assert not (tmp_path / "state").exists()


# -- a saved configuration that cannot be used -----------------------------------------------------

def test_a_saved_configuration_with_unknown_fields_loads(tmp_path):
    state = HostState(tmp_path)
    tmp_path.joinpath("config.json").write_text(json.dumps({"name": "h1", "vtep_mac": "02:00:00:00:00:01",
                                                            "from_the_future": 1}))
    config = state.load()
    assert config is not None and config.name == "h1" and config.metrics_addr == "127.0.0.1"
    assert config.dns_forward


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"vtep_mac": "02:00:00:00:00:01"}'])
def test_a_saved_configuration_that_is_not_one_is_a_message(tmp_path, text):
    tmp_path.joinpath("config.json").write_text(text)
    with pytest.raises(HostStateError, match="pyweave reset"):
        HostState(tmp_path).load()


def test_the_configuration_saved_by_two_processes_at_once_is_one_of_theirs(tmp_path):
    """The agent (new store endpoints) and a command (`store-recover`) may save at the same moment:
    with one shared temporary file, one's rename took the other's away (FileNotFoundError, seen in
    the lab). Two processes save 200 times each; neither fails and the file is always whole."""
    HostState(tmp_path).save(HostState(tmp_path).load_or_create(name="h1"))
    script = (
        "import sys, dataclasses; from pathlib import Path; from pyweave.host import HostState\n"
        "state = HostState(Path(sys.argv[1])); config = state.load()\n"
        "for i in range(200): state.save(dataclasses.replace(config, store=[f'http://198.18.0.{sys.argv[2]}:2379']))\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(n)], stderr=subprocess.PIPE, text=True)
               for n in (1, 2)]
    errors = [w.communicate(timeout=60)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    config = HostState(tmp_path).load()
    assert config is not None and config.store in (["http://198.18.0.1:2379"], ["http://198.18.0.2:2379"])
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind


# -- the host's routes and addresses ---------------------------------------------------------------
ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t0000000A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
pwb-65536\t0000200A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
     |-- 10.32.0.100
        /32 host LOCAL
     |-- 172.20.0.9
        /32 host LOCAL
     |-- 169.254.53.53
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 192.0.2.2
        /32 host LOCAL
"""


def test_routes_and_local_addresses_are_parsed_from_proc():
    routes = parse_routes(ROUTE)
    assert [(str(n), d) for n, d in routes] == [
        ("0.0.0.0/0", "eth0"), ("192.0.2.0/24", "eth0"), ("10.0.0.0/16", "eth1"), ("10.32.0.0/24", "pwb-65536"),
    ]
    assert [str(n) for n in parse_local_networks(FIB_TRIE)] == [
        "127.0.0.0/8", "127.0.0.1/32", "192.0.2.2/32", "10.32.0.100/32", "172.20.0.9/32", "169.254.53.53/32",
    ]


OVERLAPS = [
    ("8.8.8.0/24", []),  # only the default route covers it: weave allows any range
    ("10.0.0.0/24", ["the route 10.0.0.0/16 dev eth1 of this host"]),
    ("10.0.0.0/8", ["the route 10.0.0.0/16 dev eth1 of this host"]),  # a pyweave bridge's is not counted
    ("192.0.2.0/25", ["the route 192.0.2.0/24 dev eth0 of this host"]),  # its address is not named twice
    ("172.20.0.0/16", ["the address 172.20.0.9 of this host"]),  # an address with no route of its own
    ("10.32.0.0/24", []),  # pyweave's own network, with an exposed address on its bridge
    ("172.21.0.0/16", []),
]


@pytest.mark.parametrize(("subnet", "described"), OVERLAPS)
def test_a_subnet_overlapping_the_hosts_routes_or_addresses_is_found(subnet, described):
    found = overlaps_with_host(ipaddress.IPv4Network(subnet), parse_routes(ROUTE), parse_local_networks(FIB_TRIE))
    assert [o.describe() for o in found] == described
    assert all(isinstance(o, HostOverlap) for o in found)


@pytest.mark.parametrize("args", [["launch", "--mtu", "-5"], ["launch", "--mtu", "abc"], ["launch", "--name", "a,b"],
                                  ["nosuch"]], ids=" ".join)
def test_the_installed_command_shows_a_usage_error_without_a_traceback(tmp_path, args):
    """Through `pyweave_cmd.cli` (pyweave.cli.main), as a user runs it, not typer's test runner."""
    env = {**os.environ, "PYWEAVE_STATE_ROOT": str(tmp_path / "state")}
    env.pop("PYWEAVE_STORE", None)
    r = subprocess.run([sys.executable, "-m", "pyweave_cmd.cli", *args], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Error: " in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "state").exists()
