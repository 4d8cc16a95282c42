"""The agent's routing (docs/routing.md) with fakes: links records in the in-memory store, the real
agent, a recording dataplane. A peer reached through a relay gets FDB destinations towards the relay
with the hop budget in the port; a host on the path between two cut hosts relays their network."""

from __future__ import annotations

from fakes import wait_for
from test_agent import PEER, PEER_MAC, ROOT, VNI, cluster, hosts, put_json  # noqa: F401 - the fixture `hosts`

from dataplane.api import RemoteEntry

THIRD, THIRD_MAC, THIRD_CID = "h3", "02:00:00:00:00:33", "c" * 64


def links(store, host: str, *peers: str) -> None:
    put_json(store, f"{ROOT}links/{host}", {"peers": {p: {"up": True, "rtt_ms": 0.2, "since": 1.0} for p in peers}})


def third_host(store, *, with_endpoint: bool) -> None:
    rec = {"name": THIRD, "address": "198.18.0.3", "vtep_mac": "02:00:00:00:00:03", "mtu": 1450, "state": "alive"}
    put_json(store, f"{ROOT}hosts/{THIRD}", rec, lease=store.grant_lease(10))
    if with_endpoint:
        put_json(store, f"{ROOT}endpoints/{THIRD}/{THIRD_CID}/10.0.0.3",
                 {"ip": "10.0.0.3", "prefixlen": 24, "subnet": "10.0.0.0/24", "vni": VNI, "mac": THIRD_MAC, "ifname": "ethwe"})


def test_a_peer_behind_a_relay_is_programmed_towards_the_relay_and_back_direct_when_the_link_returns(request):
    host = request.getfixturevalue("hosts")()
    cluster(host.store)
    third_host(host.store, with_endpoint=False)
    links(host.store, "h1", THIRD)
    links(host.store, PEER, THIRD)
    links(host.store, THIRD, "h1", PEER)
    host.start_mirror()
    host.converge()
    relayed = RemoteEntry(PEER_MAC, "10.0.0.2", "198.18.0.3:4790")  # via h3, budget 1 left
    assert host.dataplane.remote[VNI] == {relayed}
    assert host.agent.router.routes[PEER].next_hop == THIRD
    # The direct link comes back (both ends report it): the entry moves back, by a delta.
    links(host.store, "h1", THIRD, PEER)
    links(host.store, PEER, THIRD, "h1")
    host.settled()
    host.agent.reconcile(full=False)
    assert host.dataplane.remote[VNI] == {RemoteEntry(PEER_MAC, "10.0.0.2", "198.18.0.2")}


def test_a_host_between_two_cut_hosts_relays_their_network_and_empties_its_transit_when_they_meet(request):
    host = request.getfixturevalue("hosts")()
    cluster(host.store)
    third_host(host.store, with_endpoint=True)
    links(host.store, "h1", PEER, THIRD)
    links(host.store, PEER, "h1")
    links(host.store, THIRD, "h1")
    host.start_mirror()
    host.converge()
    assert host.dataplane.transit == {(VNI, 1): {PEER_MAC: "198.18.0.2:4789", THIRD_MAC: "198.18.0.3:4789"}}
    progress = host.store.get("/pyweave/progress/v1/h1").value
    assert str(VNI).encode() in progress  # `pyweave run` waits for the relay too
    # h2 and h3 reach each other: nothing to relay; the entries go at once, the device after a grace.
    links(host.store, PEER, "h1", THIRD)
    links(host.store, THIRD, "h1", PEER)
    host.settled()
    host.agent.reconcile(full=False)
    wait_for(lambda: host.dataplane.transit == {(VNI, 1): {}}, message="transit emptied")
    assert "remove_transit" not in [m for m, _ in host.dataplane.writes]
