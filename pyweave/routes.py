"""Routes over the measured underlay links (docs/routing.md): pure, no I/O.

Each agent publishes its view of its links (`/pyweave/v1/links/<host>`); every host computes routes
from all of them with the functions here, and `pyweave status connections` does the same from the
same records, so what the operator sees is what the agents program.

    views  --usable_links-->  links (a -> {b: rtt_ms}, symmetric)
    links  --routes_from-->   {dest: Route}          (what to program per destination)
    links  --transit_budgets-> {vni: K}              (which transit devices pwrx1..K-<vni> to keep)

Paths are ordered by (hops, summed RTT, names of the hops): the hop count of every route is the
true shortest hop count over usable links, so following next hops always gets one hop closer
(no loops when hosts see the same graph), and the hop budget of section 3 of docs/routing.md keeps
frames from looping when they do not.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from store.records import LinkView

__all__ = ["MAX_HOPS", "LinkView", "Route", "routes_from", "transit_budgets", "usable_links"]

MAX_HOPS = 4  # a path crosses at most MAX_HOPS links (MAX_HOPS - 1 relays); UDP ports 4789 .. 4789 + MAX_HOPS - 1

Links = Mapping[str, Mapping[str, float]]


def usable_links(views: Mapping[str, Mapping[str, LinkView]]) -> dict[str, dict[str, float]]:
    """The usable links: a -> {b: rtt_ms} for every link that both a reports up towards b and b
    towards a (an asymmetric failure counts as down), with the larger of the two RTTs (unknown: 0).
    Every host that reports is a key, with {} when none of its links is usable."""
    out: dict[str, dict[str, float]] = {host: {} for host in views}
    for a, peers in views.items():
        for b, ab in peers.items():
            if a == b or not ab.up:
                continue
            ba = views.get(b, {}).get(a)
            if ba is None or not ba.up:
                continue
            out[a][b] = max(ab.rtt_ms or 0.0, ba.rtt_ms or 0.0, 0.0)
    return out


@dataclass(frozen=True)
class Route:
    """How `source` reaches `dest`: directly (next_hop == dest, hops 1), through next_hop in `hops`
    hops along `path` (the hosts after the source, ending with dest), or not at all (next_hop None,
    hops 0, path (), rtt_ms 0.0)."""

    dest: str
    next_hop: str | None
    hops: int
    rtt_ms: float
    path: tuple[str, ...]

    @property
    def direct(self) -> bool:
        return self.next_hop is not None and self.next_hop == self.dest

    @property
    def reachable(self) -> bool:
        return self.next_hop is not None


RTT_STEP_MS = 1.0  # RTTs compare in whole steps: probe jitter under load must not flip a tie between relays


def _shortest(source: str, links: Links) -> dict[str, tuple[int, float, tuple[str, ...]]]:
    """(hops, rtt, path) of the best path from source to every host it reaches in at most
    MAX_HOPS hops: fewest hops, then least summed RTT in whole RTT_STEP_MS steps, then names. Keys
    are totally ordered (two paths never have the same names), so the result does not depend on
    the order of the mappings."""
    best: dict[str, tuple[int, int, tuple[str, ...], float]] = {}
    heap: list[tuple[int, int, tuple[str, ...], float, str]] = [(0, 0, (), 0.0, source)]
    done: set[str] = set()
    while heap:
        hops, steps, path, rtt, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        if node != source:
            best[node] = (hops, steps, path, rtt)
        if hops >= MAX_HOPS:
            continue
        for peer, cost in links.get(node, {}).items():
            if peer in done or peer == source:
                continue
            key = (hops + 1, steps + round(cost / RTT_STEP_MS), (*path, peer), rtt + cost)
            if peer not in best or key[:3] < best[peer][:3]:
                best[peer] = key
                heapq.heappush(heap, (*key, peer))
    return {node: (hops, rtt, path) for node, (hops, _steps, path, rtt) in best.items()}


def routes_from(source: str, links: Links, dests: Iterable[str]) -> dict[str, Route]:
    """A Route from `source` to every host of `dests` but itself, over usable links (`usable_links`):
    fewest hops, then least summed RTT, then the smallest names; unreachable beyond MAX_HOPS hops."""
    best = _shortest(source, links)
    out: dict[str, Route] = {}
    for dest in dests:
        if dest == source:
            continue
        found = best.get(dest)
        if found is None:
            out[dest] = Route(dest, None, 0, 0.0, ())
        else:
            hops, rtt, path = found
            out[dest] = Route(dest, path[0], hops, rtt, path)
    return out


def transit_budgets(me: str, links: Links, hosts_by_vni: Mapping[int, Iterable[str]]) -> dict[int, int]:
    """vni -> K: the budgets 1..K for which `me` relays network `vni` (docs/routing.md, section 3).

    Only a host on a shortest path between two hosts of the network that have no usable direct
    link relays it (`me` need not have an endpoint on it); K is the largest hop count from `me` to
    the far end of such a path, capped at MAX_HOPS - 1. A full mesh gives {}; so does a host with
    no usable link, and a host that is only ever an end of the paths."""
    if not links.get(me):
        return {}
    best = _shortest(me, links)
    fro: dict[str, dict[str, tuple[int, float, tuple[str, ...]]]] = {}  # shortest paths from a host, once each
    out: dict[int, int] = {}
    for vni, members in hosts_by_vni.items():
        hosts = set(members)
        k = 0
        for a in sorted(hosts - {me}):
            cut = [b for b in hosts - {a, me} if b not in links.get(a, {})]
            if not cut or me not in (a_paths := fro.setdefault(a, _shortest(a, links))):
                continue
            for b in cut:
                if b in a_paths and b in best and a_paths[me][0] + best[b][0] == a_paths[b][0]:
                    k = max(k, best[b][0])
        k = min(MAX_HOPS - 1, k)
        if k >= 1:
            out[vni] = k
    return out
