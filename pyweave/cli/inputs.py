"""The values of `pyweave launch`, checked before anything is saved or started.

Each check is pure: it takes what the user typed and returns the value to use, or raises
`InputError` with a message that names the value and says what to type instead. `launch` runs the
checks that need nothing but the value as typer callbacks, so a bad one is a usage error (exit 2,
"Invalid value for '--mtu': ..."), as typer does for a value that is not a number; the checks that
need this host (`mtu_for_underlay`, the metrics address) run in `launch` before it saves anything,
and exit 1.

Why each limit (issue 15, item 4):
- a host name is a key segment in etcd (`hosts/<name>`) and the member name in etcd's
  `--initial-cluster name=url,...`: `/`, `=`, `,` and spaces break them, so names are DNS-label-like;
- the store is spoken to over plain HTTP by this version: an `https://` URL is refused rather than
  silently downgraded;
- an overlay MTU below 68 (IPv4's minimum) or above the underlay's MTU less the VXLAN overhead is
  rejected by the kernel or silently fragments every frame;
- a lease TTL under 2 s is raised to etcd's minimum anyway; over an hour, a dead host lingers;
- a dead-host grace of zero or less would hand a restarting host's addresses to others at once.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import typer

from pyweave.dnsnames import normalise_domain

VXLAN_OVERHEAD = 50
MIN_MTU = 68
MAX_MTU = 65535 - VXLAN_OVERHEAD
MIN_LEASE_TTL = 2
MAX_LEASE_TTL = 3600
MAX_DEAD_HOST_GRACE = 365 * 24 * 3600.0
DEFAULT_STORE_PORT = 2379

_HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)
_DNS_LABEL_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)


class InputError(ValueError):
    """A value that cannot be used; the message names it and says what to use instead."""


def host_name(name: str) -> str:
    """A host name: 1 to 63 of letters, digits, `.`, `_`, `-`, starting with a letter or digit."""
    if _HOST_NAME_RE.fullmatch(name) is None:
        raise InputError(
            f"{name!r} cannot be a host name: use 1 to 63 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (it becomes an etcd key and etcd's member name, where '/', '=', ',' break them)"
        )
    return name


def store_endpoints(text: str, *, what: str = "") -> list[str]:
    """`URL[,URL...]`, each `http[s]://HOST[:PORT]`, `HOST[:PORT]` or `HOST` -> ['http[s]://HOST:PORT', ...]
    (https: a store over TLS, docs/security.md)."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise InputError(f"{what}{text!r} names no store; give URL[,URL...] such as http://10.0.0.1:2379")
    out = []
    for part in parts:
        if not part:
            raise InputError(f"{what}{text!r} has an empty endpoint; separate the URLs with single commas")
        out.append(_store_endpoint(part, what))
    return out


def _store_endpoint(part: str, what: str) -> str:
    example = "http://10.0.0.1:2379"
    scheme, sep, rest = part.partition("://")
    if not sep:
        scheme, rest = "http", part
    if scheme.lower() not in ("http", "https"):
        raise InputError(f"{what}{part}: scheme {scheme}:// is not supported; use http://HOST:PORT or https://HOST:PORT "
                         f"(e.g. {example})")
    try:
        split = urlsplit("http://" + rest)
        port = split.port
    except ValueError:
        raise InputError(f"{what}{part}: the port must be a number from 1 to 65535 (e.g. {example})") from None
    if split.path not in ("", "/") or split.query or split.fragment or split.username or split.password:
        raise InputError(f"{what}{part}: give only HOST:PORT, no path, query or user (e.g. {example})")
    host = split.hostname or ""
    if not _valid_store_host(host):
        raise InputError(f"{what}{part}: {host or 'no host'} is not an IPv4 address or host name (e.g. {example})")
    if port == 0:
        raise InputError(f"{what}{part}: the port must be a number from 1 to 65535 (e.g. {example})")
    return f"{scheme.lower()}://{host}:{port or DEFAULT_STORE_PORT}"


def _valid_store_host(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        return False  # digits and dots that are no IPv4 address: a typo, not a name
    return all(_DNS_LABEL_RE.fullmatch(label) for label in host.lower().rstrip(".").split("."))


def ipv4_address(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise InputError(f"{text!r} is not an IPv4 address: give one of this host's, e.g. 192.168.1.10") from None


def overlay_mtu(mtu: int) -> int:
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise InputError(
            f"{mtu} is not an MTU pyweave can use: give {MIN_MTU} to {MAX_MTU}, at most the underlay's MTU "
            f"less {VXLAN_OVERHEAD} (or leave --mtu out for exactly that)"
        )
    return mtu


def mtu_for_underlay(mtu: int, underlay_mtu: int, underlay_name: str) -> int:
    """The overlay MTU must leave room for the VXLAN headers on this host's underlay."""
    most = underlay_mtu - VXLAN_OVERHEAD
    if mtu > most:
        raise InputError(
            f"--mtu {mtu} does not fit the underlay {underlay_name} (MTU {underlay_mtu}, less {VXLAN_OVERHEAD} "
            f"for VXLAN: at most {most}); use --mtu {most} or less, or leave it out"
        )
    return mtu


def lease_ttl(seconds: int) -> int:
    if not MIN_LEASE_TTL <= seconds <= MAX_LEASE_TTL:
        raise InputError(
            f"{seconds} s is out of range: give {MIN_LEASE_TTL} to {MAX_LEASE_TTL} seconds "
            f"(default 10; peers forget a dead host after this long)"
        )
    return seconds


def dead_host_grace(seconds: float) -> float:
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_DEAD_HOST_GRACE:
        raise InputError(
            f"{seconds:g} is not a grace period: give a number of seconds above 0 and at most "
            f"{MAX_DEAD_HOST_GRACE:.0f} (default 600; `pyweave rmpeer HOST` frees a dead host's addresses at once)"
        )
    return seconds


def metrics_port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise InputError(f"{port} is not a port: give 1 to 65535, or 0 for no metrics")
    return port


def metrics_addr(text: str) -> str:
    """An IP address to listen on: 127.0.0.1 (the default), one of this host's, or 0.0.0.0 for all."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise InputError(
            f"{text!r} is not an IP address: give 127.0.0.1 (the default), one of this host's addresses, "
            f"or 0.0.0.0 for all of them"
        ) from None


def dns_domain(text: str) -> str:
    """A domain such as weave.local: labels of letters, digits, '-' and '_', not the root."""
    domain = normalise_domain(text)
    labels = domain.rstrip(".").split(".")
    if domain == "." or len(domain) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise InputError(
            f"{text!r} is not a DNS domain pyweave can serve: give labels of letters, digits and '-' "
            f"separated by dots, such as weave.local (not the root '.')"
        )
    return domain


T = TypeVar("T")


def option_check(check: Callable[[T], object]) -> Callable[[T | None], T | None]:
    """A typer callback from a check: a bad value is a usage error naming the option (exit 2). The
    value is passed on as typed; the command applies the check again for the normalised form."""

    def callback(value: T | None) -> T | None:
        if value is not None:
            try:
                check(value)
            except InputError as err:
                raise typer.BadParameter(str(err)) from None
        return value

    return callback
