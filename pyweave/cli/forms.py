"""The address forms users type on the command line: weave's spellings, read into the overlay's types.

`10.0.0.1/24` and `ip:10.0.0.1/24` name an address; `net:10.2.0.0/16` a subnet to allocate from;
`net:default` (or no address at all) the cluster's default subnet. The rules an address must satisfy
live in `store.addresses`; this module only knows the spellings, and how to tell an address argument
from the image name that follows it. Pure: no I/O.
"""

from __future__ import annotations

import re

from store.addresses import AddressError, OverlayAddress, OverlaySubnet

__all__ = ["AddressError", "looks_like_address", "parse_address", "parse_subnet"]

IP_PREFIX = "ip:"
NET_PREFIX = "net:"

_SLASHED_DIGITS_RE = re.compile(r"[0-9][0-9.]*/[0-9]*", re.ASCII)
_DOTTED_DIGITS_RE = re.compile(r"[0-9]+(\.[0-9]*){3,}", re.ASCII)
_IPV6_ISH_RE = re.compile(r"[0-9a-fA-F]*:[0-9a-fA-F]*:[0-9a-fA-F:.]*(/[0-9]*)?", re.ASCII)


def looks_like_address(word: str) -> bool:
    """Whether the CLI should read *word* as an ADDRESS argument rather than the image.

    Deliberately generous with digit-and-dot garbage (``300.1.1.1/24``, ``10.0.0.1``,
    ``10.0.0/24``) so that a typo is reported as a bad address instead of docker failing to find an
    image by that name. Image references such as ``busybox``, ``ubuntu:22.04`` or
    ``localhost:5000/img`` never match.
    """
    return (
        word.startswith((IP_PREFIX, NET_PREFIX))
        or _SLASHED_DIGITS_RE.fullmatch(word) is not None
        or _DOTTED_DIGITS_RE.fullmatch(word) is not None
        or _IPV6_ISH_RE.fullmatch(word) is not None
    )


def parse_address(text: str) -> OverlayAddress:
    """``10.0.0.1/24`` or ``ip:10.0.0.1/24``; errors quote what the user wrote."""
    body = text.strip()
    if body.startswith(NET_PREFIX):
        raise AddressError(
            f"{text} names a subnet to allocate from, not an address; give a host address such as ip:10.0.0.1/24"
        )
    return OverlayAddress(body.removeprefix(IP_PREFIX), text=text)


def parse_subnet(text: str) -> OverlaySubnet:
    """``10.2.0.0/16`` or ``net:10.2.0.0/16`` (host bits must be zero)."""
    return OverlaySubnet(text.strip().removeprefix(NET_PREFIX), text=text)
