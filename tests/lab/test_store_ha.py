"""Issue 13: an embedded store that looks after itself. The embedded etcd is supervised (item 5)."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from labtools import ping, run_container, wait_for

from pyweave.host import pid_alive
from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab


def etcd_pid(lab: Lab, host: int) -> int | None:
    try:
        pid = int((lab.state_dir(host) / "etcd.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def store_answers(lab: Lab, host: int) -> bool:
    address = lab.hosts[host].address
    return lab.exec(host, "etcdctl", f"--endpoints=http://{address}:2379", "endpoint", "health",
                    "--command-timeout=1s").returncode == 0


@pytest.fixture(scope="module")
def pair():
    with Lab(2) as lab:
        assert lab.pyweave(0, "launch").returncode == 0
        r = lab.pyweave(1, "launch", lab.hosts[0].address)
        assert r.returncode == 0, r.stderr
        yield lab
        prefix = lab.prefix
    assert not leftovers(prefix)


def test_kill_9_of_the_embedded_etcd_is_repaired_within_5_s(pair):
    lab = pair
    old = etcd_pid(lab, 0)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: etcd_pid(lab, 0) not in (None, old) and store_answers(lab, 0), timeout=5, interval=0.1,
             message="the embedded etcd restarted by the agent")
    back = time.monotonic() - killed
    a = run_container(lab, 0, "10.130.0.1/24", "busybox", "sleep", "3600")
    b = run_container(lab, 1, "10.130.0.2/24", "busybox", "sleep", "3600")
    assert ping(a, "10.130.0.2") and ping(b, "10.130.0.1")
    print(f"embedded etcd back {back:.2f} s after kill -9")


def test_launch_on_a_running_host_brings_its_store_member_back(pair):
    lab = pair
    agent = lab.agent_pid(0)
    assert agent is not None
    os.kill(agent, signal.SIGSTOP)  # the supervisor is frozen with it: only launch can help
    try:
        old = etcd_pid(lab, 0)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: etcd_pid(lab, 0) is None, timeout=5, message="etcd gone")
        r = lab.pyweave(0, "launch")
        assert r.returncode == 0, r.stderr
        assert "restarted" in r.stderr
        assert etcd_pid(lab, 0) not in (None, old) and store_answers(lab, 0)
        assert lab.pyweave(1, "status").returncode == 0
    finally:
        os.kill(agent, signal.SIGCONT)
    r = lab.pyweave(0, "launch")
    assert r.returncode == 3 and "already running" in r.stderr


def status_peers(lab: Lab, host: int) -> list[dict]:
    r = lab.pyweave(host, "status", "peers", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    return data["peers"] if isinstance(data, dict) else data


def members(lab: Lab, host: int) -> list[dict]:
    """etcdctl member list, asked of the store as host sees it (every lab host but the dead)."""
    eps = ",".join(f"http://{h.address}:2379" for h in lab.hosts[1:])
    r = lab.exec(host, "etcdctl", f"--endpoints={eps}", "member", "list", "-w", "json", "--command-timeout=2s")
    if r.returncode != 0:
        return []
    return json.loads(r.stdout).get("members", [])


def voters(lab: Lab, host: int) -> set[str]:
    return {m.get("name", "") for m in members(lab, host) if not m.get("isLearner") and m.get("name")}


def test_join_through_any_peer_a_store_of_three_that_survives_the_first_host():
    """Items 1 and 2: B launched with A's address, C with B's, D with C's; D sees all four hosts;
    the store has formed itself into 3 voting members (A and two others). Then A dies: within 10 s `pyweave run` on two
    surviving hosts succeeds and their containers ping each other."""
    with Lab(4) as lab:
        assert lab.pyweave(0, "launch").returncode == 0
        for i in (1, 2, 3):
            r = lab.pyweave(i, "launch", lab.hosts[i - 1].address)
            assert r.returncode == 0, r.stderr
        names = {h.name for h in lab.hosts}
        wait_for(lambda: {p["name"] for p in status_peers(lab, 3) if p["alive"]} == names, timeout=10,
                 message="D listing the four hosts")
        # the join endpoint, as a joining host reads it
        reply = json.loads(lab.exec(3, "wget", "-q", "-O", "-",
                                    f"http://{lab.hosts[2].address}:6785/pyweave/v1/join").stdout)
        assert f"http://{lab.hosts[0].address}:2379" in reply["store"] and reply["store_members"] == 3
        started = time.monotonic()
        wait_for(lambda: len(voters(lab, 3)) == 3 and len(members(lab, 3)) == 3, timeout=90, interval=0.5,
                 message="a store of 3 voting members")
        formed = time.monotonic() - started
        # the first host's member, and two of the others: whichever agents took the join lock first
        first_three = voters(lab, 3)
        assert lab.hosts[0].name in first_three
        # every host's CLI knows every member (its configuration, refreshed by its agent)
        wait_for(lambda: all(len(json.loads((lab.state_dir(i) / "config.json").read_text())["store"]) == 3
                             for i in range(4)), timeout=10, message="every host knowing the 3 members")
        # item 4: the store in `pyweave status`
        store = json.loads(lab.pyweave(3, "status", "--json").stdout)["store"]
        assert {m["name"] for m in store["members"] if not m["learner"] and m["healthy"]} == first_three
        assert store["leader"] in first_three and store["learners"] == []
        assert "3 voting (3 healthy), 0 learner(s)" in lab.pyweave(3, "status").stdout

        lab.kill_host(0)
        killed = time.monotonic()
        with ThreadPoolExecutor(2) as pool:  # both at once: each must succeed within 10 s of the death
            runs = [pool.submit(run_container, lab, i, f"10.131.0.{i + 1}/24", "busybox", "sleep", "3600") for i in (1, 3)]
            b, d = (r.result() for r in runs)
        ran = time.monotonic() - killed
        assert ping(b, "10.131.0.4") and ping(d, "10.131.0.2")
        pinged = time.monotonic() - killed
        assert ran < 10, f"pyweave run on two survivors took {ran:.1f} s after the first host died"
        store = json.loads(lab.pyweave(3, "status", "--json").stdout)["store"]
        assert {m["name"] for m in store["members"] if not m["healthy"]} == {lab.hosts[0].name}
        assert store["leader"] in first_three - {lab.hosts[0].name}
        print(f"store of 3 formed {formed:.1f} s after the fourth launch; after the first host died: "
              f"run on two hosts done in {ran:.1f} s, pinging in {pinged:.1f} s")
        prefix = lab.prefix
    assert not leftovers(prefix)
