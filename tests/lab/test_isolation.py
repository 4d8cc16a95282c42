"""Issue 3's acceptance: several networks, attach/detach/expose/hide without restarts, real isolation.

The tests share the module's launched lab and the `holder` fixture's containers; each runs its own
containers on subnets no other test uses, compares kernel state with what it was before its own
change, and undoes what it changes on a host (forwarding, exposed addresses) also on failure.
"""

import pytest
from labtools import docker, mac_of, ping, reachable, run_container, store_dump, wait_for

pytestmark = pytest.mark.lab


def sleeper(lab, host, *cidrs, extra=()):
    return run_container(lab, host, *cidrs, *extra, "busybox", "sleep", "3600")


def test_tutorial_isolation_sequence_across_hosts(launched_lab):
    lab = launched_lab
    x_peer = sleeper(lab, 1, "10.0.0.1/24")
    y_peer = sleeper(lab, 2, "10.10.0.1/24")
    c = sleeper(lab, 0, "10.0.0.2/24")
    started = docker("inspect", "-f", "{{.State.StartedAt}}", c).stdout
    assert reachable(c, ["10.0.0.1", "10.10.0.1"]) == {"10.0.0.1"}

    bridges = lab.inventory(0)["bridges"]
    r = lab.pyweave(0, "detach", "10.0.0.2/24", c)
    assert (r.returncode, r.stdout.strip()) == (0, "10.0.0.2"), r.stderr
    assert "ethwe" not in docker("exec", c, "ip", "link").stdout
    # the last endpoint of 10.0.0.0/24 left host 1: its devices go too
    assert lab.inventory(0)["bridges"] == bridges - 1

    r = lab.pyweave(0, "attach", "10.10.0.2/24", c)
    assert (r.returncode, r.stdout.strip()) == (0, "10.10.0.2"), r.stderr
    assert reachable(c, ["10.0.0.1", "10.10.0.1"]) == {"10.10.0.1"}
    assert ping(y_peer, "10.10.0.2") and not ping(x_peer, "10.0.0.2")
    assert docker("inspect", "-f", "{{.State.StartedAt}}", c).stdout == started  # never restarted


def test_container_on_two_networks_gets_ethwe_and_ethwe1(launched_lab):
    lab = launched_lab
    c = sleeper(lab, 0, "10.40.0.1/24", "10.41.0.1/24")
    names = docker("exec", c, "ls", "/sys/class/net").stdout.split()
    assert "ethwe" in names and "ethwe1" in names
    r = lab.pyweave(0, "detach", c)
    assert sorted(r.stdout.split()) == ["10.40.0.1", "10.41.0.1"]
    assert "ethwe" not in docker("exec", c, "ls", "/sys/class/net").stdout


def test_full_matrix_two_networks_three_hosts_two_containers(launched_lab):
    lab = launched_lab
    members = []  # (cid, network, ip)
    for net in ("10.50", "10.51"):
        for host in range(3):
            for k in range(2):
                ip = f"{net}.0.{host * 10 + k + 1}"
                members.append((sleeper(lab, host, f"{ip}/24"), net, ip))
    for cid, net, ip in members:
        others = [o_ip for _, o_net, o_ip in members if o_ip != ip]
        expected = {o_ip for _, o_net, o_ip in members if o_net == net and o_ip != ip}
        assert reachable(cid, others) == expected, f"{ip} reaches the wrong set"


def test_spoofing_container_cannot_reach_another_network(launched_lab):
    lab = launched_lab
    legit_y = sleeper(lab, 2, "10.61.0.3/24")
    target_y = sleeper(lab, 1, "10.61.0.2/24")
    sleeper(lab, 1, "10.60.0.2/24")
    # --privileged cannot start on this VM (runc may not apply every capability); NET_ADMIN is
    # what the attack needs: change its own addresses, routes and neighbours, send raw ARP.
    spoofer = sleeper(lab, 0, "10.60.0.66/24", extra=("--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW"))
    # Make the host of the spoofer as tempting as possible: exposed on both networks, forwarding on.
    assert lab.pyweave(0, "expose", "10.60.0.100/24", "10.61.0.100/24").returncode == 0
    lab.exec(0, "sysctl", "-w", "net.ipv4.ip_forward=1", check=True)
    try:
        spoofing_fails(lab, spoofer, legit_y, target_y)
    finally:
        lab.exec(0, "sysctl", "-w", "net.ipv4.ip_forward=0", check=True)
        assert lab.pyweave(0, "hide", "10.60.0.100/24", "10.61.0.100/24").returncode == 0


def spoofing_fails(lab, spoofer: str, legit_y: str, target_y: str, *, host: int = 0) -> None:
    """`host`: the spoofer's host, exposed on both networks (10.60.0.100, 10.61.0.100)."""
    assert wait_for(lambda: ping(legit_y, "10.61.0.2") and lab.exec(host, "busybox", "ping", "-c1", "-W1", "10.61.0.2").returncode == 0,
                    timeout=5, message="positive controls")
    target_mac = mac_of(target_y)

    def spoof(*cmds: str) -> bool:
        for cmd in cmds:
            docker("exec", spoofer, "sh", "-c", cmd)
        return ping(spoofer, "10.61.0.2")

    # 1. route through the host's address on its own network
    assert not spoof("ip route add 10.61.0.0/24 via 10.60.0.100")
    # 2. a static neighbour entry with the target's real MAC
    assert not spoof("ip neigh replace 10.61.0.2 lladdr %s dev ethwe" % target_mac)
    # 3. take an address in the other network's subnet
    assert not spoof("ip route del 10.61.0.0/24", "ip addr flush dev ethwe", "ip addr add 10.61.0.66/24 dev ethwe",
                     "ip neigh replace 10.61.0.2 lladdr %s dev ethwe" % target_mac)
    # 4. crafted ARP: claim the target's address, then try again
    docker("exec", spoofer, "arping", "-U", "-c", "2", "-I", "ethwe", "-s", "10.61.0.2", "10.61.0.100")
    assert not ping(spoofer, "10.61.0.2")
    assert ping(legit_y, "10.61.0.2"), "the spoofer disturbed the other network"


def test_expose_and_hide(launched_lab):
    lab = launched_lab
    sleeper(lab, 1, "10.70.0.2/24")
    sleeper(lab, 0, "10.70.0.3/24")  # keeps the network's devices on host 1 after hide
    assert lab.exec(0, "busybox", "ping", "-c1", "-W1", "10.70.0.2").returncode != 0
    r = lab.pyweave(0, "expose", "10.70.0.100/24")
    assert (r.returncode, r.stdout.strip()) == (0, "10.70.0.100"), r.stderr
    assert wait_for(lambda: lab.exec(0, "busybox", "ping", "-c1", "-W1", "10.70.0.2").returncode == 0, timeout=3, message="host reaching a remote container")
    ps = lab.pyweave(0, "ps").stdout.splitlines()
    assert ps[0].startswith("weave:expose ") and ps[0].endswith("10.70.0.100/24"), ps
    keys, kernel = store_dump(lab), [lab.inventory(i) for i in range(3)]
    r = lab.pyweave(0, "expose", "10.70.0.100/24")
    assert (r.returncode, r.stdout.strip()) == (0, "10.70.0.100")
    assert store_dump(lab) == keys and [lab.inventory(i) for i in range(3)] == kernel
    r = lab.pyweave(0, "hide", "10.70.0.100/24")
    assert (r.returncode, r.stdout.strip()) == (0, "10.70.0.100"), r.stderr
    assert lab.exec(0, "busybox", "ping", "-c1", "-W1", "10.70.0.2").returncode != 0
    keys, kernel = store_dump(lab), [lab.inventory(i) for i in range(3)]
    r = lab.pyweave(0, "hide", "10.70.0.100/24")
    assert r.returncode == 1 and "not exposed" in r.stderr
    assert store_dump(lab) == keys and [lab.inventory(i) for i in range(3)] == kernel


@pytest.fixture
def unchanged(launched_lab):
    """Snapshot etcd and every host's kernel objects; the test's bad input must change neither."""
    lab = launched_lab
    before = (store_dump(lab), [lab.inventory(i) for i in range(3)], sorted(lab.containers()))
    yield lab
    after = (store_dump(lab), [lab.inventory(i) for i in range(3)], sorted(lab.containers()))
    assert after == before


@pytest.fixture(scope="module")
def holder(launched_lab):
    lab = launched_lab
    cid = sleeper(lab, 1, "10.80.0.7/24")
    other = sleeper(lab, 0, "10.81.0.7/24")
    stopped = docker("run", "-d", "--network", "none", "--name", f"{lab.prefix}-stopped", "busybox", "true", check=True).stdout.strip()
    wait_for(lambda: docker("inspect", "-f", "{{.State.Running}}", stopped).stdout.strip() == "false", timeout=10, message="exit")
    return cid, other, stopped


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "10.80.0.7/24", "busybox"], "held by container {cid12}"),
        (["attach", "10.80.0.7/24", "{other}"], "held by container {cid12}"),
        (["run", "10.80.1.5/16", "busybox"], "overlaps existing network 10.80.0.0/24"),
        (["run", "10.80.0.9/31", "busybox"], "/31"),
        (["run", "10.80.0.9/32", "busybox"], "/32"),
        (["run", "10.80.0.0/24", "busybox"], "network address"),
        (["run", "10.80.0.255/24", "busybox"], "broadcast"),
        (["expose", "10.80.0.255/24"], "broadcast"),
        (["attach", "10.80.0.9/24", "no-such-container"], "not found"),
        (["attach", "10.80.0.9/24", "{stopped}"], "not running"),
        (["detach", "10.80.0.9/24", "{other}"], "not attached"),
        (["hide", "10.80.0.100/24"], "not exposed"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(unchanged, holder, args, message):
    lab = unchanged
    cid, other, stopped = holder
    subst = {"cid12": cid[:12], "other": other, "stopped": stopped}
    r = lab.pyweave(0, *[a.format(**subst) for a in args])
    assert r.returncode == 1, r.stdout
    assert message.format(**subst) in r.stderr
