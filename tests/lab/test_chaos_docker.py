"""Issue 5, scenario 6: the Docker daemon restarts; containers with a restart policy come back
and are re-attached with the same address and MAC.

The test restarts a private Docker daemon of its own, never the machine's: scripts/dockerd.sh
starts a second dockerd with its own socket, data root, exec root and pid files (its overrides),
`DOCKER_HOST` points the lab at it (the agents, the CLI and the `docker` calls of labtools all
inherit the environment), and at the end, also on failure, the daemon is stopped and its data
removed. Other tests may be using the machine's daemon meanwhile: it is never touched.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from labtools import docker, mac_of, ping, record, run_container, wait_for

from pyweave.host import pid_alive
from pyweave_lab import Lab, ensure_test_image, leftovers

pytestmark = pytest.mark.lab

DOCKERD = Path(__file__).resolve().parents[2] / "scripts" / "dockerd.sh"


class PrivateDockerd:
    """A Docker daemon of this test's own, under one temporary directory."""

    def __init__(self) -> None:
        # Short and outside any other daemon's directories: a unix socket path has at most 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="pwdockerd-", dir="/tmp"))
        (self.root / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json, whatever it says
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.env = {
            **os.environ,
            "DOCKER_HOST": self.host,
            "PYWEAVE_DOCKERD_PIDFILE": str(self.root / "started.pid"),
            "PYWEAVE_DOCKERD_LOG": str(self.root / "dockerd.log"),
            "PYWEAVE_DOCKERD_ARGS": " ".join([
                "--host", self.host,
                "--config-file", str(self.root / "daemon.json"),
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"),
            ]),
        }

    def script(self, action: str) -> None:
        r = subprocess.run(["bash", str(DOCKERD), action], env=self.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"dockerd.sh {action} (private daemon) failed:\n{r.stdout}{r.stderr}\n{self.log_tail()}"

    def log_tail(self) -> str:
        try:
            return "\n".join((self.root / "dockerd.log").read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def mounts(self) -> list[str]:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1].replace("\\040", " ") for line in f]
        return [p for p in points if p == str(self.root) or p.startswith(f"{self.root}/")]

    def remove(self) -> None:
        """Stop the daemon (only the one recorded in its own pid file), then delete its data: first
        whatever is still mounted under it, deepest first, and nothing if a mount stays."""
        try:
            self.script("stop")
        finally:
            for point in sorted(self.mounts(), key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True)
            if self.mounts():
                raise AssertionError(f"still mounted under {self.root}: {self.mounts()}; not removed")
            shutil.rmtree(self.root, ignore_errors=True)


def main_daemon_pid() -> int | None:
    """The pid of the machine's default Docker daemon (its default pid file), if it runs."""
    try:
        pid = int(Path("/var/run/docker.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


@pytest.fixture
def private_docker(monkeypatch):
    daemon = PrivateDockerd()
    try:
        daemon.script("start")
        monkeypatch.setenv("DOCKER_HOST", daemon.host)  # for this process and all it starts
        ensure_test_image()  # built from busybox-static into the private daemon
        yield daemon
    finally:
        daemon.remove()
    assert not daemon.root.exists()


@pytest.mark.needs_binary("dockerd", install="apt-get install docker.io")
def test_6_docker_daemon_restart_reattaches_with_same_address_and_mac(private_docker):
    main_daemon = main_daemon_pid()
    assert docker("info", "-f", "{{.DockerRootDir}}").stdout.strip() == str(private_docker.root / "data")
    with Lab(2) as lab:
        assert lab.env()["DOCKER_HOST"] == private_docker.host
        assert lab.pyweave(0, "launch").returncode == 0
        assert lab.pyweave(1, "launch", lab.hosts[0].address).returncode == 0
        c = [run_container(lab, i, f"10.113.0.{i + 1}/24", "--restart", "always", "busybox", "sleep", "3600")
             for i in range(2)]
        assert set(c) <= set(docker("ps", "-q", "--no-trunc").stdout.split())  # in the private daemon
        macs = [mac_of(x) for x in c]
        assert ping(c[0], "10.113.0.2")
        private_docker.script("stop")
        stopped = time.monotonic()
        private_docker.script("start")
        for i, cid in enumerate(c):
            wait_for(lambda: f"10.113.0.{i + 1}/24" in docker("exec", cid, "ip", "-o", "-4", "addr").stdout,
                     timeout=60, interval=0.5, message="re-attachment after the daemon restart")
            assert mac_of(cid) == macs[i]
        back = time.monotonic() - stopped
        assert wait_for(lambda: ping(c[0], "10.113.0.2") and ping(c[1], "10.113.0.1"), timeout=10,
                        message="traffic after the daemon restart")
        record(6,
               f"containers with --restart always came back with the same address and MAC; attached again "
               f"{back:.1f} s after the daemon was stopped (stop + start included; a private daemon of the test's own)")
        prefix = lab.prefix
    assert not leftovers(prefix)
    assert main_daemon_pid() == main_daemon  # the machine's daemon (if any) was not restarted
