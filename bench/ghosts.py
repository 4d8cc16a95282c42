"""Section 7: what ONE host spends at cluster scale (issue 11, item 7), apart from the simulation.

Section 6 runs hundreds of agents on the same two CPUs, so its figures mix what one host spends with
what the machine spends on all the others. Here one real agent with the real kernel dataplane runs
in a lab host of its own (`pyweave_lab.Lab(1)`, its embedded etcd, one busybox container on
10.200.0.0/16 so the agent has interest in that network), and the rest of the cluster is ghosts:
records in etcd only (`bench.ghost_writer`, run in the host's namespace where etcd listens), host
records in 198.19.0.0/16 with 25 endpoints each, written as docs/keys.md describes them.

Per cluster size N (100, 1,000, 2,000 ghosts):
  1. cold start: `pyweave stop`, ghosts written up to N, the network's VXLAN device deleted (its FDB
     and neighbour entries go with it: the kernel as after a reboot of the overlay), then `pyweave
     launch`, timed to its return (the agent is ready: registered and mirrored the store) and until
     the kernel holds all N x 25 neighbour entries (dumps of `ip neigh show dev pwx-<vni>`, at
     most one fifth of the time spent dumping); the agent's RSS then. At N = 2,000 this is part
     (b), cold start into 50,000 endpoints; the smaller sizes show how it grows.
  2. bursts: 1,000 endpoint events, 500 new endpoints and 500 deletions interleaved, one etcd request
     each (`ghost_writer` "forward"), then the same undone ("reverse"), so the cluster stays at N x
     25. Per burst: agent CPU per event (utime+stime of the agent from just before the first write
     until it is idle again, / 1,000), the time from the first write until the kernel shows every
     change (`ip monitor neigh`: the last of the 500 additions and 500 deletions; confirmed by a
     dump), and the agent's RSS before and after.
Before the first size: the idle RSS of the agent on a small cluster (one host, one container).
Then (c), on a throwaway etcd once the lab is gone: `bench.fanout`.

Every wait for the kernel is capped (`Sizes.ghost_wait_s`); a size whose cold start did not finish
within the cap gets no burst, and the report says so. A missed target gets a py-spy profile: of
the agent during the largest cold start (wall clock: where it waits), and of one more pair of bursts
at the largest size (threads holding the GIL: where the CPU goes).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import fanout, plots, profiles
from bench.context import BenchContext
from bench.fanout import FanoutRun
from bench.ghost_writer import Layout
from bench.helper import Helper
from bench.labsession import IMAGE, BenchError
from bench.machine import REPO
from bench.procs import CLOCK_TICKS, pid_stat, vm_hwm_kb, wait_until
from bench.report import SectionResult, Table
from bench.stats import fmt, median
from dataplane.api import vxlan_name
from pyweave.host import HostConfig
from pyweave_lab import Lab, ensure_test_image, leftovers

TITLE = "7. One host at cluster scale"
CPU_PER_EVENT_TARGET_MS = 2.0
GROWTH_LIMIT = 1.25
COLD_START_TARGET_S = 10.0
RSS_HOLDING_TARGET_MB = 200.0
RSS_IDLE_TARGET_MB = 60.0
CONTAINER_CIDR = "10.200.0.1/16"


@dataclass
class Burst:
    direction: str
    events: int
    written_s: float  # first write .. last write acknowledged
    program_s: float | None  # first write .. every change in the kernel; None: not within the cap
    cpu_ms_per_event: float
    window_s: float  # the CPU window: just before the first write .. the agent idle again
    rss_before_kb: int
    rss_after_kb: int
    confirmed: bool = True  # a dump agreed with what the monitor saw
    by_monitor: bool = True  # False: the monitor missed notifications; the time is that of a dump


@dataclass
class ColdStart:
    hosts: int
    endpoints: int
    ready_s: float | None  # `pyweave launch` returned; None: it failed
    programmed_s: float | None  # None: not within the cap
    programmed: int  # neighbour entries at the end of the wait
    agent_cpu_s: float
    rss_kb: int
    hwm_kb: int
    launch_error: str = ""


@dataclass
class Size:
    cold: ColdStart
    background_pct: float = 0.0  # the agent's CPU with no event, % of one core (its periodic resyncs)
    bursts: list[Burst] = field(default_factory=list)

    def cpu_ms(self) -> float | None:
        return median([b.cpu_ms_per_event for b in self.bursts]) if self.bursts else None

    def beyond_background_ms(self, b: Burst) -> float:
        """CPU per event less what the agent spends anyway over the same window with no event."""
        return b.cpu_ms_per_event - 10 * self.background_pct * b.window_s / b.events


def _mb(kb: int) -> str:
    return f"{kb / 1024:.1f}"


# -- the kernel, seen from outside the agent ---------------------------------------------------
class NeighMonitor:
    """`ip -n NS monitor neigh`: when each neighbour entry of one device appeared or went."""

    def __init__(self, ctx: BenchContext, ns: str, dev: str) -> None:
        self.ctx = ctx
        self.dev = dev
        self.added: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self._cond = threading.Condition()
        self.proc = ctx.spawned.start(["ip", "-n", ns, "monitor", "neigh"], stdout=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.5)  # subscribed before anything is written

    def _read(self) -> None:
        for line in self.proc.stdout:
            now = time.time()
            words = line.split()
            gone = bool(words) and words[0] == "Deleted"
            words = words[1:] if gone else words
            if len(words) < 3 or words[1:3] != ["dev", self.dev]:
                continue
            with self._cond:
                if gone:
                    self.deleted[words[0]] = now
                elif "lladdr" in words and "PERMANENT" in words:
                    self.added[words[0]] = now
                self._cond.notify_all()

    def wait(self, adds: set[str], dels: set[str], timeout: float, done: Callable[[], bool]) -> tuple[float | None, bool]:
        """(the time the last of these additions and deletions was seen, whether the monitor saw them all).

        A netlink monitor may drop notifications when its socket buffer overflows; after a second
        with nothing new, `done()` (a dump) is asked, and if the kernel is already there, the time
        of that dump is the figure instead. (None, False) if not within timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (adds <= self.added.keys() and dels <= self.deleted.keys()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, False
                if not self._cond.wait(min(left, 1.0)) and done():
                    return time.time(), False
            return max([self.added[ip] for ip in adds] + [self.deleted[ip] for ip in dels]), True

    def close(self) -> None:
        self.ctx.spawned.stop(self.proc)


# -- the lab host with its ghosts --------------------------------------------------------------
class GhostLab:
    """One lab host, its agent, its container, and the ghost writer. Always removed by close()."""

    def __init__(self, ctx: BenchContext, tmp: Path) -> None:
        s = ctx.sizes
        self.ctx = ctx
        self.tmp = tmp
        self.lab = Lab(1)
        self.ns = self.lab.hosts[0].name
        self.layout = Layout(self.lab.prefix, s.ghost_endpoints_per_host, s.ghost_burst // 2, max(s.ghost_hosts))
        self.writer: Helper | None = None
        self.vni = 0

    def say(self, msg: str) -> None:
        self.ctx.say("ghosts", msg)

    def up(self) -> None:
        ensure_test_image()
        self.say(f"building a lab of 1 host (prefix {self.lab.prefix})")
        self.lab.up()
        self._pyweave("launch")
        r = self.lab.pyweave(0, "run", CONTAINER_CIDR, IMAGE, "sleep", "3600")
        if r.returncode != 0:
            raise BenchError(f"pyweave run {CONTAINER_CIDR} failed: {r.stderr.strip()[-300:]}")
        env = self.lab.env()
        env["PYTHONPATH"] = str(REPO)
        lay = self.layout
        self.writer = Helper(
            self.ctx.spawned,
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "bench.ghost_writer",
             "--store", f"http://{self.lab.hosts[0].address}:2379", "--prefix", lay.prefix,
             "--per-host", str(lay.per_host), "--half", str(lay.half), "--max-hosts", str(lay.max_hosts)],
            name="the ghost writer", log=self.tmp / "ghost_writer.log", env=env,
        )
        self.vni = self.writer.expect("ready", timeout=60)["vni"]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.say(f"removing the lab {self.lab.prefix}")
        self.lab.down()
        left = leftovers(self.lab.prefix)
        if left:
            self.say(f"WARNING: the lab left behind: {', '.join(left)}")

    def _pyweave(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        r = self.lab.pyweave(0, *args, timeout=timeout)
        if r.returncode != 0:
            raise BenchError(f"pyweave {' '.join(args)} failed: {r.stderr.strip()[-300:]}")
        return r

    @property
    def dev(self) -> str:
        return vxlan_name(self.vni)

    def _live_pid(self) -> int | None:
        pid = self.lab.agent_pid(0)  # the pid file outlives `pyweave stop`
        return pid if pid is not None and pid_stat(pid) is not None else None

    def agent_pid(self) -> int:
        pid = self._live_pid()
        if pid is None:
            raise BenchError(f"the agent is not running; its log ends: {self._agent_log()}")
        return pid

    def _agent_log(self) -> str:
        try:
            return (self.lab.state_dir(0) / "agent.log").read_text(errors="replace")[-400:].strip()
        except OSError:
            return "(no log)"

    def neighbours(self) -> set[str]:
        r = subprocess.run(["ip", "-n", self.ns, "neigh", "show", "dev", self.dev], capture_output=True, text=True,
                           timeout=60, check=False)
        return {line.split()[0] for line in r.stdout.splitlines() if "lladdr" in line}

    def wait_count(self, want: int, *, since: float, timeout: float) -> tuple[float | None, int]:
        """Dump until the device holds `want` entries; (seconds after `since`, count). The dumps take
        at most a fifth of the time, so that watching costs the agent little CPU."""
        deadline = time.monotonic() + timeout
        count = 0
        while True:
            t0 = time.monotonic()
            count = len(self.neighbours())
            if count >= want:
                return time.time() - since, count
            took = time.monotonic() - t0
            if time.monotonic() + took > deadline:
                return None, count
            time.sleep(max(0.1, 4 * took))

    def background_pct(self, seconds: float) -> float:
        """The agent's CPU with no event over `seconds`, in % of one core (periodic full resyncs included)."""
        pid = self.agent_pid()
        c0, t0 = (pid_stat(pid) or (0, 0))[0], time.monotonic()
        time.sleep(seconds)
        c1 = (pid_stat(pid) or (0, 0))[0]
        return 100.0 * (c1 - c0) / CLOCK_TICKS / (time.monotonic() - t0)

    def idle_rss_kb(self, seconds: float) -> int:
        pid = self.agent_pid()
        samples = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            got = pid_stat(pid)
            if got:
                samples.append(got[1])
            time.sleep(0.5)
        return max(samples or [0])

    # -- the measurements ------------------------------------------------------------------------
    def cold_start(self, hosts: int, *, profile: Path | None = None) -> tuple[ColdStart, profiles.Profile | None]:
        """Stop, grow the ghosts to `hosts`, drop the VXLAN device, launch; timed to ready and programmed."""
        want = hosts * self.layout.per_host
        self._pyweave("stop")
        subprocess.run(["ip", "-n", self.ns, "link", "del", self.dev], capture_output=True, check=False)
        self.writer.send(cmd="grow", hosts=hosts)
        self.writer.expect("grown", timeout=600)
        started = time.time()
        r = self.lab.pyweave(0, "launch", timeout=self.ctx.sizes.ghost_wait_s)
        ready = time.time() - started if r.returncode == 0 else None
        error = "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["failed"])[-1]
        if not wait_until(lambda: self._live_pid() is not None, timeout=30):
            raise BenchError(f"no agent after `pyweave launch`: {error or self._agent_log()}")
        pid = self.agent_pid()
        left = max(0.0, self.ctx.sizes.ghost_wait_s - (time.time() - started))
        spy = profiles.PySpyRecording(self.ctx.spawned, pid, profile, rate=20, gil=False) if profile else None
        with spy or contextlib.nullcontext():
            programmed, count = self.wait_count(want, since=started, timeout=left)
        got = pid_stat(pid) or (0, 0)
        cold = ColdStart(hosts, want, ready, programmed, count, got[0] / CLOCK_TICKS, got[1], vm_hwm_kb(pid) or 0, error)
        return cold, (spy.profile if spy else None)

    def _settle(self, pid: int, *, timeout: float = 15.0) -> tuple[int, int]:
        """(cpu ticks, rss) once the agent has stopped working: two samples 0.5 s apart within a tick."""
        last = pid_stat(pid) or (0, 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = pid_stat(pid) or last
            if now[0] - last[0] <= 1:
                return now
            last = now
        return last

    def burst(self, hosts: int, direction: str) -> Burst:
        lay = self.layout
        added = {lay.ip(*e) for e in lay.extras(hosts)}
        removed = {lay.ip(*e) for e in lay.removed(hosts)}
        if direction == "reverse":
            added, removed = removed, added
        pid = self.agent_pid()
        cpu0, rss0 = self._settle(pid)
        t0 = time.monotonic()
        monitor = NeighMonitor(self.ctx, self.ns, self.dev)
        try:
            self.writer.send(cmd="burst", hosts=hosts, round=direction)
            wrote = self.writer.expect("burst", timeout=600)
            seen, by_monitor = monitor.wait(added, removed, max(0.0, wrote["first"] + self.ctx.sizes.ghost_wait_s - time.time()),
                                            done=lambda: self._shows(added, removed))
        finally:
            monitor.close()
        cpu1, rss1 = self._settle(pid)
        return Burst(
            direction=direction, events=wrote["events"], written_s=wrote["last"] - wrote["first"],
            program_s=None if seen is None else seen - wrote["first"],
            cpu_ms_per_event=1000.0 * (cpu1 - cpu0) / CLOCK_TICKS / wrote["events"], window_s=time.monotonic() - t0,
            rss_before_kb=rss0, rss_after_kb=rss1, confirmed=self._shows(added, removed), by_monitor=by_monitor,
        )

    def _shows(self, added: set[str], removed: set[str]) -> bool:
        now = self.neighbours()
        return added <= now and not removed & now


# -- the section -------------------------------------------------------------------------------
@dataclass
class Findings:
    idle_rss_kb: int = 0
    sizes: list[Size] = field(default_factory=list)
    cold_profile: profiles.Profile | None = None
    burst_profile: profiles.Profile | None = None
    fanout: list[FanoutRun] = field(default_factory=list)
    wait_s: float = 0.0  # the cap on every wait for the kernel
    errors: list[str] = field(default_factory=list)  # a part that stopped early, and why


def run(ctx: BenchContext) -> SectionResult:
    with tempfile.TemporaryDirectory(prefix="pyweave-bench-ghosts-") as tmp:
        found = Findings(wait_s=ctx.sizes.ghost_wait_s)
        try:
            _measure_host(ctx, Path(tmp), found)
        except BenchError as err:  # what was measured before still goes into the report
            found.errors.append(f"one host: {err}")
        try:
            found.fanout = fanout.run(ctx, Path(tmp))
        except BenchError as err:
            found.errors.append(f"fan-out: {err}")
        return _report(ctx, found)


def _measure_host(ctx: BenchContext, tmp: Path, found: Findings) -> None:
    s = ctx.sizes
    gl = GhostLab(ctx, tmp)
    try:
        gl.up()
        found.idle_rss_kb = gl.idle_rss_kb(s.ghost_idle_s)
        gl.say(f"idle agent on a small cluster: RSS {_mb(found.idle_rss_kb)} MB")
        for n in s.ghost_hosts:
            largest = n == max(s.ghost_hosts)
            cold, prof = gl.cold_start(n, profile=tmp / "cold.txt" if largest else None)
            found.cold_profile = prof or found.cold_profile
            size = Size(cold)
            found.sizes.append(size)
            gl.say(f"{n} ghosts: launch returned after {fmt(cold.ready_s)} s, {cold.programmed} of {cold.endpoints} "
                   f"entries programmed after {fmt(cold.programmed_s)} s, RSS {_mb(cold.rss_kb)} MB")
            if cold.programmed_s is None:
                continue
            size.background_pct = gl.background_pct(s.ghost_background_s)
            for direction in ("forward", "reverse"):
                b = gl.burst(n, direction)
                size.bursts.append(b)
                gl.say(f"{n} ghosts, {direction} burst: programmed after {fmt(b.program_s)} s, "
                       f"{b.cpu_ms_per_event:.2f} ms agent CPU per event")
        worst, growth = _worst(found), _growth(found)
        if (worst and (worst.cpu_ms() or 0.0) > CPU_PER_EVENT_TARGET_MS) or (growth and growth > GROWTH_LIMIT):
            hosts = [z for z in found.sizes if z.bursts][-1].cold.hosts
            gl.say(f"a CPU target was missed: one more pair of bursts at {hosts} ghosts under py-spy")
            found.burst_profile = _profile_bursts(ctx, gl, hosts, tmp / "burst.txt")
    finally:
        gl.close()


def _profile_bursts(ctx: BenchContext, gl: GhostLab, hosts: int, out: Path) -> profiles.Profile | None:
    """One more pair of bursts under py-spy (threads holding the GIL), not counted in the figures."""
    with profiles.PySpyRecording(ctx.spawned, gl.agent_pid(), out, rate=100, gil=True) as spy:
        for direction in ("forward", "reverse"):
            gl.burst(hosts, direction)
    return spy.profile


def _report(ctx: BenchContext, found: Findings) -> SectionResult:
    s = ctx.sizes
    res = SectionResult("ghosts", TITLE)
    res.method = _method(ctx)
    res.tables += [_bursts_table(found), _cold_table(found), _fanout_table(found.fanout)]
    _checks(res, found)
    _plot(ctx, res, found)
    _notes(res, found)
    if found.errors:
        res.error = "; ".join(found.errors)
        done = ", ".join(str(z.cold.hosts) for z in found.sizes) or "none"
        res.notes.append(f"Stopped early (the error above); cluster sizes measured: {done} of "
                         f"{', '.join(str(n) for n in s.ghost_hosts)}.")
    return res


def _method(ctx: BenchContext) -> str:
    s = ctx.sizes
    return (
        f"One real agent with the real kernel dataplane in a lab host of its own (one busybox container on "
        f"{CONTAINER_CIDR}); the rest of the cluster is ghost hosts: records only, written into the lab's etcd as "
        f"docs/keys.md describes them (`bench/ghost_writer.py`), {s.ghost_endpoints_per_host} endpoints each on that "
        f"network, host addresses in 198.19.0.0/16 (never sent a packet). Per size N: **cold start** (`pyweave stop`, "
        f"ghosts written up to N, the VXLAN device deleted so the kernel holds none of their entries, `pyweave launch`), "
        f"timed to `launch` returning (the agent is ready) and until `ip neigh show dev pwx-<vni>` lists all N x "
        f"{s.ghost_endpoints_per_host} entries (dumped at intervals of 4x a dump's own time, so the resolution is about "
        f"a second at 50,000 entries); then a **burst** of {s.ghost_burst} endpoint events, {s.ghost_burst // 2} new "
        f"endpoints and {s.ghost_burst // 2} deletions interleaved, one etcd request each from 16 writer threads, and "
        "the same undone (the second row), so the cluster stays at N hosts. Per burst: the agent's CPU "
        "(utime+stime of its process, every thread, from just before the first write until it is idle again) per "
        "event, and the same less what the agent spends with no event over as long a window (its idle rate, measured "
        f"over {s.ghost_background_s:g} s at each size: a full resync every {HostConfig.resync_interval:g} s); the time from the first write until the kernel shows every change (`ip monitor neigh`: the last of "
        "the additions and deletions; a dump confirms it). Every wait for the kernel is capped at "
        f"{s.ghost_wait_s:.0f} s. **Fan-out** (`bench/fanout.py`): a throwaway etcd on 127.0.0.1, watcher processes "
        "each holding many raw watches on the endpoints prefix through one gRPC channel (`EtcdStore.watch`; not "
        f"agents), a burst of {s.fanout_keys} keys; delivery latency from each put being sent to each watch's callback."
    )


def _bursts_table(found: Findings) -> Table:
    t = Table(["ghost hosts", "remote endpoints", "burst", "all changes in the kernel, s after the first write",
               "burst written in s", "agent CPU per event ms", "... less the idle rate ms", "agent idle CPU % of a core",
               "agent RSS before → after MB"],
              caption="Bursts (the time a user waits first):")
    for z in found.sizes:
        if not z.bursts:
            t.add(z.cold.hosts, z.cold.endpoints, "not run", "the cold start was not programmed within the cap", *["—"] * 5)
        for b in z.bursts:
            program = fmt(b.program_s) if b.program_s is not None else "not within the cap"
            if not b.confirmed:
                program += " (a dump disagreed)"
            elif not b.by_monitor and b.program_s is not None:
                program += " (from a dump: the monitor missed some)"
            t.add(z.cold.hosts, z.cold.endpoints, f"{b.events} events, {b.direction}", program, fmt(b.written_s),
                  fmt(b.cpu_ms_per_event), fmt(z.beyond_background_ms(b)), fmt(z.background_pct, 1),
                  f"{_mb(b.rss_before_kb)} → {_mb(b.rss_after_kb)}")
    return t


def _cold_table(found: Findings) -> Table:
    t = Table(["ghost hosts", "remote endpoints", "all programmed, s after `launch`", "`launch` returned (ready), s",
               "agent CPU to programmed, s", "agent RSS then MB (peak)"], caption="Cold start (`pyweave launch` with an empty VXLAN device):")
    for z in found.sizes:
        c = z.cold
        programmed = fmt(c.programmed_s) if c.programmed_s is not None else f"not within the cap ({c.programmed} programmed)"
        ready = fmt(c.ready_s) if c.ready_s is not None else f"failed: {c.launch_error}"
        t.add(c.hosts, c.endpoints, programmed, ready, fmt(c.agent_cpu_s, 1), f"{_mb(c.rss_kb)} ({_mb(c.hwm_kb)})")
    t.add("idle, small cluster", "0", "—", "—", "—", _mb(found.idle_rss_kb))
    return t


def _fanout_table(runs: list[FanoutRun]) -> Table:
    t = Table(["watchers (processes)", "delivery p50 ms", "p99 ms", "max ms", "every event delivered after s",
               "etcd CPU s", "watchers' CPU s", "burst written in s", "put round trip ms (median)", "delivered"],
              caption="etcd fan-out (delivery from each put being sent to each watcher's callback):")
    for r in runs:
        done = fmt(r.complete_s) if r.complete_s is not None else (r.error or "—")
        t.add(f"{r.watchers} ({r.processes})", fmt(r.p50_ms, 0), fmt(r.p99_ms, 0), fmt(r.max_ms, 0), done,
              fmt(r.etcd_cpu_s, 2), fmt(r.watchers_cpu_s, 1), fmt(r.written_s), fmt(r.put_ms, 1),
              f"{r.delivered} of {r.expected}")
    return t


def _worst(found: Findings) -> Size | None:
    """The size with the most agent CPU per event (median of its bursts)."""
    measured = [z for z in found.sizes if z.bursts]
    return max(measured, key=lambda z: z.cpu_ms() or 0.0) if measured else None


def _growth(found: Findings) -> float | None:
    """CPU per event at the largest size over the smallest, when both were measured."""
    if len(found.sizes) < 2:
        return None
    a, b = found.sizes[0].cpu_ms(), found.sizes[-1].cpu_ms()
    return b / a if a and b else None


def _checks(res: SectionResult, found: Findings) -> None:
    big = found.sizes[-1] if found.sizes else None
    if big is not None:
        c = big.cold
        res.check(f"cold start into {c.hosts} hosts ({c.endpoints} endpoints): all programmed",
                  f"{fmt(c.programmed_s)} s" if c.programmed_s is not None else f"not within the cap ({c.programmed} programmed)",
                  f"<= {COLD_START_TARGET_S:g} s", c.programmed_s is not None and c.programmed_s <= COLD_START_TARGET_S)
        res.check(f"cold start into {c.hosts} hosts: `pyweave launch` returned (ready)",
                  f"{fmt(c.ready_s)} s" if c.ready_s is not None else f"failed: {c.launch_error}",
                  f"<= {COLD_START_TARGET_S:g} s", c.ready_s is not None and c.ready_s <= COLD_START_TARGET_S)
    worst = _worst(found)
    if worst is not None:
        cpu = worst.cpu_ms() or 0.0
        res.check("agent CPU per remote endpoint added or removed (worst size, median of its bursts)",
                  f"{cpu:.2f} ms at {worst.cold.hosts} hosts", f"<= {CPU_PER_EVENT_TARGET_MS:g} ms",
                  cpu <= CPU_PER_EVENT_TARGET_MS)
    if len(found.sizes) > 1:
        first, last, growth = found.sizes[0], found.sizes[-1], _growth(found)
        res.check(f"agent CPU per event, {last.cold.hosts} hosts against {first.cold.hosts}",
                  f"{growth:.2f}x" if growth else "not measured at both sizes", f"<= {GROWTH_LIMIT:g}x",
                  None if growth is None else growth <= GROWTH_LIMIT)
    if big is not None:
        held = max([big.cold.rss_kb] + [b.rss_after_kb for b in big.bursts])
        res.check(f"agent RSS holding {big.cold.endpoints} remote endpoints", f"{_mb(held)} MB",
                  f"<= {RSS_HOLDING_TARGET_MB:g} MB", held / 1024 <= RSS_HOLDING_TARGET_MB)
    res.check("agent RSS idle on a small cluster (1 host, 1 container)", f"{_mb(found.idle_rss_kb)} MB",
              f"<= {RSS_IDLE_TARGET_MB:g} MB", found.idle_rss_kb / 1024 <= RSS_IDLE_TARGET_MB if found.idle_rss_kb else None)


def _plot(ctx: BenchContext, res: SectionResult, found: Findings) -> None:
    measured = [z for z in found.sizes if z.bursts]
    if not measured:
        return
    if not plots.available():
        res.notes.append(plots.MISSING)
        return
    path = plots.ghost_lines(
        ctx.plot_path("ghosts"),
        [z.cold.hosts for z in measured],
        cpu_ms={d: [next(b.cpu_ms_per_event for b in z.bursts if b.direction == d) for z in measured]
                for d in ("forward", "reverse")},
        program_s={d: [next(b.program_s for b in z.bursts if b.direction == d) for z in measured]
                   for d in ("forward", "reverse")},
        cpu_target_ms=CPU_PER_EVENT_TARGET_MS,
    )
    if path is not None:
        res.plots.append((path.name, "Agent CPU per endpoint event and time to program a burst, against the number of ghost hosts"))


def _notes(res: SectionResult, found: Findings) -> None:
    ok = [r for r in found.fanout if r.ok]
    tried = [r for r in found.fanout if r.watchers > 1]
    if tried and not any(r.ok for r in tried):
        res.notes.append(f"No watcher count above 1 received every event within the wait: {tried[-1].error}.")
    elif tried and not tried[0].ok:
        res.notes.append(f"{tried[0].watchers} watchers could not be held ({tried[0].error}); the largest count that "
                         f"worked was {ok[-1].watchers}.")
    if ok and ok[-1].watchers > 1:
        r = ok[-1]
        per = 1e6 * r.etcd_cpu_s / r.expected if r.expected else float("nan")
        text = (f"Fan-out: etcd spent {r.etcd_cpu_s:.2f} s of CPU delivering {r.expected} events to {r.watchers} watches "
                f"({per:.1f} µs per delivered event); the watcher processes spent {r.watchers_cpu_s:.1f} s receiving them, "
                "on the same two CPUs.")
        if r.watchers_cpu_s > 2 * r.etcd_cpu_s:
            text += " The delivery latency here is then mostly the receivers' own CPU, not etcd's."
        res.notes.append(text)
    missed = {c.what for c in res.checks if c.met is False}
    cold = found.sizes[-1].cold if found.sizes else None
    if cold is not None and any("cold start" in m for m in missed):
        took = cold.programmed_s if cold.programmed_s is not None else found.wait_s
        res.limits.append(
            f"Cold start into {cold.hosts} hosts: {cold.programmed} of {cold.endpoints} entries in the kernel after "
            f"{took:.0f} s, for {cold.agent_cpu_s:.1f} s of agent CPU ({1000 * cold.agent_cpu_s / max(1, cold.programmed):.2f} ms "
            f"per entry, start-up included): the agent was on a CPU {100 * cold.agent_cpu_s / max(took, 1e-9):.0f} % of that "
            "time; the rest it waited.")
    for prof, what, about in ((found.cold_profile, "during the largest cold start, threads not idle", "cold start"),
                              (found.burst_profile, "one more pair of bursts at the largest size, threads holding the GIL", "CPU per")):
        if prof is None or not any(about in m for m in missed):
            continue  # a profile explains a missed target; none is shown for a met one
        res.limits.append(f"py-spy profile of the agent ({what}; {prof.samples} samples):\n\n" + prof.table(top=12).markdown()
                          if prof.samples else f"py-spy profile of the agent ({what}): no sample. {prof.errors}")
