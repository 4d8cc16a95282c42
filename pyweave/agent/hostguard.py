"""The agent's check that an attachment's subnet stays off the host's own routing (issue 15, item 4).

`pyweave run`, `attach` and `expose` refuse a subnet that overlaps a route or an address of the host
(`dataplane.hostroutes`); an attachment written into the store by hand (etcdctl) skips the CLI, so
the agent checks again before it programs anything: `pyweave.plan` reports such an attachment as a
problem and gives it no port, network, claim or route.

Cheap by design (issue 11 counts the agent's CPU): the host's tables (/proc/net/route and fib_trie,
two file reads) are read at a full pass (`forget`), and when a subnet not seen since then is asked
about; every other question is a dictionary lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from dataplane.hostroutes import HostOverlap, host_overlaps


class HostRouteGuard:
    """What of the host's routes and addresses a subnet overlaps, remembered per subnet."""

    def __init__(self, overlaps: Callable[[ipaddress.IPv4Network], list[HostOverlap]] = host_overlaps) -> None:
        self._overlaps = overlaps
        self._known: dict[ipaddress.IPv4Network, str | None] = {}
        self.reads = 0  # how often the host's tables were read (a test checks that it stays low)

    def forget(self) -> None:
        """A full pass: the host's routes may have changed; read them again when next asked."""
        self._known.clear()

    def __call__(self, subnet: ipaddress.IPv4Network) -> str | None:
        """The first overlap described for people ("the route 198.18.0.0/24 dev eth0 of this host"), or None."""
        if subnet not in self._known:
            self.reads += 1
            found = self._overlaps(subnet)
            self._known[subnet] = found[0].describe() if found else None
        return self._known[subnet]
