"""The janitor: repairs the desired state around this host and collects what nobody holds any more.

- An attachment written by hand (etcdctl) names a network or an address claim that does not exist
  yet: the janitor creates them, exactly as the CLI would have.
- A container was removed (Docker's `destroy`, or its ID is simply unknown to Docker): its
  attachment and claims are released.
- A claim of this host that no attachment lists any more (an attachment deleted or shortened by
  hand) is released, unless it is newer than the snapshot (its attachment may not have reached us).
- A member whose lease is gone gets a tombstone; after the cluster's grace period its addresses are
  taken over. A member that comes back loses its tombstone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from pyweave.plan import HostPlan
from store import keys
from store.addresses import OverlaySubnet
from store.cluster import Cluster
from store.records import DEFAULT_DEAD_HOST_GRACE, tombstone_value
from store.state import ClusterState

if TYPE_CHECKING:
    from pyweave.view import ClusterView

log = logging.getLogger("pyweave.agent")


class Janitor:
    def __init__(self, cluster: Cluster, *, me: str, dead_check_interval: float) -> None:
        self.cluster = cluster
        self.raw = cluster.raw
        self.me = me
        self.dead_check_interval = dead_check_interval
        self._last_dead_check = 0.0

    def fix_desired(self, plan: HostPlan) -> bool:
        """Create what the plan found missing and release removed containers; True if it wrote."""
        for subnet in sorted(plan.missing_networks):
            self.cluster.ensure_network(OverlaySubnet(subnet))
        for cidr, host, ref in plan.missing_claims:
            self.cluster.claim(cidr, host=host, container=ref)
        for ref in plan.gone_containers:
            log.info("container %s was removed; releasing its addresses", ref[:12])
            self.cluster.detach(self.me, ref, None)
        return bool(plan.missing_networks or plan.missing_claims or plan.gone_containers)

    def release_destroyed(self, state: ClusterState | ClusterView, destroyed: list[str]) -> None:
        for cid in destroyed:
            if (self.me, cid) in state.attachments:
                log.info("container %s destroyed; releasing its addresses", cid[:12])
                self.cluster.detach(self.me, cid, None)

    def release_unclaimed(self, state: ClusterState | ClusterView, revision: int, frozen_refs: set[str]) -> None:
        # Read under the view's lock (the watch thread changes it meanwhile), then work on the copy.
        with getattr(state, "lock", contextlib.nullcontext()):
            wanted = {(str(cidr.network), str(cidr.ip)) for _ref, att in state.local_attachments(self.me) for cidr in att.cidrs}
            mine = dict(state.claims_of(self.me))
        for (subnet, ip), claim in mine.items():
            if claim.container in frozen_refs or (subnet, ip) in wanted:
                continue
            key = keys.ip_claim_key(subnet, ip)
            kv = self.raw.get(key)
            if kv is not None and kv.mod_revision <= revision:
                log.info("releasing address %s of %s: no attachment lists it", ip, claim.container[:12])
                self.raw.delete_if(key, mod_revision=kv.mod_revision)

    def collect_dead_hosts(self, state: ClusterState | ClusterView) -> None:
        now = time.time()
        if now - self._last_dead_check < self.dead_check_interval:
            return
        self._last_dead_check = now
        grace = state.config.dead_host_grace if state.config else DEFAULT_DEAD_HOST_GRACE
        # Copies: the view's maps change under the watch thread meanwhile (this runs outside its lock).
        for host in list(state.tombstones):
            if host in state.hosts:
                self.raw.delete(keys.tombstone_key(host))
        for host in list(state.members):
            if host in state.hosts or host == self.me:
                continue
            since = state.tombstones.get(host)
            if since is None:
                log.info("host %s is gone; its addresses are taken over after %.0fs", host, grace)
                self.raw.create(keys.tombstone_key(host), tombstone_value(now))
            elif now - since >= grace:
                freed = self.cluster.take_over(host)
                if freed:
                    log.info("took over %d addresses from dead host %s", freed, host)
