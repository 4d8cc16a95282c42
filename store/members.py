"""The embedded store's membership rules (issue 13, item 3), shared by the agents
(`pyweave.agent.membership`: replacing a dead member) and the CLI (`pyweave reset`, `pyweave rmpeer`).

Changes of membership are serialised by one key, `JOIN_LOCK`, created only if absent and bound to a
lease (it goes when its holder dies): a join, the removal of a dead member, a host leaving. A member
is removed only when the store keeps its quorum without it: never below quorum by our own action
(`unsafe` says why not). A leaving leader hands its leadership to a healthy member first, so that the
store does not wait out an election (etcd's `MoveLeader`).

Standard library only (the CLI imports this): it speaks etcd's JSON gateway through `store.http`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from store.errors import StoreError
from store.http import HttpStore

JOIN_LOCK = "/pyweave/store/v1/join"
UNHEALTHY_WAIT = 15.0  # seconds a removal waits for etcd to find the cluster healthy enough


class MembershipError(StoreError):
    """A change of membership refused: it would lose quorum, or the store cannot say."""


def quorum(voters: int) -> int:
    return voters // 2 + 1


@dataclass
class View:
    """The members as etcd lists them, and which of them answer (by member ID)."""

    members: list[dict]
    healthy: dict[str, bool] = field(default_factory=dict)
    leader: str | None = None

    def voters(self) -> list[dict]:
        return [m for m in self.members if not m.get("isLearner")]

    def named(self, name: str) -> dict | None:
        return next((m for m in self.members if m.get("name") == name), None)

    def with_peer(self, peer_url: str) -> dict | None:
        return next((m for m in self.members if peer_url in m.get("peerURLs", [])), None)


def look(store: HttpStore, *, timeout: float = 0.5) -> View:
    """The member list, each member's health (its own status answers within timeout), the leader."""
    members = store.members()
    view = View(members)
    for m in members:
        urls = m.get("clientURLs") or []
        status = store.endpoint_status(urls[0], timeout=timeout) if urls else None
        view.healthy[str(m["ID"])] = status is not None
        if status is not None and status.get("leader") and view.leader is None:
            view.leader = str(status["leader"])
    return view


def unsafe(view: View, member_id: str) -> str | None:
    """Why removing this member would lose the store's quorum (None: it would not)."""
    member = next((m for m in view.members if str(m["ID"]) == str(member_id)), None)
    if member is None or member.get("isLearner"):
        return None  # gone already, or a learner: it does not count for quorum
    voters = view.voters()
    if len(voters) <= 1:
        return "it is the store's only voting member"
    left = [m for m in voters if str(m["ID"]) != str(member_id)]
    healthy = [m for m in left if view.healthy.get(str(m["ID"]))]
    if len(healthy) < quorum(len(left)):
        down = sorted(m.get("name") or str(m["ID"]) for m in left if not view.healthy.get(str(m["ID"])))
        return (f"without it, {len(healthy)} of the {len(left)} other voting members answer "
                f"({', '.join(down)} down): the store would lose its quorum ({quorum(len(left))} needed)")
    return None


def remove(store: HttpStore, view: View, member_id: str) -> None:
    """Remove a member if the store keeps its quorum without it (else MembershipError); a leader
    hands its leadership to a healthy voter first."""
    reason = unsafe(view, member_id)
    if reason is not None:
        raise MembershipError(reason)
    member_id = str(member_id)
    if view.leader == member_id:
        target = next((m for m in view.voters() if str(m["ID"]) != member_id and view.healthy.get(str(m["ID"]))), None)
        leader = next((m for m in view.members if str(m["ID"]) == member_id), None)
        if target is not None and leader is not None and leader.get("clientURLs"):
            try:
                store.move_leader(leader["clientURLs"][0], str(target["ID"]))
            except StoreError:
                pass  # an election then, as when a leader dies: the store rides over it
    deadline = time.monotonic() + UNHEALTHY_WAIT
    while True:
        try:
            store.member_remove(member_id)
            return
        except StoreError as err:
            if "member not found" in str(err):
                return  # removed by an earlier attempt whose answer was lost (the member asked was the one removed)
            # etcd's own check: it removes a voter only when the others have been connected to the
            # leader for 5 s (a member promoted just now has not): "unhealthy cluster" until then
            if "unhealthy cluster" not in str(err) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@contextmanager
def locked(store: HttpStore, holder: str, lease: int, *, wait: float = 0.0) -> Iterator[bool]:
    """Hold `JOIN_LOCK` (bound to `lease`) for the block; yields False when another holds it
    (after trying for `wait` seconds)."""
    deadline = time.monotonic() + wait
    value = json.dumps({"host": holder, "since": time.time()}).encode()
    while not store.create(JOIN_LOCK, value, lease=lease):
        if time.monotonic() >= deadline:
            yield False
            return
        time.sleep(0.2)
    try:
        yield True
    finally:
        try:
            store.delete(JOIN_LOCK)
        except StoreError:
            pass  # the lease takes it
