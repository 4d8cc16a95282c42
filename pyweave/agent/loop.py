"""The per-host agent: a thin loop over named roles.

    watcher (store mirror) ─┐                      ┌─ KernelApplier ── kernel (dataplane)
    DockerView (events) ────┤                      ├─ Publisher ────── observed records
    LeaseKeeper (lease) ────┼─ wake ─ reconcile ───┼─ Janitor ──────── desired-state repairs
    Prober (link probes) ───┘     plan_host (pure) └─ Router ───────── routes, relaying (docs/routing.md)

Threads, each a thin loop with the agent's stop event: the store watcher (list, then watch), the
Docker event follower, the lease keep-alive, the link prober. They only wake the loop, which owns every decision:
one pass reads the mirror, asks Docker about this host's containers, plans (`pyweave.plan`, pure),
then hands the plan to the roles. A pass runs on every change and at least every `resync_interval`
seconds, and every such period one pass is full (the applier trusts nothing), even under continuous
churn. Running a pass twice changes nothing. It never flushes working state because the store is
unreachable or Docker is unavailable: it then keeps what the kernel has and retries with backoff.
"""

from __future__ import annotations

import logging
import threading
import time

from dataplane.api import VXLAN_OVERHEAD, Dataplane, DataplaneError, RemoteEntry, Underlay
from dataplane.hostfilter import HostFilter
from pyweave.agent.applier import KernelApplier
from pyweave.agent.docker_view import DockerView
from pyweave.agent.hostguard import HostRouteGuard
from pyweave.agent.janitor import Janitor
from pyweave.agent.lease import LeaseKeeper
from pyweave.agent.prober import Prober
from pyweave.agent.publisher import Publisher
from pyweave.agent.router import Router
from pyweave.agent.stats import AgentStats
from pyweave.agent.tunnel import TunnelKeeper, TunnelPaths
from pyweave.backoff import Backoff
from pyweave.containers import ContainerError, ContainerInfo, ContainerRuntime
from pyweave.dns import SERVICE_ADDRESS, DnsIndex, DnsService
from pyweave.host import HostConfig, HostState
from pyweave.plan import HostPlan, plan_host
from pyweave.view import ClusterView
from pyweave.watcher import StoreWatcher
from store import keys
from store.cluster import Cluster
from store.errors import ClusterError, StoreError
from store.keys import EXPOSE_REF
from store.records import HostRecord, Invalid

log = logging.getLogger("pyweave.agent")


class Agent:
    def __init__(
        self,
        *,
        config: HostConfig,
        state: HostState,
        raw,
        underlay: Underlay | None = None,
        dataplane: Dataplane | None = None,
        containers: ContainerRuntime | None = None,
        probe: bool | None = None,
    ) -> None:
        """The kernel and Docker sides can be replaced (the control-plane benchmark runs hundreds
        of agents in one process with a dataplane that records instead of programming). `probe`:
        whether to measure the underlay links (default: when the dataplane is the kernel's)."""
        self.config = config
        self.state = state
        self.raw = raw
        self.me = config.name
        # Containers reach this host only for DNS (dataplane.hostfilter): with the kernel's dataplane only.
        self.host_filter = HostFilter(service_address=SERVICE_ADDRESS if config.dns else None) if dataplane is None else None
        if underlay is None:
            from dataplane.host import find_underlay

            underlay = find_underlay(config.address)
        self.underlay = underlay
        self.mtu = config.mtu or (underlay.mtu - VXLAN_OVERHEAD)
        # An encrypted cluster (docs/encryption.md): frames between hosts cross this host's tunnel,
        # whose overhead comes off the MTU; the host record carries the public key peers need.
        self.tunnel: TunnelKeeper | None = None
        public_key = ""
        if config.encrypted:
            from dataplane.crypto import DATA_OVERHEAD, StaticKey

            public_key = StaticKey.load_or_create(TunnelPaths(state).key).public_b64
            # The sealed outer packet travels in a datagram of its own: IPv4 20 + UDP 8 + the AEAD's.
            self.mtu = config.mtu or (underlay.mtu - VXLAN_OVERHEAD - 28 - DATA_OVERHEAD)
            self.tunnel = TunnelKeeper(state, me=self.me, address=underlay.address)
        if probe is None:
            probe = dataplane is None
        # A hand-written attachment over the host's own routes is refused (the kernel's dataplane only).
        self.host_guard = HostRouteGuard() if dataplane is None else None
        if dataplane is None:
            from dataplane.linux import LinuxDataplane

            dataplane = LinuxDataplane(
                underlay=underlay, vtep_mac=config.vtep_mac, mtu=self.mtu,
                service_address=SERVICE_ADDRESS if config.dns else None,
            )
        if containers is None:
            from pyweave.docker_runtime import Containers

            containers = Containers()
        self.dataplane = dataplane
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._full = threading.Event()
        self._last_full = 0.0
        self._last_count = 0.0
        self._timer: threading.Timer | None = None
        self._ports: dict | None = None  # the kernel's ports, until a pass changes them
        self.stats = AgentStats(tunnel=self.tunnel.stats if self.tunnel is not None else None)
        self.dns_service: DnsService | None = None
        self.view = ClusterView(self.me)
        self.watcher = StoreWatcher(raw, keys.ROOT, self.wake, sink=self.view)
        self.docker = DockerView(containers, self._on_docker_event)
        self.lease_keeper = LeaseKeeper(
            raw, state, me=self.me, address=underlay.address, vtep_mac=config.vtep_mac, mtu=self.mtu,
            ttl=config.lease_ttl, stop=self.stop_event, on_renewed=lambda: self.wake(full=True),
            public_key=public_key,
        )
        self.applier = KernelApplier(dataplane, me=self.me)
        self.publisher = Publisher(raw, me=self.me, lease=lambda: self.lease_keeper.lease)
        self.cluster = Cluster(raw)
        self.janitor = Janitor(self.cluster, me=self.me, dead_check_interval=min(2.0, config.resync_interval))
        self.router = Router(self.me)
        self.prober = Prober(self.me, underlay.address, on_change=self.wake) if probe else None
        self._transit_wanted: dict[tuple[int, int], dict[str, str]] = {}
        self._own_up: frozenset[str] = frozenset()  # the peers this host's prober saw up at the last pass

    # -- wiring --------------------------------------------------------------------------------
    @property
    def lease(self) -> int:
        return self.lease_keeper.lease

    @lease.setter
    def lease(self, value: int) -> None:
        self.lease_keeper.lease = value

    @property
    def dns_index(self) -> DnsIndex:
        return self.view.dns_index

    @property
    def reconciles(self) -> int:
        return self.stats.reconciles

    def host_record(self, state: str = "alive") -> HostRecord:
        return self.lease_keeper.host_record(state)

    def wake(self, *, full: bool = False) -> None:
        if full:
            self._full.set()
        self._wake.set()

    def register(self) -> None:
        self.lease_keeper.register()

    def _on_docker_event(self) -> None:
        self._ports = None  # a container started or went: its port may have gone with it
        self.wake()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Register, start the threads, then reconcile until stopped; then shut down gracefully."""
        self.register()
        threads = [
            threading.Thread(target=self.watcher.run, args=(self.stop_event,), name="watch", daemon=True),
            threading.Thread(target=self.docker.follow, args=(self.stop_event,), name="docker-events", daemon=True),
            threading.Thread(target=self.lease_keeper.run, name="keepalive", daemon=True),
        ]
        for t in threads:
            t.start()
        self.watcher.wait_synced(timeout=30)
        if self.tunnel is not None:
            self._update_tunnel(self.view)
            self.tunnel.ensure_running(force=True)
        if self.prober is not None:
            # Start from the links this host published last time (an agent restart), so routes
            # stay as they were while the probes find their answers again.
            with self.view.lock:
                mine = self.view.links.get(self.me)
                alive = {n: rec.address for n, rec in self.view.hosts.items() if n != self.me and rec.state == "alive"}
            self.prober.seed(mine or {})
            self.publisher.seed_links(mine)
            # Its peers before its socket: bound, it silences the kernel's ICMP answers that kept the
            # peers' links up while this agent was away, and a hello from a peer it does not know yet
            # goes unanswered; the first pass (which sets them too) may be a while.
            self.prober.set_peers(alive)
            threading.Thread(target=self.prober.run, args=(self.stop_event,), name="prober", daemon=True).start()
        if self.state.dir.is_dir():
            self.state.dir.joinpath("ready").write_text(str(self._pid()))
        backoff = Backoff(initial=0.1, cap=1.0)
        while not self.stop_event.is_set():
            # A full pass once a period, whatever else happens (events, timers), so that repairs
            # come within one period even when the store never rests; and whenever asked.
            due = self._last_full + self.config.resync_interval - time.monotonic()
            self._wake.wait(timeout=max(0.0, due))
            if self.stop_event.is_set():
                break
            now = time.monotonic()
            full = self._full.is_set() or now - self._last_full >= self.config.resync_interval
            self._wake.clear()
            self._full.clear()
            started = now
            try:
                self.reconcile(full=full)
                backoff.reset()
                log.debug("pass full=%s revision=%d took=%.1fms", full, self.view.revision, (time.monotonic() - started) * 1000)
            except (StoreError, DataplaneError, ContainerError, ClusterError) as err:
                self.stats.error(type(err).__name__)
                log.warning("reconcile failed, will retry: %s", err)
                self.stop_event.wait(backoff.next())
                self._wake.set()
            except Exception:  # noqa: BLE001 - the agent must outlive any one bad reconcile
                self.stats.error("crash")
                log.exception("reconcile crashed, will retry")
                self.stop_event.wait(backoff.next())
                self._wake.set()
            finally:
                self.stats.reconcile_seconds += time.monotonic() - started
        self.shutdown()

    @staticmethod
    def _pid() -> int:
        import os

        return os.getpid()

    def reconcile(self, *, full: bool = True) -> HostPlan | None:
        """One pass. `full` re-reads and re-checks every kernel object (the periodic resync,
        which repairs what someone deleted by hand); otherwise only what the events since the last
        pass touched is planned and written: this host's own attachments (a handful), and the
        remote entries that changed on the networks this host has ports on. Remote entries of
        networks it has no port on are neither planned nor programmed (interest)."""
        view = self.view
        if view.revision == 0:
            return None
        if full:
            if self.host_filter is not None and not self.host_filter.ensure():
                self.stats.error("host_filter")  # logged; written again at the next full pass
            self.applier.forget(all_remote=False)
            self.docker.forget()
            self._ports = None
            self._last_full = time.monotonic()
            if self.host_guard is not None:
                self.host_guard.forget()
        try:
            return self._reconcile(view, full=full)
        except BaseException:
            # The changes taken from the view are lost with this pass: trust nothing next time.
            self.applier.forget()
            self._ports = None
            raise

    def _reconcile(self, view: ClusterView, *, full: bool) -> HostPlan:
        if self.tunnel is not None:
            self.tunnel.ensure_running()  # supervision: a dead tunnel is started again
        self.janitor.release_destroyed(view, self.docker.take_destroyed())
        # The ports as the kernel has them: read at a full pass and after a pass that changed
        # them, else as they were (listing links is the costliest read of a pass).
        if self._ports is None:
            self._ports = self.dataplane.ports()
        existing = self._ports
        containers, docker_ok = self._containers(view.local_refs())
        with view.lock:
            changes = view.take_remote_changes()
            if changes.reset:
                self.applier.forget()
            revision = view.revision
            rerouted: set[str] = set()
            # The prober hands out one set until a link goes up or down: no walk over the peers per pass.
            own_up = self.prober.up_peers() if self.prober is not None else frozenset()
            links_moved = own_up is not self._own_up and own_up != self._own_up
            routing = changes.links or changes.hosts or changes.reset or not self._routed or links_moved
            self._own_up = own_up
            if routing:
                rerouted = self._route(view, self.prober.snapshot() if self.prober is not None else None)
            plan = plan_host(
                view, self.me, containers, existing, mtu=self.mtu,
                dns_domain=self.config.dns_domain if self.config.dns else None, with_remote=False,
                host_overlap=self.host_guard,
            )
            remote_full: dict[int, list[RemoteEntry]] = {}
            remote_changes: dict[int, dict[str, RemoteEntry | None]] = {}
            route = self.router.entry if self.router.relaying or rerouted else None
            for vni in plan.vnis:
                table = view.remote(vni)
                if not self.applier.knows_remote(vni):
                    remote_full[vni] = list(table.values()) if route is None else [route(e) for e in table.values()]
                    continue
                delta: dict[str, RemoteEntry | None] = {}
                if rerouted:  # every entry of a peer whose route changed
                    delta = {ip: e for ip, e in table.items() if e.underlay in rerouted}
                for ip in changes.ips.get(vni, ()):
                    delta[ip] = table.get(ip)
                if delta:
                    remote_changes[vni] = delta if route is None else {ip: e and route(e) for ip, e in delta.items()}
            if routing or full:
                self._transit_wanted = self._transit(view, plan.vnis)
            elif changes.ips and self.router.linked and not self.router.meshed:
                # Endpoints came or went while some hosts cannot reach each other: the networks
                # they touched may need relaying now (their first endpoint on a second host).
                touched = set(changes.ips)
                kept = {key: fdb for key, fdb in self._transit_wanted.items() if key[0] not in touched}
                self._transit_wanted = kept | self._transit(view, plan.vnis, only=touched)
            invalid = view.invalid
            problems = invalid + plan.problems + view.duplicates(plan.vnis)
            owners = view.vni_owner()
            own = view.own_items()

        # An invalid value written over a working attachment must not detach the container:
        # its ports and records stay frozen as they are until the value is fixed or deleted.
        mine = keys.attachment_key(self.me, "")
        frozen_refs = {inv.key[len(mine):] for inv in invalid if inv.key.startswith(mine)} | set(plan.refused)
        frozen: set[str] = set(plan.deferred)  # not planned this pass: leave them as they are
        if docker_ok:
            for ref in frozen_refs:
                info = self.docker.container(ref) if ref != EXPOSE_REF else None
                frozen.add(info.id if info else ref)

        if self.janitor.fix_desired(plan) or plan.deferred:
            self.wake()  # the writes come back through the watch (or the lookups are due): plan again
        self.janitor.release_unclaimed(view, revision, frozen_refs)

        applied = self.applier.apply(
            plan, existing, owners, docker_ok=docker_ok, frozen=frozen,
            remote_full=remote_full, remote_changes=remote_changes,
        )
        # Transit devices: when wanted, while one waits for removal, and at a full pass of a host
        # that probes (which may relay; it then also finds devices a previous run left behind).
        if self._transit_wanted or self.applier.has_transit or (full and self.prober is not None):
            applied.wrote = self.applier.apply_transit(self._transit_wanted) or applied.wrote
            if self.applier.transit_pending:
                self._wake_later(5.0)
        if self.prober is not None:
            self.publisher.links(self.prober.snapshot())
        if applied.ports_changed or applied.failed:
            self._ports = None
        if docker_ok:
            endpoints = {k: v for k, v in plan.endpoints.items() if v.container not in applied.failed}
            self.publisher.endpoints(own, endpoints, frozen, revision=revision)
            self.publisher.names(own, {c: r for c, r in plan.dns.items() if c not in applied.failed}, frozen, revision=revision)
        self.janitor.collect_dead_hosts(view)
        problems += applied.problems
        # Someone may be waiting for this host to apply a change it programmed (the CLI's first-ping
        # barrier): acknowledge those at once; a pass that changed nothing here can wait.
        urgent = applied.wrote or any(remote_changes.values())
        vnis = plan.vnis | self._transit_vnis()  # a relay too is waited for by `pyweave run`
        with view.lock:
            waited = any(w.revision > self.publisher.written_revision and (not w.vnis or vnis.intersection(w.vnis))
                         for w in view.waits.values())
        if not self.publisher.progress(revision, problems, vnis=vnis, urgent=urgent, waited=waited):
            self._wake_later(self.publisher.next_progress_in())
        self._count(view, plan, problems)
        return plan

    # -- routing (docs/routing.md) ---------------------------------------------------------------
    @property
    def _routed(self) -> bool:
        return bool(self.router.routes) or not self.view.hosts

    def _route(self, view: ClusterView, probed) -> set[str]:
        """Routes again from the links and hosts (under the view's lock); the underlay addresses
        whose FDB destination changed. The prober follows the alive hosts."""
        hosts = {name: rec.address for name, rec in view.hosts.items()}
        if self.tunnel is not None:
            self._update_tunnel(view)
        if self.prober is not None:
            self.prober.set_peers({n: rec.address for n, rec in view.hosts.items() if n != self.me and rec.state == "alive"})
        return self.router.update(view.links, hosts, own=probed)

    def _update_tunnel(self, view: ClusterView) -> None:
        assert self.tunnel is not None
        with view.lock:
            peers = {rec.address: (name, rec.public_key) for name, rec in view.hosts.items()
                     if name != self.me and rec.public_key}
        self.tunnel.update(peers)

    def _transit_vnis(self) -> set[int]:
        return {vni for vni, _budget in self._transit_wanted}

    def _transit(
        self, view: ClusterView, mine: set[int], *, only: set[int] | None = None
    ) -> dict[tuple[int, int], dict[str, str]]:
        """What this host relays: per (vni, budget), the transit FDB (of the networks `only`, or
        all). Nothing when it has no usable link or when every host reaches every other directly."""
        if not self.router.linked or self.router.meshed:
            return {}
        host_of = {rec.address: name for name, rec in view.hosts.items()}
        hosts_by_vni: dict[int, set[str]] = {}
        for vni in view.remote_vnis() if only is None else only:
            hosts_by_vni[vni] = {host_of[e.underlay] for e in view.remote(vni).values() if e.underlay in host_of}
        for vni in mine if only is None else mine & only:
            hosts_by_vni.setdefault(vni, set()).add(self.me)
        out = {}
        for vni, budget in self.router.budgets(hosts_by_vni).items():
            entries = list(view.remote(vni).values())
            for k in range(1, budget + 1):
                fdb = self.router.transit(vni, k, entries, host_of)
                if fdb:
                    out[(vni, k)] = fdb
        return out

    def _wake_later(self, delay: float) -> None:
        """A pass after `delay` (a progress record held back by the rate limit must still go out);
        one such timer at a time."""
        if self._timer is not None and self._timer.is_alive():
            return
        self._timer = threading.Timer(delay, self.wake)
        self._timer.daemon = True
        self._timer.start()

    def _containers(self, refs: list[str]) -> tuple[dict[str, ContainerInfo | None], bool]:
        """What Docker says of the containers in this host's attachments; (.., False) if it is down."""
        refs = [ref for ref in refs if ref != EXPOSE_REF]
        try:
            return {ref: self.docker.container(ref) for ref in refs}, True
        except ContainerError as err:
            log.warning("docker unavailable, keeping local ports as they are: %s", err)
            return {}, False

    def _count(self, view: ClusterView, plan: HostPlan, problems: list[Invalid]) -> None:
        s = self.stats
        s.reconciles += 1
        s.local_endpoints = sum(len(p.cidrs) for p in plan.ports.values())
        s.remote_endpoints = self.applier.remote_count
        s.invalid_records = len(problems)
        s.relayed_networks = len(self._transit_vnis())
        now = time.monotonic()
        if now - self._last_count < 1.0:
            return  # counting hosts walks them all: once a second is enough for metrics
        self._last_count = now
        by_state: dict[str, int] = {}
        with view.lock:
            for name in set(view.members) | set(view.hosts):
                rec = view.hosts.get(name)
                st = "dead" if rec is None else rec.state
                by_state[st] = by_state.get(st, 0) + 1
            s.peers_alive = sum(1 for h, r in view.hosts.items() if r.state == "alive" and h != self.me)
        s.hosts_by_state = by_state
        s.routes = {
            peer: ("direct" if r.direct else "via" if r.reachable else "unreachable", r.next_hop or "", r.hops)
            for peer, r in self.router.routes.items()
        }
        if self.prober is not None:
            s.links_up = {peer: v.up for peer, v in self.prober.snapshot().items()}


    def shutdown(self, *, deadline: float = 1.5) -> None:
        """Graceful stop: keep the kernel as it is, and unbind this host's records from the lease
        so peers keep talking to its containers until it is launched again or reset. Bounded in
        time: with the store unreachable, the records simply expire with the lease."""

        def unbind() -> None:
            try:
                self.lease_keeper.unbind(list((k, v) for k, (v, _lease) in self.view.own_items().items()))
            except StoreError as err:
                log.warning("could not mark host stopped (store unreachable): %s", err)

        worker = threading.Thread(target=unbind, name="unbind", daemon=True)
        worker.start()
        worker.join(deadline)
        if worker.is_alive():
            log.warning("store too slow to mark host stopped; its records expire with the lease")
        if self.dns_service is not None:
            self.dns_service.stop()
        self.dataplane.close()
        log.info("agent stopped host=%s", self.me)
