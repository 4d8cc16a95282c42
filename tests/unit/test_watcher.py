"""pyweave.watcher.StoreWatcher against the in-memory store: list then watch, deletions, a broken
stream (watch again from the last revision), compaction (list again), on_change, pause/resume, the
periodic re-list (beside a live watch; a silent one started anew), a transaction applied in one hold
of the sink's lock, and a clean stop. Every wait polls with a deadline; every watcher thread is joined.
(What the watcher asks of a real etcd is counted in tests/lab/test_watch_requests.py.)"""

from __future__ import annotations

import threading
import time

import pytest
from fakes import FlakyStore, wait_for

from pyweave.watcher import Mirror, StoreWatcher
from store.errors import Compacted, StoreUnavailable
from store.memory import MemoryStore
from store.raw import WatchBatch

PREFIX = "/pyweave/v1/"


class Running:
    """A watcher on its own thread, with a count of on_change calls."""

    def __init__(self, raw, **options) -> None:
        self.changes = 0
        self.stop = threading.Event()
        self.watcher = StoreWatcher(raw, PREFIX, self._changed, **options)
        self.thread = threading.Thread(target=self.watcher.run, args=(self.stop,), name="test-watch", daemon=True)

    def _changed(self) -> None:
        self.changes += 1

    def start(self) -> Running:
        self.thread.start()
        assert self.watcher.wait_synced(timeout=5), "the watcher never listed"
        return self

    def items(self) -> dict[str, bytes]:
        items, _ = self.watcher.snapshot()
        return {k: v for k, (v, _lease) in items.items()}

    def caught_up(self, store: MemoryStore) -> None:
        """Wait until the watcher has applied the store's last write (which must be under PREFIX)."""
        wait_for(lambda: self.watcher.revision == store.revision(), message="the watcher to reach the store's revision")

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the watcher did not stop within 5 s of its stop event"


@pytest.fixture
def watchers():
    made: list[Running] = []

    def start(raw, **options) -> Running:
        w = Running(raw, **options).start()
        made.append(w)
        return w

    yield start
    for w in made:
        w.halt()


def test_lists_first_then_applies_events_in_order(watchers):
    store = MemoryStore()
    store.put(PREFIX + "a", b"1")
    store.put(PREFIX + "b", b"1")
    store.put("/elsewhere/x", b"1")
    w = watchers(store)
    assert w.items() == {PREFIX + "a": b"1", PREFIX + "b": b"1"}
    assert w.watcher.revision == store.revision()
    assert w.watcher.stats.lists == 1 and w.changes >= 1
    for i in range(2, 50):
        store.put(PREFIX + "a", str(i).encode())
    store.put("/elsewhere/y", b"1")  # outside the prefix: never seen
    store.put(PREFIX + "c", b"1")
    w.caught_up(store)
    assert w.items() == {PREFIX + "a": b"49", PREFIX + "b": b"1", PREFIX + "c": b"1"}
    assert w.watcher.stats.lists == 1  # events, not lists
    assert w.watcher.stats.events == 49
    assert w.changes >= 2


def test_deletion_removes_the_key_and_calls_on_change(watchers):
    store = MemoryStore()
    store.put(PREFIX + "a", b"1")
    store.put(PREFIX + "b", b"1")
    w = watchers(store)
    before = w.changes
    store.delete(PREFIX + "a")
    w.caught_up(store)
    assert w.items() == {PREFIX + "b": b"1"}
    wait_for(lambda: w.changes > before, message="on_change after a deletion")


def test_lease_and_revision_travel_with_the_value(watchers):
    store = MemoryStore()
    lease = store.grant_lease(10)
    w = watchers(store)
    store.put(PREFIX + "h", b"x", lease=lease)
    w.caught_up(store)
    items, revision = w.watcher.snapshot()
    assert items[PREFIX + "h"] == (b"x", lease) and revision == store.revision()
    store.revoke_lease(lease)  # a dead host: its keys go with the lease
    w.caught_up(store)
    assert PREFIX + "h" not in w.items()


def test_broken_stream_watches_again_from_the_last_revision_and_misses_nothing(watchers):
    store = FlakyStore()
    other = store.inner  # another client, still connected
    other.put(PREFIX + "gone", b"1")
    other.put(PREFIX + "kept", b"1")
    w = watchers(store)
    store.go_down()
    wait_for(lambda: not w.watcher.connected, message="the watcher to notice the broken stream")
    refused = store.refused
    wait_for(lambda: store.refused > refused, message="a refused attempt to watch again")
    other.delete(PREFIX + "gone")
    other.put(PREFIX + "new", b"1")
    other.put(PREFIX + "kept", b"2")
    assert PREFIX + "new" not in w.items()
    store.come_back()
    w.caught_up(other)
    assert w.items() == {PREFIX + "kept": b"2", PREFIX + "new": b"1"}
    stats = w.watcher.stats
    assert stats.rewatches >= 1 and stats.lists == 1 and stats.compactions == 0, stats
    assert w.watcher.connected
    assert any("store unreachable" in e for e in stats.errors)


def test_compacted_while_disconnected_lists_again_and_drops_deleted_keys(watchers):
    store = FlakyStore()
    other = store.inner
    other.put(PREFIX + "gone", b"1")
    other.put(PREFIX + "kept", b"1")
    w = watchers(store)
    store.go_down()
    wait_for(lambda: not w.watcher.connected, message="the watcher to notice the broken stream")
    other.delete(PREFIX + "gone")
    other.put(PREFIX + "new", b"1")
    other.compact(other.revision())
    store.come_back()
    w.caught_up(other)
    assert w.items() == {PREFIX + "kept": b"1", PREFIX + "new": b"1"}
    assert w.watcher.stats.compactions == 1 and w.watcher.stats.lists == 2, w.watcher.stats


def test_paused_watcher_behind_a_compaction_lists_again_on_resume(watchers):
    store = MemoryStore()
    store.put(PREFIX + "gone", b"1")
    w = watchers(store)
    w.watcher.pause()
    # The pump notices the pause before its next event at the latest: after this probe either
    # was applied or the half-second inbox poll passed, nothing more is applied until resume.
    probe = store.put(PREFIX + "probe", b"1")
    deadline = time.monotonic() + 1.0
    while w.watcher.revision < probe and time.monotonic() < deadline:
        time.sleep(0.01)
    paused_at = w.watcher.revision
    store.delete(PREFIX + "gone")
    store.put(PREFIX + "new", b"1")
    store.compact(store.revision())
    assert w.watcher.revision == paused_at
    w.watcher.resume()
    w.caught_up(store)
    assert w.items() == {PREFIX + "probe": b"1", PREFIX + "new": b"1"}
    assert w.watcher.stats.compactions == 1


class FirstWatchSilent:
    """A client of a MemoryStore whose first watch is made but never delivers (a stream gone silent)."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.watches = 0

    def watch(self, prefix: str, *, start_revision: int, callback):
        self.watches += 1
        deliver = callback if self.watches > 1 else (lambda _item: None)
        return self.inner.watch(prefix, start_revision=start_revision, callback=deliver)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_periodic_relist_starts_a_silent_watch_anew_and_keeps_a_live_one(watchers):
    store = MemoryStore()
    client = FirstWatchSilent(store)
    w = watchers(client, relist_interval=0.1)
    store.put(PREFIX + "a", b"1")  # the silent watch says nothing of it; the next re-list finds it
    wait_for(lambda: w.watcher.stats.silent_restarts == 1, message="the silent watch to be started anew")
    for key in ("b", "c"):  # the new watch delivers; the re-lists between these writes leave it running
        events, lists = w.watcher.stats.events, w.watcher.stats.lists
        store.put(PREFIX + key, b"1")
        wait_for(lambda: w.watcher.stats.events > events, message=f"the watch to deliver {key}")
        wait_for(lambda: w.watcher.stats.lists > lists + 1, message="two more periodic re-lists")
    assert w.items() == {PREFIX + "a": b"1", PREFIX + "b": b"1", PREFIX + "c": b"1"}
    assert client.watches == 2 and w.watcher.stats.silent_restarts == 1, w.watcher.stats


class CountingLock:
    """A reentrant lock that counts how often a thread took it without holding it already."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self.holds = 0

    def __enter__(self) -> CountingLock:
        self._lock.acquire()
        self._depth += 1
        self.holds += self._depth == 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        self._lock.release()


def test_a_transaction_reaches_the_sink_in_one_hold_of_its_lock(watchers):
    """A reader holding the sink's lock (the agent's planner) sees a `pyweave run`'s claim and
    attachment together or not at all: planning between them claimed the address again (or, claim
    first, released it)."""
    store = MemoryStore()
    sink = Mirror()
    sink.lock = CountingLock()  # type: ignore[assignment]
    w = watchers(store, sink=sink)
    holds = sink.lock.holds
    store.commit(puts=[(PREFIX + "ips/10.0.0.2", b"claim"), (PREFIX + "attachments/c1", b"10.0.0.2")])
    w.caught_up(store)
    assert sink.lock.holds == holds + 1
    assert w.items() == {PREFIX + "ips/10.0.0.2": b"claim", PREFIX + "attachments/c1": b"10.0.0.2"}


def test_stops_promptly_also_while_the_store_is_down():
    store = FlakyStore()
    w = Running(store).start()
    store.go_down()
    wait_for(lambda: store.refused > 0, message="a refused attempt to watch again")
    w.halt()


def test_never_synced_watcher_stops_too():
    store = FlakyStore()
    store.go_down()
    w = Running(store)
    w.thread.start()
    assert not w.watcher.wait_synced(timeout=0.2)
    w.halt()


# -- the fake store's watch itself, as EtcdStore.watch behaves ----------------------------------
def test_memory_store_watch_replays_from_a_revision_and_reports_compaction():
    store = MemoryStore()
    first = store.put(PREFIX + "a", b"1")
    store.commit(puts=[(PREFIX + "b", b"1"), (PREFIX + "c", b"1")])
    got: list = []
    cancel = store.watch(PREFIX, start_revision=first + 1, callback=got.append)
    assert [type(x) for x in got] == [WatchBatch] and [c.key for c in got[0].changes] == [PREFIX + "b", PREFIX + "c"]
    store.delete(PREFIX + "a")
    assert got[-1].changes[0].value is None
    cancel()
    store.put(PREFIX + "d", b"1")
    assert len(got) == 2  # nothing after cancel
    store.compact(store.revision())
    late: list = []
    store.watch(PREFIX, start_revision=first, callback=late.append)
    assert len(late) == 1 and isinstance(late[0], Compacted)


def test_memory_store_broken_watch_says_so_once_then_nothing():
    store = MemoryStore()
    got: list = []
    store.watch(PREFIX, start_revision=store.revision() + 1, callback=got.append)
    assert store.break_watches() == 1
    store.put(PREFIX + "a", b"1")
    assert len(got) == 1 and isinstance(got[0], StoreUnavailable)
