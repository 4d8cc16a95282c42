"""Commands on containers and the host's own addresses: run, attach, detach, expose, hide, ps.

Each writes its intent in one transaction (`store.cluster.Cluster`), then waits until the agent has
applied it and every live peer has seen it (`pyweave.cli.waiting`), so the first ping works. What
the cluster refuses is refused before anything is created; a command that fails half-way takes back
what it added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import typer

from pyweave.cli.base import Context, app, fail, trace
from pyweave.cli.forms import AddressError, looks_like_address, parse_address, parse_subnet
from pyweave.cli.waiting import wait_attached, wait_peers
from pyweave.containers import HOST_LABEL, ContainerError
from pyweave.dockerargs import DockerArgsError, container_create_kwargs, parse_run_args
from store.addresses import OverlayAddress, OverlaySubnet
from store.errors import ClusterError, StoreError
from store.keys import EXPOSE_REF
from store.records import DEFAULT_IPALLOC_RANGE


def _docker():
    from pyweave.docker_runtime import Containers

    try:
        return Containers()
    except ContainerError as err:
        fail(str(err))


def _running(ref: str):
    """The running container `ref`, or a failure that says how to get there."""
    try:
        return _docker().require_running(ref)
    except ContainerError as err:
        fail(str(err))


def parse_addresses(words: list[str]) -> list[OverlayAddress]:
    """Exact addresses only (`CIDR`, `ip:CIDR`)."""
    out = []
    for word in words:
        if word.startswith("net:"):
            fail(f"{word}: this command takes exact addresses (ip:CIDR or CIDR), not a subnet")
        try:
            out.append(parse_address(word))
        except AddressError as err:
            fail(str(err))
    return out


def parse_requests(words: list[str]) -> tuple[list[OverlayAddress], list[OverlaySubnet | None]]:
    """Weave's address forms: CIDR or ip:CIDR (exactly that address), net:CIDR (any free address
    of that subnet), net:default, or nothing at all (any free address of the default subnet)."""
    exact: list[OverlayAddress] = []
    subnets: list[OverlaySubnet | None] = []
    for word in words:
        if word == "net:default":
            subnets.append(None)
        elif word.startswith("net:"):
            try:
                subnets.append(parse_subnet(word))
            except AddressError as err:
                fail(f"{word}: {err}")
        else:
            exact.extend(parse_addresses([word]))
    if not words:
        subnets.append(None)
    return exact, subnets


def split_container(words: list[str]) -> tuple[list[str], str]:
    if not words:
        fail("no container given")
    *addr_words, container = words
    if looks_like_address(container):
        fail(f"the last argument must be a container, not the address {container}")
    return addr_words, container


def check_host_routes(subnets: list[OverlaySubnet]) -> None:
    """Refuse a subnet that overlaps a route or an address of this host, as `launch` refuses such an
    allocation range: the agent would route it into the overlay and divert the host's own traffic."""
    from dataplane.hostroutes import host_overlaps

    for subnet in dict.fromkeys(subnets):
        for overlap in host_overlaps(subnet):
            fail(f"subnet {subnet} overlaps {overlap.describe()}; choose a subnet that does not overlap it")


def precheck(ctx: Context, cidrs: list[OverlayAddress], subnets: list[OverlaySubnet | None],
             container: str | None) -> list[OverlaySubnet]:
    """Refuse before anything is created: an address given twice, subnets that overlap a route or an
    address of this host or an existing network, addresses held by others. Returns the subnets to
    allocate from (None = the default)."""
    seen: set = set()
    for c in cidrs:
        if c.ip in seen:
            fail(f"address {c.ip} is given twice")
        seen.add(c.ip)
    resolved: list[OverlaySubnet] = []
    if subnets:
        config = ctx.cluster.config()
        default = OverlaySubnet(config.default_subnet if config else DEFAULT_IPALLOC_RANGE)
        resolved = [s or default for s in subnets]
    check_host_routes([c.network for c in cidrs] + resolved)
    ctx.cluster.check_subnets([c.network for c in cidrs] + resolved)
    for c in cidrs:
        claim = ctx.cluster.holder_of(c.network, c.ip)
        if claim and (claim.host, claim.container) != (ctx.me, container):
            fail(
                f"address {c.ip} in {c.network} is already held by container {claim.container[:12]} "
                f"on host {claim.host}; choose another address"
            )
    return resolved


def attach_and_wait(
    ctx: Context,
    cid: str,
    cidrs: list[OverlayAddress],
    subnets: Sequence[OverlaySubnet] = (),
    *,
    gone: Callable[[], bool] | None = None,
    on_exit: Callable[[Callable[[], None]], None] | None = None,
) -> list[OverlayAddress]:
    """Attach exact addresses and allocate one in each subnet; wait for the agent and the peers.
    Returns every address asked for, the allocated ones included (in that order). On any failure
    the addresses this call added are detached again."""
    added: list[OverlayAddress] = []
    try:
        vnis = {ctx.cluster.ensure_network(c.network).vni for c in cidrs}
        if cidrs:
            added += ctx.cluster.attach(ctx.me, cid, cidrs)
        allocated = []
        for subnet in subnets:
            vnis.add(ctx.cluster.ensure_network(subnet).vni)
            allocated.append(ctx.cluster.allocate(ctx.me, cid, subnet))
            added.append(allocated[-1])
        want = {str(c.ip) for c in cidrs} | {str(c.ip) for c in allocated}
        trace("attachment written")
        revision = wait_attached(ctx, cid, want, gone=gone, on_exit=on_exit)
        trace("agent published the endpoint")
        if revision:
            wait_peers(ctx, revision, vnis)
            trace("peers applied it")
    except BaseException:
        if added:
            try:
                ctx.cluster.detach(ctx.me, cid, added)
            except (StoreError, ClusterError):
                pass
        raise
    return list(cidrs) + allocated


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def run(ctx: typer.Context) -> None:
    """Run a container attached to networks: pyweave run [ADDRESS...] [DOCKER-RUN-OPTIONS] IMAGE [COMMAND].

    Example: `pyweave run 10.0.0.1/24 -t -i busybox`. Prints the container's ID.
    """
    args = list(ctx.args)
    if args in (["--help"],):
        typer.echo(ctx.get_help())
        return
    words = []
    while args and looks_like_address(args[0]):
        words.append(args.pop(0))
    cidrs, requested = parse_requests(words)
    try:
        spec = parse_run_args(args)
    except DockerArgsError as err:
        fail(str(err))
    trace("arguments parsed")
    c = Context()
    c.require_agent()
    subnets = precheck(c, cidrs, requested, None)
    trace("prechecked")
    kwargs = container_create_kwargs(spec)
    kwargs["network_mode"] = "none"
    kwargs["labels"] = {**kwargs.get("labels", {}), HOST_LABEL: c.me}
    if c.config.dns:
        from pyweave.dnsnames import SERVICE_ADDRESS

        kwargs["dns"] = [SERVICE_ADDRESS]
        kwargs["dns_search"] = [c.config.dns_domain.rstrip(".")]
    docker = _docker()
    try:
        cid = docker.create_and_start(kwargs)
    except ContainerError as err:
        fail(str(err))
    trace("container created and started")

    def exited() -> bool:
        info = docker.inspect(cid)
        return info is None or not info.running

    try:
        attach_and_wait(c, cid, cidrs, subnets, gone=exited, on_exit=lambda cb: docker.on_exit(cid, cb))
    except BaseException:
        # The container exists only because of this command: do not leave it behind half-made.
        docker.remove(cid)
        raise
    typer.echo(cid)


@app.command()
def attach(words: list[str] = typer.Argument(..., metavar="[ADDRESS...] CONTAINER")) -> None:
    """Attach a running container to networks, without restarting it.

    ADDRESS is CIDR or ip:CIDR (that address), net:CIDR (a free one of that subnet), or nothing
    (a free one of the default subnet). Example: `pyweave attach 10.10.0.2/24 <container>`.
    Prints the addresses added.
    """
    addr_words, ref = split_container(words)
    cidrs, requested = parse_requests(addr_words)
    c = Context()
    c.require_agent()
    info = _running(ref)
    subnets = precheck(c, cidrs, requested, info.id)
    attached = attach_and_wait(c, info.id, cidrs, subnets)
    typer.echo(" ".join(str(x.ip) for x in attached))


def _detach_and_wait(c: Context, ref: str, cidrs: list[OverlayAddress]) -> None:
    removed = c.cluster.detach(c.me, ref, cidrs or None)
    wait_attached(c, ref, set(), absent={str(x.ip) for x in removed})
    typer.echo(" ".join(str(x.ip) for x in removed))


@app.command()
def detach(words: list[str] = typer.Argument(..., metavar="[CIDR...] CONTAINER")) -> None:
    """Detach a container from networks (all of them with no CIDR), without restarting it.

    Example: `pyweave detach 10.0.0.2/24 <container>`. Prints the addresses removed.
    """
    addr_words, ref = split_container(words)
    cidrs = parse_addresses(addr_words)
    c = Context()
    c.require_agent()
    info = _running(ref)
    att = c.cluster.attachment(c.me, info.id)
    current = {x.ip for x in att.cidrs} if att else set()
    for x in cidrs:
        if x.ip not in current:
            fail(f"{x} is not attached to container {ref}")
    if not current:
        fail(f"container {ref} is not attached to any network")
    _detach_and_wait(c, info.id, cidrs)


@app.command()
def expose(words: list[str] = typer.Argument(..., metavar="CIDR...")) -> None:
    """Give this host an address on networks, so it reaches their containers on every host.

    Example: `pyweave expose 10.0.0.100/24`. Prints the address; exposing again changes nothing.
    """
    cidrs = parse_addresses(words)
    c = Context()
    c.require_agent()
    precheck(c, cidrs, [], EXPOSE_REF)
    attach_and_wait(c, EXPOSE_REF, cidrs)
    typer.echo(" ".join(str(x.ip) for x in cidrs))


@app.command()
def hide(words: list[str] = typer.Argument(..., metavar="CIDR...")) -> None:
    """Remove addresses given to this host by `expose`.

    Example: `pyweave hide 10.0.0.100/24`. Prints the address removed.
    """
    cidrs = parse_addresses(words)
    c = Context()
    c.require_agent()
    att = c.cluster.attachment(c.me, EXPOSE_REF)
    current = set(att.cidrs) if att else set()
    for x in cidrs:
        if x not in current:
            fail(f"{x} is not exposed on this host; `pyweave ps` shows what is (weave:expose line)")
    _detach_and_wait(c, EXPOSE_REF, cidrs)


@app.command()
def ps() -> None:
    """List the attached containers of this host: short ID, MAC, CIDRs (weave's format).

    Example: `pyweave ps`.
    """
    c = Context()
    state, _ = c.cluster.state("endpoints/", "hosts/", "networks/")
    rows: dict[str, tuple[str, list[str]]] = {}
    ordered = sorted(state.endpoints.values(), key=lambda e: (e.container != EXPOSE_REF, e.container, e.ifname, e.ip))
    for ep in ordered:
        if ep.host != c.me:
            continue
        rows.setdefault(ep.container, (ep.mac, []))[1].append(ep.cidr)
    for cid, (mac, cidrs) in rows.items():
        name = cid if cid == EXPOSE_REF else cid[:12]
        typer.echo(f"{name} {mac} {' '.join(cidrs)}")
