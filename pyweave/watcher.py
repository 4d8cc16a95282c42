"""A local mirror of everything under one etcd prefix, kept current by list-then-watch.

The loop (kopf's and flannel's pattern): list with a revision, watch from the next one, apply each
batch to the mirror and call `on_change`. When the stream breaks (etcd restarted: the client reports
one error and then goes silent) it watches again from the last revision it applied; when that
revision has been compacted it lists again, which replaces the mirror wholesale so deletions missed
meanwhile disappear too. Every retry backs off with a cap and jitter.

A periodic re-list (every relist_interval, give or take a quarter drawn at random, so that hosts
that listed together do not all list again in the same second) guards against anything missed in
between. It lists beside the running watch and
leaves the watch alone: what the watch still delivers up to the listed revision is already in the
listing and is skipped (applied, it would set keys back to older values for a moment). Starting the
watch anew at every re-list cost a request per host and period for nothing, and under load worse:
the new watch's "created" answer queues behind whatever the client has not yet read of the old one on
the shared stream, a client that lags more than its timeout gives the creation up, and it is sent
again (the 200-host benchmark counted 19 watches beyond the re-lists' own and none after a broken
stream: this). The watch is started anew only if it said nothing since the last listing while the
store moved past what it delivered (a stream gone silent).

Each watch batch (one etcd watch response, which holds whole revisions) is applied to the sink under
its lock, so a reader holding the lock sees a transaction whole or not at all: an agent that planned
between the attachment and the claim of one `pyweave run` would claim the address again, or release it.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyweave.backoff import Backoff
from store.errors import Compacted, StoreError
from store.raw import WatchBatch

RELIST_JITTER = 0.25  # the periodic re-list comes after relist_interval x (1 +- this), drawn at random

log = logging.getLogger(__name__)


@dataclass
class WatchStats:
    lists: int = 0
    rewatches: int = 0  # watched again after a broken stream
    failed_starts: int = 0  # a watch that could not be started (etcd unreachable, or too slow to answer)
    silent_restarts: int = 0  # started anew: a periodic re-list found the store ahead of a silent watch
    compactions: int = 0
    events: int = 0
    errors: list[str] = field(default_factory=list)


class Mirror:
    """The plain sink: key -> (value, lease), and the revision it is current to."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.items: dict[str, tuple[bytes, int]] = {}
        self.revision = 0

    def apply(self, key: str, value: bytes | None, lease: int = 0, revision: int = 0) -> None:
        with self.lock:
            if value is None:
                self.items.pop(key, None)
            else:
                self.items[key] = (value, lease)
            self.revision = max(self.revision, revision)

    def replace(self, items: dict[str, tuple[bytes, int]], revision: int) -> None:
        with self.lock:
            self.items = dict(items)
            self.revision = revision

    def snapshot(self) -> tuple[dict[str, tuple[bytes, int]], int]:
        with self.lock:
            return dict(self.items), self.revision

    def clear(self) -> None:
        with self.lock:
            self.items = {}


class Sink(Protocol):
    """Where the watcher puts what it lists and what the watch delivers (a Mirror, or the agent's
    incremental view)."""

    revision: int

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """Held over each watch batch, so that readers holding it see whole transactions."""

    def apply(self, key: str, value: bytes | None, lease: int = 0, revision: int = 0) -> None: ...
    def replace(self, items: dict[str, tuple[bytes, int]], revision: int) -> None: ...
    def snapshot(self) -> tuple[dict[str, tuple[bytes, int]], int]: ...
    def clear(self) -> None:
        """Forget everything (the next `replace` starts afresh; the revision is kept)."""


class StoreWatcher:
    def __init__(
        self,
        raw,
        prefix: str,
        on_change: Callable[[], None],
        *,
        relist_interval: float = 300.0,
        sink: Sink | None = None,
    ) -> None:
        self.raw = raw
        self.prefix = prefix
        self.on_change = on_change
        self.relist_interval = relist_interval
        self.stats = WatchStats()
        self.connected = False
        self.sink: Sink = sink if sink is not None else Mirror()
        self._synced = threading.Event()
        self._listed_at = 0.0
        self._relist_after = relist_interval
        self._skip_through = 0  # the revision of the last listing: a watch's changes up to it are in the sink
        self._pause = threading.Event()  # tests stop the watch to force a compaction behind it

    def snapshot(self) -> tuple[dict[str, tuple[bytes, int]], int]:
        return self.sink.snapshot()

    @property
    def revision(self) -> int:
        return self.sink.revision

    def pause(self) -> None:
        """Stop applying events (a test hook: SIGUSR1 to the agent); `resume` watches again
        from the last applied revision, re-listing if that has been compacted meanwhile."""
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def _relist(self) -> None:
        kvs, revision = self.raw.list(self.prefix)
        self.sink.replace({kv.key: (kv.value, kv.lease) for kv in kvs}, revision)
        self.stats.lists += 1
        self._listed_at = time.monotonic()
        # The next periodic list comes after 0.75-1.25 x relist_interval, drawn anew each time:
        # watchers that listed together (a cluster started at once, every host after an etcd
        # restart) spread their next lists over half an interval instead of asking etcd for the
        # whole prefix all in the same second (200 hosts' lists at once made etcd miss writes'
        # deadlines in the control-plane benchmark).
        self._relist_after = self.relist_interval * random.uniform(1 - RELIST_JITTER, 1 + RELIST_JITTER)
        self._skip_through = revision  # a watch running meanwhile delivers these again: skipped
        self._synced.set()
        self.on_change()

    def _apply(self, batch: WatchBatch) -> None:
        changes = [c for c in batch.changes if c.revision > self._skip_through]
        with self.sink.lock:
            for change in changes:
                self.sink.apply(change.key, change.value, change.lease, change.revision)
        self.stats.events += len(changes)
        if changes:
            self.on_change()

    def run(self, stop: threading.Event) -> None:
        # Capped at 0.5 s: two failing reconnect attempts a second cost nothing measurable, and
        # intents written once etcd is back must apply within 2 s.
        backoff = Backoff(initial=0.1, cap=0.5)
        need_list = True
        while not stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
            except StoreError as err:
                self._note_down(err)
                stop.wait(backoff.next())
                continue
            inbox: queue.Queue = queue.Queue()
            try:
                cancel = self.raw.watch(self.prefix, start_revision=self.sink.revision + 1, callback=inbox.put)
            except Compacted as err:
                log.info("watch from revision %d impossible (%s); listing again", self.sink.revision + 1, err)
                self.stats.compactions += 1
                need_list = True
                continue
            except StoreError as err:
                self.stats.failed_starts += 1
                self._note_down(err)
                stop.wait(backoff.next())
                continue
            self.connected = True
            try:
                outcome = self._pump(inbox, stop, backoff)
            finally:
                cancel()
            if outcome == "compacted":
                log.info("watch revision compacted; listing again")
                self.stats.compactions += 1
                need_list = True
            elif outcome == "relist":
                need_list = True
            elif outcome == "broken":
                self.stats.rewatches += 1
                stop.wait(backoff.next())

    def _pump(self, inbox: queue.Queue, stop: threading.Event, backoff: Backoff) -> str:
        heard = False  # a batch came through this watch since the last listing
        while not stop.is_set():
            if self._pause.is_set():
                self._wait_unpaused(stop)
                return "resume"
            if time.monotonic() - self._listed_at > self._relist_after:
                outcome = self._relist_beside(heard or not inbox.empty())
                if outcome:
                    return outcome
                heard = False
            try:
                item = inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(item, WatchBatch):
                heard = True
                backoff.reset()
                try:
                    self._apply(item)
                except Exception:  # noqa: BLE001 - a bug in the sink must not end the watch
                    log.exception("applying a watch batch failed; listing again")
                    self.stats.errors = (self.stats.errors + ["sink failed"])[-20:]
                    self.sink.clear()
                    return "relist"
            elif isinstance(item, Compacted):
                return "compacted"
            else:
                self._note_down(item)
                return "broken"
        return "stopped"

    def _relist_beside(self, heard: bool) -> str | None:
        """The periodic re-list, the watch left running; an outcome if the watch must end."""
        delivered = self.sink.revision
        try:
            self._relist()
        except StoreError as err:
            self._note_down(err)
            return "relist"  # listed again (backing off) and watched anew, as after any failure
        if not heard and self._skip_through > delivered:
            log.info("the watch said nothing while the store moved from revision %d to %d; watching anew",
                     delivered, self._skip_through)
            self.stats.silent_restarts += 1
            return "restart"
        return None

    def _wait_unpaused(self, stop: threading.Event) -> None:
        # While paused no event is applied; resuming watches again from the old revision, which
        # is exactly an agent that fell behind (the compaction test uses this).
        while self._pause.is_set() and not stop.is_set():
            stop.wait(0.1)

    def _note_down(self, err: object) -> None:
        self.connected = False
        msg = str(err)
        if not self.stats.errors or self.stats.errors[-1] != msg:
            log.warning("store watch interrupted: %s", msg)
        self.stats.errors = (self.stats.errors + [msg])[-20:]
