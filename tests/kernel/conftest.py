"""Kernel-tier fixtures: host namespaces on a switch namespace, the underlay the dataplane tests and
the tunnel tests build on (`namespaces`, in tests/conftest.py, removes them all afterwards)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from dataplane.api import Underlay
from dataplane.host import find_underlay


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)


@pytest.fixture
def switched_hosts(namespaces) -> Callable[[int], tuple[str, list[tuple[str, Underlay]]]]:
    """A factory: `switched_hosts(count)` makes host namespaces h1..h<count>, each with eth0 at
    198.19.0.<i>/24 on a bridge in a switch namespace (port p<i>), and returns
    (switch namespace, [(host namespace, its underlay)])."""

    def make(count: int) -> tuple[str, list[tuple[str, Underlay]]]:
        switch = namespaces("sw")
        _ip(switch, "link", "add", "sw0", "type", "bridge")
        _ip(switch, "link", "set", "sw0", "up")
        hosts = []
        for i in range(1, count + 1):
            ns = namespaces(f"h{i}")
            _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", switch)
            _ip(switch, "link", "set", f"p{i}", "master", "sw0", "up")
            _ip(ns, "addr", "add", f"198.19.0.{i}/24", "dev", "eth0")
            _ip(ns, "link", "set", "eth0", "up")
            hosts.append((ns, find_underlay(netns=ns)))
        return switch, hosts

    return make
