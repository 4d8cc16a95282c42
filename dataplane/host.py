"""The host's own kernel state that is not a pyweave network: the underlay, routes, cleanup.

`pyweave launch` asks these questions before the agent starts (which interface carries the overlay,
does the allocation range collide with a route of this host) and `pyweave reset` removes every
device pyweave made. Each function opens its own netlink socket, in the namespace it runs in or the
named `netns`, and closes it again.
"""

from __future__ import annotations

import errno
import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dataplane.api import BRIDGE_PREFIX, OWNED_PREFIXES, VETH_PREFIX, VXLAN_PREFIX, DataplaneError, Underlay

IFF_LOOPBACK = 0x8


def netns_kwargs(netns: str | None) -> dict:
    """IPRoute's keyword for a named namespace (none: the one this process runs in)."""
    return {"netns": netns} if netns else {}


def is_missing(err: NetlinkError) -> bool:
    """A missing link, address or namespace: success for anything that removes it."""
    return err.code in (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)


def find_underlay(address: str | None = None, *, netns: str | None = None) -> Underlay:
    """The interface carrying the overlay: the one with `address`, else the default route's, else
    the first interface with a global IPv4 address that pyweave did not make. The loopback and
    link-local addresses never qualify (the DNS service address lives on `lo`)."""
    with IPRoute(**netns_kwargs(netns)) as ipr:
        links = {link["index"]: link for link in ipr.get_links()}
        addrs = [
            (a["index"], a.get_attr("IFA_ADDRESS"))
            for a in ipr.get_addr(family=2)
            if a["scope"] == 0
        ]
        candidates = [
            (idx, ip)
            for idx, ip in addrs
            if not links[idx].get_attr("IFLA_IFNAME").startswith(OWNED_PREFIXES)
            and not links[idx]["flags"] & IFF_LOOPBACK
            and not ipaddress.IPv4Address(ip).is_link_local
        ]
        chosen = None
        if address:
            chosen = next(((i, a) for i, a in candidates if a == address), None)
            if chosen is None:
                raise DataplaneError(f"no interface here has address {address}", retryable=False)
        else:
            default = [r.get_attr("RTA_OIF") for r in ipr.get_default_routes(family=2)]
            chosen = next(((i, a) for i, a in candidates if i in default), None) or (
                candidates[0] if candidates else None
            )
        if chosen is None:
            raise DataplaneError(
                "no IPv4 address found for the underlay; give this host an address first", retryable=False
            )
        idx, ip = chosen
        link = links[idx]
        return Underlay(link.get_attr("IFLA_IFNAME"), idx, ip, link.get_attr("IFLA_MTU"))


def routes_overlapping(net: ipaddress.IPv4Network, *, netns: str | None = None) -> list[tuple[ipaddress.IPv4Network, str]]:
    """The host's routes (main table, not default, not pyweave's own bridges) that overlap net,
    with their device names: weave refuses an allocation range that collides with one."""
    found = []
    with IPRoute(**netns_kwargs(netns)) as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for route in ipr.get_routes(family=2, table=254):
            dst = route.get_attr("RTA_DST")
            if dst is None or route["dst_len"] == 0:
                continue
            dev = names.get(route.get_attr("RTA_OIF"), "?")
            if dev.startswith(BRIDGE_PREFIX):
                continue
            route_net = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False)
            if route_net.overlaps(net):
                found.append((route_net, dev))
    return found


def remove_all_owned(*, netns: str | None = None) -> int:
    """Delete every device pyweave made in this namespace (`pyweave reset`). Returns how many."""
    removed = 0
    with IPRoute(**netns_kwargs(netns)) as ipr:
        for prefix in (VETH_PREFIX, VXLAN_PREFIX, BRIDGE_PREFIX):
            for link in ipr.get_links():
                if link.get_attr("IFLA_IFNAME").startswith(prefix):
                    try:
                        ipr.link("del", index=link["index"])
                        removed += 1
                    except NetlinkError as err:
                        if not is_missing(err):
                            raise
    return removed


def inventory(*, netns: str | None = None) -> dict[str, int]:
    """Counts of the objects pyweave owns in this namespace (tests compare them before and after)."""
    counts = {"bridges": 0, "vxlans": 0, "veths": 0, "fdb": 0, "neigh": 0}
    with IPRoute(**netns_kwargs(netns)) as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name.startswith(BRIDGE_PREFIX):
                counts["bridges"] += 1
            elif name.startswith(VXLAN_PREFIX):
                counts["vxlans"] += 1
                idx = link["index"]
                counts["fdb"] += sum(1 for e in ipr.fdb("dump", ifindex=idx) if e.get_attr("NDA_DST"))
                counts["neigh"] += sum(1 for e in ipr.neigh("dump", ifindex=idx, family=2) if e["ifindex"] == idx)
            elif name.startswith(VETH_PREFIX):
                counts["veths"] += 1
    return counts


def remove_local_address(address: str, *, netns: str | None = None) -> None:
    """Remove address/32 from the loopback (`pyweave reset`); absent is fine."""
    with IPRoute(**netns_kwargs(netns)) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.addr("del", index=lo, address=address, prefixlen=32)
        except NetlinkError as err:
            if not is_missing(err):
                raise


def ensure_local_address(address: str, *, netns: str | None = None) -> None:
    """address/32 on the loopback of the host's namespace (the service address)."""
    with IPRoute(**netns_kwargs(netns)) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=lo, family=2)}
        if address not in have:
            ipr.addr("add", index=lo, address=address, prefixlen=32)
