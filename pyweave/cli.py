"""The `pyweave` command: weave's CLI, writing intents into etcd and waiting for the agent.

The CLI never touches the kernel. `launch` starts this host's agent (and, on a first host, an
embedded etcd); `run`/`attach`/`detach` write attachments and address claims in one etcd
transaction each, then wait, with a deadline and a clear message, until the agent has published the
result and every live peer has seen it (so the first ping works). Exit codes follow weave's: 0 ok,
1 error, 3 already running.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

import typer

from pyweave import __version__
from pyweave.addressing import AddressError, looks_like_address, parse_endpoint_cidr
from pyweave.dockerargs import DockerArgsError, container_create_kwargs, parse_run_args
from pyweave.host import HostConfig, HostState, stop_process
from store.cluster import (
    ENDPOINTS,
    Cluster,
    ClusterError,
    attachment_key,
    progress_key,
)
from store.etcd import EtcdStore, StoreError, normalise_endpoints

EXIT_ERROR = 1
EXIT_RUNNING = 3
ATTACH_TIMEOUT = 20.0
PEER_BARRIER_TIMEOUT = 5.0

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    help="pyweave: multi-host networking for Docker containers (etcd + kernel VXLAN), as weave does it.",
    context_settings={"help_option_names": ["--help"]},
)
status_app = typer.Typer(help="Show this host, its peers and the store.", invoke_without_command=True)
app.add_typer(status_app, name="status")


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_ERROR) -> None:
    raise CliError(message, code)


def _say(message: str) -> None:
    typer.echo(message, err=True)


# -- context --------------------------------------------------------------------------------
class Context:
    def __init__(self) -> None:
        self.state = HostState()
        config = self.state.load()
        if config is None:
            fail("pyweave is not launched on this host; run `pyweave launch`")
        self.config: HostConfig = config
        endpoints = os.environ.get("PYWEAVE_STORE")
        self.raw = EtcdStore(normalise_endpoints([endpoints]) if endpoints else config.store, timeout=2.0)
        self.cluster = Cluster(self.raw)

    @property
    def me(self) -> str:
        return self.config.name

    def require_agent(self) -> int:
        pid = self.state.agent_pid()
        if pid is None:
            fail("pyweave is not running on this host; run `pyweave launch`")
        return pid


# -- launch / stop / reset ------------------------------------------------------------------
def _wait_store(raw: EtcdStore, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    shown = False
    while time.monotonic() < deadline:
        try:
            raw.revision()
            return
        except StoreError as err:
            last = err
            if not shown:
                _say(f"waiting for {what} ...")
                shown = True
            time.sleep(0.3)
    fail(f"{last}; is pyweave launched there, and the address right?")


def _start_embedded_etcd(state: HostState, config: HostConfig, address: str) -> None:
    if state.etcd_pid() is not None:
        return
    etcd = shutil.which("etcd")
    if etcd is None:
        fail("the etcd binary is not on PATH; install etcd-server (apt-get install etcd-server) or use --store")
    fresh = not (state.etcd_dir / "member").exists()
    args = [
        etcd,
        "--name", config.name,
        "--data-dir", str(state.etcd_dir),
        "--listen-client-urls", f"http://{address}:2379,http://127.0.0.1:2379",
        "--advertise-client-urls", f"http://{address}:2379",
        "--listen-peer-urls", f"http://{address}:2380",
        "--initial-advertise-peer-urls", f"http://{address}:2380",
        "--initial-cluster", f"{config.name}=http://{address}:2380",
        "--initial-cluster-state", "new" if fresh else "existing",
        "--auto-compaction-mode", "revision",
        "--auto-compaction-retention", "10000",
        "--log-level", "warn",
    ]
    log = open(state.dir / "etcd.log", "ab")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    state.etcd_pid_path.write_text(str(proc.pid))


def _ipalloc_config(rng: str, default: str, grace: float):
    from pyweave.addressing import parse_subnet
    from store.cluster import ClusterConfig

    try:
        rng_net = parse_subnet(rng)
        default_net = parse_subnet(default)
    except AddressError as err:
        fail(f"--ipalloc-range/--ipalloc-default-subnet: {err}")
    if not default_net.subnet_of(rng_net):
        fail(f"--ipalloc-default-subnet {default_net} is not inside --ipalloc-range {rng_net}")
    return ClusterConfig(str(rng_net), str(default_net), float(grace))


def _check_routes(rng: ipaddress.IPv4Network) -> None:
    """Weave refuses a range that overlaps a route of the host: containers could not reach it."""
    from pyroute2 import IPRoute

    from dataplane.linux import BRIDGE_PREFIX

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for route in ipr.get_routes(family=2, table=254):
            dst = route.get_attr("RTA_DST")
            if dst is None or route["dst_len"] == 0:
                continue
            dev = names.get(route.get_attr("RTA_OIF"), "?")
            if dev.startswith(BRIDGE_PREFIX):
                continue
            net = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False)
            if net.overlaps(rng):
                fail(
                    f"the address range {rng} overlaps the route {net} dev {dev} of this host; "
                    f"choose another with --ipalloc-range"
                )


@app.command()
def launch(
    peer: Optional[str] = typer.Argument(None, help="Address of a host already launched; join its store."),
    store: Optional[str] = typer.Option(None, "--store", envvar="PYWEAVE_STORE", help="etcd endpoints URL[,URL...]"),
    name: Optional[str] = typer.Option(None, "--name", help="Host name (default: network namespace or hostname)."),
    address: Optional[str] = typer.Option(None, "--address", help="Underlay address (default: found)."),
    mtu: Optional[int] = typer.Option(None, "--mtu", help="Overlay MTU (default: underlay MTU - 50)."),
    lease_ttl: int = typer.Option(10, "--lease-ttl", help="Seconds before peers forget a dead host."),
    ipalloc_range: str = typer.Option("10.32.0.0/12", "--ipalloc-range", help="Range for automatic addresses (first host sets it)."),
    ipalloc_default_subnet: Optional[str] = typer.Option(None, "--ipalloc-default-subnet", help="Subnet of `run` without address (default: the range)."),
    dead_host_grace: float = typer.Option(600.0, "--dead-host-grace", help="Seconds before a dead host's addresses are reused (first host sets it)."),
    dns_domain: str = typer.Option("weave.local.", "--dns-domain", help="Domain answered by the DNS of this host."),
    no_dns: bool = typer.Option(False, "--no-dns", help="Do not serve DNS to this host's containers."),
    metrics_port: int = typer.Option(6782, "--metrics-port", help="Prometheus metrics on this host's address (0: off)."),
) -> None:
    """Start this host's agent and join the cluster.

    Example: `pyweave launch` on the first host, `pyweave launch 192.168.1.10` on the others.
    """
    from dataplane.linux import DataplaneError, find_underlay

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
    config.dns_domain = dns_domain.strip().lower().rstrip(".") + "."
    wanted = _ipalloc_config(ipalloc_range, ipalloc_default_subnet or ipalloc_range, dead_host_grace)
    _check_routes(ipaddress.IPv4Network(wanted.ipalloc_range))
    if store:
        config.store, config.embedded_etcd = normalise_endpoints([store]), False
    elif peer:
        config.store, config.embedded_etcd = normalise_endpoints([peer]), False
    elif not config.store or config.embedded_etcd:
        config.store, config.embedded_etcd = [f"http://{underlay.address}:2379"], True
    state.save(config)
    if config.embedded_etcd:
        _start_embedded_etcd(state, config, underlay.address)
    raw = EtcdStore(config.store, timeout=2.0)
    _wait_store(raw, 30.0, f"the store at {','.join(config.store)}")
    Cluster(raw).ensure_config(wanted)

    ready = state.dir / "ready"
    ready.unlink(missing_ok=True)
    log = open(state.log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyweave_cmd.agent"],
        env={**os.environ, "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY", "ERROR")},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip() == str(proc.pid):
            typer.echo(config.name)
            return
        if proc.poll() is not None:
            tail = state.log_path.read_text(errors="replace").splitlines()[-5:]
            fail("the agent exited during start:\n  " + "\n  ".join(tail))
        time.sleep(0.05)
    fail(f"the agent did not register within 30s; see {state.log_path}")


@app.command()
def stop() -> None:
    """Stop this host's agent. Containers keep their interfaces and keep talking.

    Example: `pyweave stop`, later `pyweave launch` again.
    """
    state = HostState()
    pid = state.agent_pid()
    if pid is None:
        _say("pyweave is not running on this host")
        return
    stop_process(pid, timeout=5.0)


@app.command()
def reset() -> None:
    """Stop the agent, remove this host's kernel devices and records, and leave the cluster.

    Example: `pyweave reset`.
    """
    from dataplane.linux import remove_all_owned

    state = HostState()
    config = state.load()
    pid = state.agent_pid()
    if pid is not None:
        stop_process(pid, timeout=5.0)
    remove_all_owned()
    if config is not None:
        try:
            raw = EtcdStore(config.store, timeout=2.0)
            Cluster(raw).take_over(config.name)
            raw.close()
        except StoreError as err:
            _say(f"warning: could not remove this host's records: {err}")
    etcd_pid = state.etcd_pid()
    if etcd_pid is not None:
        stop_process(etcd_pid, timeout=5.0)
    shutil.rmtree(state.dir, ignore_errors=True)


# -- status ---------------------------------------------------------------------------------
def _gather_status(ctx: Context) -> tuple[dict, bool]:
    agent_pid = ctx.state.agent_pid()
    data: dict = {
        "version": __version__,
        "host": {
            "name": ctx.me,
            "address": ctx.config.address,
            "vtep_mac": ctx.config.vtep_mac,
            "mtu": None,
            "data_path": "kernel vxlan (udp/4789, learning off, proxy ARP)",
            "agent": {"running": agent_pid is not None, "pid": agent_pid},
        },
        "peers": [],
        "store": {"endpoints": ctx.raw.endpoints, "reachable": False, "revision": None, "embedded": ctx.config.embedded_etcd},
        "problems": [],
    }
    try:
        state, revision = ctx.cluster.state()
        kvs, _ = ctx.raw.list(progress_key(""))
    except StoreError as err:
        data["store"]["error"] = str(err)
        return data, False
    data["store"].update(reachable=True, revision=revision)
    me = state.hosts.get(ctx.me) or state.members.get(ctx.me)
    data["host"]["mtu"] = me.mtu if me else (ctx.config.mtu or None)
    if data["host"]["mtu"] is None:
        data["host"]["mtu"] = "unknown"
    names = sorted(set(state.members) | set(state.hosts))
    for name in names:
        rec = state.hosts.get(name) or state.members[name]
        alive = name in state.hosts and state.hosts[name].state == "alive"
        st = "alive" if alive else ("stopped" if name in state.hosts else "dead")
        data["peers"].append(
            {"name": name, "address": rec.address, "vtep_mac": rec.vtep_mac, "state": st, "alive": alive, "self": name == ctx.me}
        )
    problems = {(p.key, p.problem) for p in state.invalid}
    for kv in kvs:
        try:
            for p in json.loads(kv.value).get("problems", []):
                problems.add((p["key"], p["problem"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    data["problems"] = [{"key": k, "problem": p} for k, p in sorted(problems)]
    return data, True


def _section(title: str, rows: list[tuple[str, object]]) -> list[str]:
    head = f"{'Service':>15}: {title}"
    if sys.stdout.isatty():
        head = typer.style(head, bold=True)
    lines = [head]
    lines += [f"{k:>15}: {v}" for k, v in rows]
    return lines + [""]


def _render_status(data: dict) -> str:
    host = data["host"]
    agent = host["agent"]
    lines = [f"{'Version':>15}: pyweave {data['version']}", ""]
    lines += _section(
        "host",
        [
            ("Name", host["name"]),
            ("Address", host["address"]),
            ("VTEP MAC", host["vtep_mac"]),
            ("MTU", host["mtu"]),
            ("Data path", host["data_path"]),
            ("Agent", f"running (pid {agent['pid']})" if agent["running"] else "not running"),
        ],
    )
    peers = data["peers"]
    alive = sum(1 for p in peers if p["alive"])
    lines += _section("peers", [("Peers", f"{len(peers)} ({alive} alive)")])
    store = data["store"]
    reach = "reachable" if store["reachable"] else f"unreachable ({store.get('error', '')})"
    rows = [("Endpoints", ",".join(store["endpoints"])), ("Status", reach)]
    if store["reachable"]:
        rows.append(("Revision", store["revision"]))
        rows.append(("Problems", len(data["problems"])))
    lines += _section("store", rows)
    for p in data["problems"]:
        line = f"  problem: {p['key']}: {p['problem']}"
        lines.append(typer.style(line, fg="yellow") if sys.stdout.isatty() else line)
    return "\n".join(lines).rstrip() + "\n"


def _render_peers(data: dict) -> str:
    rows = [("NAME", "ADDRESS", "VTEP-MAC", "STATE")]
    for p in data["peers"]:
        rows.append((p["name"], p["address"], p["vtep_mac"], p["state"] + (" (this host)" if p["self"] else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows
    ) + "\n"


@status_app.callback()
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="The same data as JSON."),
) -> None:
    """Show this host, its peers and the store. Example: `pyweave status`, `pyweave status peers`."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"json": as_json}
        return
    c = Context()
    data, ok = _gather_status(c)
    typer.echo(json.dumps(data, indent=2) if as_json else _render_status(data), nl=False)
    if as_json:
        typer.echo()
    if not ok:
        raise typer.Exit(EXIT_ERROR)


@status_app.command("peers")
def status_peers(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="The peers as JSON."),
) -> None:
    """List the peers: name, address, VTEP MAC, state. Example: `pyweave status peers`."""
    c = Context()
    data, ok = _gather_status(c)
    if not ok:
        fail(data["store"].get("error", "store unreachable"))
    if as_json or (ctx.obj or {}).get("json"):
        typer.echo(json.dumps(data["peers"], indent=2))
    else:
        typer.echo(_render_peers(data), nl=False)


# -- run / attach / detach / ps -------------------------------------------------------------
def _parse_addresses(words: list[str]) -> list[ipaddress.IPv4Interface]:
    out = []
    for word in words:
        if word.startswith("net:"):
            fail(f"{word}: this command takes exact addresses (ip:CIDR or CIDR), not a subnet")
        try:
            addr = parse_endpoint_cidr(word)
        except AddressError as err:
            fail(str(err))
        out.append(ipaddress.IPv4Interface(addr.cidr))
    return out


def _parse_requests(words: list[str]) -> tuple[list[ipaddress.IPv4Interface], list[ipaddress.IPv4Network | None]]:
    """Weave's address forms: CIDR or ip:CIDR (exactly that address), net:CIDR (any free address
    of that subnet), net:default, or nothing at all (any free address of the default subnet)."""
    from pyweave.addressing import parse_subnet

    exact: list[ipaddress.IPv4Interface] = []
    subnets: list[ipaddress.IPv4Network | None] = []
    for word in words:
        if word == "net:default":
            subnets.append(None)
        elif word.startswith("net:"):
            try:
                subnets.append(parse_subnet(word[4:]))
            except AddressError as err:
                fail(f"{word}: {err}")
        else:
            exact.extend(_parse_addresses([word]))
    if not words:
        subnets.append(None)
    return exact, subnets


def _precheck(ctx: Context, cidrs: list[ipaddress.IPv4Interface], container: str | None) -> None:
    """Refuse before anything is created: overlapping subnets, addresses held by others."""
    state, _ = ctx.cluster.state("networks/", "vnis/")
    seen: set = set()
    for c in cidrs:
        if c.ip in seen:
            fail(f"address {c.ip} is given twice")
        seen.add(c.ip)
        for net in state.networks.values():
            if net.network != c.network and net.network.overlaps(c.network):
                fail(
                    f"subnet {c.network} of {c} overlaps existing network {net.subnet}; "
                    f"use {net.subnet} or a subnet that does not overlap it"
                )
        claim = ctx.cluster.holder_of(c.network, c.ip)
        if claim and (claim.host, claim.container) != (ctx.me, container):
            fail(
                f"address {c.ip} in {c.network} is already held by container {claim.container[:12]} "
                f"on host {claim.host}; choose another address"
            )


def _wait_attached(
    ctx: Context,
    cid: str,
    present: set[str],
    absent: set[str] = frozenset(),
    timeout: float = ATTACH_TIMEOUT,
    gone=None,
) -> int:
    """Wait until the agent has published every address in `present` and none in `absent` for
    cid (others may come and go meanwhile: concurrent attaches); returns the store revision of
    the newest publication. Fails early with the agent's own problem report."""
    prefix = f"{ENDPOINTS}{ctx.me}/{cid}/"
    akey = attachment_key(ctx.me, cid)
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 0.5
    while True:
        kvs, revision = ctx.raw.list(prefix)
        have = {kv.key[len(prefix):] for kv in kvs}
        if present <= have and not (absent & have):
            return max([kv.mod_revision for kv in kvs], default=revision)
        prog = ctx.raw.get(progress_key(ctx.me))
        if prog is not None:
            try:
                for p in json.loads(prog.value).get("problems", []):
                    if p.get("key") == akey:
                        fail(f"the agent could not attach {cid[:12]}: {p.get('problem')}")
            except (ValueError, AttributeError):
                pass
        if time.monotonic() > deadline:
            fail(f"the agent did not apply the change to {cid[:12]} within {timeout:.0f}s; see {ctx.state.log_path}")
        if ctx.state.agent_pid() is None:
            fail("pyweave is not running on this host; run `pyweave launch`")
        if gone is not None and time.monotonic() > next_check:
            next_check = time.monotonic() + 0.5
            if gone():
                return 0  # it exited (`run ... true`): the attachment waits for its next start
        time.sleep(0.05)


def _wait_peers(ctx: Context, revision: int, timeout: float = PEER_BARRIER_TIMEOUT) -> None:
    """Wait until every live peer's agent has processed `revision`, so its kernel knows the new
    endpoint before anyone pings it. A slow peer only costs the timeout: it is not an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, _ = ctx.cluster.state("hosts/")
        alive = [h for h, rec in state.hosts.items() if rec.state == "alive" and h != ctx.me]
        progress, _ = ctx.raw.list(progress_key(""))
        done: dict[str, int] = {}
        for kv in progress:
            try:
                done[kv.key[len(progress_key("")):]] = int(json.loads(kv.value).get("revision", 0))
            except (ValueError, TypeError, AttributeError):
                continue
        behind = [host for host in alive if done.get(host, 0) < revision]
        if not behind:
            return
        time.sleep(0.05)
    _say(f"warning: peers {', '.join(behind)} have not yet applied the change")


def _resolve_subnets(ctx: Context, subnets: list[ipaddress.IPv4Network | None]) -> list[ipaddress.IPv4Network]:
    if not subnets:
        return []
    config = ctx.cluster.config()
    default = ipaddress.IPv4Network(config.default_subnet if config else "10.32.0.0/12")
    out = [s or default for s in subnets]
    state, _ = ctx.cluster.state("networks/", "vnis/")
    for subnet in out:
        for net in state.networks.values():
            if net.network != subnet and net.network.overlaps(subnet):
                fail(f"subnet {subnet} overlaps existing network {net.subnet}; use {net.subnet} or a subnet that does not overlap it")
    return out


def _attach(
    ctx: Context,
    cid: str,
    cidrs: list[ipaddress.IPv4Interface],
    subnets: list[ipaddress.IPv4Network] = (),
    *,
    gone=None,
) -> list[ipaddress.IPv4Interface]:
    """Attach exact addresses and allocate one in each subnet; wait for the agent and the peers.
    Returns every address asked for, the allocated ones included (in that order)."""
    for c in cidrs:
        ctx.cluster.ensure_network(c.network)
    if cidrs:
        ctx.cluster.attach(ctx.me, cid, cidrs)
    allocated = []
    for subnet in subnets:
        ctx.cluster.ensure_network(subnet)
        allocated.append(ctx.cluster.allocate(ctx.me, cid, subnet))
    want = {str(c.ip) for c in cidrs} | {str(c.ip) for c in allocated}
    revision = _wait_attached(ctx, cid, want, gone=gone)
    if revision:
        _wait_peers(ctx, revision)
    return list(cidrs) + allocated


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def run(ctx: typer.Context) -> None:
    """Run a container attached to networks: pyweave run [ADDRESS...] [DOCKER-RUN-OPTIONS] IMAGE [COMMAND].

    Example: `pyweave run 10.0.0.1/24 -t -i busybox`. Prints the container's ID.
    """
    from pyweave.containers import HOST_LABEL, ContainerError, Containers

    args = list(ctx.args)
    if args in (["--help"],):
        typer.echo(ctx.get_help())
        return
    words = []
    while args and looks_like_address(args[0]):
        words.append(args.pop(0))
    cidrs, requested = _parse_requests(words)
    try:
        spec = parse_run_args(args)
    except DockerArgsError as err:
        fail(str(err))
    c = Context()
    c.require_agent()
    _precheck(c, cidrs, None)
    subnets = _resolve_subnets(c, requested)
    kwargs = container_create_kwargs(spec)
    kwargs["network_mode"] = "none"
    kwargs["labels"] = {**kwargs.get("labels", {}), HOST_LABEL: c.me}
    if c.config.dns:
        from pyweave.dns import SERVICE_ADDRESS

        kwargs["dns"] = [SERVICE_ADDRESS]
        kwargs["dns_search"] = [c.config.dns_domain.rstrip(".")]
    try:
        docker_client = Containers()
        cid = docker_client.create_and_start(kwargs)
    except ContainerError as err:
        fail(str(err))
    def exited() -> bool:
        info = docker_client.inspect(cid)
        return info is None or not info.running

    try:
        _attach(c, cid, cidrs, subnets, gone=exited)
    except BaseException:
        # The container exists only because of this command: do not leave it behind half-made.
        docker_client.remove(cid)
        try:
            c.cluster.detach(c.me, cid, None)
        except (StoreError, ClusterError):
            pass
        raise
    typer.echo(cid)


def _split_cidrs_container(words: list[str]) -> tuple[list[str], str]:
    if not words:
        fail("no container given")
    *addr_words, container = words
    if looks_like_address(container):
        fail(f"the last argument must be a container, not the address {container}")
    return addr_words, container


@app.command()
def attach(words: list[str] = typer.Argument(..., metavar="[ADDRESS...] CONTAINER")) -> None:
    """Attach a running container to networks, without restarting it.

    ADDRESS is CIDR or ip:CIDR (that address), net:CIDR (a free one of that subnet), or nothing
    (a free one of the default subnet). Example: `pyweave attach 10.10.0.2/24 <container>`.
    Prints the addresses added.
    """
    from pyweave.containers import ContainerError, Containers

    addr_words, ref = _split_cidrs_container(words)
    cidrs, requested = _parse_requests(addr_words)
    c = Context()
    c.require_agent()
    try:
        info = Containers().require_running(ref)
    except ContainerError as err:
        fail(str(err))
    _precheck(c, cidrs, info.id)
    subnets = _resolve_subnets(c, requested)
    attached = _attach(c, info.id, cidrs, subnets)
    typer.echo(" ".join(str(x.ip) for x in attached))


@app.command()
def detach(words: list[str] = typer.Argument(..., metavar="[CIDR...] CONTAINER")) -> None:
    """Detach a container from networks (all of them with no CIDR), without restarting it.

    Example: `pyweave detach 10.0.0.2/24 <container>`. Prints the addresses removed.
    """
    from pyweave.containers import ContainerError, Containers

    addr_words, ref = _split_cidrs_container(words)
    cidrs = _parse_addresses(addr_words)
    c = Context()
    c.require_agent()
    try:
        info = Containers().require_running(ref)
    except ContainerError as err:
        fail(str(err))
    att = c.cluster.attachment(c.me, info.id)
    current = {ipaddress.IPv4Interface(x).ip for x in att.cidrs} if att else set()
    for x in cidrs:
        if x.ip not in current:
            fail(f"{x} is not attached to container {ref}")
    if not current:
        fail(f"container {ref} is not attached to any network")
    removed = c.cluster.detach(c.me, info.id, cidrs or None)
    _wait_attached(c, info.id, set(), absent={str(ipaddress.IPv4Interface(x).ip) for x in removed})
    typer.echo(" ".join(str(ipaddress.IPv4Interface(x).ip) for x in removed))


@app.command()
def expose(words: list[str] = typer.Argument(..., metavar="CIDR...")) -> None:
    """Give this host an address on networks, so it reaches their containers on every host.

    Example: `pyweave expose 10.0.0.100/24`. Prints the address; exposing again changes nothing.
    """
    from pyweave.plan import EXPOSE_REF

    cidrs = _parse_addresses(words)
    c = Context()
    c.require_agent()
    _precheck(c, cidrs, EXPOSE_REF)
    _attach(c, EXPOSE_REF, cidrs)
    typer.echo(" ".join(str(x.ip) for x in cidrs))


@app.command()
def hide(words: list[str] = typer.Argument(..., metavar="CIDR...")) -> None:
    """Remove addresses given to this host by `expose`.

    Example: `pyweave hide 10.0.0.100/24`. Prints the address removed.
    """
    from pyweave.plan import EXPOSE_REF

    cidrs = _parse_addresses(words)
    c = Context()
    c.require_agent()
    att = c.cluster.attachment(c.me, EXPOSE_REF)
    current = {ipaddress.IPv4Interface(x) for x in att.cidrs} if att else set()
    for x in cidrs:
        if x not in current:
            fail(f"{x} is not exposed on this host; `pyweave ps` shows what is (weave:expose line)")
    removed = c.cluster.detach(c.me, EXPOSE_REF, cidrs)
    _wait_attached(c, EXPOSE_REF, set(), absent={str(ipaddress.IPv4Interface(x).ip) for x in removed})
    typer.echo(" ".join(str(ipaddress.IPv4Interface(x).ip) for x in removed))


@app.command()
def rmpeer(host: str = typer.Argument(..., help="Name of a dead host.")) -> None:
    """Take over the addresses of a dead host at once (instead of after the grace period).

    Example: `pyweave rmpeer host3`. Prints "N IPs taken over from HOST". A live host is refused.
    """
    c = Context()
    state, _ = c.cluster.state()
    rec = state.hosts.get(host)
    if rec is not None and rec.state == "alive":
        fail(f"host {host} is alive; `pyweave stop` or `pyweave reset` it first, or wait until it is dead")
    freed = c.cluster.take_over(host)
    typer.echo(f"{freed} IPs taken over from {host}")


@status_app.command("ipam")
def status_ipam(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="As JSON."),
) -> None:
    """The allocation range, the default subnet, and per host the addresses held and whether it is alive.

    Example: `pyweave status ipam`.
    """
    c = Context()
    state, _ = c.cluster.state()
    config = state.config
    held: dict[str, int] = {}
    for claim in state.claims.values():
        held[claim.host] = held.get(claim.host, 0) + 1
    hosts = sorted(set(held) | set(state.members) | set(state.hosts))
    rows = []
    for h in hosts:
        rec = state.hosts.get(h)
        st = "alive" if rec is not None and rec.state == "alive" else ("stopped" if rec is not None else "dead")
        rows.append({"host": h, "addresses": held.get(h, 0), "state": st})
    data = {
        "range": config.ipalloc_range if config else None,
        "default_subnet": config.default_subnet if config else None,
        "dead_host_grace": config.dead_host_grace if config else None,
        "hosts": rows,
    }
    if as_json or (ctx.obj or {}).get("json"):
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"{'Range':>15}: {data['range']}")
    typer.echo(f"{'Default subnet':>15}: {data['default_subnet']}")
    width = max([len("HOST")] + [len(r["host"]) for r in rows])
    typer.echo(f"{'HOST':<{width}}  ADDRESSES  STATE")
    for r in rows:
        typer.echo(f"{r['host']:<{width}}  {r['addresses']:>9}  {r['state']}")


def _dns_target(c: Context, words: list[str], fqdn: Optional[str]) -> tuple[str, list[tuple[str, str]]]:
    from pyweave.containers import ContainerError, Containers
    from pyweave.dns import names_of

    addr_words, ref = _split_cidrs_container(words)
    ips = []
    for word in addr_words:
        try:
            ips.append(str(ipaddress.IPv4Address(word.split("/")[0].removeprefix("ip:"))))
        except ValueError:
            fail(f"{word} is not an IPv4 address")
    try:
        info = Containers().inspect(ref)
    except ContainerError as err:
        fail(str(err))
    if info is None:
        fail(f"container {ref} not found; check the name or ID with `docker ps -a`")
    if not ips:
        state, _ = c.cluster.state()
        att = state.attachments.get((c.me, info.id))
        ips = [str(ipaddress.IPv4Interface(x).ip) for x in att.cidrs] if att else []
        if not ips:
            fail(f"container {ref} has no address; give one: pyweave dns-add IP {ref}")
    if fqdn:
        names = [fqdn.lower().rstrip(".") + "."]
    else:
        names = names_of(info.name, info.hostname, c.config.dns_domain)[:1]
    return info.id, [(n, ip) for n in names for ip in ips]


@app.command("dns-add")
def dns_add(
    words: list[str] = typer.Argument(..., metavar="[IP...] CONTAINER"),
    fqdn: Optional[str] = typer.Option(None, "-h", "--hostname", help="The name (default: the container's name in the domain)."),
) -> None:
    """Add names for a container. Example: `pyweave dns-add 10.0.0.5 web -h www.weave.local`."""
    c = Context()
    cid, records = _dns_target(c, words, fqdn)
    c.cluster.dns_extra(c.me, cid, add=records)


@app.command("dns-remove")
def dns_remove(
    words: list[str] = typer.Argument(..., metavar="[IP...] CONTAINER"),
    fqdn: Optional[str] = typer.Option(None, "-h", "--hostname", help="The name (default: the container's name in the domain)."),
) -> None:
    """Remove names of a container. Example: `pyweave dns-remove web`."""
    c = Context()
    cid, records = _dns_target(c, words, fqdn)
    c.cluster.dns_extra(c.me, cid, remove=records)


@app.command("dns-lookup")
def dns_lookup(name: str = typer.Argument(..., help="A name, with or without the domain.")) -> None:
    """Print the addresses of a name, one a line. Example: `pyweave dns-lookup web`."""
    c = Context()
    fqdn = name.lower().rstrip(".") + "."
    if "." not in name.rstrip("."):
        fqdn = f"{name.lower()}.{c.config.dns_domain}"
    state, _ = c.cluster.state()
    ips = sorted({ip for recs in state.dns.values() for n, ip in recs.records if n == fqdn}, key=ipaddress.IPv4Address)
    if not ips:
        fail(f"{fqdn} not found")
    for ip in ips:
        typer.echo(ip)


@app.command()
def ps() -> None:
    """List the attached containers of this host: short ID, MAC, CIDRs (weave's format).

    Example: `pyweave ps`.
    """
    from pyweave.plan import EXPOSE_REF

    c = Context()
    state, _ = c.cluster.state()
    rows: dict[str, list] = {}
    ordered = sorted(state.endpoints.values(), key=lambda e: (e.container != EXPOSE_REF, e.container, e.ifname, e.ip))
    for ep in ordered:
        if ep.host != c.me:
            continue
        row = rows.setdefault(ep.container, [ep.mac, []])
        row[1].append(ep.cidr)
    for cid, (mac, cidrs) in rows.items():
        name = cid if cid == EXPOSE_REF else cid[:12]
        typer.echo(f"{name} {mac} {' '.join(cidrs)}")


@app.command()
def report() -> None:
    """Print the whole state of the cluster as JSON, as weave's report does.

    Example: `pyweave report | jq '.hosts'`.
    """
    from dataclasses import asdict

    c = Context()
    state, revision = c.cluster.state()
    data, _ok = _gather_status(c)
    out = {
        "revision": revision,
        "host": data["host"],
        "store": data["store"],
        "config": asdict(state.config) if state.config else None,
        "peers": data["peers"],
        "networks": [asdict(n) for n in sorted(state.networks.values(), key=lambda n: n.subnet)],
        "attachments": [asdict(a) for _, a in sorted(state.attachments.items())],
        "endpoints": [asdict(e) for _, e in sorted(state.endpoints.items())],
        "addresses": [asdict(cl) for _, cl in sorted(state.claims.items())],
        "dns": [asdict(d) for _, d in sorted(state.dns.items())],
        "problems": data["problems"],
    }
    typer.echo(json.dumps(out, indent=2))


@app.command()
def version() -> None:
    """Print pyweave's version. Example: `pyweave version`."""
    typer.echo(f"pyweave {__version__}")


def main() -> None:
    # Typer commands raise CliError; translate it once here into a message and an exit code.
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CliError as err:
        _say(str(err))
        sys.exit(err.code)
    except (StoreError, ClusterError) as err:
        _say(str(err))
        sys.exit(EXIT_ERROR)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except SystemExit:
        raise
    except Exception as err:  # click's usage errors and the like
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
