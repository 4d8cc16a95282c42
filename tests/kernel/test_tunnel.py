"""The encrypted tunnel (dataplane/tunnel.py) between two host namespaces on a switch namespace.

Each host has a kernel VXLAN network with an address on its bridge (as `pyweave expose` does) and
runs `python -m dataplane.tunnel`; the VXLAN packets to the other host must cross the underlay only
sealed, as UDP to port 6783.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from polling import wait_for

from dataplane.api import VXLAN_OVERHEAD, RemoteEntry
from dataplane.crypto import DATA_OVERHEAD, StaticKey
from dataplane.linux import LinuxDataplane

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
VNI = 70200
SECRET = b"correct horse battery staple"
MARKER = b"PYWEAVE-PLAINTEXT-MARKER-0123456789"

def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def nsexec(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kw)


def pings(ns: str, target: str, count: int = 1) -> bool:
    return nsexec(ns, "busybox", "ping", "-c", str(count), "-W", "2", target).returncode == 0


class Host:
    def __init__(self, ns: str, index: int, workdir: Path, dp: LinuxDataplane) -> None:
        self.ns, self.index, self.dp = ns, index, dp
        self.name = f"h{index}"
        self.address = f"198.19.0.{index}"
        self.overlay = f"10.9.0.{index}"
        self.mac = f"02:aa:00:00:00:0{index}"
        self.dir = workdir / self.name
        self.dir.mkdir()
        self.config = self.dir / "tunnel.json"
        self.stats_file = self.dir / "stats.json"
        self.key_file = self.dir / "key"
        self.proc: subprocess.Popen | None = None

    def write_config(self, peers: list[Host], publics: dict[str, str]) -> None:
        secret = self.dir / "secret"
        secret.write_bytes(SECRET)
        secret.chmod(0o600)
        config = {
            "me": self.name, "address": self.address, "port": 6783, "key_file": str(self.key_file),
            "secret_file": str(secret), "stats_file": str(self.stats_file),
            "peers": {p.address: {"name": p.name, "public": publics[p.name]} for p in peers},
        }
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        os.replace(tmp, self.config)

    def start(self) -> None:
        log = open(self.dir / "tunnel.log", "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "dataplane.tunnel", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        wait_for(lambda: self.stats_file.exists() or self.proc.poll() is not None, timeout=90, message=f"tunnel of {self.name}")
        assert self.proc.poll() is None, (self.dir / "tunnel.log").read_text()

    def stats(self) -> dict:
        return json.loads(self.stats_file.read_text())

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


@pytest.fixture
def pair(switched_hosts, tmp_path):
    """Two hosts with a VXLAN network and addresses 10.9.0.1/.2, their tunnels not started yet."""
    switch, underlays = switched_hosts(2)
    hosts: list[Host] = []
    try:
        for i, (ns, underlay) in enumerate(underlays, start=1):
            mtu = underlay.mtu - VXLAN_OVERHEAD - 28 - DATA_OVERHEAD
            dp = LinuxDataplane(underlay=underlay, vtep_mac=f"02:00:00:00:01:0{i}", mtu=mtu, netns=ns)
            hosts.append(Host(ns, i, tmp_path, dp))
        for h in hosts:
            h.dp.ensure_network(VNI)
            h.dp.ensure_exposed(VNI, mac=h.mac, cidrs=[IPv4Interface(f"{h.overlay}/24")])
        for h in hosts:
            h.dp.sync_remote(VNI, [RemoteEntry(o.mac, o.overlay, o.address) for o in hosts if o is not h])
        publics = {h.name: StaticKey.load_or_create(h.key_file).public_b64 for h in hosts}
        yield hosts, switch, publics
    finally:
        for h in hosts:
            h.stop()
            h.dp.close()


def start_all(hosts: list[Host], publics: dict[str, str]) -> None:
    for h in hosts:
        h.write_config([o for o in hosts if o is not h], publics)
    for h in hosts:
        h.start()


class Capture:
    """tcpdump on the switch's port of host 1, into a pcap file."""

    def __init__(self, switch: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(["ip", "netns", "exec", switch, "tcpdump", "-i", "p1", "-U", "--immediate-mode", "-n", "-s", "0",
                                      "-w", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: path.exists() and path.stat().st_size >= 24, timeout=30, message="tcpdump")
        time.sleep(1.0)

    def frames(self) -> list[bytes]:
        time.sleep(1.0)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        data = self.path.read_bytes()
        out, pos = [], 24
        while pos + 16 <= len(data):
            caplen = struct.unpack_from("=I", data, pos + 8)[0]
            out.append(data[pos + 16:pos + 16 + caplen])
            pos += 16 + caplen
        return out


def udp_of(frame: bytes) -> tuple[str, str, int, int, bytes] | None:
    """(src, dst, sport, dport, payload) of an unfragmented or first-fragment IPv4/UDP frame."""
    if frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 15) * 4
    if struct.unpack_from("!H", frame, 20)[0] & 0x1FFF:
        return None  # a later fragment: no UDP header
    sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    return (socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]), sport, dport, frame[14 + ihl + 8:])


def send_udp(ns: str, src: str, dst: str, port: int, payload: bytes, count: int = 1) -> None:
    code = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))\n"
            "for _ in range(int(sys.argv[5])): s.sendto(bytes.fromhex(sys.argv[4]), (sys.argv[2], int(sys.argv[3])))")
    nsexec(ns, sys.executable, "-c", code, src, dst, str(port), payload.hex(), str(count), check=True)


def test_pings_cross_sealed_and_the_underlay_carries_only_udp_6783(pair, tmp_path):
    hosts, switch, publics = pair
    h1, h2 = hosts
    start_all(hosts, publics)
    capture = Capture(switch, tmp_path / "cap.pcap")
    assert pings(h1.ns, h2.overlay), "the first ping after both tunnels are up"
    assert pings(h2.ns, h1.overlay, count=3)
    send_udp(h1.ns, h1.overlay, h2.overlay, 9999, MARKER, count=3)
    frames = capture.frames()
    udp = [u for f in frames if (u := udp_of(f))]
    assert udp, "the capture saw the traffic"
    ports = {(u[2], u[3]) for u in udp}
    assert ports == {(6783, 6783)}, ports
    assert not any(MARKER in f for f in frames)
    assert not any(socket.inet_aton(h2.overlay) in f or socket.inet_aton(h1.overlay) in f for f in frames)
    wait_for(lambda: h1.stats()["total"].get("sealed", 0) >= 4 and h2.stats()["total"].get("opened", 0) >= 4,
             timeout=30, message="stats")
    peer = h1.stats()["peers"][h2.address]
    assert peer["name"] == "h2" and peer["opened"] >= 3


def test_forged_and_replayed_datagrams_change_nothing_and_are_counted(pair, tmp_path):
    hosts, switch, publics = pair
    h1, h2 = hosts
    start_all(hosts, publics)
    assert pings(h1.ns, h2.overlay)  # the session is up
    capture = Capture(switch, tmp_path / "cap.pcap")
    send_udp(h1.ns, h1.overlay, h2.overlay, 9999, MARKER, count=3)
    frames = capture.frames()
    sealed = [u[4] for f in frames if (u := udp_of(f)) and u[0] == h1.address and u[3] == 6783]
    assert sealed
    # the stats file is rewritten at most once a second: wait until it has the ping and the 3 markers
    before_all = wait_for(lambda: (st := h2.stats())["total"].get("opened", 0) >= 4 and st, timeout=30,
                          message="the markers counted")
    before = before_all["total"]
    junk = os.urandom(200)
    if junk[0] == 0x10:  # a chunk's first byte (1 in 256): it would wait for its other chunks, uncounted
        junk = b"\x11" + junk[1:]
    send_udp(h1.ns, h1.address, h2.address, 6783, junk, count=3)  # random bytes from a peer
    send_udp(h1.ns, h1.address, h2.address, 6783, sealed[-1], count=2)  # a captured datagram again
    flipped = bytearray(sealed[-1])
    flipped[-5] ^= 1
    send_udp(h1.ns, h1.address, h2.address, 6783, bytes(flipped))
    ip(switch, "addr", "add", "198.19.0.99/24", "dev", "sw0")
    send_udp(switch, "198.19.0.99", h2.address, 6783, sealed[-1])  # from a stranger
    wait_for(lambda: h2.stats()["tunnel"]["unknown_source"] >= 1, timeout=30, message="unknown source counted")
    after_all = h2.stats()
    after = after_all["total"]
    dropped = sum(after.get(k, 0) - before.get(k, 0) for k in after if k not in ("opened", "sealed"))
    assert dropped >= 6, (before_all, after_all)
    assert after.get("opened", 0) == before.get("opened", 0)  # nothing forged was delivered
    assert pings(h1.ns, h2.overlay) and pings(h2.ns, h1.overlay)


def test_sigterm_removes_the_tun_device_nft_table_rule_and_routes(pair):
    hosts, switch, publics = pair
    h1, _h2 = hosts
    start_all(hosts, publics)
    assert "pwtun0" in ip(h1.ns, "link", "show")
    assert "pyweave_tunnel" in nsexec(h1.ns, "nft", "list", "tables").stdout
    assert "fwmark 0x7077 lookup 7077" in ip(h1.ns, "rule", "show")
    assert h1.stop() == 0
    assert "pwtun0" not in ip(h1.ns, "link", "show")
    assert "pyweave_tunnel" not in nsexec(h1.ns, "nft", "list", "tables").stdout
    assert "0x7077" not in ip(h1.ns, "rule", "show")
    assert ip(h1.ns, "route", "show", "table", "7077").strip() == ""


def test_a_crashed_tunnel_fails_closed_until_cleanup(pair, tmp_path):
    hosts, switch, publics = pair
    h1, h2 = hosts
    start_all(hosts, publics)
    assert h1.proc is not None
    h1.proc.kill()  # `ip netns exec` execs the tunnel: this is its pid
    h1.proc.wait(10)
    capture = Capture(switch, tmp_path / "cap.pcap")
    assert not pings(h1.ns, h2.overlay)  # blackholed, not sent in clear
    assert not any((u := udp_of(f)) and u[3] == 4789 for f in capture.frames())
    nsexec(h1.ns, sys.executable, "-m", "dataplane.tunnel", "--cleanup", check=True, cwd=REPO)
    nsexec(h1.ns, sys.executable, "-m", "dataplane.tunnel", "--cleanup", check=True, cwd=REPO)  # idempotent
    assert "pyweave_tunnel" not in nsexec(h1.ns, "nft", "list", "tables").stdout
    assert "0x7077" not in ip(h1.ns, "rule", "show")


def nft_dropped(ns: str) -> int:
    """Packets the tunnel's nft chain dropped as not to a peer."""
    chain = nsexec(ns, "nft", "list", "chain", "inet", "pyweave_tunnel", "out").stdout
    found = re.search(r"counter packets (\d+) bytes \d+ drop", chain)
    assert found, chain
    return int(found.group(1))


def peer_set(ns: str) -> str:
    return nsexec(ns, "nft", "list", "set", "inet", "pyweave_tunnel", "peers").stdout


def test_only_peers_are_steered_and_sighup_reload_adds_and_removes_a_peer(pair, tmp_path):
    hosts, switch, publics = pair
    h1, h2 = hosts
    h1.write_config([], publics)
    h2.write_config([h1], publics)
    h1.start()
    h2.start()
    assert h2.address not in peer_set(h1.ns)
    capture = Capture(switch, tmp_path / "cap.pcap")
    assert not pings(h1.ns, h2.overlay)
    # VXLAN to a host that is not (yet) a peer is dropped by nft: neither in clear on the wire nor
    # steered into the tunnel (which would count it as no_peer)
    wait_for(lambda: nft_dropped(h1.ns) >= 1, timeout=30, message="drops counted by nft")
    assert not any((u := udp_of(f)) and u[3] == 4789 for f in capture.frames())
    assert h1.stats()["tunnel"]["no_peer"] == 0
    h1.write_config([h2], publics)
    assert h1.proc is not None
    h1.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: h2.address in h1.stats()["peers"], timeout=30, message="reloaded peers")
    assert h2.address in peer_set(h1.ns)
    assert pings(h1.ns, h2.overlay) and pings(h2.ns, h1.overlay)
    h1.write_config([], publics)
    h1.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: h2.address not in h1.stats()["peers"], timeout=30, message="peer removed")
    assert h2.address not in peer_set(h1.ns)
    dropped = nft_dropped(h1.ns)
    assert not pings(h1.ns, h2.overlay)
    assert nft_dropped(h1.ns) > dropped


SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 7777)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while data := c.recv(1 << 20):
    h.update(data); n += len(data)
print(n, h.hexdigest(), flush=True)
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7777)); c.sendall(bytes.fromhex(sys.argv[2]) * int(sys.argv[3])); c.close()
"""


def test_a_bulk_tcp_transfer_arrives_intact_in_few_sealed_messages(pair, tmp_path):
    """TCP's GSO super-packets cross sealed whole (in UDP GSO chunks): the bytes arrive intact, in
    far fewer sealed messages than MTU-sized packets, and the marker never shows on the wire."""
    import hashlib

    hosts, switch, publics = pair
    h1, h2 = hosts
    start_all(hosts, publics)
    assert pings(h1.ns, h2.overlay)
    repeats = 8 * 1024 * 1024 // len(MARKER)
    server = subprocess.Popen(["ip", "netns", "exec", h2.ns, sys.executable, "-c", SERVER, h2.overlay],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        before = h1.stats()["total"]["sealed"]
        capture = Capture(switch, tmp_path / "cap.pcap")
        nsexec(h1.ns, sys.executable, "-c", CLIENT, h2.overlay, MARKER.hex(), str(repeats), check=True, timeout=120)
        size, digest = server.stdout.readline().split()
        frames = capture.frames()
    finally:
        server.kill()
        server.wait()
    assert (int(size), digest) == (len(MARKER) * repeats, hashlib.sha256(MARKER * repeats).hexdigest())
    assert not any(MARKER in f for f in frames)
    time.sleep(1.5)  # the stats file is rewritten once a second
    sealed = h1.stats()["total"]["sealed"] - before
    assert sealed < len(MARKER) * repeats / 1400 / 4, f"{sealed} sealed messages: no super-packets"
