"""The raw tier over etcd's JSON gateway (`/v3/kv/...`, `/v3/watch`), with the standard library only.

The CLI lives for a second: loading gRPC and the etcd client costs it more (0.15-0.25 s) than all
its requests together. etcd serves the same API as JSON over HTTP on its client port, so the CLI uses
`HttpStore`; the agent, which keeps long watches on a busy store, uses the gRPC client
(`store.etcd.EtcdStore`). Both implement `store.raw.RawStore` with the same semantics and errors.

Over TLS (`https://` endpoints: a cluster with a secret, docs/security.md), each connection shows the
client certificate of `TlsFiles` (given, else the process's `store.raw.default_tls()`) and trusts only
its CA.

Keys and values travel base64-encoded; a request that cannot reach an endpoint (refused, reset,
timed out) moves to the next one, and when all fail it raises `StoreUnavailable`.
"""

from __future__ import annotations

import base64
import builtins
import http.client
import json
import logging
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from store.errors import Compacted, StoreError, StoreUnavailable
from store.raw import Change, KeyValue, OneKeyWrites, TlsFiles, WatchBatch, WatchCallback, default_tls, normalise_endpoints

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 1.0


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_end(prefix: str) -> str:
    """The range end that makes a range request a prefix request (etcd's rule: last byte + 1)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")
    raw[-1] += 1
    return _b64(bytes(raw))


def _kv(item: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        _unb64(item.get("key")).decode(), _unb64(item.get("value")), int(item.get("mod_revision", 0)),
        int(item.get("lease", 0)),
    )


class HttpStore(OneKeyWrites):
    """A `RawStore` on etcd's JSON gateway; thread-safe (a connection per request)."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 3.0, tls: TlsFiles | None = None) -> None:
        self.endpoints = normalise_endpoints(endpoints)
        self.timeout = timeout
        self.tls = tls if tls is not None else default_tls()
        self._preferred = 0
        self._ssl: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        """The TLS context of the https:// endpoints: trust the cluster's CA only, show the client
        certificate (made once per store object)."""
        if self._ssl is None:
            if self.tls is None:
                ctx = ssl.create_default_context()
            else:
                ctx = ssl.create_default_context(cafile=str(self.tls.ca))
                try:
                    ctx.load_cert_chain(str(self.tls.cert), str(self.tls.key))
                except (OSError, ssl.SSLError) as err:
                    raise StoreError(f"the store's client certificate {self.tls.cert} cannot be used ({err})") from err
            self._ssl = ctx
        return self._ssl

    def _connection(self, endpoint: str, timeout: float) -> http.client.HTTPConnection:
        url = urlsplit(endpoint)
        if url.scheme == "https":
            return http.client.HTTPSConnection(url.hostname or "", url.port or 2379, timeout=timeout, context=self._context())
        return http.client.HTTPConnection(url.hostname or "", url.port or 2379, timeout=timeout)

    # -- plumbing ------------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        errors = []
        n = len(self.endpoints)
        for i in range(n):
            index = (self._preferred + i) % n
            # A dead member (its host gone) does not refuse: connecting hangs. Give up on it sooner
            # than on a slow answer, and move to the next member.
            conn = self._connection(self.endpoints[index], min(self.timeout, CONNECT_TIMEOUT))
            try:
                conn.connect()
                if conn.sock is not None:
                    conn.sock.settimeout(self.timeout)
                conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = json.loads(resp.read() or b"{}")
            except (OSError, http.client.HTTPException, ValueError) as err:
                errors.append(f"{self.endpoints[index]}: {err}")
                continue
            finally:
                conn.close()
            if resp.status >= 500 or "error" in data and resp.status != 200:
                message = str(data.get("message") or data.get("error") or resp.reason)
                if "compacted" in message:
                    raise Compacted(int(data.get("compact_revision", 0)))
                if resp.status >= 500:
                    errors.append(f"{self.endpoints[index]}: {message}")
                    continue
                raise StoreError(f"store refused {path}: {message}")
            self._preferred = index
            return data
        raise StoreUnavailable(self.endpoints, "; ".join(errors))

    # -- reads ---------------------------------------------------------------------------------
    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        data = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return [_kv(item) for item in data.get("kvs", [])], int(data["header"]["revision"])

    def get(self, key: str) -> KeyValue | None:
        data = self._post("/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def revision(self) -> int:
        data = self._post("/v3/kv/range", {"key": _b64("\0")})
        return int(data["header"]["revision"])

    # -- writes --------------------------------------------------------------------------------
    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self._post("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> bool:
        return int(self._post("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0

    def commit(
        self,
        *,
        absent: Sequence[str] = (),
        unchanged: Mapping[str, int] | None = None,
        puts: Sequence[tuple[str, bytes]] = (),
        deletes: Sequence[str] = (),
        lease: int = 0,
    ) -> bool:
        compare = [
            {"target": "CREATE", "key": _b64(k), "result": "EQUAL", "create_revision": "0"} for k in absent
        ] + [
            {"target": "MOD", "key": _b64(k), "result": "EQUAL", "mod_revision": str(rev)}
            for k, rev in (unchanged or {}).items()
        ]
        success: list[dict] = []
        for k, v in puts:
            put: dict[str, Any] = {"key": _b64(k), "value": _b64(v)}
            if lease:
                put["lease"] = str(lease)
            success.append({"request_put": put})
        success += [{"request_delete_range": {"key": _b64(k)}} for k in deletes]
        return bool(self._post("/v3/kv/txn", {"compare": compare, "success": success}).get("succeeded", False))

    # -- watches -------------------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int, callback: WatchCallback) -> Callable[[], None]:
        """Deliver every change under prefix from start_revision on, in order, to callback (on a
        thread of its own), as `store.etcd.EtcdStore.watch` does: `Compacted` if the revision is
        gone, `StoreUnavailable` once when the stream breaks; then nothing more."""
        request = {"create_request": {"key": _b64(prefix), "range_end": _prefix_end(prefix),
                                      "start_revision": str(start_revision)}}
        conn = self._connection(self.endpoints[self._preferred], self.timeout)
        try:
            conn.request("POST", "/v3/watch", body=json.dumps(request), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise StoreUnavailable(self.endpoints, err) from err
        cancelled = threading.Event()

        def pump() -> None:
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(None)
                while not cancelled.is_set():
                    line = resp.readline()
                    if not line:
                        raise OSError("watch stream ended")
                    result = json.loads(line).get("result", {})
                    if result.get("compact_revision") and result.get("canceled"):
                        callback(Compacted(int(result["compact_revision"])))
                        return
                    changes = tuple(
                        Change(
                            _unb64(ev["kv"].get("key")).decode(),
                            None if ev.get("type") == "DELETE" else _unb64(ev["kv"].get("value")),
                            int(ev["kv"].get("mod_revision", 0)),
                            int(ev["kv"].get("lease", 0)),
                        )
                        for ev in result.get("events", [])
                    )
                    callback(WatchBatch(int(result.get("header", {}).get("revision", 0)), changes))
            except (OSError, http.client.HTTPException, ValueError) as err:
                if not cancelled.is_set():
                    callback(StoreUnavailable(self.endpoints, err))
            finally:
                conn.close()

        threading.Thread(target=pump, name="store-watch", daemon=True).start()

        def cancel() -> None:
            cancelled.set()
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(2)
            except OSError:
                pass

        return cancel

    # -- membership (the embedded store forming itself: pyweave.agent.membership) ---------------
    def members(self) -> builtins.list[dict]:
        """The cluster's members as etcd lists them: {"ID", "name", "peerURLs", "clientURLs",
        "isLearner"} (a member added but not started yet has no name and no client URLs)."""
        return list(self._post("/v3/cluster/member/list", {}).get("members", []))

    def member_add(self, peer_urls: Sequence[str], *, learner: bool = True) -> dict:
        """Add a member (a learner by default); returns {"member": {...}, "members": [...]}."""
        return self._post("/v3/cluster/member/add", {"peerURLs": list(peer_urls), "isLearner": learner})

    def member_promote(self, member_id: str) -> None:
        """Make a learner a voting member; etcd refuses while it has not caught up with the leader
        (StoreError "... in sync with leader"), and without quorum."""
        self._post("/v3/cluster/member/promote", {"ID": str(member_id)})

    def member_remove(self, member_id: str) -> None:
        self._post("/v3/cluster/member/remove", {"ID": str(member_id)})

    def move_leader(self, leader_endpoint: str, target_id: str) -> None:
        """Hand the leadership to another voting member (etcd's MoveLeader: asked of the leader)."""
        HttpStore([leader_endpoint], timeout=max(self.timeout, 3.0))._post(
            "/v3/maintenance/transfer-leadership", {"targetID": str(target_id)})

    def grant_lease(self, ttl: int) -> int:
        return int(self._post("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def revoke_lease(self, lease_id: int) -> None:
        self._post("/v3/lease/revoke", {"ID": str(lease_id)})

    def keepalive(self, lease_id: int) -> int:
        """Refresh the lease once; returns its TTL (<= 0: the lease is gone, grant a new one). The
        gateway answers the one request of a LeaseKeepAlive stream and ends it."""
        data = self._post("/v3/lease/keepalive", {"ID": str(lease_id)})
        if "error" in data:
            error = data["error"]
            raise StoreError(f"store refused a keep-alive of lease {lease_id:x}: {error.get('message', error)}")
        return int((data.get("result") or {}).get("TTL", 0))

    def endpoint_status(self, endpoint: str, *, timeout: float = 0.5) -> dict | None:
        """One member's own view (/v3/maintenance/status: its ID, the leader's ID, revision, raft
        index, errors), or None when it does not answer within timeout."""
        one = HttpStore([endpoint], timeout=timeout, tls=self.tls)
        try:
            return one._post("/v3/maintenance/status", {})
        except StoreError:
            return None

    def close(self) -> None:
        pass
