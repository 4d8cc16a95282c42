"""Membership follows the hosts (issue 13, item 3): the rules of store.members, and the agents'
replacement of a dead member (pyweave.agent.membership), on a fake of etcd's member API."""

from __future__ import annotations

import threading

import pytest

from pyweave.agent.membership import StoreMembership
from pyweave.host import HostConfig
from store import keys
from store import members as rules


def member(mid: str, name: str, *, learner: bool = False) -> dict:
    return {"ID": mid, "name": name, "peerURLs": [f"http://{name}:2380"], "clientURLs": [f"http://{name}:2379"],
            "isLearner": learner}


class FakeStore:
    def __init__(self, members: list[dict], down: set[str] = frozenset(), leader: str = "1") -> None:
        self._members = members
        self.down = set(down)
        self.leader = leader
        self.kv: dict[str, bytes] = {}
        self.calls: list[tuple] = []

    def members(self) -> list[dict]:
        return [dict(m) for m in self._members]

    def endpoint_status(self, url: str, *, timeout: float = 0.5) -> dict | None:
        name = url.split("//")[1].split(":")[0]
        return None if name in self.down else {"leader": self.leader}

    def move_leader(self, endpoint: str, target: str) -> None:
        self.calls.append(("move_leader", endpoint, target))
        self.leader = target

    def member_remove(self, mid: str) -> None:
        self.calls.append(("remove", mid))
        self._members = [m for m in self._members if m["ID"] != mid]

    def create(self, key: str, value: bytes, *, lease: int = 0) -> bool:
        if key in self.kv:
            return False
        self.kv[key] = value
        return True

    def delete(self, key: str) -> bool:
        return self.kv.pop(key, None) is not None

    def get(self, key: str):
        return self.kv.get(key)


THREE = [member("1", "a"), member("2", "b"), member("3", "c")]


def test_a_member_leaves_only_if_the_others_keep_quorum():
    assert rules.unsafe(rules.look(FakeStore(THREE)), "2") is None
    # one of the others already down: 1 of 2 left would answer, quorum of 2 is 2
    reason = rules.unsafe(rules.look(FakeStore(THREE, down={"c"})), "2")
    assert reason is not None and "lose its quorum" in reason and "c" in reason
    # the dead one itself may go: the two that answer keep quorum
    assert rules.unsafe(rules.look(FakeStore(THREE, down={"c"})), "3") is None
    assert rules.unsafe(rules.look(FakeStore(THREE[:1])), "1") == "it is the store's only voting member"
    # a learner never counts for quorum
    assert rules.unsafe(rules.look(FakeStore([*THREE[:1], member("9", "z", learner=True)])), "9") is None


def test_a_leaving_leader_hands_its_leadership_over_first():
    store = FakeStore(THREE, leader="1")
    rules.remove(store, rules.look(store), "1")  # type: ignore[arg-type]
    assert store.calls == [("move_leader", "http://a:2379", "2"), ("remove", "1")]
    store = FakeStore(THREE, down={"b", "c"})
    with pytest.raises(rules.MembershipError):
        rules.remove(store, rules.look(store), "1")  # type: ignore[arg-type]
    assert store.calls == []


def _agent(store: FakeStore, name: str, grace: float) -> StoreMembership:
    config = HostConfig(name=name, vtep_mac="02:00:00:00:00:01", store=["http://a:2379"], store_members=3)

    class State:
        def save(self, _config) -> None:
            pass

    agent = StoreMembership(State(), config, name, threading.Event(), lease=lambda: 7,  # type: ignore[arg-type]
                            on_endpoints=lambda _urls: None, member_grace=grace)
    agent.peer_url = f"http://{name}:2380"
    return agent


def test_a_dead_hosts_member_is_removed_after_the_grace_under_the_lock():
    store = FakeStore(THREE, down={"c"})
    store.kv[keys.host_key("c")] = b"{}"  # its host is alive (its etcd restarting): not ours to remove
    agent = _agent(store, "a", grace=0.0)
    agent.refresh(store, store.members())  # type: ignore[arg-type]
    assert not agent.replace_dead(store, store.members())  # type: ignore[arg-type]
    del store.kv[keys.host_key("c")]  # its host dead too: removed
    assert agent.replace_dead(store, store.members())  # type: ignore[arg-type]
    assert ("remove", "3") in store.calls and rules.JOIN_LOCK not in store.kv
    # within the grace, nothing happens
    store = FakeStore(THREE, down={"c"})
    agent = _agent(store, "a", grace=60.0)
    agent.refresh(store, store.members())  # type: ignore[arg-type]
    assert not agent.replace_dead(store, store.members())  # type: ignore[arg-type]
    # another holds the lock: wait for a later pass
    store = FakeStore(THREE, down={"c"})
    store.kv[rules.JOIN_LOCK] = b"{}"
    agent = _agent(store, "a", grace=0.0)
    agent.refresh(store, store.members())  # type: ignore[arg-type]
    assert not agent.replace_dead(store, store.members()) and store.calls == []  # type: ignore[arg-type]


def test_two_dead_of_three_is_quorum_lost_and_nobody_removes_anything():
    store = FakeStore(THREE, down={"b", "c"})
    agent = _agent(store, "a", grace=0.0)
    agent.refresh(store, store.members())  # type: ignore[arg-type]
    assert not agent.replace_dead(store, store.members())  # type: ignore[arg-type]
    assert store.calls == []


def test_a_settled_store_is_checked_less_often_and_at_once_when_the_hosts_change():
    store = FakeStore(THREE)
    agent = _agent(store, "a", grace=60.0)
    agent._store = lambda: store  # type: ignore[method-assign,assignment,return-value]
    agent.config.embedded_etcd = True
    hosts = frozenset({"a", "b", "c"})
    assert agent.due(0.0, hosts)  # never checked yet
    agent._passed_at, agent._passed_hosts = 0.0, hosts
    agent.check()
    assert agent.settled  # three voting members answering, this host one of them: nothing to do
    assert not agent.due(agent.interval, hosts)
    assert agent.due(agent.settled_interval, hosts)
    assert agent.due(agent.interval, hosts - {"c"})  # a host record went: look now
    store.down = {"c"}  # a member stops answering: passes come every interval again
    agent.check()
    assert not agent.settled and agent.due(agent.interval, hosts)
    store.down = set()
    store._members = [*THREE, member("4", "d", learner=True)]  # a join under way
    agent.check()
    assert not agent.settled
    store._members = THREE
    agent.check()
    assert agent.settled
