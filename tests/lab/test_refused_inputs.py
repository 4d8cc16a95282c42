"""Issue 15, item 4, end to end: bad input is refused before anything is saved or started.

On a lab of two hosts (real etcd, Docker and kernel), host 1 launched: every refused `launch` on
host 2, and every refused `run`, `attach` and `expose` on host 1, exits with its code and a message
naming the value, with no traceback, and leaves the store, the hosts' state directories, their
processes and Docker's containers as they were. Values written by hand into the store are read back
without a crash. The pure checks behind these: tests/unit/test_inputs.py.
"""

import json
import subprocess

import pytest
from labtools import docker, ping, run_container, store_dump, wait_for

from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

ABSENT_PEER = "198.18.0.200"  # on the lab's underlay, where no host is


def pids(lab: Lab, host: int) -> set[str]:
    return set(subprocess.run(["ip", "netns", "pids", lab.hosts[host].name], capture_output=True,
                              text=True).stdout.split())


@pytest.fixture(scope="module")
def lab():
    with Lab(2) as lab:
        r = lab.pyweave(0, "launch")
        assert r.returncode == 0, r.stderr
        yield lab
        prefix = lab.prefix
    assert not leftovers(prefix), leftovers(prefix)


@pytest.fixture
def unchanged(lab):
    """What no refused command may change: the store, host 2's state, both hosts' processes, the
    lab's containers. Checked after the test."""
    before = (store_dump(lab), lab.state_dir(1).exists(), pids(lab, 0), pids(lab, 1), lab.containers())
    yield
    after = (store_dump(lab), lab.state_dir(1).exists(), pids(lab, 0), pids(lab, 1), lab.containers())
    assert after == before


# (arguments of `pyweave launch` on host 2, exit code, words of the message); "{own}" is host 2's
# address, "{peer}" host 1's.
LAUNCH = [
    (["--store", "https://{peer}:2379"], 2, ["--store https://... needs --store-ca"]),
    (["--store", "{peer}:99999"], 2, ["--store", "1 to 65535"]),
    (["--store", "ftp://{peer}"], 2, ["--store", "ftp://"]),
    (["{peer}:abc"], 2, ["PEER", "{peer}:abc"]),
    (["--mtu", "-5"], 2, ["--mtu", "-5"]),
    (["--mtu", "70000"], 2, ["--mtu", "70000"]),
    (["{peer}", "--mtu", "1460"], 1, ["--mtu 1460 does not fit the underlay eth0", "--mtu 1450 or less"]),
    (["--lease-ttl", "0"], 2, ["--lease-ttl", "0 s"]),
    (["--dead-host-grace", "-1"], 2, ["--dead-host-grace", "above 0"]),
    (["--dead-host-grace", "0"], 2, ["--dead-host-grace"]),
    (["--metrics-port", "70000"], 2, ["--metrics-port", "70000"]),
    (["--metrics-port", "-1"], 2, ["--metrics-port"]),
    (["{peer}", "--metrics-addr", "198.18.0.99"], 1, ["--metrics-addr 198.18.0.99 cannot be listened on"]),
    (["--name", "a/b"], 2, ["--name", "'a/b'"]),
    (["--name", "a=b"], 2, ["--name", "'a=b'"]),
    (["--name", "a,b"], 2, ["--name", "'a,b'"]),
    (["--address", "198.18.0.99"], 1, ["no interface here has address 198.18.0.99"]),
    (["--dns-domain", "."], 2, ["--dns-domain"]),
    (["{own}"], 1, ["{own} is this host's own address"]),
    (["{peer}", "--ipalloc-range", "198.18.0.0/16"], 1, ["198.18.0.0/16 overlaps the route 198.18.0.0/24 dev eth0"]),
    # Reaches the store, which refuses it: the configuration saved for the attempt is taken back.
    (["{peer}", "--ipalloc-range", "10.40.0.0/16"], 1, ["this cluster uses --ipalloc-range 10.32.0.0/12"]),
]


@pytest.mark.parametrize(("args", "code", "words"), LAUNCH, ids=[" ".join(a) for a, _, _ in LAUNCH])
def test_a_refused_launch_leaves_nothing_behind(lab, unchanged, args, code, words):
    fill = {"own": lab.hosts[1].address, "peer": lab.hosts[0].address}
    r = lab.pyweave(1, "launch", *(a.format(**fill) for a in args))
    assert r.returncode == code, r.stderr
    for word in words:
        assert word.format(**fill) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_dead_peer_is_not_saved_for_the_next_launch(lab, unchanged):
    r = lab.pyweave(1, "launch", ABSENT_PEER, timeout=120)
    assert r.returncode == 1 and ABSENT_PEER in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not lab.state_dir(1).exists()


# -- run, attach, expose: a subnet over the host's own routes or addresses -------------------------

@pytest.fixture(scope="module")
def container(lab):
    return run_container(lab, 0, "10.130.0.1/24", "busybox", "sleep", "3600")


@pytest.fixture(scope="module")
def lone_address(lab):
    """An address of host 1 with no route of its own (a /32)."""
    lab.exec(0, "ip", "addr", "add", "172.30.5.5/32", "dev", "eth0", check=True)
    yield "172.30.5.5"
    lab.exec(0, "ip", "addr", "del", "172.30.5.5/32", "dev", "eth0")


COMMANDS = [
    (["run", "198.18.0.77/24", "busybox", "sleep", "60"], "subnet 198.18.0.0/24 overlaps the route 198.18.0.0/24 dev eth0"),
    (["run", "net:198.18.0.0/16", "busybox", "sleep", "60"], "subnet 198.18.0.0/16 overlaps the route 198.18.0.0/24"),
    (["run", "172.30.5.1/24", "busybox", "sleep", "60"], "subnet 172.30.5.0/24 overlaps the address 172.30.5.5 of this host"),
    (["attach", "198.18.0.78/24", "{container}"], "subnet 198.18.0.0/24 overlaps the route 198.18.0.0/24 dev eth0"),
    (["expose", "198.18.1.1/16"], "subnet 198.18.0.0/16 overlaps the route 198.18.0.0/24 dev eth0"),
]


@pytest.mark.parametrize(("args", "words"), COMMANDS, ids=[" ".join(a[:2]) for a, _ in COMMANDS])
def test_a_subnet_over_the_hosts_routes_is_refused(lab, container, lone_address, unchanged, args, words):
    r = lab.pyweave(0, *(a.format(container=container) for a in args))
    assert r.returncode == 1, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr, r.stderr


def problems(lab: Lab, host: int) -> dict[str, str]:
    r = lab.pyweave(host, "status", "--json")
    return {p["key"]: p["problem"] for p in json.loads(r.stdout)["problems"]} if r.returncode == 0 else {}


def test_an_attachment_written_by_hand_over_the_hosts_routes_is_refused_by_the_agent(lab, container):
    """etcdctl skips the CLI's check: the agent refuses the attachment itself (a problem in `status`),
    programs nothing for it (no port, no network, no route over the underlay's), and a working
    attachment rewritten that way keeps its port until the value is fixed."""
    host = lab.hosts[0].name
    other = run_container(lab, 0, "10.130.0.2/24", "busybox", "sleep", "3600")
    bare = docker("run", "-d", "--name", f"{lab.prefix}-byhand", "busybox", "sleep", "3600", check=True).stdout.strip()
    bare_key, other_key = f"/pyweave/v1/attachments/{host}/{bare}", f"/pyweave/v1/attachments/{host}/{other}"
    other_value = lab.etcdctl(0, "get", "--print-value-only", other_key).stdout.strip()
    try:
        lab.etcdctl(0, "put", bare_key, '{"cidrs": ["198.18.0.77/24"]}')
        lab.etcdctl(0, "put", other_key, '{"cidrs": ["198.18.0.78/24"]}')
        found = wait_for(lambda: (lambda p: p if {bare_key, other_key} <= set(p) else None)(problems(lab, 0)),
                         timeout=30, message="both attachments reported as problems")
        for key in (bare_key, other_key):
            assert "subnet 198.18.0.0/24 overlaps the route 198.18.0.0/24 dev eth0 of this host" in found[key], found
        routes = lab.exec(0, "ip", "-4", "route", "show", "table", "main").stdout.splitlines()
        assert [r for r in routes if r.startswith("198.18.0.")] == [r for r in routes if r.startswith("198.18.0.0/24 dev eth0")], routes
        assert lab.etcdctl(0, "get", "--prefix", "--keys-only", "/pyweave/v1/networks/198.18.").stdout.strip() == ""
        assert docker("exec", bare, "ip", "link", "show", "ethwe").returncode != 0
        # The container attached normally works; the one whose attachment was rewritten keeps its port.
        assert ping(container, "10.130.0.2") and ping(other, "10.130.0.1")
    finally:
        lab.etcdctl(0, "del", bare_key, check=False)
        lab.etcdctl(0, "put", other_key, other_value, check=False)
        docker("rm", "-f", bare)
    wait_for(lambda: not {bare_key, other_key} & set(problems(lab, 0)), timeout=30, message="the problems gone")
    assert ping(other, "10.130.0.1")


# -- values written by hand into the store ---------------------------------------------------------

@pytest.mark.parametrize("value", [
    '{"ipalloc_range": "10.32.0.0/12", "default_subnet": "10.32.0.0/12", "dead_host_grace": -5}',
    '{"ipalloc_range": "10.32.0.0/40", "default_subnet": "10.32.0.0/12"}',
    'not json',
    '[]',
])
def test_a_cluster_config_written_by_hand_is_a_message_not_a_crash(lab, value):
    key = "/pyweave/v1/config"
    good = lab.etcdctl(0, "get", "--print-value-only", key).stdout.strip()
    agent = lab.agent_pid(0)
    before = lab.containers()
    try:
        lab.etcdctl(0, "put", key, value)
        r = lab.pyweave(0, "run", "busybox", "sleep", "60")  # needs the config: the default subnet
        assert r.returncode == 1 and f"{key} is invalid" in r.stderr and "fix it with etcdctl" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert lab.containers() == before
        status = lab.pyweave(0, "status")
        assert status.returncode == 0 and key in status.stdout, status.stdout + status.stderr
    finally:
        lab.etcdctl(0, "put", key, good)
    assert lab.agent_pid(0) == agent and str(agent) in pids(lab, 0)


def test_launch_works_after_all_this(lab):
    r = lab.pyweave(1, "launch", lab.hosts[0].address)
    assert r.returncode == 0, r.stderr
    assert docker("ps", "-q", "--filter", f"label=pyweave.host={lab.hosts[1].name}").stdout.strip() == ""
