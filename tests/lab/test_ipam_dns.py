"""Issue 4's acceptance: address allocation through etcd transactions, and DNS for container names.

The tests share the module's lab, never what another test made: each allocates from a subnet of its
own and compares with the state before its own change; the test that kills hosts has a lab of its
own. Timings are not asserted: how soon a removed name stops resolving is a figure of
`python -m bench` (section 3, docs/performance.md).
"""

import ipaddress
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from labtools import docker, ping, run_container, wait_for

from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

UPSTREAM = "198.18.0.250"
UPSTREAM_SERVER = """
import sys
from dnslib import A, QTYPE, RR, RCODE
from dnslib.server import BaseResolver, DNSServer

class Upstream(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        if str(request.q.qname).lower() == "external.example.":
            if request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("192.0.2.10"), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply

DNSServer(Upstream(), address=sys.argv[1], port=53).start()
"""


def launched(lab: Lab, *, store_members: str = "3") -> Lab:
    """Launch three hosts with a dead-host grace of 8 s; their resolv.conf names an upstream DNS
    server that runs inside the lab."""
    up = lab.add_extra("up", 250)
    subprocess.Popen(["ip", "netns", "exec", up.name, sys.executable, "-c", UPSTREAM_SERVER, UPSTREAM],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = lab.pyweave(0, "launch", "--dead-host-grace", "8", "--store-members", store_members)
    assert r.returncode == 0, r.stderr
    for i in (1, 2):
        r = lab.pyweave(i, "launch", lab.hosts[0].address)
        assert r.returncode == 0, r.stderr
    return lab


@pytest.fixture(scope="module")
def lab():
    with Lab(3, upstream_dns=UPSTREAM) as lab:
        yield launched(lab)
        prefix = lab.prefix
    assert not leftovers(prefix)


def held_by(lab, host: int) -> int:
    """The number of addresses `pyweave status ipam` says a host holds."""
    status = lab.pyweave(1, "status", "ipam")
    assert status.returncode == 0, status.stderr
    row = next(line.split() for line in status.stdout.splitlines() if line.startswith(lab.hosts[host].name))
    assert row[2] == "alive", status.stdout
    return int(row[1])


def ipv4_of(cid: str) -> list[str]:
    out = docker("exec", cid, "ip", "-o", "-4", "addr", "show").stdout
    return [line.split()[3] for line in out.splitlines() if " lo " not in line]


def claims(lab, subnet: str) -> dict[str, dict]:
    out = lab.etcdctl(0, "get", "--prefix", f"/pyweave/v1/ips/{subnet.replace('/', '-')}/").stdout.splitlines()
    return {k.rsplit("/", 1)[1]: json.loads(v) for k, v in zip(out[::2], out[1::2])}


def test_run_without_address_allocates_from_the_default_subnet(lab):
    default = ipaddress.IPv4Network("10.32.0.0/12")
    taken = set(claims(lab, str(default)))
    lowest_free = next(str(ip) for ip in default.hosts() if str(ip) not in taken)
    before = held_by(lab, 0)
    cid = run_container(lab, 0, "busybox", "sleep", "3600")
    (cidr,) = ipv4_of(cid)
    assert cidr == f"{lowest_free}/12"  # in the default subnet, lowest free first
    assert "10.32.0.0/12" in lab.pyweave(1, "status", "ipam").stdout
    assert held_by(lab, 0) == before + 1


def test_200_parallel_allocations_from_three_hosts_are_distinct(lab):
    subnet = "10.99.0.0/24"
    with ThreadPoolExecutor(max_workers=12) as pool:
        runs = list(pool.map(lambda i: run_container(lab, i % 3, f"net:{subnet}", "busybox", "sleep", "3600"), range(30)))

        def attach(i: int) -> str:
            cid = runs[i % 30]
            r = lab.pyweave(i % 3, "attach", f"net:{subnet}", cid)
            assert r.returncode == 0, r.stderr
            return r.stdout.strip()

        attached = list(pool.map(attach, range(170)))
    held = claims(lab, subnet)
    assert len(held) == 200
    assert len(set(attached)) == 170
    net = ipaddress.IPv4Network(subnet)
    for ip in held:
        assert ipaddress.IPv4Address(ip) in net and ipaddress.IPv4Address(ip) not in (net.network_address, net.broadcast_address)
    in_containers = [c.split("/")[0] for cid in runs for c in ipv4_of(cid)]
    assert sorted(in_containers) == sorted(held)


def test_ip_reuse_is_reachable_at_once_from_another_host(lab):
    subnet = "10.98.0.0/24"
    first = run_container(lab, 0, f"net:{subnet}", "busybox", "sleep", "3600")
    far = run_container(lab, 1, f"net:{subnet}", "busybox", "sleep", "3600")
    assert ipv4_of(first) == ["10.98.0.1/24"]
    assert ping(far, "10.98.0.1")  # far's ARP cache now holds first's MAC
    docker("rm", "-f", first, check=True)
    wait_for(lambda: "10.98.0.1" not in claims(lab, subnet), timeout=5, message="address release")
    successor = run_container(lab, 2, f"net:{subnet}", "busybox", "sleep", "3600")
    assert ipv4_of(successor) == ["10.98.0.1/24"]
    assert ping(far, "10.98.0.1"), "stale neighbour entry: the reused address is not reachable at once"


def test_docker_restart_keeps_address_and_reachability(lab):
    cid = run_container(lab, 0, "net:10.97.0.0/24", "busybox", "sleep", "3600")
    far = run_container(lab, 1, "net:10.97.0.0/24", "busybox", "sleep", "3600")
    before = ipv4_of(cid)
    docker("restart", "-t", "0", cid, check=True)
    wait_for(lambda: ipv4_of(cid) == before, timeout=5, message="the same address after docker restart")
    assert wait_for(lambda: ping(far, before[0].split("/")[0]), timeout=5, message="reachability after restart")


def test_names_across_hosts_ptr_nxdomain_and_forwarding(lab):
    subnet = "10.96.0.0/24"
    webs = [run_container(lab, i, f"net:{subnet}", "-h", "web.weave.local", "busybox", "sleep", "3600") for i in range(3)]
    client = run_container(lab, 0, f"net:{subnet}", "busybox", "sleep", "3600")
    web_ips = sorted(ipv4_of(w)[0].split("/")[0] for w in webs)

    def resolved(cid: str, name: str) -> list[str]:
        out = docker("exec", cid, "nslookup", name).stdout
        answer = out.split("Name:", 1)[1] if "Name:" in out else ""
        return sorted(line.split()[-1] for line in answer.splitlines() if line.startswith("Address"))

    assert wait_for(lambda: resolved(client, "web.weave.local") == web_ips, timeout=3, message="three web addresses")
    assert docker("exec", client, "ping", "-c", "1", "-W", "2", "web").returncode == 0  # search domain
    assert resolved(client, "WEB.Weave.LOCAL") == web_ips  # case-insensitive
    ptr = docker("exec", client, "nslookup", web_ips[0]).stdout
    assert "web.weave.local" in ptr
    nx = docker("exec", client, "nslookup", "nosuch.weave.local")
    assert nx.returncode != 0 and "NXDOMAIN" in (nx.stdout + nx.stderr)
    assert resolved(client, "external.example") == ["192.0.2.10"]
    # removing one container removes its record everywhere within 2 s
    gone = ipv4_of(webs[2])[0].split("/")[0]
    remaining = sorted(set(web_ips) - {gone})
    other = run_container(lab, 1, f"net:{subnet}", "busybox", "sleep", "3600")
    docker("rm", "-f", webs[2], check=True)
    wait_for(lambda: resolved(client, "web.weave.local") == remaining and resolved(other, "web.weave.local") == remaining,
             timeout=30, message="record removal on every host")
    out = lab.pyweave(2, "dns-lookup", "web")
    assert sorted(out.stdout.split()) == remaining


QUERY = """
import sys
from dnslib import DNSRecord, EDNS0, QTYPE
q = DNSRecord.question(sys.argv[1], "A")
q.add_ar(EDNS0(udp_len=4096))
for tcp in (False, True):
    reply = DNSRecord.parse(q.send("169.254.53.53", 53, tcp=tcp, timeout=3))
    print(len([rr for rr in reply.rr if rr.rtype == QTYPE.A]), reply.header.tc, min([rr.ttl for rr in reply.rr] or [0]), " ".join(str(rr.rdata) for rr in reply.rr))
"""


def test_fifty_records_complete_over_udp_and_tcp_shuffled_with_ttl_1(lab):
    cid = run_container(lab, 1, "net:10.94.0.0/24", "busybox", "sleep", "3600")
    ips = [f"10.94.1.{i}" for i in range(1, 51)]
    r = lab.pyweave(1, "dns-add", *ips, cid, "-h", "many.weave.local")
    assert r.returncode == 0, r.stderr

    def query():
        out = lab.exec(0, sys.executable, "-c", QUERY, "many.weave.local", check=True).stdout.splitlines()
        return [line.split(" ", 3) for line in out]

    rows = wait_for(lambda: (lambda q: q if q[0][0] == "50" else None)(query()), timeout=3, message="50 records")
    for count, truncated, ttl, _ in rows:
        assert (count, truncated, ttl) == ("50", "0", "1")
    orders = {tuple(query()[0][3].split()) for _ in range(5)}
    assert len(orders) > 1, "answers are not shuffled"
    r = lab.pyweave(1, "dns-remove", *ips, cid, "-h", "many.weave.local")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: lab.pyweave(0, "dns-lookup", "many").returncode == 1, timeout=3, message="dns-remove")


@pytest.mark.parametrize(
    "address, message",
    [
        ("net:10.2.3.2/30", "host bits set"),
        ("net:10.2.3.0/31", "/31"),
        ("ip:10.1.2", "10.1.2"),
        ("ip:10.1.2.3/40", "10.1.2.3/40"),
    ],
)
def test_bad_allocation_requests_allocate_nothing(lab, address, message):
    before = lab.etcdctl(0, "get", "--prefix", "--keys-only", "/pyweave/v1/ips/").stdout
    containers = set(lab.containers())
    r = lab.pyweave(0, "run", address, "busybox", "sleep", "3600")
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert lab.etcdctl(0, "get", "--prefix", "--keys-only", "/pyweave/v1/ips/").stdout == before
    assert set(lab.containers()) == containers


def test_full_subnet_says_no_free_address(lab):
    run_container(lab, 0, "net:10.95.0.0/30", "busybox", "sleep", "3600")
    run_container(lab, 1, "net:10.95.0.0/30", "busybox", "sleep", "3600")
    containers = set(lab.containers())
    r = lab.pyweave(2, "run", "net:10.95.0.0/30", "busybox", "sleep", "3600")
    assert r.returncode == 1 and "no free address in 10.95.0.0/30" in r.stderr
    assert set(lab.containers()) == containers
    assert len(claims(lab, "10.95.0.0/30")) == 2


def test_dead_hosts_addresses_wait_for_the_grace_period_and_rmpeer_frees_at_once():
    with Lab(3, upstream_dns=UPSTREAM) as lab:  # kills two of its hosts: a lab of its own
        # Two of its three hosts die: with a store of three members it would lose its quorum, and
        # this test is about addresses, not the store (tests/lab/test_store_ha.py is).
        dead_hosts_addresses(launched(lab, store_members="1"))
        prefix = lab.prefix
    assert not leftovers(prefix)


def dead_hosts_addresses(lab: Lab) -> None:
    subnet = "10.93.0.0/24"
    run_container(lab, 2, f"net:{subnet}", "busybox", "sleep", "3600")  # .1 on host 3
    run_container(lab, 1, f"net:{subnet}", "busybox", "sleep", "3600")  # .2 on host 2
    r = lab.pyweave(0, "rmpeer", lab.hosts[1].name)
    assert r.returncode == 1 and "alive" in r.stderr
    lab.kill_host(2)
    killed_at = time.monotonic()
    # not reused while the lease lives nor during the grace period (8 s after the lease, 10 s)
    early = run_container(lab, 0, f"net:{subnet}", "busybox", "sleep", "3600")
    assert ipv4_of(early) == ["10.93.0.3/24"]
    wait_for(lambda: "10.93.0.1" not in claims(lab, subnet), timeout=40, interval=0.5, message="take-over after grace")
    assert time.monotonic() - killed_at >= 8
    reused = run_container(lab, 0, f"net:{subnet}", "busybox", "sleep", "3600")
    assert ipv4_of(reused) == ["10.93.0.1/24"]
    # rmpeer: host 2 dies; once its lease is gone, rmpeer frees its addresses at once
    held = sum(1 for c in claims_all(lab) if c["host"] == lab.hosts[1].name)
    assert held > 0
    lab.kill_host(1)
    outputs = []

    def rmpeer() -> bool:
        r = lab.pyweave(0, "rmpeer", lab.hosts[1].name)
        outputs.append(r)
        return r.returncode == 0

    wait_for(rmpeer, timeout=20, interval=0.5, message="rmpeer once the host is dead")
    assert outputs[-1].stdout.strip() == f"{held} IPs taken over from {lab.hosts[1].name}"
    assert all("alive" in r.stderr for r in outputs[:-1])
    assert "10.93.0.2" not in claims(lab, subnet)
    assert ipv4_of(run_container(lab, 0, f"net:{subnet}", "busybox", "sleep", "3600")) == ["10.93.0.2/24"]


def claims_all(lab) -> list[dict]:
    out = lab.etcdctl(0, "get", "--prefix", "/pyweave/v1/ips/").stdout.splitlines()
    return [json.loads(v) for v in out[1::2]]


def test_launch_refuses_a_different_range_and_a_range_over_a_route():
    with Lab(2) as lab:
        assert lab.pyweave(0, "launch").returncode == 0
        r = lab.pyweave(1, "launch", lab.hosts[0].address, "--ipalloc-range", "10.64.0.0/12")
        assert r.returncode == 1
        assert "this cluster uses --ipalloc-range 10.32.0.0/12, not 10.64.0.0/12" in r.stderr
        lab.exec(1, "ip", "route", "add", "10.32.5.0/24", "dev", "eth0", check=True)
        r = lab.pyweave(1, "launch", lab.hosts[0].address)
        assert r.returncode == 1
        assert "overlaps the route 10.32.5.0/24 dev eth0" in r.stderr
        assert lab.agent_pid(1) is None
        prefix = lab.prefix
    assert not leftovers(prefix)


def test_stopped_container_keeps_its_address(lab):
    cid = run_container(lab, 0, "net:10.92.0.0/24", "busybox", "sleep", "3600")
    before = ipv4_of(cid)
    docker("stop", "-t", "0", cid, check=True)
    assert "10.92.0.1" in claims(lab, "10.92.0.0/24")
    other = run_container(lab, 0, "net:10.92.0.0/24", "busybox", "sleep", "3600")
    assert ipv4_of(other) == ["10.92.0.2/24"]
    docker("start", cid, check=True)
    wait_for(lambda: ipv4_of(cid) == before, timeout=5, message="the same address after docker start")
