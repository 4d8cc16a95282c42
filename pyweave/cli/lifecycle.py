"""Commands of a host's life: launch, stop, reset, and rmpeer (forgetting a dead host)."""

from __future__ import annotations

import shutil
from typing import Optional

import typer

from pyweave.cli.base import EXIT_RUNNING, Context, app, fail, open_store, say
from pyweave.cli.forms import AddressError, parse_subnet
from pyweave.cli.waiting import wait_store
from pyweave.host import HostState, stop_process
from store.records import DEFAULT_DEAD_HOST_GRACE, DEFAULT_IPALLOC_RANGE, ClusterConfig


def _ipalloc_config(rng: str, default: str, grace: float) -> ClusterConfig:
    try:
        rng_net = parse_subnet(rng)
        default_net = parse_subnet(default)
    except AddressError as err:
        fail(f"--ipalloc-range/--ipalloc-default-subnet: {err}")
    if not default_net.subnet_of(rng_net):
        fail(f"--ipalloc-default-subnet {default_net} is not inside --ipalloc-range {rng_net}")
    return ClusterConfig(str(rng_net), str(default_net), float(grace))


@app.command()
def launch(
    peer: Optional[str] = typer.Argument(None, help="Address of a host already launched; join its store."),
    store: Optional[str] = typer.Option(None, "--store", envvar="PYWEAVE_STORE", help="etcd endpoints URL[,URL...]"),
    name: Optional[str] = typer.Option(None, "--name", help="Host name (default: network namespace or hostname)."),
    address: Optional[str] = typer.Option(None, "--address", help="Underlay address (default: found)."),
    mtu: Optional[int] = typer.Option(None, "--mtu", help="Overlay MTU (default: underlay MTU - 50)."),
    lease_ttl: int = typer.Option(10, "--lease-ttl", help="Seconds before peers forget a dead host."),
    ipalloc_range: str = typer.Option(DEFAULT_IPALLOC_RANGE, "--ipalloc-range", help="Range for automatic addresses (first host sets it)."),
    ipalloc_default_subnet: Optional[str] = typer.Option(None, "--ipalloc-default-subnet", help="Subnet of `run` without address (default: the range)."),
    dead_host_grace: float = typer.Option(DEFAULT_DEAD_HOST_GRACE, "--dead-host-grace", help="Seconds before a dead host's addresses are reused (first host sets it)."),
    dns_domain: str = typer.Option("weave.local.", "--dns-domain", help="Domain answered by the DNS of this host."),
    no_dns: bool = typer.Option(False, "--no-dns", help="Do not serve DNS to this host's containers."),
    metrics_port: int = typer.Option(6782, "--metrics-port", help="Prometheus metrics on this host's address (0: off)."),
) -> None:
    """Start this host's agent and join the cluster.

    Example: `pyweave launch` on the first host, `pyweave launch 192.168.1.10` on the others.
    """
    from dataplane.api import DataplaneError
    from dataplane.host import find_underlay, routes_overlapping
    from pyweave.dnsnames import normalise_domain
    from pyweave.processes import ProcessError, start_agent, start_embedded_etcd
    from store.cluster import Cluster
    from store.raw import normalise_endpoints

    state = HostState()
    running = state.agent_pid()
    if running is not None:
        fail(f"pyweave is already running on this host (agent pid {running}); `pyweave stop` first", EXIT_RUNNING)
    config = state.load_or_create(name=name)
    try:
        underlay = find_underlay(address or config.address)
    except DataplaneError as err:
        fail(str(err))
    config.address = underlay.address
    config.mtu = mtu or config.mtu
    config.lease_ttl = lease_ttl
    config.dns = not no_dns
    config.metrics_port = metrics_port
    config.dns_domain = normalise_domain(dns_domain)
    wanted = _ipalloc_config(ipalloc_range, ipalloc_default_subnet or ipalloc_range, dead_host_grace)
    rng = parse_subnet(wanted.ipalloc_range)
    for route, dev in routes_overlapping(rng):
        # Weave refuses a range that overlaps a route of the host: containers could not reach it.
        fail(f"the address range {rng} overlaps the route {route} dev {dev} of this host; choose another with --ipalloc-range")
    if store:
        config.store, config.embedded_etcd = normalise_endpoints([store]), False
    elif peer:
        config.store, config.embedded_etcd = normalise_endpoints([peer]), False
    elif not config.store or config.embedded_etcd:
        config.store, config.embedded_etcd = [f"http://{underlay.address}:2379"], True
    state.save(config)
    try:
        if config.embedded_etcd:
            start_embedded_etcd(state, config, underlay.address)
        raw = open_store(config.store)
        wait_store(raw, 30.0, f"the store at {','.join(config.store)}")
        Cluster(raw).ensure_config(wanted)
        start_agent(state)
    except ProcessError as err:
        fail(str(err))
    typer.echo(config.name)


@app.command()
def stop() -> None:
    """Stop this host's agent. Containers keep their interfaces and keep talking.

    Example: `pyweave stop`, later `pyweave launch` again.
    """
    state = HostState()
    pid = state.agent_pid()
    if pid is None:
        say("pyweave is not running on this host")
        return
    stop_process(pid, timeout=5.0)


@app.command()
def reset() -> None:
    """Stop the agent, remove this host's kernel devices and records, and leave the cluster.

    Example: `pyweave reset`.
    """
    from dataplane.host import remove_all_owned, remove_local_address
    from pyweave.dnsnames import SERVICE_ADDRESS
    from store.cluster import Cluster
    from store.errors import StoreError

    state = HostState()
    config = state.load()
    pid = state.agent_pid()
    if pid is not None:
        stop_process(pid, timeout=5.0)
    remove_all_owned()
    remove_local_address(SERVICE_ADDRESS)
    if config is not None:
        try:
            raw = open_store(config.store)
            Cluster(raw).take_over(config.name)
            raw.close()
        except StoreError as err:
            say(f"warning: could not remove this host's records: {err}")
    etcd_pid = state.etcd_pid()
    if etcd_pid is not None:
        stop_process(etcd_pid, timeout=5.0)
    shutil.rmtree(state.dir, ignore_errors=True)


@app.command()
def rmpeer(host: str = typer.Argument(..., help="Name of a dead host.")) -> None:
    """Take over the addresses of a dead host at once (instead of after the grace period).

    Example: `pyweave rmpeer host3`. Prints "N IPs taken over from HOST". A live host is refused.
    """
    c = Context()
    state, _ = c.cluster.state("hosts/")
    rec = state.hosts.get(host)
    if rec is not None and rec.state == "alive":
        fail(f"host {host} is alive; `pyweave stop` or `pyweave reset` it first, or wait until it is dead")
    freed = c.cluster.take_over(host)
    typer.echo(f"{freed} IPs taken over from {host}")
