"""The raw link reader (`dataplane.links`) against what `ip -details -json link` says, in a fresh namespace."""

import json
import subprocess

import pytest

from dataplane.links import LinkReader

pytestmark = pytest.mark.kernel


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def test_links_read_as_ip_shows_them(namespaces):
    ns = namespaces("links")
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    ip(ns, "addr", "add", "198.18.0.1/24", "dev", "eth0")
    ip(ns, "link", "add", "pwb-70000", "mtu", "1400", "type", "bridge")
    ip(ns, "link", "add", "pwx-70000", "address", "02:00:00:00:00:07", "mtu", "1400", "type", "vxlan", "id", "70000",
       "local", "198.18.0.1", "dev", "eth0", "dstport", "4789", "nolearning", "proxy")
    ip(ns, "link", "set", "pwx-70000", "master", "pwb-70000", "up")
    ip(ns, "link", "set", "eth1", "alias", "pyweave cid=abc vni=70000")
    reader = LinkReader(ns)
    try:
        shown = {link["ifname"]: link for link in json.loads(ip(ns, "-details", "-json", "link", "show"))}
        dumped = {link.name: link for link in reader.dump()}
        assert set(dumped) == set(shown)
        for name, want in shown.items():
            got = dumped[name]
            assert got == reader.get(name)
            assert (got.index, got.mtu, got.address) == (want["ifindex"], want["mtu"], want["address"])
            assert got.up == ("UP" in want["flags"])
            assert got.operstate == want["operstate"]
            assert got.alias == want.get("ifalias")
            assert got.kind == want.get("linkinfo", {}).get("info_kind")
        vxlan, bridge = dumped["pwx-70000"], dumped["pwb-70000"]
        assert vxlan.master == bridge.index and bridge.master is None
        assert dict(vxlan.data) == {
            "IFLA_VXLAN_ID": 70000, "IFLA_VXLAN_LINK": dumped["eth0"].index, "IFLA_VXLAN_LOCAL": "198.18.0.1",
            "IFLA_VXLAN_LEARNING": 0, "IFLA_VXLAN_PROXY": 1, "IFLA_VXLAN_PORT": 4789,
        }
        assert reader.get("pwx-1") is None
    finally:
        reader.close()


def test_addresses_and_routes_read_as_ip_shows_them(namespaces):
    ns = namespaces("addrs")
    ip(ns, "link", "add", "pwb-70001", "type", "bridge")
    ip(ns, "link", "set", "pwb-70001", "up")
    ip(ns, "addr", "add", "10.70.0.9/24", "dev", "pwb-70001")
    ip(ns, "addr", "add", "10.71.0.9/16", "dev", "pwb-70001")
    ip(ns, "route", "add", "10.72.0.0/24", "dev", "pwb-70001", "metric", "1024")
    reader = LinkReader(ns)
    try:
        index = reader.get("pwb-70001").index
        assert {str(a) for a in reader.addresses(index)} == {"10.70.0.9/24", "10.71.0.9/16"}
        assert {str(a) for a in reader.addresses(reader.get("lo").index)} == {"127.0.0.1/8"}  # each link its own
        shown = json.loads(ip(ns, "-json", "route", "show", "table", "main"))
        routes = reader.routes(table=254)
        assert len(routes) == len(shown)
        added = [r for r in routes if r.dst == "10.72.0.0"]
        assert len(added) == 1 and (added[0].dst_len, added[0].oif, added[0].priority) == (24, index, 1024)
        assert {(r.dst, r.dst_len) for r in routes} == {(s["dst"].split("/")[0], int(s["dst"].split("/")[1]) if "/" in s["dst"] else 32)
                                                       for s in shown}
    finally:
        reader.close()
