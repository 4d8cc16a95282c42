"""What `pyweave.watcher.StoreWatcher` asks of a real etcd (issue 11 item 4: etcd requests per new
endpoint): its periodic re-list is one list beside the running watch, never a new watch, also while
the client lags behind the stream by more than its timeout. And `EtcdStore` counts the attempts it
makes again inside one call (the benchmark adds them to the requests it counts around the client).

The lagging client is what the 200-host benchmark showed (docs/performance.md, section 6): a new
watch's "created" answer queues behind what the client has not yet read of the old watch on the same
gRPC stream; past the client's timeout the creation is given up and sent again, and counted as one
more watch. Here the client's watch thread is held in the callback (a gate the test opens), which is
that lag made certain; the client's timeout is short so that the test is quick."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import pytest
from polling import wait_for

from pyweave.watcher import StoreWatcher
from store.errors import StoreUnavailable
from store.etcd import EtcdStore
from store.raw import WatchBatch

pytestmark = pytest.mark.lab

PREFIX = "/test-watch-requests/"
RELIST_S = 1.0


def eventually(condition, timeout: float) -> bool:
    """Poll condition until it holds or the deadline passes; the caller asserts, saying what it saw."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class CountingLaggingStore:
    """An EtcdStore whose calls are counted by name, and whose watch callbacks (on the client's
    watch thread) wait at `gate` once `lag` is set: the client reads its stream no further."""

    def __init__(self, inner: EtcdStore) -> None:
        self.inner = inner
        self.calls: Counter = Counter()
        self.lag = threading.Event()
        self.gate = threading.Event()
        self.held = threading.Event()  # a callback waits at the gate

    def list(self, prefix: str):
        self.calls["list"] += 1
        return self.inner.list(prefix)

    def watch(self, prefix: str, *, start_revision: int, callback):
        self.calls["watch"] += 1

        def delivered(item) -> None:
            if self.lag.is_set() and isinstance(item, WatchBatch):
                self.held.set()
                self.gate.wait(timeout=60)
            callback(item)

        return self.inner.watch(prefix, start_revision=start_revision, callback=delivered)


def test_periodic_relist_is_one_list_and_keeps_the_watch_while_the_client_lags(etcd):
    raw = EtcdStore([etcd.url], timeout=0.5)
    store = CountingLaggingStore(raw)
    stop = threading.Event()
    watcher = StoreWatcher(store, PREFIX, lambda: None, relist_interval=RELIST_S)
    thread = threading.Thread(target=watcher.run, args=(stop,), name="test-watch", daemon=True)
    try:
        thread.start()
        assert watcher.wait_synced(timeout=10), "the watcher never listed"
        first = raw.put(PREFIX + "a", b"1")
        wait_for(lambda: watcher.revision >= first, timeout=10, message="the watch to deliver the first write")
        store.lag.set()
        raw.put(PREFIX + "b", b"1")  # held at the gate: the client reads nothing more
        wait_for(store.held.is_set, timeout=10, message="the client's watch thread to be held")
        # Two periodic re-lists while the client lags far longer than its timeout (0.5 s).
        lists = watcher.stats.lists
        assert eventually(lambda: watcher.stats.lists >= lists + 2, timeout=15), (
            f"no two periodic re-lists within 15 s: requests {dict(store.calls)}, {watcher.stats}")
        store.lag.clear()
        store.gate.set()
        last = raw.put(PREFIX + "c", b"1")
        wait_for(lambda: watcher.revision >= last, timeout=10, message="the watch to deliver a write after the lag")
        items, _ = watcher.snapshot()
        assert {k: v for k, (v, _lease) in items.items()} == {PREFIX + "a": b"1", PREFIX + "b": b"1", PREFIX + "c": b"1"}
        assert store.calls["watch"] == 1, (dict(store.calls), watcher.stats)
        assert store.calls["list"] == watcher.stats.lists >= 3, (dict(store.calls), watcher.stats)
        assert watcher.stats.failed_starts == 0 and watcher.stats.silent_restarts == 0, watcher.stats
    finally:
        store.gate.set()
        stop.set()
        thread.join(timeout=10)
        raw.close()
    assert not thread.is_alive(), "the watcher did not stop within 10 s of its stop event"


def test_the_client_counts_the_attempts_it_makes_again():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    raw = EtcdStore([f"http://127.0.0.1:{port}"], timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            raw.put(PREFIX + "a", b"1")
        assert raw.retried == {"put": 2}  # three attempts in all, one call
    finally:
        raw.close()


def test_a_cancelled_watch_says_nothing_more_after_the_client_replaced_its_watcher(etcd):
    """After any failed request (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL) the client library drops its
    watcher for a new one and only half-closes the old stream, which etcd keeps serving; a cancel sent
    to the new watcher left the old watch delivering every change into a queue nobody read."""
    raw = EtcdStore([etcd.url], timeout=2)
    prefix = PREFIX + "orphan/"
    got: list = []
    try:
        _items, revision = raw.list(prefix)
        cancel = raw.watch(prefix, start_revision=revision + 1, callback=got.append)
        raw.put(prefix + "before", b"1")
        wait_for(lambda: any(isinstance(i, WatchBatch) for i in got), timeout=10, message="the watch to deliver")
        raw._client._clear_old_stubs()  # what the client does after a failed request
        cancel()
        seen: list = []
        after = raw.put(prefix + "after", b"1")
        cancel_other = raw.watch(prefix, start_revision=after, callback=seen.append)  # a watch on the new watcher
        wait_for(lambda: any(isinstance(i, WatchBatch) and i.revision >= after for i in seen), timeout=10,
                 message="a live watch to deliver the write made after the cancel")
        cancel_other()
        keys = [c.key for i in got if isinstance(i, WatchBatch) for c in i.changes]
        assert keys == [prefix + "before"], keys
    finally:
        raw.close()
