"""The agent's incremental view (pyweave.view) against the reference: the full snapshot's validation.

Hypothesis drives random sequences of puts (good and bad values), deletes and re-lists through a
`ClusterView`, and after each step compares it with `ClusterState.from_items` of the same keys, and
its remote entries with what the full planner programs.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from pyweave.plan import plan_host
from pyweave.view import ClusterView
from store.keys import attachment_key, endpoint_key, host_key, ip_claim_key, network_key, vni_key
from store.state import ClusterState

ME = "h0"
HOSTS = ["h0", "h1", "h2"]
SUBNETS = ["10.1.0.0/24", "10.2.0.0/24"]
VNIS = [70001, 70002]
IPS = ["1", "2", "3"]


def _host(name: str, address: int) -> tuple[str, bytes]:
    return host_key(name), json.dumps(
        {"name": name, "address": f"198.18.0.{address}", "vtep_mac": "02:00:00:00:00:01", "mtu": 1450}
    ).encode()


def _endpoint(h: str, c: str, net: tuple[str, int], ip: str, m: int) -> tuple[str, bytes]:
    subnet, vni = net
    address = subnet.replace("0.0/24", f"0.{ip}")
    value = {"ip": address, "prefixlen": 24, "subnet": subnet, "vni": vni, "mac": f"02:00:00:00:00:0{m}", "ifname": "ethwe"}
    return endpoint_key(h, c, address), json.dumps(value).encode()


_endpoints = st.builds(
    _endpoint,
    st.sampled_from(HOSTS), st.sampled_from(["c1", "c2", "c3"]),
    st.sampled_from([(SUBNETS[0], VNIS[0]), (SUBNETS[1], VNIS[1]), (SUBNETS[0], VNIS[1])]),
    st.sampled_from(IPS), st.integers(1, 3),
)

keys_and_values = st.one_of(
    st.builds(_host, st.sampled_from(HOSTS), st.integers(1, 3)),
    st.builds(
        lambda s, v: (network_key(s), json.dumps({"subnet": s, "vni": v}).encode()),
        st.sampled_from(SUBNETS), st.sampled_from(VNIS),
    ),
    st.builds(lambda s, v: (vni_key(v), json.dumps({"subnet": s}).encode()), st.sampled_from(SUBNETS), st.sampled_from(VNIS)),
    _endpoints,
    _endpoints,
    _endpoints,
    _endpoints,
    _endpoints,
    _endpoints,
    st.builds(
        lambda c, s, ip: (attachment_key(ME, c), json.dumps({"cidrs": [s.replace("0.0/24", f"0.{ip}/24")]}).encode()),
        st.sampled_from(["c1", "c2"]), st.sampled_from(SUBNETS), st.sampled_from(IPS),
    ),
    st.builds(
        lambda h, c, s, ip: (ip_claim_key(s, s.replace("0.0/24", f"0.{ip}")), json.dumps({"host": h, "container": c}).encode()),
        st.sampled_from(HOSTS), st.sampled_from(["c1", "c2"]), st.sampled_from(SUBNETS), st.sampled_from(IPS),
    ),
    st.builds(lambda k: (k, b"{not json"), st.sampled_from([host_key("h1"), network_key(SUBNETS[0]), attachment_key(ME, "c1")])),
)

BASE = [
    ("put", _host("h1", 2)),
    ("put", _host("h2", 3)),
    ("put", (network_key(SUBNETS[0]), json.dumps({"subnet": SUBNETS[0], "vni": VNIS[0]}).encode())),
    ("put", (network_key(SUBNETS[1]), json.dumps({"subnet": SUBNETS[1], "vni": VNIS[1]}).encode())),
]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys_and_values),
        st.tuples(st.just("delete"), keys_and_values),
        st.tuples(st.just("relist"), st.just(None)),
    ),
    max_size=40,
).map(lambda random_steps: BASE + random_steps)


def _remote_of(state: ClusterState, vni: int) -> dict[str, object]:
    """What the full planner programs for a VNI (as if this host had a port on it)."""
    plan = plan_host(state, "nobody", {}, {}, mtu=1450)
    plan.vnis.add(vni)
    from pyweave.plan import _plan_remote

    _plan_remote(plan, state, ME)
    return {e.ip: e for e in plan.remote.get(vni, set())}


@settings(max_examples=400, deadline=None)
@given(steps)
def test_incremental_view_equals_the_full_validation(sequence):
    view = ClusterView(ME)
    store: dict[str, bytes] = {}
    for op, kv in sequence:
        if op == "put":
            key, value = kv
            store[key] = value
            view.apply(key, value, 0)
        elif op == "delete":
            key, _ = kv
            store.pop(key, None)
            view.apply(key, None)
        else:
            view.replace({k: (v, 0) for k, v in store.items()}, revision=1)
        full = ClusterState.from_items(store.items())
        assert view.hosts == full.hosts
        assert view.networks == full.networks
        assert view.endpoints == full.endpoints
        assert view.attachments == full.attachments
        assert view.claims == full.claims
        assert view.vni_claims == full.vni_claims
        assert sorted(view.invalid, key=lambda i: (i.key, i.problem)) == sorted(full.invalid, key=lambda i: (i.key, i.problem))
        for vni in VNIS:
            assert dict(view.remote(vni)) == _remote_of(full, vni)


def test_changes_name_the_ips_that_moved():
    view = ClusterView(ME)
    view.apply(*_host("h1", 2))
    view.apply(network_key(SUBNETS[0]), json.dumps({"subnet": SUBNETS[0], "vni": 70001}).encode())
    view.take_remote_changes()
    ep = {"ip": "10.1.0.5", "prefixlen": 24, "subnet": SUBNETS[0], "vni": 70001, "mac": "02:00:00:00:00:05", "ifname": "ethwe"}
    view.apply(endpoint_key("h1", "c", "10.1.0.5"), json.dumps(ep).encode())
    assert view.take_remote_changes().ips == {70001: {"10.1.0.5"}}
    view.apply(*_host("h1", 3))  # the peer moved: its entries point elsewhere now
    assert view.take_remote_changes().ips == {70001: {"10.1.0.5"}}
    assert view.remote(70001)["10.1.0.5"].underlay == "198.18.0.3"
    view.apply(host_key("h1"), None)
    assert view.take_remote_changes().ips == {70001: {"10.1.0.5"}}
    assert not view.remote(70001)
