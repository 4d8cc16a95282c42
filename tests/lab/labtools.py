"""Helpers for lab tests: polling with a deadline, docker exec, ping, pyweave run."""

import subprocess
import time

import pytest

from pyweave.lab import Lab


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


