"""The domain tier against the in-memory store: schema validation, VNI and address transactions."""

import json

import pytest

from store.addresses import OverlayAddress, OverlaySubnet
from store.cluster import Cluster
from store.errors import AddressInUse, SubnetConflict
from store.keys import attachment_key, endpoint_key, host_key, ip_claim_key, network_key
from store.memory import MemoryStore
from store.state import ClusterState

HOST = {"name": "a", "address": "198.18.0.1", "vtep_mac": "02:00:00:00:00:01", "mtu": 1450}


def iface(text: str) -> OverlayAddress:
    return OverlayAddress(text)


def test_ensure_network_allocates_distinct_vnis_and_reuses_existing():
    cluster = Cluster(MemoryStore())
    a = cluster.ensure_network(OverlaySubnet("10.0.0.0/24"))
    b = cluster.ensure_network(OverlaySubnet("10.10.0.0/24"))
    again = cluster.ensure_network(OverlaySubnet("10.0.0.0/24"))
    assert a.vni != b.vni
    assert again == a


def test_overlapping_subnet_is_refused_with_both_named():
    cluster = Cluster(MemoryStore())
    cluster.ensure_network(OverlaySubnet("10.0.0.0/24"))
    with pytest.raises(SubnetConflict, match=r"10\.0\.0\.0/16 overlaps existing network 10\.0\.0\.0/24"):
        cluster.ensure_network(OverlaySubnet("10.0.0.0/16"))


def test_attach_claims_addresses_and_refuses_a_second_holder():
    raw = MemoryStore()
    cluster = Cluster(raw)
    assert cluster.attach("a", "c1", [iface("10.0.0.1/24")]) == [iface("10.0.0.1/24")]
    assert cluster.attach("a", "c1", [iface("10.0.0.1/24")]) == []  # idempotent
    with pytest.raises(AddressInUse, match="held by container c1 on host a"):
        cluster.attach("b", "c2", [iface("10.0.0.1/24")])
    assert json.loads(raw.get(ip_claim_key("10.0.0.0/24", "10.0.0.1")).value) == {"host": "a", "container": "c1"}


def test_detach_releases_claims_and_removes_empty_attachment():
    raw = MemoryStore()
    cluster = Cluster(raw)
    cluster.attach("a", "c1", [iface("10.0.0.1/24"), iface("10.10.0.1/24")])
    assert cluster.detach("a", "c1", [iface("10.0.0.1/24")]) == [iface("10.0.0.1/24")]
    assert raw.get(ip_claim_key("10.0.0.0/24", "10.0.0.1")) is None
    assert json.loads(raw.get(attachment_key("a", "c1")).value) == {"cidrs": ["10.10.0.1/24"]}
    assert cluster.detach("a", "c1", None) == [iface("10.10.0.1/24")]
    assert raw.get(attachment_key("a", "c1")) is None


def test_claim_for_a_hand_written_attachment():
    cluster = Cluster(MemoryStore())
    assert cluster.claim(iface("10.0.0.5/24"), host="b", container="web")
    assert cluster.claim(iface("10.0.0.5/24"), host="b", container="web")  # already ours
    assert not cluster.claim(iface("10.0.0.5/24"), host="c", container="db")


@pytest.mark.parametrize(
    "key, value, problem",
    [
        (host_key("a"), b"{not json", "not valid JSON"),
        (host_key("a"), b"[1, 2]", "expected a JSON object"),
        (host_key("a"), json.dumps({**HOST, "mtu": "big"}).encode(), 'field "mtu" must be int'),
        (host_key("a"), json.dumps({**HOST, "name": "b"}).encode(), "names host 'a'"),
        (network_key("10.0.0.0/24"), b'{"subnet": "10.0.0.0/24", "vni": true}', 'field "vni" must be int'),
        (network_key("10.0.0.0/24"), b'{"subnet": "10.0.0.1/24", "vni": 7}', "has host bits set"),
        (attachment_key("a", "c1"), b'{"cidrs": ["10.0.0.0/24"]}', "is the network address"),
        (attachment_key("a", "c1"), b'{"cidrs": ["10.0.0.1"]}', "has no prefix length"),
        (attachment_key("a", "c1"), b'{"cidrs": "10.0.0.1/24"}', 'field "cidrs" must be list'),
        ("/pyweave/v1/whatever/x", b"{}", "unknown key"),
    ],
)
def test_invalid_values_become_problems_naming_the_key(key, value, problem):
    state = ClusterState.from_items([(key, value)])
    assert len(state.invalid) == 1
    assert state.invalid[0].key == key
    assert problem in state.invalid[0].problem


def test_endpoint_outside_its_subnet_or_of_unknown_host_is_rejected_and_others_stay():
    net = (network_key("10.0.0.0/24"), b'{"subnet": "10.0.0.0/24", "vni": 70000}')
    host = (host_key("a"), json.dumps(HOST).encode())
    ep = {"ip": "10.0.0.9", "prefixlen": 24, "subnet": "10.0.0.0/24", "vni": 70000, "mac": "02:00:00:00:00:09", "ifname": "ethwe"}
    good = (endpoint_key("a", "c1", "10.0.0.9"), json.dumps(ep).encode())
    outside = (endpoint_key("a", "c2", "10.1.0.9"), json.dumps({**ep, "ip": "10.1.0.9"}).encode())
    orphan = (endpoint_key("zz", "c3", "10.0.0.7"), json.dumps({**ep, "ip": "10.0.0.7"}).encode())
    state = ClusterState.from_items([net, host, good, outside, orphan])
    assert list(state.endpoints) == [good[0]]
    problems = {p.key: p.problem for p in state.invalid}
    assert "outside its subnet" in problems[outside[0]]
    assert "host zz is not registered" in problems[orphan[0]]


def test_hand_made_duplicate_vni_never_evicts_the_network_holding_the_claim():
    real = (network_key("10.9.0.0/24"), b'{"subnet": "10.9.0.0/24", "vni": 70000}')
    claim = ("/pyweave/v1/vnis/70000", b'{"subnet": "10.9.0.0/24"}')
    dup = (network_key("10.1.0.0/24"), b'{"subnet": "10.1.0.0/24", "vni": 70000}')  # sorts first
    state = ClusterState.from_items([real, claim, dup])
    assert list(state.networks) == ["10.9.0.0/24"]
    assert [p.key for p in state.invalid] == [dup[0]]
