"""The lab can break links (issue 12 item 6): `Lab.cut`, `cut_one_way`, `cut_all` and `restore` drop
the underlay between host namespaces with nftables, and leave the store's ports (TCP 2379/2380) alone."""

from __future__ import annotations

import sys

import pytest
from labtools import wait_for

from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

# A TCP or UDP server in a host namespace: prints "ready", then one line per message received.
SERVER = """
import socket, sys
kind, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((address, port))
if kind == "tcp":
    s.listen()
print("ready", flush=True)
while True:
    if kind == "tcp":
        c, _ = s.accept()
        print(c.recv(100).decode(), flush=True)
        c.close()
    else:
        print(s.recvfrom(100)[0].decode(), flush=True)
"""

CLIENT = """
import socket, sys
kind, address, port, message = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if kind == "tcp":
    socket.create_connection((address, port), timeout=3).sendall(message.encode())
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        s.sendto(message.encode(), (address, port))
"""


@pytest.fixture(scope="module")
def lab():
    with Lab(3) as lab:
        yield lab
        prefix = lab.prefix
    assert not leftovers(prefix), f"lab left behind: {leftovers(prefix)}"


def pings(lab: Lab, src: int, dst: int) -> bool:
    return lab.exec(src, "busybox", "ping", "-c", "1", "-W", "1", lab.hosts[dst].address).returncode == 0


class Server:
    def __init__(self, lab: Lab, host: int, kind: str, port: int) -> None:
        self.log = lab.state_root / f"server-{host}-{kind}-{port}.log"
        self.proc = lab.spawn(host, sys.executable, "-c", SERVER, kind, lab.hosts[host].address, str(port), log=self.log)
        wait_for(lambda: self.lines()[:1] == ["ready"], timeout=10, message=f"{kind} server on host {host}")

    def lines(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def send(lab: Lab, src: int, dst: int, kind: str, port: int, message: str) -> bool:
    return lab.exec(src, sys.executable, "-c", CLIENT, kind, lab.hosts[dst].address, str(port), message).returncode == 0


def test_cut_drops_the_underlay_but_not_the_store(lab):
    assert pings(lab, 1, 2) and pings(lab, 2, 1)
    lab.cut(1, 2)
    lab.cut(1, 2)  # idempotent
    assert not pings(lab, 1, 2) and not pings(lab, 2, 1)
    assert pings(lab, 0, 1) and pings(lab, 0, 2) and pings(lab, 1, 0)  # other links untouched
    assert lab.cuts(1) == {("in", lab.hosts[2].address), ("out", lab.hosts[2].address)}

    for port in (2379, 2380):  # the store's ports still pass, both ways
        server = Server(lab, 2, "tcp", port)
        try:
            assert send(lab, 1, 2, "tcp", port, f"store-{port}")
            wait_for(lambda: f"store-{port}" in server.lines(), timeout=5, message="TCP to the store port")
        finally:
            server.stop()
    probe = Server(lab, 2, "udp", 6784)  # the data path and the probes do not
    try:
        send(lab, 1, 2, "udp", 6784, "probe")
        assert not pings(lab, 1, 2)  # a second's wait: the datagram had time to arrive
        assert "probe" not in probe.lines()
    finally:
        probe.stop()

    lab.restore(1, 2)
    lab.restore(1, 2)  # idempotent
    assert pings(lab, 1, 2) and pings(lab, 2, 1)
    assert lab.cuts(1) == set() and lab.cuts(2) == set()
    assert "pwlab_cut" not in lab.exec(1, "nft", "list", "tables", check=True).stdout


def test_cut_one_way_blocks_one_direction_only(lab):
    a, b = 1, 2
    at_a, at_b = Server(lab, a, "udp", 6784), Server(lab, b, "udp", 6784)
    try:
        lab.cut_one_way(a, b)  # a no longer receives from b
        assert send(lab, a, b, "udp", 6784, "a-to-b")
        wait_for(lambda: "a-to-b" in at_b.lines(), timeout=5, message="a to b received")
        send(lab, b, a, "udp", 6784, "b-to-a")
        assert not pings(lab, a, b)  # a's echo requests reach b; b's replies are dropped at a
        assert "b-to-a" not in at_a.lines()

        lab.restore(a, b)
        assert send(lab, b, a, "udp", 6784, "b-to-a-again")
        wait_for(lambda: "b-to-a-again" in at_a.lines(), timeout=5, message="b to a received after restore")
    finally:
        at_a.stop()
        at_b.stop()


def test_cut_all_isolates_a_host(lab):
    lab.cut_all(2)
    try:
        assert not pings(lab, 2, 0) and not pings(lab, 2, 1) and not pings(lab, 0, 2)
        assert pings(lab, 0, 1)
    finally:
        lab.restore_all()
    assert pings(lab, 2, 0) and pings(lab, 1, 2)
