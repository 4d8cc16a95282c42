"""The per-host agent (see `pyweave.agent.loop` for its design): `Agent`, and `main` for its process.

Roles, one module each: `lease` (LeaseKeeper), `docker_view` (DockerView), `applier` (KernelApplier),
`publisher` (Publisher), `janitor` (Janitor); `loop` ties them together; `main` is the process.
"""

from pyweave.agent.loop import Agent
from pyweave.agent.main import main

__all__ = ["Agent", "main"]
