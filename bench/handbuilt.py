"""The reference overlay: kernel VXLAN between lab hosts h1 and h2, set up by hand with `ip`.

Two variants, both with the overlay MTU pyweave uses (underlay MTU - 50), learning off, and static
FDB and neighbour entries, as a user following a VXLAN how-to would do it:

- on the hosts: a VXLAN device `bvxd` (VNI 4201) in each host namespace with an address in
  10.98.0.0/24. No bridge, no veth: the cheapest overlay the kernel offers.
- in namespaces: a stand-in for a container (`<prefix>-rN`, address in 10.99.0.0/24) joined by a
  veth to a bridge `bbr` that has a VXLAN device `bvxb` (VNI 4202) as a port. This is the topology
  pyweave builds for a container (veth -> bridge -> VXLAN), made by hand, so it is the reference
  the targets compare pyweave with: any difference is pyweave's doing, not the topology's.

VNIs below 0x10000 are left free by pyweave for exactly this. Both are removed by `down()`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from bench.labsession import LabSession
from dataplane.api import VXLAN_OVERHEAD
from pyweave_lab import sh

DIRECT_VNI = 4201
BRIDGED_VNI = 4202
DIRECT_NET = "10.98.0"
BRIDGED_NET = "10.99.0"


def _mac(kind: int, index: int) -> str:
    return f"02:b0:00:00:{kind:02x}:{index + 1:02x}"


class HandBuiltVxlan:
    def __init__(self, session: LabSession, say: Callable[[str], None]) -> None:
        self.session = session
        self.say = say
        self.lab = session.up()
        self.mtu = self.lab.mtu - VXLAN_OVERHEAD
        self.hosts = self.lab.hosts[:2]
        self.standins = [f"{self.lab.prefix}-r{i + 1}" for i in range(2)]
        self._made_ns: list[str] = []

    def direct_ip(self, i: int) -> str:
        return f"{DIRECT_NET}.{i + 1}"

    def bridged_ip(self, i: int) -> str:
        return f"{BRIDGED_NET}.{i + 1}"

    def __enter__(self) -> HandBuiltVxlan:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        mtu = str(self.mtu)
        for i, host in enumerate(self.hosts):
            peer = self.hosts[1 - i]
            ns = host.name
            # On the host: the VXLAN device itself carries the overlay address.
            sh("ip", "-n", ns, "link", "add", "bvxd", "address", _mac(1, i), "mtu", mtu, "type", "vxlan",
               "id", str(DIRECT_VNI), "local", host.address, "dev", "eth0", "dstport", "4789", "nolearning")
            sh("ip", "-n", ns, "addr", "add", f"{self.direct_ip(i)}/24", "dev", "bvxd")
            sh("ip", "-n", ns, "link", "set", "bvxd", "up")
            sh("ip", "netns", "exec", ns, "bridge", "fdb", "append", _mac(1, 1 - i), "dev", "bvxd", "dst", peer.address)
            sh("ip", "-n", ns, "neigh", "replace", self.direct_ip(1 - i), "lladdr", _mac(1, 1 - i),
               "dev", "bvxd", "nud", "permanent")
            # In a namespace: stand-in --veth--> bridge <-- VXLAN, pyweave's topology by hand.
            standin = self.standins[i]
            sh("ip", "netns", "add", standin)
            self._made_ns.append(standin)
            sh("ip", "-n", standin, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "add", "bbr", "mtu", mtu, "type", "bridge")
            sh("ip", "-n", ns, "link", "set", "bbr", "up")
            sh("ip", "-n", ns, "link", "add", "bvxb", "mtu", mtu, "type", "vxlan", "id", str(BRIDGED_VNI),
               "local", host.address, "dev", "eth0", "dstport", "4789", "nolearning")
            sh("ip", "-n", ns, "link", "set", "bvxb", "master", "bbr", "up")
            sh("ip", "-n", ns, "link", "add", "bve", "mtu", mtu, "type", "veth", "peer", "name", "eth0",
               "mtu", mtu, "netns", standin)
            sh("ip", "-n", ns, "link", "set", "bve", "master", "bbr", "up")
            sh("ip", "-n", standin, "link", "set", "eth0", "address", _mac(2, i), "up")
            sh("ip", "-n", standin, "addr", "add", f"{self.bridged_ip(i)}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "bridge", "fdb", "append", _mac(2, 1 - i), "dev", "bvxb", "dst", peer.address)
            sh("ip", "-n", standin, "neigh", "replace", self.bridged_ip(1 - i), "lladdr", _mac(2, 1 - i),
               "dev", "eth0", "nud", "permanent")
        self.say(
            f"hand-built VXLAN up: on the hosts {DIRECT_NET}.0/24 (vni {DIRECT_VNI}), "
            f"in namespaces {BRIDGED_NET}.0/24 (vni {BRIDGED_VNI}), mtu {self.mtu}"
        )

    def down(self) -> None:
        """Idempotent: a device or namespace already gone is fine."""
        for host in self.hosts:
            for dev in ("bve", "bvxb", "bbr", "bvxd"):
                sh("ip", "-n", host.name, "link", "del", dev, check=False)
        for ns in self._made_ns:
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)  # only the bench's own iperf3 runs there
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        self._made_ns.clear()
