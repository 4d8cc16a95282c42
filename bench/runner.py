"""`python -m bench`: run the sections, print progress, write the report.

    python -m bench                         every section at full sizes (about 30 min on 2 cores)
    python -m bench --quick                 the CI smoke size: every code path, tiny samples
    python -m bench --only scale            one section (comma-separated or repeated for several)
    python -m bench --out /tmp/perf.md      the report elsewhere (PNG plots go beside it)

Needs root (namespaces), a Docker daemon started with --bridge=none --iptables=false, the etcd and
iperf3 binaries and busybox (scripts/setup.sh installs them). Exit status: 0 when every section ran
(missed targets are figures, not failures), 1 when a section failed, 2 for a bad invocation or a
missing prerequisite, 130 when interrupted. The lab and every process are removed in all cases.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench import machine, report
from bench.context import BenchContext
from bench.report import SectionResult
from bench.sizes import FULL, QUICK

SECTIONS = ("throughput", "latency", "convergence", "cli", "agent", "scale", "ghosts", "routing", "encryption", "dns")
LAB_SECTIONS = ("throughput", "latency", "convergence", "cli", "agent", "routing", "encryption", "dns")
DEFAULT_OUT = machine.REPO / "docs" / "performance.md"
# Issue 6 asked for under 15 minutes with six sections; with ten (200 simulated hosts in section 6,
# relays in 8, the tunnel in 9, a DNS flood of 30 s in 10) a full run needs about half an hour on 2 cores.
FULL_BUDGET_S = 35 * 60


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="pyweave benchmarks: data path, convergence, CLI overhead, agent cost, control-plane scale, one host at scale.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes that only exercise the code paths (CI smoke)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report path (default {DEFAULT_OUT.relative_to(machine.REPO)})")
    parser.add_argument(
        "--only", action="append", default=[], metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)}); comma-separated or repeated",
    )
    args = parser.parse_args(argv)
    only = [w.strip() for item in args.only for w in item.split(",") if w.strip()]
    unknown = [w for w in only if w not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if not only or s in only]
    return args


def missing_prerequisites(sections: list[str]) -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root: the bench creates network namespaces and containers")
    needs = {"etcd": "etcd (apt-get install etcd-server)"}
    if any(s in LAB_SECTIONS for s in sections):
        needs |= {
            "docker": "docker (scripts/dockerd.sh start)",
            "iperf3": "iperf3 (apt-get install iperf3)",
            "busybox": "busybox (apt-get install busybox-static)",
            "nsenter": "nsenter (util-linux)",
            "etcdctl": "etcdctl (apt-get install etcd-client)",
        }
    if "ghosts" in sections:  # a lab of its own: one host, one busybox container
        needs |= {"docker": "docker (scripts/dockerd.sh start)", "busybox": "busybox (apt-get install busybox-static)"}
    for binary, what in needs.items():
        if shutil.which(binary) is None:
            problems.append(f"missing {what}")
    if "docker" in needs and shutil.which("docker"):
        r = subprocess.run(["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append("no Docker daemon answers: start one with scripts/dockerd.sh start")
    return problems


_stopping = False


def _interrupt(signum: int, _frame) -> None:
    """First Ctrl-C or SIGTERM stops the run (cleanup happens in `finally`); later ones are
    ignored so that nothing interrupts the cleanup."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    print(f"\n{signal.Signals(signum).name} received: stopping and cleaning up", flush=True)
    raise KeyboardInterrupt


def _run_section(ctx: BenchContext, key: str, title: str, fn) -> SectionResult:
    started = time.monotonic()
    ctx.say(key, "starting")
    try:
        result = fn()
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - one failed section must not lose the others' figures
        traceback.print_exc()
        result = SectionResult(key, title, error=f"{type(err).__name__}: {err}")
    result.seconds = time.monotonic() - started
    verdicts = ", ".join(f"{c.verdict.strip('*')}" for c in result.checks) or ("FAILED" if result.error else "done")
    ctx.say(key, f"done in {result.seconds:.0f} s ({verdicts})")
    return result


TITLES = {
    "throughput": "1. Throughput",
    "latency": "2. Latency",
    "convergence": "3. Convergence",
    "cli": "4. CLI overhead",
    "agent": "5. Agent cost",
    "scale": "6. Control-plane scale",
    "ghosts": "7. One host at cluster scale",
    "routing": "8. Routing",
    "encryption": "9. Encryption",
    "dns": "10. DNS under load",
}


def run(ctx: BenchContext, sections: list[str]) -> list[SectionResult]:
    from bench import agent_cost, cli_overhead, convergence, datapath, dnsflood, encryption, ghosts, routing, scale

    results: list[SectionResult] = []
    wanted_dp = [s for s in ("throughput", "latency") if s in sections]
    if wanted_dp:
        try:
            with datapath.DataPath(ctx) as dp:
                for key in wanted_dp:
                    fn = datapath.throughput if key == "throughput" else datapath.latency
                    results.append(_run_section(ctx, key, TITLES[key], lambda fn=fn: fn(ctx, dp)))
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - setting the paths up failed
            traceback.print_exc()
            for key in wanted_dp:
                if not any(r.key == key for r in results):
                    results.append(SectionResult(key, TITLES[key], error=f"{type(err).__name__}: {err}"))
    runners = {
        "convergence": lambda: convergence.run(ctx),
        "cli": lambda: cli_overhead.run(ctx),
        "agent": lambda: agent_cost.run(ctx),
    }
    for key in ("convergence", "cli", "agent"):
        if key in sections:
            results.append(_run_section(ctx, key, TITLES[key], runners[key]))
    if "scale" in sections:
        ctx.close_lab()  # the simulation wants both CPUs to itself
        results.append(_run_section(ctx, "scale", TITLES["scale"], lambda: scale.run(ctx)))
    if "ghosts" in sections:
        ctx.close_lab()  # one agent in a lab of its own: the shared lab's agents would share its CPUs
        results.append(_run_section(ctx, "ghosts", TITLES["ghosts"], lambda: ghosts.run(ctx)))
    if "routing" in sections:
        ctx.close_lab()  # a lab of its own (4 hosts, links cut and restored)
        results.append(_run_section(ctx, "routing", TITLES["routing"], lambda: routing.run(ctx)))
    if "encryption" in sections:
        ctx.close_lab()  # two labs of its own (plain and --password)
        results.append(_run_section(ctx, "encryption", TITLES["encryption"], lambda: encryption.run(ctx)))
    if "dns" in sections:
        ctx.close_lab()  # a lab of its own (one host, its DNS flooded)
        results.append(_run_section(ctx, "dns", TITLES["dns"], lambda: dnsflood.run(ctx)))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problems = missing_prerequisites(args.sections)
    if problems:
        for p in problems:
            print(f"bench: {p}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sizes = QUICK if args.quick else FULL
    out = args.out.resolve()
    lab_hosts = sizes.convergence_hosts if "convergence" in args.sections else 2
    ctx = BenchContext(quick=args.quick, sizes=sizes, out=out, lab_hosts=lab_hosts,
                       budget_s=None if args.quick else FULL_BUDGET_S)
    started_at = datetime.datetime.now(datetime.UTC)
    load_at_start = machine.load_average()
    commit_at_start = machine.commit()
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx.say("bench", f"sections {', '.join(args.sections)}; {'quick (smoke) sizes' if args.quick else 'full sizes'}; "
                     f"report {out}")
    results: list[SectionResult] = []
    try:
        results = run(ctx, args.sections)
    except KeyboardInterrupt:
        ctx.say("bench", "interrupted; no report written")
        return 130
    finally:
        try:
            ctx.close_lab()
        finally:
            ctx.spawned.close()
    command = ["python", "-m", "bench"] + (["--quick"] if args.quick else [])
    if args.out.resolve() != DEFAULT_OUT:
        command += ["--out", str(args.out)]
    if len(args.sections) < len(SECTIONS):
        command += ["--only", ",".join(args.sections)]
    text = report.render(
        results,
        machine=machine.describe(commit_at_start) + [
            ("load average (1 min) at start / end", f"{load_at_start} / {machine.load_average()}")],
        command=command,
        quick=args.quick,
        started=started_at,
        seconds=time.monotonic() - ctx.started,
        skipped=[s for s in SECTIONS if s not in args.sections],
    )
    report.write(out, text)
    ctx.say("bench", f"wrote {out}")
    for r in results:
        for c in r.checks:
            print(f"  {r.title:24} {c.what}: {c.figure} (target {c.target}) {c.verdict.strip('*')}")
        if r.error:
            print(f"  {r.title:24} FAILED: {r.error}")
    return 1 if any(r.error for r in results) else 0
