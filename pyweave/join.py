"""Joining through any launched host (issue 13, item 1): the join endpoint of every agent.

Every agent answers `GET /pyweave/v1/join` on its underlay address, TCP port 6785 (`JOIN_PORT`), with
what a joining host needs to find the store, as JSON:

    {"version": 1, "name": "host2", "store": ["http://198.18.0.1:2379", ...], "store_members": 3}

`store`: the client URLs of the store's voting members as this agent knows them (its own, refreshed
from the store's member list); `store_members`: how many etcd members the embedded store forms
itself with (`launch --store-members`), 0 for a store of the user's own (`launch --store`).
`pyweave launch PEER` asks PEER first; if PEER does not answer there (not a pyweave host: an etcd of
the user's own, or an agent of an older version), PEER is taken as a store endpoint, as before.

In a cluster with a secret, the same endpoint enrols hosts (`POST /pyweave/v1/enrol/...`, the
protocol in `pyweave.enrol`): the agent passes an `Enroller` to `serve`; without one those paths are 404.

Standard library only: the CLI imports this. What is exposed, and why that is safe: docs/store.md,
docs/security.md.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pyweave.serving import Quiet

log = logging.getLogger("pyweave.join")

JOIN_PORT = 6785
JOIN_PATH = "/pyweave/v1/join"
JOIN_VERSION = 1


ENROL_PREFIX = "/pyweave/v1/enrol/"
MAX_BODY = 65536


class _Server(Quiet, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    info: Callable[[], dict]
    enroller: Any = None  # a pyweave.enrol.Enroller in a cluster with a secret


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5.0  # a client that sends nothing is dropped

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path.split("?", 1)[0] != JOIN_PATH:
            self.send_error(404)
            return
        body = json.dumps({"version": JOIN_VERSION, **self.server.info()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reply(self, status: int, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        path = self.path.split("?", 1)[0]
        enroller = self.server.enroller
        step = path[len(ENROL_PREFIX):] if path.startswith(ENROL_PREFIX) else ""
        if enroller is None or step not in ("hello", "finish"):
            self._reply(404, {"error": "no such path (this cluster enrols no hosts)" if enroller is None else "no such path"})
            return
        from pyweave.enrol import EnrolError, EnrolRefused  # only agents of a cluster with a secret get here

        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                raise EnrolError("no body, or a body too large")
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise EnrolError("the body is not a JSON object")
            self._reply(200, enroller.hello(body) if step == "hello" else enroller.finish(body))
        except EnrolRefused as err:
            log.warning("enrolment refused from %s: %s", self.client_address[0], err)
            self._reply(403, {"error": str(err)})
        except (EnrolError, ValueError) as err:
            self._reply(400, {"error": str(err)})

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the signature http.server calls
        log.debug("join endpoint: " + format, *args)


def serve(info: Callable[[], dict], address: str, port: int = JOIN_PORT, *, enroller: Any = None) -> ThreadingHTTPServer:
    """Answer the join endpoint on (address, port) from `info()`, on a daemon thread; enrol hosts
    with `enroller` (a `pyweave.enrol.Enroller`) when given."""
    server = _Server((address, port), _Handler)
    server.info = info
    server.enroller = enroller
    threading.Thread(target=server.serve_forever, name="join-endpoint", daemon=True).start()
    return server


class JoinError(Exception):
    """The peer answered, but not as a pyweave join endpoint does."""


def ask(host: str, *, port: int = JOIN_PORT, timeout: float = 2.0) -> dict | None:
    """What the agent at host says about the store; None when nothing listens there (or does not
    answer in time). Raises JoinError for an answer that is not a join reply."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", JOIN_PATH)
        resp = conn.getresponse()
        raw = resp.read(65536)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if resp.status != 200:
        raise JoinError(f"{host}:{port} answered {resp.status} {resp.reason} to {JOIN_PATH}")
    try:
        data = json.loads(raw)
        store = data["store"]
        members = int(data.get("store_members", 0))
    except (ValueError, KeyError, TypeError) as err:
        raise JoinError(f"{host}:{port} sent a join reply that cannot be read ({err})") from err
    if not isinstance(store, list) or not store or not all(isinstance(u, str) for u in store):
        raise JoinError(f"{host}:{port} sent a join reply with no store URLs")
    return {"name": str(data.get("name", "")), "store": store, "store_members": members}
