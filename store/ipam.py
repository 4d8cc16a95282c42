"""Address management (weave's IPAM) through etcd transactions: never two holders of one address.

An address claim (`ips/<net-id>/<ip>`) is written in the same transaction as the attachment that
uses it; the lowest free address is allocated first; a dead host's claims are taken over after the
cluster's grace period (or at once with `pyweave rmpeer`). A mixin of `store.cluster.Cluster`.
"""

from __future__ import annotations

import ipaddress
import random
from typing import TYPE_CHECKING

from store import keys
from store.addresses import OverlayAddress, OverlaySubnet
from store.errors import ClusterError, Contention
from store.records import Bad, ClusterConfig, IpClaim, claim_value, encode, obj_of, parse_claim, parse_config

if TYPE_CHECKING:
    from store.raw import KeyValue, RawStore

ALLOCATE_ATTEMPTS = 200


class IpamOps:
    raw: RawStore

    # Provided by Cluster.
    def _read_attachment(self, host: str, container: str) -> tuple[KeyValue | None, list[OverlayAddress]]:
        raise NotImplementedError

    def _attach_txn(self, host: str, container: str, current: KeyValue | None,
                    cidrs: list[OverlayAddress], to_claim: list[OverlayAddress]) -> bool:
        raise NotImplementedError

    # -- claims ------------------------------------------------------------------------------
    def holder_of(self, subnet: ipaddress.IPv4Network, ip: ipaddress.IPv4Address) -> IpClaim | None:
        kv = self.raw.get(keys.ip_claim_key(subnet, ip))
        return None if kv is None else _claim_of(kv)

    def claim(self, cidr: OverlayAddress, *, host: str, container: str) -> bool:
        """Claim one address for an attachment written by hand (the CLI claims in `attach`).
        False if another container holds it."""
        if self.raw.create(keys.ip_claim_key(cidr.network, cidr.ip), claim_value(host, container)):
            return True
        holder = self.holder_of(cidr.network, cidr.ip)
        return holder is not None and (holder.host, holder.container) == (host, container)

    # -- the cluster's range -----------------------------------------------------------------
    def config(self) -> ClusterConfig | None:
        kv = self.raw.get(keys.CONFIG)
        if kv is None:
            return None
        try:
            return parse_config(obj_of(kv.value))
        except Bad as err:
            raise ClusterError(f"{keys.CONFIG} is invalid: {err}; fix it with etcdctl") from err

    def ensure_config(self, wanted: ClusterConfig) -> ClusterConfig:
        """The first host sets the cluster's allocation range; later hosts must agree."""
        if self.raw.create(keys.CONFIG, encode(wanted)):
            return wanted
        have = self.config()
        if have is None:  # deleted between the two requests: set it
            return self.ensure_config(wanted)
        for field_name, label in (("ipalloc_range", "--ipalloc-range"), ("default_subnet", "--ipalloc-default-subnet")):
            if getattr(have, field_name) != getattr(wanted, field_name):
                raise ClusterError(
                    f"this cluster uses {label} {getattr(have, field_name)}, not {getattr(wanted, field_name)}; "
                    f"launch with {label} {getattr(have, field_name)} (or leave it out)"
                )
        # A cluster is encrypted or not as a whole (docs/encryption.md), from its first host on.
        if have.encrypted and not wanted.encrypted:
            raise ClusterError("the cluster is encrypted: launch with the cluster's secret "
                               "(--password, $PYWEAVE_PASSWORD or --password-file)")
        if wanted.encrypted and not have.encrypted:
            raise ClusterError("the cluster is not encrypted: launch without --password (a cluster is "
                               "encrypted as a whole, from its first host)")
        return have

    def allocate(self, host: str, container: str, subnet: OverlaySubnet) -> OverlayAddress:
        """Claim the lowest free address of subnet for container, in one transaction with its
        attachment. Under contention, later attempts pick among the lowest few free addresses at
        random, so parallel allocators spread out instead of colliding on the same one."""
        prefix = keys.ip_claim_prefix(subnet)
        first, last = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
        for attempt in range(ALLOCATE_ATTEMPTS):
            kvs, _ = self.raw.list(prefix)
            taken = set()
            for kv in kvs:
                try:
                    taken.add(int(ipaddress.IPv4Address(kv.key[len(prefix):])))
                except ValueError:
                    continue
            spread = 1 if attempt == 0 else min(4 * attempt, 64)
            free: list[int] = []
            candidate = first
            while candidate <= last and len(free) < spread:
                if candidate not in taken:
                    free.append(candidate)
                candidate += 1
            if not free:
                raise ClusterError(f"no free address in {subnet}; remove containers or use another subnet")
            cidr = OverlayAddress(f"{ipaddress.IPv4Address(random.choice(free))}/{subnet.prefixlen}")
            att, current = self._read_attachment(host, container)
            if self._attach_txn(host, container, att, current + [cidr], [cidr]):
                return cidr
        raise Contention(f"allocate in {subnet}")

    # -- dead hosts --------------------------------------------------------------------------
    def take_over(self, host: str) -> int:
        """Release everything a dead host held (its addresses, attachments, names) and forget it.
        Returns the number of addresses freed. Only one of several concurrent callers frees:
        the one whose transaction removes the host's member record."""
        unchanged = {}
        for key in (keys.member_key(host), keys.tombstone_key(host)):
            kv = self.raw.get(key)
            if kv is not None:
                unchanged[key] = kv.mod_revision
        if unchanged and not self.raw.commit(unchanged=unchanged, deletes=list(unchanged)):
            return 0
        freed = 0
        kvs, _ = self.raw.list(keys.IPS)
        for kv in kvs:
            claim = _claim_of(kv)
            if claim is not None and claim.host == host and self.raw.delete_if(kv.key, mod_revision=kv.mod_revision):
                freed += 1
        for prefix in keys.host_prefixes(host):
            kvs, _ = self.raw.list(prefix)
            for kv in kvs:
                self.raw.delete(kv.key)
        self.raw.delete(keys.host_key(host))
        self.raw.delete(keys.progress_key(host))
        return freed


def _claim_of(kv: KeyValue) -> IpClaim | None:
    """The claim stored at kv (validated like every record), or None for a malformed one."""
    parts = keys.split(kv.key)
    if parts is None or parts[0] != "ips" or len(parts[1]) != 2:
        return None
    try:
        return parse_claim(parts[1][0], parts[1][1], obj_of(kv.value))
    except Bad:
        return None
