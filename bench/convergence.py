"""Section 3: how soon a new container is reachable from another host.

For each run, `pyweave run <ip> busybox sleep 3600` on host A (rotating over every host but the
last), timed; the moment it returns, a pinger already running in a container on host B (the last
host) starts sending ICMP echo requests to the new address every 10 ms, and the time of the first
reply after `run` returned is the figure. `run` itself waits until every live peer's agent reports
having applied the change, so this measures whether that promise holds on the wire.
"""

from __future__ import annotations

import json
import subprocess
import time

from bench import plots
from bench.context import BenchContext
from bench.labsession import BenchError
from bench.machine import REPO
from bench.report import SectionResult, Table
from bench.stats import fmt, percentile

SUBNET = "10.30"  # 10.30.0.0/16: the pinger is .0.250, new containers .1.1 onwards
P50_TARGET_MS = 300.0
P99_TARGET_MS = 1000.0


def _address(i: int) -> str:
    return f"{SUBNET}.{1 + i // 250}.{1 + i % 250}"


def run(ctx: BenchContext) -> SectionResult:
    s = ctx.sizes
    session = ctx.session()
    lab = session.up()
    n = len(lab.hosts)
    res = SectionResult("convergence", "3. Convergence")
    res.method = (
        f"{s.convergence_runs} runs on a lab of {n} hosts. Each run: `pyweave run <ip>/16 busybox sleep 3600` on host A "
        f"(rotating over h1..h{max(1, n - 1)}), timed; as soon as it returns, a pinger already running in a container "
        f"on h{n} (host B) sends ICMP echo requests to the new address every 10 ms (`bench/icmp.py`, entered with "
        "`nsenter`), and the figure is the time from `run` returning to the first reply. "
        "`pyweave run` returns once every live peer's agent reports the change applied."
    )
    b = n - 1
    pinger_cid = session.run_container(b, f"{SUBNET}.0.250/16", "sleep", "3600")
    proc = ctx.spawned.start(
        session.in_container(pinger_cid) + session.python_module("bench.icmp", "--interval", "0.01", "--timeout", "5"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=session.helper_env(),
    )
    if proc.stdout.readline().strip() != "ready":
        raise BenchError(f"the pinger did not start: {proc.stderr.read()[-500:] if proc.poll() is not None else ''}")
    after: list[float] = []
    total: list[float] = []
    runs: list[float] = []
    failures: list[str] = []
    warnings = 0
    made: list[str] = []
    try:
        for i in range(s.convergence_runs):
            a = i % max(1, n - 1)
            address = _address(i)
            t0 = time.monotonic()
            w0 = time.time()
            r = lab.pyweave(a, "run", f"{address}/16", "busybox", "sleep", "3600")
            returned = time.time()
            took = time.monotonic() - t0
            if r.returncode != 0:
                failures.append(f"run {i + 1} on h{a + 1}: {r.stderr.strip()}")
                ctx.say("convergence", f"run {i + 1}: pyweave run failed: {r.stderr.strip()}")
                continue
            made.append(r.stdout.strip())
            if "have not yet applied" in r.stderr:
                warnings += 1
            proc.stdin.write(address + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise BenchError(f"the pinger exited: {proc.stderr.read()[-500:]}")
            reply = json.loads(line)
            runs.append(took)
            if reply["first_reply"] is None:
                failures.append(f"run {i + 1}: no reply from {address} within 5 s")
                ctx.say("convergence", f"run {i + 1}/{s.convergence_runs}: h{a + 1} {address}: no reply within 5 s")
                continue
            after.append((reply["first_reply"] - returned) * 1000)
            total.append((reply["first_reply"] - w0) * 1000)
            ctx.say("convergence", f"run {i + 1}/{s.convergence_runs}: h{a + 1} {address}: run {took:.2f} s, "
                                   f"first reply {after[-1]:.1f} ms after it returned ({reply['sent']} sent)")
    finally:
        ctx.spawned.stop(proc)
        if made:
            subprocess.run(["docker", "rm", "-f", *made], capture_output=True, timeout=120, check=False)

    table = Table(["figure", "p50", "p99", "max", "samples"])
    table.add("first reply after `pyweave run` returned (ms)", fmt(percentile(after, 50), 1), fmt(percentile(after, 99), 1),
              fmt(max(after) if after else None, 1), len(after))
    table.add("first reply after `pyweave run` started (ms)", fmt(percentile(total, 50), 0), fmt(percentile(total, 99), 0),
              fmt(max(total) if total else None, 0), len(total))
    table.add("`pyweave run` wall time (s)", fmt(percentile(runs, 50)), fmt(percentile(runs, 99)),
              fmt(max(runs) if runs else None), len(runs))
    res.tables.append(table)
    if failures:
        res.notes.append("Runs without a figure: " + "; ".join(failures))
    if warnings:
        res.notes.append(f"`pyweave run` warned {warnings} time(s) that a peer had not yet applied the change.")
    p50, p99 = percentile(after, 50), percentile(after, 99)
    ok = not failures
    res.check("time to first reply after run returned, p50", f"{p50:.1f} ms", f"<= {P50_TARGET_MS:.0f} ms",
              (p50 <= P50_TARGET_MS and ok) if after else None)
    res.check("time to first reply after run returned, p99", f"{p99:.1f} ms", f"<= {P99_TARGET_MS:.0f} ms",
              (p99 <= P99_TARGET_MS and ok) if after else None)
    png = plots.cdf(
        ctx.plot_path("convergence"),
        {"after run returned": after, "after run started": total},
        title=f"Time until a container on h{n} gets its first reply ({len(after)} runs, {n} hosts)",
        xlabel="milliseconds (log scale)", marks=[(P50_TARGET_MS, "p50 target"), (P99_TARGET_MS, "p99 target")],
        logx=True,
    )
    if png:
        res.plots.append((png.name, "convergence CDF"))
    else:
        res.notes.append(plots.MISSING)
    if any(c.met is False for c in res.checks):
        res.limits.append(
            f"The first reply came later than the target after `pyweave run` returned (p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms; failures: {len(failures)}). `run` waits for every live peer's progress report, "
            "so a late reply means a peer reported progress before its kernel was programmed, or the barrier "
            "timed out (warnings above)."
        )
    return res
