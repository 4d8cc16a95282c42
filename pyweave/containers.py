"""Containers as the agent and the CLI see them: `ContainerInfo`, the `ContainerRuntime` seam, errors.

Pure: the Docker SDK is imported only by `pyweave.docker_runtime`, the real runtime, so the planner,
the agent's tests and `pyweave --help` never load it. Containers made by `pyweave run` carry the label
`pyweave.host=<host>`, so that on a machine whose Docker daemon is shared by several lab hosts, each
agent knows which containers are its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

HOST_LABEL = "pyweave.host"


class ContainerError(Exception):
    """A Docker request failed; the message says which container and what to do."""


class DockerUnavailable(ContainerError):
    pass


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    pid: int  # 0 when not running
    running: bool
    hostname: str
    labels: dict


class ContainerRuntime(Protocol):
    """What the agent needs of Docker (`pyweave.docker_runtime.Containers`, or a fake)."""

    def inspect(self, ref: str) -> ContainerInfo | None: ...
    def follow_events(self, on_event: Callable[[str, str], None], stop: threading.Event) -> None: ...
