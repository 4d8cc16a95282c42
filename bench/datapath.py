"""Sections 1 and 2: throughput (iperf3) and latency (ping) on four paths between h1 and h2.

Paths, from h2 to h1:
    underlay        the host namespaces' own addresses (no overlay at all)
    vxlan-host      hand-built VXLAN device on each host (no bridge, no veth); latency only, to keep
                    the run within its time budget
    vxlan-ns        hand-built VXLAN reached from a namespace through veth + bridge: the reference
    pyweave         container to container over pyweave's overlay

iperf3 and ping are the host's binaries (busybox has no iperf3), run with `ip netns exec` in host
and stand-in namespaces and with `nsenter -t <pid> -n` in a container's. Repeats are interleaved
across paths, so that a slow moment of the machine does not land on one path only.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field

from bench import plots
from bench.context import BenchContext
from bench.handbuilt import HandBuiltVxlan
from bench.labsession import BenchError, LabSession
from bench.report import SectionResult, Table
from bench.stats import fmt, median, percentile, ratio

IPERF_PORT = "5201"
REFERENCE = "vxlan-ns"
THROUGHPUT_TARGET = 0.95
LATENCY_TARGET = 1.1
LATENCY_ROUNDS = 4
RTT_RE = re.compile(r"time=([0-9.]+) ms")


@dataclass
class Path:
    key: str
    label: str
    server: list[str]  # argv prefix that enters the server's (h1 side) namespace
    client: list[str]  # argv prefix for the client's (h2 side) namespace
    address: str  # the server's address on this path
    throughput: bool = True  # iperf3 too, or ping only
    gbps: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # (sender %, receiver %)
    rtts: list[float] = field(default_factory=list)
    sent: int = 0


def build_paths(session: LabSession, ref: HandBuiltVxlan) -> list[Path]:
    a, b = session.pair()
    h1 = session.host(0)
    return [
        Path("underlay", "underlay, host to host", session.in_host(0), session.in_host(1), h1.address),
        Path("vxlan-host", "hand-built VXLAN on the hosts", session.in_host(0), session.in_host(1), ref.direct_ip(0),
             throughput=False),
        Path("vxlan-ns", "hand-built VXLAN, namespace via veth+bridge (reference)",
             session.in_netns(ref.standins[0]), session.in_netns(ref.standins[1]), ref.bridged_ip(0)),
        Path("pyweave", "pyweave, container to container", session.in_container(a), session.in_container(b), "10.9.0.1"),
    ]


def _iperf(ctx: BenchContext, path: Path, streams: int, seconds: int) -> tuple[float, float, float]:
    argv = path.client + ["iperf3", "-c", path.address, "-p", IPERF_PORT, "-t", str(seconds), "-P", str(streams), "-J"]
    last = ""
    for attempt in range(5):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        try:
            data = json.loads(r.stdout)
        except ValueError:
            data = {"error": (r.stderr or r.stdout).strip()[-300:]}
        if "error" not in data:
            end = data["end"]
            cpu = end.get("cpu_utilization_percent", {})
            return end["sum_received"]["bits_per_second"] / 1e9, cpu.get("host_total", 0.0), cpu.get("remote_total", 0.0)
        last = data["error"]
        time.sleep(0.3 * (attempt + 1))  # the server may still be starting, or busy with the last test
    raise BenchError(f"iperf3 on path {path.key} failed: {last}")


def _ping(path: Path, count: int, interval: float) -> tuple[list[float], int]:
    argv = path.client + ["busybox", "ping", "-c", str(count), "-i", str(interval), "-W", "2", path.address]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=count * interval + 30)
    return [float(x) for x in RTT_RE.findall(r.stdout)], count


class DataPath:
    """Sets the paths up once for both sections, and tears them down."""

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.session = ctx.session()
        self.ref = HandBuiltVxlan(self.session, lambda m: ctx.say("datapath", m))
        self.paths: list[Path] = []
        self._servers: list = []

    def __enter__(self) -> DataPath:
        self.ref.__enter__()
        try:
            self.paths = build_paths(self.session, self.ref)
            for p in self.paths:  # one warm-up ping: underlay ARP, the first packet's path setup
                subprocess.run(p.client + ["busybox", "ping", "-c", "3", "-i", "0.05", "-W", "2", p.address],
                               capture_output=True, timeout=30)
        except BaseException:
            self.ref.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in self._servers:
            self.ctx.spawned.stop(proc)
        self._servers.clear()
        self.ref.__exit__()

    def start_servers(self) -> None:
        for p in (p for p in self.paths if p.throughput):
            self._servers.append(self.ctx.spawned.start(p.server + ["iperf3", "-s", "-p", IPERF_PORT]))
        time.sleep(0.5)


def throughput(ctx: BenchContext, dp: DataPath) -> SectionResult:
    s = ctx.sizes
    res = SectionResult("throughput", "1. Throughput")
    res.method = (
        f"iperf3 TCP from h2 to h1, {s.throughput_seconds} s per test, "
        f"{' and '.join(str(n) for n in s.throughput_streams)} stream(s) (`-P`), {s.throughput_repeats} repeat(s), "
        "median; repeats interleaved across paths. Reference: the hand-built VXLAN reached from a namespace "
        "through veth and bridge (pyweave's topology, made with `ip` by hand). Overlay MTU "
        f"{dp.ref.mtu} on every overlay path. Sender and receiver CPU are iperf3's own figures "
        "(all of it shares the machine's CPUs: client, server and both kernels' softirq work)."
    )
    dp.start_servers()
    paths = [p for p in dp.paths if p.throughput]
    for rep in range(s.throughput_repeats):
        for streams in s.throughput_streams:
            for p in paths:
                g, snd, rcv = _iperf(ctx, p, streams, s.throughput_seconds)
                p.gbps.setdefault(streams, []).append(g)
                p.cpu.setdefault(streams, []).append((snd, rcv))
                ctx.say("throughput", f"repeat {rep + 1}/{s.throughput_repeats} {p.key:10} -P {streams}: {g:.2f} Gbit/s")
    ref = next(p for p in paths if p.key == REFERENCE)
    pw = next(p for p in paths if p.key == "pyweave")
    table = Table(["path", "streams", "median Gbit/s", "min-max", "sender CPU %", "receiver CPU %", "ratio to reference"])
    for streams in s.throughput_streams:
        for p in paths:
            vals = p.gbps[streams]
            m = median(vals)
            table.add(
                p.label, streams, fmt(m), f"{min(vals):.2f}-{max(vals):.2f}",
                fmt(median([c[0] for c in p.cpu[streams]]), 0), fmt(median([c[1] for c in p.cpu[streams]]), 0),
                fmt(ratio(m, median(ref.gbps[streams])), 3),
            )
    res.tables.append(table)
    missed = []
    for streams in s.throughput_streams:
        r = ratio(median(pw.gbps[streams]), median(ref.gbps[streams]))
        c = res.check(
            f"pyweave throughput, {streams} stream(s), against the hand-built VXLAN",
            f"{median(pw.gbps[streams]):.2f} Gbit/s = {r:.3f} x reference",
            f">= {THROUGHPUT_TARGET} x", r >= THROUGHPUT_TARGET,
        )
        if not c.met:
            missed.append(streams)
    diffs = configuration_differences(dp.session, dp)
    if diffs is not None:
        if diffs.rows:
            res.tables.append(diffs)
        else:
            res.notes.append("pyweave's VXLAN device, bridge and container veth on h1 have the same kernel settings "
                             "as the hand-built reference's (`ip -d link`).")
    png = plots.throughput_bars(
        ctx.plot_path("throughput"), {p.key: p.gbps for p in paths},
        title=f"TCP throughput h2 -> h1 (iperf3, {s.throughput_seconds} s x {s.throughput_repeats})",
    )
    if png:
        res.plots.append((png.name, "throughput bars per path"))
    else:
        res.notes.append(plots.MISSING)
    if missed:
        lines = [
            f"pyweave's overlay reached less than {THROUGHPUT_TARGET} x the hand-built VXLAN with "
            f"{', '.join(map(str, missed))} stream(s). The data path is the kernel's in both cases (pyweave "
            "only configures it), so the profile that matters is the CPU: iperf3's own counters, per path:",
            "",
            "| path | streams | sender CPU % | receiver CPU % | Gbit/s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for streams in missed:
            for p in paths:
                lines.append(
                    f"| {p.key} | {streams} | {median([c[0] for c in p.cpu[streams]]):.0f} | "
                    f"{median([c[1] for c in p.cpu[streams]]):.0f} | {median(p.gbps[streams]):.2f} |"
                )
        for streams in missed:
            mine, theirs = pw.gbps[streams], ref.gbps[streams]
            if max(mine) >= min(theirs):
                lines += ["", f"With {streams} stream(s) the repeats overlap: pyweave {min(mine):.2f}-{max(mine):.2f} "
                              f"Gbit/s, reference {min(theirs):.2f}-{max(theirs):.2f} Gbit/s. With "
                              f"{len(mine)} repeats on a 2-core machine that also runs both ends and every agent, the "
                              "difference of the medians is within the run-to-run spread."]
        if diffs is not None and diffs.rows:
            lines += ["", "Kernel settings of pyweave's devices that differ from the reference (`ip -d link`, section 1): "
                          + ", ".join(f"{r[0]} {r[1]} ({r[2]} against {r[3]})" for r in diffs.rows)
                          + ". Proxy ARP answers ARP requests from the neighbour table; it is not on the path of "
                            "an established TCP flow."]
        elif diffs is not None:
            lines += ["", "pyweave's devices have the same kernel settings as the reference's (`ip -d link`)."]
        res.limits.append("\n".join(lines))
    return res


def latency(ctx: BenchContext, dp: DataPath) -> SectionResult:
    s = ctx.sizes
    res = SectionResult("latency", "2. Latency")
    res.method = (
        f"busybox ping from h2 to h1, {s.latency_samples} echo requests at {s.latency_interval} s intervals per "
        f"path after 3 warm-up pings, in {LATENCY_ROUNDS} rounds that take turns across the paths (so that a busy "
        "moment of the machine does not land on one path only); p50 and p99 (nearest rank) of the per-packet "
        "round-trip times. Reference: the hand-built VXLAN between namespaces (veth + bridge), as for throughput."
    )
    for p in dp.paths:
        p.rtts, p.sent = [], 0
    per_round = max(1, s.latency_samples // LATENCY_ROUNDS)
    for i in range(LATENCY_ROUNDS):
        for p in dp.paths:
            n = per_round if i < LATENCY_ROUNDS - 1 else s.latency_samples - per_round * (LATENCY_ROUNDS - 1)
            rtts, sent = _ping(p, n, s.latency_interval)
            p.rtts += rtts
            p.sent += sent
    for p in dp.paths:
        ctx.say("latency", f"{p.key:10} p50 {percentile(p.rtts, 50):.3f} ms p99 {percentile(p.rtts, 99):.3f} ms "
                           f"({len(p.rtts)}/{p.sent} replies)")
    ref = next(p for p in dp.paths if p.key == REFERENCE)
    table = Table(["path", "p50 ms", "p99 ms", "mean ms", "replies", "p50 ratio to reference", "p99 ratio to reference"])
    for p in dp.paths:
        mean = sum(p.rtts) / len(p.rtts) if p.rtts else float("nan")
        table.add(
            p.label, fmt(percentile(p.rtts, 50), 3), fmt(percentile(p.rtts, 99), 3), fmt(mean, 3),
            f"{len(p.rtts)}/{p.sent}",
            fmt(ratio(percentile(p.rtts, 50), percentile(ref.rtts, 50)), 3),
            fmt(ratio(percentile(p.rtts, 99), percentile(ref.rtts, 99)), 3),
        )
    res.tables.append(table)
    pw = next(p for p in dp.paths if p.key == "pyweave")
    r = ratio(percentile(pw.rtts, 50), percentile(ref.rtts, 50))
    c = res.check(
        "pyweave p50 RTT against the hand-built VXLAN",
        f"{percentile(pw.rtts, 50):.3f} ms = {r:.3f} x reference", f"<= {LATENCY_TARGET} x",
        (r <= LATENCY_TARGET) if pw.rtts and ref.rtts else None,
    )
    if len(pw.rtts) < pw.sent:
        res.notes.append(f"pyweave lost {pw.sent - len(pw.rtts)} of {pw.sent} pings.")
    png = plots.cdf(
        ctx.plot_path("latency"), {p.key: p.rtts for p in dp.paths},
        title=f"ping RTT h2 -> h1 ({s.latency_samples} samples per path)", xlabel="round-trip time (ms)",
    )
    if png:
        res.plots.append((png.name, "latency CDF per path"))
    else:
        res.notes.append(plots.MISSING)
    if c.met is False:
        host = next(p for p in dp.paths if p.key == "vxlan-host")
        text = (
            f"pyweave's median RTT is {r:.2f} x the hand-built VXLAN's between namespaces "
            f"({percentile(pw.rtts, 50) * 1000:.0f} against {percentile(ref.rtts, 50) * 1000:.0f} microseconds). Both cross "
            "the same kernel objects (veth, bridge, VXLAN); section 1 lists the kernel settings in which they differ."
        )
        if percentile(ref.rtts, 50) < percentile(host.rtts, 50):
            text += (
                f" The reference itself measured faster than the VXLAN on the hosts ({percentile(host.rtts, 50) * 1000:.0f} "
                "microseconds), which has strictly less to cross: differences of this size are the machine's noise "
                "(it runs both ends, every agent and whatever else is running), not the topology."
            )
        res.limits.append(text)
    return res


# Per-instance values (identities, running timers), not settings.
_SKIP_ATTRS = {"id", "local", "link", "ageing", "port_range", "bridge_id", "root_id", "root_port", "root_path_cost",
               "topology_change", "topology_change_detected"}


def _link_json(argv: list[str]) -> dict:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    try:
        return json.loads(r.stdout)[0]
    except (ValueError, IndexError):
        return {}


def _settings(link: dict) -> dict[str, str]:
    info = link.get("linkinfo", {})
    out = {"mtu": str(link.get("mtu")), "kind": str(info.get("info_kind"))}
    for k, v in (info.get("info_data") or {}).items():
        if k not in _SKIP_ATTRS and not k.endswith("_timer") and not isinstance(v, (dict, list)):
            out[k] = str(v)
    for k in ("gso_max_size", "gro_max_size", "num_tx_queues", "txqlen"):
        if k in link:
            out[k] = str(link[k])
    return out


def configuration_differences(session: LabSession, dp: DataPath) -> Table | None:
    """The kernel settings where pyweave's devices on h1 differ from the hand-built reference's:
    VXLAN device, bridge, and the container end of the veth. Empty when they are the same."""
    lab = session.up()
    r = lab.etcdctl(0, "get", "--print-value-only", f"/pyweave/v1/networks/{'10.9.0.0-24'}", check=False)
    try:
        vni = json.loads(r.stdout)["vni"]
    except (ValueError, KeyError, TypeError):
        return None
    h1 = session.host(0).name
    a, _b = session.pair()
    pairs = [
        ("VXLAN device", ["ip", "-n", h1, "-d", "-j", "link", "show", "dev", f"pwx-{vni}"],
         ["ip", "-n", h1, "-d", "-j", "link", "show", "dev", "bvxb"]),
        ("bridge", ["ip", "-n", h1, "-d", "-j", "link", "show", "dev", f"pwb-{vni}"],
         ["ip", "-n", h1, "-d", "-j", "link", "show", "dev", "bbr"]),
        ("veth, container end", session.in_container(a) + ["ip", "-d", "-j", "link", "show", "dev", "ethwe"],
         ["ip", "-n", dp.ref.standins[0], "-d", "-j", "link", "show", "dev", "eth0"]),
    ]
    table = Table(["device", "setting", "pyweave", "hand-built reference"],
                  caption="Kernel settings where pyweave's devices on h1 differ from the hand-built reference's "
                          "(`ip -d link`):")
    for what, mine, theirs in pairs:
        ours, ref = _settings(_link_json(mine)), _settings(_link_json(theirs))
        for key in sorted(set(ours) | set(ref)):
            if ours.get(key) != ref.get(key):
                table.add(what, key, ours.get(key, "—"), ref.get(key, "—"))
    nft = subprocess.run(["ip", "netns", "exec", h1, "nft", "list", "ruleset"], capture_output=True, text=True, timeout=20)
    if nft.returncode == 0:
        rules = [line.strip() for line in nft.stdout.splitlines()
                 if line.strip() and not line.strip().startswith(("table", "chain", "type", "}", "policy"))]
        tables = [line.split("{")[0].strip() for line in nft.stdout.splitlines() if line.startswith("table")]
        if tables:
            table.add("nftables in h1", "tables, rules", f"{', '.join(tables)}; {len(rules)} rules", "none")
    return table
