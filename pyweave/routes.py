"""Routes over the measured underlay links (docs/routing.md): pure, no I/O.

Each agent publishes its view of its links (`/pyweave/v1/links/<host>`); every host computes routes
from all of them with the functions here, and `pyweave status connections` does the same from the
same records, so what the operator sees is what the agents program.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HOPS = 4  # a path crosses at most MAX_HOPS links (MAX_HOPS - 1 relays); UDP ports 4789 .. 4789 + MAX_HOPS - 1


@dataclass(frozen=True)
class LinkView:
    """One host's view of its underlay link to one peer: up or down, the RTT it measured (ms, None
    when never answered) and since when (unix time) it has been up or down."""

    up: bool
    rtt_ms: float | None
    since: float
