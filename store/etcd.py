"""Raw etcd access: keys, revisions, leases, transactions and watches.

This is the lower of the two tiers of `store/` (flannel's registry): it knows nothing of hosts or
networks, only bytes under keys. The errors that mean "etcd unreachable or too slow" (gRPC status
codes, the client's connection and timeout exceptions) are translated here, once, into
`StoreUnavailable` (retry later), and a compacted revision into `Compacted` (re-list), so the layers
above never import grpc; any other client exception is a bug and passes through unchanged.

Client choice: `etcd-sdk-python` (import name `pyetcd`), the maintained fork of python-etcd3. Same
API, current protobuf (the original pins protobuf<3.21), and a multi-endpoint client with failover,
which a three-member cluster needs when its leader dies.

Watches: the client delivers one error to a watch callback when the stream breaks (etcd restarted,
network cut) and never calls it again. `EtcdStore.watch` hands that error to the caller, which must
watch again from its last revision (and re-list on `Compacted`): see `pyweave.watcher`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import pyetcd
from pyetcd import events as etcd_events
from pyetcd import exceptions as etcd_exceptions
from pyetcd import utils

from store.errors import Compacted, StoreError, StoreUnavailable
from store.http import HttpStore
from store.raw import (
    Change,
    KeyValue,
    OneKeyWrites,
    TlsFiles,
    WatchBatch,
    WatchCallback,
    default_tls,
    is_tls,
    normalise_endpoints,
    parse_endpoint,
)

log = logging.getLogger(__name__)

LIST_PAGE = 5000

__all__ = [
    "Change", "Compacted", "EtcdStore", "KeyValue", "StoreError", "StoreUnavailable", "WatchBatch", "normalise_endpoints",
    "parse_endpoint",
]



def _is_retryable(err: BaseException) -> bool:
    return isinstance(
        err,
        (
            grpc.RpcError,
            etcd_exceptions.ConnectionFailedError,
            etcd_exceptions.ConnectionTimeoutError,
            etcd_exceptions.NoServerAvailableError,
            etcd_exceptions.InternalServerError,
            etcd_exceptions.WatchTimedOut,
        ),
    )


class EtcdStore(OneKeyWrites):
    """A thin, error-translating face of one etcd cluster. Thread-safe, as the gRPC client is."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 3.0, tls: TlsFiles | None = None) -> None:
        self.endpoints = normalise_endpoints(endpoints)
        self.timeout = timeout
        # https:// endpoints (a cluster with a secret, docs/security.md): trust the cluster's CA
        # only and show the client certificate; given, else the process's default.
        self.tls = tls if tls is not None else default_tls()
        self._creds: grpc.ChannelCredentials | None = None
        # gRPC's own reconnect backoff grows to minutes; after an etcd outage the client would
        # then refuse calls long after etcd is back. Keep it, and the client's pause before retrying
        # a failed endpoint, short: the callers back off themselves.
        opts = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
            # Lists come in pages (LIST_PAGE keys), but a watch response or a page of large values
            # may still pass gRPC's default 4 MB limit on a big cluster.
            ("grpc.max_receive_message_length", 64 << 20),
        ]
        self._opts = opts
        eps = [self._endpoint(u) for u in self.endpoints]
        self._client = pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)
        self._lock = threading.Lock()
        self._http: HttpStore | None = None  # lease keep-alives (see keepalive)
        # Attempts made again by `_call`, by the client method's name: each is one more request to
        # etcd (the first may even have been applied), which a count of this object's calls misses.
        self.retried: Counter[str] = Counter()

    def add_endpoints(self, urls: Sequence[str]) -> None:
        """Fail over to these endpoints too (members that joined the cluster since). The client's
        table is replaced, never changed in place: another thread may be walking it."""
        new = [u for u in normalise_endpoints(urls) if u not in self.endpoints]
        if not new:
            return
        eps = {}
        for url in new:
            ep = self._endpoint(url)
            eps[ep.netloc] = ep
        with self._lock:
            self._client.endpoints = {**self._client.endpoints, **eps}
            self.endpoints = self.endpoints + new

    def _endpoint(self, url: str) -> pyetcd.Endpoint:
        if not is_tls(url):
            return pyetcd.Endpoint(*parse_endpoint(url), secure=False, time_retry=0.2, opts=self._opts)
        if self._creds is None:
            if self.tls is None:
                self._creds = grpc.ssl_channel_credentials()
            else:
                ca, cert, key = self.tls.read()
                self._creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        return pyetcd.Endpoint(*parse_endpoint(url), secure=True, creds=self._creds, time_retry=0.2, opts=self._opts)

    def _call(self, fn: Callable, *args, **kwargs):
        # With failover the client moves to another endpoint only when asked again, so a failed
        # request is retried: once per other endpoint, and at least three times in all with short
        # pauses, which rides over a busy or briefly restarting etcd. Then it gives up: callers
        # (the CLI) must say "store unreachable" instead of hanging.
        attempts = max(3, len(self.endpoints))
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except etcd_exceptions.RevisionCompactedError as err:
                raise Compacted(err.compacted_revision) from err
            except Exception as err:  # noqa: BLE001 - translated below
                if not _is_retryable(err):
                    raise
                if attempt == attempts - 1:
                    raise StoreUnavailable(self.endpoints, _describe(err)) from err
                with self._lock:
                    self.retried[getattr(fn, "__name__", "call")] += 1
                time.sleep(0.1 * (attempt + 1))

    # -- reads ---------------------------------------------------------------------------------
    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under prefix and the store revision of that snapshot, read in pages of
        LIST_PAGE keys at that one revision (a 2,000-host cluster is 50,000 endpoints, 13 MB: one
        answer would pass gRPC's message limit, and hold the server for the whole of it)."""
        end = utils.prefix_range_end(utils.to_bytes(prefix))
        start: bytes = utils.to_bytes(prefix)
        revision: int | None = None
        out: list[KeyValue] = []
        while True:
            resp = self._call(
                self._client.get_range_response, start, end, sort_order="ascend", sort_target="key",
                limit=LIST_PAGE, revision=revision,
            )
            out += [KeyValue(kv.key.decode(), bytes(kv.value), kv.mod_revision, kv.lease) for kv in resp.kvs]
            if revision is None:
                revision = resp.header.revision
            if not resp.more or not resp.kvs:
                return out, revision
            start = resp.kvs[-1].key + b"\0"

    def get(self, key: str) -> KeyValue | None:
        resp = self._call(self._client.get_response, key)
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return KeyValue(kv.key.decode(), bytes(kv.value), kv.mod_revision, kv.lease)

    def revision(self) -> int:
        resp = self._call(self._client.get_response, "\0")
        return resp.header.revision

    # -- writes --------------------------------------------------------------------------------
    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write key; returns the store revision of the write."""
        resp = self._call(self._client.put, key, value, lease=lease or None)
        return resp.header.revision

    def delete(self, key: str) -> bool:
        return bool(self._call(self._client.delete, key))

    def delete_prefix(self, prefix: str) -> int:
        resp = self._call(self._client.delete_prefix, prefix)
        return resp.deleted

    def commit(
        self,
        *,
        absent: Sequence[str] = (),
        unchanged: Mapping[str, int] | None = None,
        puts: Sequence[tuple[str, bytes]] = (),
        deletes: Sequence[str] = (),
        lease: int = 0,
    ) -> bool:
        """One transaction: if every key in `absent` is missing and every key in `unchanged` still has
        the given mod revision, apply all puts and deletes. True if applied."""
        tx = self._client.transactions
        compare = [tx.create(k) == 0 for k in absent]
        compare += [tx.mod(k) == rev for k, rev in (unchanged or {}).items()]
        success = [tx.put(k, v, lease or None) for k, v in puts] + [tx.delete(k) for k in deletes]
        ok, _ = self._call(self._client.transaction, compare=compare, success=success, failure=[])
        return bool(ok)

    def compact(self, revision: int) -> None:
        self._call(self._client.compact, revision, physical=True)

    # -- leases --------------------------------------------------------------------------------
    def grant_lease(self, ttl: int) -> int:
        return self._call(self._client.lease, ttl).id

    def lease_ttl(self, lease_id: int) -> int:
        """Seconds left on the lease; <= 0 if it has expired or never existed."""
        resp = self._call(self._client.get_lease_info, lease_id)
        return resp.TTL

    def keepalive(self, lease_id: int) -> int:
        """Refresh the lease once; returns its TTL (<= 0: the lease is gone, grant a new one).

        Through etcd's JSON gateway, not gRPC: LeaseKeepAlive is a gRPC stream, and gRPC reads a
        stream's requests in a thread it starts for each call, whose end its worker threads then
        spin after for a second or more. At one keep-alive every ttl/3 s that was about a fifth of an
        idle agent's CPU outside its prober; one HTTP request costs a fraction of it (issue 11)."""
        with self._lock:
            if self._http is None or self._http.endpoints != self.endpoints:
                self._http = HttpStore(self.endpoints, timeout=self.timeout, tls=self.tls)
            http = self._http
        return http.keepalive(lease_id)

    def revoke_lease(self, lease_id: int) -> None:
        self._call(self._client.revoke_lease, lease_id)

    # -- watches -------------------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int, callback: WatchCallback) -> Callable[[], None]:
        """Deliver every change under prefix from start_revision on, in order, to callback.

        The callback runs on the client's watch thread. It receives `Compacted` if start_revision is
        gone, and `StoreUnavailable` once when the stream breaks; after either, nothing more comes:
        the caller watches again. Returns a function that cancels the watch: nothing reaches the
        callback after it returned.

        After any failed request (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL) the client library swaps
        its watcher for a new one and only half-closes the old stream, which etcd goes on serving: a
        cancel sent through the client then reached the new watcher, and the old watch went on
        delivering every change to a callback whose reader was gone. So the cancel goes to the
        watcher that carries the watch, and the callback is shut off whatever the stream does.
        """
        cancelled = threading.Event()

        def on_response(resp) -> None:
            if cancelled.is_set():
                return
            if isinstance(resp, etcd_exceptions.RevisionCompactedError):
                callback(Compacted(resp.compacted_revision))
                return
            if isinstance(resp, BaseException) or resp is None:
                callback(StoreUnavailable(self.endpoints, _describe(resp)))
                return
            changes = tuple(
                Change(
                    ev.key.decode(),
                    None if isinstance(ev, etcd_events.DeleteEvent) else bytes(ev.value),
                    ev.mod_revision,
                    0 if isinstance(ev, etcd_events.DeleteEvent) else ev.lease,
                )
                for ev in resp.events
            )
            callback(WatchBatch(resp.header.revision, changes))

        def add_watch() -> tuple[Any, int]:
            watcher = self._client.watcher  # the one that carries it (unless swapped just now)
            return watcher, self._client.add_watch_prefix_callback(prefix, on_response, start_revision=start_revision)

        watcher, watch_id = self._call(add_watch)

        def cancel() -> None:
            cancelled.set()
            try:
                watcher.cancel(watch_id)
            except Exception as err:  # noqa: BLE001 - cancelling a dead watch is fine
                log.debug("cancel watch %s: %s", watch_id, err)

        return cancel

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001
            pass


def _describe(err: object) -> str:
    if isinstance(err, grpc.RpcError):
        try:
            return f"{err.code().name}: {err.details()}"
        except Exception:  # noqa: BLE001
            return str(err)
    return str(err) if err else ""
