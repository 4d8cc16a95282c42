"""The kernel data plane of one host: bridges, VXLAN devices, veths, FDB and neighbour entries.

Design notes (why it is built this way):
- One network = one VNI = one bridge `pwb-<vni>` with one VXLAN device `pwx-<vni>` as a port. Frames
  of different networks never meet in the kernel, so isolation does not depend on addresses.
- The VXLAN device has learning off and `proxy` on, and no all-zeros FDB entry. Remote endpoints
  are programmed as permanent FDB entries (MAC -> peer underlay address) and permanent neighbour
  entries (IP -> MAC) on the VXLAN device, so ARP requests are answered locally by the proxy and no
  broadcast or unknown unicast ever crosses hosts. These are the entries a large cluster has tens
  of thousands of: they are written and dumped in bulk by `dataplane.neighbours` (raw netlink, a few
  microseconds an entry), not through pyroute2 (about 0.3 ms an entry).
- A container's port is a veth pair: the container end (`ethwe`, `ethwe1`, ...) is created straight
  inside the container's network namespace (`net_ns_pid`), the host end `pwv<hash>` joins the
  bridge. Both ends carry an ifalias ("pyweave cid=... vni=...") so the agent recognises what it
  owns after a restart and garbage-collects what nobody wants any more.
- Relaying (docs/routing.md): a host that forwards network vni's frames for others has, per hop
  budget k, a transit VXLAN device `pwrx<k>-<vni>` (same VNI, UDP port 4789 + k, learning off) alone
  on a transit bridge `pwrb<k>-<vni>` with hairpin on: a frame that comes in goes back out, and the
  device's FDB (MAC -> next host, with a smaller budget in the port) sends it on. The kernel does
  all of it; the network's own device keeps hairpin off, so a frame that arrives with no budget
  left is delivered locally or dropped, never forwarded: no loop whatever the hosts believe.
- Every write is an idempotent ensure_*/remove_*: read, compare, reuse or replace with a logged
  reason; a missing object on removal is success. This module knows nothing of etcd.

All methods act in the network namespace the process runs in (the host's), except the container
ends, which are reached through `/proc/<pid>/ns/net`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable, Mapping

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from dataplane.api import (
    BRIDGE_PREFIX,
    VETH_PREFIX,
    VXLAN_PORT,
    VXLAN_PREFIX,
    DataplaneError,
    LocalPort,
    PortState,
    RemoteDelta,
    RemoteEntry,
    Underlay,
    bridge_name,
    host_veth_name,
    parse_transit_name,
    transit_bridge_name,
    transit_vxlan_name,
    vxlan_name,
)
from dataplane.host import is_missing, netns_kwargs
from dataplane.links import Link, LinkReader
from dataplane.neighbours import NeighbourError, Neighbours

log = logging.getLogger(__name__)

TEMP_PREFIX = "pwt"
ALIAS_PREFIX = "pyweave "
NUD_PERMANENT = 0x80


def _alias(port: LocalPort) -> str:
    return (
        f"{ALIAS_PREFIX}cid={port.container_id} vni={port.vni} if={port.ifname} pid={port.pid} "
        f"mac={port.mac} addrs={','.join(str(c) for c in port.cidrs)}"
    )


def _parse_alias(host_ifname: str, alias: str | None) -> PortState | None:
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    fields = dict(part.split("=", 1) for part in alias[len(ALIAS_PREFIX):].split() if "=" in part)
    try:
        return PortState(
            host_ifname=host_ifname,
            container_id=fields["cid"],
            vni=int(fields["vni"]),
            ifname=fields["if"],
            pid=int(fields["pid"]),
            mac=fields["mac"],
            cidrs=tuple(ipaddress.IPv4Interface(c) for c in fields.get("addrs", "").split(",") if c),
        )
    except (KeyError, ValueError):
        return None


def _garp_frame(ip: str, mac: str) -> bytes:
    """Ethernet broadcast carrying an ARP request with sender = target = ip (a gratuitous ARP)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = socket.inet_aton(ip)
    eth = b"\xff" * 6 + hw + struct.pack("!H", 0x0806)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + addr + b"\x00" * 6 + addr
    return eth + arp


def _set_sysctl(path: str, value: str) -> None:
    """Write /proc/sys/<path> of this process's namespace if it differs (idempotent)."""
    full = f"/proc/sys/{path}"
    try:
        with open(full) as f:
            if f.read().strip() == value:
                return
        with open(full, "w") as f:
            f.write(value)
    except OSError as err:
        log.warning("cannot set %s=%s: %s", path, value, err)


class LinuxDataplane:
    """Programs the kernel of the host's namespace: the one this process runs in, or `netns`."""

    def __init__(
        self,
        *,
        underlay: Underlay,
        vtep_mac: str,
        mtu: int,
        netns: str | None = None,
        service_address: str | None = None,
    ) -> None:
        """service_address: the host's address for services to containers (DNS); each container
        gets a /32 route to it through its port, and the host a route back to each subnet."""
        self.underlay = underlay
        self.vtep_mac = vtep_mac
        self.mtu = mtu
        self.service_address = service_address
        self.netns = netns
        self.ipr = IPRoute(**netns_kwargs(netns))
        self.neighbours = Neighbours(netns)
        self.links = LinkReader(netns)  # every read of links (cheap); pyroute2 only writes them
        self._packet: socket.socket | None = None
        self._vxlan_ids: dict[int, int] = {}
        self._transit_ids: dict[tuple[int, int], int] = {}

    def close(self) -> None:
        self.ipr.close()
        self.neighbours.close()
        self.links.close()
        if self._packet is not None:
            self._packet.close()

    # -- lookups -------------------------------------------------------------------------------
    def _link(self, ifname: str) -> Link | None:
        return self.links.get(ifname)

    def _made(self, ifname: str) -> Link:
        """The link just created: it must be there now."""
        link = self.links.get(ifname)
        if link is None:
            raise DataplaneError(f"{ifname} vanished right after it was created")
        return link

    def networks(self) -> set[int]:
        """VNIs that have a bridge or VXLAN device here."""
        out = set()
        for link in self.links.dump():
            name = link.name
            for prefix in (BRIDGE_PREFIX, VXLAN_PREFIX):
                if name.startswith(prefix) and name[len(prefix):].isdigit():
                    out.add(int(name[len(prefix):]))
        return out

    def ports(self) -> dict[tuple[str, int], PortState]:
        out = {}
        for link in self.links.dump():
            name = link.name
            if name.startswith(VETH_PREFIX):
                state = _parse_alias(name, link.alias)
                if state is None:
                    state = PortState(name, "", 0, "", 0, "", ())
                out[(state.container_id, state.vni)] = state
        return out

    # -- networks ------------------------------------------------------------------------------
    def ensure_network(self, vni: int) -> None:
        """Bridge and VXLAN device of vni, up, with this host's MTU and VTEP MAC."""
        br = self._ensure_bridge(vni)
        self._vxlan_ids[vni] = self._ensure_vxlan(vni, br)

    def _ensure_bridge(self, vni: int, name: str | None = None) -> int:
        name = name or bridge_name(vni)
        link = self._link(name)
        if link is not None and link.kind != "bridge":
            log.warning("replacing %s: it is not a bridge", name)
            self._delete_link(name)
            link = None
        if link is None:
            log.info("creating bridge %s", name)
            self.ipr.link("add", ifname=name, kind="bridge", mtu=self.mtu)
            link = self._made(name)
        idx = link.index
        if link.mtu != self.mtu or link.operstate == "DOWN" or not link.up:
            self.ipr.link("set", index=idx, mtu=self.mtu, state="up")
        return idx

    def _vxlan_mismatch(self, link: Link, vni: int, bridge_idx: int, *, port: int = VXLAN_PORT, proxy: int = 1) -> str | None:
        data = link.data.get
        if link.kind != "vxlan":
            return "it is not a VXLAN device"
        wanted = {
            "IFLA_VXLAN_ID": vni,
            "IFLA_VXLAN_LOCAL": self.underlay.address,
            "IFLA_VXLAN_LINK": self.underlay.ifindex,
            "IFLA_VXLAN_PORT": port,
            "IFLA_VXLAN_LEARNING": 0,
            "IFLA_VXLAN_PROXY": proxy,
        }
        for attr, value in wanted.items():
            if data(attr) != value:
                return f"{attr.lower()[10:]} is {data(attr)}, want {value}"
        return None

    def _ensure_vxlan(self, vni: int, bridge_idx: int) -> int:
        name = vxlan_name(vni)
        link = self._link(name)
        if link is not None:
            reason = self._vxlan_mismatch(link, vni, bridge_idx)
            if reason:
                log.warning("replacing %s: %s", name, reason)
                self._delete_link(name)
                link = None
        if link is None:
            log.info("creating vxlan %s vni=%d local=%s dev=%s", name, vni, self.underlay.address, self.underlay.ifname)
            self.ipr.link(
                "add",
                ifname=name,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_local=self.underlay.address,
                vxlan_link=self.underlay.ifindex,
                vxlan_port=VXLAN_PORT,
                vxlan_learning=0,
                vxlan_proxy=1,
                address=self.vtep_mac,
                mtu=self.mtu,
            )
            link = self._made(name)
        idx = link.index
        if link.master != bridge_idx or link.mtu != self.mtu or link.address != self.vtep_mac or not link.up:
            self.ipr.link("set", index=idx, master=bridge_idx, mtu=self.mtu, address=self.vtep_mac, state="up")
        return idx

    def ensure_exposed(self, vni: int, *, mac: str, cidrs: Iterable[ipaddress.IPv4Interface], subnet: str | None = None) -> None:
        """The host's own addresses on network vni live on its bridge (`pyweave expose`).

        The bridge gets a fixed MAC so peers can program it like any endpoint, and IPv4
        forwarding is switched off on it: an exposed host reaches the network's containers but
        never routes between two networks, whatever the global ip_forward says."""
        name = bridge_name(vni)
        link = self._link(name)
        if link is None:
            raise DataplaneError(f"bridge {name} is missing; ensure_network first")
        idx = link.index
        if link.address != mac:
            self.ipr.link("set", index=idx, address=mac)
        _set_sysctl(f"net/ipv4/conf/{name}/forwarding", "0")
        _set_sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1")
        self._sync_addresses(self.ipr, idx, cidrs, what=name, have=self.links.addresses(idx))
        if self.service_address and subnet:
            # The way back from the service address to the containers; metric 1024 so that the
            # connected route of an exposed address, when there is one, stays in front.
            net = ipaddress.IPv4Network(subnet)
            present = any(
                r.oif == idx and r.dst == str(net.network_address) and r.dst_len == net.prefixlen and r.priority == 1024
                for r in self.links.routes(table=254)
            )
            if not present:
                self.ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen, oif=idx, scope=253, priority=1024)

    def remove_network(self, vni: int) -> None:
        log.info("removing network devices of vni %d", vni)
        self._vxlan_ids.pop(vni, None)
        self._delete_link(vxlan_name(vni))
        self._delete_link(bridge_name(vni))

    def _delete_link(self, name: str) -> None:
        try:
            found = self.ipr.link_lookup(ifname=name)
            if found:
                self.ipr.link("del", index=found[0])
        except NetlinkError as err:
            if not is_missing(err):
                raise

    # -- transit (relaying for others, docs/routing.md) -------------------------------------------
    def transits(self) -> set[tuple[int, int]]:
        """(vni, budget) of every transit device or bridge here."""
        out = set()
        for link in self.links.dump():
            found = parse_transit_name(link.name)
            if found is not None:
                out.add(found)
        return out

    def ensure_transit(self, vni: int, budget: int) -> None:
        """The transit bridge and VXLAN device of (vni, budget), up, the device in hairpin mode."""
        br = self._ensure_bridge(vni, transit_bridge_name(vni, budget))
        name = transit_vxlan_name(vni, budget)
        port = VXLAN_PORT + budget
        link = self._link(name)
        if link is not None:
            reason = self._vxlan_mismatch(link, vni, br, port=port, proxy=0)
            if reason:
                log.warning("replacing %s: %s", name, reason)
                self._delete_link(name)
                link = None
        if link is None:
            log.info("creating transit vxlan %s vni=%d port=%d", name, vni, port)
            self.ipr.link(
                "add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=self.underlay.address,
                vxlan_link=self.underlay.ifindex, vxlan_port=port, vxlan_learning=0, mtu=self.mtu,
            )
            link = self._made(name)
        idx = link.index
        if link.master != br or link.mtu != self.mtu or not link.up:
            self.ipr.link("set", index=idx, master=br, mtu=self.mtu, state="up")
        # Hairpin: a frame goes back out of the port it came in by. No learning: the device's own
        # FDB decides where each frame goes next, the bridge just turns it around.
        self.ipr.brport("set", index=idx, mode=1, learning=0)
        self._transit_ids[(vni, budget)] = idx

    def remove_transit(self, vni: int, budget: int) -> None:
        log.info("removing transit devices of vni %d budget %d", vni, budget)
        self._transit_ids.pop((vni, budget), None)
        self._delete_link(transit_vxlan_name(vni, budget))
        self._delete_link(transit_bridge_name(vni, budget))

    def sync_transit(self, vni: int, budget: int, fdb: Mapping[str, str]) -> int:
        """Make the FDB of a transit device exactly `fdb` (MAC -> "ADDRESS:PORT"); the number of
        changes made."""
        key = (vni, budget)
        idx = self._transit_ids.get(key)
        if idx is None:
            link = self._link(transit_vxlan_name(vni, budget))
            if link is None:
                raise DataplaneError(f"{transit_vxlan_name(vni, budget)} is missing; ensure_transit first")
            idx = link.index
        have = {e.mac: e.dst for e in self.neighbours.fdb(idx)}
        fdb_del = tuple((mac, dst) for mac, dst in have.items() if dst and fdb.get(mac) != dst)
        fdb_add = tuple((mac, dst) for mac, dst in fdb.items() if have.get(mac) != dst)
        if fdb_del or fdb_add:
            try:
                self.neighbours.apply(idx, fdb_del=fdb_del, fdb_add=fdb_add)
            except NeighbourError as err:
                raise DataplaneError(f"cannot program {transit_vxlan_name(vni, budget)}: {err}") from err
        return len(fdb_del) + len(fdb_add)

    # -- container ports -----------------------------------------------------------------------
    def ensure_port(self, port: LocalPort) -> None:
        """The container's interface on port.vni, with exactly port.cidrs, joined to the bridge."""
        host_name = host_veth_name(port.container_id, port.vni)
        link = self._link(host_name)
        bridge = self._link(bridge_name(port.vni))
        if bridge is None:
            raise DataplaneError(f"bridge {bridge_name(port.vni)} is missing; ensure_network first")
        if link is not None:
            state = _parse_alias(host_name, link.alias)
            if state is None or state.pid != port.pid or state.ifname != port.ifname or state.mac != port.mac:
                log.info("replacing port %s of %s: container or its interface changed", host_name, port.container_id[:12])
                self._delete_link(host_name)
                link = None
            else:
                if state.cidrs != port.cidrs:
                    self._set_container_addresses(port)
                    self.ipr.link("set", index=link.index, ifalias=_alias(port))
                if link.master != bridge.index or not link.up:
                    self.ipr.link("set", index=link.index, master=bridge.index, state="up")
                return
        self._create_port(port, host_name, bridge.index)

    def _create_port(self, port: LocalPort, host_name: str, bridge_idx: int) -> None:
        temp = TEMP_PREFIX + host_name[len(VETH_PREFIX):]
        log.info("creating port %s -> %s:%s %s", host_name, port.container_id[:12], port.ifname,
                 ",".join(str(c) for c in port.cidrs))
        try:
            self.ipr.link(
                "add",
                ifname=host_name,
                kind="veth",
                mtu=port.mtu,
                peer={"ifname": temp, "net_ns_pid": port.pid, "mtu": port.mtu},
            )
        except NetlinkError as err:
            raise DataplaneError(f"cannot create veth for container {port.container_id[:12]}: {err}") from err
        # Configure the container end before the host end joins the bridge, so a half-made port
        # never carries traffic; on any failure remove the pair (deleting one end deletes both).
        try:
            with NetNS(f"/proc/{port.pid}/ns/net") as ns:
                found = ns.link_lookup(ifname=temp)
                if not found:
                    raise DataplaneError(f"veth end {temp} did not appear in container {port.container_id[:12]}")
                idx = found[0]
                if ns.link_lookup(ifname=port.ifname):
                    raise DataplaneError(
                        f"container {port.container_id[:12]} already has an interface named {port.ifname}",
                        retryable=False,
                    )
                ns.link("set", index=idx, ifname=port.ifname, address=port.mac, ifalias=_alias(port))
                for iface in port.cidrs:
                    ns.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                ns.link("set", index=idx, state="up")
                if self.service_address:
                    ns.route("replace", dst=self.service_address, dst_len=32, oif=idx, scope=253, priority=idx)
            host_idx = self.ipr.link_lookup(ifname=host_name)[0]
            self.ipr.link("set", index=host_idx, master=bridge_idx, ifalias=_alias(port), state="up")
            for iface in port.cidrs:
                self.announce(port.vni, ip=str(iface.ip), mac=port.mac)
        except (NetlinkError, OSError, DataplaneError) as err:
            self._delete_link(host_name)
            if isinstance(err, DataplaneError):
                raise
            raise DataplaneError(f"cannot configure {port.ifname} in container {port.container_id[:12]}: {err}") from err

    def _set_container_addresses(self, port: LocalPort) -> None:
        with NetNS(f"/proc/{port.pid}/ns/net") as ns:
            found = ns.link_lookup(ifname=port.ifname)
            if not found:
                raise DataplaneError(f"{port.ifname} vanished from container {port.container_id[:12]}")
            self._sync_addresses(ns, found[0], port.cidrs, what=f"{port.container_id[:12]}:{port.ifname}")

    @staticmethod
    def _sync_addresses(
        ipr, index: int, cidrs: Iterable[ipaddress.IPv4Interface], *, what: str,
        have: set[ipaddress.IPv4Interface] | None = None,
    ) -> None:
        """Make the IPv4 addresses of interface `index` (in the namespace of `ipr`) exactly `cidrs`;
        `have`: what it has, when already read (else asked of `ipr`)."""
        if have is None:
            have = {
                ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                for a in ipr.get_addr(index=index, family=2)
            }
        want = set(cidrs)
        for iface in have - want:
            log.info("removing %s from %s", iface, what)
            ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        for iface in sorted(want - have):
            log.info("adding %s to %s", iface, what)
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def remove_port(self, state: PortState) -> None:
        log.info("removing port %s (container %s vni %d)", state.host_ifname, state.container_id[:12], state.vni)
        self._delete_link(state.host_ifname)

    # -- remote endpoints ----------------------------------------------------------------------
    def sync_remote(self, vni: int, entries: Iterable[RemoteEntry]) -> int:
        """Make the FDB and neighbour entries of vni's VXLAN device exactly `entries`: one dump of
        each, then only the differences, in bulk (`dataplane.neighbours`).

        Returns the number of changes made (0 when already in sync)."""
        idx = self._vxlan_index(vni)
        want_fdb = {e.mac: e.underlay for e in entries}
        want_neigh = {e.ip: e.mac for e in entries}
        have_fdb = {e.mac: e.dst for e in self.neighbours.fdb(idx)}
        have_neigh = {e.dst: (e.mac, e.state) for e in self.neighbours.neighbours(idx)}
        fdb_del = [(mac, dst) for mac, dst in have_fdb.items() if want_fdb.get(mac) != dst and dst]
        neigh_del = [
            (ip, mac) for ip, (mac, state) in have_neigh.items()
            if ip and (want_neigh.get(ip) != mac or not state & NUD_PERMANENT)
        ]
        fdb_add = [(mac, dst) for mac, dst in want_fdb.items() if have_fdb.get(mac) != dst]
        neigh_add = [
            (ip, mac) for ip, mac in want_neigh.items()
            if (have := have_neigh.get(ip)) is None or have[0] != mac or not have[1] & NUD_PERMANENT
        ]
        self._write(vni, idx, RemoteDelta(tuple(fdb_del), tuple(neigh_del), tuple(fdb_add), tuple(neigh_add)),
                    moved={ip for ip, _mac in neigh_add if ip in have_neigh})
        return len(fdb_del) + len(neigh_del) + len(fdb_add) + len(neigh_add)

    def update_remote(self, vni: int, delta: RemoteDelta) -> None:
        """Apply a few changes to vni's FDB and neighbour entries, without reading what is there
        (an event's cost is its own writes; `sync_remote`, at the periodic resync, repairs any
        drift). Removals first, so an address that moves to a new MAC never has two."""
        self._write(vni, self._vxlan_index(vni), delta, moved={ip for ip, _mac in delta.neigh_add})

    def _write(self, vni: int, idx: int, delta: RemoteDelta, *, moved: set[str]) -> None:
        try:
            self.neighbours.apply(
                idx, fdb_del=delta.fdb_del, neigh_del=delta.neigh_del, fdb_add=delta.fdb_add, neigh_add=delta.neigh_add
            )
        except NeighbourError as err:
            self._vxlan_ids.pop(vni, None)  # perhaps deleted and made again: look it up next time
            raise DataplaneError(f"cannot program the remote entries of {vxlan_name(vni)}: {err}") from err
        for ip, mac in delta.neigh_add:
            if ip in moved:
                self.announce(vni, ip=ip, mac=mac)

    def _vxlan_index(self, vni: int) -> int:
        """The VXLAN device's ifindex, remembered from ensure_network (pyroute2's lookup dumps
        every link: the most expensive part of a pass that only changes a few entries)."""
        if vni in self._vxlan_ids:
            return self._vxlan_ids[vni]
        link = self._link(vxlan_name(vni))
        if link is None:
            raise DataplaneError(f"{vxlan_name(vni)} is missing; ensure_network first")
        self._vxlan_ids[vni] = link.index
        return link.index

    def announce(self, vni: int, *, ip: str, mac: str) -> None:
        """Send a gratuitous ARP for ip at mac into the bridge of vni, to local ports only.

        When an address moves to a new container (weave's IP reuse), local containers may still
        hold the old MAC in their ARP caches; this updates them at once instead of after the
        cache's timeout. The VXLAN port drops the broadcast (no flood entry), so it stays local."""
        if self.netns is not None:
            return  # only the agent, running in the host's namespace, announces
        # One packet socket for all announcements: closing one waits for an RCU grace period
        # (about 10 ms), which made a socket per announcement the slowest part of programming.
        try:
            if self._packet is None:
                self._packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            self._packet.sendto(_garp_frame(ip, mac), (bridge_name(vni), 0))
        except OSError as err:
            log.debug("cannot announce %s at %s on %s: %s", ip, mac, bridge_name(vni), err)
