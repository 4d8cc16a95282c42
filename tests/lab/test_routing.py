"""Issue 12's acceptance: multi-hop routing and re-routing, with real etcd, Docker and kernel.

Links are cut with nftables inside the host namespaces (`Lab.cut`), leaving the store's ports open:
the data path breaks, the store stays reachable from every host. Host 0 serves the store and keeps
its links in every topology here.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from labtools import kill_and_relaunch_agent, ping, ping_stream, pings_lost, run_container, transit_rx, wait_for

from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

SCRAPE = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:6782/metrics", timeout=5).read().decode())
"""


def launched(lab: Lab) -> Lab:
    r = lab.pyweave(0, "launch")
    assert r.returncode == 0, r.stderr
    for i in range(1, len(lab.hosts)):
        r = lab.pyweave(i, "launch", lab.hosts[0].address)
        assert r.returncode == 0, r.stderr
    return lab


@pytest.fixture
def lab_of(request):
    """A fresh lab of n hosts whose links are cut as asked before anyone launches."""
    made: list[Lab] = []

    def make(n: int, cuts: list[tuple[int, int]] = ()) -> Lab:
        lab = Lab(n).__enter__()
        made.append(lab)
        for a, b in cuts:
            lab.cut(a, b)
        return launched(lab)

    yield make
    for lab in made:
        prefix = lab.prefix
        lab.__exit__(None, None, None)
        assert not leftovers(prefix), f"lab left behind: {leftovers(prefix)}"


def connections(lab: Lab, host: int) -> dict[str, dict]:
    r = lab.pyweave(host, "status", "connections", "--json")
    assert r.returncode == 0, r.stderr
    return {c["peer"]: c for c in json.loads(r.stdout or "[]")}


def wait_routes(lab: Lab, host: int, want: dict[int, str], *, timeout: float = 20) -> dict[str, dict]:
    """Until `status connections` on host shows, per peer index, "direct" or "via <index>"."""
    def shown() -> dict | None:
        seen = connections(lab, host)
        for peer, mode in want.items():
            c = seen.get(lab.hosts[peer].name)
            if c is None:
                return None
            got = c["mode"] if c["mode"] != "via" else f"via {c['via']}"
            expected = mode if not mode.startswith("via ") else f"via {lab.hosts[int(mode[4:])].name}"
            if got != expected:
                return None
        return seen

    return wait_for(shown, timeout=timeout, message=f"routes of host {host}: {want}")


def test_hosts_that_cannot_reach_each_other_talk_through_a_third(lab_of):
    lab = lab_of(3, cuts=[(1, 2)])
    wait_routes(lab, 1, {0: "direct", 2: "via 0"})
    wait_routes(lab, 2, {0: "direct", 1: "via 0"})
    c1 = run_container(lab, 1, "10.2.0.1/24", "busybox", "sleep", "3600")
    c2 = run_container(lab, 2, "10.2.0.2/24", "busybox", "sleep", "3600")
    assert ping(c1, "10.2.0.2"), "first ping h2 -> h3 (through h1) lost"
    assert ping(c2, "10.2.0.1"), "first ping h3 -> h2 (through h1) lost"
    out = lab.pyweave(1, "status", "connections").stdout
    assert f"via {lab.hosts[0].name}" in out and lab.hosts[2].name in out, out
    # status --json and the metrics carry the same.
    data = json.loads(lab.pyweave(1, "status", "--json").stdout)
    relayed = {c["peer"]: c for c in data["connections"]}[lab.hosts[2].name]
    assert (relayed["mode"], relayed["via"], relayed["hops"]) == ("via", lab.hosts[0].name, 2)
    assert "1 relayed" in lab.pyweave(1, "status").stdout
    scraped = lab.exec(1, sys.executable, "-c", SCRAPE, check=True).stdout
    line = f'pyweave_route_hops{{mode="via",peer="{lab.hosts[2].name}",via="{lab.hosts[0].name}"}} 2.0'
    assert line in scraped, [m for m in scraped.splitlines() if "route" in m]
    # The relay's counters are refreshed once a second: poll.
    wait_for(lambda: "pyweave_relayed_networks 1.0" in lab.exec(0, sys.executable, "-c", SCRAPE, check=True).stdout,
             timeout=5, message="the relay's metrics to show the relayed network")


def test_a_chain_of_four_hosts_carries_traffic_end_to_end(lab_of):
    # h1 - h0 - h2 - h3: each host reaches only its neighbours (the store on h0 stays reachable).
    lab = lab_of(4, cuts=[(1, 2), (1, 3), (0, 3)])
    wait_routes(lab, 1, {0: "direct", 2: "via 0", 3: "via 0"})
    wait_routes(lab, 3, {2: "direct", 0: "via 2", 1: "via 2"})
    hops = connections(lab, 1)[lab.hosts[3].name]["hops"]
    assert hops == 3, hops
    c1 = run_container(lab, 1, "10.3.0.1/24", "busybox", "sleep", "3600")
    c3 = run_container(lab, 3, "10.3.0.3/24", "busybox", "sleep", "3600")
    assert ping(c1, "10.3.0.3"), "first ping from one end of the chain to the other lost"
    assert ping(c3, "10.3.0.1")
    # Both relays carry it: their transit devices received the frames.
    for relay in (0, 2):
        assert transit_rx(lab, relay) > 0, f"host {relay} relayed nothing"


def test_a_cut_link_reroutes_within_two_seconds_and_comes_back_direct(lab_of):
    lab = lab_of(4)
    wait_routes(lab, 1, {0: "direct", 2: "direct", 3: "direct"})
    c1 = run_container(lab, 1, "10.4.0.1/24", "busybox", "sleep", "3600")
    run_container(lab, 3, "10.4.0.3/24", "busybox", "sleep", "3600")
    assert ping(c1, "10.4.0.3")
    with ping_stream(c1, "10.4.0.3", interval=0.1, count=250) as stream:  # 25 s at 10/s
        wait_for(lambda: transit_rx(lab, 0) + transit_rx(lab, 2) == 0, timeout=1, message="no relaying yet")
        time.sleep(2)  # steady direct traffic before the cut (the stream is the clock of this test)
        lab.cut(1, 3)
        time.sleep(10)
        lab.restore(1, 3)
        wait_routes(lab, 1, {3: "direct"}, timeout=10)
        # Direct again within 5 s: the relays' counters stop moving while pings go on.
        def relays_idle() -> bool:
            before = transit_rx(lab, 0) + transit_rx(lab, 2)
            time.sleep(1)
            return transit_rx(lab, 0) + transit_rx(lab, 2) == before
        wait_for(relays_idle, timeout=5, interval=0, message="traffic direct again after the restore")
        out, _ = stream.communicate(timeout=30)
    lost = pings_lost(out, sent=250)
    assert lost <= 20, f"{lost} pings of 250 lost (at most 2 s of them may be): {out[-400:]}"
    assert transit_rx(lab, 0) + transit_rx(lab, 2) > 0, "the cut was not routed through a relay"


def test_isolation_holds_through_a_relay(lab_of):
    from test_isolation import spoofing_fails

    lab = lab_of(3, cuts=[(1, 2)])
    wait_routes(lab, 1, {2: "via 0"})
    legit_y = run_container(lab, 1, "10.61.0.3/24", "busybox", "sleep", "3600")
    target_y = run_container(lab, 2, "10.61.0.2/24", "busybox", "sleep", "3600")
    run_container(lab, 2, "10.60.0.2/24", "busybox", "sleep", "3600")
    spoofer = run_container(lab, 1, "10.60.0.66/24", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "busybox", "sleep", "3600")
    assert lab.pyweave(1, "expose", "10.60.0.100/24", "10.61.0.100/24").returncode == 0
    lab.exec(1, "sysctl", "-w", "net.ipv4.ip_forward=1", check=True)
    assert ping(spoofer, "10.60.0.2"), "the spoofer's own network is relayed too"
    spoofing_fails(lab, spoofer, legit_y, target_y, host=1)
    assert transit_rx(lab, 0) > 0


def test_an_agent_restart_on_the_relay_loses_no_relayed_ping(lab_of):
    lab = lab_of(3, cuts=[(1, 2)])
    wait_routes(lab, 1, {2: "via 0"})
    c1 = run_container(lab, 1, "10.5.0.1/24", "busybox", "sleep", "3600")
    run_container(lab, 2, "10.5.0.2/24", "busybox", "sleep", "3600")
    assert ping(c1, "10.5.0.2")
    with ping_stream(c1, "10.5.0.2", interval=0.2, count=50) as stream:  # 10 s at 5/s
        time.sleep(2)
        kill_and_relaunch_agent(lab, 0)
        out, _ = stream.communicate(timeout=30)
    lost = pings_lost(out, sent=50)
    assert lost == 0, f"{lost} relayed pings lost across the relay's agent restart: {out[-400:]}"
