"""weaveDNS commands: dns-add, dns-remove (names of a container), dns-lookup (addresses of a name)."""

from __future__ import annotations

import ipaddress
from typing import Optional

import typer

from pyweave.cli.base import Context, app, fail
from pyweave.cli.containers import split_container
from pyweave.containers import ContainerError


def _change_names(words: list[str], fqdn: Optional[str], *, add: bool) -> None:
    """dns-add and dns-remove: the records (name x address) of a container, added or removed."""
    from pyweave.dnsnames import names_of
    from pyweave.docker_runtime import Containers

    c = Context()
    addr_words, ref = split_container(words)
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
        att = c.cluster.attachment(c.me, info.id)
        ips = [str(x.ip) for x in att.cidrs] if att else []
        if not ips:
            fail(f"container {ref} has no address; give one: pyweave dns-add IP {ref}")
    names = [fqdn.lower().rstrip(".") + "."] if fqdn else names_of(info.name, info.hostname, c.config.dns_domain)[:1]
    records = [(n, ip) for n in names for ip in ips]
    if add:
        c.cluster.dns_extra(c.me, info.id, add=records)
    else:
        c.cluster.dns_extra(c.me, info.id, remove=records)


_FQDN = typer.Option(None, "-h", "--hostname", help="The name (default: the container's name in the domain).")


@app.command("dns-add")
def dns_add(words: list[str] = typer.Argument(..., metavar="[IP...] CONTAINER"), fqdn: Optional[str] = _FQDN) -> None:
    """Add names for a container. Example: `pyweave dns-add 10.0.0.5 web -h www.weave.local`."""
    _change_names(words, fqdn, add=True)


@app.command("dns-remove")
def dns_remove(words: list[str] = typer.Argument(..., metavar="[IP...] CONTAINER"), fqdn: Optional[str] = _FQDN) -> None:
    """Remove names of a container. Example: `pyweave dns-remove web`."""
    _change_names(words, fqdn, add=False)


@app.command("dns-lookup")
def dns_lookup(name: str = typer.Argument(..., help="A name, with or without the domain.")) -> None:
    """Print the addresses of a name, one a line. Example: `pyweave dns-lookup web`."""
    c = Context()
    fqdn = name.lower().rstrip(".") + "."
    if "." not in name.rstrip("."):
        fqdn = f"{name.lower()}.{c.config.dns_domain}"
    state, _ = c.cluster.state("dns/")
    ips = sorted({ip for recs in state.dns.values() for n, ip in recs.records if n == fqdn}, key=ipaddress.IPv4Address)
    if not ips:
        fail(f"{fqdn} not found")
    for ip in ips:
        typer.echo(ip)
