"""The agent's view of Docker: a cache of container lookups, invalidated by Docker's events.

Reconcile asks for the containers named in this host's attachments on every pass; the cache makes an
event cost one lookup per container that changed, not one per container. A `destroy` event is also
remembered, so that the janitor releases the addresses of a container removed while its attachment
still exists.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pyweave.containers import ContainerInfo, ContainerRuntime


class DockerView:
    def __init__(self, runtime: ContainerRuntime, on_change: Callable[[], None]) -> None:
        self.runtime = runtime
        self.on_change = on_change
        self._cache: dict[str, ContainerInfo | None] = {}
        self._lock = threading.Lock()
        self._destroyed: list[str] = []

    def follow(self, stop: threading.Event) -> None:
        """Follow Docker's events until stop is set (a thread's body)."""
        self.runtime.follow_events(self._on_event, stop)

    def _on_event(self, action: str, cid: str) -> None:
        with self._lock:
            if action == "reconnected":
                self._cache.clear()
            else:
                self._cache = {k: v for k, v in self._cache.items() if v is None or v.id != cid}
                self._cache.pop(cid, None)
            if action == "destroy":
                self._destroyed.append(cid)
        self.on_change()

    def forget(self) -> None:
        """Drop every cached lookup (the periodic full resync asks Docker again)."""
        with self._lock:
            self._cache.clear()

    def container(self, ref: str) -> ContainerInfo | None:
        """The container by ID or name, or None if Docker does not know it. Raises ContainerError."""
        with self._lock:
            if ref in self._cache:
                return self._cache[ref]
        info = self.runtime.inspect(ref)
        with self._lock:
            self._cache[ref] = info
        return info

    def take_destroyed(self) -> list[str]:
        with self._lock:
            out, self._destroyed = self._destroyed, []
        return out
