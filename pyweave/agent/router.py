"""The router: where this host sends each peer's frames, and what it relays for others.

From the links every host publishes (`ClusterView.links`), it computes this host's routes
(`pyweave.routes`, pure) and turns them into FDB destinations (docs/routing.md):

- a peer reached directly: its underlay address (the network device's own port, 4789);
- a peer reached through a relay in h hops: "RELAY-ADDRESS:PORT", port 4789 + (h - 1), the hop
  budget the relay may still spend;
- a peer unreachable: the last route that lasted (STABLE_AFTER; a relay whose agent restarts still
  relays in the kernel), not one seen for a moment while the hosts' views disagreed (a peer whose
  agent died looks unreachable to one host a moment before the others notice); a peer never
  routed goes direct.

And, when some hosts of a network cannot reach each other directly, the transit tables this host
serves for that network: per budget k, MAC -> next destination for every endpoint at most k hops
away. Only recomputed when links or hosts change; a full mesh costs one pass over the hosts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from dataplane.api import VXLAN_PORT, RemoteEntry
from pyweave.routes import LinkView, Route, routes_from, transit_budgets, usable_links

log = logging.getLogger("pyweave.agent")

TRANSIT_GRACE = 30.0  # seconds a transit device no longer needed is kept (a flapping link)
STABLE_AFTER = 1.0  # seconds a route must have lasted to be the one kept while a peer is unreachable


class Router:
    def __init__(self, me: str, *, clock=time.monotonic) -> None:
        self.me = me
        self.clock = clock
        self._stable: dict[str, str] = {}  # peer address -> the last target held for STABLE_AFTER
        self._set_at: dict[str, float] = {}  # peer address -> when its target was set (clock)
        self.routes: dict[str, Route] = {}
        self.changed_at: dict[str, float] = {}  # peer -> wall time of its last route change
        self._target: dict[str, str] = {}  # peer underlay address -> FDB destination
        self._links: dict[str, dict[str, float]] = {}
        self._budgets: dict[int, int] = {}
        self._address: dict[str, str] = {}  # peer name -> underlay address
        self.meshed = True  # every alive host has a usable link to every other (nothing to relay)
        self._relaying = False  # some peer's FDB destination is not its own address (set by update)

    @property
    def linked(self) -> bool:
        """Whether this host has any usable link (else it relays nothing)."""
        return bool(self._links.get(self.me))

    @property
    def relaying(self) -> bool:
        """Whether any peer is reached through a relay (entries need translating)."""
        return self._relaying  # asked at every pass: kept by update(), not a walk over the peers

    def target(self, address: str) -> str:
        return self._target.get(address, address)

    def entry(self, entry: RemoteEntry) -> RemoteEntry:
        """The entry as this host programs it: towards its route's next hop."""
        target = self._target.get(entry.underlay)
        return entry if target is None or target == entry.underlay else RemoteEntry(entry.mac, entry.ip, target)

    def update(
        self, links: Mapping[str, Mapping], hosts: Mapping[str, str], *, own: Mapping[str, LinkView] | None = None
    ) -> set[str]:
        """Recompute from every host's link views and the alive hosts (name -> address). Returns
        the underlay addresses whose FDB destination changed.

        `own`: this host's prober's view now. For its own links it is the truth: an echo is a round
        trip, so a link it sees up works both ways, whatever the peer's published view says (which
        lags: after the peer's agent restarted, its record still shows the links down it saw while
        this one was gone). Without it, a restart on both ends looked like a broken link for a moment
        and sent traffic through a relay that was not ready."""
        self._links = usable_links(links)
        if own is not None:
            for peer in list(self._links.get(self.me, {})):
                self._links[peer].pop(self.me, None)
            self._links[self.me] = {}
            for peer, view in own.items():
                if view.up and peer != self.me:
                    rtt = view.rtt_ms or 0.0
                    self._links[self.me][peer] = rtt
                    self._links.setdefault(peer, {})[self.me] = rtt
        self._address = dict(hosts)
        names = set(hosts)
        self.meshed = all(names - {h} <= self._links.get(h, {}).keys() for h in names)
        routes = routes_from(self.me, self._links, [h for h in hosts if h != self.me])
        changed: set[str] = set()
        now, tick = time.time(), self.clock()
        for peer, route in routes.items():
            address = hosts[peer]
            current = self._target.get(address)
            if current is not None and tick - self._set_at.get(address, float("-inf")) >= STABLE_AFTER:
                self._stable[address] = current
            old = self.routes.get(peer)
            if old is None or (old.next_hop, old.hops) != (route.next_hop, route.hops):
                if old is not None or not route.direct:
                    log.info("route to %s: %s (was %s)", peer, describe(route), describe(old) if old else "none")
                self.changed_at[peer] = now
            if route.reachable and route.next_hop is not None:
                if route.direct:
                    target = address
                else:
                    target = f"{hosts[route.next_hop]}:{VXLAN_PORT + route.hops - 1}"
            else:
                # Keep what the kernel had for a while (a relay whose agent restarts still relays);
                # a route that lasted a moment only (seen while the views disagreed) is not it.
                target = self._stable.get(address, address)
            if self._target.get(address, address) != target:
                changed.add(address)
                self._set_at[address] = tick
            self._target[address] = target
        for address in set(self._target) - set(hosts.values()):
            del self._target[address]
            self._stable.pop(address, None)
            self._set_at.pop(address, None)
        self.routes = routes
        self._relaying = any(target != address for address, target in self._target.items())
        for peer in set(self.changed_at) - set(routes):
            del self.changed_at[peer]
        return changed

    def budgets(self, hosts_by_vni: Mapping[int, Iterable[str]]) -> dict[int, int]:
        """VNI -> the largest hop budget this host relays for it ({} in a full mesh)."""
        self._budgets = transit_budgets(self.me, self._links, hosts_by_vni)
        return self._budgets

    def transit(self, vni: int, budget: int, entries: Iterable[RemoteEntry], host_of: Mapping[str, str]) -> dict[str, str]:
        """The FDB of transit device (vni, budget): MAC -> "ADDRESS:PORT" for every endpoint whose
        host is at most `budget` hops away (`host_of`: underlay address -> host name)."""
        out: dict[str, str] = {}
        for e in entries:
            route = self.routes.get(host_of.get(e.underlay, ""))
            if route is None or not route.reachable or route.hops > budget or route.next_hop is None:
                continue
            if route.direct:
                out[e.mac] = f"{e.underlay}:{VXLAN_PORT}"
            else:
                out[e.mac] = f"{self._address[route.next_hop]}:{VXLAN_PORT + route.hops - 1}"
        return out


def describe(route: Route) -> str:
    if not route.reachable:
        return "unreachable"
    if route.direct:
        return "direct"
    return f"via {route.next_hop} ({route.hops} hops)"
