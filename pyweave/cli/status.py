"""Commands that show: status (this host, its peers, the store, every problem found), status peers,
status ipam, status connections, report, version. Each reads only the keys it shows."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer

from pyweave import __version__
from pyweave.cli.base import EXIT_ERROR, Context, app, fail, say, status_app
from pyweave.cli.secret import exposure_warning
from store import keys
from store.errors import StoreError
from store.records import parse_progress

if TYPE_CHECKING:
    from store.state import ClusterState

VXLAN_PORT = 4789


def _gather_status(ctx: Context) -> tuple[dict, bool]:
    agent_pid = ctx.state.agent_pid()
    data: dict = {
        "version": __version__,
        "host": {
            "name": ctx.me,
            "address": ctx.config.address,
            "vtep_mac": ctx.config.vtep_mac,
            "mtu": None,
            "data_path": "kernel vxlan (udp/4789, learning off, proxy ARP)" + (
                ", sealed by the tunnel (udp/6783, AES-256-GCM)" if ctx.config.encrypted else ""),
            "encryption": "on" if ctx.config.encrypted else "off",
            **({"tunnel": _gather_tunnel(ctx)} if ctx.config.encrypted else {}),
            "agent": {"running": agent_pid is not None, "pid": agent_pid},
        },
        "peers": [],
        "connections": [],
        "store": {"endpoints": ctx.raw.endpoints, "reachable": False, "revision": None, "embedded": ctx.config.embedded_etcd},
        "problems": [],
    }
    try:
        state, revision = ctx.cluster.state()
        kvs, _ = ctx.raw.list(keys.PROGRESS_ROOT)
    except StoreError as err:
        data["store"]["error"] = str(err)
        return data, False
    data["store"].update(reachable=True, revision=revision)
    data["store"].update(_gather_store_members(ctx.raw))
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
        problems |= {(p.key, p.problem) for p in parse_progress(kv.value).problems}
    data["problems"] = [{"key": k, "problem": p} for k, p in sorted(problems)]
    data["connections"] = _gather_connections(state, ctx.me) or []
    return data, True


def _gather_tunnel(ctx: Context) -> dict:
    """The encryption tunnel's state from its stats file (docs/encryption.md): whether it runs, its
    peers with a confirmed session, and the packets it dropped, by kind."""
    from pyweave.agent.tunnel import drops, read_stats, tunnel_pid

    stats = read_stats(ctx.state)
    peers = stats.get("peers") or {}
    dropped = drops(stats)
    return {
        "pid": tunnel_pid(ctx.state),
        "peers": len(peers),
        "established": sum(1 for p in peers.values() if p.get("established")),
        "dropped": sum(dropped.values()),
        "drops": dropped,
        "sealed": (stats.get("total") or {}).get("sealed", 0),
        "opened": (stats.get("total") or {}).get("opened", 0),
    }


def _encryption_line(host: dict) -> str:
    """`on (2 peers established, 0 packets dropped)`; `on (tunnel not running)`; `off`."""
    encryption = host.get("encryption", "off")
    tunnel = host.get("tunnel")
    if encryption != "on" or tunnel is None:
        return encryption
    if tunnel.get("pid") is None:
        return "on (tunnel not running)"
    line = f"on ({tunnel['established']} peers established, {tunnel['dropped']} packets dropped"
    kinds = [f"{k} {v}" for k, v in sorted((tunnel.get("drops") or {}).items()) if v]
    return line + (f": {', '.join(kinds)})" if kinds else ")")


def _gather_store_members(raw) -> dict:
    """The store's members (issue 13): each one's name, URLs, whether it is a learner, the leader,
    and whether it answers (its own status, asked of every member at once, 0.5 s at most)."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        members = raw.members()
    except (StoreError, AttributeError):
        return {}
    urls = [(m.get("clientURLs") or [None])[0] for m in members]
    with ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
        statuses = list(pool.map(lambda u: raw.endpoint_status(u) if u else None, urls))
    leader_ids = {st.get("leader") for st in statuses if st and st.get("leader") not in (None, "0")}
    leader_id = next(iter(leader_ids)) if len(leader_ids) == 1 else None
    rows = []
    for m, url, st in zip(members, urls, statuses):
        rows.append({
            "id": m.get("ID"), "name": m.get("name") or None, "client_url": url,
            "peer_urls": m.get("peerURLs", []), "learner": bool(m.get("isLearner")),
            "leader": m.get("ID") == leader_id, "healthy": bool(st) and not (st or {}).get("errors"),
        })
    rows.sort(key=lambda r: (r["learner"], r["name"] or ""))
    leader = next((r["name"] for r in rows if r["leader"]), None)
    return {"members": rows, "leader": leader, "learners": [r["name"] or r["peer_urls"] for r in rows if r["learner"]]}


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
            ("Encryption", _encryption_line(host)),
            ("Agent", f"running (pid {agent['pid']})" if agent["running"] else "not running"),
        ],
    )
    peers = data["peers"]
    alive = sum(1 for p in peers if p["alive"])
    conns = data.get("connections") or []
    counts = {mode: sum(1 for c in conns if c["mode"] == mode) for mode in ("direct", "via", "unreachable")}
    lines += _section("peers", [
        ("Peers", f"{len(peers)} ({alive} alive)"),
        ("Connections", f"{len(conns)} ({counts['direct']} direct, {counts['via']} relayed, {counts['unreachable']} unreachable)"),
    ])
    store = data["store"]
    reach = "reachable" if store["reachable"] else f"unreachable ({store.get('error', '')})"
    rows: list[tuple[str, object]] = [("Endpoints", ",".join(store["endpoints"])), ("Status", reach)]
    if store["reachable"]:
        rows.append(("Revision", store["revision"]))
        members = store.get("members") or []
        if members:
            voting = [m for m in members if not m["learner"]]
            healthy = sum(1 for m in voting if m["healthy"])
            rows.append(("Members", f"{len(voting)} voting ({healthy} healthy), {len(members) - len(voting)} learner(s); "
                                    f"leader {store.get('leader') or 'none'}"))
            for m in members:
                role = "learner" if m["learner"] else ("leader" if m["leader"] else "voter")
                rows.append(("Member", f"{m['name'] or '(not started)'} {m['client_url'] or ''} {role} "
                                       f"{'healthy' if m['healthy'] else 'UNHEALTHY'}"))
        rows.append(("Problems", len(data["problems"])))
    lines += _section("store", rows)
    for p in data["problems"]:
        line = f"  problem: {p['key']}: {p['problem']}"
        lines.append(typer.style(line, fg="yellow") if sys.stdout.isatty() else line)
    return "\n".join(lines).rstrip() + "\n"


def _render_peers(data: dict) -> str:
    rows: list[tuple[str, str, str, str]] = [("NAME", "ADDRESS", "VTEP-MAC", "STATE")]
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
    warning = exposure_warning(encrypted=c.config.encrypted, store=c.config.store)
    if warning:
        say(warning)  # stderr: `status --json | jq` reads stdout only
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


@status_app.command("ipam")
def status_ipam(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="As JSON."),
) -> None:
    """The allocation range, the default subnet, and per host the addresses held and whether it is alive.

    Example: `pyweave status ipam`.
    """
    c = Context()
    state, _ = c.cluster.state("config", "ips/", "members/", "hosts/")
    config = state.config
    held: dict[str, int] = {}
    for claim in state.claims.values():
        held[claim.host] = held.get(claim.host, 0) + 1
    hosts = sorted(set(held) | set(state.members) | set(state.hosts))
    rows: list[dict] = []
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


def _gather_connections(state: ClusterState, me: str) -> list[dict] | None:
    """Per alive peer, how this host reaches it, computed as the agents do (pyweave.routes) from
    the published links; None when no host publishes links (agents from before routing)."""
    from pyweave.routes import routes_from, usable_links

    if not state.links:
        return None
    peers = sorted(name for name, rec in state.hosts.items() if rec.state == "alive" and name != me)
    routes = routes_from(me, usable_links(state.links), peers)
    mine = state.links.get(me, {})
    rows = []
    for name in peers:
        route = routes[name]
        link = mine.get(name)
        mode = "direct" if route.direct else ("via" if route.reachable else "unreachable")
        rows.append({
            "peer": name,
            "address": state.hosts[name].address,
            "mode": mode,
            "via": route.next_hop if mode == "via" else None,
            "hops": route.hops if route.reachable else None,
            "rtt_ms": round(route.rtt_ms, 2) if route.reachable else None,
            "since": link.since if link is not None else None,
        })
    return rows


def _render_connections(rows: list[dict]) -> str:
    """weave's `status connections`: `-> address:port  state mode  peer  rtt  since`, one line per peer."""
    cells = []
    for r in rows:
        if r["mode"] == "direct":
            state, mode = "established", "direct"
        elif r["mode"] == "via":
            state, mode = "established", f"via {r['via']}" + (f" ({r['hops']} hops)" if r["hops"] > 2 else "")
        else:
            state, mode = "failed", "unreachable"
        since = "-" if r["since"] is None else datetime.fromtimestamp(r["since"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        rtt = "-" if r["rtt_ms"] is None else f"{r['rtt_ms']:g}ms"
        cells.append((f"-> {r['address']}:{VXLAN_PORT}", state, mode, r["peer"], f"rtt={rtt}", f"since={since}"))
    if not cells:
        return ""
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    return "".join("  ".join(f"{c[i]:<{widths[i]}}" for i in range(5)) + f"  {c[5]}\n" for c in cells)


@status_app.command("connections")
def status_connections(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="As JSON: peer, address, mode, via, hops, rtt_ms, since."),
) -> None:
    """How this host reaches each alive peer: direct, via another host (relayed), or unreachable.

    Computed as the agents compute their routes, from the links every agent publishes
    (docs/routing.md). Example: `pyweave status connections`.
    """
    c = Context()
    try:
        state, _ = c.cluster.state("hosts/", "links/")
    except StoreError as err:
        fail(str(err))
    rows = _gather_connections(state, c.me)
    if rows is None:
        say("no connections: no host publishes its links (agents from before multi-hop routing)")
        rows = []
    if as_json or (ctx.obj or {}).get("json"):
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(_render_connections(rows), nl=False)


@app.command()
def report() -> None:
    """Print the whole state of the cluster as JSON, as weave's report does.

    Example: `pyweave report | jq '.hosts'`.
    """
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
        "attachments": [{**asdict(a), "cidrs": [str(x) for x in a.cidrs]} for _, a in sorted(state.attachments.items())],
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


