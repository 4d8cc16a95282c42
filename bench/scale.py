"""Section 6: the control plane with hundreds of hosts, on one etcd.

Each simulated host is the real `pyweave.agent.Agent` (watch, reconcile, publish) with a recording
dataplane and a fake container runtime (`bench.simhost`), its own etcd client (or one shared per
process, measured once), several hosts per worker process (`bench.scale_worker`). One plain etcd
runs on 127.0.0.1 with a temporary data directory.

Per cluster size N: every host ends with `E` containers on one /16 network (N x E endpoints). All but
the burst are preloaded: the desired records (attachments, address claims), and what each agent
would publish for them (endpoint and DNS records, on its lease), computed by the agent's own
planning and publishing code, so the agents start with nothing to write. The agents register, start,
and converge (every agent's dataplane holds the other hosts' endpoints). Then the burst: attachments
and claims of `burst` new containers, spread over every host, written in transactions of 64 (as
many `pyweave run`s arriving at once would, minus their own reads). The owners plumb and publish
them, every other agent programs them. Converged = every agent's dataplane holds all N x E - E
remote entries; the figure is the time from the burst's first write.

Counted per agent from the burst to convergence: reconciles, CPU time of its reconcile thread in
`Agent.reconcile` (`time.thread_time`), watch events applied, etcd requests by kind. py-spy samples
one worker process during the burst (threads holding the GIL: where the CPU goes).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import plots, profiles
from bench.context import BenchContext
from bench.labsession import BenchError
from bench.machine import REPO
from bench.procs import CLOCK_TICKS, pid_stat, wait_until
from bench.report import SectionResult, Table
from bench.simhost import CapturingStore, FakeRuntime, RecordingDataplane, container_id
from bench.stats import fmt, median
from dataplane.api import Underlay
from pyweave.agent import Agent
from pyweave.host import HostConfig, HostState
from pyweave.plan import plan_host
from pyweave.watcher import RELIST_JITTER, StoreWatcher
from store.addresses import OverlayAddress, OverlaySubnet
from store.cluster import Cluster
from store.etcd import EtcdStore
from store.keys import ROOT, attachment_key, host_key, ip_claim_key, member_key
from store.records import attachment_value, claim_value, encode
from store.state import ClusterState

SUBNET = OverlaySubnet("10.64.0.0/16")
BOUND_TARGET = 1.5  # issue 11 item 7(d): the wall time of convergence within 1.5x the CPU bound
BOUND_WAIT = 3.0  # a burst is waited for while the wall time stays within 3x the CPU bound so far
# the watcher's safety-net re-list period, per host (a list and a new watch each time)
RELIST_INTERVAL_S = inspect.signature(StoreWatcher).parameters["relist_interval"].default
REQUESTS_TARGET = 3.0  # issue 11 item 4: etcd requests per new endpoint, cluster-wide, keep-alives excluded
CLI_REQUESTS = 1  # `pyweave run` claims the address and writes the attachment in one transaction
KEEPALIVE_METHODS = ("refresh", "get_lease_info")  # EtcdStore.keepalive's and lease_ttl's client calls
CORES = len(os.sched_getaffinity(0))
GROWTH_LIMIT = 1.25  # "does not grow": per-event CPU at the largest size within 25 % of the smallest
TXN_OPS = 128  # etcd's default --max-txn-ops
LEASE_TTL = 600  # long: hundreds of agents share two CPUs here, and start one after the other (kept alive only once started)
RESYNC_INTERVAL = 3600.0  # the periodic full resync is a per-host cost; 200 of them on 2 CPUs would drown the burst
# The simulated agents' etcd client gives a request up after this (then tries again: a request more);
# a real agent's gives up after 3 s (EtcdStore's default), which a call on 2 CPUs shared by hundreds of
# agents and etcd passes now and then. Calls slower than the real timeout are counted apart (SLOW_S).
CLIENT_TIMEOUT_S = 60.0
SLOW_S = inspect.signature(EtcdStore).parameters["timeout"].default
RESERVE_S = 20.0  # of the run's time budget, kept for the teardown and the report
MIN_START_S = 60.0  # a cluster size is not started with less of the budget left
PROFILE_KEYS = (
    ("Agent._reconcile (", "a reconcile pass"),
    ("plan_host (", "plan this host's own side"),
    ("Publisher.endpoints (", "publish this host's endpoint records"),
    ("ClusterView.apply (", "apply one watch event to the view"),
    ("parse_entry (", "parse and check one record"),
    ("Watcher._run (pyetcd", "the etcd client's watch thread (gRPC)"),
)


@dataclass
class SimHost:
    name: str
    address: str
    vtep_mac: str
    state_dir: Path
    lease: int = 0
    base: list[str] = field(default_factory=list)  # container ids preloaded
    burst: list[str] = field(default_factory=list)  # container ids of the burst


@dataclass
class Run:
    hosts: int
    client: str
    endpoints: int
    burst: int
    workers: int
    series: str = "main"  # "main": the cluster sizes; "clients": own against shared etcd client
    startup_s: float | None = None
    burst_write_s: float | None = None
    converge_s: float | None = None
    converge_p50_s: float | None = None
    converged_agents: int = 0
    agents: list[dict] = field(default_factory=list)
    worker_cpu_s: float = 0.0
    etcd_cpu_s: float = 0.0
    profile: profiles.Profile | None = None
    error: str | None = None
    wait_s: float = 0.0  # how long the burst was waited for (the time budget may shorten it)
    cpu_s: float = 0.0  # worker and etcd CPU from the burst until convergence (or the end of the wait)
    machine_cpu_s: float = 0.0  # every process's CPU over the same window (/proc/stat), others' included
    window_s: float = 0.0  # that window's wall time
    burst_txns: int = 0  # the bench's own write requests for the burst

    @property
    def cpu_bound_s(self) -> float:
        """The least wall time the simulation could have taken: the CPU it spent over the cores."""
        return self.cpu_s / CORES

    @property
    def bound_ratio(self) -> float:
        return self.converge_s / self.cpu_bound_s if self.converge_s is not None and self.cpu_bound_s else math.nan

    def requests(self) -> tuple[int, int]:
        """(etcd requests of every agent excluding keep-alives and periodic re-lists, keep-alives),
        with the attempts the etcd client made again inside a call."""
        calls = self.calls()
        keepalive = sum(v for k, v in calls.items() if k.startswith(("keepalive", "lease_ttl")))
        return sum(calls.values()) - keepalive - self.periodic_relist_requests() + self.retried_requests(), keepalive

    def retried(self) -> Counter:
        """Attempts made again inside the agents' etcd clients (`EtcdStore.retried`), by client method."""
        total: Counter = Counter()
        for a in self.agents:
            total.update(a.get("retried", {}))
        return total

    def slow(self) -> Counter:
        """Requests slower than SLOW_S (a real agent's client timeout), by method and key kind."""
        total: Counter = Counter()
        for a in self.agents:
            total.update(a.get("slow", {}))
        return total

    def slowest(self) -> float:
        return max((a.get("slowest", 0.0) for a in self.agents), default=0.0)

    def retried_requests(self) -> int:
        """Of those, all but the keep-alives' (left out of the figure like the keep-alives)."""
        return sum(v for k, v in self.retried().items() if k not in KEEPALIVE_METHODS)

    def periodic_relist_requests(self) -> int:
        """The watcher's safety-net re-list (`StoreWatcher.relist_interval`, per host, whatever
        happens): one list each, beside the running watch. A cost per host and per time, like the
        keep-alives; it falls in the window only when the window outlasts the interval."""
        return sum(a.get("periodic_lists", 0) for a in self.agents)

    @property
    def requests_per_endpoint(self) -> float:
        """Cluster-wide etcd requests per new endpoint: every agent's (keep-alives excluded) plus
        what `pyweave run` itself writes for it (one transaction), over the burst's endpoints."""
        return (self.requests()[0] + CLI_REQUESTS * self.burst) / self.burst if self.burst else math.nan

    def med(self, fn) -> float:
        vals = [fn(a) for a in self.agents]
        vals = [v for v in vals if v is not None and not math.isnan(v)]
        return median(vals)

    @property
    def cpu_per_reconcile_ms(self) -> float:
        return self.med(lambda a: 1000 * a["cpu"] / a["reconciles"] if a["reconciles"] else None)

    @property
    def cpu_per_event_ms(self) -> float:
        """CPU of the agent's loop thread per watch event applied, once every event has been
        reconciled (all agents converged); NaN otherwise: the watch thread applies events at once
        while the reconciles lag behind, so a partial window would understate the work."""
        if self.converge_s is None:
            return math.nan
        return self.med(lambda a: 1000 * self.agent_cpu(a) / a["events"] if a["events"] else None)

    @staticmethod
    def agent_cpu(a: dict) -> float:
        # /proc counts in clock ticks (10 ms): in a short window the summed thread_time is finer.
        return max(a["thread_cpu"], a["cpu"])

    @property
    def reconciles(self) -> float:
        return self.med(lambda a: a["reconciles"])

    @property
    def events(self) -> float:
        return self.med(lambda a: a["events"])

    def calls(self) -> Counter:
        total: Counter = Counter()
        for a in self.agents:
            total.update(a["calls"])
        return total


def machine_busy_s() -> float:
    """CPU seconds every process of the machine has spent so far (/proc/stat: all but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["GRPC_VERBOSITY"] = "ERROR"
    return env


class WorkerHandle:
    """A worker process and a thread that turns its stdout into a queue of events."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.events: queue.Queue = queue.Queue()
        self.pid = proc.pid
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue
        self.events.put({"event": "exited"})

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, *, timeout: float, skip: tuple[str, ...] = ("progress",)) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                got = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if got["event"] == event:
                return got
            if got["event"] == "exited":
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
                rc = self.proc.returncode
                how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
                try:
                    tail = self.log.read_text(errors="replace")[-800:].strip()
                except OSError:
                    tail = ""
                raise BenchError(f"a scale worker (pid {self.pid}) ended unexpectedly ({how}): {tail or 'no output'}")


class Simulation:
    """One cluster size: etcd, preload, workers, burst, figures. Always torn down by close()."""

    def __init__(self, ctx: BenchContext, hosts: int, *, client: str, profile: bool, wait: float, burst: int,
                 series: str) -> None:
        s = ctx.sizes
        self.ctx = ctx
        self.wait = wait
        # The client comparison is small: if its startup takes long, that is the finding, not a reason
        # to spend the run's budget waiting.
        self.startup_cap = 60.0 if series == "clients" else max(120.0, s.scale_converge_timeout)
        self.n = hosts
        self.client = client
        self.profile = profile
        self.per_host = s.scale_endpoints_per_host
        self.burst_size = min(burst, hosts * self.per_host)
        self.tmp = Path(tempfile.mkdtemp(prefix="pyweave-bench-scale-"))
        self.workers: list[WorkerHandle] = []
        self.etcd: subprocess.Popen | None = None
        self.raw: EtcdStore | None = None
        self.vni = 0
        nworkers = min(hosts, max(2, math.ceil(hosts / s.scale_agents_per_worker)))
        self.run = Run(hosts, client, hosts * self.per_host, self.burst_size, nworkers, series)
        self.hosts = [
            SimHost(f"s{hosts}h{i:03d}", f"198.18.{1 + i // 250}.{1 + i % 250}",
                    f"02:5e:00:00:{i // 256:02x}:{i % 256:02x}", self.tmp / "state" / f"s{hosts}h{i:03d}")
            for i in range(hosts)
        ]
        burst_per = Counter(k % hosts for k in range(self.burst_size))
        for i, h in enumerate(self.hosts):
            ids = [container_id(h.name, c) for c in range(self.per_host)]
            nb = burst_per[i]
            h.base, h.burst = ids[: self.per_host - nb], ids[self.per_host - nb:]
        self._address = {}
        k = 0
        for h in self.hosts:
            for cid in h.base + h.burst:
                self._address[cid] = str(SUBNET.network_address + 256 + k)
                k += 1

    def say(self, msg: str) -> None:
        self.ctx.say("scale", f"[{self.n} hosts, {self.client} client] {msg}")

    # -- etcd ----------------------------------------------------------------------------------
    def start_etcd(self) -> None:
        client, peer = _free_port(), _free_port()
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        # The flags of pyweave's embedded etcd (pyweave.processes.start_embedded_etcd), on loopback.
        with open(self.tmp / "etcd.log", "wb") as log:
            self.etcd = self.ctx.spawned.start(
                ["etcd", "--name", "bench", "--data-dir", str(self.tmp / "etcd"),
                 "--listen-client-urls", url, "--advertise-client-urls", url,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"bench={peer_url}", "--initial-cluster-state", "new",
                 "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
                 "--log-level", "warn"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        self.url = url
        self.raw = EtcdStore([url], timeout=10.0)

        def up() -> bool:
            try:
                self.raw.revision()
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False

        if not wait_until(up, timeout=30, interval=0.1):
            raise BenchError(f"etcd did not start: {(self.tmp / 'etcd.log').read_text()[-500:]}")

    def _commit(self, puts: list[tuple[str, bytes]], *, lease: int = 0) -> None:
        for i in range(0, len(puts), TXN_OPS):
            if not self.raw.commit(puts=puts[i:i + TXN_OPS], lease=lease):
                raise BenchError("a preload transaction was refused")

    def _desired(self, cids_by_host: list[tuple[SimHost, list[str]]]) -> list[tuple[str, bytes]]:
        puts = []
        for h, cids in cids_by_host:
            for cid in cids:
                ip = self._address[cid]
                # In the order `pyweave run` writes them (store.cluster: the claims, then the attachment).
                puts.append((ip_claim_key(SUBNET, ip), claim_value(h.name, cid)))
                puts.append((attachment_key(h.name, cid), attachment_value([OverlayAddress(f"{ip}/{SUBNET.prefixlen}")])))
        return puts

    def _agent(self, h: SimHost, raw) -> Agent:
        return Agent(
            config=HostConfig(name=h.name, vtep_mac=h.vtep_mac, store=[self.url], address=h.address,
                              lease_ttl=LEASE_TTL, resync_interval=RESYNC_INTERVAL),
            state=HostState(h.state_dir), raw=raw, underlay=Underlay("eth0", 2, h.address, 1500),
            dataplane=RecordingDataplane(), containers=FakeRuntime(),
        )

    def preload(self) -> None:
        """Desired records, then what each agent's own code would publish for them."""
        self.vni = Cluster(self.raw).ensure_network(SUBNET).vni
        for h in self.hosts:
            h.state_dir.mkdir(parents=True)
            h.lease = self.raw.grant_lease(LEASE_TTL)
            HostState(h.state_dir).write_lease(h.lease)
        self._commit(self._desired([(h, h.base) for h in self.hosts]))
        kvs, _ = self.raw.list(ROOT)
        items = {kv.key: kv.value for kv in kvs}
        shims = {}
        for h in self.hosts:
            capture = CapturingStore()
            agent = self._agent(h, capture)
            agent.lease = h.lease
            shims[h.name] = (agent, capture)
            items[host_key(h.name)] = encode(agent.host_record())
            items[member_key(h.name)] = encode(agent.host_record("member"))
        state = ClusterState.from_items(items.items())
        runtime = FakeRuntime()
        takes_dns = "dns_domain" in inspect.signature(plan_host).parameters
        for h in self.hosts:
            agent, capture = shims[h.name]
            containers = {ref: runtime.inspect(ref) for (host, ref) in state.attachments if host == h.name}
            kwargs = {"mtu": agent.mtu}
            if takes_dns:  # as Agent.reconcile calls it
                kwargs["dns_domain"] = agent.config.dns_domain if getattr(agent.config, "dns", False) else None
            plan = plan_host(state, h.name, containers, {}, **kwargs)
            agent.publisher.endpoints({}, plan.endpoints, set())
            agent.publisher.names({}, plan.dns, set())
            by_lease: dict[int, list] = {}
            for key, value, lease in capture.puts:
                by_lease.setdefault(lease, []).append((key, value))
            for lease, puts in by_lease.items():
                self._commit(puts, lease=lease)
        published = sum(len(c.puts) for _a, c in shims.values())
        self.say(f"preloaded {sum(len(h.base) for h in self.hosts)} containers ({published} published records)")

    # -- workers -------------------------------------------------------------------------------
    def start_workers(self) -> None:
        groups = [self.hosts[i::self.run.workers] for i in range(self.run.workers)]
        env = worker_env()
        for i, group in enumerate(groups):
            cfg = {
                "store": self.url, "client": self.client, "vni": self.vni,
                "lease_ttl": LEASE_TTL, "resync_interval": RESYNC_INTERVAL, "relist_interval": RELIST_INTERVAL_S,
                "client_timeout": CLIENT_TIMEOUT_S, "slow_s": SLOW_S,
                "hosts": [{"name": h.name, "address": h.address, "vtep_mac": h.vtep_mac, "state_dir": str(h.state_dir)}
                          for h in group],
            }
            path = self.tmp / f"worker{i}.json"
            path.write_text(json.dumps(cfg))
            log_path = self.tmp / f"worker{i}.log"
            with open(log_path, "w") as log:
                proc = self.ctx.spawned.start(
                    [sys.executable, "-m", "bench.scale_worker", str(path)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=env,
                )
            self.workers.append(WorkerHandle(proc, log_path))
        for w in self.workers:
            if w.expect("registered", timeout=120) is None:
                raise BenchError("a scale worker did not register its agents within 120 s")

    def converge(self, *, timeout: float, what: str, floor: float | None = None) -> bool:
        """Wait until every worker says all its agents reached the armed target. With `floor`:
        wait at least that long, and beyond it for as long as the wall time stays within
        `BOUND_WAIT` x the CPU bound so far (the simulation's CPU over the cores): agents that keep
        the CPUs busy are waited for, agents that went idle without converging are not; `timeout`
        caps it all."""
        started = time.monotonic()
        deadline = started + timeout
        cpu0 = sum(self.cpu_seconds())
        last_say = started
        pending = list(self.workers)
        while pending and time.monotonic() < deadline:
            for w in list(pending):
                if w.expect("converged", timeout=0.2) is not None:
                    pending.remove(w)
            elapsed = time.monotonic() - started
            bound = (sum(self.cpu_seconds()) - cpu0) / CORES
            if pending and floor is not None and elapsed > max(floor, BOUND_WAIT * bound):
                self.say(f"{what}: {elapsed:.0f} s is more than {BOUND_WAIT:g}x the CPU bound so far ({bound:.1f} s): "
                         "the agents are not busy; giving up")
                break
            if pending and time.monotonic() - last_say > 15:
                self.say(f"{what}: {len(self.workers) - len(pending)}/{len(self.workers)} workers converged so far "
                         f"after {elapsed:.0f} s (CPU bound so far {bound:.1f} s)")
                last_say = time.monotonic()
        return not pending

    def report(self) -> list[dict]:
        agents = []
        for w in self.workers:
            w.send(cmd="report")
        for w in self.workers:
            got = w.expect("report", timeout=60)
            if got is None:
                raise BenchError("a scale worker did not report")
            agents += got["agents"]
        return agents

    def cpu_seconds(self) -> tuple[float, float]:
        def cpu(pid: int) -> float:
            got = pid_stat(pid)
            return got[0] / CLOCK_TICKS if got else 0.0

        return sum(cpu(w.pid) for w in self.workers), cpu(self.etcd.pid)

    # -- the measurement -----------------------------------------------------------------------
    def execute(self) -> Run:
        s = self.ctx.sizes
        self.start_etcd()
        self.preload()
        self.start_workers()
        base_total = sum(len(h.base) for h in self.hosts)
        own = {len(h.base) for h in self.hosts}
        if len(own) != 1:
            raise BenchError("the burst must spread evenly over the hosts (choose a burst that N divides)")
        t0 = time.monotonic()
        for w in self.workers:
            w.send(cmd="start")
        self._arm(base_total - own.pop())  # a host's own endpoints are not remote entries
        startup_timeout = min(self.startup_cap, self.ctx.remaining() - RESERVE_S)
        if not self.converge(timeout=startup_timeout, what="startup", floor=min(60.0, startup_timeout)):
            raise BenchError(f"the agents did not converge on the preloaded state within {startup_timeout:.0f} s"
                             + self._log_excerpt())
        self.run.startup_s = time.monotonic() - t0
        self.say(f"{self.n} agents started and converged on {base_total} preloaded endpoints in {self.run.startup_s:.1f} s")
        time.sleep(1.0)
        final = self.n * self.per_host - self.per_host
        self._arm(final)
        cpu0 = self.cpu_seconds()
        busy0 = machine_busy_s()
        spy_out = self.tmp / "profile.txt"
        burst = [(h, h.burst) for h in self.hosts]
        puts = []
        # Interleave the hosts, so that the burst reaches every host from its first transaction on.
        for k in range(max(len(b) for _h, b in burst)):
            for h, b in burst:
                if k < len(b):
                    puts += self._desired([(h, [b[k]])])
        with profiles.PySpyRecording(self.ctx.spawned, self.workers[0].pid, spy_out, rate=50, gil=True) if self.profile \
                else _Nothing() as spy:
            t_burst = time.time()
            t0 = time.monotonic()
            self._commit(puts)
            self.run.burst_txns = math.ceil(len(puts) / TXN_OPS)
            self.run.burst_write_s = time.time() - t_burst
            self.say(f"burst of {self.burst_size} containers written in {self.run.burst_write_s:.2f} s; waiting for every agent")
            cap = max(5.0, min(s.scale_converge_timeout, self.ctx.remaining() - RESERVE_S))
            if self.converge(timeout=cap, what="burst", floor=min(self.wait, cap)) is False:
                self.say(f"not every agent converged within {time.monotonic() - t0:.0f} s; counting what was done")
            self.run.wait_s = time.monotonic() - t0
            cpu1 = self.cpu_seconds()
            self.run.machine_cpu_s = machine_busy_s() - busy0
            self.run.window_s = self.run.wait_s
        self.run.profile = getattr(spy, "profile", None)
        self.run.worker_cpu_s, self.run.etcd_cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        self.run.cpu_s = self.run.worker_cpu_s + self.run.etcd_cpu_s
        self.run.agents = self.report()
        reached = [a["reached_at"] for a in self.run.agents if a["reached_at"] is not None]
        self.run.converged_agents = len(reached)
        if len(reached) == self.n:
            self.run.converge_s = max(reached) - t_burst
            self.run.converge_p50_s = median([t - t_burst for t in reached])
        self.say(
            f"converged in {fmt(self.run.converge_s)} s ({self.run.converged_agents}/{self.n} agents); CPU bound "
            f"{self.run.cpu_bound_s:.1f} s (worker {self.run.worker_cpu_s:.1f} s + etcd {self.run.etcd_cpu_s:.1f} s over "
            f"{CORES} cores; the machine was busy {self.run.machine_cpu_s:.1f} s in all); CPU per reconcile "
            f"{self.run.cpu_per_reconcile_ms:.1f} ms, per event {self.run.cpu_per_event_ms:.2f} ms; "
            f"{self.run.requests_per_endpoint:.2f} etcd requests per new endpoint"
        )
        return self.run

    def _log_excerpt(self) -> str:
        """The last error the workers logged (an agent that crashes on every reconcile, say)."""
        for w in self.workers:
            try:
                lines = [line for line in w.log.read_text(errors="replace").splitlines() if line.strip()]
            except OSError:
                continue
            errors = [i for i, line in enumerate(lines) if "Error" in line or "ERROR" in line]
            if errors:
                last = errors[-1]
                # With a traceback: the frames that led to it (where, not only what).
                frames = [line.strip() for line in lines[max(0, last - 12):last] if line.lstrip().startswith("File ")]
                where = f" (at {' <- '.join(reversed(frames[-3:]))})" if frames else ""
                return f"; worker log: {lines[last].strip()[:300]}{where[:600]}"
        return ""

    def _arm(self, count: int) -> None:
        """Arm the target on every worker and wait for each to acknowledge (it marks its counters)."""
        for w in self.workers:
            w.send(cmd="target", count=count)
        for w in self.workers:
            if w.expect("armed", timeout=60) is None:
                raise BenchError("a scale worker did not acknowledge its target")

    def close(self) -> None:
        for w in self.workers:
            try:
                w.send(cmd="exit")
            except (OSError, ValueError):
                pass
        for w in self.workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.ctx.spawned.stop(w.proc)
        self.workers.clear()
        if self.raw is not None:
            self.raw.close()
        if self.etcd is not None:
            self.ctx.spawned.stop(self.etcd)
        shutil.rmtree(self.tmp, ignore_errors=True)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _simulate(ctx: BenchContext, hosts: int, *, client: str, profile: bool, wait: float, burst: int, series: str) -> Run:
    sim = Simulation(ctx, hosts, client=client, profile=profile, wait=wait, burst=burst, series=series)
    sim.say(f"{hosts * ctx.sizes.scale_endpoints_per_host} endpoints, burst of {sim.burst_size}, {sim.run.workers} worker processes")
    try:
        return sim.execute()
    except BenchError as err:
        sim.run.error = str(err)
        sim.say(f"failed: {err}")
        return sim.run
    finally:
        sim.close()


def run(ctx: BenchContext) -> SectionResult:
    s = ctx.sizes
    res = SectionResult("scale", "6. Control-plane scale")
    res.method = (
        f"Simulated hosts running the real agent (`pyweave.agent.Agent`) with a recording dataplane and a fake "
        f"container runtime (`bench/simhost.py`), up to {s.scale_agents_per_worker} per worker process "
        f"(`bench/scale_worker.py`), each with its own etcd client and watch, against one plain etcd on 127.0.0.1 "
        f"(pyweave's embedded-etcd flags). Every host ends with {s.scale_endpoints_per_host} containers on one /16 "
        f"network; all but a burst of {s.scale_burst} are preloaded (the desired records, and the endpoint and DNS "
        "records that the agents' own planning and publishing code produces for them), so the agents start with "
        "nothing to write. Once every agent has converged on the preloaded state, the burst's attachments and "
        "address claims are written in transactions of 64 containers spread over every host, as a burst of "
        "`pyweave run`s would write them (without their reads). Converged = every agent's dataplane holds all the "
        "other hosts' endpoints; the time counts from the burst's first write.\n\n"
        "Counted per agent from the burst until convergence (or the end of the wait): reconciles; CPU per reconcile "
        "(`time.thread_time` around `Agent.reconcile`, completed reconciles); agent CPU (the agent loop thread's "
        "utime+stime, which includes a reconcile still running when the wait ended); CPU per event (that, divided "
        "by the watch events the agent applied); etcd requests (a counting wrapper around each agent's `EtcdStore`). "
        f"Leases of {LEASE_TTL} s, a periodic resync of {RESYNC_INTERVAL:.0f} s, an etcd client timeout of "
        f"{CLIENT_TIMEOUT_S:g} s ({SLOW_S:g} s on a real host: the requests slower than that are counted in their own "
        "row), and agents log at WARNING, because hundreds of agents share 2 CPUs here where a real host has its own. For the same reason the "
        "simulation's wall-clock convergence is bounded by the sum of every agent's CPU over 2 cores: compare "
        "'worker CPU s' with the time, and read 'agent CPU s' as what one host spends on its own CPU. Each wait "
        f"(the startup's, the burst's) lasts at least {min(s.scale_wait_s):.0f} s and beyond that as long as the "
        f"agents keep the CPUs busy (wall time within {BOUND_WAIT:g}x the CPU spent so far over the cores), up to "
        f"{s.scale_converge_timeout:.0f} s and what the run's 15-minute budget leaves."
    )
    runs: list[Run] = []
    # Order: the client comparison (small, it converges), the smallest size, the largest (issue 6
    # asks for >= 200 hosts: it gets what it needs of the budget before the middle one), the rest.
    # The waits are caps: a size that converges sooner moves on at once.
    waits = dict(zip(s.scale_hosts, s.scale_wait_s, strict=True))
    sizes = [s.scale_hosts[0]] + ([s.scale_hosts[-1]] if len(s.scale_hosts) > 1 else []) + list(s.scale_hosts[1:-1])
    plan = [("clients", s.scale_client_hosts, c, s.scale_client_burst, s.scale_client_wait_s) for c in ("own", "shared")]
    plan += [("main", n, "own", s.scale_burst, waits[n]) for n in sizes]
    for series, n, client, burst, wait in plan:
        # What a size needs, scaled from the largest main size done (the work grows with the hosts):
        # a size that cannot finish within what the budget leaves is skipped, not cut short.
        done = [r for r in runs if r.series == "main" and not r.error and r.startup_s is not None]
        need = MIN_START_S
        if series == "main" and done:
            ref = max(done, key=lambda r: r.hosts)
            need = max(need, (ref.startup_s + ref.wait_s) * n / ref.hosts)
        if ctx.remaining() - RESERVE_S < need:
            skipped = Run(n, client, n * s.scale_endpoints_per_host, min(burst, n * s.scale_endpoints_per_host), 0, series)
            skipped.error = (f"skipped: the run's time budget leaves {max(0.0, ctx.remaining() - RESERVE_S):.0f} s, "
                             f"this size needs about {need:.0f} s")
            ctx.say("scale", f"[{n} hosts, {client} client] {skipped.error}")
            runs.append(skipped)
            continue
        runs.append(_simulate(ctx, n, client=client, profile=series == "main", wait=wait, burst=burst, series=series))
    compare = [r for r in runs if r.series == "clients"]
    runs = sorted((r for r in runs if r.series == "main"), key=lambda r: r.hosts)
    own = [r for r in runs if not r.error]

    conv, work = _tables(runs, caption="the cluster sizes, burst of " + str(s.scale_burst))
    res.tables += [conv, work]
    if own:
        big = max(own, key=lambda r: r.hosts)
        calls = big.calls()
        kinds = Table(["request (method and key kind)", "per endpoint of the burst", "total"],
                      caption=f"etcd requests by kind at {big.hosts} hosts (all agents, from the burst to the end of the wait):")
        for label, count in calls.most_common():
            kinds.add(f"`{label}`", fmt(count / big.burst, 2), count)
        kinds.add("`pyweave run`'s transaction (claim and attachment; counted, not measured)",
                  fmt(CLI_REQUESTS, 2), CLI_REQUESTS * big.burst)
        relists = big.periodic_relist_requests()
        kinds.add(f"of the lists: the periodic re-list of each host's watcher (every {RELIST_INTERVAL_S:g} s +- {RELIST_JITTER:.0%}; "
                  "a list each, beside the running watch), not counted in the figure",
                  fmt(relists / big.burst, 2), relists)
        retried = big.retried_requests()
        by_method = ", ".join(f"{m} {n}" for m, n in sorted(big.retried().items()) if m not in KEEPALIVE_METHODS)
        kinds.add("attempts the etcd client made again inside one of those requests (after a timeout or a refused "
                  f"connection; keep-alives' left out), counted in the figure{f': {by_method}' if by_method else ''}",
                  fmt(retried / big.burst, 2), retried)
        for key, what in (("rewatches", "watched again after a broken stream"),
                          ("failed_starts", "started again after a start that failed (etcd unreachable or its "
                                            "answer later than the client's timeout)"),
                          ("silent_restarts", "started anew: silent while a periodic re-list found the store ahead")):
            count = sum(a.get(key, 0) for a in big.agents)
            kinds.add(f"of the watches: {what} (counted in the figure)", fmt(count / big.burst, 2), count)
        slow = big.slow()
        slow_kinds = ", ".join(f"{k} {n}" for k, n in slow.most_common())
        kinds.add(f"of all those: requests slower than {SLOW_S:g} s (a real agent's client timeout; here "
                  f"{CLIENT_TIMEOUT_S:g} s), the slowest {big.slowest():.2f} s{f': {slow_kinds}' if slow_kinds else ''}",
                  fmt(sum(slow.values()) / big.burst, 2), sum(slow.values()))
        kinds.add("all but keep-alives and periodic re-lists (the figure)", fmt(big.requests_per_endpoint, 2),
                  round(big.requests_per_endpoint * big.burst))
        res.tables.append(kinds)
    if compare:
        cconv, cwork = _tables(compare, caption=f"one etcd client per agent against one shared per worker process, "
                                                 f"{s.scale_client_hosts} hosts, burst of {s.scale_client_burst}")
        res.tables += [cconv, cwork]
        own_c = next((r for r in compare if r.client == "own" and not r.error), None)
        shared_c = next((r for r in compare if r.client == "shared"), None)
        if shared_c is not None and shared_c.error:
            res.notes.append(f"One etcd client shared by the agents of a process did not cope: {shared_c.error}")
        elif shared_c is not None and own_c is not None:
            res.notes.append(
                f"Shared etcd client: converged in {fmt(shared_c.converge_s)} s against {fmt(own_c.converge_s)} s with one "
                f"client per agent, CPU per event {fmt(shared_c.cpu_per_event_ms, 3)} ms against "
                f"{fmt(own_c.cpu_per_event_ms, 3)} ms, worker CPU {fmt(shared_c.worker_cpu_s, 1)} s against "
                f"{fmt(own_c.worker_cpu_s, 1)} s. The gRPC client carries every watch of a process on one stream; the "
                "cluster-size figures use one client per agent, as real agents have."
            )
    for r in [r for r in runs + compare if r.error]:
        res.notes.append(f"The run with {r.hosts} hosts ({r.client} client, burst {r.burst}) did not complete: {r.error}")

    for r in own:
        if r.converge_s is not None:
            figure = f"{fmt(r.converge_s, 1)} s = {r.bound_ratio:.2f} x the CPU bound ({fmt(r.cpu_bound_s, 1)} s)"
        else:
            figure = (f"not within {r.wait_s:.0f} s ({r.converged_agents}/{r.hosts} agents; CPU bound of the wait "
                      f"{fmt(r.cpu_bound_s, 1)} s)")
        res.check(f"all {r.hosts} agents converged after a burst of {r.burst}: wall time against the CPU bound",
                  figure, f"converged; <= {BOUND_TARGET:g} x CPU bound",
                  r.converge_s is not None and r.bound_ratio <= BOUND_TARGET)
    if own:
        worst = max(own, key=lambda r: r.requests_per_endpoint)
        res.check(f"etcd requests per new endpoint, cluster-wide (excluding keep-alives and periodic re-lists), worst "
                  f"size ({worst.hosts} hosts)",
                  fmt(worst.requests_per_endpoint, 2), f"<= {REQUESTS_TARGET:g}",
                  worst.requests_per_endpoint <= REQUESTS_TARGET)
        res.notes.append(
            "CPU bound: the CPU the simulation spent from the burst until every agent converged (the worker "
            f"processes, i.e. every agent, and etcd; utime+stime from /proc) over the {CORES} cores: the least wall time "
            "the simulation could take on this machine. Wall time near it means the agents converge as fast as the "
            "CPUs allow (a real host has its own CPU, and spends 'agent CPU s'); far above it means waiting, not "
            f"working. A burst is waited for at least {fmt(min(s.scale_wait_s), 0)} s "
            f"and beyond that while the wait stays within {BOUND_WAIT:g}x the CPU bound so far. 'machine CPU s' is every "
            "process's CPU over the window (/proc/stat): more than worker + etcd means other work shared the CPUs.\n\n"
            "etcd requests per new endpoint, cluster-wide: every agent's requests from the burst until convergence "
            "(`CountingStore` around each agent's client: puts, deletes, transactions, gets, lists, watches, and the "
            "attempts the client made again inside one of them after a timeout or a refused connection; lease keep-alives "
            "excluded, and so are the watchers' periodic re-lists: each host's watcher lists the store again every "
            "`relist_interval` whatever happens (its watch goes on), a cost per host and per time like the keep-alives, "
            "which falls in the window only when the simulated convergence outlasts the interval; they are shown in "
            f"their own row), plus {CLI_REQUESTS} for `pyweave run`'s own write (it claims the address and writes the "
            "attachment in one transaction; its reads and its watch are not counted; the bench itself wrote the burst "
            "in fewer, bigger transactions), over the burst's new endpoints. Progress records are rate-limited per host "
            "in time, so their share grows with the time the agents take to converge, which on shared CPUs is longer "
            "than on real hosts."
        )
    growth = None
    if len(own) >= 2:
        small, big = min(own, key=lambda r: r.hosts), max(own, key=lambda r: r.hosts)
        growth_r = big.cpu_per_reconcile_ms / small.cpu_per_reconcile_ms if small.cpu_per_reconcile_ms else math.nan
        if not math.isnan(big.cpu_per_event_ms) and not math.isnan(small.cpu_per_event_ms) and small.cpu_per_event_ms:
            growth = big.cpu_per_event_ms / small.cpu_per_event_ms
            res.check(
                f"agent CPU per watch event, {big.hosts} hosts against {small.hosts}",
                f"{fmt(big.cpu_per_event_ms, 3)} ms / {fmt(small.cpu_per_event_ms, 3)} ms = {growth:.2f} x",
                f"does not grow (<= {GROWTH_LIMIT} x)", growth <= GROWTH_LIMIT,
            )
        else:
            # Not every size converged within its wait, so CPU per event cannot be had for both:
            # compare the CPU of one (completed) reconcile instead, and say so.
            growth = growth_r
            res.check(
                f"agent CPU per reconcile, {big.hosts} hosts against {small.hosts} (per event needs convergence: "
                "not reached within the wait)",
                f"{fmt(big.cpu_per_reconcile_ms, 1)} ms / {fmt(small.cpu_per_reconcile_ms, 1)} ms = {growth_r:.2f} x",
                f"does not grow (<= {GROWTH_LIMIT} x)", None if math.isnan(growth_r) else growth_r <= GROWTH_LIMIT,
            )
        res.notes.append(f"CPU per reconcile went from {fmt(small.cpu_per_reconcile_ms, 1)} ms at {small.hosts} hosts "
                         f"to {fmt(big.cpu_per_reconcile_ms, 1)} ms at {big.hosts} ({growth_r:.2f} x). CPU per event is "
                         "given only where every agent converged (otherwise the reconciles still owed for the events "
                         "already applied would be left out).")

    profiled = [r for r in own if r.profile is not None and r.profile.samples]
    if profiled:
        pt = Table(["hosts", "samples"] + [f"`{k}` %" for k, _ in PROFILE_KEYS],
                   caption="py-spy, one worker process during the burst (threads holding the GIL), share of samples "
                           "inside each function:")
        for r in profiled:
            pt.add(r.hosts, r.profile.samples, *[f"{100 * r.profile.share(k):.1f}" for k, _ in PROFILE_KEYS])
        res.tables.append(pt)
    elif profiles.pyspy() is None:
        res.notes.append(profiles.PYSPY_MISSING)

    if len(own) >= 1:
        png = plots.scale_lines(
            ctx.plot_path("scale"), [r.hosts for r in own],
            converge_s=[r.converge_s if r.converge_s is not None else math.nan for r in own],
            bound_s=[r.cpu_bound_s for r in own], bound_target=BOUND_TARGET,
            per_reconcile_ms=[r.cpu_per_reconcile_ms for r in own],
            per_event_ms=[r.cpu_per_event_ms for r in own],
        )
        if png:
            res.plots.append((png.name, "convergence (wall and CPU bound) and agent CPU against cluster size"))
        else:
            res.notes.append(plots.MISSING)

    if any(c.met is False for c in res.checks):
        res.limits.append(_limits(own, profiled, growth))
    return res


def _tables(runs: list[Run], *, caption: str) -> tuple[Table, Table]:
    conv = Table(["hosts", "etcd client", "endpoints", "burst", "worker processes", "startup s", "burst written s",
                  "converged s (all agents)", "p50 agent s", "agents converged", "remote entries held (median)",
                  "CPU bound s", "wall / CPU bound", "machine CPU s"],
                 caption=f"Convergence, {caption} (seconds from the burst's first write):")
    work = Table(["hosts", "etcd client", "reconciles per agent", "CPU per reconcile ms", "agent CPU s",
                  "watch events per agent", "CPU per event ms", "etcd requests per new endpoint (cluster)", "keep-alives",
                  "worker CPU s", "etcd CPU s"],
                 caption=f"Work during the burst, {caption} (medians over agents; requests exclude lease keep-alives):")
    for r in runs:
        if r.error:
            conv.add(r.hosts, r.client, r.endpoints, r.burst, r.workers, "did not complete: " + r.error,
                     "", "", "", "", "", "", "", "")
            continue
        _requests, keepalive = r.requests()
        target = r.endpoints - r.endpoints // r.hosts
        held = r.med(lambda a: a["remote"])
        conv.add(r.hosts, r.client, r.endpoints, r.burst, r.workers, fmt(r.startup_s, 1), fmt(r.burst_write_s),
                 fmt(r.converge_s, 2) if r.converge_s is not None else f"not within {r.wait_s:.0f}",
                 fmt(r.converge_p50_s, 2), f"{r.converged_agents}/{r.hosts}", f"{held:.0f}/{target}",
                 fmt(r.cpu_bound_s, 1), fmt(r.bound_ratio, 2), fmt(r.machine_cpu_s, 1))
        work.add(r.hosts, r.client, fmt(r.reconciles, 0), fmt(r.cpu_per_reconcile_ms, 1), fmt(r.med(Run.agent_cpu), 1),
                 fmt(r.events, 0), fmt(r.cpu_per_event_ms, 3), fmt(r.requests_per_endpoint, 2), keepalive,
                 fmt(r.worker_cpu_s, 1), fmt(r.etcd_cpu_s, 1))
    return conv, work


def _limits(own: list[Run], profiled: list[Run], growth: float | None) -> str:
    parts = []
    if own:
        big = max(own, key=lambda r: r.hosts)
        parts.append(
            f"At {big.hosts} hosts every agent spent a median {fmt(big.cpu_per_reconcile_ms, 1)} ms of CPU per reconcile "
            f"and reconciled {fmt(big.reconciles, 0)} times during the burst, applying {fmt(big.events, 0)} watch events"
            + (f"; its agent work grew {growth:.2f} x over the cluster sizes measured." if growth else ".")
            + f" The simulation spent {fmt(big.cpu_s, 1)} s of CPU (workers {fmt(big.worker_cpu_s, 1)} s, etcd "
            f"{fmt(big.etcd_cpu_s, 1)} s) in {fmt(big.wait_s, 1)} s on {CORES} cores; the machine as a whole was busy "
            f"{fmt(big.machine_cpu_s, 1)} s."
        )
    if profiled:
        big = max(profiled, key=lambda r: r.hosts)
        shares = ", ".join(f"{100 * big.profile.share(k):.0f} % in {what} (`{k.rstrip(' (')}`)" for k, what in PROFILE_KEYS)
        parts.append(
            f"The py-spy profile (one worker, {big.hosts} hosts, {big.profile.samples} samples of threads holding the "
            f"GIL) puts {shares}; the top functions:"
        )
        parts.append(big.profile.table(top=14).markdown())
    parts.append(
        "Why the simulation is CPU-bound: every agent watches the whole prefix, so each new endpoint reaches every "
        "agent as four records (its attachment, its address claim, then the endpoint and name records its owner "
        "publishes), and every agent parses and applies each of them; the total work of a burst is then about "
        "hosts x burst x 4 events, all on the machine's cores, while a real host does only its own share "
        "('agent CPU s'). The etcd requests are the owners' endpoint and name records and `pyweave run`'s "
        "transaction; a host writes a progress record only while a command waits for it (`waits/`), which a burst "
        "written by the bench never does."
    )
    return "\n\n".join(parts)
