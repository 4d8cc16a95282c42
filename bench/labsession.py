"""A launched lab shared by the lab sections: hosts h1..hN, pyweave launched on each.

h1 serves the embedded etcd and the others join it, as in the tutorial. The lab is built on first
use and removed by `close()` (the runner calls it before the control-plane section, which wants
the CPUs to itself, and again on the way out). Commands run "on a host" with `ip netns exec`, and
"in a container" with `nsenter -t <pid> -n`, the host's binaries in the container's network
namespace (busybox has no iperf3).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from bench.machine import REPO
from bench.procs import pid_stat
from pyweave_lab import Lab, LabHost, ensure_test_image, leftovers, sh

IMAGE = "busybox"
PAIR_SUBNET = "10.9.0"  # the data-path containers: 10.9.0.1 on h1, 10.9.0.2 on h2


class BenchError(Exception):
    """A step the measurement depends on failed; the message says which and why."""


class LabSession:
    def __init__(self, hosts: int, say: Callable[[str], None]) -> None:
        self.size = hosts
        self.say = say
        self.lab: Lab | None = None
        self._pair: tuple[str, str] | None = None
        self.launch_rss_kb: dict[int, int] = {}  # each agent's VmRSS right after launch

    # -- lifecycle -----------------------------------------------------------------------------
    label = ""  # what a subclass calls its lab in the progress lines ("plain: ")

    def _launch_args(self, index: int, first: LabHost) -> list[str]:
        """The `pyweave` arguments that launch host `index`: h1 serves the store, the others join it."""
        return ["launch"] if index == 0 else ["launch", first.address]

    def _launched(self, lab: Lab) -> None:
        """Called once pyweave runs on every host (a subclass starts its containers here)."""

    def up(self) -> Lab:
        if self.lab is not None:
            return self.lab
        ensure_test_image()
        lab = Lab(self.size)
        self.lab = lab
        self.say(f"{self.label}building a lab of {self.size} hosts (prefix {lab.prefix})")
        lab.up()
        first = lab.hosts[0]
        for i, host in enumerate(lab.hosts):
            r = lab.pyweave(host, *self._launch_args(i, first))
            if r.returncode != 0:
                raise BenchError(f"pyweave launch on {host.name} failed: {r.stderr.strip()}")
        self.say(f"{self.label}pyweave launched on {', '.join(h.name for h in lab.hosts)}")
        for i in range(len(lab.hosts)):
            pid = lab.agent_pid(i)
            got = pid_stat(pid) if pid else None
            if got:
                self.launch_rss_kb[i] = got[1]
        self._launched(lab)
        return lab

    def close(self) -> None:
        if self.lab is None:
            return
        prefix = self.lab.prefix
        self.say(f"removing the lab {prefix}")
        self.lab.down()
        self.lab = None
        self._pair = None
        left = leftovers(prefix)
        if left:
            self.say(f"WARNING: the lab left behind: {', '.join(left)}")

    @property
    def prefix(self) -> str:
        return self.up().prefix

    def host(self, index: int) -> LabHost:
        return self.up().hosts[index]

    # -- containers ----------------------------------------------------------------------------
    def run_container(self, host: int, cidr: str, *command: str) -> str:
        r = self.up().pyweave(host, "run", cidr, IMAGE, *command)
        cid = r.stdout.strip()
        if r.returncode != 0 or len(cid) != 64:
            raise BenchError(f"pyweave run {cidr} on {self.host(host).name} failed: {r.stderr.strip() or r.stdout}")
        return cid

    def pair(self) -> tuple[str, str]:
        """The two data-path containers, made once: 10.9.0.1/24 on h1 and 10.9.0.2/24 on h2."""
        if self._pair is None:
            a = self.run_container(0, f"{PAIR_SUBNET}.1/24", "sleep", "3600")
            b = self.run_container(1, f"{PAIR_SUBNET}.2/24", "sleep", "3600")
            self._pair = (a, b)
        return self._pair

    @staticmethod
    def container_pid(cid: str) -> int:
        r = sh("docker", "inspect", "-f", "{{.State.Pid}}", cid, check=False)
        pid = int(r.stdout.strip() or 0) if r.returncode == 0 else 0
        if pid <= 0:
            raise BenchError(f"container {cid[:12]} is not running: {r.stderr.strip()}")
        return pid

    # -- running things in namespaces ----------------------------------------------------------
    def in_host(self, host: int) -> list[str]:
        return ["ip", "netns", "exec", self.host(host).name]

    def in_container(self, cid: str) -> list[str]:
        return ["nsenter", "-t", str(self.container_pid(cid)), "-n"]

    @staticmethod
    def in_netns(name: str) -> list[str]:
        return ["ip", "netns", "exec", name]

    @staticmethod
    def python_module(module: str, *args: str) -> list[str]:
        """argv to run a bench helper module (run it with cwd=REPO and `helper_env()`)."""
        return [sys.executable, "-m", module, *args]

    def helper_env(self) -> dict[str, str]:
        env = self.up().env()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.setdefault("GRPC_VERBOSITY", "ERROR")
        return env

    def run(self, argv: list[str], *, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kwargs)
        if check and r.returncode != 0:
            raise BenchError(f"{' '.join(argv[:8])} ... exited {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}")
        return r

    @property
    def store_url(self) -> str:
        return f"http://{self.host(0).address}:2379"
