"""Issue 13: an embedded store that looks after itself: supervised (item 5), formed through any peer
(items 1, 2), membership following the hosts (item 3). Scenarios 10-12 of docs/reliability.md are
recorded here (labtools.record)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from labtools import TARGETS, host_view, ping, record, run_container, wait_for

from pyweave.agent.membership import MEMBER_GRACE
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
    record(11, f"the agent's supervisor restarted it; the store answered again {back:.1f} s after the kill; "
               f"containers started on both hosts afterwards ping each other", targets=[TARGETS["etcd_back"].verdict(back, 1)])


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


def healthy_voters(lab: Lab, host: int) -> set[str]:
    """Voting members whose own endpoint answers, as host's `pyweave status --json` says."""
    r = lab.pyweave(host, "status", "--json")
    if r.returncode != 0:
        return set()
    store = json.loads(r.stdout)["store"]
    return {m["name"] for m in store["members"] if not m["learner"] and m["healthy"]}


class RunLoop:
    """`pyweave run` again and again on one host (each container removed after), counting failures."""

    def __init__(self, lab: Lab, host: int, subnet: str) -> None:
        self.lab, self.host, self.subnet = lab, host, subnet
        self.runs = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            r = self.lab.pyweave(self.host, "run", f"{self.subnet}.{self.runs % 200 + 1}/24", "busybox", "sleep", "3600")
            self.runs += 1
            if r.returncode != 0:
                self.errors.append(r.stderr.strip())
                continue
            self.lab.exec(self.host, "docker", "rm", "-f", r.stdout.strip())

    def __enter__(self) -> RunLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_three_hosts_launched_at_once_all_join_and_a_reset_member_is_replaced():
    """Acceptance of items 2 and 3: B, C and D launched at the same moment against A: all join, the
    store ends with 3 healthy voting members. Then `pyweave reset` on a member host (not A): it leaves
    the store, the non-member joins in its place, the store keeps 3 healthy voting members, and a
    `pyweave run` loop on A meanwhile sees no client error."""
    with Lab(4) as lab:
        assert lab.pyweave(0, "launch").returncode == 0
        with ThreadPoolExecutor(3) as pool:
            launches = [pool.submit(lab.pyweave, i, "launch", lab.hosts[0].address) for i in (1, 2, 3)]
            for r in (f.result() for f in launches):
                assert r.returncode == 0, r.stderr
        started = time.monotonic()
        wait_for(lambda: len(voters(lab, 0)) == 3 and len(members(lab, 0)) == 3 and len(healthy_voters(lab, 0)) == 3,
                 timeout=90, interval=0.5, message="a store of 3 healthy voting members")
        formed = time.monotonic() - started
        assert {p["name"] for p in status_peers(lab, 0) if p["alive"]} == {h.name for h in lab.hosts}
        first_three = voters(lab, 0)
        leaving = next(i for i in (1, 2, 3) if lab.hosts[i].name in first_three)
        joiner = next(i for i in (1, 2, 3) if lab.hosts[i].name not in first_three)
        with RunLoop(lab, 0, "10.132.0") as loop:
            time.sleep(2)
            reset_at = time.monotonic()
            r = lab.pyweave(leaving, "reset")
            assert r.returncode == 0, r.stderr
            reset_took = time.monotonic() - reset_at
            assert "left the store" in r.stderr
            wanted = first_three - {lab.hosts[leaving].name} | {lab.hosts[joiner].name}
            wait_for(lambda: voters(lab, 0) == wanted and healthy_voters(lab, 0) == wanted and len(members(lab, 0)) == 3,
                     timeout=60, interval=0.5, message="the non-member in the left member's place")
            replaced = time.monotonic() - reset_at
            time.sleep(2)
        assert loop.errors == [], loop.errors
        assert loop.runs >= 3
        print(f"3 simultaneous launches: 3 healthy voters {formed:.1f} s after; reset of a member took {reset_took:.1f} s, "
              f"3 healthy voters again {replaced:.1f} s after it; {loop.runs} runs meanwhile, 0 errors")
        record(12, f"`pyweave reset` of a member host ({reset_took:.1f} s) left the store first; the non-member joined "
                   f"in its place: 3 healthy voting members again {replaced:.1f} s after the reset; a `pyweave run` loop on "
                   f"another host meanwhile: {loop.runs} runs, {len(loop.errors)} errors",
               targets=[TARGETS["member_replaced_after_reset"].verdict(replaced, 1)])
        prefix = lab.prefix
    assert not leftovers(prefix)


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
        assert {m["name"] for m in store["members"] if not m["healthy"]} == {lab.hosts[0].name}, (
            f"{time.monotonic() - killed:.1f} s after the first host died, run done after {ran:.1f} s, "
            f"pinging after {pinged:.1f} s: members {store['members']}")
        assert store["leader"] in first_three - {lab.hosts[0].name}
        # item 3: the dead member is replaced by the live non-member (after the grace, under the lock)
        survivors = {h.name for h in lab.hosts[1:]}
        wait_for(lambda: voters(lab, 3) == survivors and healthy_voters(lab, 3) == survivors, timeout=90, interval=0.5,
                 message="the first host's member replaced by the fourth host")
        replaced = time.monotonic() - killed
        print(f"store of 3 formed {formed:.1f} s after the fourth launch; after the first host died: "
              f"run on two hosts done in {ran:.1f} s, pinging in {pinged:.1f} s; member replaced in {replaced:.1f} s")
        record(10, f"`pyweave run` on two survivors done {ran:.1f} s after the death (underlay down, every process "
                   f"killed), their containers pinging {pinged:.1f} s after it; the dead member replaced by the live "
                   f"non-member {replaced:.1f} s after it (grace {MEMBER_GRACE:g} s): 3 healthy voting members",
               targets=[TARGETS["run_after_first_host_death"].verdict(ran, 1)])
        prefix = lab.prefix
    assert not leftovers(prefix)


def test_quorum_lost_for_good_is_recovered_with_store_recover():
    """The documented procedure (docs/store.md): two of the three members die for good; the store has
    no quorum and `pyweave run` fails; `pyweave store-recover` on the surviving member makes it a store
    of one with its data; the live non-member joins it; `run` works again on both live hosts, and a
    container started before the loss is still known."""
    with Lab(4) as lab:
        assert lab.pyweave(0, "launch").returncode == 0
        for i in (1, 2, 3):
            assert lab.pyweave(i, "launch", lab.hosts[0].address).returncode == 0
        wait_for(lambda: len(healthy_voters(lab, 0)) == 3 and len(members(lab, 0)) == 3, timeout=90, interval=0.5,
                 message="a store of 3 healthy voting members")
        before = run_container(lab, 0, "10.133.0.1/24", "busybox", "sleep", "3600")
        first_three = voters(lab, 0)
        dead = [i for i in (1, 2, 3) if lab.hosts[i].name in first_three]
        live = next(i for i in (1, 2, 3) if lab.hosts[i].name not in first_three)
        for i in dead:
            lab.kill_host(i)
        assert lab.pyweave(0, "run", "10.133.0.9/24", "busybox", "sleep", "3600").returncode != 0
        r = lab.pyweave(0, "store-recover")
        assert r.returncode == 0, r.stderr
        recovered = time.monotonic()
        assert "alone now" in r.stderr
        wanted = {lab.hosts[0].name, lab.hosts[live].name}
        wait_for(lambda: healthy_voters(lab, live) == wanted, timeout=90, interval=0.5,
                 message="the live non-member joined the recovered store")
        rejoined = time.monotonic() - recovered
        a = run_container(lab, 0, "10.133.0.2/24", "busybox", "sleep", "3600")
        b = run_container(lab, live, "10.133.0.3/24", "busybox", "sleep", "3600")
        for cid, ip, host in ((a, "10.133.0.3", 0), (b, "10.133.0.2", live), (b, "10.133.0.1", live)):
            assert ping(cid, ip), f"no reply to {ip} from host {host}'s container\n{host_view(lab, host)}"
        assert before[:12] in lab.pyweave(0, "ps").stdout  # its records survived the recovery
        print(f"store recovered from one member; the live host joined it {rejoined:.1f} s after store-recover")
        prefix = lab.prefix
    assert not leftovers(prefix)
