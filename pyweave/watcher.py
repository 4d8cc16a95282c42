"""A local mirror of everything under one etcd prefix, kept current by list-then-watch.

The loop (kopf's and flannel's pattern): list with a revision, watch from the next one, apply each
batch to the mirror and call `on_change`. When the stream breaks (etcd restarted: the client reports
one error and then goes silent) it watches again from the last revision it applied; when that
revision has been compacted it lists again, which replaces the mirror wholesale so deletions missed
meanwhile disappear too. Every retry backs off with a cap and jitter. A periodic re-list guards
against anything missed in between.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pyweave.backoff import Backoff
from store.errors import Compacted, StoreError
from store.raw import WatchBatch

log = logging.getLogger(__name__)


@dataclass
class WatchStats:
    lists: int = 0
    rewatches: int = 0
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
        self._synced.set()
        self.on_change()

    def _apply(self, batch: WatchBatch) -> None:
        for change in batch.changes:
            self.sink.apply(change.key, change.value, change.lease, change.revision)
        self.stats.events += len(batch.changes)
        if batch.changes:
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
                    listed_at = time.monotonic()
                inbox: queue.Queue = queue.Queue()
                cancel = self.raw.watch(self.prefix, start_revision=self.sink.revision + 1, callback=inbox.put)

            except Compacted as err:
                log.info("watch from revision %d impossible (%s); listing again", self.sink.revision + 1, err)
                self.stats.compactions += 1
                need_list = True
                continue
            except StoreError as err:
                self._note_down(err)
                stop.wait(backoff.next())
                continue
            self.connected = True
            try:
                outcome = self._pump(inbox, stop, backoff, listed_at)
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

    def _pump(self, inbox: queue.Queue, stop: threading.Event, backoff: Backoff, listed_at: float) -> str:
        while not stop.is_set():
            if self._pause.is_set():
                self._wait_unpaused(stop)
                return "resume"
            if time.monotonic() - listed_at > self.relist_interval:
                return "relist"
            try:
                item = inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(item, WatchBatch):
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
