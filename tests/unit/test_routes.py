"""Routes over the measured links (pyweave/routes.py, docs/routing.md): examples, then properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyweave.routes import MAX_HOPS, LinkView, Route, routes_from, transit_budgets, usable_links


def up(rtt: float | None = 1.0) -> LinkView:
    return LinkView(True, rtt, 1764331200.0)


def down() -> LinkView:
    return LinkView(False, None, 1764331200.0)


def mesh(edges: dict[tuple[str, str], float], hosts: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """Symmetric adjacency from undirected edges with RTTs."""
    out: dict[str, dict[str, float]] = {h: {} for h in hosts}
    for (a, b), rtt in edges.items():
        out.setdefault(a, {})[b] = rtt
        out.setdefault(b, {})[a] = rtt
    return out


def views_of(edges: dict[tuple[str, str], float], hosts: tuple[str, ...]) -> dict[str, dict[str, LinkView]]:
    """Every host reports every other: up with the RTT when the edge exists, else down."""
    views: dict[str, dict[str, LinkView]] = {h: {} for h in hosts}
    for a in hosts:
        for b in hosts:
            if a != b:
                rtt = edges.get((a, b), edges.get((b, a)))
                views[a][b] = up(rtt) if rtt is not None else down()
    return views


# -- usable_links ---------------------------------------------------------------------------------
def test_usable_links_needs_both_ends_up_and_takes_the_larger_rtt():
    views = {
        "A": {"B": up(0.2), "C": up(0.3), "A": up(0.0)},
        "B": {"A": up(0.5), "C": up(None)},
        "C": {"A": down(), "B": up(0.1)},
    }
    links = usable_links(views)
    assert links == {"A": {"B": 0.5}, "B": {"A": 0.5, "C": 0.1}, "C": {"B": 0.1}}


def test_a_link_reported_by_one_end_only_is_down():
    assert usable_links({"A": {"B": up()}}) == {"A": {}}
    assert usable_links({"A": {"B": up()}, "B": {}}) == {"A": {}, "B": {}}


def test_unknown_rtt_counts_as_zero():
    assert usable_links({"A": {"B": up(None)}, "B": {"A": up(None)}}) == {"A": {"B": 0.0}, "B": {"A": 0.0}}


# -- routes_from ------------------------------------------------------------------------------------
def test_triangle_with_one_link_cut_goes_through_the_third_host():
    links = usable_links(views_of({("A", "B"): 0.2, ("B", "C"): 0.3}, ("A", "B", "C")))
    routes = routes_from("A", links, ["A", "B", "C"])
    assert set(routes) == {"B", "C"}
    assert routes["B"] == Route("B", "B", 1, 0.2, ("B",))
    assert routes["B"].direct and routes["B"].reachable
    c = routes["C"]
    assert (c.next_hop, c.hops, c.path, c.direct, c.reachable) == ("B", 2, ("B", "C"), False, True)
    assert abs(c.rtt_ms - 0.5) < 1e-9


def test_chain_of_four_ends_are_three_hops_apart():
    links = mesh({("A", "B"): 1, ("B", "C"): 1, ("C", "D"): 1})
    route = routes_from("A", links, ["D"])["D"]
    assert (route.next_hop, route.hops, route.path, route.rtt_ms) == ("B", 3, ("B", "C", "D"), 3.0)
    assert routes_from("D", links, ["A"])["A"].path == ("C", "B", "A")


def test_an_asymmetric_report_counts_as_down():
    views = views_of({("A", "B"): 1, ("B", "C"): 1, ("A", "C"): 1}, ("A", "B", "C"))
    views["C"]["A"] = down()  # A hears C, C does not hear A
    routes = routes_from("A", usable_links(views), ["C"])
    assert routes["C"].next_hop == "B" and routes["C"].hops == 2


def test_fewer_hops_beat_lower_rtt():
    links = mesh({("A", "D"): 50.0, ("A", "B"): 0.1, ("B", "D"): 0.1})
    assert routes_from("A", links, ["D"])["D"].direct


def test_ties_in_hops_go_to_the_lower_rtt_then_the_smaller_name():
    # A-C cut; B and X both reach C in 2 hops.
    links = mesh({("A", "B"): 1.0, ("B", "C"): 1.0, ("A", "X"): 0.5, ("X", "C"): 0.5})
    assert routes_from("A", links, ["C"])["C"].next_hop == "X"
    links = mesh({("A", "B"): 1.0, ("B", "C"): 1.0, ("A", "X"): 1.0, ("X", "C"): 1.0})
    assert routes_from("A", links, ["C"])["C"].next_hop == "B"
    # the tie on names is decided on the whole path, hop by hop
    links = mesh({("A", "B"): 1, ("A", "X"): 1, ("B", "Y"): 1, ("X", "P"): 1, ("Y", "D"): 1, ("P", "D"): 1})
    assert routes_from("A", links, ["D"])["D"].path == ("B", "Y", "D")


def test_unreachable_hosts_get_an_unreachable_route():
    links = mesh({("A", "B"): 1.0}, hosts=("C",))
    routes = routes_from("A", links, ["B", "C", "nosuch"])
    for dest in ("C", "nosuch"):
        assert routes[dest] == Route(dest, None, 0, 0.0, ())
        assert not routes[dest].reachable and not routes[dest].direct
    assert routes_from("Z", links, ["A"])["A"].next_hop is None  # a source with no links


def test_paths_longer_than_max_hops_are_unreachable():
    names = [f"h{i}" for i in range(MAX_HOPS + 2)]
    links = mesh({(a, b): 1.0 for a, b in zip(names, names[1:])})
    routes = routes_from(names[0], links, names)
    assert routes[names[MAX_HOPS]].hops == MAX_HOPS
    assert not routes[names[MAX_HOPS + 1]].reachable


# -- transit_budgets --------------------------------------------------------------------------------
def test_a_full_mesh_needs_no_transit():
    links = mesh({(a, b): 1.0 for a in "ABCD" for b in "ABCD" if a < b})
    for me in "ABCD":
        assert transit_budgets(me, links, {65536: "ABCD", 65537: "AB"}) == {}


def test_a_cut_triangle_makes_the_middle_host_the_relay_for_the_networks_across_the_cut():
    links = mesh({("A", "B"): 1.0, ("B", "C"): 1.0})
    by_vni = {1: ["A", "C"], 2: ["A", "B"], 3: ["B", "C", "A"]}
    assert transit_budgets("B", links, by_vni) == {1: 1, 3: 1}  # B has no endpoint on 1: it relays anyway
    assert transit_budgets("A", links, by_vni) == {}  # an end of every path: nothing to relay


def test_a_chain_relays_with_budgets_up_to_its_farthest_host_capped():
    names = [f"h{i}" for i in range(6)]
    links = mesh({(a, b): 1.0 for a, b in zip(names, names[1:])})
    assert transit_budgets("h1", links, {7: names[:4]}) == {7: 2}
    assert transit_budgets("h2", links, {7: names[:4]}) == {7: 2}
    assert transit_budgets("h1", links, {7: names}) == {7: MAX_HOPS - 1}
    assert transit_budgets("h0", links, {7: names}) == {}  # an end: never on a path between two others
    assert transit_budgets("h5", links, {7: ["h0", "h1"]}) == {}  # h0 and h1 are linked: nothing broken


def test_no_transit_without_a_usable_link_or_a_reachable_host():
    links = mesh({("A", "B"): 1.0}, hosts=("C", "D"))
    assert transit_budgets("C", links, {1: ["A", "C"]}) == {}
    assert transit_budgets("A", links, {1: ["C", "D"]}) == {}


# -- properties -----------------------------------------------------------------------------------
HOSTS = ("a", "b", "c", "d", "e", "f", "g")


@st.composite
def graphs(draw) -> dict[str, dict[str, float]]:
    n = draw(st.integers(2, len(HOSTS)))
    hosts = HOSTS[:n]
    pairs = [(a, b) for i, a in enumerate(hosts) for b in hosts[i + 1:]]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []
    rtts = st.sampled_from([0.0, 0.1, 0.25, 1.0, 2.0, 5.0])
    return mesh({edge: draw(rtts) for edge in chosen}, hosts=hosts)


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_following_next_hops_reaches_the_destination_without_loops(links):
    hosts = sorted(links)
    routes = {h: routes_from(h, links, hosts) for h in hosts}
    for src in hosts:
        for dest in hosts:
            if src == dest:
                continue
            route = routes[src][dest]
            if not route.reachable:
                continue
            at, links_taken, hops_left = src, 0, route.hops
            while at != dest:
                step = routes[at][dest]
                assert step.reachable and step.hops == hops_left
                assert step.next_hop in links[at]
                at, links_taken, hops_left = step.next_hop, links_taken + 1, hops_left - 1
            assert links_taken == route.hops <= MAX_HOPS


@settings(max_examples=200, deadline=None)
@given(graphs(), st.randoms(use_true_random=False))
def test_routes_do_not_depend_on_the_order_of_the_mappings(links, rnd):
    def shuffled(mapping):
        items = list(mapping.items())
        rnd.shuffle(items)
        return dict(items)

    hosts = list(links)
    other = shuffled({h: shuffled(peers) for h, peers in links.items()})
    for src in hosts:
        dests = hosts[:]
        rnd.shuffle(dests)
        assert routes_from(src, links, hosts) == routes_from(src, other, dests)
        by_vni = {1: hosts, 2: hosts[::2]}
        assert transit_budgets(src, links, by_vni) == transit_budgets(src, other, {2: hosts[::2], 1: dests})


def _send(view: dict[str, dict[str, dict[str, float]]], src: str, dest: str) -> tuple[bool, list[str]]:
    """A frame from src to dest under the hop budget rule, each host planning from its own graph
    (`view[host]`): (delivered, the hosts it visited)."""
    first = routes_from(src, view[src], [dest])[dest]
    if not first.reachable:
        return False, [src]
    at, budget, seen = first.next_hop, first.hops - 1, [src, first.next_hop]
    while at != dest:
        assert at is not None
        route = routes_from(at, view[at], [dest])[dest]
        if budget == 0 or not route.reachable or route.hops > budget:
            return False, seen  # dropped: the transit device for this budget has no entry for dest
        at, budget = route.next_hop, route.hops - 1
        seen.append(at)
    return True, seen


@settings(max_examples=300, deadline=None)
@given(st.lists(graphs(), min_size=len(HOSTS), max_size=len(HOSTS)), st.sampled_from(HOSTS), st.sampled_from(HOSTS))
def test_the_hop_budget_never_loops_even_when_hosts_see_different_graphs(graph_of, src, dest):
    """docs/routing.md section 3: the sender gives its next hop the budget hops - 1; a relay with
    budget k forwards only if its own hop count h' <= k, with budget h' - 1. Each host plans from
    its own graph; a frame still crosses at most MAX_HOPS links."""
    if src == dest:
        return
    _, seen = _send(dict(zip(HOSTS, graph_of)), src, dest)
    assert len(seen) - 1 <= MAX_HOPS, seen


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_with_one_graph_everywhere_every_reachable_frame_arrives_over_the_route(links):
    view = {h: links for h in HOSTS}
    for src in links:
        for dest, route in routes_from(src, links, links).items():
            delivered, seen = _send(view, src, dest)
            assert delivered == route.reachable
            if delivered:
                assert tuple(seen[1:]) == route.path


def test_a_relay_that_sees_a_longer_way_drops_the_frame_rather_than_loop_it():
    # A believes A-B-C-D; B has lost B-C and knows only B-E-F-D (3 hops > budget 2).
    truth = mesh({("A", "B"): 1, ("B", "C"): 1, ("C", "D"): 1, ("B", "E"): 1, ("E", "F"): 1, ("F", "D"): 1})
    b_view = mesh({("A", "B"): 1, ("C", "D"): 1, ("B", "E"): 1, ("E", "F"): 1, ("F", "D"): 1})
    assert _send({"A": truth, "B": b_view}, "A", "D") == (False, ["A", "B"])
    assert _send({"A": truth, "B": truth, "C": truth}, "A", "D") == (True, ["A", "B", "C", "D"])
