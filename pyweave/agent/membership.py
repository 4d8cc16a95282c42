"""The embedded store forming itself (issue 13, item 2): a thread of the agent's process.

With the embedded store (`HostConfig.store_members` N > 0, set by the first host's `launch`), the
first N hosts become etcd members, the way k3s's servers join (docs/store.md):

1. Every `interval` seconds, each agent lists the members. A host that is no member while the
   cluster has fewer than N members (learners counted) tries to take the join lock: the key
   `JOIN_LOCK` created only if absent, bound to the host's lease (it goes when the host dies). One
   join at a time, so never "too many learner members".
2. Holding it, the host lists again, removes any learner it finds (only a lock holder makes one,
   and it promotes it before letting go: a learner seen under the lock is a dead joiner's), adds
   itself as a learner, and starts its etcd with `initial-cluster-state=existing`. A learner does
   not count for quorum: adding one never endangers the cluster.
3. It asks for its own promotion until etcd agrees (etcd refuses until the learner has caught up
   with the leader); then lets the lock go. No promotion within `PROMOTE_TIMEOUT`: it removes
   itself, stops its etcd, and stays a client (a later pass tries again).

Every pass also refreshes the host's view of the store: the client URLs of the voting members,
those that answer first (this host's own first when it is one), saved in its configuration (which
the CLI reads) and added to the agent's client for failover (`on_endpoints`).

A pass costs a request for the member list and one to each voting member (its status). While the
store is *settled* (every voting member answers, no learner, nothing for this host to join or
leave) a pass is due only every `settled_interval` seconds, or at once when the cluster's hosts change
(a host record came or went, as the agent's watch sees it: a dead member host's record goes with its
lease); anything else unsettles it, and passes come every `interval` again. So the first sign of a
dead member comes within `settled_interval` (its replacement after `member_grace` from then), and
an idle agent spends a third of the requests it did (issue 11).

Membership follows the hosts (item 3, rules in `store.members`):
- a voting member that has not answered for `member_grace` seconds, and whose host is dead (its
  lease-bound host record gone), is removed by whichever live agent sees it first, under the join
  lock and only if the store keeps its quorum without it; the cluster then has fewer than N members,
  and a live non-member joins (1. above). `pyweave reset` of a member host, and `pyweave rmpeer` of a
  dead one, remove its member at once the same way.
- a host whose member is no longer in the list (removed while it was away) stops its etcd, throws
  its data away and is a client again; it may join later like any non-member.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable

from pyweave.host import HostConfig, HostState, stop_process
from store import keys
from store import members as rules
from store.errors import StoreError
from store.http import HttpStore

log = logging.getLogger("pyweave.agent.membership")

JOIN_LOCK = rules.JOIN_LOCK
PROMOTE_TIMEOUT = 60.0
MEMBER_GRACE = 15.0  # seconds a dead host's member goes unanswered before it is replaced
SETTLED_INTERVAL = 6.0  # seconds between passes while the store is as it should be


class StoreMembership:
    def __init__(
        self, state: HostState, config: HostConfig, address: str, stop: threading.Event, *,
        lease: Callable[[], int], on_endpoints: Callable[[list[str]], None], interval: float = 2.0,
        member_grace: float = MEMBER_GRACE, settled_interval: float = SETTLED_INTERVAL,
        hosts: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        """`hosts`: the names of the cluster's hosts as the agent's view has them (a change makes a
        pass due at once)."""
        self.state = state
        self.config = config
        self.address = address
        self.stop = stop
        self.lease = lease
        self.on_endpoints = on_endpoints
        self.interval = interval
        s = "https" if config.encrypted else "http"  # a cluster with a secret: its store over TLS (docs/security.md)
        self.peer_url = f"{s}://{address}:2380"
        self.client_url = f"{s}://{address}:2379"
        self.member_grace = member_grace
        self.settled_interval = settled_interval
        self.hosts = hosts
        self.settled = False  # the last pass found nothing to do and every voting member answering
        self._passed_at: float | None = None  # when the last pass ran (monotonic)
        self._passed_hosts: frozenset[str] | None = None  # the hosts as they were then
        self.health: dict[str, bool] = {}
        self._down_since: dict[str, float] = {}  # member ID -> when this agent first saw it not answer
        self._children: list = []  # etcd processes started here: reaped when they end

    # -- a pass --------------------------------------------------------------------------------
    def _store(self) -> HttpStore:
        return HttpStore(self.config.store, timeout=2.0)

    def _mine(self, member: dict) -> bool:
        return self.peer_url in member.get("peerURLs", []) or member.get("name") == self.config.name

    def due(self, now: float, hosts: frozenset[str] | None) -> bool:
        """Whether a pass is due: always while unsettled; else after settled_interval, or when the
        cluster's hosts changed since the last pass."""
        if not self.settled or self._passed_at is None:
            return True
        return now - self._passed_at >= self.settled_interval or hosts != self._passed_hosts

    def check(self) -> None:
        self.settled = False
        self._children = [c for c in self._children if c.poll() is None]
        if self.config.store_members <= 0:
            self.settled = True
            return  # a store of the user's own: not ours to form
        store = self._store()
        members = store.members()
        self.refresh(store, members)
        mine = any(self._mine(m) for m in members)
        if self.config.embedded_etcd and not mine and members:
            self.removed()
            return
        if self.replace_dead(store, members):
            members = store.members()
        calm = bool(self.health) and all(self.health.values()) and not any(m.get("isLearner") for m in members)
        if mine or self.config.embedded_etcd:
            self.settled = calm
            return
        if len(members) >= self.config.store_members or shutil.which("etcd") is None:
            self.settled = calm
            return
        lease = self.lease()
        if not lease:
            return
        if not store.create(JOIN_LOCK, json.dumps({"host": self.config.name, "since": time.time()}).encode(), lease=lease):
            return
        try:
            self.join(store)
        finally:
            store.delete(JOIN_LOCK)
        self.refresh(self._store(), self._store().members())

    def refresh(self, store: HttpStore, members: list[dict]) -> None:
        """Keep this host's list of the store's client URLs as the members are: healthy first."""
        urls = [u for m in members if not m.get("isLearner") for u in m.get("clientURLs", [])[:1]]
        if not urls:
            return
        health = {u: store.endpoint_status(u) is not None for u in urls}
        self.health = health
        ordered = sorted(urls, key=lambda u: (not health[u], u != self.client_url, urls.index(u)))
        if ordered != self.config.store:
            added = [u for u in ordered if u not in self.config.store]
            self.config.store = ordered
            self.state.save(self.config)
            if added:
                log.info("store endpoints now %s", ",".join(ordered))
                self.on_endpoints(ordered)

    def removed(self) -> None:
        """This host's member was removed from the store (while it was away, by `rmpeer` or by
        the replacement of a dead member): stop its etcd, forget its data, be a client."""
        log.warning("this host's store member was removed from the store: stopping it, this host is a client now")
        self.config.embedded_etcd = False
        self.state.save(self.config)
        pid = self.state.etcd_pid()
        if pid is not None:
            stop_process(pid, timeout=5.0)
        shutil.rmtree(self.state.etcd_dir, ignore_errors=True)

    def replace_dead(self, store: HttpStore, members: list[dict]) -> bool:
        """Remove a voting member whose host is dead and that has not answered for member_grace
        seconds (under the join lock, never below quorum). True if one was removed."""
        now = time.monotonic()
        urls = {str(m["ID"]): (m.get("clientURLs") or [None])[0] for m in members if not m.get("isLearner")}
        down = {mid for mid, url in urls.items() if url is not None and self.health.get(url) is False}
        self._down_since = {mid: self._down_since.get(mid, now) for mid in down}
        overdue = [m for m in members if str(m["ID"]) in down and now - self._down_since[str(m["ID"])] >= self.member_grace
                   and not self._mine(m) and store.get(keys.host_key(m.get("name", ""))) is None]
        if not overdue:
            return False
        lease = self.lease()
        if not lease:
            return False
        with rules.locked(store, self.config.name, lease) as held:
            if not held:
                return False
            view = rules.look(store)
            for member in overdue:
                mid = str(member["ID"])
                if view.healthy.get(mid, True) or not any(str(m["ID"]) == mid for m in view.members):
                    continue  # back, or removed by another
                reason = rules.unsafe(view, mid)
                if reason is not None:
                    log.error("store member %s (%s) is dead but cannot be removed: %s", member.get("name"), mid, reason)
                    continue
                rules.remove(store, view, mid)
                log.warning("removed dead store member %s (%s), unanswered for %.0f s: a live host takes its place",
                            member.get("name"), mid, now - self._down_since.pop(mid))
                return True
        return False

    def join(self, store: HttpStore) -> None:
        from pyweave.processes import start_embedded_etcd

        members = store.members()
        if len(members) >= self.config.store_members and not any(m.get("isLearner") for m in members):
            return
        for m in members:
            if m.get("isLearner") and not self._mine(m):
                log.warning("removing learner %s (%s): a join that did not finish", m["ID"], m.get("peerURLs"))
                store.member_remove(m["ID"])
        members = [m for m in store.members() if not m.get("isLearner")]
        if len(members) >= self.config.store_members:
            return
        added = store.member_add([self.peer_url], learner=True)
        my_id = added["member"]["ID"]
        initial = [f"{m['name']}={m['peerURLs'][0]}" for m in added["members"] if m.get("name") and m["ID"] != my_id]
        initial.append(f"{self.config.name}={self.peer_url}")
        log.info("joining the store as learner %s (cluster %s)", my_id, ",".join(initial))
        shutil.rmtree(self.state.etcd_dir, ignore_errors=True)
        self.config.embedded_etcd = True
        self.state.save(self.config)
        try:
            child = start_embedded_etcd(self.state, self.config, self.address, initial_cluster=",".join(initial))
            if child is not None:
                self._children.append(child)
            started = time.monotonic()
            deadline = started + PROMOTE_TIMEOUT
            while True:
                try:
                    store.member_promote(my_id)
                    log.info("promoted to a voting member of the store in %.1f s", time.monotonic() - started)
                    return
                except StoreError as err:
                    if time.monotonic() > deadline or self.stop.is_set():
                        raise
                    log.debug("not promoted yet: %s", err)
                self.stop.wait(0.3)
        except BaseException as err:
            log.error("joining the store failed, staying a client: %s", err)
            self.config.embedded_etcd = False
            self.state.save(self.config)
            pid = self.state.etcd_pid()
            if pid is not None:
                stop_process(pid, timeout=5.0)
            try:
                store.member_remove(my_id)
            except StoreError as remove_err:
                log.error("could not remove learner %s: %s", my_id, remove_err)
            shutil.rmtree(self.state.etcd_dir, ignore_errors=True)
            if not isinstance(err, Exception):
                raise

    # -- the thread ----------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stop.is_set():
            hosts = self.hosts() if self.hosts is not None else None
            now = time.monotonic()
            if not self.due(now, hosts):
                self.stop.wait(self.interval * random.uniform(0.75, 1.25))
                continue
            self._passed_at, self._passed_hosts = now, hosts
            try:
                self.check()
            except StoreError as err:
                self.settled = False
                log.debug("store membership pass failed, will retry: %s", err)
            except Exception:  # noqa: BLE001 - the thread must outlive one bad pass
                self.settled = False
                log.exception("store membership pass crashed")
            self.stop.wait(self.interval * random.uniform(0.75, 1.25))

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="store-membership", daemon=True)
        thread.start()
        return thread
