"""A lab of several hosts on one machine, for the tests and the demo.

Each host is a network namespace with one underlay interface `eth0` (198.18.0.N/24, the benchmarking
range) plugged into a bridge that lives in its own "switch" namespace: never in the root namespace,
where Docker's FORWARD policy and bridge netfilter drop the traffic. Lab addresses exist only inside
lab namespaces; no namespace gets a default route, and test containers have no Docker network.

Every name carries a per-run prefix (`pw<hex>`). `Lab.down()` (also run by the context manager on
failure and Ctrl-C) kills every process in the lab's namespaces, removes the containers of its hosts
and the namespaces, and deletes the state directories.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

UNDERLAY_NET = "198.18.0"
CUT_TABLE = "pwlab_cut"  # the nftables table of link cuts in a host namespace (Lab.cut)
STORE_PORTS = (2379, 2380)  # etcd's client and peer ports: never cut
TEST_IMAGE = "busybox:latest"
BUSYBOX_APPLETS = (
    "sh ash ping ip ifconfig nslookup sleep cat ls echo true false hostname wget nc arping route "
    "ps grep head tail wc date env sed awk kill uname id top watch mkdir rm"
).split()


def _raise_interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sh(*argv: str, check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout, **kwargs)


@dataclass(frozen=True)
class LabHost:
    name: str  # also the namespace name and the pyweave host name
    address: str


class Lab:
    def __init__(self, hosts: int, *, prefix: str | None = None, mtu: int = 1500, upstream_dns: str | None = None) -> None:
        """upstream_dns: the nameserver the hosts' /etc/resolv.conf names (none by default, so
        nothing in the lab ever asks a resolver outside it)."""
        self.upstream_dns = upstream_dns
        self.prefix = prefix or f"pw{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}-sw"
        self.mtu = mtu
        self.hosts = [LabHost(f"{self.prefix}-h{i + 1}", f"{UNDERLAY_NET}.{i + 1}") for i in range(hosts)]
        self.state_root = Path(tempfile.mkdtemp(prefix=f"pyweave-{self.prefix}-"))
        self._namespaces: list[str] = []
        # link cuts: host name -> ("in" | "out", peer address) it drops (see `cut`)
        self._drops: dict[str, set[tuple[str, str]]] = {}

    # -- building ------------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        # SIGTERM (a timeout, a CI runner) must clean up like Ctrl-C does: turn it into an exception
        # that unwinds through __exit__. Only the main thread may set signal handlers.
        self._old_term = None
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.down()
        finally:
            if self._old_term is not None:
                signal.signal(signal.SIGTERM, self._old_term)

    def _netns_add(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def up(self) -> None:
        self._netns_add(self.switch)
        sh("ip", "-n", self.switch, "link", "add", "sw", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "sw", "up")
        for i, host in enumerate(self.hosts):
            self.add_host_namespace(host, i + 1)

    def add_host_namespace(self, host: LabHost, index: int) -> None:
        # `ip netns exec` mounts /etc/netns/<name>/resolv.conf over /etc/resolv.conf.
        etc = Path("/etc/netns", host.name)
        etc.mkdir(parents=True, exist_ok=True)
        line = f"nameserver {self.upstream_dns}\n" if self.upstream_dns else ""
        (etc / "resolv.conf").write_text(f"# pyweave lab {self.prefix}\n{line}")
        self._netns_add(host.name)
        port = f"p{index}"
        sh("ip", "link", "add", f"{self.prefix}p{index}", "mtu", str(self.mtu), "type", "veth",
           "peer", "name", f"{self.prefix}q{index}", "mtu", str(self.mtu))
        sh("ip", "link", "set", f"{self.prefix}p{index}", "netns", self.switch)
        sh("ip", "link", "set", f"{self.prefix}q{index}", "netns", host.name)
        sh("ip", "-n", self.switch, "link", "set", f"{self.prefix}p{index}", "name", port)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "sw", "up")
        sh("ip", "-n", host.name, "link", "set", f"{self.prefix}q{index}", "name", "eth0")
        sh("ip", "-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
        sh("ip", "-n", host.name, "link", "set", "eth0", "up")

    def host(self, ref: int | str) -> LabHost:
        if isinstance(ref, int):
            return self.hosts[ref]
        return next(h for h in self.hosts if h.name == ref)

    # -- acting as a host ----------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYWEAVE_STATE_ROOT"] = str(self.state_root)
        env.pop("PYWEAVE_STORE", None)
        return env

    def pyweave(self, host: LabHost | int, *args: str, timeout: float = 90, check: bool = False) -> subprocess.CompletedProcess:
        """`ip netns exec HOST pyweave ARGS`, with this lab's state root."""
        h = self.host(host) if isinstance(host, int) else host
        return sh(
            "ip", "netns", "exec", h.name, sys.executable, "-m", "pyweave_cmd.cli", *args,
            check=check, timeout=timeout, env=self.env(),
        )

    def exec(self, host: LabHost | int, *argv: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        h = self.host(host) if isinstance(host, int) else host
        return sh("ip", "netns", "exec", h.name, *argv, check=check, timeout=timeout, env=self.env())

    def state_dir(self, host: LabHost | int) -> Path:
        h = self.host(host) if isinstance(host, int) else host
        return self.state_root / h.name

    def agent_pid(self, host: LabHost | int) -> int | None:
        try:
            return int((self.state_dir(host) / "agent.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def inventory(self, host: LabHost | int) -> dict[str, int]:
        out = self.exec(host, sys.executable, "-c", "import json; from dataplane.host import inventory; print(json.dumps(inventory()))", check=True)
        return json.loads(out.stdout)

    def etcdctl(self, host: LabHost | int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        h = self.host(host) if isinstance(host, int) else host
        return sh(
            "ip", "netns", "exec", h.name, "etcdctl", f"--endpoints=http://{self.hosts[0].address}:2379", *args,
            check=check, env={**self.env(), "ETCDCTL_API": "3"},
        )

    def add_extra(self, role: str, index: int) -> LabHost:
        """One more namespace on the switch (e.g. an upstream DNS server) at 198.18.0.<index>."""
        extra = LabHost(f"{self.prefix}-{role}", f"{UNDERLAY_NET}.{index}")
        self.add_host_namespace(extra, index)
        return extra

    def spawn(self, host: LabHost | int, *argv: str, log: Path | None = None) -> subprocess.Popen:
        """Start a long-running process inside a host (killed with the lab)."""
        h = self.host(host) if isinstance(host, int) else host
        out = open(log, "ab") if log else subprocess.DEVNULL
        return subprocess.Popen(
            ["ip", "netns", "exec", h.name, *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, env=self.env(),
        )

    def kill_host(self, host: LabHost | int) -> None:
        """A host dies: every process in its namespace is killed and the namespace is removed."""
        h = self.host(host) if isinstance(host, int) else host
        # Killed again until none is left: a supervisor killed a moment after its child may have
        # started it again meanwhile, and one process left keeps the namespace, its link and its
        # sockets alive after `ip netns del` (the host would not be dead at all).
        deadline = time.monotonic() + 5
        while pids := sh("ip", "netns", "pids", h.name, check=False).stdout.split():
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {h.name}: processes {' '.join(pids)} still alive 5 s after SIGKILL")
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            time.sleep(0.05)
        sh("ip", "netns", "del", h.name, check=False)

    # -- breaking links ------------------------------------------------------------------------
    def cut(self, a: LabHost | int, b: LabHost | int) -> None:
        """Cut the underlay between hosts a and b, both ways: each drops what it sends to and
        receives from the other's underlay address (nftables table `inet pwlab_cut` in both host
        namespaces). The store's ports (TCP 2379 and 2380, either side) are exempt: the data path
        and the link probes break, etcd stays reachable. Idempotent; `restore` undoes it."""
        ha, hb = self._lab_host(a), self._lab_host(b)
        self._drops.setdefault(ha.name, set()).update({("in", hb.address), ("out", hb.address)})
        self._drops.setdefault(hb.name, set()).update({("in", ha.address), ("out", ha.address)})
        self._apply_cuts(ha, hb)

    def cut_one_way(self, a: LabHost | int, b: LabHost | int) -> None:
        """a no longer receives what b sends it (b still receives what a sends); undone by `restore`."""
        ha, hb = self._lab_host(a), self._lab_host(b)
        self._drops.setdefault(ha.name, set()).add(("in", hb.address))
        self._apply_cuts(ha)

    def cut_all(self, a: LabHost | int) -> None:
        """Cut every link of host a (to the other hosts of the lab)."""
        ha = self._lab_host(a)
        for other in self.hosts:
            if other.name != ha.name:
                self.cut(ha, other)

    def restore(self, a: LabHost | int, b: LabHost | int) -> None:
        """Undo every cut between a and b (both ways, one way or both). Idempotent."""
        ha, hb = self._lab_host(a), self._lab_host(b)
        for host, peer in ((ha, hb), (hb, ha)):
            self._drops.get(host.name, set()).difference_update({("in", peer.address), ("out", peer.address)})
        self._apply_cuts(ha, hb)

    def restore_all(self) -> None:
        """Undo every cut of the lab."""
        cut = [self._lab_host(name) for name, drops in self._drops.items() if drops]
        self._drops.clear()
        self._apply_cuts(*cut)

    def cuts(self, host: LabHost | int) -> set[tuple[str, str]]:
        """What host drops: ("in", address) and ("out", address) pairs."""
        return set(self._drops.get(self._lab_host(host).name, set()))

    def _lab_host(self, ref: LabHost | int | str) -> LabHost:
        return ref if isinstance(ref, LabHost) else self.host(ref)

    def _apply_cuts(self, *hosts: LabHost) -> None:
        """Write each host's table from `_drops`, in one nft transaction per host (the add-then-
        delete idiom makes it idempotent); a host with nothing to drop has no table at all."""
        for host in hosts:
            drops = self._drops.get(host.name, set())
            script = f"add table inet {CUT_TABLE}\ndelete table inet {CUT_TABLE}\n"
            if drops:
                sources = ", ".join(sorted(addr for way, addr in drops if way == "in"))
                destinations = ", ".join(sorted(addr for way, addr in drops if way == "out"))
                exempt = ", ".join(str(port) for port in STORE_PORTS)
                script += (
                    f"table inet {CUT_TABLE} {{\n"
                    f"  chain input {{ type filter hook input priority -10; policy accept;\n"
                    f"    tcp dport {{ {exempt} }} accept\n    tcp sport {{ {exempt} }} accept\n"
                    + (f"    ip saddr {{ {sources} }} drop\n" if sources else "")
                    + "  }\n"
                    f"  chain output {{ type filter hook output priority -10; policy accept;\n"
                    f"    tcp dport {{ {exempt} }} accept\n    tcp sport {{ {exempt} }} accept\n"
                    + (f"    ip daddr {{ {destinations} }} drop\n" if destinations else "")
                    + "  }\n}\n"
                )
            sh("ip", "netns", "exec", host.name, "nft", "-f", "-", input=script)

    # -- tearing down --------------------------------------------------------------------------
    def containers(self) -> list[str]:
        out = sh("docker", "ps", "-aq", "--no-trunc", "--filter", "label=pyweave.host", check=False)
        mine = []
        for cid in out.stdout.split():
            labels = sh("docker", "inspect", "-f", "{{index .Config.Labels \"pyweave.host\"}} {{.Name}}", cid, check=False)
            words = labels.stdout.split()
            if any(w.lstrip("/").startswith(self.prefix) for w in words):
                mine.append(cid)
        named = sh("docker", "ps", "-aq", "--no-trunc", "--filter", f"name=^/{self.prefix}", check=False)
        return sorted(set(mine) | set(named.stdout.split()))

    def down(self) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        try:
            for ns in reversed(self._namespaces):
                pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
            cids = self.containers()
            if cids:
                sh("docker", "rm", "-f", *cids, check=False, timeout=120)
            for ns in reversed(self._namespaces):
                deadline = time.monotonic() + 5
                while sh("ip", "netns", "pids", ns, check=False).stdout.strip() and time.monotonic() < deadline:
                    time.sleep(0.05)
                sh("ip", "netns", "del", ns, check=False)
                shutil.rmtree(Path("/etc/netns", ns), ignore_errors=True)
            self._namespaces.clear()
            shutil.rmtree(self.state_root, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old)


def leftovers(prefix: str) -> list[str]:
    """Namespaces, containers and processes of a lab prefix still present (leak check)."""
    found = []
    for name in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        if name.startswith(prefix):
            found.append(f"netns {name.split()[0]}")
    out = sh("docker", "ps", "-a", "--format", "{{.Names}} {{.Labels}}", check=False).stdout
    for line in out.splitlines():
        if prefix in line:
            found.append(f"container {line.split()[0]}")
    return found


def ensure_test_image(name: str = TEST_IMAGE) -> None:
    """A busybox image built locally from Debian's busybox-static (no registry needed); any image
    of that name already present is used as it is."""
    if sh("docker", "image", "inspect", name, check=False).returncode == 0:
        return
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed: apt-get install busybox-static")
    with tempfile.TemporaryDirectory() as root:
        bindir = Path(root, "bin")
        bindir.mkdir()
        shutil.copy(busybox, bindir / "busybox")
        for applet in BUSYBOX_APPLETS:
            (bindir / applet).symlink_to("busybox")
        Path(root, "etc").mkdir()
        Path(root, "tmp").mkdir()
        Path(root, "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        sh("docker", "import", "-c", 'CMD ["/bin/sh"]', "-", name, stdin=tar.stdout, timeout=120)
        tar.wait()
