"""The kernel data plane in fresh namespaces: one stands for the host, others for containers."""

import subprocess
import time
from ipaddress import IPv4Interface

import pytest

from dataplane.api import DataplaneError, LocalPort, RemoteEntry, bridge_name, vxlan_name
from dataplane.host import find_underlay, inventory, remove_all_owned
from dataplane.linux import LinuxDataplane

pytestmark = pytest.mark.kernel

CID = "f" * 64


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def host(namespaces):
    ns = namespaces("host")
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    ip(ns, "addr", "add", "198.18.0.1/24", "dev", "eth0")
    ip(ns, "link", "set", "eth0", "up")
    ip(ns, "link", "set", "eth1", "up")
    underlay = find_underlay(netns=ns)
    dp = LinuxDataplane(underlay=underlay, vtep_mac="02:00:00:00:00:01", mtu=underlay.mtu - 50, netns=ns)
    yield ns, dp
    dp.close()


def test_underlay_is_found_and_mtu_leaves_room_for_vxlan(host):
    ns, dp = host
    assert (dp.underlay.ifname, dp.underlay.address, dp.underlay.mtu) == ("eth0", "198.18.0.1", 1500)
    assert dp.mtu == 1450


def test_network_devices_are_created_once_with_learning_off_and_proxy_on(host):
    ns, dp = host
    dp.ensure_network(70000)
    dp.ensure_network(70000)
    details = ip(ns, "-d", "link", "show", vxlan_name(70000))
    assert "vxlan id 70000" in details and "nolearning" in details and "proxy" in details
    assert f"master {bridge_name(70000)}" in details and "mtu 1450" in details
    assert inventory(netns=ns)["vxlans"] == 1 and inventory(netns=ns)["bridges"] == 1


def test_vxlan_with_wrong_parameters_is_replaced(host):
    ns, dp = host
    ip(ns, "link", "add", vxlan_name(70001), "type", "vxlan", "id", "5", "dstport", "4789", "dev", "eth0")
    dp.ensure_network(70001)
    assert "vxlan id 70001" in ip(ns, "-d", "link", "show", vxlan_name(70001))


def test_port_goes_into_the_container_with_address_mac_and_mtu_idempotently(host, namespaces):
    ns, dp = host
    cns, pid = namespaces("c1", with_pid=True)
    dp.ensure_network(70000)
    port = LocalPort(CID, pid, 70000, "ethwe", "02:11:22:33:44:55", (IPv4Interface("10.0.0.1/24"),), 1450)
    dp.ensure_port(port)
    dp.ensure_port(port)
    shown = ip(cns, "addr", "show", "ethwe")
    assert "inet 10.0.0.1/24" in shown and "02:11:22:33:44:55" in shown and "mtu 1450" in shown
    assert inventory(netns=ns)["veths"] == 1
    dp.ensure_port(LocalPort(CID, pid, 70000, "ethwe", "02:11:22:33:44:55", (IPv4Interface("10.0.0.1/24"), IPv4Interface("10.0.0.3/24")), 1450))
    assert "inet 10.0.0.3/24" in ip(cns, "addr", "show", "ethwe")
    ports = dp.ports()
    assert ports[(CID, 70000)].cidrs == (IPv4Interface("10.0.0.1/24"), IPv4Interface("10.0.0.3/24"))
    dp.remove_port(ports[(CID, 70000)])
    dp.remove_port(ports[(CID, 70000)])  # a missing link is success
    assert "ethwe" not in ip(cns, "link")


def test_a_name_clash_in_the_container_rolls_back_the_pair(host, namespaces):
    ns, dp = host
    cns, pid = namespaces("c2", with_pid=True)
    ip(cns, "link", "add", "ethwe", "type", "bridge")
    dp.ensure_network(70000)

    with pytest.raises(DataplaneError, match="already has an interface named ethwe"):
        dp.ensure_port(LocalPort(CID, pid, 70000, "ethwe", "02:11:22:33:44:56", (IPv4Interface("10.0.0.2/24"),), 1450))
    assert inventory(netns=ns)["veths"] == 0
    assert "pwt" not in ip(cns, "link")


def test_remote_entries_are_synced_exactly_and_permanently(host):
    ns, dp = host
    dp.ensure_network(70000)
    a = RemoteEntry("02:00:00:00:00:0a", "10.0.0.10", "198.18.0.2")
    b = RemoteEntry("02:00:00:00:00:0b", "10.0.0.11", "198.18.0.3")
    assert dp.sync_remote(70000, {a, b}) == 4
    assert dp.sync_remote(70000, {a, b}) == 0
    fdb = subprocess.run(["ip", "netns", "exec", ns, "bridge", "fdb", "show", "dev", vxlan_name(70000)], capture_output=True, text=True).stdout
    assert "02:00:00:00:00:0a dst 198.18.0.2" in fdb and "permanent" in fdb
    assert "00:00:00:00:00:00" not in fdb  # no flooding entry: nothing unknown leaves the host
    neigh = ip(ns, "neigh", "show", "dev", vxlan_name(70000))
    assert "10.0.0.11 lladdr 02:00:00:00:00:0b PERMANENT" in neigh
    moved = RemoteEntry("02:00:00:00:00:0b", "10.0.0.11", "198.18.0.4")
    assert dp.sync_remote(70000, {moved}) > 0
    fdb = subprocess.run(["ip", "netns", "exec", ns, "bridge", "fdb", "show", "dev", vxlan_name(70000)], capture_output=True, text=True).stdout
    assert "dst 198.18.0.4" in fdb and "02:00:00:00:00:0a" not in fdb


def test_entries_deleted_by_hand_come_back_on_the_next_sync(host):
    ns, dp = host
    dp.ensure_network(70000)
    a = RemoteEntry("02:00:00:00:00:0a", "10.0.0.10", "198.18.0.2")
    dp.sync_remote(70000, {a})
    ip(ns, "neigh", "del", "10.0.0.10", "dev", vxlan_name(70000))
    assert dp.sync_remote(70000, {a}) == 1
    ip(ns, "link", "del", bridge_name(70000))
    dp.ensure_network(70000)
    assert f"master {bridge_name(70000)}" in ip(ns, "link", "show", vxlan_name(70000))


def test_remove_network_and_remove_all_owned(host, namespaces):
    ns, dp = host
    dp.ensure_network(70000)
    dp.ensure_network(70001)
    dp.remove_network(70000)
    dp.remove_network(70000)
    assert dp.networks() == {70001}
    assert remove_all_owned(netns=ns) == 2
    deadline = time.monotonic() + 5
    while dp.networks() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dp.networks() == set()


def test_update_remote_writes_deltas_and_matches_a_full_sync(host):
    from dataplane.api import RemoteTable

    ns, dp = host
    dp.ensure_network(70000)
    table = RemoteTable()
    a = RemoteEntry("02:00:00:00:00:0a", "10.0.0.10", "198.18.0.2")
    b = RemoteEntry("02:00:00:00:00:0b", "10.0.0.11", "198.18.0.3")
    dp.update_remote(70000, table.update({a.ip: a, b.ip: b}))
    moved = RemoteEntry(b.mac, b.ip, "198.18.0.4")
    dp.update_remote(70000, table.update({b.ip: moved, a.ip: None}))
    fdb = subprocess.run(["ip", "netns", "exec", ns, "bridge", "fdb", "show", "dev", vxlan_name(70000)],
                         capture_output=True, text=True, check=True).stdout
    neigh = ip(ns, "neigh", "show", "dev", vxlan_name(70000))
    assert "02:00:00:00:00:0b dst 198.18.0.4" in fdb and "198.18.0.3" not in fdb and "02:00:00:00:00:0a" not in fdb
    assert "10.0.0.11 lladdr 02:00:00:00:00:0b PERMANENT" in neigh and "10.0.0.10" not in neigh
    assert dp.sync_remote(70000, table.entries.values()) == 0  # the deltas left exactly the full state


def test_bulk_neighbour_writes_report_refusals_and_ignore_what_changes_nothing(host):
    from dataplane.neighbours import NeighbourError, Neighbours

    ns, dp = host
    dp.ensure_network(70000)
    idx = int(ip(ns, "-o", "link", "show", vxlan_name(70000)).split(":")[0])
    nb = Neighbours(ns)
    try:
        macs = [f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}" for i in range(1200)]  # more than one batch
        nb.apply(idx, fdb_add=[(m, "198.18.0.9") for m in macs], neigh_add=[(f"10.9.{i >> 8}.{i & 255}", m) for i, m in enumerate(macs)])
        assert {e.mac for e in nb.fdb(idx)} == set(macs)
        assert len(nb.neighbours(idx)) == len(macs)
        nb.apply(idx, fdb_add=[(macs[0], "198.18.0.9")], fdb_del=[("02:ff:ff:ff:ff:ff", "198.18.0.9")])  # exists / gone: fine
        with pytest.raises(NeighbourError):
            nb.apply(idx + 1000, neigh_add=[("10.9.9.9", macs[0])])  # no such device
        nb.apply(idx, fdb_del=[(m, "198.18.0.9") for m in macs], neigh_del=[(f"10.9.{i >> 8}.{i & 255}", m) for i, m in enumerate(macs)])
        assert nb.fdb(idx) == [] and nb.neighbours(idx) == []
    finally:
        nb.close()


def test_the_loopback_and_its_link_local_service_address_are_never_the_underlay(namespaces):
    from dataplane.host import ensure_local_address, remove_local_address

    ns = namespaces("alone")
    ensure_local_address("169.254.53.53", netns=ns)  # the DNS service address an agent leaves behind
    with pytest.raises(DataplaneError, match="no IPv4 address"):
        find_underlay(netns=ns)
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    ip(ns, "addr", "add", "198.18.0.7/24", "dev", "eth0")
    assert find_underlay(netns=ns).address == "198.18.0.7"
    remove_local_address("169.254.53.53", netns=ns)
    remove_local_address("169.254.53.53", netns=ns)  # gone already: fine
    assert "169.254.53.53" not in ip(ns, "addr", "show", "dev", "lo")


def _underlay_hosts(switched_hosts, count: int):
    """`count` host namespaces on a switch namespace, underlay 198.19.0.<i>/24, each with a LinuxDataplane."""
    _switch, underlays = switched_hosts(count)
    return [(ns, LinuxDataplane(underlay=underlay, vtep_mac=f"02:00:00:00:01:0{i}", mtu=1450, netns=ns))
            for i, (ns, underlay) in enumerate(underlays, start=1)]


def _cut(ns: str, other: str) -> None:
    for rule in ("add table inet cut", "add chain inet cut in { type filter hook input priority 0 ; }",
                 "add chain inet cut out { type filter hook output priority 0 ; }",
                 f"add rule inet cut in ip saddr {other} drop", f"add rule inet cut out ip daddr {other} drop"):
        subprocess.run(["ip", "netns", "exec", ns, "nft", *rule.split()], check=True)


def _pings(ns: str, target: str) -> bool:
    done = subprocess.run(["ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1", target],
                          capture_output=True, text=True)
    return done.returncode == 0


def test_a_transit_host_relays_frames_between_hosts_that_cannot_reach_each_other(switched_hosts):
    """Host 1 and host 3 are cut; host 2 relays their network's frames in the kernel, with the hop
    budget in the UDP port (docs/routing.md); the budget-0 device never forwards."""
    (a, dpa), (b, dpb), (c, dpc) = hosts = _underlay_hosts(switched_hosts, 3)
    try:
        _cut(a, "198.19.0.3")
        _cut(c, "198.19.0.1")
        vni, mac_a, mac_c = 70100, "02:aa:00:00:00:01", "02:aa:00:00:00:03"
        for dp, mac, addr in ((dpa, mac_a, "10.9.0.1/24"), (dpc, mac_c, "10.9.0.3/24")):
            dp.ensure_network(vni)
            dp.ensure_exposed(vni, mac=mac, cidrs=[IPv4Interface(addr)])
        assert not _pings(a, "10.9.0.3")  # direct: cut
        dpa.sync_remote(vni, [RemoteEntry(mac_c, "10.9.0.3", "198.19.0.2:4790")])
        dpc.sync_remote(vni, [RemoteEntry(mac_a, "10.9.0.1", "198.19.0.2:4790")])
        assert not _pings(a, "10.9.0.3")  # no relay yet
        dpb.ensure_transit(vni, 1)
        dpb.ensure_transit(vni, 1)
        fdb = {mac_a: "198.19.0.1:4789", mac_c: "198.19.0.3:4789"}
        assert dpb.sync_transit(vni, 1, fdb) == 2
        assert dpb.sync_transit(vni, 1, fdb) == 0  # the dump gives the same strings back
        assert dpb.transits() == {(vni, 1)}
        assert "hairpin on" in ip(b, "-d", "link", "show", "pwrx1-70100")
        assert _pings(a, "10.9.0.3") and _pings(c, "10.9.0.1")
        # A frame sent to the network's own device on the relay (budget 0) is not forwarded.
        dpa.sync_remote(vni, [RemoteEntry(mac_c, "10.9.0.3", "198.19.0.2")])
        dpb.ensure_network(vni)
        dpb.sync_remote(vni, [RemoteEntry(mac_c, "10.9.0.3", "198.19.0.3"), RemoteEntry(mac_a, "10.9.0.1", "198.19.0.1")])
        assert not _pings(a, "10.9.0.3")
        dpb.remove_transit(vni, 1)
        dpb.remove_transit(vni, 1)
        assert dpb.transits() == set()
    finally:
        for _ns, dp in hosts:
            dp.close()
