"""The agent's process (`pyweave-agent`, started by `pyweave launch`): logging, services, signals.

The services that face this host's containers and operators, DNS and metrics, start here rather
than in `Agent`, so that agents run in-process by tests and the control-plane benchmark start none.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

from pyweave.agent.loop import Agent
from pyweave.host import HostState

log = logging.getLogger("pyweave.agent")


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}"
        msg = record.getMessage().replace("\n", " ")
        line = f'ts={ts} level={record.levelname.lower()} logger={record.name} msg="{msg}"'
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


def start_dns(agent: Agent) -> None:
    """weaveDNS at the service address on this host's loopback, answering from the agent's index."""
    from dataplane.host import ensure_local_address
    from pyweave.dns import SERVICE_ADDRESS, DnsService, WeaveResolver, upstream_servers

    try:
        ensure_local_address(SERVICE_ADDRESS)
        forward = agent.config.dns_forward
        resolver = WeaveResolver(lambda: agent.dns_index, domain=agent.config.dns_domain,
                                 upstreams=upstream_servers() if forward else [], forward=forward)
        agent.dns_service = DnsService(resolver, address=SERVICE_ADDRESS)
        agent.dns_service.start()
        log.info("dns serving domain=%s address=%s upstreams=%s", agent.config.dns_domain, SERVICE_ADDRESS,
                 resolver.upstreams if forward else "off (--dns-no-forward)")
    except OSError as err:
        log.error("dns not started: %s", err)


def start_join_endpoint(agent: Agent) -> None:
    """The join endpoint (`pyweave.join`): what a host launched with this host's address needs."""
    from pyweave import join

    config = agent.config

    def info() -> dict:
        return {"name": config.name, "store": list(config.store), "store_members": config.store_members}

    try:
        join.serve(info, agent.underlay.address, enroller=_enroller(agent))
        log.info("join endpoint serving address=%s port=%d", agent.underlay.address, join.JOIN_PORT)
    except OSError as err:
        log.error("join endpoint not started: %s", err)


def _enroller(agent: Agent):
    """In a cluster with a secret whose store runs over TLS, the join endpoint enrols hosts that
    prove the secret: they get the cluster's CA (`pyweave.enrol`, docs/security.md)."""
    from pyweave.agent.tunnel import TunnelPaths
    from pyweave.storetls import embedded_tls, tls_dir

    secret_path = TunnelPaths(agent.state).secret
    ca_cert, ca_key = tls_dir(agent.state) / "ca.crt", tls_dir(agent.state) / "ca.key"
    if not embedded_tls(agent.config) or not secret_path.exists() or not ca_key.exists():
        return None
    from pyweave.enrol import Enroller

    def bundle(_name: str) -> dict:
        return {"ca_cert": ca_cert.read_text(), "ca_key": ca_key.read_text()}

    return Enroller(secret_path.read_bytes(), bundle)


def _quiet_grpc_waits() -> None:
    """gRPC's blocking waits (the store watch's next message, the lease keep-alive stream's) wake
    every 0.1 s (`grpc._common.MAXIMUM_WAIT_TIMEOUT`) only so that a main thread blocked there still
    runs its signal handlers; what they wait for notifies them at once. The agent's streams are read
    by threads other than the main one, so each wake-up was idle work: ten a second per stream, a
    third of an idle agent's CPU once its passes got cheap (issue 11). Once a second is plenty."""
    import grpc._common

    grpc._common.MAXIMUM_WAIT_TIMEOUT = 1.0


def main() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    logging.basicConfig(level=os.environ.get("PYWEAVE_LOG_LEVEL", "INFO"), handlers=[handler])
    state = HostState()
    config = state.load()
    if config is None:
        sys.exit("pyweave agent: this host was never launched; run `pyweave launch`")
    state.agent_pid_path.write_text(str(os.getpid()))
    from pyweave.storetls import use_for_this_process
    from store.etcd import EtcdStore

    use_for_this_process(state, config)  # every store client of the agent: TLS when the cluster has a secret
    _quiet_grpc_waits()

    agent = Agent(config=config, state=state, raw=EtcdStore(config.store, timeout=2.0))
    if config.dns:
        start_dns(agent)
    if config.metrics_port:
        from pyweave.metrics import serve

        serve(agent.stats, agent.watcher, address=config.metrics_addr, port=config.metrics_port)

    start_join_endpoint(agent)
    # Always, not only on the first host: a host may become a store member while it runs.
    from pyweave.agent.supervisor import EtcdSupervisor

    EtcdSupervisor(state, config, agent.underlay.address, agent.stop_event).start()
    if config.store_members > 0:
        from pyweave.agent.membership import StoreMembership

        def hosts() -> frozenset[str]:
            with agent.view.lock:
                return frozenset(agent.view.hosts)

        StoreMembership(state, config, agent.underlay.address, agent.stop_event,
                        lease=lambda: agent.lease, on_endpoints=agent.raw.add_endpoints, hosts=hosts).start()

    agent_pid = os.getpid()

    def on_signal(signum, _frame) -> None:
        if os.getpid() != agent_pid:
            # pyroute2's NetNS forks a helper that inherits this handler; it is told to stop with
            # SIGTERM and must simply go.
            os._exit(0)
        log.info("signal %d: stopping", signum)
        agent.stop_event.set()
        agent.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Test hooks: hold the store watch (SIGUSR1) and let it catch up (SIGUSR2), e.g. across a compaction.
    signal.signal(signal.SIGUSR1, lambda *_: agent.watcher.pause())
    signal.signal(signal.SIGUSR2, lambda *_: agent.watcher.resume())
    agent.run()
