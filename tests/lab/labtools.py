"""Helpers for lab tests: polling with a deadline, docker exec, ping, pyweave run."""

import subprocess
import time

import pytest

from pyweave_lab import Lab


def wait_for(condition, *, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll until condition() is truthy; return its value or fail with message after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def docker(*args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def ping(cid: str, ip: str, *, count: int = 1, wait: int = 2) -> bool:
    return docker("exec", cid, "ping", "-c", str(count), "-W", str(wait), ip).returncode == 0


def run_container(lab: Lab, host: int, *args: str) -> str:
    r = lab.pyweave(host, "run", *args)
    assert r.returncode == 0, f"pyweave run {' '.join(args)} failed: {r.stderr}"
    cid = r.stdout.strip()
    assert len(cid) == 64, r.stdout
    return cid




def reachable(cid: str, ips: list[str], *, wait: int = 1) -> set[str]:
    """The subset of ips that cid gets a ping reply from, all probed at once (one docker exec)."""
    script = " ".join(f"(ping -c 1 -W {wait} {ip} >/dev/null 2>&1 && echo {ip}) &" for ip in ips) + " wait"
    out = docker("exec", cid, "sh", "-c", script, timeout=30).stdout
    return set(out.split())


def store_dump(lab: Lab) -> dict[str, str]:
    """Every key and value under /pyweave/v1/ (progress keys excluded: they tick by themselves)."""
    out = lab.etcdctl(0, "get", "--prefix", "/pyweave/v1/").stdout.splitlines()
    return dict(zip(out[::2], out[1::2]))


def mac_of(cid: str, ifname: str = "ethwe") -> str:
    return docker("exec", cid, "cat", f"/sys/class/net/{ifname}/address").stdout.strip()


# -- measurements for docs/reliability.md ---------------------------------------------------------
RELIABILITY: dict[int, dict] = {}


def record(number: int, scenario: str, measured: str) -> None:
    """Note what a failure scenario measured; the lab conftest writes docs/reliability.md."""
    RELIABILITY[number] = {"scenario": scenario, "measured": measured}


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
