"""The figures of section 7 (`bench.ghosts`) and how they go into the report.

Tables, the user's figure first: the bursts (how long until a change is in the kernel, and what
it cost the agent), the preloads, the cold start, the etcd fan-out. Then the checks against issue
11's targets, a plot of per-event CPU and time to program against the cluster size, and for a
missed target what the agent's log said and where a py-spy profile puts its time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench import plots, profiles
from bench.context import BenchContext
from bench.fanout import FanoutRun
from bench.procs import PROBE_INTERVAL_S, PROBE_MAX_RATE
from bench.report import SectionResult, Table
from bench.stats import fmt, median
from pyweave.host import HostConfig

TITLE = "7. One host at cluster scale"
CPU_PER_EVENT_TARGET_MS = 2.0
GROWTH_LIMIT = 1.25
COLD_START_TARGET_S = 10.0
RSS_HOLDING_TARGET_MB = 200.0
RSS_IDLE_TARGET_MB = 60.0


@dataclass
class Programming:
    """One wait for the kernel to hold a whole cluster's entries."""

    endpoints: int
    seconds: float | None  # from the start until all were there; None: they were not
    count: int  # entries at the end of the wait
    gave_up: str = ""  # why the wait ended without them
    log: list[str] = field(default_factory=list)  # the agent's warnings meanwhile, when it gave up
    waited_s: float = 0.0  # from the start to the end of the wait

    def figure(self) -> str:
        return fmt(self.seconds) if self.seconds is not None else f"{self.gave_up} ({self.count} of {self.endpoints})"


@dataclass
class Burst:
    direction: str
    events: int
    written_s: float  # first write .. last write acknowledged
    program_s: float | None  # first write .. every change in the kernel; None: not within the wait
    cpu_ms_per_event: float  # the event handling: every thread of the agent but the link prober's
    window_s: float  # the CPU window: just before the first write .. the agent idle again
    rss_before_kb: int
    rss_after_kb: int
    confirmed: bool = True  # a dump agreed with what the monitor saw
    by_monitor: bool = True  # False: the monitor missed notifications; the time is that of a dump
    gave_up: str = ""  # why the wait ended without every change
    log: list[str] = field(default_factory=list)
    prober_ms_per_event: float = 0.0  # the link prober's thread over the same window, per event


@dataclass
class Size:
    hosts: int
    preload: Programming
    preload_cpu_s: float = 0.0
    preload_rss_kb: int = 0
    background_pct: float = 0.0  # the agent's CPU with no event but the prober's, % of one core (its periodic resyncs)
    prober_pct: float = 0.0  # the link prober's thread meanwhile, % of one core
    bursts: list[Burst] = field(default_factory=list)

    def cpu_ms(self) -> float | None:
        """Median CPU per event over the bursts that reached the kernel (None: none did)."""
        done = [b.cpu_ms_per_event for b in self.bursts if b.program_s is not None]
        return median(done) if done else None

    def beyond_background_ms(self, b: Burst) -> float:
        """CPU per event less what the agent spends anyway over the same window with no event."""
        return b.cpu_ms_per_event - 10 * self.background_pct * b.window_s / b.events


@dataclass
class ColdStart:
    hosts: int
    ready_s: float | None  # `pyweave launch` returned; None: it failed
    launch_error: str
    programming: Programming
    agent_cpu_s: float  # the new agent's CPU from its start to the end of the wait
    rss_kb: int
    hwm_kb: int


@dataclass
class Findings:
    wait_s: float
    idle_rss_kb: int = 0
    sizes: list[Size] = field(default_factory=list)
    cold: ColdStart | None = None
    cold_profile: profiles.Profile | None = None
    burst_profile: profiles.Profile | None = None
    fanout: list[FanoutRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a part that stopped early, and why

    def worst(self) -> Size | None:
        """The size with the most agent CPU per event (median of its bursts)."""
        measured = [z for z in self.sizes if z.cpu_ms() is not None]
        return max(measured, key=lambda z: z.cpu_ms() or 0.0) if measured else None

    def growth(self) -> float | None:
        """CPU per event at the largest size over the smallest, when both were measured."""
        if len(self.sizes) < 2:
            return None
        a, b = self.sizes[0].cpu_ms(), self.sizes[-1].cpu_ms()
        return b / a if a and b else None

    def cpu_missed(self, target_ms: float, limit: float) -> bool:
        worst, growth = self.worst(), self.growth()
        return bool((worst and (worst.cpu_ms() or 0.0) > target_ms) or (growth and growth > limit))


def _mb(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def report(ctx: BenchContext, found: Findings) -> SectionResult:
    res = SectionResult("ghosts", TITLE)
    res.method = _method(ctx)
    res.tables += [_bursts_table(found), _preload_table(found), _cold_table(found), _fanout_table(found.fanout)]
    _checks(res, found)
    _plot(ctx, res, found)
    _notes(res, found)
    _limits(res, found)
    if found.errors:
        res.error = "; ".join(found.errors)
        done = ", ".join(str(z.hosts) for z in found.sizes) or "none"
        res.notes.append(f"Stopped early (the error above); cluster sizes reached: {done} of "
                         f"{', '.join(str(n) for n in ctx.sizes.ghost_hosts)}.")
    return res


def _method(ctx: BenchContext) -> str:
    s = ctx.sizes
    half = s.ghost_burst // 2
    return (
        f"One real agent with the real kernel dataplane in a lab host of its own (one busybox container on "
        f"10.200.0.1/16); the rest of the cluster is ghost hosts: records only, written into the lab's etcd as "
        f"docs/keys.md describes them (`bench/ghost_writer.py`), {s.ghost_endpoints_per_host} endpoints each on that "
        f"network, host addresses in 198.19.0.0/16 (never sent a packet). Per size N, the agent running all along: "
        f"**preload**, ghosts written up to N (128 records a transaction) until `ip neigh show dev pwx-<vni>` lists all "
        f"N x {s.ghost_endpoints_per_host} entries (dumped at intervals of 4x a dump's own time: about a second at "
        f"50,000 entries); the agent's **idle** CPU over {s.ghost_background_s:g} s (a full resync runs every "
        f"{HostConfig.resync_interval:g} s); then a **burst** of {s.ghost_burst} endpoint events, {half} new endpoints "
        f"and {half} deletions interleaved, one etcd request each from 16 writer threads, and the same undone (the "
        "second row), so the cluster stays at N hosts. Per burst: the agent's CPU (utime+stime of its process, every "
        "thread but the link prober's, from just before the first write until it is idle again) per event, and the "
        "same less its idle rate over as long a window; the prober's thread (named `pyweave-prober`, from "
        "/proc/<pid>/task/<tid>/stat) apart, per event and idle; the time from the first write until the kernel shows every change (`ip monitor neigh`: "
        "the last of the additions and deletions; a dump confirms it). **Cold start** into the largest size: `pyweave "
        "stop`, the VXLAN device deleted so the kernel holds none of the entries, `pyweave launch`, timed to its return "
        f"(the agent is ready) and until every entry is back. Every wait is capped at {s.ghost_wait_s:.0f} s, and "
        f"given up after {s.ghost_stall_s:.0f} s without one more entry in the kernel. **Fan-out** (`bench/fanout.py`): "
        "a throwaway etcd on 127.0.0.1, watcher processes each holding many raw watches on the endpoints prefix through "
        f"one gRPC channel (`EtcdStore.watch`; not agents), a burst of {s.fanout_keys} keys put one request each; "
        "delivery latency from each put being sent to each watch's callback."
    )


# -- tables ------------------------------------------------------------------------------------
def _bursts_table(found: Findings) -> Table:
    t = Table(["ghost hosts", "remote endpoints", "burst", "all changes in the kernel, s after the first write",
               "burst written in s", "agent CPU per event ms (all but the prober)", "... less the idle rate ms",
               "link prober CPU per event ms", "agent idle CPU % of a core (all but the prober)",
               "link prober idle CPU %", "agent RSS before → after MB"],
              caption="Bursts of endpoint events (the time until a change is in the kernel first):")
    for z in found.sizes:
        if not z.bursts:
            t.add(z.hosts, z.preload.endpoints, "not run: the preload was not programmed", *["—"] * 8)
        for b in z.bursts:
            program = fmt(b.program_s) if b.program_s is not None else b.gave_up
            if not b.confirmed:
                program += " (a dump disagreed)"
            elif not b.by_monitor and b.program_s is not None:
                program += " (from a dump: the monitor missed some)"
            t.add(z.hosts, z.preload.endpoints, f"{b.events} events, {b.direction}", program, fmt(b.written_s),
                  fmt(b.cpu_ms_per_event), fmt(z.beyond_background_ms(b)), fmt(b.prober_ms_per_event),
                  fmt(z.background_pct, 1), fmt(z.prober_pct, 1), f"{_mb(b.rss_before_kb)} → {_mb(b.rss_after_kb)}")
    return t


def _preload_table(found: Findings) -> Table:
    t = Table(["ghost hosts", "remote endpoints", "all programmed, s after the first write", "agent CPU s",
               "agent CPU per entry ms", "agent RSS then MB"],
              caption="Preload (ghosts written while the agent runs, up to each size from the one before):")
    prev = 0
    for z in found.sizes:
        added = z.preload.count - prev
        per = fmt(1000 * z.preload_cpu_s / added) if added > 0 else "—"
        t.add(z.hosts, z.preload.endpoints, z.preload.figure(), fmt(z.preload_cpu_s, 1), per, _mb(z.preload_rss_kb))
        prev = z.preload.count
    return t


def _cold_table(found: Findings) -> Table:
    t = Table(["agent", "remote endpoints", "all programmed, s after `launch`", "`launch` returned (ready), s",
               "agent CPU s", "agent RSS MB (peak)"], caption="Cold start (`pyweave launch` with an empty VXLAN device), and idle:")
    c = found.cold
    if c is not None:
        ready = fmt(c.ready_s) if c.ready_s is not None else f"failed: {c.launch_error}"
        t.add(f"cold start into {c.hosts} hosts", c.programming.endpoints, c.programming.figure(), ready,
              fmt(c.agent_cpu_s, 1), f"{_mb(c.rss_kb)} ({_mb(c.hwm_kb)})")
    t.add("idle, small cluster (1 host, 1 container)", "0", "—", "—", "—", _mb(found.idle_rss_kb))
    return t


def _fanout_table(runs: list[FanoutRun]) -> Table:
    t = Table(["watches (processes)", "delivery p50 ms", "p99 ms", "max ms", "every event delivered after s",
               "etcd CPU s", "watchers' CPU s", "burst written in s", "put round trip ms (median)", "delivered"],
              caption="etcd fan-out (delivery from each put being sent to each watch's callback):")
    for r in runs:
        done = fmt(r.complete_s) if r.complete_s is not None else (r.error or "—")
        t.add(f"{r.watchers} ({r.processes})", fmt(r.p50_ms, 0), fmt(r.p99_ms, 0), fmt(r.max_ms, 0), done,
              fmt(r.etcd_cpu_s, 2), fmt(r.watchers_cpu_s, 1), fmt(r.written_s), fmt(r.put_ms, 1),
              f"{r.delivered} of {r.expected}")
    return t


# -- checks, plot, notes -----------------------------------------------------------------------
def _checks(res: SectionResult, found: Findings) -> None:
    c = found.cold
    if c is not None:
        p = c.programming
        res.check(f"cold start into {c.hosts} hosts ({p.endpoints} endpoints): all programmed",
                  f"{p.seconds:.2f} s" if p.seconds is not None else f"{p.gave_up} ({p.count} of {p.endpoints})",
                  f"<= {COLD_START_TARGET_S:g} s", p.seconds is not None and p.seconds <= COLD_START_TARGET_S)
        res.check(f"cold start into {c.hosts} hosts: `pyweave launch` returned (ready)",
                  f"{c.ready_s:.2f} s" if c.ready_s is not None else f"failed: {c.launch_error}",
                  f"<= {COLD_START_TARGET_S:g} s", c.ready_s is not None and c.ready_s <= COLD_START_TARGET_S)
    worst = found.worst()
    if worst is not None:
        cpu = worst.cpu_ms() or 0.0
        res.check("agent CPU per remote endpoint added or removed (worst size, median of its bursts)",
                  f"{cpu:.2f} ms at {worst.hosts} hosts", f"<= {CPU_PER_EVENT_TARGET_MS:g} ms", cpu <= CPU_PER_EVENT_TARGET_MS)
    if len(found.sizes) > 1:
        first, last, growth = found.sizes[0], found.sizes[-1], found.growth()
        res.check(f"agent CPU per event, {last.hosts} hosts against {first.hosts}",
                  f"{growth:.2f}x" if growth else "not measured at both sizes", f"<= {GROWTH_LIMIT:g}x",
                  None if growth is None else growth <= GROWTH_LIMIT)
    if found.sizes:
        big = found.sizes[-1]
        held = [big.preload_rss_kb] + [b.rss_after_kb for b in big.bursts]
        if c is not None and c.programming.seconds is not None:
            held.append(c.rss_kb)
        programmed = big.preload.seconds is not None
        res.check(f"agent RSS holding {big.preload.endpoints} remote endpoints",
                  f"{_mb(max(held))} MB" + ("" if programmed else f" (only {big.preload.count} were programmed)"),
                  f"<= {RSS_HOLDING_TARGET_MB:g} MB", max(held) / 1024 <= RSS_HOLDING_TARGET_MB if programmed else None)
    res.check("agent RSS idle on a small cluster (1 host, 1 container)", f"{_mb(found.idle_rss_kb)} MB",
              f"<= {RSS_IDLE_TARGET_MB:g} MB", found.idle_rss_kb / 1024 <= RSS_IDLE_TARGET_MB if found.idle_rss_kb else None)


def _plot(ctx: BenchContext, res: SectionResult, found: Findings) -> None:
    measured = [z for z in found.sizes if z.cpu_ms() is not None]
    if not measured:
        return
    if not plots.available():
        res.notes.append(plots.MISSING)
        return
    done = [[b for b in z.bursts if b.program_s is not None] for z in measured]
    path = plots.ghost_lines(
        ctx.plot_path("ghosts"), [z.hosts for z in measured],
        cpu_ms={"as measured": [[b.cpu_ms_per_event for b in bs] for bs in done],
                "less the idle rate": [[z.beyond_background_ms(b) for b in bs] for z, bs in zip(measured, done, strict=True)]},
        program_s=[[b.program_s or 0.0 for b in bs] for bs in done], cpu_target_ms=CPU_PER_EVENT_TARGET_MS,
    )
    if path is not None:
        res.plots.append((path.name, "Agent CPU per endpoint event and time to program a burst, against the number of ghost hosts"))


def _log_note(what: str, lines: list[str]) -> str:
    return f"The agent's log during {what} (its distinct warnings, the last {len(lines)}):\n\n" + "\n".join(
        f"    {line}" for line in lines)


def _notes(res: SectionResult, found: Findings) -> None:
    for z in found.sizes:
        if z.preload.log:
            res.notes.append(_log_note(f"the preload to {z.hosts} hosts", z.preload.log))
        for b in z.bursts:
            if b.log:
                res.notes.append(_log_note(f"the {b.direction} burst at {z.hosts} hosts", b.log))
    idle = [z for z in found.sizes if z.bursts]
    if idle:
        rates = ", ".join(f"{z.prober_pct:.1f} % at {z.hosts} hosts" for z in idle)
        per = ", ".join(f"{median(b.prober_ms_per_event for b in z.bursts):.2f} ms at {z.hosts}" for z in idle)
        res.notes.append(
            "The link prober (`pyweave/agent/prober.py`, its own thread) is counted apart: it sends every alive host "
            f"a hello every {PROBE_INTERVAL_S} s, at most {PROBE_MAX_RATE:.0f} a second in all (so every few seconds each, with thousands of "
            "hosts), whether endpoints change or not, so its CPU is a cost per host and per second, not per event. "
            f"Its thread used {rates} of a core with no event, and over the bursts' windows {per} per event (median). "
            "The ghost hosts never answer (their addresses are not routed), so here it only sends. The per-event "
            "figures and targets are the event handling: the agent's other threads (watch, reconcile, kernel writes).")
    if len(idle) > 1:
        rates = ", ".join(f"{z.background_pct:.1f} % at {z.hosts} hosts" for z in idle)
        res.notes.append(
            f"The agent's CPU with no event: {rates} (of one core; a full resync runs every "
            f"{HostConfig.resync_interval:g} s). A burst whose window takes in a full resync pays for it, which is why CPU per "
            "event varies between the bursts of one size; the column \"less the idle rate\" takes the average out.")
    ok = [r for r in found.fanout if r.ok]
    tried = [r for r in found.fanout if r.watchers > 1]
    if tried and not any(r.ok for r in tried):
        res.notes.append(f"No watcher count above 1 received every event within the wait: {tried[-1].error}.")
    elif tried and not tried[0].ok:
        res.notes.append(f"{tried[0].watchers} watches could not be served ({tried[0].error}); the largest count that "
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


def _limits(res: SectionResult, found: Findings) -> None:
    """For a missed target: what the agent did meanwhile, and where a profile puts its time."""
    missed = [c.what for c in res.checks if c.met is False]
    cold = found.cold
    if cold is not None and any("cold start" in m for m in missed):
        p = cold.programming
        when = f"after {p.seconds:.1f} s" if p.seconds is not None else f"({p.gave_up})"
        text = (f"Cold start into {cold.hosts} hosts: {p.count} of {p.endpoints} entries in the kernel {when}, for "
                f"{cold.agent_cpu_s:.1f} s of agent CPU, start-up included ({100 * cold.agent_cpu_s / max(p.waited_s, 1e-9):.0f} % of one "
                "core over the wait).")
        if cold.launch_error:
            text += f" `pyweave launch` failed: {cold.launch_error}"
        if p.log:
            text += "\n\n" + _log_note("the cold start", p.log)
        res.limits.append(text)
    for prof, what, about in ((found.cold_profile, "the cold start, threads not idle", "cold start"),
                              (found.burst_profile, "one more pair of bursts at the largest size, threads holding the GIL", "CPU per")):
        if prof is None or not any(about in m for m in missed):
            continue  # a profile explains a missed target; none is shown for a met one
        res.limits.append(f"py-spy profile of the agent during {what} ({prof.samples} samples):\n\n" + prof.table(top=12).markdown()
                          if prof.samples else f"py-spy profile of the agent during {what}: no sample. {prof.errors}")
