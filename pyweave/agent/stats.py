"""What the agent counts, for its metrics (`pyweave.metrics` reads it at scrape time)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class AgentStats:
    hosts_by_state: dict[str, int] = field(default_factory=dict)
    peers_alive: int = 0
    local_endpoints: int = 0
    remote_endpoints: int = 0
    reconciles: int = 0
    reconcile_seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    invalid_records: int = 0
    routes: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # peer -> (mode, via, hops)
    links_up: dict[str, bool] = field(default_factory=dict)  # peer -> this host's probe says up
    relayed_networks: int = 0  # networks this host relays for others (transit devices)
    # In an encrypted cluster: the tunnel's stats file as it is now (TunnelKeeper.stats), read at scrape time.
    tunnel: Callable[[], dict] | None = None

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
