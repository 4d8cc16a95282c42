"""Lab fixtures: hosts are namespaces on a switch namespace, with real etcd and real Docker; a throwaway
etcd for the store tests; and the generator of docs/reliability.md."""

import dataclasses
import datetime
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pyweave_lab import Lab, ensure_test_image, leftovers
from store.errors import StoreError
from store.http import HttpStore

# -- a throwaway etcd: the store tests' (test_store, test_watch_requests), one per module -----------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """A throwaway single-member etcd on loopback, in a temporary data directory."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pyweave-store-test-")
        self.client, self.peer = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.client}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["etcd", "--data-dir", self.dir, "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--initial-cluster", f"default=http://127.0.0.1:{self.peer}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                HttpStore([self.url], timeout=0.5).revision()
                return
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def etcd():
    server = Etcd()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def test_image():
    ensure_test_image()


@pytest.fixture(scope="module")
def launched_lab():
    """Three launched hosts: h1 serves the embedded etcd, h2 and h3 join through h1's address."""
    with Lab(3) as lab:
        r = lab.pyweave(0, "launch")
        assert r.returncode == 0, r.stderr
        for i in (1, 2):
            r = lab.pyweave(i, "launch", lab.hosts[0].address)
            assert r.returncode == 0, r.stderr
        yield lab
        prefix = lab.prefix
    assert not leftovers(prefix), f"lab left behind: {leftovers(prefix)}"


REPORT = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
CHAOS_TESTS = ("tests/lab/test_chaos.py", "tests/lab/test_chaos_cluster.py", "tests/lab/test_chaos_docker.py",
               "tests/lab/test_store_ha.py")
_report_note: list[str] = []


def pytest_sessionfinish(session, exitstatus):
    """Generate docs/reliability.md, every line of it, from what the failure scenarios recorded
    (labtools.record) in this session: tests/lab/test_chaos.py, test_chaos_cluster.py,
    test_chaos_docker.py and test_store_ha.py (the embedded store's scenarios, 10-12).

    The file is written only when every scenario (every part of it, labtools.PARTS) was recorded
    in this session. A run of only some scenarios (one test alone, a failed scenario) writes
    nothing and says so at the end of the run, so the committed file never mixes runs and never
    loses rows. The settings in force (resync period, lease TTL) are read from the code's
    defaults (pyweave.host.HostConfig), not written by hand.
    """
    from labtools import RELIABILITY, missing_measurements

    if not RELIABILITY:
        return
    missing = missing_measurements()
    if missing:
        _report_note.append(
            f"{REPORT.relative_to(REPORT.parents[1])} not written: scenarios not measured in this session: "
            f"{', '.join(missing)} (it is written only when all of them ran: {' '.join(CHAOS_TESTS)})"
        )
        return
    REPORT.write_text(render_reliability())
    _report_note.append(f"wrote {REPORT}")


def pytest_terminal_summary(terminalreporter):
    for line in _report_note:
        terminalreporter.write_line(f"reliability report: {line}")


def _commit() -> str:
    root = REPORT.parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "commit unknown"
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty else "")


def _default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def render_reliability() -> str:
    from labtools import PARTS, RELIABILITY, SCENARIOS

    from pyweave.host import HostConfig

    resync = _default(HostConfig, "resync_interval")
    lease_ttl = _default(HostConfig, "lease_ttl")
    now = datetime.datetime.now(datetime.UTC)
    lines = [
        "# Reliability: what the failure suite measured",
        "",
        "<!-- Generated file: do not edit by hand. -->",
        "Generated by `pytest_sessionfinish` in `tests/lab/conftest.py` from what the failure scenarios of",
        f"issue 5 recorded in one pytest session ({', '.join(f'`{t}`' for t in CHAOS_TESTS)}); it is",
        "written only when every scenario ran in that session. Regenerate, as root:",
        f"`scripts/test.sh {' '.join(CHAOS_TESTS)}`.",
        "",
        "Each row is one scenario, run on a lab of hosts (network namespaces) with real etcd, real Docker",
        "and real kernel devices. Targets are reported here, not asserted by the tests (timings depend on",
        "the machine and its load); a target not met says **MISSED**.",
        "",
        f"Run: {now:%Y-%m-%d %H:%M} UTC, {_commit()}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"Python {platform.python_version()}.",
        f"Settings in force (defaults of `pyweave.host.HostConfig`): full resync every {resync:g} s "
        f"(`resync_interval`), host lease TTL {lease_ttl:g} s (`lease_ttl`).",
        "",
        "| # | scenario | measured | targets |",
        "|---|---|---|---|",
    ]
    verdicts = []
    for number, scenario in SCENARIOS.items():
        parts = [RELIABILITY[number][p] for p in PARTS.get(number, ("main",))]
        measured = "; ".join(p["measured"] for p in parts)
        targets = [t for p in parts for t in p["targets"]]
        verdicts += targets
        cell = "; ".join(targets) or "none"
        lines.append(f"| {number} | {scenario} | {measured.replace('|', '/')} | {cell.replace('|', '/')} |")
    missed = [t for t in verdicts if t.endswith("**MISSED**")]
    lines += ["", f"Targets: {len(verdicts) - len(missed)} of {len(verdicts)} met."
              + (" Missed: " + "; ".join(t.rsplit(":", 1)[0] for t in missed) + "." if missed else "")]
    return "\n".join(lines) + "\n"
