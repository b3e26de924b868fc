"""The PROXY protocol parser: what HAProxy sends is read, anything else is refused."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy_addons.core.proxyproto import (
    PREFIX_LENGTH,
    V2_HEAD_LENGTH,
    Command,
    HeaderKind,
    ProxyHeader,
    ProxyHeaderError,
    build_v2,
    header_kind,
    parse,
    parse_v1,
    parse_v2,
    v2_payload_length,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"

V1_GOOD = [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 8080\r\n", ("192.0.2.7", 51234)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n", ("2001:db8::7", 65535)),
    (b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n", ("::ffff:c000:207", 1)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
]

V1_BAD = [
    b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 8080\n",  # LF only
    b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 8080",  # no line end
    b"PROXY TCP4 192.0.2.7  198.51.100.1 51234 8080\r\n",  # two spaces
    b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",  # v6 address in TCP4
    b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",  # v4 address in TCP6
    b"PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n",  # leading zero (octal reading)
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",  # port out of range
    b"PROXY TCP4 192.0.2.7 198.51.100.1 080 2\r\n",  # leading zero port
    b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 2\r\n",
    b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
    b"PROXY tcp4 192.0.2.7 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 evil.example 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",
    b"PROXY TCP4 192.0.2.7\r\n198.51.100.1 1 2\r\n",
    b"PROXY TCP6 " + b"1" * 100 + b" ::1 1 2\r\n",  # over 107 bytes
]


@pytest.mark.parametrize(("line", "source"), V1_GOOD)
def test_v1_lines(line: bytes, source: tuple[str, int] | None) -> None:
    header = parse_v1(line)
    assert header.version is HeaderKind.V1 and header.command is Command.PROXY
    assert header.source == source
    assert parse(line + b"GET / HTTP/1.1\r\n") == (header, len(line))


@pytest.mark.parametrize("line", V1_BAD)
def test_v1_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)
    with pytest.raises(ProxyHeaderError):
        parse(line + b"x")


def test_v2_as_haproxy_sends_it() -> None:
    raw = build_v2(("192.0.2.7", 51234), ("198.51.100.1", 8080))
    header, n = parse(raw + b"CONNECT x:443 HTTP/1.1\r\n")
    assert n == len(raw) == V2_HEAD_LENGTH + 12
    assert header == ProxyHeader(
        HeaderKind.V2, Command.PROXY, ("192.0.2.7", 51234), ("198.51.100.1", 8080)
    )
    six = build_v2(("2001:db8::7", 1), ("2001:db8::1", 2))
    assert parse_v2(six).source == ("2001:db8::7", 1)


def test_v2_tlvs_are_skipped() -> None:
    raw = build_v2(("192.0.2.7", 1), ("198.51.100.1", 2))
    tlv = bytes([0x04]) + struct.pack("!H", 3) + b"abc"  # PP2_TYPE_NOOP
    with_tlv = raw[:14] + struct.pack("!H", 12 + len(tlv)) + raw[16:] + tlv
    assert parse_v2(with_tlv).source == ("192.0.2.7", 1)


def test_v2_local_and_unspecified_name_no_client() -> None:
    local = build_v2(("192.0.2.7", 1), ("198.51.100.1", 2), local=True)
    assert parse_v2(local).command is Command.LOCAL and parse_v2(local).source is None
    unspec = SIG + bytes([0x21, 0x00]) + b"\x00\x00"
    assert parse_v2(unspec).source is None
    unix = SIG + bytes([0x21, 0x31]) + struct.pack("!H", 216) + b"\x00" * 216
    assert parse_v2(unix).source is None


def v2(ver_cmd: int, fam: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return SIG + bytes([ver_cmd, fam]) + struct.pack("!H", n) + payload


V2_BAD = {
    "version 1 nibble": v2(0x11, 0x11, b"\x00" * 12),
    "version 3 nibble": v2(0x31, 0x11, b"\x00" * 12),
    "command 2": v2(0x22, 0x11, b"\x00" * 12),
    "family 4": v2(0x21, 0x41, b"\x00" * 12),
    "transport 3": v2(0x21, 0x13, b"\x00" * 12),
    "datagram": v2(0x21, 0x12, b"\x00" * 12),
    "v4 block short": v2(0x21, 0x11, b"\x00" * 11),
    "v6 block short": v2(0x21, 0x21, b"\x00" * 35),
    "length over payload": v2(0x21, 0x11, b"\x00" * 12, length=20),
    "huge length": v2(0x21, 0x11, b"\x00" * 12, length=60000),
    "bad signature": b"\r\n\r\n\x00\r\nQUIZ\n" + bytes([0x21, 0x11, 0, 12]) + b"\x00" * 12,
}


@pytest.mark.parametrize("name", sorted(V2_BAD))
def test_v2_malformed_headers_are_refused(name: str) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(V2_BAD[name])


@pytest.mark.parametrize(
    "first", [b"GET /", b"CONNE", b"\x16\x03\x01\x02\x00", b"\x05\x01\x00\x00\x00", b"proxy"]
)
def test_anything_else_is_not_a_header(first: bytes) -> None:
    """A trusted balancer's connection without a header is refused, not read as a client's."""
    with pytest.raises(ProxyHeaderError):
        header_kind(first)


def test_kind_from_prefix() -> None:
    assert header_kind(b"PROXY") is HeaderKind.V1
    assert header_kind(SIG[:PREFIX_LENGTH]) is HeaderKind.V2
    with pytest.raises(ProxyHeaderError):
        v2_payload_length(SIG[:15])


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_the_one_error(data: bytes) -> None:
    try:
        header, n = parse(data)
    except ProxyHeaderError:
        return
    assert 0 < n <= len(data)
    assert header.source is None or isinstance(header.source[1], int)


@given(st.binary(max_size=64))
def test_v1_prefix_with_any_tail(tail: bytes) -> None:
    with contextlib.suppress(ProxyHeaderError):
        parse(b"PROXY " + tail)
