"""Section 10: a container floods the host's DNS (issue 15): the agent keeps attaching containers.

A lab of its own, one host (it serves the store). Container L (10.42.0.1/24) sends UDP queries for
its own name at 1,000 a second from one socket (`bench.dnsload`, run with the host's Python in L's
network namespace) to the agent's DNS (pyweave/dns.py: a pool of `DEFAULT_WORKERS` workers behind a
queue, and a per-source token bucket of `DEFAULT_RATE` queries a second with a burst of
`DEFAULT_BURST`; over either limit a query is dropped). Figures: queries answered a second, query
latency p50/p99, queries not answered (dropped: over the rate limit or no worker free); the time
for `pyweave run` of a new container on the same host to return and for L to ping it, without the
load and during it; the agent's threads (/proc/<pid>/task) before, during (sampled every 0.1 s,
the highest) and after the load; its CPU during the load.

The lab is removed whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass

from bench.context import BenchContext
from bench.labsession import IMAGE, BenchError, LabSession
from bench.machine import REPO
from bench.report import SectionResult, Table
from bench.stats import fmt
from pyweave.dns import DEFAULT_BURST, DEFAULT_QUEUE, DEFAULT_RATE, DEFAULT_WORKERS
from pyweave.dnsnames import SERVICE_ADDRESS

SUBNET = "10.42.0"
RATE = 1000.0
THREAD_SLACK = 4  # threads beyond the pool that are not a leak: a timer, a short-lived helper
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class DnsSizes:
    seconds: float  # of load
    run_after: float  # seconds into the load when the new container is run


FULL = DnsSizes(seconds=30.0, run_after=10.0)
QUICK = DnsSizes(seconds=4.0, run_after=1.0)


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


class ThreadSampler:
    """The highest thread count of a process, sampled every `interval` s in a thread of ours."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.highest = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.highest = max(self.highest, threads(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def attach_and_ping(session: LabSession, load: str, addr: str, timeout: float = 30.0) -> tuple[float, float]:
    """`pyweave run` of a new container at addr on the lab's host: (seconds for run to return,
    seconds from the start until the load container's ping of it is answered); nan if never."""
    started = time.monotonic()
    session.run_container(0, f"{addr}/24", "sleep", "3600")
    returned = time.monotonic() - started
    deadline = started + timeout
    while time.monotonic() < deadline:
        r = session.run(["docker", "exec", load, "ping", "-c", "1", "-W", "1", addr], check=False, timeout=10)
        if r.returncode == 0:
            return returned, time.monotonic() - started
    return returned, float("nan")


def flood(session: LabSession, load: str, name: str, seconds: float) -> subprocess.Popen:
    """Start the load generator in the load container's network namespace."""
    argv = session.in_container(load) + session.python_module(
        "bench.dnsload", "--server", SERVICE_ADDRESS, "--name", name, "--rate", str(RATE), "--seconds", str(seconds))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=session.helper_env())


def measure(session: LabSession, sz: DnsSizes, say) -> dict:
    lab = session.up()
    name = f"{lab.prefix}-dnsload"
    r = lab.pyweave(0, "run", f"{SUBNET}.1/24", "--name", name, IMAGE, "sleep", "3600")
    load = r.stdout.strip()
    if r.returncode != 0 or len(load) != 64:
        raise BenchError(f"pyweave run of the load container failed: {r.stderr.strip() or r.stdout}")
    pid = lab.agent_pid(0)
    if pid is None:
        raise BenchError("the agent of the lab's host is not running")
    quiet = attach_and_ping(session, load, f"{SUBNET}.2")
    say(f"without load: run returned in {quiet[0]:.2f} s, pingable after {quiet[1]:.2f} s")
    before = threads(pid)
    proc = flood(session, load, f"{name}.weave.local.", sz.seconds)
    c0, t0 = cpu_s(pid), time.monotonic()
    try:
        with ThreadSampler(pid) as sampler:
            time.sleep(sz.run_after)  # a fixed point into the load, not a wait for a condition
            loaded = attach_and_ping(session, load, f"{SUBNET}.3")
            say(f"during the load: run returned in {loaded[0]:.2f} s, pingable after {loaded[1]:.2f} s")
            out, err = proc.communicate(timeout=sz.seconds + 60)
        c1, t1 = cpu_s(pid), time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"the load generator failed: {err.strip()[-500:]}")
    result = json.loads(out)
    after = threads(pid)
    return {"load": result, "quiet": quiet, "loaded": loaded, "threads": (before, sampler.highest, after),
            "cpu": 100 * (c1 - c0) / max(1e-9, t1 - t0), "samples": sampler.samples}


def run(ctx: BenchContext) -> SectionResult:
    sz = QUICK if ctx.quick else FULL
    res = SectionResult("dns", "10. DNS under load")
    res.method = (
        f"A lab of its own, one host (it serves the store). Container L ({SUBNET}.1/24) sends UDP queries for its own "
        f"name (`bench.dnsload`, the host's Python in L's network namespace) at {RATE:g} a second for {sz.seconds:g} s, "
        f"from one socket, to the agent's DNS at {SERVICE_ADDRESS}. The DNS answers with {DEFAULT_WORKERS} workers "
        f"behind a queue of {DEFAULT_QUEUE}, after a per-source limit of {DEFAULT_RATE:g} queries a second (burst "
        f"{DEFAULT_BURST:g}); a query over either limit is dropped, so from one source most of a 1,000 a second flood "
        f"is expected to go unanswered. {sz.run_after:g} s into the load, `pyweave run` of a new container on the same "
        "host; timed: until it returns, and until L's ping of it is answered (busybox ping every second at most); the "
        "same before the load. Agent threads: /proc/<pid>/task, before, the highest of samples every 0.1 s during the "
        "load, after; agent CPU: utime + stime over the load, in % of one core."
    )
    say = lambda m: ctx.say("dns", m)  # noqa: E731
    session = LabSession(1, say)
    loads = [os.getloadavg()[0]]
    try:
        session.up()
        got = measure(session, sz, say)
        loads.append(os.getloadavg()[0])
    finally:
        session.close()
    load = got["load"]
    answered_per_s = load["answered"] / max(1e-9, load["seconds"])
    dropped = load["sent"] - load["answered"]
    t = Table(["figure", "value"], caption=f"{RATE:g} queries a second from one container for {sz.seconds:g} s")
    t.add("queries sent (rate achieved)", f"{load['sent']} ({load['sent'] / max(1e-9, load['seconds']):.0f}/s)")
    t.add("queries answered (per second)", f"{load['answered']} ({answered_per_s:.0f}/s)")
    t.add("answers by rcode", ", ".join(f"{k}: {v}" for k, v in load["rcodes"].items()) or "none")
    t.add("not answered (dropped: over the source's rate limit, or no worker free)", f"{dropped}")
    t.add("query latency p50 / p99 (answered)", f"{fmt(load['p50_ms'] or float('nan'), 2)} / {fmt(load['p99_ms'] or float('nan'), 2)} ms")
    t.add("configured limit per source", f"{DEFAULT_RATE:g}/s, burst {DEFAULT_BURST:g}; {DEFAULT_WORKERS} workers, queue {DEFAULT_QUEUE}")
    before, highest, after = got["threads"]
    t.add("agent threads before / highest during / after", f"{before} / {highest} / {after} ({got['samples']} samples)")
    t.add("agent CPU during the load", f"{got['cpu']:.0f} % of a core")
    res.tables.append(t)
    a = Table(["", "`pyweave run` returned", "pingable from L"], caption="A new container on the same host")
    for what, (ret, ping) in (("without load", got["quiet"]), ("during the load", got["loaded"])):
        a.add(what, f"{ret:.2f} s", "never (30 s)" if ping != ping else f"{ping:.2f} s")
    res.tables.append(a)
    attached = got["loaded"][1] == got["loaded"][1]
    res.check("new container attached and pingable during the load", "yes" if attached else "no", "yes", attached)
    bound = before + DEFAULT_WORKERS + THREAD_SLACK
    res.check("agent threads during the load (highest)", f"{highest} (before: {before})",
              f"<= {bound} (before + {DEFAULT_WORKERS} workers + {THREAD_SLACK})", highest <= bound)
    res.notes.append("The machine's 1-minute load average (2 CPUs, shared): "
                     + ", ".join(f"{w} {x:.1f}" for w, x in zip(("at the start", "after the measurements"), loads)) + ".")
    return res
