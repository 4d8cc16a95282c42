"""Commands of a host's life: launch, stop, reset, and rmpeer (forgetting a dead host)."""

from __future__ import annotations

import dataclasses
import shutil
from typing import Optional
from urllib.parse import urlsplit

import typer

from dataplane.hostroutes import host_overlaps
from pyweave.agent.tunnel import TunnelPaths, save_secret
from pyweave.cli import inputs
from pyweave.cli.base import EXIT_RUNNING, Context, app, fail, open_store, say
from pyweave.cli.forms import AddressError, parse_subnet
from pyweave.cli.inputs import option_check
from pyweave.cli.secret import exposure_warning, read_secret, wait_tunnel_peer
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


_STORE_CHECK = option_check(inputs.store_endpoints)
DEFAULT_STORE_MEMBERS = 3


def _check_store_members(value: Optional[int]) -> Optional[int]:
    if value is not None and value not in (1, 3, 5, 7):
        raise typer.BadParameter(f"{value} is not 1, 3, 5 or 7: an etcd cluster needs an odd number of members "
                                 f"(an even one tolerates no more failures than one member less)")
    return value


def _ask_peer(peer: str, endpoint: str) -> tuple[list[str], int]:
    """The store as PEER's join endpoint describes it (any launched host answers, `pyweave.join`):
    its client URLs and the embedded store's member target. A PEER with no join endpoint (an etcd of
    the user's own, given as PEER) is the store itself: ([endpoint], 0)."""
    from pyweave import join

    host = urlsplit(endpoint).hostname or peer
    try:
        reply = join.ask(host)
    except join.JoinError as err:
        fail(f"{peer}: {err}; is pyweave launched there?")
    if reply is None:
        return [endpoint], 0
    try:
        urls = inputs.store_endpoints(",".join(reply["store"]), what=f"the store named by {peer}: ")
    except inputs.InputError as err:
        fail(str(err))
    return urls, reply["store_members"]


@app.command()
def launch(
    peer: Optional[str] = typer.Argument(None, help="Address of a host already launched; join its store.",
                                         callback=_STORE_CHECK),
    store: Optional[str] = typer.Option(None, "--store", envvar="PYWEAVE_STORE", help="etcd endpoints URL[,URL...]",
                                        callback=_STORE_CHECK),
    name: Optional[str] = typer.Option(None, "--name", help="Host name (default: network namespace or hostname).",
                                       callback=option_check(inputs.host_name)),
    address: Optional[str] = typer.Option(None, "--address", help="Underlay address (default: found).",
                                          callback=option_check(inputs.ipv4_address)),
    mtu: Optional[int] = typer.Option(None, "--mtu", help="Overlay MTU (default: underlay MTU - 50).",
                                      callback=option_check(inputs.overlay_mtu)),
    lease_ttl: int = typer.Option(10, "--lease-ttl", help="Seconds before peers forget a dead host.",
                                  callback=option_check(inputs.lease_ttl)),
    ipalloc_range: str = typer.Option(DEFAULT_IPALLOC_RANGE, "--ipalloc-range", help="Range for automatic addresses (first host sets it)."),
    ipalloc_default_subnet: Optional[str] = typer.Option(None, "--ipalloc-default-subnet", help="Subnet of `run` without address (default: the range)."),
    dead_host_grace: float = typer.Option(DEFAULT_DEAD_HOST_GRACE, "--dead-host-grace", help="Seconds before a dead host's addresses are reused (first host sets it).",
                                          callback=option_check(inputs.dead_host_grace)),
    dns_domain: str = typer.Option("weave.local.", "--dns-domain", help="Domain answered by the DNS of this host.",
                                   callback=option_check(inputs.dns_domain)),
    no_dns: bool = typer.Option(False, "--no-dns", help="Do not serve DNS to this host's containers."),
    dns_no_forward: bool = typer.Option(False, "--dns-no-forward", help="Answer only names in the domain; refuse the rest instead of asking the host's resolvers."),
    metrics_port: int = typer.Option(6782, "--metrics-port", help="Prometheus metrics port (0: off).",
                                     callback=option_check(inputs.metrics_port)),
    metrics_addr: str = typer.Option("127.0.0.1", "--metrics-addr", help="Address the metrics listen on (0.0.0.0: all).",
                                     callback=option_check(inputs.metrics_addr)),
    password: Optional[str] = typer.Option(None, "--password", envvar="PYWEAVE_PASSWORD", show_envvar=True,
                                           help="The cluster's secret: encrypts every frame between hosts (the same on every host)."),
    password_file: Optional[str] = typer.Option(None, "--password-file", help="Read the secret from this file instead."),
    store_ca: Optional[str] = typer.Option(None, "--store-ca", help="A store of your own over TLS (--store https://...): the CA file to trust."),
    store_cert: Optional[str] = typer.Option(None, "--store-cert", help="... and this host's client certificate file."),
    store_key: Optional[str] = typer.Option(None, "--store-key", help="... and its private key file."),
    store_members: Optional[int] = typer.Option(None, "--store-members", help="etcd members the embedded store forms itself with: 1, 3, 5 or 7 (default 3; the first host sets it).",
                                                callback=_check_store_members),
) -> None:
    """Start this host's agent and join the cluster.

    Example: `pyweave launch` on the first host, `pyweave launch 192.168.1.10` on the others.
    Every value is checked before anything is saved or started; a launch that fails leaves this
    host's saved configuration as it was.
    """
    from dataplane.api import DataplaneError
    from dataplane.host import find_underlay

    state = HostState()
    running = state.agent_pid()
    if running is not None:
        _revive_store_member(state)
        fail(f"pyweave is already running on this host (agent pid {running}); `pyweave stop` first", EXIT_RUNNING)
    secret = read_secret(password, password_file)
    _check_store_files(store, (store_ca, store_cert, store_key))
    config = state.load_or_create(name=name)
    try:
        inputs.host_name(config.name)
    except inputs.InputError as err:
        fail(f"{err}; give this host a name with --name")
    try:
        underlay = find_underlay(inputs.ipv4_address(address) if address else config.address)
    except DataplaneError as err:
        fail(str(err))
    if mtu is not None:
        try:
            inputs.mtu_for_underlay(mtu, underlay.mtu, underlay.ifname)
        except inputs.InputError as err:
            fail(str(err))
    if secret is None and config.encrypted and TunnelPaths(state).secret.exists():
        secret = TunnelPaths(state).secret.read_bytes()  # launched again: the secret saved at the first launch
    wanted = _ipalloc_config(ipalloc_range, ipalloc_default_subnet or ipalloc_range, dead_host_grace)
    wanted = dataclasses.replace(wanted, encrypted=secret is not None)
    rng = parse_subnet(wanted.ipalloc_range)
    for overlap in host_overlaps(rng):
        # Weave refuses a range that overlaps a route of the host: containers could not reach it.
        fail(f"the address range {rng} overlaps {overlap.describe()}; choose another with --ipalloc-range")
    members = config.store_members
    scheme = "https" if secret is not None else "http"  # a cluster with a secret: its store over TLS only
    if store:
        endpoints, embedded, members = inputs.store_endpoints(store), False, 0
    elif peer:
        endpoints, embedded = inputs.store_endpoints(peer), False
        if any(urlsplit(e).hostname == underlay.address and urlsplit(e).port == 2379 for e in endpoints):
            fail(f"{peer} is this host's own address; on the first host run `pyweave launch` with no peer")
        endpoints, members = _ask_peer(peer, endpoints[0])
    elif not config.store:
        endpoints, embedded = [f"{scheme}://{underlay.address}:2379"], True
        members = store_members or DEFAULT_STORE_MEMBERS
    elif config.embedded_etcd:
        endpoints, embedded = [f"{scheme}://{underlay.address}:2379"], True
    else:
        endpoints, embedded = config.store, False
    # From here on, files are written (tls/ by enrolment, then the configuration): a launch that
    # fails leaves the state directory as it found it.
    had_dir, tls_before = state.dir.exists(), _snapshot_tls(state)
    try:
        _store_tls(state, config, secret, endpoints, store, peer, embedded, (store_ca, store_cert, store_key))
        if metrics_port:
            _check_metrics_listen(metrics_addr, metrics_port, embedded=embedded)
        config.address = underlay.address
        config.mtu = mtu or config.mtu
        config.lease_ttl = lease_ttl
        config.dns = not no_dns
        config.dns_forward = not dns_no_forward
        config.metrics_port = metrics_port
        config.metrics_addr = inputs.metrics_addr(metrics_addr)
        config.dns_domain = inputs.dns_domain(dns_domain)
        config.store, config.embedded_etcd, config.store_members = endpoints, embedded, members
        config.encrypted = secret is not None
        _start_or_roll_back(state, config, wanted, underlay.address, secret=secret, had_dir=had_dir)
    except BaseException:
        _restore_tls(state, tls_before, had_dir=had_dir)
        raise
    warning = exposure_warning(encrypted=config.encrypted, store=config.store)
    if warning:
        say(warning)
    typer.echo(config.name)


def _store_tls(state: HostState, config, secret: bytes | None, endpoints: list[str], store: Optional[str],
               peer: Optional[str], embedded: bool, files: tuple[Optional[str], ...]) -> None:
    """The store's certificates (docs/security.md): the files given for a store of the user's own
    over TLS, else the cluster's CA (made by a first host with a secret, got by enrolment through
    PEER) and this host's client certificate."""
    from pathlib import Path

    from pyweave.storetls import StoreTlsError, prepare

    if any(files):
        config.store_ca, config.store_cert, config.store_key = (str(Path(str(f)).resolve()) for f in files)
        return
    if store:
        config.store_ca = config.store_cert = config.store_key = None
        return
    try:
        prepare(state, config.name, secret, endpoints, peer_host=urlsplit(inputs.store_endpoints(peer)[0]).hostname if peer else None,
                embedded=embedded)
    except StoreTlsError as err:
        fail(str(err))


def _check_store_files(store: Optional[str], files: tuple[Optional[str], ...]) -> None:
    """--store https://... comes with --store-ca/--store-cert/--store-key, all three files readable (exit 2)."""
    from pathlib import Path

    if any(files):
        if not store or not all(files):
            fail("--store-ca, --store-cert and --store-key go together, with --store https://...", 2)
        for opt, f in zip(("--store-ca", "--store-cert", "--store-key"), files):
            if not Path(str(f)).is_file():
                fail(f"{opt} {f} is not a readable file; give the PEM file", 2)
    elif store and any(e.startswith("https://") for e in inputs.store_endpoints(store)):
        fail("--store https://... needs --store-ca, --store-cert and --store-key (the store's CA, this host's "
             "client certificate and key)", 2)


def _revive_store_member(state: HostState) -> None:
    """The agent runs, but this host's etcd member may be down (and its supervisor waiting out a
    backoff): start it now, wait until the store answers, and end the launch there (exit 0)."""
    from pyweave.processes import ProcessError, start_embedded_etcd

    config = state.load()
    if config is None or not config.embedded_etcd or state.etcd_pid() is not None:
        return
    if not (state.etcd_dir / "member").exists() or not config.address:
        return
    try:
        start_embedded_etcd(state, config, config.address)
    except ProcessError as err:
        fail(str(err))
    from pyweave.storetls import scheme

    wait_store(open_store([f"{scheme(config)}://{config.address}:2379"]), 30.0, "this host's store member")
    say(f"pyweave is running on this host (agent pid {state.agent_pid()}); its store member was down: restarted it")
    typer.echo(config.name)
    raise typer.Exit(0)


def _check_metrics_listen(addr: str, port: int, *, embedded: bool) -> None:
    """The agent must be able to listen there: an address of this host, a port nobody holds."""
    import errno
    import ipaddress
    import socket

    if embedded and port in (2379, 2380):
        fail(f"--metrics-port {port} is the embedded etcd's; choose another (default 6782)")
    family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((addr, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                fail(f"--metrics-port {port} on {addr} is in use by another program; choose another port, or 0 for no metrics")
            fail(f"--metrics-addr {addr} cannot be listened on here ({err.strerror}); give 127.0.0.1, one of this "
                 f"host's addresses, or 0.0.0.0")


def _snapshot_tls(state: HostState) -> dict[str, tuple[bytes, int]] | None:
    """The files of tls/ (contents and mode), or None if there is no tls/: what `_restore_tls` puts back."""
    from pyweave.storetls import tls_dir

    d = tls_dir(state)
    if not d.is_dir():
        return None
    return {p.name: (p.read_bytes(), p.stat().st_mode & 0o777) for p in d.iterdir() if p.is_file()}


def _restore_tls(state: HostState, before: dict[str, tuple[bytes, int]] | None, *, had_dir: bool) -> None:
    """A failed launch: tls/ as it was before (a CA got by enrolment, a client certificate made for
    this launch go), and no state directory at all if there was none."""
    import os

    from pyweave.storetls import tls_dir

    if not had_dir:
        shutil.rmtree(state.dir, ignore_errors=True)
        return
    d = tls_dir(state)
    if before is None:
        shutil.rmtree(d, ignore_errors=True)
        return
    for p in d.iterdir() if d.is_dir() else ():
        if p.name not in before:
            p.unlink(missing_ok=True)
    for name, (data, mode) in before.items():
        path = d / name
        if not path.exists() or path.read_bytes() != data:
            d.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(path, mode)


def _start_or_roll_back(state: HostState, config, wanted: ClusterConfig, address: str, *, secret: bytes | None = None,
                        had_dir: bool) -> None:
    """Save the configuration, start the embedded etcd (first host), reach the store, agree on the
    cluster's range, start the agent. If any step fails (or Ctrl-C), undo what this launch did: stop
    the etcd it started, and put the saved configuration back as it was (none, for a first launch),
    so a dead peer or a refused value is not what the next plain `pyweave launch` uses."""
    from pyweave.processes import ProcessError, start_agent, start_embedded_etcd
    from store.cluster import Cluster
    from store.errors import ClusterError, StoreError

    had_etcd_data = (state.etcd_dir / "member").exists()
    saved = state.config_path.read_bytes() if state.config_path.exists() else None
    etcd_running = state.etcd_pid() is not None
    secret_path = TunnelPaths(state).secret
    saved_secret = secret_path.read_bytes() if secret_path.exists() else None
    state.save(config)
    try:
        if secret is not None:
            save_secret(state, secret)
        if config.embedded_etcd:
            start_embedded_etcd(state, config, address)
        raw = open_store(config.store)
        wait_store(raw, 30.0, f"the store at {','.join(config.store)}")
        try:
            Cluster(raw).ensure_config(wanted)
        except (StoreError, ClusterError) as err:
            fail(str(err))
        start_agent(state)
        if secret is not None:
            _check_secret(state, raw, config.name)
    except BaseException as err:
        if state.agent_pid() is not None:  # started by this launch (a running one is refused above)
            _undo_agent(state, config.name)
        if saved_secret is None:
            secret_path.unlink(missing_ok=True)
        elif saved_secret != secret:
            save_secret(state, saved_secret)
        etcd_pid = state.etcd_pid()
        if etcd_pid is not None and not etcd_running:
            stop_process(etcd_pid, timeout=5.0)
            state.etcd_pid_path.unlink(missing_ok=True)
        if not had_dir:
            shutil.rmtree(state.dir, ignore_errors=True)
        else:
            if not had_etcd_data:
                shutil.rmtree(state.etcd_dir, ignore_errors=True)
            if saved is None:
                state.config_path.unlink(missing_ok=True)
            else:
                state.config_path.write_bytes(saved)
        if isinstance(err, ProcessError):
            fail(str(err))
        raise


def _stop_tunnel(state: HostState) -> None:
    """The encryption tunnel goes with the host (reset): it removes its device and rules itself, and
    `cleanup` removes what a crashed one left (docs/encryption.md)."""
    from pyweave.agent import tunnel

    tunnel.stop(state)
    if TunnelPaths(state).config.exists():
        from dataplane.tunnel import cleanup

        cleanup()


SECRET_CHECK_TIMEOUT = 10.0


def _check_secret(state: HostState, raw, me: str) -> None:
    """With a secret, this host's tunnel must complete a handshake with a live peer (if there is
    one): with another secret, none does, and the launch fails (docs/encryption.md)."""
    from store import keys
    from store.records import Bad, obj_of, parse_host

    kvs, _ = raw.list(keys.HOSTS)
    peers = set()
    for kv in kvs:
        name = kv.key[len(keys.HOSTS):]
        try:
            rec = parse_host(name, obj_of(kv.value))
        except Bad:
            continue
        if name != me and rec.state == "alive" and rec.public_key:
            peers.add(name)
    if peers and not wait_tunnel_peer(TunnelPaths(state).stats, peers, SECRET_CHECK_TIMEOUT):
        fail(f"no peer ({', '.join(sorted(peers))}) completed an encrypted handshake with this host within "
             f"{SECRET_CHECK_TIMEOUT:.0f}s: the secret is not the cluster's (or UDP 6783 is blocked between the hosts); "
             f"launch with the cluster's --password")


def _undo_agent(state: HostState, me: str) -> None:
    """A launch refused after its agent started: stop the agent and the tunnel, and withdraw the
    host's records, so that nothing of it is left running or listed."""
    from store import keys
    from store.errors import StoreError

    pid = state.agent_pid()
    if pid is not None:
        stop_process(pid, timeout=5.0)
    _stop_tunnel(state)
    config = state.load()
    if config is None:
        return
    try:
        raw = open_store(config.store)
        for key in (keys.host_key(me), keys.member_key(me), keys.links_key(me), keys.progress_key(me)):
            raw.delete(key)
    except (StoreError, OSError):
        pass


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


def _leave_store(state: HostState, config, *, force: bool) -> None:
    """A host whose etcd is a member of the embedded store leaves it before it goes: its member is
    removed (a leader hands its leadership over first), under the join lock, and only if the store
    keeps its quorum without it (else the reset is refused, unless --force). A live non-member then
    takes its place (`pyweave.agent.membership`). The agent's supervisor is held off meanwhile."""
    from store import members as rules
    from store.errors import StoreError

    if config is None or not config.embedded_etcd or config.store_members <= 0 or not config.address:
        return
    me = f"http://{config.address}:2380"
    own = f"http://{config.address}:2379"
    raw = open_store([u for u in config.store if u != own] + [own])  # not the one that goes, first
    state.etcd_hold_path.touch()  # the removed etcd exits: the supervisor must not start it again
    try:
        lease = raw.grant_lease(15)
        with rules.locked(raw, config.name, lease, wait=20.0) as held:
            if not held:
                raise rules.MembershipError("another change of the store's membership is under way")
            view = rules.look(raw)
            member = view.with_peer(me)
            if member is None:
                return
            rules.remove(raw, view, str(member["ID"]))
        raw.revoke_lease(lease)
        say(f"left the store: member {member.get('name') or member['ID']} removed; a live host takes its place")
    except StoreError as err:
        if force:
            say(f"warning: this host's store member was not removed ({err}); --force: resetting anyway")
            return
        state.etcd_hold_path.unlink(missing_ok=True)
        fail(f"this host is a member of the store and cannot leave it: {err}. Nothing was changed; bring the "
             f"store's other members back (or wait until a replacement has joined) and reset again, or "
             f"`pyweave reset --force` (docs/store.md)")


@app.command()
def reset(
    force: bool = typer.Option(False, "--force", help="Reset even if this host's store member cannot leave the store safely."),
) -> None:
    """Stop the agent, remove this host's kernel devices and records, and leave the cluster.

    Example: `pyweave reset`. A host whose etcd is a member of the embedded store leaves the store
    first; the reset is refused if the store would lose its quorum (`--force` resets anyway).
    """
    from dataplane.host import remove_all_owned, remove_local_address
    from dataplane.hostfilter import remove_host_filter
    from pyweave.dnsnames import SERVICE_ADDRESS
    from store.cluster import Cluster
    from store.errors import StoreError

    state = HostState()
    config = state.load()
    _leave_store(state, config, force=force)
    pid = state.agent_pid()
    if pid is not None:
        stop_process(pid, timeout=5.0)
    _stop_tunnel(state)
    remove_all_owned()
    remove_local_address(SERVICE_ADDRESS)
    remove_host_filter()  # the agent's filter for traffic from containers to this host
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
    _remove_dead_member(c, host)
    typer.echo(f"{freed} IPs taken over from {host}")


def _remove_dead_member(c: Context, host: str) -> None:
    """rmpeer of a host whose etcd was a member of the embedded store: its member goes at once
    (instead of after the agents' grace), never below quorum; a live non-member takes its place."""
    from store import members as rules
    from store.errors import StoreError

    if c.config.store_members <= 0:
        return
    raw = c.raw
    try:
        view = rules.look(raw)
        member = view.named(host)
        if member is None:
            return
        lease = raw.grant_lease(15)
        with rules.locked(raw, c.config.name, lease, wait=20.0) as held:
            if not held:
                raise rules.MembershipError("another change of the store's membership is under way")
            rules.remove(raw, rules.look(raw), str(member["ID"]))
        raw.revoke_lease(lease)
        say(f"removed {host}'s store member; a live host takes its place")
    except StoreError as err:
        say(f"warning: {host}'s store member was not removed: {err}")


@app.command("store-recover")
def store_recover(
    force: bool = typer.Option(False, "--force", help="Recover even if the store seems to have its quorum."),
) -> None:
    """Bring back a store that lost its quorum for good, from this host's member (docs/store.md).

    Example: `pyweave store-recover` on a host whose store member survived when most members died.
    Its data is copied aside (etcd-backup-TIME in the state directory), then its etcd restarts as a
    store of one member with that data (etcd's --force-new-cluster); live hosts then join it until
    the store has its members again. The dead members' hosts must not come back with their old data:
    `pyweave reset --force` them first.
    """
    import time

    from pyweave.processes import ProcessError, start_embedded_etcd
    from store import members as rules
    from store.errors import StoreError

    state = HostState()
    config = state.load()
    if config is None or not config.embedded_etcd or not (state.etcd_dir / "member").exists() or not config.address:
        fail("this host runs no member of the embedded store; run `pyweave store-recover` on one that does")
    own = f"http://{config.address}:2379"
    try:
        view = rules.look(open_store([own]), timeout=1.0)
    except StoreError as err:
        fail(f"this host's store member does not answer ({err}); `pyweave launch` brings it back first")
    voters = view.voters()
    healthy = [m for m in voters if view.healthy.get(str(m["ID"]))]
    if len(healthy) >= rules.quorum(len(voters)) and not force:
        fail(f"the store has its quorum ({len(healthy)} of {len(voters)} voting members answer): nothing to recover")
    backup = state.dir / f"etcd-backup-{time.strftime('%Y%m%d-%H%M%S')}"
    state.etcd_hold_path.touch()  # the agent's supervisor keeps off while the member restarts
    try:
        pid = state.etcd_pid()
        if pid is not None:
            stop_process(pid, timeout=10.0)
        state.etcd_pid_path.unlink(missing_ok=True)
        shutil.copytree(state.etcd_dir, backup)
        start_embedded_etcd(state, config, config.address, force_new_cluster=True)
        wait_store(open_store([own]), 30.0, "this host's store member, alone")
    except ProcessError as err:
        fail(str(err))
    finally:
        state.etcd_hold_path.unlink(missing_ok=True)
    config.store = [own]
    state.save(config)
    say(f"the store is this host's member alone now ({len(voters) - 1} dead member(s) dropped, data copied to "
        f"{backup}); live hosts join it until it has {config.store_members} members again")
