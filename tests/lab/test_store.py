"""The raw tier's two implementations against a real etcd: the gRPC client (`store.etcd`, the
agent's) and the JSON gateway (`store.http`, the CLI's) keep one contract: reads, transactions,
watches from a revision, `Compacted` behind a compaction, one `StoreUnavailable` when etcd goes."""

from __future__ import annotations

import queue
import time

import pytest

from store.errors import Compacted, StoreUnavailable
from store.etcd import EtcdStore
from store.http import HttpStore
from store.raw import WatchBatch

pytestmark = pytest.mark.lab


@pytest.fixture(params=["grpc", "http"])
def store(request, etcd):
    if etcd.proc is None:
        etcd.start()
    raw = EtcdStore([etcd.url], timeout=2.0) if request.param == "grpc" else HttpStore([etcd.url], timeout=2.0)
    prefix = f"/test/{request.node.name}/"
    yield raw, prefix
    raw.close()


def _next(inbox: queue.Queue, timeout: float = 5.0):
    return inbox.get(timeout=timeout)


def test_reads_writes_and_transactions(store):
    raw, p = store
    rev = raw.put(p + "a", b"1")
    assert raw.get(p + "a").value == b"1" and raw.get(p + "a").mod_revision == rev
    assert raw.get(p + "missing") is None
    assert not raw.create(p + "a", b"2") and raw.create(p + "b", b"2")
    kvs, listed = raw.list(p)
    assert [kv.key for kv in kvs] == [p + "a", p + "b"] and listed >= rev
    assert raw.commit(absent=[p + "c"], unchanged={p + "a": rev}, puts=[(p + "c", b"3")], deletes=[p + "b"])
    assert not raw.commit(unchanged={p + "a": rev - 1}, deletes=[p + "a"])
    assert [kv.key for kv in raw.list(p)[0]] == [p + "a", p + "c"]
    assert not raw.delete_if(p + "a", mod_revision=rev + 100) and raw.delete_if(p + "a", mod_revision=rev)
    assert raw.delete(p + "c") and not raw.delete(p + "c")
    assert raw.list(p)[0] == []


def test_watch_from_a_revision_delivers_every_change_in_order(store):
    raw, p = store
    start = raw.put(p + "x", b"1")
    raw.put(p + "x", b"2")
    raw.delete(p + "x")
    inbox: queue.Queue = queue.Queue()
    cancel = raw.watch(p, start_revision=start, callback=inbox.put)
    try:
        seen = []
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            batch = _next(inbox)
            assert isinstance(batch, WatchBatch)
            seen += [(c.key, c.value) for c in batch.changes]
        assert seen == [(p + "x", b"1"), (p + "x", b"2"), (p + "x", None)]
    finally:
        cancel()


def test_a_watch_behind_a_compaction_says_compacted(store):
    raw, p = store
    old = raw.put(p + "k", b"1")
    latest = raw.put(p + "k", b"2")
    EtcdStore([raw.endpoints[0]], timeout=2.0).compact(latest)
    inbox: queue.Queue = queue.Queue()
    try:
        cancel = raw.watch(p, start_revision=old, callback=inbox.put)
    except Compacted:
        return  # refused at once: as good as the callback saying it
    try:
        item = _next(inbox)
        while isinstance(item, WatchBatch) and not item.changes:
            item = _next(inbox)
        assert isinstance(item, Compacted)
    finally:
        cancel()


def test_etcd_going_away_is_one_store_unavailable_then_silence(store, etcd):
    raw, p = store
    inbox: queue.Queue = queue.Queue()
    cancel = raw.watch(p, start_revision=raw.revision() + 1, callback=inbox.put)
    try:
        etcd.stop()
        item = _next(inbox, timeout=15)
        while isinstance(item, WatchBatch):
            item = _next(inbox, timeout=15)
        assert isinstance(item, StoreUnavailable)
        with pytest.raises(StoreUnavailable):
            raw.get(p + "a")
    finally:
        cancel()
        etcd.start()


def test_a_list_larger_than_one_page_is_whole_and_of_one_revision(store, monkeypatch):
    import store.etcd as etcd_module

    raw, p = store
    monkeypatch.setattr(etcd_module, "LIST_PAGE", 7)  # the HTTP store answers in one piece
    for i in range(30):
        raw.put(f"{p}k{i:02d}", b"v" * 100)
    kvs, revision = raw.list(p)
    assert [kv.key for kv in kvs] == [f"{p}k{i:02d}" for i in range(30)]
    assert revision >= max(kv.mod_revision for kv in kvs)


def test_a_keepalive_refreshes_a_live_lease_and_says_zero_for_a_gone_one(store):
    raw, p = store
    lease = raw.grant_lease(10)
    raw.put(p + "leased", b"1", lease=lease)
    assert 0 < raw.keepalive(lease) <= 10
    raw.revoke_lease(lease)
    assert raw.keepalive(lease) <= 0
    assert raw.get(p + "leased") is None
