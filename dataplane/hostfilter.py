"""The host filter: containers reach their host only for DNS (issue 15, docs/security.md).

The host routes its containers' subnets (the DNS service's way back), so a container that may change
its own routes (`--cap-add NET_ADMIN`) could send anything for the host's own addresses (the
underlay's etcd on 2379/2380, metrics, the join endpoint, sshd, ...) through `ethwe`: the packet
arrives on the network's bridge and Linux (weak host model) delivers it to whichever local
address it names. This module owns the nft table `inet pyweave_hostfilter` whose input chain filters
every packet that arrives on one of pyweave's bridges (`pwb-<vni>`, and the relays' transit
bridges `pwrb<k>-<vni>`) for this host itself, whatever its destination address:

- accepted: replies to connections the host opened (ct established/related);
- accepted: DNS (UDP and TCP 53) to the DNS service address, when the host serves DNS;
- accepted: anything for an address of the very bridge it arrived on (`fib daddr . iif type local`):
  the addresses `pyweave expose` gives the host on that network. Expose means what weave's expose
  means, the host joins the network at that address, so the network's containers reach it there as
  they reach each other. Only that address, only from that network: the host's other addresses
  stay closed to them. pyweave's own services do not listen there (etcd and the join endpoint bind
  the underlay address and loopback, metrics loopback unless `--metrics-addr` says otherwise; a
  service of the host bound to 0.0.0.0 does answer there: that host chose to join the network);
- everything else is dropped (and counted).

Forwarding is not this table's job: `LinuxDataplane.ensure_exposed` switches IPv4 forwarding off on
every bridge (and IPv6 off altogether), so the host routes nothing that comes from a container.
A forward-hook rule is deliberately absent: with `br_netfilter` loaded, frames bridged between two
containers of one network cross the inet forward hook with the bridge as both devices.

Kept by the agent: `HostFilter.ensure` at every full pass. The check is one netlink request for the
nftables ruleset's generation (a counter the kernel bumps on every change to any table of the
namespace); only when it moved since the filter last wrote is the table written again, with one
`nft -f` transaction that deletes and recreates it, so it is never absent while it is replaced
(an agent restart writes it again the same way: no gap). The table stays when the agent stops (the
containers stay too); `pyweave reset` removes it (`remove_host_filter`). Acts in the network
namespace of the calling process.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import subprocess

from dataplane.api import BRIDGE_PREFIX, TRANSIT_BRIDGE_PREFIX, DataplaneError

log = logging.getLogger(__name__)

NFT_FAMILY = "inet"
NFT_TABLE = "pyweave_hostfilter"
GUARDED_PREFIXES = (BRIDGE_PREFIX, TRANSIT_BRIDGE_PREFIX)

# nfnetlink: the nftables subsystem's "get generation" request and its answer's attribute.
_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_GETGEN = 16
_NFTA_GEN_ID = 1
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2


def filter_script(service_address: str | None) -> str:
    """The nft script that replaces the table as one transaction (create if missing, delete,
    create with its chains): the kernel applies all of it or nothing."""
    jumps = "\n".join(f'        iifname "{prefix}*" jump from_containers' for prefix in GUARDED_PREFIXES)
    dns = ""
    if service_address:
        dns = (f"        ip daddr {service_address} udp dport 53 accept\n"
               f"        ip daddr {service_address} tcp dport 53 accept\n")
    return (
        f"table {NFT_FAMILY} {NFT_TABLE} {{}}\n"
        f"delete table {NFT_FAMILY} {NFT_TABLE}\n"
        f"table {NFT_FAMILY} {NFT_TABLE} {{\n"
        f"    chain input {{\n"
        f"        type filter hook input priority filter; policy accept;\n"
        f"{jumps}\n"
        f"    }}\n"
        f"    chain from_containers {{\n"
        f"        ct state established,related accept\n"
        f"{dns}"
        f"        fib daddr . iif type local accept\n"
        f"        counter drop\n"
        f"    }}\n"
        f"}}\n"
    )


def _nft(script: str) -> None:
    try:
        done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataplaneError(f"cannot run nft (install nftables): {err}") from err
    if done.returncode != 0:
        raise DataplaneError(f"nft failed: {done.stderr.strip()}")


def ruleset_generation() -> int:
    """The nftables ruleset generation of this namespace: it changes whenever any table does."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        payload = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)  # nfgenmsg
        msg_type = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETGEN
        sock.send(struct.pack("=LHHLL", 16 + len(payload), msg_type, _NLM_F_REQUEST, 1, 0) + payload)
        data = sock.recv(65536)
    length, kind = struct.unpack_from("=LH", data)
    if kind == _NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", data, 16)
        raise OSError(-code, f"nftables generation: {os.strerror(-code)}")
    offset = 16 + 4  # nlmsghdr, nfgenmsg
    while offset + 4 <= length:
        attr_len, attr_type = struct.unpack_from("=HH", data, offset)
        if attr_type & 0x3FFF == _NFTA_GEN_ID:
            return struct.unpack_from("!L", data, offset + 4)[0]
        offset += (attr_len + 3) & ~3
    raise OSError("nftables generation: no NFTA_GEN_ID in the answer")


class HostFilter:
    """The table of this host's namespace, kept as `filter_script(service_address)` says."""

    def __init__(self, *, service_address: str | None) -> None:
        self.script = filter_script(service_address)
        self._generation: int | None = None  # the ruleset's generation right after our own write

    def ensure(self) -> bool:
        """Write the table unless nothing in the ruleset changed since this filter wrote it. False
        (logged) if it could not be written: the next call tries again."""
        try:
            before = ruleset_generation()
            if before == self._generation:
                return True
            _nft(self.script)
            after = ruleset_generation()
        except (OSError, DataplaneError) as err:
            self._generation = None
            log.error("host filter (nft table %s %s) not written, containers may reach this host: %s",
                      NFT_FAMILY, NFT_TABLE, err)
            return False
        # Our transaction is one step of the generation; more means someone else wrote meanwhile
        # (perhaps deleting ours): look again next time.
        self._generation = after if after == before + 1 else None
        log.info("host filter written: nft table %s %s", NFT_FAMILY, NFT_TABLE)
        return True


def remove_host_filter() -> None:
    """Delete the table (`pyweave reset`); absent is fine (so is nft: then no table was made)."""
    if shutil.which("nft") is None:
        return
    _nft(f"table {NFT_FAMILY} {NFT_TABLE} {{}}\ndelete table {NFT_FAMILY} {NFT_TABLE}\n")
