"""IPv4 addresses carried in IPv6 ones are checked as that IPv4, at every stage (the engine)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from proxy_addons.core.authority import request_url
from proxy_addons.core.embedding import carried_ipv4, parse_nat64_prefix
from proxy_addons.core.engine import Action, Engine
from proxy_addons.core.formats import parse_list
from proxy_addons.core.model import ListSpec

V4 = ipaddress.IPv4Address("198.51.100.7")


def nat64(prefix: str, v4: ipaddress.IPv4Address = V4) -> str:
    """RFC 6052 2.2: the IPv4 after the prefix, skipping bits 64-71."""
    net = ipaddress.IPv6Network(prefix)
    out = bytearray(net.network_address.packed)
    i, src = net.prefixlen // 8, v4.packed
    for b in src:
        if i == 8:
            i += 1
        out[i] = b
        i += 1
    return str(ipaddress.IPv6Address(bytes(out)))


def teredo(client: ipaddress.IPv4Address, server: str = "65.54.227.120") -> str:
    """RFC 4380 4: 2001:0:<server>:<flags>:<port ^ 0xffff>:<client ^ 0xffffffff>."""
    s = int(ipaddress.IPv4Address(server))
    c = int(client) ^ 0xFFFFFFFF
    return str(
        ipaddress.IPv6Address((0x20010000 << 96) | (s << 64) | (0x8000 << 48) | (0x63BF << 32) | c)
    )


CARRIERS = [
    ("::ffff:198.51.100.7", "mapped"),
    ("::198.51.100.7", "compatible"),
    ("2002:c633:6407::", "6to4"),
    ("2002:c633:6407:1234:5678::9", "6to4 with subnet"),
    (nat64("64:ff9b::/96"), "well-known NAT64"),
    (nat64("64:ff9b:1::/48"), "local-use NAT64 /48"),
    (nat64("64:ff9b:1:2::/64"), "local-use NAT64 /64"),
    (nat64("64:ff9b:1:2:3:4::/96"), "local-use NAT64 /96"),
    (teredo(V4), "Teredo client"),
    ("2001:db8:1:2:0:5efe:c633:6407", "ISATAP"),
    ("fe80::200:5efe:198.51.100.7", "ISATAP, universal bit"),
]


@pytest.mark.parametrize(("ip", "name"), CARRIERS, ids=[c[1] for c in CARRIERS])
def test_carried_ipv4(ip: str, name: str) -> None:
    assert V4 in carried_ipv4(ipaddress.IPv6Address(ip))


@pytest.mark.parametrize(
    "prefix",
    [
        "2001:db8:64::/96",
        "2001:db8::/32",
        "2001:db8:100::/40",
        "2001:db8:122::/48",
        "2001:db8:122:300::/56",
        "2001:db8:122:344::/64",
    ],
)
def test_configured_nat64_prefixes(prefix: str) -> None:
    ip = ipaddress.IPv6Address(nat64(prefix))
    net = parse_nat64_prefix(prefix)
    assert V4 in carried_ipv4(ip, [net])
    if ip not in ipaddress.IPv6Network("2001::/32"):
        assert V4 not in carried_ipv4(ip)


@pytest.mark.parametrize(
    "ip", ["::", "::1", "2001:db8::1", "fd00::2", "fe80::1", "2606:4700::1111"]
)
def test_ordinary_ipv6_carries_nothing(ip: str) -> None:
    assert carried_ipv4(ipaddress.IPv6Address(ip)) == ()


@pytest.mark.parametrize("bad", ["2001:db8::/33", "2001:db8::1/96", "not-a-net", "10.0.0.0/8"])
def test_bad_nat64_prefix(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_nat64_prefix(bad)


@pytest.fixture
def engine() -> Iterator[Engine]:
    urls = parse_list("http://192.0.2.9/bad/\nhttp://[2001:db8::5]/bad/\n", "urls")
    ips = parse_list("198.51.100.7\n", "cidr")
    e, _, _ = Engine.from_lists([(ListSpec(name="urls"), urls), (ListSpec(name="ips"), ips)])
    yield e
    Engine.nat64 = ()


@pytest.mark.parametrize(("ip", "name"), CARRIERS, ids=[c[1] for c in CARRIERS])
def test_engine_checks_the_carried_ipv4_everywhere(engine: Engine, ip: str, name: str) -> None:
    assert engine.check_host(ip).action is Action.BLOCK
    assert engine.check_host(f"[{ip}]").action is Action.BLOCK
    v = engine.check_url(f"http://[{ip}]:8080/x")
    assert v.action is Action.BLOCK and v.input == f"http://[{ip}]:8080/x"


def test_engine_url_rules_apply_to_the_carried_ipv4(engine: Engine) -> None:
    carrier = nat64("64:ff9b:1::/48", ipaddress.IPv4Address("192.0.2.9"))
    assert engine.check_url(f"http://[{carrier}]/bad/x").action is Action.BLOCK
    assert engine.check_url(f"http://[{carrier}]/good").action is Action.PASS


def test_engine_configured_nat64(engine: Engine) -> None:
    carrier = nat64("2001:db8:64::/96")
    assert engine.check_host(carrier).action is Action.PASS
    Engine.nat64 = (parse_nat64_prefix("2001:db8:64::/96"),)
    assert engine.check_host(carrier).action is Action.BLOCK


def test_ipv6_url_with_brackets_keeps_url_rules(engine: Engine) -> None:
    """mitmproxy's Request.url is ``http://2001:db8::5:8080/bad/x``: no parser reads that."""
    url = request_url("http", "2001:db8::5", 8080, "/bad/x")
    assert url == "http://[2001:db8::5]:8080/bad/x"
    assert engine.check_url(url).action is Action.BLOCK
    assert engine.check_url("http://2001:db8::5:8080/bad/x").action is Action.ERROR
    assert request_url("https", "example.test", 443, "/") == "https://example.test/"
    assert request_url("http", "[::1]", 81, "/") == "http://[::1]:81/"
