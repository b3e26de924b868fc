"""The destination policy: internal addresses in every form, allow-lists, CONNECT ports."""

from __future__ import annotations

import pytest

from proxy_addons.core.destinations import DestinationPolicy, parse_network, parse_ports

DEFAULT = DestinationPolicy.from_specs([], [], own=["192.0.2.2", "2001:db8::5", "fe80::9%eth0"])

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:7f00:1", "loopback"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64
    ("2002:7f00:1::", "loopback"),  # 6to4
    ("::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("::ffff:169.254.169.254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("192.0.2.2", "proxy host"),
    ("::ffff:192.0.2.2", "proxy host"),
    ("2001:db8::5", "proxy host"),
    ("[::1]", "loopback"),
]


@pytest.mark.parametrize(("ip", "why"), REFUSED)
def test_refused(ip: str, why: str) -> None:
    reason = DEFAULT.refuses(ip)
    assert reason is not None and why in reason


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "10.0.0.1", "192.168.1.1", "2001:db8::1", "2606:4700::1"]
)
def test_ordinary_addresses_pass(ip: str) -> None:
    """Private networks are the corporate LAN a proxy serves: not refused (as Squid)."""
    assert DEFAULT.refuses(ip) is None


def test_names() -> None:
    assert DEFAULT.refuses_host("localhost") and DEFAULT.refuses_host("a.b.localhost")
    assert DEFAULT.refuses_host("example.test") is None
    assert DEFAULT.refuses_host("notlocalhost") is None
    assert DEFAULT.refuses("example.test") is None  # names are checked once resolved


def test_allow_destination_wins_in_every_form() -> None:
    p = DestinationPolicy.from_specs(["127.0.0.0/8", "[fd00:ec2::254]/128"], [])
    assert p.refuses("127.0.0.1") is None and p.refuses("::ffff:127.0.0.1") is None
    assert p.refuses("64:ff9b::7f00:1") is None and p.refuses_host("localhost") is None
    assert p.refuses("fd00:ec2::254") is None
    assert p.refuses("::1") is not None and p.refuses("169.254.169.254") is not None


def test_ports() -> None:
    assert parse_ports("443") == ((443, 443),)
    assert parse_ports(" 443, 8000-8100 ") == ((443, 443), (8000, 8100))
    p = DestinationPolicy.from_specs([], ["443", "8443,1000-2000"])
    assert p.connect_port_allowed(443) and p.connect_port_allowed(1500)
    assert not p.connect_port_allowed(22) and not DEFAULT.connect_port_allowed(8443)
    assert DEFAULT.connect_port_allowed(443)


@pytest.mark.parametrize("spec", ["", "0", "65536", "443,", "a", "10-5", "1-2-3", "-1", "443 8443"])
def test_bad_ports(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_ports(spec)


@pytest.mark.parametrize("spec", ["", "10.0.0.0/33", "host.example", "::1/129", "1.2.3"])
def test_bad_networks(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_network(spec)
