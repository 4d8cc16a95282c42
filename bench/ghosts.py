"""Section 7: what ONE host spends at cluster scale (issue 11, item 7), apart from the simulation.

Section 6 runs hundreds of agents on the same two CPUs, so its figures mix what one host spends with
what the machine spends on all the others. Here one real agent with the real kernel dataplane runs
in a lab host of its own (`pyweave_lab.Lab(1)`, its embedded etcd, one busybox container on
10.200.0.0/16 so the agent has interest in that network), and the rest of the cluster is ghosts:
records in etcd only (`bench.ghost_writer`, run in the host's namespace where etcd listens), host
records in 198.19.0.0/16 with 25 endpoints each, written as docs/keys.md describes them.

  0. idle: the agent's RSS on a small cluster (one host, one container), before any ghost.
  (a) per cluster size N (100, 1,000, 2,000 ghosts), the agent running all along:
      preload: ghosts written up to N (128 records a transaction), waited for until the kernel holds
        all N x 25 neighbour entries (dumps of `ip neigh show dev pwx-<vni>`, spaced so that
        dumping takes at most a fifth of the time); the agent's CPU meanwhile;
      background: the agent's CPU with no event over a window (its periodic full resyncs);
      bursts: 1,000 endpoint events, 500 new endpoints and 500 deletions interleaved, one etcd request
        each (`ghost_writer` "forward"), then the same undone ("reverse"), so the cluster stays at
        N x 25. Per burst: agent CPU per event (utime+stime of the agent from just before the first
        write until it is idle again, / 1,000; the link prober's thread counted apart: it probes
        whether or not events come), the time from the first write until the
        kernel shows every change (`ip monitor neigh`: the last of the additions and deletions; a
        dump confirms it), and the agent's RSS before and after.
  (b) cold start into the largest cluster: `pyweave stop`, the network's VXLAN device deleted (its
      FDB and neighbour entries go with it: the kernel as after a reboot of the overlay), `pyweave
      launch`, timed to its return (the agent is ready) and until every entry is back; RSS then.
  (c) once the lab is gone, etcd fan-out to many lightweight watchers on a throwaway etcd
      (`bench.fanout`).

Every wait is bounded: by `Sizes.ghost_wait_s`, and by `Sizes.ghost_stall_s` without one more entry
in the kernel (an agent that is stuck is reported as stuck, with the warnings of its log, instead
of being waited for). A size whose preload was not programmed gets no burst. A missed target gets a
py-spy profile: of the agent during the cold start (threads not idle: where it waits), and of one
more pair of bursts at the largest size (threads holding the GIL: where the CPU goes). The figures
and the report are `bench.ghosts_report`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench import fanout, profiles
from bench.context import BenchContext
from bench.ghost_writer import Layout
from bench.ghosts_report import CPU_PER_EVENT_TARGET_MS, GROWTH_LIMIT, Burst, ColdStart, Findings, Programming, Size, report
from bench.helper import Helper
from bench.labsession import IMAGE, BenchError
from bench.machine import REPO
from bench.procs import CLOCK_TICKS, pid_stat, prober_ticks, vm_hwm_kb, wait_until
from bench.report import SectionResult
from bench.stats import fmt
from dataplane.api import vxlan_name
from pyweave_lab import Lab, ensure_test_image, leftovers

CONTAINER_CIDR = "10.200.0.1/16"


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

    def wait(self, adds: set[str], dels: set[str], *, timeout: float, stall: float,
             done: Callable[[], bool]) -> tuple[float | None, bool, str]:
        """(the time the last of these additions and deletions was seen, whether the monitor saw
        them all, why it gave up).

        A netlink monitor may drop notifications when its socket buffer overflows; after a second
        with nothing new, `done()` (a dump) is asked, and if the kernel is already there, the time
        of that dump is the figure instead. Gives up after `timeout`, or `stall` s with nothing new."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        with self._cond:
            while not (adds <= self.added.keys() and dels <= self.deleted.keys()):
                now = time.monotonic()
                if now > deadline:
                    return None, False, f"not within {timeout:.0f} s"
                if now - last > stall:
                    return None, False, f"stuck: no change in the kernel for {stall:.0f} s"
                if self._cond.wait(min(deadline - now, 1.0)):
                    last = time.monotonic()
                elif done():
                    return time.time(), False, ""
            return max([self.added[ip] for ip in adds] + [self.deleted[ip] for ip in dels]), True, ""

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
        self._pyweave("run", CONTAINER_CIDR, IMAGE, "sleep", "3600")
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
            raise BenchError(f"pyweave {' '.join(args[:2])} failed: {r.stderr.strip()[-300:]}")
        return r

    @property
    def dev(self) -> str:
        return vxlan_name(self.vni)

    # -- the agent -------------------------------------------------------------------------------
    def _live_pid(self) -> int | None:
        pid = self.lab.agent_pid(0)  # the pid file outlives `pyweave stop`
        return pid if pid is not None and pid_stat(pid) is not None else None

    def agent_pid(self) -> int:
        pid = self._live_pid()
        if pid is None:
            raise BenchError(f"the agent is not running; its log ends: {' / '.join(self.log_since(0)[-3:])}")
        return pid

    @property
    def _log_path(self) -> Path:
        return self.lab.state_dir(0) / "agent.log"

    def log_mark(self) -> int:
        try:
            return self._log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, mark: int, *, last: int = 3) -> list[str]:
        """The agent's distinct warnings and errors logged after `mark` (the last few, shortened)."""
        try:
            with open(self._log_path, "rb") as f:
                f.seek(mark)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return []
        seen: dict[str, None] = {}
        for line in lines:
            if "level=warning" in line or "level=error" in line:
                seen[line.split(" ", 1)[-1][:300]] = None  # without the timestamp, so repeats collapse
        return list(seen)[-last:]

    def cpu_rss(self, pid: int) -> tuple[int, int]:
        got = pid_stat(pid)
        if got is None:
            raise BenchError(f"the agent (pid {pid}) is gone; its log ends: {' / '.join(self.log_since(0)[-3:])}")
        return got

    def settle(self, pid: int, *, timeout: float = 15.0) -> tuple[int, int]:
        """(CPU ticks, RSS kB) once the agent has stopped working: two samples 0.5 s apart within a tick."""
        last = self.cpu_rss(pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_rss(pid)
            if now[0] - last[0] <= 1:
                return now
            last = now
        return last

    def background_pct(self, seconds: float) -> tuple[float, float]:
        """The agent's CPU with no event over `seconds`, in % of one core (periodic full resyncs
        included): (every thread but the link prober's, the prober's thread)."""
        pid = self.agent_pid()
        c0, p0, t0 = self.cpu_rss(pid)[0], prober_ticks(pid), time.monotonic()
        time.sleep(seconds)
        c1, p1, window = self.cpu_rss(pid)[0], prober_ticks(pid), time.monotonic() - t0
        return 100.0 * (c1 - c0 - (p1 - p0)) / CLOCK_TICKS / window, 100.0 * (p1 - p0) / CLOCK_TICKS / window

    def idle_rss_kb(self, seconds: float) -> int:
        pid = self.agent_pid()
        samples = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append(self.cpu_rss(pid)[1])
            time.sleep(0.5)
        return max(samples or [0])

    # -- the kernel ------------------------------------------------------------------------------
    def neighbours(self) -> set[str]:
        r = subprocess.run(["ip", "-n", self.ns, "neigh", "show", "dev", self.dev], capture_output=True, text=True,
                           timeout=60, check=False)
        return {line.split()[0] for line in r.stdout.splitlines() if "lladdr" in line}

    def shows(self, added: set[str], removed: set[str]) -> bool:
        now = self.neighbours()
        return added <= now and not removed & now

    def wait_programmed(self, want: int, *, since: float, mark: int) -> Programming:
        """Dump until the device holds `want` entries, at most `ghost_wait_s` after `since`, and
        giving up after `ghost_stall_s` without one more entry. Dumps take at most a fifth of the
        time, so watching costs the agent little CPU."""
        s = self.ctx.sizes
        count, last_change, last_count = 0, time.monotonic(), -1
        while True:
            t0 = time.monotonic()
            count = len(self.neighbours())
            waited = time.time() - since
            if count >= want:
                return Programming(want, waited, count, waited_s=waited)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            took = time.monotonic() - t0
            if waited + took > s.ghost_wait_s:
                why = f"not within {s.ghost_wait_s:.0f} s"
            elif time.monotonic() - last_change > s.ghost_stall_s:
                why = f"stuck: no new entry for {s.ghost_stall_s:.0f} s, gave up {waited:.0f} s after the start"
            else:
                time.sleep(max(0.1, 4 * took))
                continue
            return Programming(want, None, count, why, self.log_since(mark), waited_s=waited)

    # -- the measurements ------------------------------------------------------------------------
    def preload(self, hosts: int) -> Size:
        """Ghosts up to `hosts`, written while the agent runs; waited for until all are programmed."""
        pid, mark = self.agent_pid(), self.log_mark()
        cpu0 = self.cpu_rss(pid)[0]
        self.writer.send(cmd="grow", hosts=hosts)
        grown = self.writer.expect("grown", timeout=600)
        programming = self.wait_programmed(hosts * self.layout.per_host, since=grown["first"], mark=mark)
        cpu1, rss = self.cpu_rss(pid)
        return Size(hosts, programming, preload_cpu_s=(cpu1 - cpu0) / CLOCK_TICKS, preload_rss_kb=rss)

    def burst(self, hosts: int, direction: str) -> Burst:
        lay = self.layout
        added = {lay.ip(*e) for e in lay.extras(hosts)}
        removed = {lay.ip(*e) for e in lay.removed(hosts)}
        if direction == "reverse":
            added, removed = removed, added
        pid, mark = self.agent_pid(), self.log_mark()
        cpu0, rss0 = self.settle(pid)
        probe0 = prober_ticks(pid)
        t0 = time.monotonic()
        monitor = NeighMonitor(self.ctx, self.ns, self.dev)
        try:
            self.writer.send(cmd="burst", hosts=hosts, round=direction)
            wrote = self.writer.expect("burst", timeout=600)
            left = max(0.0, wrote["first"] + self.ctx.sizes.ghost_wait_s - time.time())
            seen, by_monitor, gave_up = monitor.wait(added, removed, timeout=left, stall=self.ctx.sizes.ghost_stall_s,
                                                     done=lambda: self.shows(added, removed))
        finally:
            monitor.close()
        cpu1, rss1 = self.settle(pid)
        probe = prober_ticks(pid) - probe0
        return Burst(
            direction=direction, events=wrote["events"], written_s=wrote["last"] - wrote["first"],
            program_s=None if seen is None else seen - wrote["first"],
            cpu_ms_per_event=1000.0 * (cpu1 - cpu0 - probe) / CLOCK_TICKS / wrote["events"], window_s=time.monotonic() - t0,
            rss_before_kb=rss0, rss_after_kb=rss1, confirmed=self.shows(added, removed), by_monitor=by_monitor,
            gave_up=gave_up, log=[] if seen is not None else self.log_since(mark),
            prober_ms_per_event=1000.0 * probe / CLOCK_TICKS / wrote["events"],
        )

    def cold_start(self, hosts: int, *, profile: Path) -> tuple[ColdStart, profiles.Profile | None]:
        """Stop, drop the VXLAN device, launch; timed to ready and to every entry programmed."""
        self._pyweave("stop")
        subprocess.run(["ip", "-n", self.ns, "link", "del", self.dev], capture_output=True, check=False)
        mark = self.log_mark()
        started = time.time()
        r = self.lab.pyweave(0, "launch", timeout=self.ctx.sizes.ghost_wait_s)
        ready = time.time() - started if r.returncode == 0 else None
        error = "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["failed"])[-1]
        if not wait_until(lambda: self._live_pid() is not None, timeout=30):
            raise BenchError(f"no agent after `pyweave launch`: {error or ' / '.join(self.log_since(mark))}")
        pid = self.agent_pid()
        with profiles.PySpyRecording(self.ctx.spawned, pid, profile, rate=20, gil=False) as spy:
            programming = self.wait_programmed(hosts * self.layout.per_host, since=started, mark=mark)
        cpu, rss = self.cpu_rss(pid)
        cold = ColdStart(hosts, ready, error, programming, cpu / CLOCK_TICKS, rss, vm_hwm_kb(pid) or 0)
        return cold, spy.profile


# -- the section -------------------------------------------------------------------------------
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
        return report(ctx, found)


def _measure_host(ctx: BenchContext, tmp: Path, found: Findings) -> None:
    s = ctx.sizes
    gl = GhostLab(ctx, tmp)
    try:
        gl.up()
        found.idle_rss_kb = gl.idle_rss_kb(s.ghost_idle_s)
        gl.say(f"idle agent on a small cluster: RSS {found.idle_rss_kb / 1024:.1f} MB")
        for n in s.ghost_hosts:
            size = gl.preload(n)
            found.sizes.append(size)
            p = size.preload
            gl.say(f"{n} ghosts: {p.count} of {p.endpoints} entries programmed, "
                   + (f"after {p.seconds:.2f} s" if p.seconds is not None else p.gave_up))
            if p.seconds is None:
                continue
            size.background_pct, size.prober_pct = gl.background_pct(s.ghost_background_s)
            for direction in ("forward", "reverse") * s.ghost_rounds:
                b = gl.burst(n, direction)
                size.bursts.append(b)
                gl.say(f"{n} ghosts, {direction} burst: "
                       + (f"all in the kernel after {b.program_s:.2f} s" if b.program_s is not None else b.gave_up)
                       + f", {b.cpu_ms_per_event:.2f} ms agent CPU per event (the prober {b.prober_ms_per_event:.2f})")
                if b.program_s is None:
                    break  # the agent is stuck: more bursts would only wait as long again
        if found.cpu_missed(CPU_PER_EVENT_TARGET_MS, GROWTH_LIMIT):
            hosts = [z for z in found.sizes if z.cpu_ms() is not None][-1].hosts
            gl.say(f"a CPU target was missed: one more pair of bursts at {hosts} ghosts under py-spy")
            found.burst_profile = _profile_bursts(ctx, gl, hosts, tmp / "burst.txt")
        n = found.sizes[-1].hosts
        found.cold, found.cold_profile = gl.cold_start(n, profile=tmp / "cold.txt")
        c = found.cold
        gl.say(f"cold start into {n} ghosts: launch returned after {fmt(c.ready_s)} s{' (' + c.launch_error + ')' if c.launch_error else ''}, "
               f"{c.programming.count} of {c.programming.endpoints} entries programmed "
               + (f"after {c.programming.seconds:.2f} s" if c.programming.seconds is not None else c.programming.gave_up))
    finally:
        gl.close()


def _profile_bursts(ctx: BenchContext, gl: GhostLab, hosts: int, out: Path) -> profiles.Profile | None:
    """One more pair of bursts under py-spy (threads holding the GIL), not counted in the figures."""
    with profiles.PySpyRecording(ctx.spawned, gl.agent_pid(), out, rate=100, gil=True) as spy:
        for direction in ("forward", "reverse"):
            gl.burst(hosts, direction)
    return spy.profile

