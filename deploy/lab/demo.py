"""The tutorial, played on a lab of hosts on this machine: `pyweave-demo` (as root).

It follows the weave tutorial (seed/weave-tutorial.txt) step by step: launch on the first host, launch
the others against it, look at the status, run a busybox container on each host in 10.0.0.0/24, look
at its `ethwe` interface, ping between every pair of containers, list the attached containers, expose
host1 on the network and ping the other hosts' containers from host1 itself. Each
step is printed as a user would type it on that host (`[host1]$ pyweave launch`), followed by its
output, indented.

The hosts are network namespaces built by `pyweave_lab.Lab`; `[host2]$ pyweave ...` runs
`ip netns exec <lab>-h2 pyweave ...`. The lab is always removed at the end: on success, on a failed
step, on Ctrl-C and on SIGTERM. Exit status: 0 when every step worked, 1 otherwise, 130 when
interrupted. Needs a Docker daemon (`scripts/demo.sh` starts one if none runs).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from pyweave_lab import TEST_IMAGE, Lab, LabHost, ensure_test_image, leftovers

INDENT = "    "
SUBNET_PREFIX = "10.0.0"
CID_RE = re.compile(r"^[0-9a-f]{64}$")


class StepFailed(Exception):
    """A step the rest of the tutorial depends on did not work."""


@dataclass
class Tally:
    steps: int = 0
    failed: list[str] = field(default_factory=list)
    pings: int = 0
    pings_ok: int = 0


def out(text: str = "") -> None:
    print(text, flush=True)


def indented(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        out((INDENT + line).rstrip())


# -- signals --------------------------------------------------------------------------------------
_stopping = False


def _interrupt(signum: int, _frame) -> None:
    """First Ctrl-C or SIGTERM: stop the tutorial (the Lab's context manager cleans up). Later ones
    are ignored, so that nothing interrupts the cleanup."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    name = signal.Signals(signum).name
    out(f"\n{name} received: stopping and removing the lab (this takes a few seconds)")
    raise KeyboardInterrupt


def _install_signal_handlers() -> None:
    # SIGINT too: a background job of a non-interactive shell starts with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


# -- the tutorial ---------------------------------------------------------------------------------
class Tutorial:
    def __init__(self, lab: Lab, tally: Tally) -> None:
        self.lab = lab
        self.tally = tally
        self.labels = {h.name: f"host{i + 1}" for i, h in enumerate(lab.hosts)}
        self.containers: dict[str, tuple[LabHost, str]] = {}  # ip -> (host, container id)

    def show(self, host: LabHost, argv: list[str], result: subprocess.CompletedProcess, *, ok: bool | None = None) -> bool:
        """Print one step as typed on host, then its output; count it."""
        out(f"[{self.labels[host.name]}]$ {shlex.join(argv)}")
        if result.stdout.strip():
            indented(result.stdout)
        if result.stderr.strip():
            indented(result.stderr)
        good = (result.returncode == 0) if ok is None else ok
        self.tally.steps += 1
        if not good:
            self.tally.failed.append(f"[{self.labels[host.name]}] {shlex.join(argv)}")
            out(f"{INDENT}!! step failed (exit status {result.returncode})")
        out()
        return good

    def pyweave(self, host: LabHost, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        try:
            result = self.lab.pyweave(host, *args, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            result = _timed_out(err)
        self.show(host, ["pyweave", *args], result)
        return result

    def docker(self, host: LabHost, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        try:
            return self.lab.exec(host, "docker", *args, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            return _timed_out(err)

    def require(self, result: subprocess.CompletedProcess, what: str) -> None:
        if result.returncode != 0:
            raise StepFailed(what)

    # -- steps ------------------------------------------------------------------------------------
    def launch(self) -> None:
        first, *others = self.lab.hosts
        out("## Launch pyweave on each host: the first one starts the store (etcd), the others join it")
        out()
        self.require(self.pyweave(first, "launch"), "launch on host1")
        for host in others:
            self.require(self.pyweave(host, "launch", first.address), f"launch on {self.labels[host.name]}")

    def status(self) -> None:
        out("## Check the status: every host is a peer")
        out()
        self.pyweave(self.lab.hosts[0], "status")
        self.pyweave(self.lab.hosts[min(1, len(self.lab.hosts) - 1)], "status", "peers")

    def run_containers(self) -> None:
        out(f"## Run a busybox container on each host, attached to {SUBNET_PREFIX}.0/24")
        out()
        for i, host in enumerate(self.lab.hosts):
            ip = f"{SUBNET_PREFIX}.{i + 1}"
            result = self.pyweave(host, "run", f"{ip}/24", "-t", "-i", "busybox")
            lines = result.stdout.split()
            cid = lines[-1] if lines else ""
            if result.returncode != 0 or not CID_RE.match(cid):
                raise StepFailed(f"pyweave run on {self.labels[host.name]}")
            self.containers[ip] = (host, cid)

    def interfaces(self) -> None:
        out("## The container's interface `ethwe` carries the address given to `pyweave run`")
        out()
        ip, (host, cid) = next(iter(self.containers.items()))
        argv = ["docker", "exec", cid[:12], "ip", "addr", "show", "ethwe"]
        result = self.docker(host, *argv[1:])
        self.show(host, argv, result, ok=result.returncode == 0 and f"inet {ip}/24" in result.stdout)

    def pings(self) -> None:
        out("## Ping between every pair of containers, across hosts")
        out()
        for src_ip, (host, cid) in self.containers.items():
            for dst_ip in self.containers:
                if dst_ip == src_ip:
                    continue
                argv = ["docker", "exec", cid[:12], "ping", "-c", "3", dst_ip]
                self.ping_result(host, argv, self.docker(host, *argv[1:], timeout=30))

    def ps(self) -> None:
        out("## The attached containers of host1: short ID, MAC, addresses")
        out()
        self.pyweave(self.lab.hosts[0], "ps")

    def expose(self) -> None:
        host = self.lab.hosts[0]
        out(f"## Expose: host1 itself joins {SUBNET_PREFIX}.0/24 and reaches the containers on every host")
        out()
        if self.pyweave(host, "expose", f"{SUBNET_PREFIX}.100/24").returncode != 0:
            return
        for dst_ip, (where, _cid) in self.containers.items():
            if where == host:
                continue
            # Debian's minimal images have no ping; busybox (busybox-static, as for the image) has one.
            ping = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
            argv = [*ping, "-c", "3", dst_ip]
            try:
                result = self.lab.exec(host, *argv, timeout=30)
            except subprocess.TimeoutExpired as err:
                result = _timed_out(err)
            self.ping_result(host, argv, result)

    def ping_result(self, host: LabHost, argv: list[str], result: subprocess.CompletedProcess) -> None:
        """Show a ping's summary lines only; it counts as ok when no packet was lost."""
        summary = [
            line for line in result.stdout.splitlines()
            if "packets transmitted" in line or line.startswith(("round-trip", "rtt"))
        ]
        ok = result.returncode == 0 and any(" 0% packet loss" in line for line in summary)
        shown = subprocess.CompletedProcess(result.args, result.returncode, "\n".join(summary), result.stderr)
        self.tally.pings += 1
        if self.show(host, argv, shown, ok=ok):
            self.tally.pings_ok += 1

    def play(self) -> None:
        self.launch()
        self.status()
        self.run_containers()
        self.interfaces()
        self.pings()
        self.ps()
        self.expose()

    def agent_logs(self, lines: int = 15) -> None:
        """After a failure: the end of each host's agent log, for whoever reads the output."""
        for host in self.lab.hosts:
            path = self.lab.state_dir(host) / "agent.log"
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                continue
            out(f"-- last lines of {self.labels[host.name]}'s agent log ({path}):")
            for line in tail:
                out((INDENT + line).rstrip())


def _timed_out(err: subprocess.TimeoutExpired) -> subprocess.CompletedProcess:
    def text(data: bytes | str | None) -> str:
        return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")

    return subprocess.CompletedProcess(
        err.cmd, 124, text(err.stdout), f"{text(err.stderr).rstrip()}\n(no answer within {err.timeout:.0f}s)".lstrip()
    )


def _docker_answers() -> bool:
    try:
        return subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], check=False, capture_output=True, timeout=15
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def main(argv: list[str] | None = None) -> int:
    global _stopping
    parser = argparse.ArgumentParser(prog="pyweave-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3, help="number of lab hosts (default 3)")
    args = parser.parse_args(argv)
    if args.hosts < 2:
        parser.error("--hosts must be at least 2")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    if os.geteuid() != 0:
        out("pyweave demo: needs root (it creates network namespaces and containers): sudo scripts/demo.sh")
        return 1
    _install_signal_handlers()
    tally = Tally()
    started = time.monotonic()
    interrupted = False
    lab: Lab | None = None
    try:
        if not _docker_answers():
            out("pyweave demo: no Docker daemon answers; start one with `sudo scripts/dockerd.sh start`, "
                "or run `sudo scripts/demo.sh`, which does")
            return 1
        out(f"== pyweave demo: the weave tutorial on a lab of {args.hosts} hosts on this machine")
        out(f"preparing the container image {TEST_IMAGE} (built locally from busybox-static if missing)")
        ensure_test_image()
        lab = Lab(args.hosts)
        out(f"building the lab {lab.prefix}: a switch namespace and {args.hosts} host namespaces ...")
        with lab:
            try:
                for i, host in enumerate(lab.hosts):
                    out(f"{INDENT}host{i + 1} = network namespace {host.name}, underlay eth0 {host.address}/24")
                out(f"each `[hostN]$ ...` below runs `ip netns exec {lab.prefix}-hN ...`")
                out()
                tutorial = Tutorial(lab, tally)
                try:
                    tutorial.play()
                except StepFailed as err:
                    if not tally.failed:
                        tally.failed.append(str(err))
                    out(f"stopping: {err} did not work, and the rest of the tutorial needs it")
                if tally.failed:
                    tutorial.agent_logs()
            finally:
                _stopping = True  # from here on, signals must not interrupt the cleanup
                out(f"removing the lab {lab.prefix}: agents, etcd, containers, namespaces ...")
    except KeyboardInterrupt:
        interrupted = True
    _stopping = True
    leaked: list[str] = []
    if lab is not None:
        leaked = leftovers(lab.prefix)
        out(f"{INDENT}!! left behind: {', '.join(leaked)}" if leaked else f"{INDENT}removed")
    out()
    out(f"== {tally.pings_ok}/{tally.pings} pings ok; {tally.steps - len(tally.failed)}/{tally.steps} steps ok "
        f"in {time.monotonic() - started:.0f}s")
    for failed in tally.failed:
        out(f"{INDENT}failed: {failed}")
    if interrupted:
        out("interrupted")
        return 130
    if tally.failed or leaked or tally.steps == 0:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
