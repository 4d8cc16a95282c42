"""plan_host: the desired kernel state of one host, from a snapshot and Docker's answers."""

import json
from ipaddress import IPv4Interface

from dataplane.api import PortState, RemoteEntry
from pyweave.containers import ContainerInfo
from pyweave.plan import container_mac, plan_host
from store.keys import attachment_key, endpoint_key, host_key, ip_claim_key, network_key
from store.state import ClusterState

CID = "a" * 64


def host(name, address):
    return host_key(name), json.dumps({"name": name, "address": address, "vtep_mac": "02:00:00:00:00:01", "mtu": 1450}).encode()


def network(subnet, vni):
    return network_key(subnet), json.dumps({"subnet": subnet, "vni": vni}).encode()


def claim(subnet, ip, h, c):
    return ip_claim_key(subnet, ip), json.dumps({"host": h, "container": c}).encode()


def endpoint(h, c, ip, subnet, vni, mac):
    rec = {"ip": ip, "prefixlen": 24, "subnet": subnet, "vni": vni, "mac": mac, "ifname": "ethwe"}
    return endpoint_key(h, c, ip), json.dumps(rec).encode()


def running(cid=CID, pid=42):
    return ContainerInfo(id=cid, name="c", pid=pid, running=True, hostname="c", labels={})


def attached_here():
    """Container CID on host a with 10.0.0.1/24, its address claimed: where most tests start."""
    return [(attachment_key("a", CID), b'{"cidrs": ["10.0.0.1/24"]}'), claim("10.0.0.0/24", "10.0.0.1", "a", CID)]


def plan_of_a(items, containers=None, existing=None):
    """plan_host for host a (MTU 1450); Docker knows the running container CID unless told otherwise."""
    return plan_host(ClusterState.from_items(items), "a", {CID: running()} if containers is None else containers,
                     existing or {}, mtu=1450)


def base():
    return [
        host("a", "198.18.0.1"),
        host("b", "198.18.0.2"),
        network("10.0.0.0/24", 70000),
        network("10.10.0.0/24", 70001),
    ]


def test_local_port_and_remote_entries_of_the_same_network_only():
    items = base() + attached_here() + [
        endpoint("b", "b" * 64, "10.0.0.2", "10.0.0.0/24", 70000, "02:00:00:00:00:02"),
        endpoint("b", "c" * 64, "10.10.0.2", "10.10.0.0/24", 70001, "02:00:00:00:00:03"),
    ]
    plan = plan_of_a(items)
    assert plan.vnis == {70000}
    port = plan.ports[(CID, 70000)]
    assert (port.ifname, port.cidrs, port.pid, port.mtu) == ("ethwe", (IPv4Interface("10.0.0.1/24"),), 42, 1450)
    assert port.mac == container_mac(CID, 70000)
    assert plan.remote == {70000: {RemoteEntry("02:00:00:00:00:02", "10.0.0.2", "198.18.0.2")}}
    assert list(plan.endpoints) == [endpoint_key("a", CID, "10.0.0.1")]
    assert not plan.problems


def test_second_network_gets_ethwe1_and_existing_names_are_kept():
    items = base() + [
        (attachment_key("a", CID), b'{"cidrs": ["10.10.0.1/24", "10.0.0.1/24"]}'),
        claim("10.0.0.0/24", "10.0.0.1", "a", CID),
        claim("10.10.0.0/24", "10.10.0.1", "a", CID),
    ]
    existing = {(CID, 70000): PortState("pwvx", CID, 70000, "ethwe", 42, "m", ("10.0.0.1/24",))}
    plan = plan_of_a(items, existing=existing)
    assert plan.ports[(CID, 70000)].ifname == "ethwe"
    assert plan.ports[(CID, 70001)].ifname == "ethwe1"


def test_hand_written_attachment_asks_for_network_and_claim():
    items = [host("a", "198.18.0.1"), (attachment_key("a", "web"), b'{"cidrs": ["10.5.0.5/24"]}')]
    plan = plan_of_a(items, {"web": running()})
    assert plan.missing_networks == {"10.5.0.0/24"}
    items.append(network("10.5.0.0/24", 70005))
    plan = plan_of_a(items, {"web": running()})
    assert plan.missing_claims == [(IPv4Interface("10.5.0.5/24"), "a", "web")]
    assert not plan.ports


def test_address_held_by_another_container_is_a_problem_not_a_port():
    items = base() + [
        (attachment_key("a", CID), b'{"cidrs": ["10.0.0.1/24"]}'),
        claim("10.0.0.0/24", "10.0.0.1", "b", "other"),
    ]
    plan = plan_of_a(items)
    assert not plan.ports
    assert "held by container other on host b" in plan.problems[0].problem


def test_stopped_container_keeps_attachment_without_port_and_removed_one_is_released():
    items = base() + attached_here() + [
        (attachment_key("a", "d" * 64), b'{"cidrs": ["10.0.0.4/24"]}'),
    ]
    stopped = ContainerInfo(id=CID, name="c", pid=0, running=False, hostname="", labels={})
    plan = plan_of_a(items, {CID: stopped, "d" * 64: None})
    assert not plan.ports and not plan.problems
    assert plan.gone_containers == ["d" * 64]


def test_duplicate_remote_address_is_reported_once_and_first_kept():
    items = base() + attached_here() + [
        endpoint("b", "b" * 64, "10.0.0.2", "10.0.0.0/24", 70000, "02:00:00:00:00:02"),
        endpoint("b", "c" * 64, "10.0.0.2", "10.0.0.0/24", 70000, "02:00:00:00:00:03"),
    ]
    plan = plan_of_a(items)
    assert len(plan.remote[70000]) == 1
    assert len(plan.problems) == 1 and "also published" in plan.problems[0].problem


def test_remote_table_turns_entry_changes_into_few_kernel_writes():
    from dataplane.api import RemoteDelta, RemoteTable

    a1 = RemoteEntry("02:00:00:00:00:0a", "10.0.0.10", "198.18.0.2")
    a2 = RemoteEntry("02:00:00:00:00:0a", "10.0.0.11", "198.18.0.2")  # same container, second address
    table = RemoteTable([a1])
    assert table.update({a2.ip: a2}) == RemoteDelta(neigh_add=((a2.ip, a2.mac),))  # its MAC is known
    assert table.update({a1.ip: None}) == RemoteDelta(neigh_del=((a1.ip, a1.mac),))  # the MAC stays for a2
    moved = RemoteEntry(a2.mac, a2.ip, "198.18.0.9")  # its host's underlay address changed
    assert table.update({a2.ip: moved}) == RemoteDelta(fdb_del=((a2.mac, "198.18.0.2"),), fdb_add=((a2.mac, "198.18.0.9"),))
    assert table.update({a2.ip: moved}) == RemoteDelta()  # nothing new: nothing to write
    assert not table.update({a2.ip: moved})
    assert table.update({a2.ip: None}) == RemoteDelta(fdb_del=((a2.mac, "198.18.0.9"),), neigh_del=((a2.ip, a2.mac),))
    assert table.entries == {}


def test_a_delta_applied_to_entries_gives_what_the_table_holds():
    from dataplane.api import RemoteTable

    a1 = RemoteEntry("02:00:00:00:00:0a", "10.0.0.10", "198.18.0.2")
    a2 = RemoteEntry("02:00:00:00:00:0a", "10.0.0.11", "198.18.0.2")
    b = RemoteEntry("02:00:00:00:00:0b", "10.0.0.12", "198.18.0.3")
    table = RemoteTable([a1, a2])
    held = frozenset(table.entries.values())
    for changes in ({b.ip: b}, {a1.ip: None}, {b.ip: RemoteEntry(b.mac, b.ip, "198.18.0.4")}, {a2.ip: None, b.ip: None}):
        held = table.update(changes).applied_to(held)
        assert held == frozenset(table.entries.values())
