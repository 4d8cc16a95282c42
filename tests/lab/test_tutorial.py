"""Issue 2's acceptance: Weave's tutorial across lab hosts, with real etcd, Docker and kernel.

The tests share the module's launched lab (tests/lab/conftest.py), never what another test made:
each runs its own containers on its own subnet, and a test that stops or resets a host's agent
leaves it launched again (`relaunched`), so any one passes alone or in any order. Timings are not
asserted here: how soon a hand-written attachment applies is a figure of `python -m bench`
(section 3, docs/performance.md).
"""

import json
import os
import signal
import subprocess
import time

import pytest
from labtools import docker, ping, run_container, wait_for

from pyweave.host import pid_alive
from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

OPEN_WARNING = "WARNING: no --password given: the store (etcd) and the traffic between hosts are open"


@pytest.fixture(autouse=True)
def relaunched(request):
    """After a test on the shared lab, every host's agent runs again, whatever the test did to it
    (stop, reset, SIGKILL) and however it ended."""
    yield
    if "launched_lab" not in request.fixturenames:
        return
    lab = request.getfixturevalue("launched_lab")
    for i in range(len(lab.hosts)):
        pid = lab.agent_pid(i)
        if pid is None or not pid_alive(pid):
            peer = [] if i == 0 else [lab.hosts[0].address]
            r = lab.pyweave(i, "launch", *peer)
            assert r.returncode == 0, r.stderr
            assert f"198.18.0.{i + 1}" in lab.pyweave(i, "status").stdout  # its underlay, not lo


def test_tutorial_steps_across_two_hosts(launched_lab):
    lab = launched_lab
    # 1-2: launched by the fixture; `launch` printed the host names.
    # 3: status has weave-like sections and knows both peers.
    status = lab.pyweave(0, "status")
    assert status.returncode == 0, status.stderr
    for section in ("Service: host", "Service: peers", "Service: store"):
        assert section in status.stdout
    assert f"Name: {lab.hosts[0].name}" in status.stdout
    assert "Address: 198.18.0.1" in status.stdout and "MTU: 1450" in status.stdout
    data_run = lab.pyweave(1, "status", "--json")
    data = json.loads(data_run.stdout)
    assert data["host"]["name"] == lab.hosts[1].name and data["store"]["reachable"]
    # No secret (the tutorial has none): one warning line on stderr, stdout (the JSON) untouched.
    for r in (status, data_run):
        assert r.stderr.count(OPEN_WARNING) == 1 and r.stderr.count("\n") == 1, r.stderr

    # 4: run on A and on B.
    c1 = run_container(lab, 0, "10.0.0.1/24", "-t", "-i", "busybox")
    c2 = run_container(lab, 1, "10.0.0.2/24", "-t", "-i", "busybox")
    # 5: ethwe with exactly the address and the underlay MTU minus VXLAN's 50 bytes.
    for cid, addr in ((c1, "10.0.0.1/24"), (c2, "10.0.0.2/24")):
        shown = docker("exec", cid, "ip", "-o", "-4", "addr", "show", "ethwe").stdout
        assert [line.split()[3] for line in shown.splitlines()] == [addr]
        assert "mtu 1450" in docker("exec", cid, "ip", "link", "show", "ethwe").stdout
    # ...and they ping each other both ways, the very first ping included.
    assert ping(c2, "10.0.0.1"), "first ping B -> A lost"
    assert ping(c1, "10.0.0.2"), "first ping A -> B lost"
    # 6: ps lists the container with its MAC and CIDR.
    rows = [line.split() for line in lab.pyweave(0, "ps").stdout.splitlines()]
    mac = docker("exec", c1, "cat", "/sys/class/net/ethwe/address").stdout.strip()
    assert [c1[:12], mac, "10.0.0.1/24"] in rows, rows


def test_three_hosts_full_mesh_and_peers_everywhere(launched_lab):
    lab = launched_lab
    cids = [run_container(lab, i, f"10.1.0.{i + 1}/24", "busybox", "sleep", "3600") for i in range(3)]
    for i, cid in enumerate(cids):
        for j in range(3):
            if i != j:
                assert ping(cid, f"10.1.0.{j + 1}"), f"h{i + 1} -> h{j + 1} failed"
    for i in range(3):
        out = lab.pyweave(i, "status", "peers")
        assert out.returncode == 0, out.stderr
        rows = [line.split() for line in out.stdout.splitlines()[1:]]
        assert sorted(r[0] for r in rows) == sorted(h.name for h in lab.hosts)
        assert all(r[3] == "alive" for r in rows), out.stdout


def test_launch_twice_exits_3(launched_lab):
    r = launched_lab.pyweave(0, "launch")
    assert r.returncode == 3
    assert "already running" in r.stderr


@pytest.mark.parametrize(
    "address, problem",
    [
        ("10.0.0.1/33", "10.0.0.1/33"),
        ("300.1.1.1/24", "not a valid IPv4"),
        ("10.0.0.0/24", "network address"),
        ("10.0.0.255/24", "broadcast"),
    ],
)
def test_bad_run_addresses_are_refused_before_anything_is_created(launched_lab, address, problem):
    lab = launched_lab
    before = set(lab.containers())
    r = lab.pyweave(0, "run", address, "-t", "-i", "busybox")
    assert r.returncode == 1
    assert problem in r.stderr
    assert set(lab.containers()) == before


def test_unsupported_docker_option_is_refused(launched_lab):
    lab = launched_lab
    before = set(lab.containers())
    r = lab.pyweave(0, "run", "10.0.0.9/24", "-p", "80:80", "busybox")
    assert r.returncode == 1 and "-p" in r.stderr
    assert set(lab.containers()) == before


def test_attachment_written_with_etcdctl_attaches_and_deleting_it_detaches(launched_lab):
    lab = launched_lab
    name = f"{lab.prefix}-byhand"
    docker("run", "-d", "--network", "none", "--name", name, "busybox", "sleep", "3600", check=True)
    peer = run_container(lab, 0, "10.3.0.1/24", "busybox", "sleep", "3600")
    key = f"/pyweave/v1/attachments/{lab.hosts[1].name}/{name}"
    lab.etcdctl(1, "put", key, '{"cidrs": ["10.3.0.5/24"]}')
    wait_for(
        lambda: "10.3.0.5/24" in docker("exec", name, "ip", "-o", "-4", "addr", "show").stdout,
        timeout=30,
        message="ethwe from a hand-written attachment",
    )
    assert wait_for(lambda: ping(peer, "10.3.0.5"), timeout=3, message="ping to the hand-attached container")
    lab.etcdctl(1, "del", key)
    wait_for(
        lambda: "ethwe" not in docker("exec", name, "ip", "link").stdout,
        timeout=30,
        message="ethwe to disappear after the key was deleted",
    )


def test_agent_sigkill_and_relaunch_loses_no_ping_and_leaks_nothing(launched_lab):
    lab = launched_lab
    c1 = run_container(lab, 0, "10.4.0.1/24", "busybox", "sleep", "3600")
    c2 = run_container(lab, 1, "10.4.0.2/24", "busybox", "sleep", "3600")
    assert ping(c1, "10.4.0.2")
    before = [lab.inventory(i) for i in range(2)]
    pinger = subprocess.Popen(
        ["docker", "exec", c1, "ping", "-i", "0.2", "-c", "40", "-W", "1", "10.4.0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        time.sleep(1)  # let the pinger get going before the kill; the check below polls, not this
        for host in (0, 1):
            pid = lab.agent_pid(host)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), timeout=5, message="agent to die")
            r = lab.pyweave(host, "launch", *([] if host == 0 else [lab.hosts[0].address]))
            assert r.returncode == 0, r.stderr
            assert r.stderr.count(OPEN_WARNING) == 1, r.stderr  # the first host and a joining one, once each
        out, _ = pinger.communicate(timeout=60)
    finally:
        pinger.kill()
    assert "40 packets transmitted, 40 packets received, 0% packet loss" in out, out
    # Let a full reconcile pass run on both restarted agents, then count again.
    for host in (0, 1):
        wait_for(lambda: lab.pyweave(host, "status", "--json").returncode == 0, timeout=10, message="status")
    after = [lab.inventory(i) for i in range(2)]
    assert after == before
    assert ping(c2, "10.4.0.1")


def test_stop_keeps_containers_talking(launched_lab):
    lab = launched_lab
    c1 = run_container(lab, 0, "10.5.0.1/24", "busybox", "sleep", "3600")
    c3 = run_container(lab, 2, "10.5.0.3/24", "busybox", "sleep", "3600")
    assert lab.pyweave(2, "stop").returncode == 0
    assert not pid_alive(lab.agent_pid(2))
    peers = lab.pyweave(0, "status", "peers").stdout
    assert any(line.startswith(lab.hosts[2].name) and "stopped" in line for line in peers.splitlines()), peers
    # Beyond the lease TTL (10 s), the stopped host's containers are still reachable.
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        assert ping(c1, "10.5.0.3") and ping(c3, "10.5.0.1")
        time.sleep(1)
    r = lab.pyweave(2, "launch", lab.hosts[0].address)
    assert r.returncode == 0, r.stderr
    assert ping(c1, "10.5.0.3")


def test_reset_removes_kernel_objects_and_records_and_leaves_the_cluster(launched_lab):
    lab = launched_lab
    run_container(lab, 2, "10.6.0.3/24", "busybox", "sleep", "3600")
    assert lab.inventory(2)["veths"] >= 1
    assert lab.pyweave(2, "reset").returncode == 0
    assert lab.inventory(2) == {"bridges": 0, "vxlans": 0, "veths": 0, "fdb": 0, "neigh": 0}
    keys = lab.etcdctl(0, "get", "--prefix", "--keys-only", "/pyweave/").stdout.split()
    assert not [k for k in keys if lab.hosts[2].name in k]
    peers = lab.pyweave(0, "status", "peers").stdout
    assert lab.hosts[2].name not in peers
    r = lab.pyweave(2, "status")
    assert r.returncode == 1 and "not launched" in r.stderr
    assert "169.254.53.53" not in lab.exec(2, "ip", "addr", "show", "dev", "lo").stdout  # the DNS address went too


def test_status_on_a_host_never_launched():
    with Lab(1) as lab:
        r = lab.pyweave(0, "status")
        assert r.returncode == 1
        assert "not launched; run `pyweave launch`" in r.stderr or "not launched on this host; run `pyweave launch`" in r.stderr
        prefix = lab.prefix
    assert not leftovers(prefix)


def test_run_of_a_container_that_exits_at_once_returns_its_id(launched_lab):
    lab = launched_lab
    r = lab.pyweave(0, "run", "10.7.0.1/24", "busybox", "true")
    assert r.returncode == 0, r.stderr  # waiting for the exited container would end in an attach timeout
    cid = r.stdout.strip()
    assert docker("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "false"
