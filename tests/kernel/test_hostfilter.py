"""The host filter in fresh namespaces: a "host" with a pyweave-named bridge, an "underlay" address
and listening services; a "container" whose veth is a port of that bridge and which routes the
host's addresses through it (what a container with NET_ADMIN can do)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dataplane.api import bridge_name
from dataplane.hostfilter import NFT_FAMILY, NFT_TABLE

pytestmark = [pytest.mark.kernel, pytest.mark.needs_binary("nft", install="apt-get install nftables")]

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "169.254.53.53"
UNDERLAY = "198.18.7.1"
CONTAINER = "10.77.0.2"
EXPOSED = "10.77.0.100"

# Listens on every address of the host: TCP 2379 and 53, UDP 53 (echo); prints "ready".
SERVER = """
import socket, threading
def serve_tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"hello"); c.close()
def serve_udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(512); s.sendto(data, peer)
for t, p in ((serve_tcp, 2379), (serve_tcp, 53), (serve_udp, 53)):
    threading.Thread(target=t, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

TCP = "import socket,sys; c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1); sys.exit(c.recv(5) != b'hello')"
UDP = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1); "
       "s.sendto(b'q', (sys.argv[1], int(sys.argv[2]))); sys.exit(s.recv(8) != b'q')")


def sh(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=check, capture_output=True, text=True, timeout=30)


def py(ns: str, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def tcp_ok(ns: str, address: str, port: int) -> bool:
    return py(ns, TCP, address, str(port)).returncode == 0


def udp_ok(ns: str, address: str, port: int) -> bool:
    return py(ns, UDP, address, str(port)).returncode == 0


def run_filter(ns: str, steps: str) -> dict:
    """Run `steps` in ns with a HostFilter `g` (service address SERVICE); what they put in `out`."""
    code = "import json, subprocess\nfrom dataplane.hostfilter import *\n" \
           f"g = HostFilter(service_address={SERVICE!r})\nout = {{}}\n" + textwrap.dedent(steps) + "\nprint(json.dumps(out))"
    done = py(ns, code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def table_present(ns: str) -> bool:
    return sh(ns, "nft", "list", "table", NFT_FAMILY, NFT_TABLE, check=False).returncode == 0


@pytest.fixture
def pair(namespaces):
    """(host ns, container ns) wired as the agent wires them, with the services listening."""
    host = namespaces("host")
    cont = namespaces("cont")
    br = bridge_name(77)
    for argv in (
        ("link", "add", "eth0", "type", "veth", "peer", "name", "eth1"), ("addr", "add", f"{UNDERLAY}/24", "dev", "eth0"),
        ("link", "set", "eth0", "up"), ("link", "set", "eth1", "up"), ("addr", "add", f"{SERVICE}/32", "dev", "lo"),
        ("link", "add", br, "type", "bridge"), ("link", "set", br, "up"),
        ("link", "add", "pwvtest", "type", "veth", "peer", "name", "ethwe", "netns", cont),
        ("link", "set", "pwvtest", "master", br, "up"),
        ("route", "add", "10.77.0.0/24", "dev", br, "metric", "1024"),  # the DNS service's way back
    ):
        subprocess.run(["ip", "-n", host, *argv], check=True)
    for argv in (
        ("addr", "add", f"{CONTAINER}/24", "dev", "ethwe"), ("link", "set", "ethwe", "up"),
        ("route", "add", f"{SERVICE}/32", "dev", "ethwe"),
        ("route", "add", f"{UNDERLAY}/32", "dev", "ethwe"),  # the attack: the host's underlay via ethwe
    ):
        subprocess.run(["ip", "-n", cont, *argv], check=True)
    server = subprocess.Popen(["ip", "netns", "exec", host, sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        yield host, cont
    finally:
        server.kill()
        server.wait()


def test_without_the_filter_a_container_reaches_the_hosts_services(pair):
    """The attack works on a bare host: what the filter must stop (so the next tests can fail)."""
    host, cont = pair
    assert tcp_ok(cont, UNDERLAY, 2379)


def test_filter_drops_everything_but_dns_and_replies(pair):
    host, cont = pair
    assert run_filter(host, "out['ok'] = g.ensure()") == {"ok": True}
    assert not tcp_ok(cont, UNDERLAY, 2379)
    assert not tcp_ok(cont, SERVICE, 2379)  # the service address: only its port 53
    assert udp_ok(cont, SERVICE, 53) and tcp_ok(cont, SERVICE, 53)
    assert not udp_ok(cont, UNDERLAY, 53)
    # The host's own connections to the container get their replies.
    listener = subprocess.Popen(["ip", "netns", "exec", cont, sys.executable, "-c", SERVER],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        assert tcp_ok(host, CONTAINER, 2379) and udp_ok(host, CONTAINER, 53)
    finally:
        listener.kill()
        listener.wait()
    assert "counter packets 0 " not in sh(host, "nft", "list", "table", NFT_FAMILY, NFT_TABLE).stdout


def test_exposed_address_is_reached_from_its_network_only(pair):
    """`pyweave expose`: the host joins the network at that address; its other addresses stay closed."""
    host, cont = pair
    subprocess.run(["ip", "-n", host, "addr", "add", f"{EXPOSED}/24", "dev", bridge_name(77)], check=True)
    run_filter(host, "g.ensure()")
    assert tcp_ok(cont, EXPOSED, 2379)
    assert not tcp_ok(cont, UNDERLAY, 2379)


def test_ensure_writes_only_after_a_change_and_recreates_a_deleted_table(pair):
    host, cont = pair
    out = run_filter(host, f"""
        out['first'] = g.ensure(); gen = ruleset_generation()
        out['again'] = g.ensure(); out['unchanged'] = ruleset_generation() == gen
        subprocess.run(['nft', 'delete', 'table', '{NFT_FAMILY}', '{NFT_TABLE}'], check=True)
        out['deleted'] = subprocess.run(['nft', 'list', 'table', '{NFT_FAMILY}', '{NFT_TABLE}'], capture_output=True).returncode != 0
        out['repaired'] = g.ensure()
        out['present'] = subprocess.run(['nft', 'list', 'table', '{NFT_FAMILY}', '{NFT_TABLE}'], capture_output=True).returncode == 0
    """)
    assert out == {"first": True, "again": True, "unchanged": True, "deleted": True, "repaired": True, "present": True}
    assert not tcp_ok(cont, UNDERLAY, 2379)


def test_remove_host_filter_is_idempotent(pair):
    host, cont = pair
    run_filter(host, "g.ensure(); remove_host_filter(); remove_host_filter()")
    assert not table_present(host)
    assert tcp_ok(cont, UNDERLAY, 2379)
