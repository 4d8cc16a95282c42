"""Section 8: multi-hop routing (issue 12): a relayed path against the direct one, and re-routing.

A lab of its own, 4 hosts in a full mesh (h1 serves the store and, like h3, may relay), one
container on h2 (A, 10.40.0.1/24) and one on h4 (C, 10.40.0.2/24). A and C never touch the store's
ports when their link is cut (`Lab.cut` leaves TCP 2379/2380 open): only the data path breaks.

  (a) data path: iperf3 TCP from C's container to A's (1 and 4 streams) and busybox ping (p50 of
      many), direct and then relayed: A-C cut, waited for until `pyweave status connections` on A and
      on C shows the other "via" a relay and a ping gets through. Repeats alternate direct and
      relayed (restore, cut, restore, ...), so that a busy moment of the shared machine does not land
      on one mode only. The bytes the relays' transit devices (`pwrx<k>-<vni>`) received during each
      test are recorded: the proof that a relayed test went through a relay and a direct one did not.
  (b) re-routing: a pinger in A's container (`python -m bench.routing pinger`, the host's Python in
      the container's network namespace) sends ICMP echo requests to C every 10 ms and reports every
      gap between two replies. N times: cut A-C; the figure is the time from the start of the cut
      to the first reply after it (traffic flowing through a relay); then restore, and the time back
      to direct is when the relays' transit devices received their last frame (polled every ~50 ms,
      confirmed by a second without one and by A's and C's FDB entries pointing at each other, port
      4789). The agents' logs give the timeline of each cut: link down seen, route changed.

The section's own lab is removed whatever happens (failure, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import plots
from bench.context import BenchContext
from bench.datapath import RTT_RE, _iperf
from bench.datapath import Path as DPath
from bench.helper import Helper
from bench.labsession import BenchError, LabSession
from bench.procs import PROBE_DOWN_AFTER_S as DOWN_AFTER_S
from bench.report import SectionResult, Table
from bench.stats import fmt, median, percentile, ratio
from pyweave.agent.router import TRANSIT_GRACE

HOSTS = 4
A, C = 1, 3  # h2 and h4: h1 (the store) and h3 may relay
SUBNET = "10.40.0"
ADDR_A, ADDR_C = f"{SUBNET}.1", f"{SUBNET}.2"
IPERF_PORT = "5201"
THROUGHPUT_TARGET = 0.5  # relayed >= 0.5 x direct
RTT_TARGET = 2.0  # relayed p50 <= 2 x direct
REROUTE_P50_S = 1.0  # issue 12, item 4
REROUTE_P99_S = 2.0
BACK_TARGET_S = 5.0  # issue 12's acceptance: direct again within 5 s of the restore
WAIT_S = 15.0  # the most any one wait is allowed (a mode switch, a re-route, the way back)
QUIET_S = 1.0  # no frame through a relay for this long (with the stream at 100/s): traffic is direct
POLL_S = 0.01
MODE_WAIT_S = 60.0  # the most a switch between direct and relayed may take in (a)
CLI_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class RoutingSizes:
    seconds: int  # per iperf3 test
    repeats: int  # direct/relayed pairs
    streams: tuple[int, ...]
    pings: int  # per mode, over all repeats
    ping_interval: float
    cuts: int
    stream_interval: float  # the pinger's, during the cuts


FULL = RoutingSizes(seconds=5, repeats=3, streams=(1, 4), pings=300, ping_interval=0.01, cuts=20, stream_interval=0.01)
QUICK = RoutingSizes(seconds=1, repeats=1, streams=(1, 4), pings=20, ping_interval=0.01, cuts=1, stream_interval=0.01)


# -- the pinger (runs in A's container's network namespace) ------------------------------------
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    payload = b"pyweave-routing".ljust(32, b".")
    header = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
    csum = _checksum(header + payload)
    return bytes([8, 0]) + csum.to_bytes(2, "big") + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + payload


def pinger(address: str, interval: float, gap: float) -> None:
    """Echo requests to address every `interval` until killed. Prints JSON lines: `ready`, then a
    `gap` event for each reply that came more than `gap` seconds after the previous one: the wall
    time of both replies and how many sequence numbers are missing between them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    print(json.dumps({"event": "ready"}), flush=True)
    seq = 0
    next_send = time.monotonic()
    last_t: float | None = None
    last_seq = 0
    while True:
        now = time.monotonic()
        if now >= next_send:
            try:
                sock.sendto(_echo(ident, seq & 0xFFFF), (address, 0))
            except OSError:
                pass  # e.g. no neighbour yet: keep sending
            seq += 1
            next_send += interval
            if next_send < now:  # the machine stalled us: do not burst to catch up
                next_send = now + interval
        ready, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
        if not ready:
            continue
        packet, (source, _port) = sock.recvfrom(2048)
        got = time.time()
        ihl = (packet[0] & 0x0F) * 4
        if len(packet) < ihl + 8 or source != address or packet[ihl] != 0:
            continue
        if int.from_bytes(packet[ihl + 4:ihl + 6], "big") != ident:
            continue
        rseq = int.from_bytes(packet[ihl + 6:ihl + 8], "big")
        if last_t is not None and got - last_t > gap:
            print(json.dumps({"event": "gap", "last": last_t, "first": got,
                              "missing": (rseq - last_seq - 1) & 0xFFFF}), flush=True)
        last_t, last_seq = got, rseq


# -- the bench side ------------------------------------------------------------------------------
@dataclass
class Mode:
    key: str  # "direct" or "relayed"
    gbps: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # iperf3's (sender %, receiver %)
    machine: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # /proc/stat (busy %, softirq %)
    relayed_bytes: dict[int, list[int]] = field(default_factory=dict)
    rtts: list[float] = field(default_factory=list)
    sent: int = 0
    relays: set[str] = field(default_factory=set)


@dataclass
class Cut:
    n: int
    cold: bool  # no transit device anywhere when it was cut (the relay had to make them)
    reroute_s: float | None = None  # cut started -> first reply after it
    stream_gap_s: float | None = None  # last reply before -> first reply after (what the ping stream saw)
    missing: int | None = None
    down_seen_s: float | None = None  # cut started -> the later of A's and C's "link ... down" log lines
    routed_s: float | None = None  # cut started -> the later of A's and C's "route to ...: via" log lines
    back_s: float | None = None  # restore started -> the last frame through a relay
    fdb_direct_s: float | None = None  # restore started -> A's and C's FDB entries direct again
    restore_lost: int = 0  # echo requests lost while going back to direct
    relay: str = ""
    load: float = 0.0  # the machine's 1-minute load average at the cut
    error: str = ""


class RoutingLab:
    """The lab, its containers, and what the measurements read from it."""

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.session = LabSession(HOSTS, lambda m: ctx.say("routing", m))
        self.a = self.c = ""
        self.vni = 0
        self.mac_a = self.mac_c = ""
        self.cli_timeouts = 0  # `status connections` that did not answer within CLI_TIMEOUT_S

    def up(self) -> None:
        lab = self.session.up()
        self.lab = lab
        self.a = self.session.run_container(A, f"{ADDR_A}/24", "sleep", "3600")
        self.c = self.session.run_container(C, f"{ADDR_C}/24", "sleep", "3600")
        r = lab.etcdctl(0, "get", "--print-value-only", f"/pyweave/v1/networks/{SUBNET}.0-24", check=False)
        try:
            self.vni = int(json.loads(r.stdout)["vni"])
        except (ValueError, KeyError, TypeError) as err:
            raise BenchError(f"no network record for {SUBNET}.0/24: {r.stdout.strip()} {r.stderr.strip()}") from err
        self.mac_a = self._mac(self.a)
        self.mac_c = self._mac(self.c)
        self.set_mode("direct")

    def close(self) -> None:
        self.session.close()

    def name(self, i: int) -> str:
        return self.lab.hosts[i].name

    def _mac(self, cid: str) -> str:
        r = self.session.run(self.session.in_container(cid) + ["ip", "-j", "link", "show", "dev", "ethwe"], timeout=20)
        return json.loads(r.stdout)[0]["address"]

    # -- what the hosts say and hold -------------------------------------------------------------
    def route(self, host: int, peer: int) -> str:
        """`status connections` on host: "direct", "via <name>" or "unreachable" for peer ("" if absent)."""
        try:
            r = self.lab.pyweave(host, "status", "connections", "--json", timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.cli_timeouts += 1
            self.ctx.say("routing", f"`pyweave status connections` on h{host + 1} did not answer within {CLI_TIMEOUT_S:g} s")
            return ""
        try:
            rows = {row["peer"]: row for row in json.loads(r.stdout or "[]")}
        except ValueError:
            return ""
        row = rows.get(self.name(peer))
        if row is None:
            return ""
        return f"via {row['via']}" if row["mode"] == "via" else row["mode"]

    def other_flaps(self, since: float) -> dict[str, int]:
        """From every agent's log: how often each link other than A-C was seen going down since then."""
        out: dict[str, int] = {}
        for i in range(HOSTS):
            for peer in range(HOSTS):
                if peer != i and {i, peer} != {A, C}:
                    n = len(_log_events(self.lab.state_dir(i) / "agent.log", since,
                                        f"link {self.name(i)} -> {self.name(peer)} down"))
                    if n:
                        out[f"h{i + 1}->h{peer + 1}"] = n
        return out

    def relay_hosts(self) -> list[int]:
        return [i for i in range(HOSTS) if i not in (A, C)]

    def transit(self, host: int) -> tuple[int, int, bool]:
        """(rx packets, rx bytes, any transit device) summed over host's transit VXLAN devices, read
        from /proc/<agent>/net/dev (the agent runs in the host's namespace): a file read, no process,
        so that it can be polled every few milliseconds on a busy machine."""
        pid = self.lab.agent_pid(host)
        packets = octets = 0
        found = False
        try:
            with open(f"/proc/{pid}/net/dev") as f:
                lines = f.read().splitlines()[2:]
        except (OSError, TypeError):
            lines = []
        for line in lines:
            name, _, counters = line.partition(":")
            if name.strip().startswith("pwrx"):
                found = True
                fields = counters.split()
                octets += int(fields[0])
                packets += int(fields[1])
        return packets, octets, found

    def transit_all(self) -> dict[int, tuple[int, int, bool]]:
        return {i: self.transit(i) for i in self.relay_hosts()}

    def fdb_direct(self) -> bool:
        """A's entry for C's container MAC goes to C's address on port 4789, and C's for A's to A's."""
        for host, mac, peer in ((A, self.mac_c, C), (C, self.mac_a, A)):
            r = subprocess.run(["bridge", "-n", self.name(host), "-j", "fdb", "show", "dev", f"pwx-{self.vni}"],
                               capture_output=True, text=True, timeout=20)
            try:
                entries = json.loads(r.stdout or "[]")
            except ValueError:
                return False
            dst = [e for e in entries if e.get("mac") == mac and e.get("dst")]
            if not dst or dst[0]["dst"] != self.lab.hosts[peer].address or int(dst[0].get("port", 4789)) != 4789:
                return False
        return True

    def ping(self, count: int, interval: float, *, wait: int = 2) -> list[float]:
        argv = self.session.in_container(self.c) + ["busybox", "ping", "-c", str(count), "-i", str(interval),
                                                    "-W", str(wait), ADDR_A]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=count * interval + 30)
        return [float(x) for x in RTT_RE.findall(r.stdout)]

    # -- switching modes --------------------------------------------------------------------------
    def set_mode(self, mode: str) -> str:
        """Direct (A-C restored) or relayed (A-C cut), waited for until both ends' `status
        connections` say so and a ping gets through; returns the relay's name ("" when direct)."""
        if mode == "relayed":
            self.lab.cut(A, C)
        else:
            self.lab.restore(A, C)
        deadline = time.monotonic() + MODE_WAIT_S
        seen = ("", "")
        while time.monotonic() < deadline:
            seen = (self.route(A, C), self.route(C, A))
            ok = all(s == "direct" for s in seen) if mode == "direct" else all(s.startswith("via ") for s in seen)
            if ok and (mode == "relayed" or self.fdb_direct()) and self.ping(1, 0.1, wait=1):
                return seen[0][4:] if mode == "relayed" else ""
            time.sleep(0.1)
        warnings = [line for line in (self.lab.state_dir(A) / "agent.log").read_text(errors="replace").splitlines()
                    if "level=warning" in line or "level=error" in line][-5:]
        raise BenchError(f"{mode} mode not reached within {MODE_WAIT_S:g} s: status connections on h{A + 1}/h{C + 1} "
                         f"show {seen[0] or 'nothing'} / {seen[1] or 'nothing'}; h{A + 1}'s agent warned: "
                         + (" | ".join(warnings) or "nothing"))


# -- /proc/stat: how busy the whole machine was ------------------------------------------------
def _cpu_times() -> tuple[int, int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]), idle, fields[6]  # total, idle + iowait, softirq


def _busy(before: tuple[int, int, int], after: tuple[int, int, int]) -> tuple[float, float]:
    total = max(1, after[0] - before[0])
    ncpu = os.cpu_count() or 1
    return (100 * ncpu * (total - (after[1] - before[1])) / total, 100 * ncpu * (after[2] - before[2]) / total)


def datapath(ctx: BenchContext, rl: RoutingLab, sz: RoutingSizes) -> dict[str, Mode]:
    modes = {"direct": Mode("direct"), "relayed": Mode("relayed")}
    server = ctx.spawned.start(rl.session.in_container(rl.a) + ["iperf3", "-s", "-p", IPERF_PORT])
    try:
        time.sleep(0.5)
        path = DPath("routing", "C -> A", [], rl.session.in_container(rl.c), ADDR_A)
        per_rep = max(1, sz.pings // sz.repeats)
        for rep in range(sz.repeats):
            for key in ("direct", "relayed"):
                m = modes[key]
                relay = rl.set_mode(key)
                if relay:
                    m.relays.add(relay)
                rl.ping(3, 0.05)  # warm-up: neighbour entries along the path
                for streams in sz.streams:
                    t0, c0 = rl.transit_all(), _cpu_times()
                    g, snd, rcv = _iperf(ctx, path, streams, sz.seconds)
                    c1, t1 = _cpu_times(), rl.transit_all()
                    through = sum(t1[h][1] - t0[h][1] for h in t1 if h in t0 and t1[h][1] >= t0[h][1])
                    m.gbps.setdefault(streams, []).append(g)
                    m.cpu.setdefault(streams, []).append((snd, rcv))
                    m.machine.setdefault(streams, []).append(_busy(c0, c1))
                    m.relayed_bytes.setdefault(streams, []).append(through)
                    ctx.say("routing", f"repeat {rep + 1}/{sz.repeats} {key:7} -P {streams}: {g:.2f} Gbit/s "
                                       f"({through / 1e6:.0f} MB through relays)")
                rtts = rl.ping(per_rep, sz.ping_interval)
                m.rtts += rtts
                m.sent += per_rep
                ctx.say("routing", f"repeat {rep + 1}/{sz.repeats} {key:7} ping p50 {percentile(rtts, 50):.3f} ms "
                                   f"({len(rtts)}/{per_rep})")
    finally:
        ctx.spawned.stop(server)
    rl.set_mode("direct")
    return modes


# -- (b) re-routing -----------------------------------------------------------------------------
_LOG_RE = re.compile(r'^ts=(\S+) level=\S+ logger=\S+ msg="(.*)"$')


def _log_events(path: Path, since: float, pattern: str) -> list[float]:
    """Wall times of the agent log lines at or after `since` whose message contains pattern."""
    out = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        m = _LOG_RE.match(line)
        if not m or pattern not in m.group(2):
            continue
        stamp, _, ms = m.group(1).partition(".")
        t = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(ms or 0) / 1000
        if t >= since - 0.001:
            out.append(t)
    return out


def _timeline(rl: RoutingLab, t_cut: float, cut: Cut) -> None:
    """From A's and C's agent logs: when each saw its link to the other go down, and changed route."""
    downs, routes = [], []
    for host, peer in ((A, C), (C, A)):
        log = rl.lab.state_dir(host) / "agent.log"
        d = _log_events(log, t_cut, f"link {rl.name(host)} -> {rl.name(peer)} down")
        r = _log_events(log, t_cut, f"route to {rl.name(peer)}: via")
        downs.append(d[0] if d else None)
        routes.append(r[0] if r else None)
    if all(x is not None for x in downs):
        cut.down_seen_s = max(downs) - t_cut
    if all(x is not None for x in routes):
        cut.routed_s = max(routes) - t_cut


def _drain(helper: Helper) -> list[dict]:
    out = []
    while not helper.events.empty():
        ev = helper.events.get_nowait()
        if ev.get("event") == "exited":
            raise BenchError(f"the pinger exited: {helper._tail()}")
        out.append(ev)
    return out


def _next_gap(helper: Helper, after: float, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ev = helper.expect("gap", timeout=max(0.01, deadline - time.monotonic()))
        except BenchError as err:
            if "did not report" in str(err):
                return None
            raise
        if ev["first"] > after and ev["missing"] > 0:  # a gap with nothing missing is a stall of the pinger
            return ev
    return None


def _back_to_direct(rl: RoutingLab, t_restore: float, cut: Cut) -> None:
    """Poll the relays' transit counters every POLL_S (and, in a thread, A's and C's FDB) until no
    frame went through a relay for QUIET_S and both FDB entries are direct; the time of the poll
    that saw the last increment is the figure (an upper bound, within one poll)."""
    deadline = time.monotonic() + WAIT_S
    fdb_at: list[float] = []

    def watch_fdb() -> None:
        while time.monotonic() < deadline:
            if rl.fdb_direct():
                fdb_at.append(time.time())
                return
            time.sleep(POLL_S)

    watcher = threading.Thread(target=watch_fdb, daemon=True)
    watcher.start()
    try:
        last = {h: v[0] for h, v in rl.transit_all().items()}
        last_increment = t_restore
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            counts = rl.transit_all()
            now = time.time()
            if any(v[0] > last.get(h, 0) for h, v in counts.items()):
                last_increment = now
            last = {h: v[0] for h, v in counts.items()}
            if fdb_at and now - last_increment >= QUIET_S:
                cut.back_s = last_increment - t_restore
                cut.fdb_direct_s = fdb_at[0] - t_restore
                return
    finally:
        watcher.join()
    cut.error = (cut.error + "; " if cut.error else "") + f"not direct again within {WAIT_S:g} s of the restore"


def _wait_no_transit(ctx: BenchContext, rl: RoutingLab) -> bool:
    """Until no host has a transit device (they linger TRANSIT_GRACE after use): the next cut is cold."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < TRANSIT_GRACE + 60:
        if not any(v[2] for v in rl.transit_all().values()):
            ctx.say("routing", f"no transit device left after {time.monotonic() - t0:.0f} s: the first cut is cold")
            return True
        time.sleep(0.5)
    ctx.say("routing", f"transit devices still there {time.monotonic() - t0:.0f} s after their last use: no cold cut")
    return False


def reroute(ctx: BenchContext, rl: RoutingLab, sz: RoutingSizes) -> list[Cut]:
    gap = max(0.05, 4 * sz.stream_interval)
    helper = Helper(
        ctx.spawned,
        rl.session.in_container(rl.a) + rl.session.python_module(
            "bench.routing", "pinger", ADDR_C, "--interval", str(sz.stream_interval), "--gap", str(gap)),
        name="the pinger", log=Path(rl.lab.state_root) / "routing-pinger.log", env=rl.session.helper_env(),
    )
    cuts: list[Cut] = []
    try:
        helper.expect("ready", timeout=30)
        if not ctx.quick:
            _wait_no_transit(ctx, rl)
        time.sleep(1.0)
        _drain(helper)
        for n in range(sz.cuts):
            cold = not any(v[2] for v in rl.transit_all().values())
            cut = Cut(n + 1, cold, load=os.getloadavg()[0])
            cuts.append(cut)
            at_cut = rl.transit_all()
            t_cut = time.time()
            rl.lab.cut(A, C)
            ev = _next_gap(helper, t_cut, WAIT_S)
            if ev is None:
                cut.error = f"no reply within {WAIT_S:g} s of the cut"
            else:
                cut.reroute_s = ev["first"] - t_cut
                cut.stream_gap_s = ev["first"] - ev["last"]
                cut.missing = ev["missing"]
            time.sleep(0.5)  # let both logs be written
            _timeline(rl, t_cut, cut)
            now = rl.transit_all()
            cut.relay = ", ".join(rl.name(h) for h in now if now[h][0] > at_cut[h][0]) or "no relay"
            _drain(helper)
            t_restore = time.time()
            rl.lab.restore(A, C)
            _back_to_direct(rl, t_restore, cut)
            cut.restore_lost = sum(ev["missing"] for ev in _drain(helper)
                                   if ev.get("event") == "gap" and ev["first"] > t_restore)
            ctx.say("routing", f"cut {n + 1}/{sz.cuts}{' (cold)' if cold else ''}: "
                               + (f"reply {cut.reroute_s:.3f} s after the cut ({cut.missing} lost, through {cut.relay})"
                                  if cut.reroute_s is not None else cut.error)
                               + f"; link down seen {fmt(cut.down_seen_s, 3)} s, route {fmt(cut.routed_s, 3)} s; "
                               + f"direct again {fmt(cut.back_s, 2)} s after restore (FDB {fmt(cut.fdb_direct_s, 2)} s)"
                               + (f", {cut.restore_lost} lost on the way back" if cut.restore_lost else ""))
            if cut.error and cut.back_s is None:
                rl.set_mode("direct")  # whatever happened, start the next cut from a full mesh
            time.sleep(0.5)
    finally:
        helper.close()
    return cuts


# -- the section --------------------------------------------------------------------------------
def run(ctx: BenchContext) -> SectionResult:
    sz = QUICK if ctx.quick else FULL
    res = SectionResult("routing", "8. Routing")
    res.method = (
        f"A lab of its own: {HOSTS} hosts in a full mesh, h1 serving the store; a container on h{A + 1} (A, {ADDR_A}/24) "
        f"and one on h{C + 1} (C, {ADDR_C}/24). Relayed means the underlay between h{A + 1} and h{C + 1} cut with "
        "`Lab.cut` (nftables in both host namespaces; the store's TCP ports stay open), so traffic goes through h1 "
        "or h3 (the agents choose by RTT, then name), in the kernel (transit VXLAN devices `pwrx<k>-<vni>`).\n\n"
        f"(a) iperf3 TCP from C's container to A's, {sz.seconds} s per test, "
        f"{' and '.join(str(n) for n in sz.streams)} stream(s), {sz.repeats} repeat(s) alternating direct and relayed "
        f"(median), then busybox ping ({sz.pings} per mode at {sz.ping_interval} s, p50). A mode counts as reached "
        "when `pyweave status connections` on both ends says so and a ping gets through; the bytes the relays' "
        "transit devices received during each test are shown as proof of the path.\n\n"
        f"(b) {sz.cuts} cut(s) of A-C while a pinger in A's container (`python -m bench.routing pinger`) sends "
        f"ICMP echo requests to C every {sz.stream_interval * 1000:.0f} ms. Re-route time: from the start of the "
        "cut (before the nft commands run) to the first reply after it. Back to direct: from the start of the "
        f"restore to the last frame the relays' transit devices received (their rx counters polled every "
        f"~{POLL_S * 1000:.0f} ms; confirmed by {QUIET_S:g} s without one while the stream runs, and by A's and C's "
        "FDB entries for each other pointing at each other's address, port 4789). Each cut starts from a full "
        f"mesh. A transit device lingers {TRANSIT_GRACE:g} s after use (docs/routing.md), so later cuts find the "
        "relay's devices still there (warm); the full run makes its first cut after waiting for them to go (cold)."
    )
    rl = RoutingLab(ctx)
    loads = [os.getloadavg()[0]]
    try:
        rl.up()
        measuring = time.time()
        loads.append(os.getloadavg()[0])
        modes = datapath(ctx, rl, sz)
        loads.append(os.getloadavg()[0])
        cuts = reroute(ctx, rl, sz)
        loads.append(os.getloadavg()[0])
        flaps = rl.other_flaps(measuring)
    finally:
        rl.close()
    if flaps:
        res.notes.append(f"During the measurements, links that were never cut went down anyway (a prober heard no echo for `down_after`, {DOWN_AFTER_S} s; "
                         "each such flap can make hosts relay or keep transit devices): "
                         + ", ".join(f"{k} {n}x" for k, n in sorted(flaps.items())) + ".")
    res.notes.append("The machine's 1-minute load average (2 CPUs, shared with whatever else runs): "
                     + ", ".join(f"{w} {x:.1f}" for w, x in zip(("at the start", "after launch", "after (a)", "after (b)"), loads))
                     + ". Every figure here, the agents' timers included, shares those CPUs.")
    _report_datapath(res, modes, sz)
    _report_reroute(ctx, res, cuts, sz)
    if rl.cli_timeouts:
        res.notes.append(f"`pyweave status connections` did not answer within {CLI_TIMEOUT_S:g} s {rl.cli_timeouts} "
                         "time(s) (asked again; the re-route figures do not depend on it).")
    return res


def _report_datapath(res: SectionResult, modes: dict[str, Mode], sz: RoutingSizes) -> None:
    d, r = modes["direct"], modes["relayed"]
    table = Table(["path", "streams", "median Gbit/s", "min-max", "sender CPU %", "receiver CPU %",
                   "machine busy % (of 200)", "softirq %", "MB through relays", "ratio of medians"],
                  caption="Throughput, C -> A (iperf3). The check below compares each relayed test with the direct "
                          "one run just before it (the machine's load moves a lot between repeats).")
    for streams in sz.streams:
        for m in (d, r):
            vals = m.gbps[streams]
            table.add(
                "direct" if m is d else f"relayed (via {', '.join(sorted(m.relays))})", streams, fmt(median(vals)),
                f"{min(vals):.2f}-{max(vals):.2f}",
                fmt(median([c[0] for c in m.cpu[streams]]), 0), fmt(median([c[1] for c in m.cpu[streams]]), 0),
                fmt(median([c[0] for c in m.machine[streams]]), 0), fmt(median([c[1] for c in m.machine[streams]]), 0),
                fmt(median(m.relayed_bytes[streams]) / 1e6, 0),
                fmt(ratio(median(vals), median(d.gbps[streams])), 3),
            )
    table.add("target", "", "", "", "", "", "", "", "", f">= {THROUGHPUT_TARGET}")
    res.tables.append(table)
    rt = Table(["path", "p50 ms", "p99 ms", "replies", "relayed / direct (p50)"], caption="Round-trip time, C -> A (ping)")
    for m in (d, r):
        rt.add(m.key, fmt(percentile(m.rtts, 50), 3), fmt(percentile(m.rtts, 99), 3), f"{len(m.rtts)}/{m.sent}",
               fmt(ratio(percentile(m.rtts, 50), percentile(d.rtts, 50)), 3))
    rt.add("target", "", "", "", f"<= {RTT_TARGET}")
    res.tables.append(rt)
    missed = []
    for streams in sz.streams:
        pairs = [ratio(x, y) for x, y in zip(r.gbps[streams], d.gbps[streams])]
        q = median(pairs)
        c = res.check(f"relayed throughput, {streams} stream(s), against direct (median of the repeats' ratios)",
                      f"{q:.2f} x (repeats: {', '.join(f'{x:.2f}' for x in pairs)})",
                      f">= {THROUGHPUT_TARGET} x", q >= THROUGHPUT_TARGET)
        if not c.met:
            missed.append(streams)
    q = ratio(percentile(r.rtts, 50), percentile(d.rtts, 50))
    c_rtt = res.check("relayed p50 RTT against direct",
                      f"{percentile(r.rtts, 50):.3f} / {percentile(d.rtts, 50):.3f} ms = {q:.2f} x",
                      f"<= {RTT_TARGET} x", (q <= RTT_TARGET) if r.rtts and d.rtts else None)
    leaks = [s for s in sz.streams if any(b > 0 for b in d.relayed_bytes[s])]
    if leaks or any(b == 0 for s in sz.streams for b in r.relayed_bytes[s]):
        res.notes.append("**Path check failed**: a direct test had bytes through a relay, or a relayed test had none "
                         f"(direct: {d.relayed_bytes}; relayed: {r.relayed_bytes}).")
    if missed or c_rtt.met is False:
        text = []
        if missed:
            text.append(
                f"Relayed throughput below {THROUGHPUT_TARGET} x direct with {', '.join(map(str, missed))} stream(s). "
                "Every frame of the relayed path is decapsulated and encapsulated once more on the relay (a VXLAN "
                "receive, a bridge hairpin, a VXLAN send: softirq work) on the same 2 CPUs that run the sender, the "
                "receiver and both ends' VXLAN; the table's machine columns show how busy the CPUs were (busy % "
                "counts every process on the machine, also others' work). A relayed frame costs roughly twice "
                "the kernel work of a direct one, so when the CPUs are the bottleneck the ratio sits near 0.5 x, and the "
                "machine's other load (the load averages in the notes) moves both figures by several times between "
                "repeats.")
        if c_rtt.met is False:
            text.append(f"Relayed p50 RTT is {q:.2f} x direct: each way crosses one more host namespace's VXLAN "
                        "receive and send, and the machine's other load adds scheduling delay to every softirq.")
        res.limits.append("\n\n".join(text))


def _report_reroute(ctx: BenchContext, res: SectionResult, cuts: list[Cut], sz: RoutingSizes) -> None:
    rer = [c.reroute_s for c in cuts if c.reroute_s is not None]
    back = [c.back_s for c in cuts if c.back_s is not None]
    warm = [c.reroute_s for c in cuts if c.reroute_s is not None and not c.cold]
    cold = [c.reroute_s for c in cuts if c.reroute_s is not None and c.cold]

    def row(what: str, vals: list) -> None:
        vals = [v for v in vals if v is not None]
        table.add(what, fmt(percentile(vals, 50), 3), fmt(percentile(vals, 99), 3),
                  fmt(max(vals) if vals else None, 3), len(vals))

    table = Table(["figure (s)", "p50", "p99", "max", "samples"], caption=f"Re-routing over {len(cuts)} cut(s)")
    row("cut started -> first reply (re-route time)", rer)
    row("  of which cuts with the relay's transit devices still there (warm)", warm)
    row("  of which cuts with no transit device anywhere (cold)", cold)
    row("ping stream gap: last reply before -> first after", [c.stream_gap_s for c in cuts])
    row("cut started -> both ends logged the link down", [c.down_seen_s for c in cuts])
    row("cut started -> both ends logged the route via a relay", [c.routed_s for c in cuts])
    row("restore started -> last frame through a relay (back to direct)", back)
    row("restore started -> both FDB entries direct", [c.fdb_direct_s for c in cuts])
    res.tables.append(table)
    lost = [c.missing for c in cuts if c.missing is not None]
    if lost:
        res.notes.append(f"Echo requests lost per cut: median {median(lost):.0f}, max {max(lost)} "
                         f"(at one every {sz.stream_interval * 1000:.0f} ms).")
    used: dict[str, int] = {}
    for c in cuts:
        used[c.relay] = used.get(c.relay, 0) + 1
    res.notes.append("Relays that carried the stream during a cut (their transit rx counters grew): "
                     + ", ".join(f"{name} ({n} cut(s))" for name, n in sorted(used.items())) + ".")
    back_lost = sum(c.restore_lost for c in cuts)
    res.notes.append(f"Going back to direct, {back_lost} echo request(s) were lost over {len(cuts)} restore(s) "
                     "(switching from the relay to the direct path"
                     + (" lost nothing)." if not back_lost else ")."))
    failures = [f"cut {c.n}: {c.error}" for c in cuts if c.error]
    if failures:
        res.notes.append("Cuts with a failure: " + "; ".join(failures))
    ok = not failures
    p50, p99 = percentile(rer, 50), percentile(rer, 99)
    c50 = res.check("re-route time (cut -> first reply), p50", f"{p50:.3f} s", f"<= {REROUTE_P50_S:g} s",
                    (p50 <= REROUTE_P50_S and ok) if rer else None)
    c99 = res.check("re-route time (cut -> first reply), p99", f"{p99:.3f} s", f"<= {REROUTE_P99_S:g} s",
                    (p99 <= REROUTE_P99_S and ok) if rer else None)
    worst = max(back) if back else None
    cb = res.check("back to direct after restore (last frame through a relay), max", fmt(worst, 2, "s"),
                   f"<= {BACK_TARGET_S:g} s", (worst <= BACK_TARGET_S and ok) if back else None)
    png = plots.cdf(ctx.plot_path("routing"), {"re-route (cut -> first reply)": rer, "back to direct (restore)": back},
                    title=f"Re-routing over {len(cuts)} cuts (4 hosts)", xlabel="seconds",
                    marks=[(REROUTE_P50_S, "p50 target"), (REROUTE_P99_S, "p99 target")])
    if png:
        res.plots.append((png.name, "re-routing CDF"))
    else:
        res.notes.append(plots.MISSING)
    if any(c.met is False for c in (c50, c99, cb)):
        down = median([c.down_seen_s for c in cuts if c.down_seen_s is not None])
        routed = median([c.routed_s for c in cuts if c.routed_s is not None])
        downs = [c.down_seen_s for c in cuts if c.down_seen_s is not None]
        slow = sorted(cuts, key=lambda c: c.reroute_s if c.reroute_s is not None else 1e9)[-3:]
        res.limits.append(
            f"Re-route p50 {p50:.2f} s, p99 {p99:.2f} s; back to direct, slowest {fmt(worst, 2)} s. Timeline "
            f"(medians, from the agents' logs): the link seen down {fmt(down, 3)} s after the cut (slowest "
            f"{fmt(max(downs) if downs else None, 3)} s), the route changed on both ends {fmt(routed, 3)} s after it, "
            f"the first reply {fmt(median(rer), 3)} s after it. The prober declares a link down after `down_after` = "
            f"{DOWN_AFTER_S} s without an echo of its hellos, so a link seen down much later than {DOWN_AFTER_S} s means the agent's prober thread did "
            "not run in time (CPU starvation), not that the design is slower; after that come publishing the link "
            "record, the watch, the route computation and the FDB programming (and, cold, the relay's transit "
            "devices). Slowest cuts: "
            + "; ".join(f"cut {c.n}: reply {fmt(c.reroute_s, 2)} s, down seen {fmt(c.down_seen_s, 2)} s, routed "
                        f"{fmt(c.routed_s, 2)} s, load average {c.load:.1f}" for c in slow) + ".")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description="section 8's helper")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pinger", help="echo requests at a fixed rate; JSON lines for each gap between replies")
    p.add_argument("address")
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--gap", type=float, default=0.05)
    args = parser.parse_args(argv)
    if args.cmd == "pinger":
        try:
            pinger(args.address, args.interval, args.gap)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())
