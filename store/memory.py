"""An in-memory stand-in for the raw etcd tier, for unit tests of the domain tier (no etcd needed).

It keeps etcd's semantics that the domain tier relies on: a global revision that every write
bumps, mod revisions per key, and all-or-nothing transactions.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from store.etcd import KeyValue


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[str, KeyValue] = {}
        self._revision = 1
        self._lock = threading.Lock()
        self.endpoints = ["memory://"]

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._lock:
            return [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)], self._revision

    def get(self, key: str) -> KeyValue | None:
        return self._data.get(key)

    def revision(self) -> int:
        return self._revision

    def _put(self, key: str, value: bytes, lease: int) -> None:
        self._revision += 1
        self._data[key] = KeyValue(key, value, self._revision, lease)

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        with self._lock:
            self._put(key, value, lease)
            return self._revision

    def delete(self, key: str) -> bool:
        with self._lock:
            if key in self._data:
                self._revision += 1
                del self._data[key]
                return True
            return False

    def delete_prefix(self, prefix: str) -> int:
        keys = [k for k in list(self._data) if k.startswith(prefix)]
        for k in keys:
            self.delete(k)
        return len(keys)

    def create(self, key: str, value: bytes, *, lease: int = 0) -> bool:
        return self.commit(absent=[key], puts=[(key, value)], lease=lease)

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
            for k, v in puts:
                self._data[k] = KeyValue(k, v, self._revision, lease)
            for k in deletes:
                self._data.pop(k, None)
            return True

    def delete_if(self, key: str, *, mod_revision: int) -> bool:
        return self.commit(unchanged={key: mod_revision}, deletes=[key])
