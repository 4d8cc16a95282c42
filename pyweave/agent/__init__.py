"""The per-host agent (see `pyweave.agent.loop` for its design): `Agent`, and `pyweave.agent.main`
for its process.

Roles, one module each: `lease` (LeaseKeeper), `docker_view` (DockerView), `applier` (KernelApplier),
`publisher` (Publisher), `janitor` (Janitor); `loop` ties them together; `main` is the process.

`Agent` is imported on first use: the CLI imports a few of these modules (the tunnel's paths, the
prober's constants) and must not pay for the whole agent (70 ms of `pyweave run`'s start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyweave.agent.loop import Agent

__all__ = ["Agent"]


def __getattr__(name: str):
    if name == "Agent":
        from pyweave.agent.loop import Agent

        return Agent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
