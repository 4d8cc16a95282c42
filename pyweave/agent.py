"""The per-host agent: registers the host, mirrors etcd, and reconciles the kernel toward it.

Threads, each a thin loop with a stop event: the store watcher (list, then watch), the Docker event
follower, the lease keep-alive. They only wake the reconcile loop, which owns all decisions:

    snapshot + Docker  --plan_host-->  HostPlan  --apply-->  kernel (dataplane) + observed records

Reconcile runs on every change and at least every `resync_interval` seconds; running it twice
changes nothing. It never flushes working state because the store is unreachable or Docker is
unavailable: it then keeps what the kernel has and retries. Observed records (host, endpoints,
progress) are bound to the host's lease, so a dead host disappears from every peer by itself.
A graceful stop (SIGTERM, `pyweave stop`) unbinds them instead, so peers keep talking to the
containers of a stopped agent; `pyweave reset` removes them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from dataplane.linux import DataplaneError, LinuxDataplane, Underlay, VXLAN_OVERHEAD, find_underlay
from pyweave.dns import SERVICE_ADDRESS, DnsIndex, DnsService, WeaveResolver, upstream_servers
from pyweave.interfaces import ContainerRuntime, Dataplane
from pyweave import __version__
from pyweave.backoff import Backoff
from pyweave.containers import ContainerError, ContainerInfo, Containers
from pyweave.host import HostConfig, HostState
from pyweave.plan import EXPOSE_REF, HostPlan, endpoint_value, expose_mac, plan_host
from pyweave.watcher import StoreWatcher
from store.cluster import (
    ATTACHMENTS,
    DNS,
    ENDPOINTS,
    TOMBSTONES,
    ROOT,
    Cluster,
    ClusterError,
    ClusterState,
    HostRecord,
    Invalid,
    encode,
    host_key,
    ip_claim_key,
    member_key,
    progress_key,
)
from store.etcd import EtcdStore, StoreError

log = logging.getLogger("pyweave.agent")


@dataclass
class AgentStats:
    """What the agent counts for its metrics (pyweave.metrics reads it at scrape time)."""

    hosts_by_state: dict[str, int] = field(default_factory=dict)
    peers_alive: int = 0
    local_endpoints: int = 0
    remote_endpoints: int = 0
    reconcile_seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    invalid_records: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Agent:
    def __init__(
        self,
        *,
        config: HostConfig,
        state: HostState,
        raw: EtcdStore,
        underlay: Underlay | None = None,
        dataplane: Dataplane | None = None,
        containers: ContainerRuntime | None = None,
    ) -> None:
        """The kernel and Docker sides can be replaced (the control-plane benchmark runs hundreds
        of agents in one process with a dataplane that records instead of programming)."""
        self.config = config
        self.state = state
        self.raw = raw
        self.cluster = Cluster(raw)
        self.me = config.name
        self.underlay = underlay or find_underlay(config.address)
        self.mtu = config.mtu or (self.underlay.mtu - VXLAN_OVERHEAD)
        self.service_address = SERVICE_ADDRESS if config.dns else None
        self.dataplane = dataplane or LinuxDataplane(
            underlay=self.underlay, vtep_mac=config.vtep_mac, mtu=self.mtu, service_address=self.service_address
        )
        self.dns_index = DnsIndex()
        self.dns_service: DnsService | None = None
        self._last_dead_check = 0.0
        self.containers = containers or Containers()
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._full = threading.Event()
        self.lease = 0
        self.watcher = StoreWatcher(raw, ROOT, self.wake)
        self._docker_cache: dict[str, ContainerInfo | None] = {}
        self._docker_lock = threading.Lock()
        self._last_progress: bytes = b""
        self._dead_containers: list[str] = []
        self.reconciles = 0
        self.stats = AgentStats()
        self._parse_cache: dict = {}
        self._applied: dict = {}  # what was last applied to the kernel, by object

    # -- wiring --------------------------------------------------------------------------------
    def wake(self, *, full: bool = False) -> None:
        if full:
            self._full.set()
        self._wake.set()

    def host_record(self, state: str = "alive") -> HostRecord:
        return HostRecord(
            name=self.me,
            address=self.underlay.address,
            vtep_mac=self.config.vtep_mac,
            mtu=self.mtu,
            state=state,
            version=__version__,
        )

    def register(self) -> None:
        """Bind this host to a lease: reuse the persisted one if it is still alive (an agent
        restart then changes nothing in the store), else grant a new one."""
        backoff = Backoff(initial=0.2, cap=2.0)
        while not self.stop_event.is_set():
            try:
                lease = self.state.read_lease()
                if not lease or self.raw.lease_ttl(lease) <= 0:
                    lease = self.raw.grant_lease(self.config.lease_ttl)
                    self.state.write_lease(lease)
                self.lease = lease
                self.raw.put(host_key(self.me), encode(self.host_record()), lease=lease)
                self.raw.put(member_key(self.me), encode(self.host_record("member")))
                log.info("registered host=%s address=%s lease=%x", self.me, self.underlay.address, lease)
                return
            except StoreError as err:
                log.warning("cannot register host=%s: %s", self.me, err)
                self.stop_event.wait(backoff.next())

    def _keepalive_loop(self) -> None:
        backoff = Backoff(initial=0.5, cap=2.0)
        interval = max(1.0, self.config.lease_ttl / 3)
        while not self.stop_event.wait(interval):
            try:
                ttl = self.raw.keepalive(self.lease)
                if ttl <= 0:
                    log.warning("lease %x expired; registering again", self.lease)
                    self.state.write_lease(0)
                    self.register()
                    self.wake(full=True)
                backoff.reset()
            except StoreError as err:
                log.warning("lease keep-alive failed: %s", err)
                self.stop_event.wait(backoff.next())

    def _on_docker_event(self, action: str, cid: str) -> None:
        with self._docker_lock:
            if action == "reconnected":
                self._docker_cache.clear()
            else:
                self._docker_cache = {k: v for k, v in self._docker_cache.items() if v is None or v.id != cid}
                self._docker_cache.pop(cid, None)
        if action == "destroy":
            self._dead_containers.append(cid)
        self.wake()

    def _container(self, ref: str) -> ContainerInfo | None:
        with self._docker_lock:
            if ref in self._docker_cache:
                return self._docker_cache[ref]
        info = self.containers.inspect(ref)
        with self._docker_lock:
            self._docker_cache[ref] = info
        return info

    # -- the loop ------------------------------------------------------------------------------
    def start_dns(self) -> None:
        from dataplane.linux import ensure_local_address

        try:
            ensure_local_address(SERVICE_ADDRESS)
            resolver = WeaveResolver(lambda: self.dns_index, domain=self.config.dns_domain, upstreams=upstream_servers())
            self.dns_service = DnsService(resolver, address=SERVICE_ADDRESS)
            self.dns_service.start()
            log.info("dns serving domain=%s address=%s upstreams=%s", self.config.dns_domain, SERVICE_ADDRESS, resolver.upstreams)
        except OSError as err:
            log.error("dns not started: %s", err)

    def run(self) -> None:
        self.register()
        if self.config.dns and isinstance(self.dataplane, LinuxDataplane):
            self.start_dns()
        if self.config.metrics_port and isinstance(self.dataplane, LinuxDataplane):
            from pyweave.metrics import serve

            serve(self, address=self.underlay.address, port=self.config.metrics_port)
        threads = [
            threading.Thread(target=self.watcher.run, args=(self.stop_event,), name="watch", daemon=True),
            threading.Thread(
                target=self.containers.follow_events,
                args=(self._on_docker_event, self.stop_event),
                name="docker-events",
                daemon=True,
            ),
            threading.Thread(target=self._keepalive_loop, name="keepalive", daemon=True),
        ]
        for t in threads:
            t.start()
        self.watcher.wait_synced(timeout=30)
        if self.state.dir.is_dir():
            self.state.dir.joinpath("ready").write_text(str(os.getpid()))
        backoff = Backoff(initial=0.1, cap=1.0)
        while not self.stop_event.is_set():
            self._wake.wait(timeout=self.config.resync_interval)
            if self.stop_event.is_set():
                break
            full = self._full.is_set() or not self._wake.is_set()
            self._wake.clear()
            self._full.clear()
            if full:
                with self._docker_lock:
                    self._docker_cache.clear()
            started = time.monotonic()
            try:
                self.reconcile(full=full)
                backoff.reset()
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

    def reconcile(self, *, full: bool = True) -> HostPlan | None:
        """One pass. `full` re-reads and re-checks every kernel object (the periodic resync,
        which repairs what someone deleted by hand); otherwise objects whose desired state is
        unchanged since they were last applied are trusted, so an event costs work for what it
        changed, not for the size of the cluster."""
        items, revision = self.watcher.snapshot()
        if revision == 0:
            return None
        if full:
            self._applied.clear()
        state = ClusterState.from_items(((k, v) for k, (v, _lease) in items.items()), cache=self._parse_cache)
        self._release_destroyed(state)
        existing = self.dataplane.ports()
        refs = [ref for (host, ref) in state.attachments if host == self.me and ref != EXPOSE_REF]
        docker_ok = True
        containers: dict[str, ContainerInfo | None] = {}
        try:
            for ref in refs:
                containers[ref] = self._container(ref)
        except ContainerError as err:
            log.warning("docker unavailable, keeping local ports as they are: %s", err)
            docker_ok = False
        plan = plan_host(
            state, self.me, containers, existing, mtu=self.mtu, dns_domain=self.config.dns_domain if self.config.dns else None
        )
        self.dns_index = DnsIndex.from_records(r for recs in state.dns.values() for r in recs.records)
        problems = list(state.invalid) + list(plan.problems)

        # An invalid value written over a working attachment must not detach the container:
        # its ports and records stay frozen as they are until the value is fixed or deleted.
        frozen_refs = {
            inv.key.rsplit("/", 1)[1] for inv in state.invalid if inv.key.startswith(f"{ATTACHMENTS}{self.me}/")
        }
        frozen: set[str] = set()
        if docker_ok:
            for ref in frozen_refs:
                info = self._container(ref) if ref != EXPOSE_REF else None
                frozen.add(info.id if info else ref)

        if plan.missing_networks or plan.missing_claims or plan.gone_containers:
            self._fix_desired(plan)
            self.wake()  # the writes come back through the watch; plan again then
        self._release_unclaimed(state, revision, frozen_refs)

        owners = state.vni_owner()
        for vni in sorted(plan.vnis):
            net = owners.get(vni)
            want = (expose_mac(self.me, vni), plan.exposes.get(vni, ()), net.subnet if net else None)
            if self._applied.get(("net", vni)) != want:
                self.dataplane.ensure_network(vni)
                self.dataplane.ensure_exposed(vni, mac=want[0], cidrs=want[1], subnet=want[2])
                self._applied[("net", vni)] = want
        failed: set[str] = set()
        if docker_ok:
            for key, port in plan.ports.items():
                if key in existing and self._applied.get(("port", key)) == port:
                    continue
                try:
                    self.dataplane.ensure_port(port)
                    self._applied[("port", key)] = port
                except DataplaneError as err:
                    problems.append(Invalid(f"{ROOT}attachments/{self.me}/{port.container_id}", str(err)))
                    failed.add(port.container_id)
            for key, port_state in existing.items():
                if key not in plan.ports and port_state.container_id not in frozen:
                    self.dataplane.remove_port(port_state)
                    self._applied.pop(("port", key), None)
        for vni in sorted(plan.vnis):
            remote = frozenset(plan.remote.get(vni, set()))
            if self._applied.get(("remote", vni)) != remote:
                self.dataplane.sync_remote(vni, remote)
                self._applied[("remote", vni)] = remote
        if docker_ok:
            kept_vnis = plan.vnis | {vni for (cid, vni) in existing if (cid, vni) in plan.ports or cid in frozen}
            for vni in self.dataplane.networks() - kept_vnis:
                self.dataplane.remove_network(vni)
                for kind in ("net", "remote"):
                    self._applied.pop((kind, vni), None)
            self._publish(items, {k: v for k, v in plan.endpoints.items() if v.container not in failed}, frozen)
            self._publish_dns(items, {cid: recs for cid, recs in plan.dns.items() if cid not in failed}, frozen)
        self._collect_dead_hosts(state)
        self._report(revision, problems)
        self._count(state, plan, problems)
        self.reconciles += 1
        return plan

    def _count(self, state: ClusterState, plan: HostPlan, problems: list[Invalid]) -> None:
        by_state: dict[str, int] = {}
        for name in set(state.members) | set(state.hosts):
            rec = state.hosts.get(name)
            st = "dead" if rec is None else rec.state
            by_state[st] = by_state.get(st, 0) + 1
        self.stats.hosts_by_state = by_state
        self.stats.peers_alive = sum(1 for h, r in state.hosts.items() if r.state == "alive" and h != self.me)
        self.stats.local_endpoints = sum(len(p.cidrs) for p in plan.ports.values())
        self.stats.remote_endpoints = sum(len(v) for v in plan.remote.values())
        self.stats.invalid_records = len(state.invalid)

    def _fix_desired(self, plan: HostPlan) -> None:
        for subnet in sorted(plan.missing_networks):
            self.cluster.ensure_network(ipaddress.IPv4Network(subnet))
        for cidr, host, ref in plan.missing_claims:
            iface = ipaddress.IPv4Interface(cidr)
            self.cluster.claim(iface, host=host, container=ref)
        for ref in plan.gone_containers:
            log.info("container %s was removed; releasing its addresses", ref[:12])
            self.cluster.detach(self.me, ref, None)

    def _release_destroyed(self, state: ClusterState) -> None:
        while self._dead_containers:
            cid = self._dead_containers.pop()
            if (self.me, cid) in state.attachments:
                log.info("container %s destroyed; releasing its addresses", cid[:12])
                self.cluster.detach(self.me, cid, None)

    def _release_unclaimed(self, state: ClusterState, revision: int, frozen_refs: set[str]) -> None:
        """Free this host's address claims that no attachment lists any more (an attachment
        deleted or shortened with etcdctl). Claims newer than the snapshot are left alone: their
        attachment may simply not have reached us yet."""
        wanted = set()
        for (host, _ref), att in state.attachments.items():
            if host == self.me:
                for cidr in att.cidrs:
                    iface = ipaddress.IPv4Interface(cidr)
                    wanted.add((str(iface.network), str(iface.ip)))
        for (subnet, ip), claim in state.claims.items():
            if claim.host != self.me or claim.container in frozen_refs or (subnet, ip) in wanted:
                continue
            key = ip_claim_key(subnet, ip)
            kv = self.raw.get(key)
            if kv is not None and kv.mod_revision <= revision:
                log.info("releasing address %s of %s: no attachment lists it", ip, claim.container[:12])
                self.raw.delete_if(key, mod_revision=kv.mod_revision)

    def _publish(self, items: dict[str, tuple[bytes, int]], endpoints: dict, frozen: set[str] = frozenset()) -> None:
        mine = f"{ENDPOINTS}{self.me}/"
        for key, rec in endpoints.items():
            value = endpoint_value(rec)
            have = items.get(key)
            if have is None or have[0] != value or have[1] != self.lease:
                log.info("publishing endpoint %s", key[len(ENDPOINTS):])
                self.raw.put(key, value, lease=self.lease)
        for key in items:
            if key.startswith(mine) and key not in endpoints and key[len(mine):].split("/")[0] not in frozen:
                log.info("withdrawing endpoint %s", key[len(ENDPOINTS):])
                self.raw.delete(key)

    def _publish_dns(self, items: dict[str, tuple[bytes, int]], records: dict, frozen: set[str] = frozenset()) -> None:
        mine = f"{DNS}{self.me}/"
        want = {
            f"{mine}{cid}": json.dumps({"records": [list(r) for r in recs]}, separators=(",", ":")).encode()
            for cid, recs in records.items()
        }
        for key, value in want.items():
            have = items.get(key)
            if have is None or have[0] != value or have[1] != self.lease:
                self.raw.put(key, value, lease=self.lease)
        for key in items:
            if key.startswith(mine) and key not in want and key[len(mine):] not in frozen:
                self.raw.delete(key)

    def _collect_dead_hosts(self, state: ClusterState) -> None:
        """Members whose lease is gone get a tombstone; after the grace period their addresses
        are taken over. A member that comes back loses its tombstone."""
        now = time.time()
        if now - self._last_dead_check < min(2.0, self.config.resync_interval):
            return
        self._last_dead_check = now
        grace = state.config.dead_host_grace if state.config else 600.0
        for host in state.tombstones:
            if host in state.hosts:
                self.raw.delete(TOMBSTONES + host)
        for host in state.members:
            if host in state.hosts or host == self.me:
                continue
            since = state.tombstones.get(host)
            if since is None:
                log.info("host %s is gone; its addresses are taken over after %.0fs", host, grace)
                self.raw.create(TOMBSTONES + host, json.dumps({"since": now}).encode())
            elif now - since >= grace:
                freed = self.cluster.take_over(host)
                if freed:
                    log.info("took over %d addresses from dead host %s", freed, host)

    def _report(self, revision: int, problems: list[Invalid]) -> None:
        body = json.dumps(
            {"revision": revision, "problems": [asdict(p) for p in problems]}, sort_keys=True
        ).encode()
        if body != self._last_progress:
            for p in problems:
                if p not in getattr(self, "_reported", set()):
                    log.warning("invalid record key=%s problem=%s", p.key, p.problem)
            self._reported = set(problems)
            self.raw.put(progress_key(self.me), body, lease=self.lease)
            self._last_progress = body

    def shutdown(self, *, deadline: float = 1.5) -> None:
        """Graceful stop: keep the kernel as it is, and unbind this host's records from the lease
        so peers keep talking to its containers until it is launched again or reset. Bounded in
        time: with the store unreachable, the records simply expire with the lease."""

        def unbind() -> None:
            try:
                items, _ = self.watcher.snapshot()
                self.raw.put(host_key(self.me), encode(self.host_record("stopped")))
                for key, (value, _lease) in items.items():
                    if key.startswith((f"{ENDPOINTS}{self.me}/", f"{DNS}{self.me}/")):
                        self.raw.put(key, value)
                self.raw.revoke_lease(self.lease)
                self.state.write_lease(0)
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


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\n", " ")
        line = f'ts={ts} level={record.levelname.lower()} logger={record.name} msg="{msg}"'
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


def main() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    logging.basicConfig(level=os.environ.get("PYWEAVE_LOG_LEVEL", "INFO"), handlers=[handler])
    state = HostState()
    config = state.load()
    if config is None:
        sys.exit("pyweave agent: this host was never launched; run `pyweave launch`")
    state.agent_pid_path.write_text(str(os.getpid()))
    raw = EtcdStore(config.store, timeout=2.0)
    agent = Agent(config=config, state=state, raw=raw)

    agent_pid = os.getpid()

    def on_signal(signum, _frame) -> None:
        if os.getpid() != agent_pid:
            # pyroute2's NetNS forks a helper that inherits this handler; it is told to stop with
            # SIGTERM and must simply go.
            os._exit(0)
        log.info("signal %d: stopping", signum)
        agent.stop_event.set()
        agent.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Test hooks: hold the store watch (SIGUSR1) and let it catch up (SIGUSR2), e.g. across a compaction.
    signal.signal(signal.SIGUSR1, lambda *_: agent.watcher.pause())
    signal.signal(signal.SIGUSR2, lambda *_: agent.watcher.resume())
    agent.run()


if __name__ == "__main__":
    main()
