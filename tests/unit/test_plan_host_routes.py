"""An attachment over the host's own routes, written by hand (issue 15, item 4): the plan reports it
and gives it nothing (no port, network, claim); the agent's guard reads the host's tables rarely."""

import ipaddress
import json

from dataplane.hostroutes import HostOverlap
from pyweave.agent.hostguard import HostRouteGuard
from pyweave.containers import ContainerInfo
from pyweave.plan import plan_host
from store.keys import attachment_key, host_key, ip_claim_key, network_key
from store.state import ClusterState

GOOD, BAD = "a" * 64, "b" * 64
UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")


def running(cid):
    return ContainerInfo(id=cid, name=cid[:4], pid=42, running=True, hostname=cid[:4], labels={})


def overlap(net):
    return "the route 198.18.0.0/24 dev eth0 of this host" if net.overlaps(UNDERLAY) else None


def items():
    return [
        (host_key("a"), json.dumps({"name": "a", "address": "198.18.0.1", "vtep_mac": "02:00:00:00:00:01", "mtu": 1450}).encode()),
        (network_key("10.0.0.0/24"), json.dumps({"subnet": "10.0.0.0/24", "vni": 70000}).encode()),
        (ip_claim_key("10.0.0.0/24", "10.0.0.1"), json.dumps({"host": "a", "container": GOOD}).encode()),
        (attachment_key("a", GOOD), b'{"cidrs": ["10.0.0.1/24"]}'),
        (attachment_key("a", BAD), b'{"cidrs": ["198.18.0.77/24"]}'),
    ]


def test_an_attachment_over_the_hosts_route_is_a_problem_and_gets_nothing():
    plan = plan_host(ClusterState.from_items(items()), "a", {GOOD: running(GOOD), BAD: running(BAD)}, {}, mtu=1450,
                     host_overlap=overlap)
    assert plan.refused == [BAD]
    [problem] = plan.problems
    assert problem.key == attachment_key("a", BAD)
    assert "subnet 198.18.0.0/24 overlaps the route 198.18.0.0/24 dev eth0 of this host" in problem.problem
    assert "not programmed" in problem.problem
    # Nothing for it: no port, no network to create (its route), no address to claim.
    assert plan.vnis == {70000} and list(plan.ports) == [(GOOD, 70000)]
    assert not plan.missing_networks and not plan.missing_claims
    assert all(rec.container == GOOD for rec in plan.endpoints.values())


def test_without_the_check_the_same_attachment_asks_for_its_network():
    plan = plan_host(ClusterState.from_items(items()), "a", {GOOD: running(GOOD), BAD: running(BAD)}, {}, mtu=1450)
    assert plan.refused == [] and plan.missing_networks == {"198.18.0.0/24"}


def test_the_guard_reads_the_host_once_per_new_subnet_until_a_full_pass():
    asked = []

    def overlaps(net):
        asked.append(net)
        return [HostOverlap(UNDERLAY, "eth0")] if net.overlaps(UNDERLAY) else []

    guard = HostRouteGuard(overlaps)
    bad, good = ipaddress.IPv4Network("198.18.0.0/24"), ipaddress.IPv4Network("10.0.0.0/24")
    for _ in range(100):  # every pass asks again
        assert guard(bad) == "the route 198.18.0.0/24 dev eth0 of this host"
        assert guard(good) is None
    assert guard.reads == 2
    guard.forget()
    guard(bad)
    assert guard.reads == 3
