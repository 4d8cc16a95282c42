"""Docker, as pyweave needs it: find containers, create them for `run`, follow their events.

Docker API errors are translated here, once, into `ContainerError` with a message for the user.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import docker
from docker import errors as docker_errors

from pyweave.backoff import Backoff
from pyweave.containers import ContainerError, ContainerInfo, DockerUnavailable

log = logging.getLogger(__name__)


def _client() -> docker.DockerClient:
    try:
        return docker.from_env(timeout=30)
    except docker_errors.DockerException as err:
        raise DockerUnavailable(f"cannot reach the Docker daemon: {err}; is dockerd running?") from err


class Containers:
    def __init__(self) -> None:
        self._docker = _client()

    @property
    def api(self) -> docker.DockerClient:
        return self._docker

    def inspect(self, ref: str) -> ContainerInfo | None:
        """The container named or identified by ref, or None if Docker does not know it."""
        try:
            c = self._docker.api.inspect_container(ref)
        except docker_errors.NotFound:
            return None
        except docker_errors.APIError as err:
            raise ContainerError(f"cannot inspect container {ref}: {err.explanation or err}") from err
        except docker_errors.DockerException as err:
            raise DockerUnavailable(f"cannot reach the Docker daemon: {err}") from err
        state = c.get("State") or {}
        return ContainerInfo(
            id=c["Id"],
            name=c.get("Name", "").lstrip("/"),
            pid=int(state.get("Pid") or 0),
            running=bool(state.get("Running")) and not state.get("Restarting"),
            hostname=(c.get("Config") or {}).get("Hostname", ""),
            labels=(c.get("Config") or {}).get("Labels") or {},
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
        try:
            container = self._docker.containers.create(**kwargs)
        except docker_errors.ImageNotFound as err:
            raise ContainerError(
                f"image {kwargs.get('image')} not found; build or pull it first (docker images lists local ones)"
            ) from err
        except docker_errors.APIError as err:
            raise ContainerError(f"docker could not create the container: {err.explanation or err}") from err
        try:
            container.start()
        except docker_errors.APIError as err:
            self.remove(container.id)
            raise ContainerError(f"docker could not start the container: {err.explanation or err}") from err
        return container.id

    def remove(self, ref: str) -> None:
        try:
            self._docker.api.remove_container(ref, force=True)
        except docker_errors.NotFound:
            pass
        except docker_errors.APIError as err:
            log.warning("could not remove container %s: %s", ref, err)

    def follow_events(self, on_event: Callable[[str, str], None], stop: threading.Event) -> None:
        """Call on_event(action, container_id) for container lifecycle events until stop is set.

        Reconnects with capped, jittered backoff when the daemon goes away (it may be restarted)."""
        backoff = Backoff(initial=0.5, cap=10.0)
        while not stop.is_set():
            try:
                stream = self._docker.events(
                    decode=True, filters={"type": "container", "event": ["start", "die", "destroy", "restart"]}
                )
                backoff.reset()
                on_event("reconnected", "")
                for event in stream:
                    if stop.is_set():
                        break
                    on_event(event.get("Action") or event.get("status", ""), event.get("id", ""))
            except Exception as err:  # noqa: BLE001 - any stream failure means: connect again
                log.warning("docker event stream lost: %s", err)
            if not stop.is_set():
                stop.wait(backoff.next())
