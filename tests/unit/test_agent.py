"""The agent's reconcile loop with fakes: the real `pyweave.agent.Agent` over the in-memory store,
a recording dataplane and a fake container runtime (tests/unit/fakes.py). No root, etcd or Docker.

Records are written with their literal keys and JSON values (docs/keys.md: the schema is an
interface). The agent's own store mirror (`agent.watcher`) runs on a thread; every wait polls with
a deadline, and every thread is joined at the end.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from fakes import FakeRuntime, FlakyStore, RecordingDataplane, running, wait_for

from dataplane.api import RemoteEntry, Underlay
from pyweave.agent import Agent
from pyweave.host import HostConfig, HostState
from store.errors import StoreUnavailable
from store.memory import MemoryStore

ROOT = "/pyweave/v1/"
ME, PEER = "h1", "h2"
CID = "a" * 64  # on this host, 10.0.0.1/24
PEER_CID = "b" * 64  # on the peer, 10.0.0.2/24
VNI = 65536
PEER_MAC = "02:00:00:00:00:22"
ATTACHMENT = f"{ROOT}attachments/{ME}/{CID}"
ENDPOINT = f"{ROOT}endpoints/{ME}/{CID}/10.0.0.1"
WRITES = ("ensure_network", "remove_network", "ensure_exposed", "ensure_port", "remove_port", "sync_remote", "update_remote")


def put_json(store, key: str, value: dict, *, lease: int = 0) -> int:
    return store.put(key, json.dumps(value).encode(), lease=lease)


def cluster(store: MemoryStore, *, peer_alive: bool = True) -> None:
    """Network 10.0.0.0/24 (VNI 65536), this host's container CID on 10.0.0.1, and the peer h2
    with PEER_CID on 10.0.0.2 (its host record on a lease of its own, as a live peer's is)."""
    put_json(store, f"{ROOT}networks/10.0.0.0-24", {"subnet": "10.0.0.0/24", "vni": VNI})
    put_json(store, f"{ROOT}vnis/{VNI}", {"subnet": "10.0.0.0/24"})
    put_json(store, ATTACHMENT, {"cidrs": ["10.0.0.1/24"]})
    put_json(store, f"{ROOT}ips/10.0.0.0-24/10.0.0.1", {"host": ME, "container": CID})
    peer = {"name": PEER, "address": "198.18.0.2", "vtep_mac": "02:00:00:00:00:02", "mtu": 1450}
    peer_lease = store.grant_lease(10)
    if peer_alive:
        put_json(store, f"{ROOT}hosts/{PEER}", {**peer, "state": "alive", "version": "0.1.0"}, lease=peer_lease)
    put_json(store, f"{ROOT}members/{PEER}", {**peer, "state": "member", "version": "0.1.0"})
    put_json(store, f"{ROOT}attachments/{PEER}/{PEER_CID}", {"cidrs": ["10.0.0.2/24"]})
    put_json(store, f"{ROOT}ips/10.0.0.0-24/10.0.0.2", {"host": PEER, "container": PEER_CID})
    put_json(store, f"{ROOT}endpoints/{PEER}/{PEER_CID}/10.0.0.2",
             {"ip": "10.0.0.2", "prefixlen": 24, "subnet": "10.0.0.0/24", "vni": VNI, "mac": PEER_MAC, "ifname": "ethwe"},
             lease=peer_lease)


class Host:
    """An agent for h1 with fakes on both sides, its store mirror running."""

    def __init__(self, tmp_path, raw) -> None:
        self.raw = raw
        self.store = getattr(raw, "inner", raw)
        self.dataplane = RecordingDataplane()
        self.runtime = FakeRuntime(running(CID, name="web"))
        state_dir = tmp_path / ME
        state_dir.mkdir()
        self.agent = Agent(
            config=HostConfig(name=ME, vtep_mac="02:00:00:00:00:01", address="198.18.0.1", lease_ttl=3,
                              resync_interval=3600.0, metrics_port=0),
            state=HostState(state_dir), raw=raw, underlay=Underlay("eth0", 2, "198.18.0.1", 1500),
            dataplane=self.dataplane, containers=self.runtime,
        )
        self.threads: list[threading.Thread] = []

    def start_mirror(self) -> Host:
        self.agent.register()
        t = threading.Thread(target=self.agent.watcher.run, args=(self.agent.stop_event,), name="test-watch", daemon=True)
        t.start()
        self.threads.append(t)
        assert self.agent.watcher.wait_synced(timeout=5)
        self.settled()
        return self

    def settled(self, revision: int | None = None) -> None:
        """The mirror holds every key written under ROOT so far (progress records live outside it),
        or everything up to `revision` (give it after a deletion, which leaves no key to look at)."""
        target = revision or max(kv.mod_revision for kv in self.store.list(ROOT)[0])
        wait_for(lambda: self.agent.watcher.revision >= target, message="the agent's mirror to catch up")

    def converge(self) -> None:
        """Reconcile until a pass writes nothing more to the store (its own writes come back
        through the watch and are planned again once)."""
        for _ in range(5):
            before = self.store.revision()
            self.agent.reconcile(full=True)
            self.settled()
            if self.store.revision() == before:
                return
        raise AssertionError("the agent kept writing to the store")

    def endpoint(self) -> dict | None:
        kv = self.store.get(ENDPOINT)
        return None if kv is None else {**json.loads(kv.value), "lease": kv.lease}

    def progress_problems(self) -> list[dict]:
        kv = self.store.get(f"/pyweave/progress/v1/{ME}")
        return json.loads(kv.value)["problems"] if kv else []

    def stop(self) -> None:
        self.agent.stop_event.set()
        self.agent.wake()
        for t in self.threads:
            t.join(timeout=5)
            assert not t.is_alive(), f"thread {t.name} did not stop"


@pytest.fixture
def hosts(tmp_path):
    made: list[Host] = []

    def make(raw=None) -> Host:
        host = Host(tmp_path, raw if raw is not None else MemoryStore())
        made.append(host)
        return host

    yield make
    for host in made:
        host.stop()


def test_local_attachment_of_a_running_container_gets_a_port_and_a_published_endpoint(hosts):
    h = hosts()
    cluster(h.store)
    h.start_mirror()
    h.agent.reconcile(full=True)
    assert h.dataplane.calls("ensure_network") == [VNI]
    assert h.dataplane.calls("ensure_port") == [CID]
    port = h.dataplane.ports()[(CID, VNI)]
    assert [str(c) for c in port.cidrs] == ["10.0.0.1/24"] and port.ifname == "ethwe" and port.pid == 4242
    published = h.endpoint()
    assert published is not None, sorted(kv.key for kv in h.store.list(ROOT)[0])
    assert (published["ip"], published["vni"], published["mac"]) == ("10.0.0.1", VNI, port.mac)
    assert published["lease"] == h.agent.lease != 0  # lease-bound: it goes if this host dies
    assert h.store.get(f"{ROOT}hosts/{ME}") is not None


def test_remote_endpoint_of_an_alive_peer_is_synced(hosts):
    h = hosts()
    cluster(h.store)
    h.start_mirror()
    h.agent.reconcile(full=True)
    assert h.dataplane.remote[VNI] == {RemoteEntry(PEER_MAC, "10.0.0.2", "198.18.0.2")}
    # the peer dies: its lease goes, and its endpoint with it
    peer_lease = h.store.get(f"{ROOT}hosts/{PEER}").lease
    h.store.revoke_lease(peer_lease)
    h.settled(h.store.revision())
    h.agent.reconcile(full=False)
    assert h.dataplane.remote[VNI] == frozenset()
    assert (CID, VNI) in h.dataplane.ports()  # the local port is not the peer's business


def test_endpoint_of_a_host_that_is_not_alive_is_not_programmed(hosts):
    h = hosts()
    cluster(h.store, peer_alive=False)
    h.start_mirror()
    h.agent.reconcile(full=True)
    assert not h.dataplane.remote.get(VNI)
    assert any("h2" in p["key"] and "not registered" in p["problem"] for p in h.progress_problems()), h.progress_problems()


def test_a_second_pass_changes_nothing(hosts):
    h = hosts()
    cluster(h.store)
    h.start_mirror()
    h.converge()
    state = (h.dataplane.networks(), h.dataplane.ports(), dict(h.dataplane.remote))
    revision, writes = h.store.revision(), len(h.dataplane.writes)

    h.agent.reconcile(full=True)  # the periodic resync: re-checks every object, changes none
    assert (h.dataplane.networks(), h.dataplane.ports(), dict(h.dataplane.remote)) == state
    assert h.store.revision() == revision, "a full pass over a converged host wrote to the store"
    again = [m for m, _ in h.dataplane.writes[writes:]]
    assert "remove_port" not in again and "remove_network" not in again

    writes = len(h.dataplane.writes)
    h.agent.reconcile(full=False)  # an event pass with nothing changed: no dataplane call at all
    assert h.dataplane.writes[writes:] == []
    assert h.store.revision() == revision


def test_store_outage_removes_no_port(hosts):
    store = FlakyStore()
    h = hosts(store)
    cluster(store.inner)
    h.start_mirror()
    h.converge()
    ports = h.dataplane.ports()
    assert ports
    # The peer's endpoint changes; the mirror sees it, then the store goes away before the pass
    # that follows can report its progress.
    put_json(store.inner, f"{ROOT}endpoints/{PEER}/{PEER_CID}/10.0.0.2",
             {"ip": "10.0.0.2", "prefixlen": 24, "subnet": "10.0.0.0/24", "vni": VNI, "mac": "02:00:00:00:00:33",
              "ifname": "ethwe"}, lease=store.inner.get(f"{ROOT}hosts/{PEER}").lease)
    # Someone waits for this host's progress (a `pyweave run`), so the pass must write it.
    put_json(store.inner, f"{ROOT}waits/cli-1", {"revision": 10**9, "vnis": [VNI]})
    h.settled()
    store.go_down()
    wait_for(lambda: not h.agent.watcher.connected, message="the mirror to notice the outage")
    # Progress records are rate-limited: let the interval pass, so the next pass does need the store.
    wait_for(lambda: h.agent.publisher.next_progress_in() == 0, message="the progress rate limit to pass")
    raised = 0
    for full in (True, False, True):
        try:
            h.agent.reconcile(full=full)
        except StoreUnavailable:
            raised += 1  # the loop retries; what matters is what the pass did to the kernel
    assert raised >= 1, "no pass needed the store: the outage was not exercised"
    assert h.dataplane.ports() == ports
    assert not h.dataplane.calls("remove_port") and not h.dataplane.calls("remove_network")
    store.come_back()
    h.settled()
    h.converge()
    assert h.dataplane.ports() == ports and not h.dataplane.calls("remove_port")
    assert h.dataplane.remote[VNI] == {RemoteEntry("02:00:00:00:00:33", "10.0.0.2", "198.18.0.2")}


def test_invalid_value_over_a_working_attachment_keeps_its_port(hosts):
    h = hosts()
    cluster(h.store)
    h.start_mirror()
    h.converge()
    ports, endpoint = h.dataplane.ports(), h.endpoint()
    h.store.put(ATTACHMENT, b"{not json")
    h.settled()
    h.agent.reconcile(full=True)
    h.agent.reconcile(full=False)
    assert h.dataplane.ports() == ports and not h.dataplane.calls("remove_port")
    assert h.endpoint() == endpoint  # still published: peers keep reaching it
    assert any(p["key"] == ATTACHMENT and "not valid JSON" in p["problem"] for p in h.progress_problems())
    # The control: deleting the attachment does detach, so the fakes would have shown a removal.
    h.store.delete(ATTACHMENT)
    h.settled(h.store.revision())
    h.agent.reconcile(full=False)
    assert h.dataplane.calls("remove_port") == [CID] and not h.dataplane.ports()
    h.settled()
    assert h.endpoint() is None


def test_run_reconciles_on_changes_survives_an_outage_and_stops_on_its_event(hosts):
    store = FlakyStore()
    h = hosts(store)
    cluster(store.inner)
    loop = threading.Thread(target=h.agent.run, name="test-agent", daemon=True)
    h.threads.append(loop)
    loop.start()
    wait_for(lambda: h.endpoint() is not None and (CID, VNI) in h.dataplane.ports(), message="the agent to attach CID")
    ports = h.dataplane.ports()
    store.go_down()
    refused = store.refused
    h.agent.wake(full=True)
    wait_for(lambda: store.refused >= refused + 3, timeout=10, message="the agent to keep trying the store")
    assert h.dataplane.ports() == ports and not h.dataplane.calls("remove_port")
    store.come_back()
    put_json(store.inner, f"{ROOT}attachments/{ME}/{'c' * 64}", {"cidrs": ["10.0.0.3/24"]})
    h.runtime.add(running("c" * 64, name="db", pid=4343))
    wait_for(lambda: (("c" * 64), VNI) in h.dataplane.ports(), timeout=10, message="a change after the outage")
    h.stop()  # stop event + wake: run() returns, every thread ends (asserted)
    assert h.dataplane.ports().keys() == {(CID, VNI), ("c" * 64, VNI)}  # a graceful stop keeps the kernel
    assert json.loads(store.inner.get(f"{ROOT}hosts/{ME}").value)["state"] == "stopped"


def test_progress_for_a_new_revision_alone_is_written_only_while_someone_waits(hosts):
    """Issue 11: a burst nobody waits for costs no progress writes; a `pyweave run` that waits
    (a waits/ record for the host's networks) gets its acknowledgement at once."""
    h = hosts()
    cluster(h.store)
    h.start_mirror()
    h.converge()

    def written() -> int:
        return json.loads(h.store.get(f"/pyweave/progress/v1/{ME}").value)["revision"]

    before = written()
    put_json(h.store, f"{ROOT}endpoints/{PEER}/{PEER_CID}/10.0.0.2",
             {"ip": "10.0.0.2", "prefixlen": 24, "subnet": "10.0.0.0/24", "vni": VNI, "mac": "02:00:00:00:00:44",
              "ifname": "ethwe"}, lease=h.store.get(f"{ROOT}hosts/{PEER}").lease)
    h.settled()
    h.agent.reconcile(full=False)
    assert written() == before  # applied (below), acknowledged by nobody
    assert h.dataplane.remote[VNI] == {RemoteEntry("02:00:00:00:00:44", "10.0.0.2", "198.18.0.2")}
    wanted = put_json(h.store, f"{ROOT}waits/cli-2", {"revision": h.store.revision(), "vnis": [VNI]})
    h.settled()
    wait_for(lambda: h.agent.publisher.next_progress_in() == 0, message="the progress rate limit to pass")
    h.agent.reconcile(full=False)
    assert written() >= wanted


def test_a_port_lost_by_hand_comes_back_within_a_resync_period_while_the_store_never_rests(hosts):
    """Issue 11: the full pass (which re-reads the kernel and repairs what was deleted by hand) runs
    every resync_interval whatever happens. It once waited for 8 s without any store event, so
    under steady churn repairs never came. Here the peer's endpoint changes every 20 ms throughout."""
    h = hosts()
    resync = 0.5
    h.agent.config.resync_interval = resync
    cluster(h.store)
    loop = threading.Thread(target=h.agent.run, name="test-agent", daemon=True)
    h.threads.append(loop)
    loop.start()
    wait_for(lambda: (CID, VNI) in h.dataplane.ports(), message="the agent to attach CID")
    stop = threading.Event()
    writes = [0]

    def churn() -> None:
        while not stop.is_set():
            writes[0] += 1
            put_json(h.store, f"{ROOT}endpoints/{PEER}/{PEER_CID}/10.0.0.2",
                     {"ip": "10.0.0.2", "prefixlen": 24, "subnet": "10.0.0.0/24", "vni": VNI,
                      "mac": f"02:00:00:00:01:{writes[0] % 256:02x}", "ifname": "ethwe"})
            stop.wait(0.02)

    churner = threading.Thread(target=churn, name="test-churn", daemon=True)
    churner.start()
    try:
        wait_for(lambda: writes[0] >= 10, message="the churn to start")
        with h.dataplane._lock:
            del h.dataplane._ports[(CID, VNI)]  # the kernel lost it (ip link del by hand)
        lost, written = time.monotonic(), writes[0]
        wait_for(lambda: (CID, VNI) in h.dataplane.ports(), timeout=10, message="the port repaired under churn")
        took = time.monotonic() - lost
        during = writes[0] - written
    finally:
        stop.set()
        churner.join(timeout=5)
    assert during >= 5, f"only {during} store writes while the port was missing: no churn to speak of"
    assert took <= resync + 0.5, f"repaired after {took:.2f} s, resync_interval {resync} s"
