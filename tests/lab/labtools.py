"""Helpers for lab tests: polling with a deadline, docker exec, ping, ping streams, pyweave run,
agent restarts, captures on the lab switch."""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from polling import wait_for  # the lab tests import it from here too

from pyweave.host import pid_alive
from pyweave_lab import Lab


def docker(*args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def ping(cid: str, ip: str, *, count: int = 1, wait: int = 2) -> bool:
    return docker("exec", cid, "ping", "-c", str(count), "-W", str(wait), ip).returncode == 0


@contextmanager
def ping_stream(cid: str, ip: str, *, interval: float, count: int) -> Iterator[subprocess.Popen]:
    """busybox ping from a container in the background (output on `.stdout`): the clock of a test that
    breaks something meanwhile. Killed on the way out if it still runs (a failed test)."""
    proc = subprocess.Popen(["docker", "exec", cid, "ping", "-i", str(interval), "-c", str(count), "-W", "1", ip],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def pings_lost(output: str, *, sent: int) -> int:
    """How many of `sent` pings no reply answered, from the sequence numbers in ping's output."""
    answered = {int(line.split("seq=")[1].split()[0]) for line in output.splitlines() if "seq=" in line}
    return sent - len(answered)


def kill_and_relaunch_agent(lab: Lab, host: int, *launch_args: str) -> None:
    """SIGKILL the agent of a host, wait until it is gone, then `pyweave launch` it again."""
    pid = lab.agent_pid(host)
    assert pid is not None, f"host {host} runs no agent"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), timeout=5, message=f"the agent of host {host} gone")
    r = lab.pyweave(host, "launch", *launch_args)
    assert r.returncode == 0, r.stderr


def capture(lab: Lab, bpf: str) -> subprocess.Popen:
    """tcpdump on the lab switch, pcap on stdout; give it a second to attach."""
    proc = subprocess.Popen(["ip", "netns", "exec", lab.switch, "tcpdump", "-i", "sw", "-nn", "-U", "-w", "-", bpf],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return proc


def transit_rx(lab: Lab, host: int) -> int:
    """Frames received by the transit devices of a host (docs/routing.md), from the kernel's counters."""
    out = lab.exec(host, "ip", "-s", "-o", "link", "show").stdout
    total = 0
    for line in out.splitlines():
        if ": pwrx" in line:
            fields = line.split("RX:")[1].split("\\")[1].split()
            total += int(fields[1])
    return total


def agent_log_tail(lab: Lab, host: int, lines: int = 80) -> str:
    log = lab.state_dir(host) / "agent.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no agent log)"


def host_view(lab: Lab, host: int) -> str:
    """What a host knows, for a failed test's message: `pyweave status` and its connections (routes),
    the kernel's FDB and neighbour entries of its pyweave devices, and its agent log's tail."""
    parts = []
    for argv in (("pyweave", "status"), ("pyweave", "status", "connections")):
        r = lab.pyweave(host, *argv[1:])
        parts.append(f"$ {' '.join(argv)} (rc {r.returncode})\n{r.stdout}{r.stderr}")
    for argv in (("bridge", "fdb", "show"), ("ip", "neigh", "show")):
        r = lab.exec(host, *argv)
        parts.append(f"$ {' '.join(argv)}\n{r.stdout}")
    parts.append(f"agent log of host {host}:\n{agent_log_tail(lab, host)}")
    return "\n".join(parts)


def run_container(lab: Lab, host: int, *args: str) -> str:
    r = lab.pyweave(host, "run", *args)
    if r.returncode != 0:
        pytest.fail(f"pyweave run {' '.join(args)} failed: {r.stderr}\nagent log of host {host}:\n{agent_log_tail(lab, host)}")
    cid = r.stdout.strip()
    assert len(cid) == 64, r.stdout
    return cid




def reachable(cid: str, ips: list[str], *, wait: int = 1) -> set[str]:
    """The subset of ips that cid gets a ping reply from, all probed at once (one docker exec)."""
    script = " ".join(f"(ping -c 1 -W {wait} {ip} >/dev/null 2>&1 && echo {ip}) &" for ip in ips) + " wait"
    out = docker("exec", cid, "sh", "-c", script, timeout=30).stdout
    return set(out.split())


def store_dump(lab: Lab) -> dict[str, str]:
    """Every key and value under /pyweave/v1/, but those that tick by themselves: progress (outside
    the prefix), each host's measured links (RTTs) and the waits of commands in flight."""
    out = lab.etcdctl(0, "get", "--prefix", "/pyweave/v1/").stdout.splitlines()
    ticking = ("/pyweave/v1/links/", "/pyweave/v1/waits/")
    return {k: v for k, v in zip(out[::2], out[1::2]) if not k.startswith(ticking)}


def mac_of(cid: str, ifname: str = "ethwe") -> str:
    return docker("exec", cid, "cat", f"/sys/class/net/{ifname}/address").stdout.strip()


# -- measurements for docs/reliability.md ---------------------------------------------------------
# The failure scenarios of issue 5. Each test records what it measured; tests/lab/conftest.py writes
# docs/reliability.md when every scenario (every part of it) was recorded in one session.
SCENARIOS: dict[int, str] = {
    1: "etcd stopped for 30 s",
    2: "watch behind a compacted revision",
    3: "agent SIGKILL while other hosts add and remove containers",
    4: "host death (agent killed, namespace removed), then return",
    5: "three-member etcd cluster, leader killed",
    6: "Docker daemon restarted",
    7: "bridge, VXLAN device, FDB and neighbour entry deleted by hand",
    8: "bad data written with etcdctl",
    9: "SIGTERM to an agent",
    10: "embedded store of 3: the first host dies",
    11: "embedded store: kill -9 of an etcd member",
    12: "embedded store: `pyweave reset` of a member host",
}
# Scenarios measured by more than one test: the parts, in the order the row shows them.
PARTS: dict[int, tuple[str, ...]] = {8: ("etcdctl", "property")}


@dataclass(frozen=True)
class Target:
    """A figure's target. Tests never assert it (timings depend on the machine and its load): the
    reliability report states target, figure and verdict, as docs/performance.md does for bench/."""

    what: str
    limit: float
    unit: str

    def verdict(self, measured: float, digits: int = 2) -> str:
        met = measured <= self.limit
        return (f"{self.what}: target <= {self.limit:g} {self.unit}, measured {measured:.{digits}f} {self.unit}, "
                f"{'met' if met else '**MISSED**'}")


TARGETS = {
    "outage_cpu": Target("agent CPU during the etcd outage (busiest agent)", 5.0, "% of a core"),
    "intent_after_outage": Target("intent written after etcd's restart applied", 2.0, "s"),
    "repair": Target("slowest repair of a hand-deleted object", 12.0, "s"),
    "sigterm": Target("agent stopped after SIGTERM", 2.0, "s"),
    "run_after_first_host_death": Target("`pyweave run` on two survivors after the first host died", 10.0, "s"),
    "etcd_back": Target("embedded etcd back after kill -9", 5.0, "s"),
    "member_replaced_after_reset": Target("3 healthy voting members again after a member's reset", 30.0, "s"),
}

# number -> part -> {"measured": text, "targets": [verdicts]}
RELIABILITY: dict[int, dict[str, dict]] = {}


def record(number: int, measured: str, *, part: str = "main", targets: list[str] = ()) -> None:
    """Note what a failure scenario measured (and its targets' verdicts, from `Target.verdict`)."""
    assert number in SCENARIOS, number
    assert part in PARTS.get(number, ("main",)), (number, part)
    RELIABILITY.setdefault(number, {})[part] = {"measured": measured, "targets": list(targets)}


def missing_measurements() -> list[str]:
    """Scenarios (or parts of them) not recorded in this session, e.g. ['6', '8 (property)']."""
    missing = []
    for number in SCENARIOS:
        parts = PARTS.get(number, ("main",))
        absent = [p for p in parts if p not in RELIABILITY.get(number, {})]
        if len(absent) == len(parts):
            missing.append(str(number))
        elif absent:
            missing.append(f"{number} ({', '.join(absent)})")
    return missing


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ping_loss(output: str) -> tuple[int, int]:
    """(transmitted, received) from busybox ping's summary."""
    import re

    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", output)
    assert m, output
    return int(m.group(1)), int(m.group(2))
