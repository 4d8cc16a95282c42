"""Issue 12's acceptance: multi-hop routing and re-routing, with real etcd, Docker and kernel.

Links are cut with nftables inside the host namespaces (`Lab.cut`), leaving the store's ports open:
the data path breaks, the store stays reachable from every host. Host 0 serves the store and keeps
its links in every topology here.
"""

from __future__ import annotations

import json

import pytest
from labtools import ping, run_container, wait_for

from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab


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
