"""Section 5: memory and CPU of one agent (h2's), idle and while endpoints come and go elsewhere.

RSS is VmRSS (and the peak, VmHWM) from /proc/<pid>/status; CPU is utime+stime from
/proc/<pid>/stat over a window, all threads included. The churn is `bench/churn.py` in h2's
namespace: endpoint records for a ghost host on the network of h2's data-path container, so the
agent programs (and removes) an FDB and a neighbour entry for each.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

from bench import profiles
from bench.context import BenchContext
from bench.labsession import PAIR_SUBNET, BenchError
from bench.procs import (
    CLOCK_TICKS,
    PROBE_INTERVAL_S,
    PROBER_THREAD,
    pid_stat,
    prober_ticks,
    prober_wakeups,
    status_fields,
    thread_ticks,
    vm_hwm_kb,
)
from bench.report import SectionResult, Table
from bench.stats import fmt

RSS_TARGET_MB = 80.0
IDLE_CPU_TARGET = 1.0  # percent of one core
CHURN_RATE = 20.0  # endpoint writes per second


def _store_revision(session) -> int | None:
    r = session.up().etcdctl(0, "endpoint", "status", "-w", "json", check=False)
    try:
        return int(json.loads(r.stdout)[0]["Status"]["header"]["revision"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _wait_quiet(session, *, quiet_s: float, timeout: float) -> float:
    """Wait until the store's revision has not moved for quiet_s: the earlier sections remove their
    containers at the end, and the agents' clean-up of those must not count as idle. Returns the wait."""
    t0 = time.monotonic()
    last, since = _store_revision(session), time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        rev = _store_revision(session)
        if rev != last:
            last, since = rev, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return time.monotonic() - t0


def _sample(pid: int) -> tuple[int, int]:
    got = pid_stat(pid)
    if got is None:
        raise BenchError(f"agent pid {pid} is gone")
    return got


def run(ctx: BenchContext) -> SectionResult:
    with tempfile.TemporaryDirectory(prefix="pyweave-bench-") as tmp:
        return _measure(ctx, Path(tmp))


def _measure(ctx: BenchContext, tmp: Path) -> SectionResult:
    s = ctx.sizes
    session = ctx.session()
    lab = session.up()
    session.pair()  # h2 needs a local container on the churned network
    pid = lab.agent_pid(1)
    if pid is None:
        raise BenchError("h2's agent pid file is missing")
    res = SectionResult("agent", "5. Agent cost")
    res.method = (
        f"h2's agent (pid file `agent.pid`), {len(lab.hosts)} hosts in the lab, one local container on the churned "
        f"network. Idle: {s.agent_idle_seconds:g} s window, once the store's revision has stood still for a few "
        f"seconds. Churn: {s.agent_churn_endpoints} "
        f"endpoint records of a ghost host written at {CHURN_RATE:g}/s on {PAIR_SUBNET}.0/24, then deleted at the same "
        "rate (`bench/churn.py`); the window runs from the first write until h2's kernel has removed the last FDB "
        "entry. CPU is utime+stime of the whole process in percent of one core; the link prober's share is its "
        f"thread's (`{PROBER_THREAD}`, /proc/<pid>/task/<tid>/stat), the rest is the agent's other threads."
    )
    settled = _wait_quiet(session, quiet_s=1.0 if ctx.quick else 5.0, timeout=30.0 if ctx.quick else 120.0)
    ctx.say("agent", f"the store was quiet after {settled:.1f} s (the earlier sections' containers are gone)")
    rss_idle_samples: list[int] = []
    spy_out = tmp / "agent-idle.txt"
    with profiles.PySpyRecording(ctx.spawned, pid, spy_out, rate=100, gil=False) as idle_spy:
        cpu0, _rss = _sample(pid)
        probe0, threads0, wakes0 = prober_ticks(pid), thread_ticks(pid), prober_wakeups(pid)
        t0 = time.monotonic()
        end = t0 + s.agent_idle_seconds
        while time.monotonic() < end:
            rss_idle_samples.append(_sample(pid)[1])
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
        cpu1, rss1 = _sample(pid)
        probe1, threads1, wakes1 = prober_ticks(pid), thread_ticks(pid), prober_wakeups(pid)
        idle_window = time.monotonic() - t0
    idle_cpu = 100.0 * (cpu1 - cpu0) / CLOCK_TICKS / idle_window
    idle_prober = 100.0 * (probe1 - probe0) / CLOCK_TICKS / idle_window
    prober_wakes = (wakes1 - wakes0) / idle_window
    rss_idle = max(rss_idle_samples + [rss1]) / 1024
    ctx.say("agent", f"idle: {idle_cpu:.2f} % of a core over {idle_window:.1f} s (the prober {idle_prober:.2f} %), "
                     f"RSS {rss_idle:.1f} MB")

    rss_churn: list[int] = []
    stop = threading.Event()

    def watch_rss() -> None:
        while not stop.is_set():
            got = pid_stat(pid)
            if got:
                rss_churn.append(got[1])
            stop.wait(0.1)

    sampler = threading.Thread(target=watch_rss, daemon=True)
    churn_spy = profiles.PySpyRecording(ctx.spawned, pid, spy_out.with_name("agent-churn.txt"), rate=100, gil=True)
    c0, _ = _sample(pid)
    p0 = prober_ticks(pid)
    t0 = time.monotonic()
    sampler.start()
    churn_spy.__enter__()
    try:
        r = session.run(
            session.in_host(1) + session.python_module(
                "bench.churn", "--store", session.store_url, "--subnet", f"{PAIR_SUBNET}.0/24",
                "--count", str(s.agent_churn_endpoints), "--rate", str(CHURN_RATE), "--ghost", f"{lab.prefix}-ghost",
            ),
            env=session.helper_env(), timeout=300,
        )
    finally:
        stop.set()
        sampler.join()
        churn_spy.__exit__(None, None, None)
    c1, _ = _sample(pid)
    p1 = prober_ticks(pid)
    churn_window = time.monotonic() - t0
    churn = json.loads(r.stdout.strip().splitlines()[-1])
    churn_cpu = 100.0 * (c1 - c0) / CLOCK_TICKS / churn_window
    events = 2 * s.agent_churn_endpoints
    cpu_ms_per_event = 1000.0 * (c1 - c0) / CLOCK_TICKS / events
    prober_ms_per_event = 1000.0 * (p1 - p0) / CLOCK_TICKS / events
    rss_peak = max(rss_churn or [0]) / 1024
    hwm = (vm_hwm_kb(pid) or 0) / 1024
    programmed = churn["programmed"] - churn["start"] if churn["programmed"] else None
    lag_add = churn["programmed"] - churn["created"] if churn["programmed"] else None
    lag_del = churn["unprogrammed"] - churn["deleted"] if churn["unprogrammed"] else None
    ctx.say("agent", f"churn: {churn_cpu:.1f} % of a core over {churn_window:.1f} s, RSS peak {rss_peak:.1f} MB")

    table = Table(["figure", "value"])
    launch = session.launch_rss_kb.get(1)
    if launch:
        table.add("RSS right after `pyweave launch`", f"{launch / 1024:.1f} MB")
    table.add("RSS idle (max of samples)", f"{rss_idle:.1f} MB")
    table.add("RSS during churn (max of samples)", f"{rss_peak:.1f} MB")
    table.add("RSS peak since start (VmHWM)", f"{hwm:.1f} MB")
    table.add(f"CPU idle ({idle_window:.0f} s window)", f"{idle_cpu:.2f} % of a core")
    table.add(f"... of which the link prober's thread (a hello every {PROBE_INTERVAL_S} s to each of the other hosts)",
              f"{idle_prober:.2f} % of a core")
    table.add("... its wake-ups (voluntary context switches of the thread)", f"{prober_wakes:.1f} a second")
    table.add("... the rest of the agent", f"{idle_cpu - idle_prober:.2f} % of a core")
    table.add(f"CPU during churn ({churn_window:.0f} s window, {events} endpoint events)", f"{churn_cpu:.1f} % of a core")
    table.add("CPU per endpoint event during churn", f"{cpu_ms_per_event:.1f} ms")
    table.add("... of which the link prober's thread (it probes whether or not events come)", f"{prober_ms_per_event:.1f} ms")
    table.add(f"all {s.agent_churn_endpoints} FDB entries programmed, after the first write", f"{fmt(programmed)} s")
    table.add("... after the last write", f"{fmt(lag_add)} s")
    table.add("all removed, after the last delete", f"{fmt(lag_del)} s")
    res.tables.append(table)
    by_thread = {name: ticks - threads0.get(name, 0) for name, ticks in threads1.items()}
    busy = sorted(((t, name) for name, t in by_thread.items() if t > 0), reverse=True)
    if busy:
        res.notes.append(
            "Idle CPU by thread (the kernel's thread names; the agent's Python threads but the prober share the "
            "process's name): " + ", ".join(f"`{name}` {100.0 * t / CLOCK_TICKS / idle_window:.2f} %" for t, name in busy)
            + " of a core.")
    rss_max = max(rss_idle, rss_peak, hwm)
    res.check("agent RSS (largest of idle, churn and VmHWM)", f"{rss_max:.1f} MB", f"<= {RSS_TARGET_MB:.0f} MB",
              rss_max <= RSS_TARGET_MB)
    res.check("agent CPU when idle", f"{idle_cpu:.2f} % of a core", f"<= {IDLE_CPU_TARGET:g} %", idle_cpu <= IDLE_CPU_TARGET)
    if churn["programmed"] is None or churn["unprogrammed"] is None:
        res.notes.append("The agent did not program (or remove) every churned entry within the helper's 60 s timeout.")
    for spy, what in ((idle_spy, f"idle, {idle_window:.0f} s, threads not waiting"),
                      (churn_spy, f"during the churn, {churn_window:.0f} s, threads holding the GIL")):
        prof = spy.profile
        if prof is not None and prof.samples:
            res.notes.append(f"py-spy profile of the agent ({what}; {prof.samples} samples at 100 Hz):\n\n"
                             + prof.table(top=10).markdown())
        elif profiles.pyspy() is None:
            res.notes.append(profiles.PYSPY_MISSING)
            break
        else:
            res.notes.append(f"py-spy profile of the agent ({what}): no sample, the agent never ran in that window.")
    if idle_cpu > IDLE_CPU_TARGET:
        res.limits.append(
            f"The idle agent used {idle_cpu:.2f} % of a core, of which its link prober's thread {idle_prober:.2f} % "
            f"(a hello every {PROBE_INTERVAL_S} s to each of the {len(lab.hosts) - 1} other hosts, and theirs). The "
            "py-spy profile in section 5 shows where the rest goes: the periodic full resync (every "
            "`resync_interval`), the store membership check and the lease keep-alive."
        )
    if rss_max > RSS_TARGET_MB:
        res.limits.append(_rss_breakdown(session, pid, rss_max, launch))
    return res


def _rss_breakdown(session, pid: int, rss_max: float, launch_kb: int | None) -> str:
    """What the agent's memory is made of: RSS of an interpreter after each group of imports."""
    code = (
        "import json, importlib\n"
        "def rss():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1]) / 1024\n"
        "out = [('interpreter', rss())]\n"
        "for mod in ['grpc', 'pyetcd', 'docker', 'pyroute2', 'typer', 'pyweave.agent']:\n"
        "    importlib.import_module(mod); out.append((mod, rss()))\n"
        "print(json.dumps(out))\n"
    )
    import sys

    r = session.run(session.in_host(1) + [sys.executable, "-c", code], check=False, env=session.helper_env())
    try:
        steps = json.loads(r.stdout)
    except ValueError:
        return f"The agent's RSS is {rss_max:.1f} MB (import breakdown failed: {r.stderr.strip()[-200:]})."
    fields = status_fields(pid, "RssAnon", "RssFile", "RssShmem", "Threads")
    lines = [f"The agent's RSS reached {rss_max:.1f} MB"
             + (f", from {launch_kb / 1024:.1f} MB right after `pyweave launch` (it grew while the earlier sections "
                "ran containers on this host)" if launch_kb else "")
             + f". Its /proc status now: {', '.join(f'{k} {v}' for k, v in fields.items())}. "
             "What the imports alone cost, in a fresh interpreter (cumulative):", "",
             "| after importing | RSS MB | added MB |", "| --- | --- | --- |"]
    prev = 0.0
    for name, mb in steps:
        lines.append(f"| {name} | {mb:.1f} | {mb - prev:+.1f} |")
        prev = mb
    grpc = next((mb - before for (name, mb), (_n, before) in zip(steps[1:], steps, strict=False) if name == "grpc"), 0.0)
    lines += ["", f"So about {steps[-1][1]:.0f} MB is the interpreter and the libraries the agent imports before it does "
                  f"anything (grpc alone {grpc:.0f} MB); the rest of its RSS is heap it allocated at run time."]
    return "\n".join(lines)
