"""The compose lab (deploy/docker-compose.yml, docs/compose-lab.md): the tutorial, end to end.

Brings the lab up under a project name of its own (`pwc<hex>`, hosts `pwc<hex>-host1..3`, a free
underlay subnet in 198.19.0.0/16), plays the tutorial through `compose exec hostN pyweave ...`, pings
from a workload container on host1 to one on host2, checks the safety rules (the underlay bridge in
the machine's root namespace has no IPv4 address and the machine no route into the lab; the hosts
have no default route), then `down -v`. In a `finally`, whatever is left is removed: the compose
project and the workload containers (made by the machine's Docker daemon, so `down` alone does not
own them: they are found by their label pyweave.host). Nothing may be left behind.

Needs root, Docker, a compose (`docker compose`, or `docker-compose` v1 or v2; $PYWEAVE_COMPOSE
chooses, e.g. "docker-compose"), and the base image debian:bookworm-slim, which is made here with
deploy/make-base-image.sh (debootstrap) when it is missing. Outside CI a missing prerequisite skips
the test with the reason; in CI (CI=true) it fails it.

Time: about 40 s with warm caches (base image present, image layers cached); cold, add about 90 s for
debootstrap and a minute for the image build (apt and pip downloads).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pyweave_lab import ensure_test_image

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "docker-compose.yml"
MAKE_BASE = REPO / "deploy" / "make-base-image.sh"
BASE_IMAGE = "debian:bookworm-slim"
IMAGE_REPO = "pyweave-lab"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
HOSTS = ("host1", "host2", "host3")


def sh(argv: list[str], *, timeout: float = 120, check: bool = False, env: dict | None = None,
       input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check, env=env,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


def missing(reason: str):
    """Skip outside CI; in CI a missing prerequisite is a broken machine, so fail."""
    if os.environ.get("CI"):
        pytest.fail(f"CI machine broken: {reason}", pytrace=False)
    pytest.skip(reason)


def compose_command() -> list[str] | None:
    """$PYWEAVE_COMPOSE (e.g. "docker-compose"), else `docker compose` (v2 plugin), else
    `docker-compose` (v1, or a v2 binary of that name); None when none answers `version`."""
    chosen = os.environ.get("PYWEAVE_COMPOSE")
    candidates = [shlex.split(chosen)] if chosen else [["docker", "compose"], ["docker-compose"]]
    for argv in candidates:
        if shutil.which(argv[0]) is None:
            continue
        if sh([*argv, "version"], timeout=30).returncode == 0:
            return argv
    return None


def ensure_base_image() -> None:
    if sh(["docker", "image", "inspect", BASE_IMAGE], timeout=30).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        missing(f"no image {BASE_IMAGE} and no debootstrap to make it (apt-get install debootstrap)")
    result = sh(["bash", str(MAKE_BASE), BASE_IMAGE], timeout=900)
    assert result.returncode == 0, f"deploy/make-base-image.sh failed:\n{result.stdout}\n{result.stderr}"


def free_subnet() -> str:
    """A /24 of 198.19.0.0/16 that no Docker network of this machine uses (two labs, two subnets)."""
    used: list[ipaddress.IPv4Network] = []
    ids = sh(["docker", "network", "ls", "-q"], timeout=30).stdout.split()
    if ids:
        out = sh(["docker", "network", "inspect", *ids], timeout=30).stdout
        for net in json.loads(out or "[]"):
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                try:
                    used.append(ipaddress.ip_network(cfg.get("Subnet", ""), strict=False))
                except ValueError:
                    continue
    candidates = [ipaddress.IPv4Network(f"198.19.{i}.0/24") for i in range(1, 255)]
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used if u.version == 4):
            return str(net)
    raise AssertionError("no free /24 in 198.19.0.0/16 for the underlay")


def build_ca_certs() -> str:
    """The machine's own CA certificates (Debian keeps locally added ones here): a machine whose way
    to PyPI re-signs TLS needs them in the image build too, as the compose file documents."""
    if os.environ.get("PYWEAVE_BUILD_CA_CERTS"):
        return os.environ["PYWEAVE_BUILD_CA_CERTS"]
    if not LOCAL_CA_DIR.is_dir():
        return ""
    return "\n".join(p.read_text() for p in sorted(LOCAL_CA_DIR.glob("**/*.crt")))


class ComposeLab:
    def __init__(self, compose: list[str]) -> None:
        self.compose = compose
        self.project = f"pwc{secrets.token_hex(3)}"
        self.tag = f"{IMAGE_REPO}:{self.project}"
        self.subnet = free_subnet()
        self.names = {h: f"{self.project}-{h}" for h in HOSTS}
        self.env = {
            **os.environ,
            "PYWEAVE_LAB_PREFIX": f"{self.project}-",
            "PYWEAVE_LAB_SUBNET": self.subnet,
            "PYWEAVE_LAB_IMAGE": self.tag,
            "PYWEAVE_BUILD_CA_CERTS": build_ca_certs(),
        }
        self.env.pop("PYWEAVE_AUTOLAUNCH", None)  # the test launches by hand, as the tutorial does
        self.timings: dict[str, float] = {}
        self.bridge: str | None = None  # the underlay's bridge in the root namespace, once up

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [*self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return sh(argv, timeout=timeout, env=self.env)

    def exec(self, host: str, *argv: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return self.run("exec", "-T", host, *argv, timeout=timeout)

    def pyweave(self, host: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return self.exec(host, "pyweave", *args, timeout=timeout)

    def timed(self, step: str, started: float) -> None:
        self.timings[step] = round(time.monotonic() - started, 1)

    # -- what the lab made -----------------------------------------------------------------------
    def workloads(self) -> list[str]:
        found: set[str] = set()
        for name in self.names.values():
            out = sh(["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=pyweave.host={name}"], timeout=30)
            found.update(out.stdout.split())
        return sorted(found)

    def project_containers(self) -> list[str]:
        out = sh(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"], timeout=30)
        return out.stdout.split()

    def leftovers(self) -> list[str]:
        left = [f"container {c}" for c in self.project_containers()]
        left += [f"workload container {c[:12]}" for c in self.workloads()]
        for kind in ("network", "volume"):
            out = sh(["docker", kind, "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}"], timeout=30)
            left += [f"{kind} {x}" for x in out.stdout.split()]
            out = sh(["docker", kind, "ls", "--format", "{{.Name}}"], timeout=30)
            left += [f"{kind} {x}" for x in out.stdout.split() if x.startswith(self.project)]
        netns = sh(["ip", "netns", "list"], timeout=30).stdout.splitlines()
        left += [f"netns {n.split()[0]}" for n in netns if n.startswith(self.project)]
        if self.bridge and sh(["ip", "link", "show", "dev", self.bridge], timeout=30).returncode == 0:
            left.append(f"bridge {self.bridge}")
        return sorted(set(left))

    def diagnostics(self) -> str:
        parts = [self.run("ps").stdout, self.run("logs", "--no-color", "--tail", "30").stdout]
        for host in HOSTS:
            log = self.exec(host, "tail", "-n", "30", "/var/lib/pyweave/default/agent.log", timeout=30)
            parts.append(f"--- {host} agent.log:\n{log.stdout}{log.stderr}")
        return "\n".join(parts)

    # -- up and down -----------------------------------------------------------------------------
    def up(self) -> None:
        started = time.monotonic()
        # v1 builds with the classic builder, which keeps the container of a failed step unless told.
        v1 = self.run("version", "--short", timeout=30).stdout.strip().startswith("1.")
        result = self.run("build", *(["--force-rm"] if v1 else []), timeout=900)
        self.timed("build", started)
        assert result.returncode == 0, f"compose build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        started = time.monotonic()
        for _attempt in range(3):
            result = self.run("up", "-d", timeout=300)
            if result.returncode == 0 or "overlap" not in result.stderr.lower():
                break
            # Another run took the same subnet between free_subnet() and now: pick another one.
            self.run("down", "-v", "--remove-orphans", timeout=180)
            self.subnet = self.env["PYWEAVE_LAB_SUBNET"] = free_subnet()
        net = sh(["docker", "network", "inspect", "-f", "{{.Id}}", f"{self.project}_underlay"], timeout=30)
        if net.returncode == 0:
            self.bridge = f"br-{net.stdout.strip()[:12]}"
        assert result.returncode == 0, f"compose up failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        # `up -d` returns once the containers started (etcd healthy first); lab-host then deletes
        # the default route and marks the host ready (the file of the hosts' healthcheck).
        deadline = time.monotonic() + 60
        for host in HOSTS:
            while self.exec(host, "test", "-e", "/run/pyweave-lab-host.ready", timeout=30).returncode != 0:
                assert time.monotonic() < deadline, f"{host} did not become ready within 60 s"
                time.sleep(0.3)
        self.timed("up -d + ready", started)

    def down(self) -> None:
        """`down -v`, then remove by label whatever `down` does not own, and the run's image tag
        (the image stays as pyweave-lab:latest, the build cache of the next run; older, unused
        builds of it are pruned)."""
        self.run("down", "-v", "--remove-orphans", "--timeout", "30", timeout=180)
        left = self.workloads()
        if left:
            sh(["docker", "rm", "-f", *left], timeout=120)
        for kind in ("network", "volume"):
            out = sh(["docker", kind, "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}"], timeout=30)
            for x in out.stdout.split():
                sh(["docker", kind, "rm", x], timeout=60)
        if sh(["docker", "image", "inspect", self.tag], timeout=30).returncode == 0:
            sh(["docker", "tag", self.tag, f"{IMAGE_REPO}:latest"], timeout=30)
            sh(["docker", "rmi", self.tag], timeout=60)
        # Older builds of the lab image that nothing uses or names any more (only this image has the label).
        sh(["docker", "image", "prune", "-f", "--filter", "label=org.pyweave.image=compose-lab"], timeout=120)


@pytest.fixture
def compose_lab():
    if os.geteuid() != 0:
        missing("needs root")
    compose = compose_command()
    if compose is None:
        missing(
            f"needs {os.environ['PYWEAVE_COMPOSE']!r} ($PYWEAVE_COMPOSE), which does not answer `version`"
            if os.environ.get("PYWEAVE_COMPOSE")
            else "needs docker compose (v2 plugin) or docker-compose (apt-get install docker-compose)"
        )
    if sh(["docker", "version", "-f", "{{.Server.Version}}"], timeout=30).returncode != 0:
        missing("needs a running Docker daemon (scripts/dockerd.sh start)")
    ensure_base_image()
    ensure_test_image()
    lab = ComposeLab(compose)
    failed = True
    try:
        lab.up()
        yield lab
        failed = False
    finally:
        if failed:
            try:
                print(lab.diagnostics())
            except Exception as err:  # noqa: BLE001 - diagnostics must not hide the failure
                print(f"(no diagnostics: {err})")
        lab.down()
        print(f"compose lab {lab.project} ({' '.join(compose)}), timings in s: {lab.timings}")
    assert not lab.leftovers(), f"compose lab left behind: {lab.leftovers()}"


def test_compose_lab_tutorial(compose_lab: ComposeLab):
    lab = compose_lab

    # Safety: the underlay's bridge in the machine's root namespace has no IPv4 address, the machine
    # no route into the lab, and no lab host a default route.
    net = sh(["docker", "network", "inspect", "-f", "{{.Id}} {{.Internal}}", f"{lab.project}_underlay"], timeout=30)
    assert net.returncode == 0, net.stderr
    net_id, internal = net.stdout.split()
    assert internal == "true"
    assert lab.bridge == f"br-{net_id[:12]}"
    addrs = sh(["ip", "-4", "-o", "addr", "show", "dev", lab.bridge], timeout=30)
    assert addrs.returncode == 0, addrs.stderr
    assert addrs.stdout.strip() == "", f"the underlay bridge has an IPv4 address in the root namespace: {addrs.stdout}"
    routes = sh(["ip", "-4", "route", "show", "table", "all"], timeout=30).stdout
    subnet = ipaddress.IPv4Network(lab.subnet)
    for line in routes.splitlines():
        dst = line.split()[0]
        if dst[0].isdigit():
            assert not ipaddress.IPv4Network(dst, strict=False).overlaps(subnet), f"root namespace route into the lab: {line}"
    for host in HOSTS:
        r = lab.exec(host, "ip", "-4", "route", "show", "default")
        assert r.returncode == 0 and r.stdout.strip() == "", f"{host} has a default route: {r.stdout}{r.stderr}"

    # [hostN]$ pyweave launch --store http://etcd:2379   (the compose file's etcd service)
    started = time.monotonic()
    for host in HOSTS:
        r = lab.pyweave(host, "launch", "--store", "http://etcd:2379")
        assert r.returncode == 0, f"launch on {host}: {r.stderr}"
        assert r.stdout.strip() == lab.names[host]
    lab.timed("launch x3", started)
    r = lab.pyweave("host1", "status", "peers", "--json")
    assert r.returncode == 0, r.stderr
    peers = {p["name"]: p for p in json.loads(r.stdout)}
    assert set(peers) == set(lab.names.values())
    assert all(p["state"] == "alive" for p in peers.values()), peers
    for p in peers.values():
        assert ipaddress.IPv4Address(p["address"]) in subnet

    # [host1]$ pyweave run 10.0.0.1/24 busybox sleep 3600, and 10.0.0.2/24 on host2
    started = time.monotonic()
    cids = {}
    for host, ip in (("host1", "10.0.0.1"), ("host2", "10.0.0.2")):
        r = lab.pyweave(host, "run", f"{ip}/24", "busybox", "sleep", "3600")
        assert r.returncode == 0, f"run on {host}: {r.stderr}"
        cids[host] = r.stdout.strip().splitlines()[-1]
    lab.timed("run x2", started)
    for host, cid in cids.items():
        label = sh(["docker", "inspect", "-f", '{{index .Config.Labels "pyweave.host"}} {{.HostConfig.NetworkMode}}', cid], timeout=30)
        assert label.stdout.split() == [lab.names[host], "none"]
    r = sh(["docker", "exec", cids["host1"], "ip", "-4", "addr", "show", "ethwe"], timeout=30)
    assert "inet 10.0.0.1/24" in r.stdout, r.stdout + r.stderr

    # [host1]$ docker exec <id> ping -c 3 10.0.0.2   (and back)
    started = time.monotonic()
    for src, dst in ((cids["host1"], "10.0.0.2"), (cids["host2"], "10.0.0.1")):
        deadline = time.monotonic() + 15
        while True:
            r = sh(["docker", "exec", src, "ping", "-c", "3", "-W", "2", dst], timeout=30)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.returncode == 0, f"ping {dst} from {src[:12]} failed:\n{r.stdout}{r.stderr}"
        assert " 0% packet loss" in r.stdout, r.stdout
    lab.timed("pings", started)

    r = lab.pyweave("host1", "ps")
    assert r.returncode == 0 and cids["host1"][:12] in r.stdout and "10.0.0.1/24" in r.stdout, r.stdout + r.stderr

    # `down -v` removes everything, the workload containers too (lab-host removes its host's ones).
    started = time.monotonic()
    r = lab.run("down", "-v", "--timeout", "30", timeout=180)
    lab.timed("down -v", started)
    assert r.returncode == 0, r.stderr
    assert lab.workloads() == [], "`down` left workload containers behind"
