"""The encrypted tunnel's speed, step by step (issue 14): `python -m bench.tunnel_speed [--seconds S]`.

Two host namespaces on a switch namespace, each with a kernel VXLAN network and an address on its
bridge (as `pyweave expose` makes them); iperf3 (1 and 4 streams) and ping between the bridge
addresses, for each path:

    plain       the kernel VXLAN path, no tunnel (overlay MTU 1450)
    simple      dataplane.tunnel, one packet per read/send, the kernel's default socket buffers
    buffers     the same with 7 MB socket buffers
    offload     + IFF_VNET_HDR and TUNSETOFFLOAD: GSO super-packets sealed whole, one UDP datagram
                each (IP-fragmented on the underlay)
    udp_gso     + the sealed super-packet sent as MTU-sized chunks in one UDP GSO send, coalesced
                again by UDP_GRO (the tunnel's default)
    baseline    udp_gso with the tunnel of another checkout (`--baseline PATH`, e.g. a `git worktree`
                of an older commit), interleaved with the others: the same run compares two versions

Each round builds a fresh lab per step, steps interleaved, and the table shows medians over the
rounds (the machine is shared: a slow moment should not land on one step only). `--nice N` runs
the tunnel processes at that nice value (the agent may start the tunnel at a negative one).

With the tunnel the overlay MTU is 1500 - 50 (VXLAN) - 28 (IP, UDP) - crypto.DATA_OVERHEAD. The CPU
column is the two tunnel processes' CPU seconds per second of the run, and per Gbit/s. Needs root,
iperf3, busybox, nft. Prints a table; `--json PATH` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Interface
from pathlib import Path

from dataplane.api import VXLAN_OVERHEAD, RemoteEntry
from dataplane.crypto import DATA_OVERHEAD, StaticKey
from dataplane.host import find_underlay
from dataplane.linux import LinuxDataplane

REPO = Path(__file__).resolve().parents[1]
VNI = 70300
STEPS = {
    "plain": None,
    "simple": {"offload": False, "socket_buffer": 212992},
    "buffers": {"offload": False},
    "offload": {"offload": True, "udp_gso": False},
    "udp_gso": {"offload": True, "udp_gso": True},
}
RTT_RE = re.compile(r"time=([0-9.]+) ms")


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


class Lab:
    def __init__(self, tunnel: dict | None, workdir: Path, nice: int = 0, repo: Path = REPO) -> None:
        self.nice = nice
        self.repo = repo
        self.prefix = f"pwts{secrets.token_hex(2)}"
        self.tunnel = tunnel
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.hosts: list[str] = []

    def ns(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        sw = self.ns("sw")
        sh("ip", "-n", sw, "link", "add", "sw0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "sw0", "up")
        mtu = 1500 - VXLAN_OVERHEAD - (28 + DATA_OVERHEAD if self.tunnel is not None else 0)
        dps = []
        for i in (1, 2):
            h = self.ns(f"h{i}")
            self.hosts.append(h)
            sh("ip", "-n", h, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", sw)
            sh("ip", "-n", sw, "link", "set", f"p{i}", "master", "sw0", "up")
            sh("ip", "-n", h, "addr", "add", f"198.19.0.{i}/24", "dev", "eth0")
            sh("ip", "-n", h, "link", "set", "eth0", "up")
            dp = LinuxDataplane(underlay=find_underlay(netns=h), vtep_mac=f"02:00:00:00:01:0{i}", mtu=mtu, netns=h)
            dp.ensure_network(VNI)
            dp.ensure_exposed(VNI, mac=f"02:aa:00:00:00:0{i}", cidrs=[IPv4Interface(f"10.9.0.{i}/24")])
            dps.append(dp)
        for i, dp in enumerate(dps, 1):
            j = 3 - i
            dp.sync_remote(VNI, [RemoteEntry(f"02:aa:00:00:00:0{j}", f"10.9.0.{j}", f"198.19.0.{j}")])
            dp.close()
        if self.tunnel is not None:
            self._start_tunnels()

    def _start_tunnels(self) -> None:
        publics = {}
        for i in (1, 2):
            d = self.workdir / f"h{i}"
            d.mkdir(exist_ok=True)
            publics[i] = StaticKey.load_or_create(d / "key").public_b64
            (d / "secret").write_bytes(b"bench secret")
        for i in (1, 2):
            d, j = self.workdir / f"h{i}", 3 - i
            stats = d / "stats.json"
            stats.unlink(missing_ok=True)
            config = {"me": f"h{i}", "address": f"198.19.0.{i}", "port": 6783, "key_file": str(d / "key"),
                      "secret_file": str(d / "secret"), "stats_file": str(stats),
                      "peers": {f"198.19.0.{j}": {"name": f"h{j}", "public": publics[j]}}, **(self.tunnel or {})}
            (d / "tunnel.json").write_text(json.dumps(config))
            log = open(d / "tunnel.log", "w")
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", self.hosts[i - 1], sys.executable, "-m", "dataplane.tunnel",
                 "--config", str(d / "tunnel.json")], stdout=log, stderr=subprocess.STDOUT, cwd=self.repo))
            if self.nice:
                os.setpriority(os.PRIO_PROCESS, self.procs[-1].pid, self.nice)

            deadline = time.monotonic() + 60
            while not stats.exists():
                if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                    raise RuntimeError(f"tunnel h{i} did not start: {(d / 'tunnel.log').read_text()}")
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for name in self.namespaces:
            sh("ip", "netns", "del", name, check=False)

    def cpu(self) -> float:
        """CPU seconds used so far by the tunnel processes."""
        total = 0.0
        for p in self.procs:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def iperf(self, streams: int, seconds: float) -> tuple[float, float]:
        """(Gbit/s received, tunnel CPU seconds per second) of an iperf3 run h1 -> h2."""
        h1, h2 = self.hosts
        server = subprocess.Popen(["ip", "netns", "exec", h2, "iperf3", "-s", "-1", "-B", "10.9.0.2"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            cpu0, t0 = self.cpu(), time.monotonic()
            out = sh("ip", "netns", "exec", h1, "iperf3", "-c", "10.9.0.2", "-J", "-t", str(seconds), "-P", str(streams),
                     timeout=seconds + 60)
            cpu = (self.cpu() - cpu0) / (time.monotonic() - t0)
            result = json.loads(out.stdout)
            return result["end"]["sum_received"]["bits_per_second"] / 1e9, cpu
        finally:
            server.kill()
            server.wait()

    def rtt(self, count: int, interval: float = 0.01) -> float:
        """Median ping RTT in ms, h1 -> h2."""
        h1, _ = self.hosts
        out = sh("ip", "netns", "exec", h1, "busybox", "ping", "-c", str(count), "-i", str(interval), "10.9.0.2",
                 check=False).stdout
        times = sorted(float(t) for t in RTT_RE.findall(out))
        if not times:
            raise RuntimeError(f"no ping replies: {out}")
        return times[len(times) // 2]


ECHO_SERVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.19.0.2", 7))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
ECHO_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("198.19.0.2", 7))
times = []
for _ in range(int(sys.argv[1])):
    t0 = time.perf_counter()
    s.send(b"x" * 64)
    s.recv(2048)
    times.append(time.perf_counter() - t0)
    time.sleep(float(sys.argv[2]))
times.sort()
print(times[len(times) // 2] * 1000)
"""


def floor(count: int, interval: float) -> dict[str, float]:
    """What a Python process in the path costs at the least, on the underlay of a plain lab: the
    median RTT of busybox ping h1 -> h2 (kernel echo: one process wake-up, ping's own) and of a
    trivial Python UDP echo (the echo server's wake-up, recvfrom and sendto added; no crypto, no TUN)."""
    with tempfile.TemporaryDirectory() as tmp, Lab(None, Path(tmp)) as lab:
        h1, h2 = lab.hosts
        server = subprocess.Popen(["ip", "netns", "exec", h2, sys.executable, "-c", ECHO_SERVER],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            out = sh("ip", "netns", "exec", h1, "busybox", "ping", "-c", str(count), "-i", str(interval),
                     "198.19.0.2").stdout
            times = sorted(float(t) for t in RTT_RE.findall(out))
            echo = float(sh("ip", "netns", "exec", h1, sys.executable, "-c", ECHO_CLIENT, str(count), str(interval)).stdout)
        finally:
            server.kill()
            server.wait()
    return {"kernel_ping_ms": times[len(times) // 2], "python_udp_echo_ms": echo}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"a subset of {','.join(STEPS)}")
    parser.add_argument("--pings", type=int, default=100)
    parser.add_argument("--ping-interval", type=float, default=0.01, help="seconds (as the bench section's)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--nice", type=int, default=0, help="nice value of the tunnel processes")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--baseline", type=Path, help="a checkout whose tunnel runs as the step 'baseline'")
    parser.add_argument("--floor", action="store_true", help="only measure the per-wake-up floor (see floor())")
    args = parser.parse_args(argv)
    if args.floor:
        figures = floor(args.pings, args.ping_interval)
        print(f"underlay RTT p50: kernel ping {figures['kernel_ping_ms']:.3f} ms, "
              f"Python UDP echo {figures['python_udp_echo_ms']:.3f} ms")
        return 0
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for step in args.steps.split(","):
            tunnel, repo = (STEPS["udp_gso"], args.baseline) if step == "baseline" else (STEPS[step], REPO)
            with tempfile.TemporaryDirectory() as tmp, Lab(tunnel, Path(tmp), args.nice, repo) as lab:
                lab.rtt(3)  # warm up: handshakes, ARP
                rtt = lab.rtt(args.pings, args.ping_interval)
                g1, c1 = lab.iperf(1, args.seconds)
                g4, c4 = lab.iperf(4, args.seconds)
                runs.setdefault(step, []).append({"gbit_1": g1, "gbit_4": g4, "rtt_ms": rtt, "cpu_1": c1, "cpu_4": c4})
                print(f"{step:8s}  1 stream {g1:6.2f} Gbit/s  4 streams {g4:6.2f} Gbit/s  rtt {rtt:6.3f} ms"
                      f"  tunnel cpu {c1:4.2f}/{c4:4.2f} s/s", flush=True)
    rows = {step: {k: sorted(r[k] for r in rs)[len(rs) // 2] for k in rs[0]} for step, rs in runs.items()}
    if args.rounds > 1:
        print("\nmedians")
        for step, r in rows.items():
            print(f"{step:8s}  1 stream {r['gbit_1']:6.2f} Gbit/s  4 streams {r['gbit_4']:6.2f} Gbit/s"
                  f"  rtt {r['rtt_ms']:6.3f} ms  tunnel cpu {r['cpu_1']:4.2f}/{r['cpu_4']:4.2f} s/s")
    plain = rows.get("plain")
    if plain:
        print("\nratio to plain (throughput 1 / 4 streams, RTT); CPU s per Gbit/s (1 / 4 streams)")
        for step, r in rows.items():
            cpg = "/".join(f"{r[f'cpu_{n}'] / r[f'gbit_{n}']:.2f}" if r[f"gbit_{n}"] else "-" for n in (1, 4))
            print(f"{step:8s}  {r['gbit_1'] / plain['gbit_1']:5.2f}x  {r['gbit_4'] / plain['gbit_4']:5.2f}x"
                  f"  rtt {r['rtt_ms'] / plain['rtt_ms']:5.2f}x  cpu/Gbit {cpg}")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": rows, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
