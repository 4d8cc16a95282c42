"""Tests for the overlay's address and subnet types (store.addresses) and the forms users type (pyweave.cli.forms)."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyweave.cli.forms import AddressError, looks_like_address, parse_subnet
from pyweave.cli.forms import parse_address as parse_endpoint_cidr
from store.addresses import OverlayAddress, OverlaySubnet


@pytest.mark.parametrize(
    ("text", "ip", "network"),
    [
        ("10.0.0.1/24", "10.0.0.1", "10.0.0.0/24"),
        ("ip:10.0.0.1/24", "10.0.0.1", "10.0.0.0/24"),
        ("10.0.0.254/24", "10.0.0.254", "10.0.0.0/24"),
        ("10.2.3.1/30", "10.2.3.1", "10.2.3.0/30"),
        ("10.2.3.2/30", "10.2.3.2", "10.2.3.0/30"),
        ("10.255.255.254/8", "10.255.255.254", "10.0.0.0/8"),
        ("192.168.1.77/16", "192.168.1.77", "192.168.0.0/16"),
        ("172.16.0.1/12", "172.16.0.1", "172.16.0.0/12"),
        ("10.0.1.0/23", "10.0.1.0", "10.0.0.0/23"),
        (" 10.0.0.1/24 ", "10.0.0.1", "10.0.0.0/24"),
    ],
)
def test_parse_endpoint_cidr(text: str, ip: str, network: str) -> None:
    address = parse_endpoint_cidr(text)
    assert address.ip == IPv4Address(ip) and address.network == IPv4Network(network)
    assert address == OverlayAddress(f"{ip}/{IPv4Network(network).prefixlen}")
    assert isinstance(address.network, OverlaySubnet)
    assert address.cidr == f"{ip}/{IPv4Network(network).prefixlen}"
    assert str(address) == address.cidr


def test_address_is_hashable_and_equal_to_the_standard_type() -> None:
    address = parse_endpoint_cidr("10.0.0.1/24")
    assert len({address, parse_endpoint_cidr("ip:10.0.0.1/24")}) == 1
    assert address == ipaddress.IPv4Interface("10.0.0.1/24")
    assert hash(address) == hash(ipaddress.IPv4Interface("10.0.0.1/24"))


def test_the_types_apply_the_rules_to_whatever_reaches_them() -> None:
    with pytest.raises(AddressError):
        OverlayAddress(ipaddress.IPv4Interface("127.0.0.2/8"))
    with pytest.raises(AddressError):
        OverlaySubnet(ipaddress.IPv4Network("10.0.0.0/31"))


@pytest.mark.parametrize(
    "text",
    ["300.1.1.1/24", "10.0.0.256/24", "10.0.0/24", "10.0.0.1.1/24", "abc", "", "10.0.0.1/",
     "/24", "10.0.0.1/24/24", "10.0.0.1/x", "010.0.0.1/24", "10.0.0.1/255.255.255.0",
     "ip:", "ip:busybox", "ip: 10.0.0.1/24", "10.0.0.1 /24", "١٠.0.0.1/24", "10.0.0.1/٢٤"],
)
def test_not_a_cidr(text: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr(text)
    assert str(excinfo.value) == f"{text} is not a valid IPv4 CIDR (e.g. 10.0.0.1/24)"


def test_bad_octet_message_matches_the_documented_one() -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr("300.1.1.1/24")
    assert str(excinfo.value) == "300.1.1.1/24 is not a valid IPv4 CIDR (e.g. 10.0.0.1/24)"


@pytest.mark.parametrize("text", ["10.0.0.1", "ip:10.0.0.1"])
def test_missing_prefix_length(text: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr(text)
    message = str(excinfo.value)
    assert message.startswith(f"{text} has no prefix length")
    assert "10.0.0.1/24" in message


@pytest.mark.parametrize("text", ["fd00::1/64", "ip:fd00::1/64", "::1", "2001:db8::1/48"])
def test_ipv6_is_refused(text: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr(text)
    message = str(excinfo.value)
    assert message.startswith(f"{text} is not a valid IPv4 CIDR")
    assert "IPv4 only" in message


@pytest.mark.parametrize("prefix", [33, 64, 99999])
def test_prefix_above_32(prefix: int) -> None:
    text = f"10.0.0.1/{prefix}"
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr(text)
    message = str(excinfo.value)
    assert message.startswith(f"{text} is not a valid IPv4 CIDR")
    assert f"/{prefix} is more than /32" in message


@pytest.mark.parametrize("text", ["10.0.0.1/31", "10.0.0.0/31", "10.0.0.1/32", "ip:10.0.0.1/32"])
def test_prefix_too_small(text: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr(text)
    message = str(excinfo.value)
    assert message.startswith(text)
    assert "too small for a network: use /30 or larger" in message


@pytest.mark.parametrize("text", ["10.0.0.1/7", "10.0.0.1/1", "10.0.0.1/0", "ip:10.0.0.1/4"])
def test_prefix_too_large(text: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr(text)
    message = str(excinfo.value)
    assert message.startswith(text)
    assert "too large for a network" in message
    assert "/8" in message


@pytest.mark.parametrize(
    ("text", "network", "suggestion"),
    [
        ("10.0.0.0/24", "10.0.0.0/24", "10.0.0.1/24"),
        ("ip:10.0.0.0/24", "10.0.0.0/24", "10.0.0.1/24"),
        ("10.2.3.0/30", "10.2.3.0/30", "10.2.3.1/30"),
        ("10.0.0.0/8", "10.0.0.0/8", "10.0.0.1/8"),
    ],
)
def test_network_address_is_refused(text: str, network: str, suggestion: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr(text)
    ip = network.split("/")[0]
    assert str(excinfo.value) == (
        f"{text}: {ip} is the network address of {network}; pick a host address such as {suggestion}"
    )


def test_documented_network_address_message() -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr("10.0.0.0/24")
    assert "10.0.0.0 is the network address of 10.0.0.0/24; pick a host address such as 10.0.0.1/24" in str(
        excinfo.value
    )


@pytest.mark.parametrize(
    ("text", "ip", "network", "suggestion"),
    [
        ("10.0.0.255/24", "10.0.0.255", "10.0.0.0/24", "10.0.0.1/24"),
        ("ip:10.0.0.255/24", "10.0.0.255", "10.0.0.0/24", "10.0.0.1/24"),
        ("10.2.3.3/30", "10.2.3.3", "10.2.3.0/30", "10.2.3.1/30"),
        ("10.0.1.255/23", "10.0.1.255", "10.0.0.0/23", "10.0.0.1/23"),
    ],
)
def test_broadcast_address_is_refused(text: str, ip: str, network: str, suggestion: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr(text)
    assert str(excinfo.value) == (
        f"{text}: {ip} is the broadcast address of {network}; pick a host address such as {suggestion}"
    )


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("127.0.0.5/8", "loopback"),
        ("127.1.2.3/24", "loopback"),
        ("224.0.0.5/24", "multicast"),
        ("239.1.1.1/16", "multicast"),
        ("0.0.0.1/24", "unspecified"),
        ("0.1.2.3/8", "unspecified"),
        ("169.254.1.1/16", "link-local"),
        ("169.254.1.1/24", "link-local"),
        ("169.1.1.1/8", "link-local"),
        ("240.0.0.1/24", "reserved"),
        ("255.255.255.254/24", "reserved"),
        ("ip:127.0.0.2/8", "loopback"),
    ],
)
def test_special_ranges_are_refused(text: str, kind: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr(text)
    message = str(excinfo.value)
    assert message.startswith(f"{text}: ")
    assert f"the {kind} range" in message
    assert "10.0.0.0/8" in message


def test_net_form_is_not_an_endpoint_address() -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_endpoint_cidr("net:10.2.0.0/16")
    message = str(excinfo.value)
    assert message.startswith("net:10.2.0.0/16 names a subnet")
    assert "ip:10.0.0.1/24" in message


def test_address_error_is_a_value_error() -> None:
    assert issubclass(AddressError, ValueError)


@pytest.mark.parametrize(
    "word",
    [
        "10.0.0.1/24", "ip:10.0.0.1/24", "net:10.2.0.0/16", "net:default", "ip:", "ip:garbage",
        "300.1.1.1/24", "10.0.0.1", "300.1.1.1", "10.0.0/24", "10/8", "10.0.0.1/", "1.2.3.4.5",
        "10.0.0.1.", "fd00::1/64", "fd00::1", "::1",
    ],
)
def test_looks_like_address(word: str) -> None:
    assert looks_like_address(word)


@pytest.mark.parametrize(
    "word",
    [
        "busybox", "ubuntu:22.04", "ubuntu", "localhost:5000/img", "localhost:5000/img:1.2",
        "10.0.0.1:5000/img", "registry.example.com/team/app:1.0", "alpine:3.19", "nginx@sha256:abcd",
        "1.2.3", "22.04", "-t", "--name", "", "10.0.0.1/24x", "beef:cafe", "iP:10.0.0.1/24",
        "١٠.0.0.1/24",
    ],
)
def test_does_not_look_like_address(word: str) -> None:
    assert not looks_like_address(word)


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.2.0.0/16", "10.2.0.0/16"),
        ("net:10.2.0.0/16", "10.2.0.0/16"),
        ("10.2.3.0/30", "10.2.3.0/30"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("192.168.0.0/24", "192.168.0.0/24"),
        (" 172.16.0.0/12", "172.16.0.0/12"),
    ],
)
def test_parse_subnet(text: str, network: str) -> None:
    assert parse_subnet(text) == IPv4Network(network)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.2.3.2/30", "10.2.3.2/30 has host bits set; did you mean 10.2.3.0/30?"),
        ("net:10.2.3.2/30", "10.2.3.2/30 has host bits set; did you mean 10.2.3.0/30?"),
        ("10.0.0.1/24", "10.0.0.1/24 has host bits set; did you mean 10.0.0.0/24?"),
        ("10.1.0.0/8", "10.1.0.0/8 has host bits set; did you mean 10.0.0.0/8?"),
    ],
)
def test_subnet_with_host_bits(text: str, message: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_subnet(text)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10.2.3.0/31", "too small for a network: use /30 or larger"),
        ("10.2.3.0/32", "too small for a network: use /30 or larger"),
        ("10.2.3.2/31", "too small for a network"),
        ("8.0.0.0/7", "too large for a network"),
        ("0.0.0.0/0", "too large for a network"),
        ("10.0.0.0/33", "is more than /32"),
        ("300.0.0.0/24", "is not a valid IPv4 CIDR (e.g. 10.2.0.0/16)"),
        ("10.2.0.0", "has no prefix length"),
        ("fd00::/64", "IPv4 only"),
        ("ip:10.2.0.0/16", "is not a valid IPv4 CIDR"),
        ("net:", "is not a valid IPv4 CIDR"),
        ("127.0.0.0/8", "is in the loopback range 127.0.0.0/8"),
        ("224.0.0.0/8", "is in the multicast range 224.0.0.0/4"),
        ("169.0.0.0/8", "overlaps the link-local range 169.254.0.0/16"),
        ("0.0.0.0/8", "unspecified"),
        ("240.0.0.0/8", "reserved"),
    ],
)
def test_bad_subnet(text: str, fragment: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_subnet(text)
    message = str(excinfo.value)
    assert text in message
    assert fragment in message


@pytest.mark.parametrize(
    ("a", "b", "conflict"),
    [
        ("10.0.0.0/24", "10.0.0.0/24", False),
        ("10.0.0.0/24", "10.0.1.0/24", False),
        ("10.0.0.0/16", "10.0.5.0/24", True),
        ("10.0.5.0/24", "10.0.0.0/16", True),
        ("10.0.0.0/8", "10.255.255.252/30", True),
        ("10.0.0.0/23", "10.0.1.0/24", True),
        ("10.0.0.0/24", "10.0.0.0/23", True),
        ("10.0.0.0/24", "192.168.0.0/24", False),
        ("10.0.0.0/30", "10.0.0.4/30", False),
    ],
)
def test_subnets_conflict(a: str, b: str, conflict: bool) -> None:
    assert OverlaySubnet(a).conflicts(ipaddress.IPv4Network(b)) is conflict
    assert OverlaySubnet(b).conflicts(ipaddress.IPv4Network(a)) is conflict
