"""Domain operations on the store: networks and attachments (this module), addresses (`store.ipam`),
names (`store.names`). The upper tier of `store/`, over any `RawStore`.

Every change that several writers may race on is one etcd transaction, compared on the revisions
just read; a lost race is retried a few times and then reported as `Contention` (retryable). What the
cluster's state refuses (an address held by someone else, an overlapping subnet) is a permanent
`ClusterError` whose message says what to do.
"""

from __future__ import annotations

from collections.abc import Iterable

from store import keys
from store.addresses import OverlayAddress, OverlaySubnet
from store.errors import AddressInUse, ClusterError, Contention, SubnetConflict
from store.ipam import IpamOps
from store.names import NameOps
from store.raw import KeyValue, RawStore
from store.records import (
    FIRST_VNI,
    MAX_VNI,
    AttachmentRecord,
    Bad,
    NetworkRecord,
    attachment_value,
    claim_value,
    encode,
    obj_of,
    parse_attachment,
    vni_claim_value,
)
from store.state import ClusterState

__all__ = ["AddressInUse", "Cluster", "ClusterError", "ClusterState", "Contention", "SubnetConflict"]

RETRIES = 8


class Cluster(IpamOps, NameOps):
    """Domain operations over a raw store: every multi-writer change is one transaction."""

    def __init__(self, raw: RawStore) -> None:
        self.raw = raw

    def state(self, *kinds: str) -> tuple[ClusterState, int]:
        """The validated state: all of it, or only the given kinds ("networks/", "hosts/", ...),
        which costs one range read each instead of reading everything."""
        items: list[tuple[str, bytes]] = []
        revision = 0
        for prefix in [keys.ROOT + kind for kind in kinds] or [keys.ROOT]:
            kvs, revision = self.raw.list(prefix)
            items += [(kv.key, kv.value) for kv in kvs]
        return ClusterState.from_items(items), revision

    # -- attachments -------------------------------------------------------------------------
    def _read_attachment(self, host: str, container: str) -> tuple[KeyValue | None, list[OverlayAddress]]:
        """The attachment's key-value and its addresses; an unreadable value counts as empty (the
        caller's transaction then replaces it, compared on its revision)."""
        kv = self.raw.get(keys.attachment_key(host, container))
        if kv is None:
            return None, []
        try:
            return kv, list(parse_attachment(host, container, obj_of(kv.value)).cidrs)
        except Bad:
            return kv, []

    def attachment(self, host: str, container: str) -> AttachmentRecord | None:
        kv, cidrs = self._read_attachment(host, container)
        return None if kv is None or not cidrs else AttachmentRecord(host, container, tuple(cidrs))

    def _attach_txn(self, host: str, container: str, current: KeyValue | None,
                    cidrs: list[OverlayAddress], to_claim: list[OverlayAddress]) -> bool:
        """One transaction: claim every address of `to_claim` (each must be unclaimed) and write the
        attachment as `cidrs`, provided it is unchanged since `current` was read."""
        key = keys.attachment_key(host, container)
        claims = [(keys.ip_claim_key(c.network, c.ip), claim_value(host, container)) for c in to_claim]
        return self.raw.commit(
            absent=[k for k, _ in claims] + ([] if current is not None else [key]),
            unchanged={key: current.mod_revision} if current is not None else {},
            puts=[*claims, (key, attachment_value(cidrs))],
        )

    def attach(self, host: str, container: str, cidrs: Iterable[OverlayAddress]) -> list[OverlayAddress]:
        """Add addresses to a container's attachment, claiming each address in the same transaction.

        Returns the addresses added (already attached ones are skipped, so this is idempotent). The
        first attempt assumes the addresses are free and reads no claim; only a lost transaction
        reads the holders, to tell "held by another container" from "ours already" or a race."""
        wanted = list(cidrs)
        ours: set[OverlayAddress] = set()
        for _ in range(RETRIES):
            kv, current = self._read_attachment(host, container)
            have = {c.ip for c in current}
            added = [c for c in wanted if c.ip not in have]
            if not added:
                return []
            to_claim = [c for c in added if c not in ours]
            if self._attach_txn(host, container, kv, current + added, to_claim):
                return added
            for c in to_claim:
                holder = self.holder_of(c.network, c.ip)
                if holder is not None and (holder.host, holder.container) != (host, container):
                    raise AddressInUse(
                        f"address {c.ip} in {c.network} is already held by container "
                        f"{holder.container[:12]} on host {holder.host}; choose another address"
                    )
                if holder is not None:
                    ours.add(c)
        raise Contention(f"attach {container[:12]}")

    def detach(self, host: str, container: str, cidrs: Iterable[OverlayAddress] | None) -> list[OverlayAddress]:
        """Remove addresses (all if cidrs is None) from an attachment and release their claims."""
        drop = None if cidrs is None else {c.ip for c in cidrs}
        for _ in range(RETRIES):
            kv, current = self._read_attachment(host, container)
            if kv is None:
                return []
            removed = [c for c in current if drop is None or c.ip in drop]
            keep = [c for c in current if c not in removed]
            key = keys.attachment_key(host, container)
            deletes = [keys.ip_claim_key(c.network, c.ip) for c in removed]
            puts = [(key, attachment_value(keep))] if keep else []
            if not keep:
                deletes.append(key)
            if self.raw.commit(unchanged={key: kv.mod_revision}, puts=puts, deletes=deletes):
                return removed
        raise Contention(f"detach {container[:12]}")

    # -- networks ----------------------------------------------------------------------------
    def check_subnets(self, subnets: Iterable[OverlaySubnet]) -> None:
        """Refuse subnets that overlap a different existing network (one range read)."""
        state, _rev = self.state("networks/")
        for subnet in subnets:
            _refuse_conflict(state, subnet)

    def ensure_network(self, subnet: OverlaySubnet) -> NetworkRecord:
        """The network record of subnet, created with a fresh VNI if needed.

        Refuses a subnet that overlaps a different existing one: two overlapping networks could not
        be routed from a host exposed on both, and a user who typed /16 for /24 wants to hear it.
        """
        for _ in range(RETRIES):
            state, _rev = self.state("networks/", "vnis/")
            existing = state.networks.get(str(subnet))
            if existing:
                return existing
            _refuse_conflict(state, subnet)
            used = {rec.vni for rec in state.networks.values()} | set(state.vni_claims)
            vni = next(v for v in range(FIRST_VNI, MAX_VNI) if v not in used)
            rec = NetworkRecord(subnet=str(subnet), vni=vni)
            if self.raw.commit(
                absent=[keys.network_key(subnet), keys.vni_key(vni)],
                puts=[(keys.network_key(subnet), encode(rec)), (keys.vni_key(vni), vni_claim_value(str(subnet)))],
            ):
                return rec
        raise Contention(f"create network {subnet}")


def _refuse_conflict(state: ClusterState, subnet: OverlaySubnet) -> None:
    other = state.conflicting_network(subnet)
    if other is not None:
        raise SubnetConflict(
            f"subnet {subnet} overlaps existing network {other.subnet}; "
            f"use {other.subnet} or a subnet that does not overlap it"
        )

