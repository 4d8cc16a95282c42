"""Issue 14's acceptance: the tutorial with `--password`, with real etcd, Docker and kernel.

Every frame between hosts crosses each host's tunnel (docs/encryption.md): the switch carries UDP 6783
only (and the store's TCP), never a VXLAN packet, a marker sent inside the overlay, or a container's
address. A host with another secret is refused at launch and leaves nothing running. Forged, replayed
and bit-flipped datagrams sent to a tunnel never reach a container and show in its drop counters (stats
file, metrics, status). An agent restart leaves the tunnel running: pings go on. A second lab, whose
hosts 2 and 3 cannot reach each other, relays through host 1 (docs/routing.md) with sessions rotated
every few seconds (PYWEAVE_TUNNEL_REKEY_AFTER): every hop is sealed, and rotations lose no ping."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import pytest
from labtools import (
    capture,
    docker,
    kill_and_relaunch_agent,
    mac_of,
    ping,
    ping_stream,
    pings_lost,
    run_container,
    transit_rx,
    wait_for,
)
from test_routing import SCRAPE, wait_routes

from pyweave.agent.tunnel import REKEY_ENV, tunnel_pid
from pyweave.host import HostState
from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

SECRET = "correct horse battery staple"
MARKER = "PYWEAVE-SECRET-MARKER-7f3a"


REKEY_AFTER = 3  # seconds, in the relay lab: several rotations during a 10 s ping stream
TUNNEL_PORT = 6783


def tunnel_stats(lab: Lab, host: int) -> dict:
    """The tunnel's stats file of a host (rewritten by the tunnel at most once a second)."""
    try:
        return json.loads((lab.state_dir(host) / "tunnel-stats.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def peer_stats(lab: Lab, host: int, peer: int) -> dict:
    by_name = {p["name"]: p for p in (tunnel_stats(lab, host).get("peers") or {}).values()}
    return by_name.get(lab.hosts[peer].name, {})


def marker_on_the_wire(lab: Lab, sender: str, receiver: str, receiver_ip: str) -> bytes:
    """Three pings and MARKER over TCP (nc, port 7777) from container sender to receiver, while tcpdump
    captures UDP and ICMP on the lab switch; asserts both went through; returns the capture (pcap)."""
    server = subprocess.Popen(["docker", "exec", receiver, "nc", "-l", "-p", "7777"], stdout=subprocess.PIPE, text=True)
    tap = capture(lab, "udp or icmp")
    try:
        assert ping(sender, receiver_ip, count=3)
        wait_for(lambda: docker("exec", sender, "sh", "-c", f"echo {MARKER} | nc -w 2 {receiver_ip} 7777").returncode == 0,
                 timeout=10, message=f"the marker sent over TCP to {receiver_ip}")
        assert MARKER in server.communicate(timeout=10)[0]
    finally:
        server.kill()
        time.sleep(0.5)  # tcpdump writes out the last packets
        tap.terminate()
    return tap.communicate(timeout=10)[0]


def udp_datagrams(pcap: bytes) -> list[tuple[str, int, str, int, bytes]]:
    """(source, sport, destination, dport, payload) of each IPv4 UDP packet of an Ethernet pcap (only
    the first fragment of a fragmented datagram carries ports: later ones are returned with port -1)."""
    magic = pcap[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, offset = [], 24
    while offset + 16 <= len(pcap):
        incl = struct.unpack(endian + "IIII", pcap[offset:offset + 16])[2]
        frame = pcap[offset + 16:offset + 16 + incl]
        offset += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        src, dst = (".".join(str(b) for b in frame[26:30]), ".".join(str(b) for b in frame[30:34]))
        if struct.unpack(">H", frame[20:22])[0] & 0x1FFF:  # a later fragment
            out.append((src, -1, dst, -1, frame[14 + ihl:]))
            continue
        sport, dport = struct.unpack(">HH", frame[14 + ihl:18 + ihl])
        out.append((src, sport, dst, dport, frame[22 + ihl:]))
    return out


@pytest.fixture(scope="module")
def encrypted_lab():
    with Lab(3) as lab:
        r = lab.pyweave(0, "launch", "--store-members", "1", "--password", SECRET)
        assert r.returncode == 0, r.stderr
        for i in (1, 2):
            r = lab.pyweave(i, "launch", lab.hosts[0].address, "--password", SECRET)
            assert r.returncode == 0, r.stderr
        yield lab
        prefix = lab.prefix
    assert not leftovers(prefix), f"lab left behind: {leftovers(prefix)}"


def test_the_tutorial_with_a_password_pings_between_every_pair_first_ping_included(encrypted_lab):
    lab = encrypted_lab
    status = json.loads(lab.pyweave(0, "status", "--json").stdout)
    assert status["host"]["encryption"] == "on"
    assert status["host"]["mtu"] == 1500 - 50 - 28 - 29  # the tunnel's overhead comes off the MTU
    cids = [run_container(lab, i, f"10.7.0.{i + 1}/24", "busybox", "sleep", "3600") for i in range(3)]
    for i, cid in enumerate(cids):
        for j in range(3):
            if i != j:
                assert ping(cid, f"10.7.0.{j + 1}"), f"first ping h{i + 1} -> h{j + 1} lost"


def test_the_wire_carries_no_marker_no_vxlan_and_no_inner_address(encrypted_lab):
    lab = encrypted_lab
    a = run_container(lab, 0, "10.8.0.1/24", "busybox", "sleep", "3600")
    b = run_container(lab, 1, "10.8.0.2/24", "busybox", "sleep", "3600")
    raw = marker_on_the_wire(lab, a, b, "10.8.0.2")
    assert len(raw) > 2000, "the capture holds the traffic"
    assert MARKER.encode() not in raw
    for inner in ("10.8.0.1", "10.8.0.2"):
        assert bytes(int(x) for x in inner.split(".")) not in raw, f"inner address {inner} on the wire"
    text = subprocess.run(["tcpdump", "-nn", "-r", "-"], input=raw, capture_output=True).stdout.decode()
    assert ".6783 > " in text and ".4789" not in text, text[:600]


def test_a_wrong_password_is_refused_and_leaves_nothing_running(encrypted_lab):
    lab = encrypted_lab
    extra = lab.add_extra("x", 9)
    r = lab.pyweave(extra, "launch", lab.hosts[0].address, "--password", "wrong")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "secret is not the cluster's" in r.stderr
    assert lab.agent_pid(extra) is None
    assert tunnel_pid(HostState(lab.state_dir(extra))) is None
    assert lab.exec(extra, "ip", "link", "show", "pwtun0").returncode != 0, "the tunnel's device is left"
    names = json.loads(lab.pyweave(0, "status", "peers", "--json").stdout)
    assert extra.name not in {p["name"] for p in names}
    r = lab.pyweave(extra, "launch", lab.hosts[0].address)
    assert r.returncode == 1 and "the cluster is encrypted" in r.stderr, r.stderr


def test_an_agent_restart_with_encryption_loses_at_most_a_second_of_pings(encrypted_lab):
    lab = encrypted_lab
    a = run_container(lab, 0, "10.9.2.1/24", "busybox", "sleep", "3600")
    run_container(lab, 1, "10.9.2.2/24", "busybox", "sleep", "3600")
    assert ping(a, "10.9.2.2")
    tunnel = tunnel_pid(HostState(lab.state_dir(1)))
    with ping_stream(a, "10.9.2.2", interval=0.1, count=80) as stream:  # 8 s at 10/s
        time.sleep(2)
        kill_and_relaunch_agent(lab, 1)  # with the secret saved at the first launch
        out, _ = stream.communicate(timeout=30)
    lost = pings_lost(out, sent=80)
    assert lost <= 10, f"{lost} pings of 80 lost across the agent restart (at most 1 s may be): {out[-400:]}"
    assert tunnel_pid(HostState(lab.state_dir(1))) == tunnel, "the tunnel outlives its agent"


FORGER = """
import json, os, socket, sys
target, port, replays, randoms = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = {"replayed": 0, "flipped": 0, "random": 0}
for hexed in replays:
    d = bytes.fromhex(hexed)
    s.sendto(d, (target, port)); sent["replayed"] += 1
    for bit in (8 * 5 + 3, 8 * (len(d) // 2), 8 * len(d) - 1):  # the counter, the ciphertext, the tag
        f = bytearray(d); f[bit // 8] ^= 1 << (bit % 8)
        s.sendto(bytes(f), (target, port)); sent["flipped"] += 1
for n in range(randoms):
    s.sendto(bytes([3]) + os.urandom(28 + 7 * n), (target, port)); sent["random"] += 1
print(json.dumps(sent))
"""


def test_forged_packets_never_reach_a_container_and_are_counted(encrypted_lab):
    lab = encrypted_lab
    a = run_container(lab, 0, "10.9.3.1/24", "busybox", "sleep", "3600")
    b = run_container(lab, 1, "10.9.3.2/24", "busybox", "sleep", "3600")
    assert ping(a, "10.9.3.2")
    h0, h1 = lab.hosts[0].address, lab.hosts[1].address
    tap = capture(lab, f"udp and src host {h0} and dst host {h1} and port {TUNNEL_PORT}")
    try:
        assert ping(a, "10.9.3.2", count=5)
    finally:
        time.sleep(0.5)
        tap.terminate()
    data = [p for (_, sport, _, _, p) in udp_datagrams(tap.communicate(timeout=10)[0]) if sport == TUNNEL_PORT and p[:1] == b"\x03"]
    assert len(data) >= 5, "the capture holds the pings' sealed datagrams"
    time.sleep(1.5)  # the pings' replies are in, the stats file written
    rx = lambda: int(docker("exec", b, "cat", "/sys/class/net/ethwe/statistics/rx_packets").stdout)  # noqa: E731
    before, rx_before = tunnel_stats(lab, 1), rx()
    r = lab.exec(0, sys.executable, "-c", FORGER, h1, str(TUNNEL_PORT), json.dumps([d.hex() for d in data]), "20", check=True)
    sent = json.loads(r.stdout)
    stranger = lab.add_extra("forger", 10)  # not a peer: its datagrams are dropped before any crypto
    r = lab.exec(stranger, sys.executable, "-c", FORGER, h1, str(TUNNEL_PORT), "[]", "5", check=True)

    def counted() -> dict | None:
        now = tunnel_stats(lab, 1)
        got = {k: now["total"][k] - before["total"][k] for k in ("forged", "replayed", "too_old", "opened")}
        got["unknown_source"] = now["tunnel"]["unknown_source"] - before["tunnel"]["unknown_source"]
        done = (got["forged"] >= sent["flipped"] + sent["random"] and got["replayed"] + got["too_old"] >= sent["replayed"]
                and got["unknown_source"] >= 5)
        return got if done else None

    got = wait_for(counted, timeout=10, interval=0.2, message=f"the drops counted on host 1 (sent {sent})")
    time.sleep(1)
    assert rx() == rx_before, "a forged or replayed datagram reached the container"
    assert got["forged"] == sent["flipped"] + sent["random"], got
    assert got["replayed"] + got["too_old"] == sent["replayed"], got
    status = lab.pyweave(1, "status").stdout
    assert "Encryption: on (2 peers established" in status and "forged" in status, status
    scraped = lab.exec(1, sys.executable, "-c", SCRAPE, check=True).stdout
    line = next(m for m in scraped.splitlines() if m.startswith('pyweave_tunnel_dropped_total{kind="forged"}'))
    assert float(line.split()[-1]) >= got["forged"], line


INJECTOR = """
import socket, struct, sys
target, vni, mac, ip, count = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3].replace(":", "")), sys.argv[4], int(sys.argv[5])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xFFFF); return ~(s + (s >> 16)) & 0xFFFF
src = ip.rsplit(".", 1)[0] + ".99"
udp = struct.pack("!HHHH", 5555, 9999, 8 + 16, 0) + b"INJECTED-IN-CLEAR"[:16]
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(ip))
hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
frame = mac + bytes.fromhex("0200000000990800") + hdr + udp
vxlan = struct.pack("!II", 0x08000000, vni << 8) + frame
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    for port in range(4789, 4793):
        s.sendto(vxlan, (target, port))
"""


def vxlan_drops(lab: Lab, host: int) -> int:
    """Packets the tunnel's nft table dropped as clear VXLAN or probes from the underlay."""
    out = lab.exec(host, "nft", "list", "table", "inet", "pyweave_tunnel").stdout
    line = next((ln for ln in out.splitlines() if "not from the tunnel" in ln), "")
    return int(line.split("packets")[1].split()[0]) if "packets" in line else -1


def test_clear_vxlan_from_the_underlay_never_reaches_a_container(encrypted_lab):
    """The kernel's VXLAN devices of an encrypted host still listen on UDP 4789: a frame sent to
    them in clear from the underlay (by a machine without the secret) would bypass the tunnel.
    Only what the tunnel opened (arriving on pwtun0) may reach them."""
    lab = encrypted_lab
    a = run_container(lab, 0, "10.9.4.1/24", "busybox", "sleep", "3600")
    b = run_container(lab, 1, "10.9.4.2/24", "busybox", "sleep", "3600")
    assert ping(a, "10.9.4.2")
    mac = mac_of(b)  # and its network's VNI, from the forwarding entry host 1 has for it
    vni = next(int(line.split(" dev pwx-")[1].split()[0]) for line in lab.exec(0, "bridge", "fdb", "show").stdout.splitlines()
               if line.startswith(mac) and " dev pwx-" in line)
    drops = vxlan_drops(lab, 1)
    assert drops >= 0, "the tunnel's table counts clear VXLAN from the underlay"
    # A capture on the container's ethwe (in its network namespace) for UDP 9999: first the injected
    # datagrams are sent, then one through the tunnel, which must be all it shows.
    pids = {c: docker("inspect", "-f", "{{.State.Pid}}", c, check=True).stdout.strip() for c in (a, b)}
    tap = subprocess.Popen(["nsenter", "-t", pids[b], "-n", "tcpdump", "-i", "ethwe", "-nn", "-l", "-A", "udp port 9999"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in tap.stderr:  # tcpdump says when its capture is open
            if "listening on" in line:
                break
        assert tap.poll() is None, "tcpdump could not capture in the container's namespace"
        stranger = lab.add_extra("injector", 11)
        lab.exec(stranger, sys.executable, "-c", INJECTOR, lab.hosts[1].address, str(vni), mac, "10.9.4.2", "5",
                 check=True)
        wait_for(lambda: vxlan_drops(lab, 1) >= drops + 20, timeout=10, message="the injected frames dropped and counted")
        send = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'THROUGH-THE-TUNNEL', ('10.9.4.2', 9999))"
        subprocess.run(["nsenter", "-t", pids[a], "-n", sys.executable, "-c", send], check=True)
    finally:
        time.sleep(1)  # tcpdump prints the last packets
        tap.terminate()
    got = tap.communicate(timeout=10)[0]
    assert "INJECTED" not in got, "a frame sent in clear VXLAN from the underlay reached the container"
    assert "THROUGH-THE-TUNNEL" in got, f"the capture works: {got!r}"


@pytest.fixture(scope="module")
def relay_lab():
    """3 hosts with --password, hosts 2 and 3 cut from each other before launch (they talk through
    host 1), sessions rotated every REKEY_AFTER seconds."""
    with Lab(3) as lab, pytest.MonkeyPatch.context() as mp:
        mp.setenv(REKEY_ENV, str(REKEY_AFTER))  # the agents' environment: lab.pyweave copies ours
        lab.cut(1, 2)
        r = lab.pyweave(0, "launch", "--store-members", "1", "--password", SECRET)
        assert r.returncode == 0, r.stderr
        for i in (1, 2):
            r = lab.pyweave(i, "launch", lab.hosts[0].address, "--password", SECRET)
            assert r.returncode == 0, r.stderr
        wait_routes(lab, 1, {0: "direct", 2: "via 0"})
        wait_routes(lab, 2, {0: "direct", 1: "via 0"})
        yield lab
        prefix = lab.prefix
    assert not leftovers(prefix), f"lab left behind: {leftovers(prefix)}"


def test_relayed_traffic_is_encrypted_on_every_hop(relay_lab):
    lab = relay_lab
    a = run_container(lab, 1, "10.9.4.1/24", "busybox", "sleep", "3600")
    b = run_container(lab, 2, "10.9.4.2/24", "busybox", "sleep", "3600")
    assert ping(a, "10.9.4.2"), "first ping through the relay lost"
    relayed = transit_rx(lab, 0)
    raw = marker_on_the_wire(lab, a, b, "10.9.4.2")
    assert transit_rx(lab, 0) > relayed, "host 1 relayed nothing"
    assert MARKER.encode() not in raw
    for inner in ("10.9.4.1", "10.9.4.2"):
        assert bytes(int(x) for x in inner.split(".")) not in raw, f"inner address {inner} on the wire"
    datagrams = udp_datagrams(raw)
    ports = {(sport, dport) for (_, sport, _, dport, _) in datagrams}
    assert ports == {(TUNNEL_PORT, TUNNEL_PORT)}, f"UDP other than the tunnel's on the switch: {ports}"
    h0, h1, h2 = (h.address for h in lab.hosts)
    hops = {(src, dst) for (src, _, dst, _, p) in datagrams if len(p) > 150}  # data, not handshakes
    assert {(h1, h0), (h0, h2), (h2, h0), (h0, h1)} <= hops, f"both hops sealed, both ways: {sorted(hops)}"


def test_key_rotations_under_ping_at_10_per_second_lose_nothing(relay_lab):
    lab = relay_lab
    c0 = run_container(lab, 0, "10.9.5.1/24", "busybox", "sleep", "3600")
    c1 = run_container(lab, 1, "10.9.5.2/24", "busybox", "sleep", "3600")
    run_container(lab, 2, "10.9.5.3/24", "busybox", "sleep", "3600")
    assert ping(c0, "10.9.5.2") and ping(c1, "10.9.5.3")
    pairs = [(0, 1), (0, 2), (1, 0), (2, 0)]  # the direct pair and both hops of the relayed one
    before = {(h, p): peer_stats(lab, h, p).get("rekeys", 0) for h, p in pairs}
    with (ping_stream(c0, "10.9.5.2", interval=0.1, count=120) as direct,  # 12 s at 10/s
          ping_stream(c1, "10.9.5.3", interval=0.1, count=120) as relayed):
        outs = {"direct h1 -> h2": direct.communicate(timeout=60)[0],
                "relayed h2 -> h3": relayed.communicate(timeout=60)[0]}
    time.sleep(1.2)  # the stats file is rewritten once a second
    rotated = {(h, p): peer_stats(lab, h, p).get("rekeys", 0) - before[(h, p)] for h, p in pairs}
    for what, out in outs.items():
        lost = pings_lost(out, sent=120)
        assert lost == 0, f"{what}: {lost} pings of 120 lost while keys rotated {rotated}: {out[-400:]}"
    assert all(n >= 2 for n in rotated.values()), f"rotations during the pings (host, peer): {rotated}"
