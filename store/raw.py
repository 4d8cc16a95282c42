"""The raw tier's interface: values, watch events, endpoints, and what the domain tier needs of a store.

`store.etcd.EtcdStore` implements `RawStore` on a real etcd; `store.memory.MemoryStore` in memory,
for unit tests. Nothing here imports the etcd client, so the CLI and the planner can use these types
without loading gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from store.errors import StoreError

DEFAULT_CLIENT_PORT = 2379


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Change:
    """One watch event: `value is None` means the key was deleted."""

    key: str
    value: bytes | None
    revision: int
    lease: int = 0


@dataclass(frozen=True)
class WatchBatch:
    """The changes of one watch response and the store revision they bring the watcher to."""

    revision: int
    changes: tuple[Change, ...]


WatchCallback = Callable[["WatchBatch | StoreError"], None]


@dataclass(frozen=True)
class TlsFiles:
    """What a client of a store over TLS needs: the CA to trust, its certificate and key (PEM files;
    `store.tls` makes them for the embedded store, docs/security.md)."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) as PEM bytes; StoreError naming a file that cannot be read."""
        out = []
        for path in (self.ca, self.cert, self.key):
            try:
                out.append(Path(path).read_bytes())
            except OSError as err:
                raise StoreError(f"{path} cannot be read ({err.strerror}); the store needs it for TLS") from err
        return out[0], out[1], out[2]


_default_tls: TlsFiles | None = None


def use_tls(files: TlsFiles | None) -> None:
    """The certificate files of this process's store clients that are given none (the CLI and the
    agent talk to one cluster: they set it once, and every `https://` endpoint then uses it)."""
    global _default_tls
    _default_tls = files


def default_tls() -> TlsFiles | None:
    return _default_tls


def parse_endpoint(url: str) -> tuple[str, int]:
    """'http://10.0.0.1:2379', '10.0.0.1:2379' or '10.0.0.1' -> (host, port)."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if not parts.hostname:
        raise ValueError(f"store endpoint {url!r} has no host; use e.g. http://10.0.0.1:2379")
    return parts.hostname, parts.port or DEFAULT_CLIENT_PORT


def is_tls(url: str) -> bool:
    return url.strip().lower().startswith("https://")


def normalise_endpoints(urls: Iterable[str]) -> list[str]:
    """Endpoints as `http://HOST:PORT`, or `https://HOST:PORT` for a store over TLS."""
    out = []
    for url in urls:
        for part in url.split(","):
            if part.strip():
                host, port = parse_endpoint(part)
                out.append(f"{'https' if is_tls(part) else 'http'}://{host}:{port}")
    if not out:
        raise ValueError("no store endpoint given; use e.g. --store http://10.0.0.1:2379")
    return out


class OneKeyWrites:
    """`create` and `delete_if`, the two one-key cases of `commit`, for the store clients to inherit:
    written once, so the etcd, HTTP and in-memory clients cannot give them different meanings."""

    commit: Callable[..., bool]  # each client's own transaction (the `RawStore.commit` below)

    def create(self, key: str, value: bytes, *, lease: int = 0) -> bool:
        """Write key only if it does not exist. True if written."""
        return self.commit(absent=[key], puts=[(key, value)], lease=lease)

    def delete_if(self, key: str, *, mod_revision: int) -> bool:
        """Delete key only if it is still at `mod_revision`. True if deleted."""
        return self.commit(unchanged={key: mod_revision}, deletes=[key])


class RawStore(Protocol):
    """What the domain tier needs of the raw tier (store.etcd.EtcdStore, or an in-memory fake)."""

    endpoints: list[str]

    def list(self, prefix: str) -> tuple[list[KeyValue], int]: ...
    def get(self, key: str) -> KeyValue | None: ...
    def put(self, key: str, value: bytes, *, lease: int = 0) -> int: ...
    def delete(self, key: str) -> bool: ...
    def create(self, key: str, value: bytes, *, lease: int = 0) -> bool: ...
    def commit(
        self,
        *,
        absent: Sequence[str] = (),
        unchanged: Mapping[str, int] | None = None,
        puts: Sequence[tuple[str, bytes]] = (),
        deletes: Sequence[str] = (),
        lease: int = 0,
    ) -> bool: ...
    def delete_if(self, key: str, *, mod_revision: int) -> bool: ...
