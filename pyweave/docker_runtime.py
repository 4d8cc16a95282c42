"""Docker, as pyweave needs it: find containers, create them for `run`, follow their events.

It speaks the Docker Engine API itself, with the standard library's `http.client` over the daemon's
socket (`$DOCKER_HOST`, default `unix:///var/run/docker.sock`; `tcp://host:port` without TLS too):
pyweave needs five calls (inspect, create, start, remove, events), and the Docker SDK with `requests`
cost the agent 9 MB of memory and every `pyweave run` 0.15 s of imports. API errors are translated
here, once, into `ContainerError` (or `DockerUnavailable`) with a message for the user.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from pyweave.backoff import Backoff
from pyweave.containers import ContainerError, ContainerInfo, DockerUnavailable

log = logging.getLogger(__name__)

DEFAULT_HOST = "unix:///var/run/docker.sock"
EVENTS = ["start", "die", "destroy", "restart"]


class _NotFound(ContainerError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class DockerAPI:
    """A connection per request (the daemon is local; requests are few)."""

    def __init__(self, host: str | None = None, *, timeout: float | None = 30.0) -> None:
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        self.timeout = timeout
        url = urlsplit(self.host)
        if url.scheme not in ("unix", "tcp", "http"):
            raise DockerUnavailable(f"DOCKER_HOST {self.host} is not supported; use unix:///path or tcp://host:port")
        self._url = url

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._url.scheme == "unix":
            return _UnixConnection(self._url.path, timeout)
        return http.client.HTTPConnection(self._url.hostname or "localhost", self._url.port or 2375, timeout=timeout)

    def request(self, method: str, path: str, body: dict | None = None) -> Any:
        """One API call; the decoded JSON answer (None when there is none)."""
        conn = self._connection(self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as err:
            raise DockerUnavailable(f"cannot reach the Docker daemon at {self.host}: {err}; is dockerd running?") from err
        finally:
            conn.close()
        if resp.status == 404:
            raise _NotFound(_message(raw))
        if resp.status >= 400:
            raise ContainerError(_message(raw))
        return json.loads(raw) if raw.strip() else None

    def stream(self, path: str) -> Iterator[dict]:
        """A long GET whose answer is one JSON object a line (events). Connects before it returns,
        so nothing that happens after the call is missed; iterate to read until the stream ends."""
        conn = self._connection(None)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
        except OSError as err:
            conn.close()
            raise DockerUnavailable(f"cannot reach the Docker daemon at {self.host}: {err}") from err
        if resp.status >= 400:
            conn.close()
            raise ContainerError(_message(resp.read()))

        def lines() -> Iterator[dict]:
            try:
                while True:
                    line = resp.readline()
                    if not line:
                        return
                    if line.strip():
                        yield json.loads(line)
            finally:
                conn.close()

        return lines()


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("message") or raw.decode(errors="replace")).strip()
    except (ValueError, AttributeError):
        return raw.decode(errors="replace").strip()


def create_body(kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The Engine API's container config for `pyweave.dockerargs.container_create_kwargs`' keywords
    (the Docker SDK's names), and the container name."""
    host: dict[str, Any] = {}
    body: dict[str, Any] = {"Image": kwargs["image"], "HostConfig": host}
    simple = {
        "command": "Cmd", "tty": "Tty", "stdin_open": "OpenStdin", "hostname": "Hostname",
        "environment": "Env", "working_dir": "WorkingDir", "labels": "Labels", "entrypoint": "Entrypoint",
    }
    for key, field in simple.items():
        if key in kwargs:
            body[field] = kwargs[key]
    host_fields = {
        "privileged": "Privileged", "cap_add": "CapAdd", "auto_remove": "AutoRemove",
        "restart_policy": "RestartPolicy", "network_mode": "NetworkMode", "dns": "Dns", "dns_search": "DnsSearch",
    }
    for key, field in host_fields.items():
        if key in kwargs:
            host[field] = kwargs[key]
    if kwargs.get("volumes"):
        host["Binds"] = list(kwargs["volumes"])  # dockerargs accepts binds only (SRC:DST[:MODE])
    return body, kwargs.get("name")


class Containers:
    """The real `ContainerRuntime` (and what `pyweave run` needs besides)."""

    def __init__(self, host: str | None = None) -> None:
        self.api = DockerAPI(host)

    def on_exit(self, ref: str, callback: Callable[[], None]) -> None:
        """Call `callback` from a daemon thread once the container is not running: Docker's wait
        request (condition not-running) answers when it stops, at once if it already has. Also
        called when the request fails, so the caller looks for itself rather than waits forever."""
        api = DockerAPI(self.api.host, timeout=None)
        path = f"/containers/{quote(ref, safe='')}/wait?condition=not-running"

        def wait() -> None:
            try:
                api.request("POST", path)
            except ContainerError:
                pass
            callback()

        threading.Thread(target=wait, name="docker-wait", daemon=True).start()

    def inspect(self, ref: str) -> ContainerInfo | None:
        """The container named or identified by ref, or None if Docker does not know it."""
        try:
            c = self.api.request("GET", f"/containers/{quote(ref, safe='')}/json")
        except _NotFound:
            return None
        except DockerUnavailable:
            raise
        except ContainerError as err:
            raise ContainerError(f"cannot inspect container {ref}: {err}") from err
        state = c.get("State") or {}
        config = c.get("Config") or {}
        return ContainerInfo(
            id=c["Id"],
            name=c.get("Name", "").lstrip("/"),
            pid=int(state.get("Pid") or 0),
            running=bool(state.get("Running")) and not state.get("Restarting"),
            hostname=config.get("Hostname", ""),
            labels=config.get("Labels") or {},
        )

    def require_running(self, ref: str) -> ContainerInfo:
        info = self.inspect(ref)
        if info is None:
            raise ContainerError(f"container {ref} not found; check the name or ID with `docker ps -a`")
        if not info.running:
            raise ContainerError(f"container {ref} is not running; start it with `docker start {ref}` first")
        return info

    def create_and_start(self, kwargs: dict) -> str:
        """Create and start a container; on a failed start the created container is removed."""
        body, name = create_body(kwargs)
        query = f"?{urlencode({'name': name})}" if name else ""
        try:
            created = self.api.request("POST", f"/containers/create{query}", body)
        except _NotFound as err:
            raise ContainerError(
                f"image {kwargs.get('image')} not found; build or pull it first (docker images lists local ones)"
            ) from err
        except DockerUnavailable:
            raise
        except ContainerError as err:
            raise ContainerError(f"docker could not create the container: {err}") from err
        cid = created["Id"]
        try:
            self.api.request("POST", f"/containers/{cid}/start")
        except ContainerError as err:
            self.remove(cid)
            raise ContainerError(f"docker could not start the container: {err}") from err
        return cid

    def remove(self, ref: str) -> None:
        try:
            self.api.request("DELETE", f"/containers/{quote(ref, safe='')}?force=1")
        except _NotFound:
            pass
        except ContainerError as err:
            log.warning("could not remove container %s: %s", ref, err)

    def list_ids(self, *, label: str) -> list[str]:
        """IDs of every container (running or not) with this label (`key=value`)."""
        filters = quote(json.dumps({"label": [label]}))
        return [c["Id"] for c in self.api.request("GET", f"/containers/json?all=1&filters={filters}") or []]

    def follow_events(self, on_event: Callable[[str, str], None], stop: threading.Event) -> None:
        """Call on_event(action, container_id) for container lifecycle events until stop is set.

        Reconnects with capped, jittered backoff when the daemon goes away (it may be restarted)."""
        backoff = Backoff(initial=0.5, cap=10.0)
        filters = quote(json.dumps({"type": ["container"], "event": EVENTS}))
        while not stop.is_set():
            try:
                stream = self.api.stream(f"/events?filters={filters}")
                on_event("reconnected", "")
                for event in stream:
                    backoff.reset()
                    if stop.is_set():
                        break
                    on_event(event.get("Action") or event.get("status", ""), event.get("id", ""))
            except Exception as err:  # noqa: BLE001 - any stream failure means: connect again
                log.warning("docker event stream lost: %s", err)
            if not stop.is_set():
                stop.wait(backoff.next())
