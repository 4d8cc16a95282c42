"""Issue 14's acceptance: the tutorial with `--password`, with real etcd, Docker and kernel.

Every frame between hosts crosses each host's tunnel (docs/encryption.md): the switch carries UDP 6783
only (and the store's TCP), never a VXLAN packet, a marker sent inside the overlay, or a container's
address. A host with another secret is refused at launch and leaves nothing running."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from labtools import docker, ping, run_container, wait_for

from pyweave.agent.tunnel import tunnel_pid
from pyweave.host import HostState
from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

SECRET = "correct horse battery staple"
MARKER = "PYWEAVE-SECRET-MARKER-7f3a"


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
    server = subprocess.Popen(["docker", "exec", b, "nc", "-l", "-p", "7777"], stdout=subprocess.PIPE, text=True)
    capture = subprocess.Popen(
        ["ip", "netns", "exec", lab.switch, "tcpdump", "-i", "sw", "-nn", "-U", "-w", "-", "udp or icmp"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)  # tcpdump attaches (its own clock; the assertions below poll nothing timing-bound)
        assert ping(a, "10.8.0.2", count=3)
        wait_for(lambda: docker("exec", a, "sh", "-c", f"echo {MARKER} | nc -w 2 10.8.0.2 7777").returncode == 0,
                 timeout=10, message="the marker sent over TCP")
        assert MARKER in server.communicate(timeout=10)[0]
    finally:
        server.kill()
        time.sleep(0.5)
        capture.terminate()
    raw = capture.communicate(timeout=10)[0]
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
