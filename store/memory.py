"""An in-memory stand-in for the raw etcd tier, for unit tests of the domain tier and of the agent
(no etcd needed).

It keeps etcd's semantics that the layers above rely on: a global revision that every write bumps,
mod revisions per key, all-or-nothing transactions, leases whose keys go with them, and watches
that behave like `store.etcd.EtcdStore.watch`: every change under a prefix from a start revision
on, in order, as `WatchBatch`es (one per revision); `Compacted` when the start revision is older
than the last compaction; `StoreUnavailable` once when the stream breaks (`break_watches`), after
which that watch delivers nothing more and the caller must watch again.

Watch callbacks run in the writing thread, under the store's lock (that is what keeps them in
order): they must not block or write to the store. `pyweave.watcher.StoreWatcher`'s callback only
puts into a queue.
"""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence

from store.errors import Compacted, StoreUnavailable
from store.raw import Change, KeyValue, OneKeyWrites, WatchBatch


class _Watch:
    def __init__(self, prefix: str, callback: Callable) -> None:
        self.prefix = prefix
        self.callback = callback
        self.live = True


class MemoryStore(OneKeyWrites):
    def __init__(self) -> None:
        self._data: dict[str, KeyValue] = {}
        self._revision = 1
        self._lock = threading.RLock()
        self.endpoints = ["memory://"]
        self._history: list[Change] = []  # every change, in revision order
        self._compacted = 0  # changes before this revision are gone
        self._watches: list[_Watch] = []
        self._leases: dict[int, int] = {}  # lease id -> TTL granted
        self._lease_ids = itertools.count(0x1000)

    # -- reads ---------------------------------------------------------------------------------
    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._lock:
            return [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)], self._revision

    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            return self._data.get(key)

    def revision(self) -> int:
        with self._lock:
            return self._revision

    # -- writes (each bumps the revision once, and is delivered to the watches) ---------------------
    def _changed(self, changes: builtins.list[Change]) -> None:
        self._history += changes
        batch = WatchBatch(self._revision, tuple(changes))
        for w in list(self._watches):
            mine = tuple(c for c in batch.changes if c.key.startswith(w.prefix))
            if w.live and mine:
                w.callback(WatchBatch(batch.revision, mine))

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        with self._lock:
            self._revision += 1
            self._data[key] = KeyValue(key, value, self._revision, lease)
            self._changed([Change(key, value, self._revision, lease)])
            return self._revision

    def delete(self, key: str) -> bool:
        with self._lock:
            if key not in self._data:
                return False
            self._revision += 1
            del self._data[key]
            self._changed([Change(key, None, self._revision)])
            return True

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            keys = [k for k in list(self._data) if k.startswith(prefix)]
            for k in keys:
                self.delete(k)
            return len(keys)

    def commit(
        self,
        *,
        absent: Sequence[str] = (),
        unchanged: Mapping[str, int] | None = None,
        puts: Sequence[tuple[str, bytes]] = (),
        deletes: Sequence[str] = (),
        lease: int = 0,
    ) -> bool:
        with self._lock:
            if any(k in self._data for k in absent):
                return False
            for k, rev in (unchanged or {}).items():
                if k not in self._data or self._data[k].mod_revision != rev:
                    return False
            self._revision += 1
            changes = []
            for k, v in puts:
                self._data[k] = KeyValue(k, v, self._revision, lease)
                changes.append(Change(k, v, self._revision, lease))
            for k in deletes:
                if self._data.pop(k, None) is not None:
                    changes.append(Change(k, None, self._revision))
            self._changed(changes)
            return True

    def compact(self, revision: int) -> None:
        """Forget the history before `revision`: a watch from an older revision gets `Compacted`."""
        with self._lock:
            self._compacted = max(self._compacted, revision)
            self._history = [c for c in self._history if c.revision >= self._compacted]

    # -- leases --------------------------------------------------------------------------------
    def grant_lease(self, ttl: int) -> int:
        with self._lock:
            lease = next(self._lease_ids)
            self._leases[lease] = ttl
            return lease

    def lease_ttl(self, lease_id: int) -> int:
        with self._lock:
            return self._leases.get(lease_id, -1)

    def keepalive(self, lease_id: int) -> int:
        return self.lease_ttl(lease_id)

    def revoke_lease(self, lease_id: int) -> None:
        """The lease ends (revoked, or expired: a dead host) and every key bound to it goes."""
        with self._lock:
            self._leases.pop(lease_id, None)
            bound = [k for k, kv in self._data.items() if kv.lease == lease_id]
            if bound:
                self.commit(deletes=bound)

    # -- watches -------------------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int, callback: Callable) -> Callable[[], None]:
        """Deliver every change under prefix from start_revision on, in order, to callback; see the
        module's docstring. Returns a function that cancels the watch."""
        with self._lock:
            if start_revision < self._compacted:
                callback(Compacted(self._compacted))
                return lambda: None
            w = _Watch(prefix, callback)
            by_revision: dict[int, list[Change]] = {}
            for c in self._history:
                if c.revision >= start_revision and c.key.startswith(prefix):
                    by_revision.setdefault(c.revision, []).append(c)
            for revision, changes in by_revision.items():
                callback(WatchBatch(revision, tuple(changes)))
            self._watches.append(w)

        def cancel() -> None:
            with self._lock:
                w.live = False
                if w in self._watches:
                    self._watches.remove(w)

        return cancel

    def break_watches(self, cause: str = "stream broken") -> int:
        """Every live watch gets one `StoreUnavailable` and then nothing more (as when etcd
        restarts under a gRPC watch stream). Returns how many watches were broken."""
        with self._lock:
            broken = [w for w in self._watches if w.live]
            self._watches.clear()
            for w in broken:
                w.live = False
                w.callback(StoreUnavailable(self.endpoints, cause))
            return len(broken)

    def close(self) -> None:
        pass
