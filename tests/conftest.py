"""Shared test plumbing: privilege tiers and the leak check.

Unit tests need nothing. Kernel tests need root and iproute2 (fresh namespaces); lab tests need
root, the etcd and etcdctl binaries, the docker client and a Docker daemon that answers. A test may
name further binaries it needs with `@pytest.mark.needs_binary("dockerd", install="...")`.

A missing prerequisite:
- outside CI, skips the test with the reason;
- in CI (`CI` set to anything but "", "0", "false" or "no"), FAILS the test: it is replaced by an
  item that fails with the missing prerequisite and how to install it. Never a skip, never an
  xfail: a broken CI machine must not pass by running nothing. The item is a plain `pytest.Item`,
  so none of the test's fixtures run (a lab fixture would otherwise fail first, with a less clear
  error, or not at all). `tests/unit/test_ci_prerequisites.py` checks this in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

TIERS = ("kernel", "lab")

# binary -> how to get it (Debian 12; scripts/setup.sh installs all of them)
INSTALL = {
    "ip": "apt-get install iproute2",
    "etcd": "apt-get install etcd-server",
    "etcdctl": "apt-get install etcd-client",
    "docker": "apt-get install docker.io",
    "dockerd": "apt-get install docker.io",
}
NEEDS = {
    "kernel": ("ip",),
    "lab": ("ip", "etcd", "etcdctl", "docker"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing_binary(binary: str, install: str | None = None) -> str | None:
    if shutil.which(binary) is not None:
        return None
    how = install or INSTALL.get(binary, "see scripts/setup.sh")
    return f"needs the {binary} binary on PATH (install: {how}, or run scripts/setup.sh)"


_daemon_answers: bool | None = None


def _docker_daemon_missing() -> str | None:
    global _daemon_answers
    if _daemon_answers is None:
        try:
            r = subprocess.run(["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True, timeout=30)
            _daemon_answers = r.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _daemon_answers = False
    if _daemon_answers:
        return None
    return "needs a running Docker daemon (start one: scripts/dockerd.sh start; install: apt-get install docker.io)"


def missing_for(item: pytest.Item) -> str | None:
    """The first missing prerequisite of a kernel or lab test, or None."""
    tiers = [t for t in TIERS if t in item.keywords]
    if not tiers:
        return None
    if os.geteuid() != 0:
        return "needs root (run the tests as root: sudo scripts/test.sh)"
    for tier in tiers:
        for binary in NEEDS[tier]:
            reason = _missing_binary(binary)
            if reason:
                return reason
    for mark in item.iter_markers("needs_binary"):
        for binary in mark.args:
            reason = _missing_binary(binary, mark.kwargs.get("install"))
            if reason:
                return reason
    if "lab" in tiers:
        return _docker_daemon_missing()
    return None


class MissingPrerequisite(Exception):
    pass


class PrerequisiteFailure(pytest.Item):
    """Stands in, in CI, for a test whose prerequisite is missing, and fails."""

    def __init__(self, *, reason: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        raise MissingPrerequisite(f"CI machine broken: {self.reason}")

    def repr_failure(self, excinfo, style=None) -> str:
        if isinstance(excinfo.value, MissingPrerequisite):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, self.name


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "kernel: needs root and creates kernel devices in fresh namespaces")
    config.addinivalue_line("markers", "lab: needs real etcd, real Docker and a lab of host namespaces")
    config.addinivalue_line(
        "markers", "needs_binary(*names, install=...): binaries this test needs beyond its tier's"
    )


def pytest_collection_modifyitems(config, items) -> None:
    ci = in_ci()
    for i, item in enumerate(items):
        reason = missing_for(item)
        if not reason:
            continue
        if ci:
            stand_in = PrerequisiteFailure.from_parent(item.parent, name=item.name, reason=reason)
            for mark in item.iter_markers():  # so that -m and -k select it as they would the test
                stand_in.add_marker(getattr(pytest.mark, mark.name)(*mark.args, **mark.kwargs))
            items[i] = stand_in
        else:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def namespaces():
    """Fresh, uniquely named namespaces; a sleeping process stands in for a container's pid.
    Everything is removed afterwards, and a leaked namespace fails the test."""
    import secrets

    made: list[str] = []
    procs: list[subprocess.Popen] = []
    prefix = f"pwk{secrets.token_hex(3)}"

    def make(role: str, *, with_pid: bool = False):
        name = f"{prefix}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        if with_pid:
            proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])
            procs.append(proc)
            return name, proc.pid
        return name

    yield make
    for proc in procs:
        proc.kill()
        proc.wait()
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    leftover = [n for n in listed if n.startswith(prefix)]
    assert not leftover, f"leaked namespaces: {leftover}"
