"""Prometheus metrics of one agent, on port 6782 as weave's, of the host's loopback unless
`pyweave launch --metrics-addr` names another address (the underlay is reachable by anyone on it).

A collector reads the agent's counters at scrape time, so the agent's code only counts things
and never talks to the metrics library; the registry is the agent's own (several agents may
share a process in the control-plane benchmark).
"""

from __future__ import annotations

import logging
import threading
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler

from pyweave.serving import Quiet

if TYPE_CHECKING:
    from pyweave.agent.stats import AgentStats
    from pyweave.watcher import StoreWatcher

log = logging.getLogger(__name__)

DEFAULT_PORT = 6782


class AgentCollector:
    def __init__(self, stats: AgentStats, watcher: StoreWatcher) -> None:
        self.stats = stats
        self.watcher = watcher

    def collect(self):
        stats = self.stats
        hosts = GaugeMetricFamily("pyweave_hosts", "Hosts known to the store, by state.", labels=["state"])
        for state, count in sorted(stats.hosts_by_state.items()):
            hosts.add_metric([state], count)
        yield hosts
        yield GaugeMetricFamily("pyweave_peers_alive", "Other hosts alive.", value=stats.peers_alive)
        endpoints = GaugeMetricFamily("pyweave_endpoints", "Endpoints programmed on this host.", labels=["where"])
        endpoints.add_metric(["local"], stats.local_endpoints)
        endpoints.add_metric(["remote"], stats.remote_endpoints)
        yield endpoints
        yield CounterMetricFamily("pyweave_reconcile", "Reconcile runs.", value=stats.reconciles)
        yield CounterMetricFamily(
            "pyweave_reconcile_seconds", "Time spent reconciling, in seconds.", value=stats.reconcile_seconds
        )
        errors = CounterMetricFamily("pyweave_errors", "Errors by kind.", labels=["kind"])
        for kind, count in sorted(stats.errors.items()):
            errors.add_metric([kind], count)
        yield errors
        watch = self.watcher.stats
        yield CounterMetricFamily("pyweave_watch_restarts", "Store watches started again after a broken stream.",
                                  value=watch.rewatches)
        yield CounterMetricFamily("pyweave_watch_relists", "Full lists of the store (start, compaction, periodic).",
                                  value=watch.lists)
        yield CounterMetricFamily("pyweave_watch_compactions", "Watches that fell behind a compaction.",
                                  value=watch.compactions)
        yield GaugeMetricFamily("pyweave_records_invalid", "Records in the store rejected as invalid.",
                                value=stats.invalid_records)
        routes = GaugeMetricFamily(
            "pyweave_route_hops", "Hops to each alive peer (1 direct, more relayed, 0 unreachable), by next hop.",
            labels=["peer", "mode", "via"],
        )
        for peer, (mode, via, hops) in sorted(stats.routes.items()):
            routes.add_metric([peer, mode, via], hops)
        yield routes
        links = GaugeMetricFamily("pyweave_link_up", "1 while this host's probes get answers from the peer.", labels=["peer"])
        for peer, up in sorted(stats.links_up.items()):
            links.add_metric([peer], 1 if up else 0)
        yield links
        yield GaugeMetricFamily("pyweave_relayed_networks", "Networks this host relays for others.",
                                value=stats.relayed_networks)
        yield GaugeMetricFamily("pyweave_store_connected", "1 while the store watch is connected.",
                                value=1 if self.watcher.connected else 0)
        if stats.tunnel is not None:
            yield from tunnel_metrics(stats.tunnel())


def tunnel_metrics(data: dict):
    """The encryption tunnel's counters (docs/encryption.md), from its stats file; nothing before
    the tunnel wrote one."""
    from pyweave.agent.tunnel import drops

    total = data.get("total")
    if not isinstance(total, dict):
        return
    yield CounterMetricFamily("pyweave_tunnel_sealed", "Packets the tunnel sealed for peers.", value=total.get("sealed", 0))
    yield CounterMetricFamily("pyweave_tunnel_opened", "Packets from peers the tunnel opened.", value=total.get("opened", 0))
    dropped = CounterMetricFamily("pyweave_tunnel_dropped", "Packets the tunnel dropped, by kind.", labels=["kind"])
    for kind, count in sorted(drops(data).items()):
        dropped.add_metric([kind], count)
    yield dropped
    yield CounterMetricFamily("pyweave_tunnel_rekeys", "Session key rotations.", value=total.get("rekeys", 0))
    handshakes = CounterMetricFamily("pyweave_tunnel_handshakes", "Handshake messages, valid ones received and sent.",
                                     labels=["direction"])
    handshakes.add_metric(["received"], total.get("handshakes_received", 0))
    handshakes.add_metric(["sent"], total.get("handshakes_sent", 0))
    yield handshakes
    established = GaugeMetricFamily("pyweave_tunnel_established", "1 while a confirmed session seals packets to the peer.",
                                    labels=["peer"])
    for peer in sorted((data.get("peers") or {}).values(), key=lambda p: str(p.get("name"))):
        established.add_metric([str(peer.get("name"))], 1 if peer.get("established") else 0)
    yield established


class _Server(Quiet, ThreadingHTTPServer):
    """prometheus_client's start_http_server, without its loop's wake-up every 0.5 s (pyweave.serving)."""

    daemon_threads = True


def serve(stats: AgentStats, watcher: StoreWatcher, *, address: str, port: int = DEFAULT_PORT) -> CollectorRegistry | None:
    registry = CollectorRegistry()
    registry.register(AgentCollector(stats, watcher))
    try:
        server = _Server((address, port), MetricsHandler.factory(registry))
    except OSError as err:
        log.error("metrics not served on %s:%d: %s", address, port, err)
        return None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", address, port)
    return registry
