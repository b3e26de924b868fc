"""The PROXY protocol header (HAProxy's, versions 1 and 2): who the client really is.

A load balancer that relays TCP opens each connection to the proxy with one
header naming the client's address; the proxy then sees the balancer as its
peer. Only a configured balancer may send it (anyone else could name any
address), and from a configured balancer it is required: a connection without
one is refused, never guessed at.

Pure: bytes in, a :class:`ProxyHeader` or :class:`ProxyHeaderError` out. The
reader reads in two steps, exactly the header's bytes and no more, so what the
client sent after it stays in the stream for the proxy:

- :func:`header_kind` on the first :data:`PREFIX_LENGTH` bytes says which version;
- version 1: a line up to :data:`V1_MAX_LENGTH` bytes ending in CRLF, :func:`parse_v1`;
- version 2: :data:`V2_HEAD_LENGTH` bytes, :func:`v2_payload_length`, then that many
  more, :func:`parse_v2`.

Specification: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Final

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY"
# Enough bytes to tell the versions apart: "PROXY" or the start of the v2 signature.
PREFIX_LENGTH: Final = 5
# The specification's bound for a v1 line, CRLF included ("worst case" TCP6 line).
V1_MAX_LENGTH: Final = 107
# Signature (12), version and command (1), family and transport (1), length (2).
V2_HEAD_LENGTH: Final = 16
# HAProxy sends addresses and a few TLVs; a balancer that sends kilobytes is broken.
V2_MAX_PAYLOAD: Final = 2048

_V4_BLOCK: Final = struct.Struct("!4s4sHH")
_V6_BLOCK: Final = struct.Struct("!16s16sHH")
_V1_RE: Final = re.compile(
    rb"PROXY (?:UNKNOWN[^\r\n]*|(TCP4|TCP6) ([0-9a-fA-F.:]+) ([0-9a-fA-F.:]+) "
    rb"(0|[1-9][0-9]{0,4}) (0|[1-9][0-9]{0,4}))\r\n"
)

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol header: the connection must be closed."""


class Command(StrEnum):
    PROXY = "proxy"  # relayed for a client: the source is the client
    LOCAL = "local"  # the balancer's own connection (a health check): no client


class HeaderKind(IntEnum):
    V1 = 1
    V2 = 2


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. ``source`` is None when it names no address (LOCAL, UNKNOWN, UNIX)."""

    version: HeaderKind
    command: Command
    source: Address | None
    destination: Address | None


def header_kind(prefix: bytes) -> HeaderKind:
    """Which header starts with these :data:`PREFIX_LENGTH` bytes; error for anything else."""
    if prefix == V1_PREFIX:
        return HeaderKind.V1
    if prefix == V2_SIGNATURE[:PREFIX_LENGTH]:
        return HeaderKind.V2
    raise ProxyHeaderError("the connection does not start with a PROXY protocol header")


def _ip(raw: bytes, version: int) -> str:
    try:
        ip = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"not an IP address: {raw[:64]!r}") from None
    if ip.version != version:
        raise ProxyHeaderError(f"not an IPv{version} address: {raw[:64]!r}")
    return str(ip)


def parse_v1(line: bytes) -> ProxyHeader:
    """A whole version 1 line, CRLF included (``PROXY TCP4 1.2.3.4 5.6.7.8 1234 80\\r\\n``)."""
    if len(line) > V1_MAX_LENGTH:
        raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
    m = _V1_RE.fullmatch(line)
    if m is None:
        raise ProxyHeaderError(f"malformed PROXY v1 line: {line[:V1_MAX_LENGTH]!r}")
    proto, src, dst, sport, dport = m.groups()
    if proto is None:
        return ProxyHeader(HeaderKind.V1, Command.PROXY, None, None)
    version = 4 if proto == b"TCP4" else 6
    ports = int(sport), int(dport)
    if max(ports) > 65535:
        raise ProxyHeaderError("PROXY v1 port out of range")
    return ProxyHeader(
        HeaderKind.V1,
        Command.PROXY,
        (_ip(src, version), ports[0]),
        (_ip(dst, version), ports[1]),
    )


def v2_payload_length(head: bytes) -> int:
    """How many bytes follow the :data:`V2_HEAD_LENGTH`-byte head; error for a bad head."""
    if len(head) != V2_HEAD_LENGTH or not head.startswith(V2_SIGNATURE):
        raise ProxyHeaderError("malformed PROXY v2 signature")
    if head[12] >> 4 != 2:
        raise ProxyHeaderError(f"unsupported PROXY protocol version {head[12] >> 4}")
    if head[12] & 0x0F > 1:
        raise ProxyHeaderError(f"unknown PROXY v2 command {head[12] & 0x0F}")
    length = int.from_bytes(head[14:16], "big")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes (at most {V2_MAX_PAYLOAD})")
    return length


def parse_v2(header: bytes) -> ProxyHeader:
    """A whole version 2 header: the 16-byte head and its payload (TLVs are skipped)."""
    length = v2_payload_length(header[:V2_HEAD_LENGTH])
    payload = header[V2_HEAD_LENGTH:]
    if len(payload) != length:
        raise ProxyHeaderError(f"PROXY v2 header says {length} bytes, got {len(payload)}")
    command = Command.LOCAL if header[12] & 0x0F == 0 else Command.PROXY
    family, transport = header[13] >> 4, header[13] & 0x0F
    if family > 3 or transport > 2:
        raise ProxyHeaderError(f"unknown PROXY v2 address family {header[13]:#04x}")
    if command is Command.LOCAL or family in (0, 3):  # no address, or a UNIX socket's
        return ProxyHeader(HeaderKind.V2, command, None, None)
    if transport != 1:
        raise ProxyHeaderError("PROXY v2 header for a datagram or unspecified transport")
    block = _V4_BLOCK if family == 1 else _V6_BLOCK
    if length < block.size:
        raise ProxyHeaderError("PROXY v2 address block is cut short")
    src, dst, sport, dport = block.unpack_from(payload)
    return ProxyHeader(
        HeaderKind.V2,
        command,
        (str(ipaddress.ip_address(src)), sport),
        (str(ipaddress.ip_address(dst)), dport),
    )


def parse(data: bytes) -> tuple[ProxyHeader, int]:
    """The header at the start of ``data`` and its length in bytes (all of it must be there)."""
    kind = header_kind(data[:PREFIX_LENGTH])
    if kind is HeaderKind.V1:
        end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end < 0:
            raise ProxyHeaderError(f"no CRLF within {V1_MAX_LENGTH} bytes of a PROXY v1 line")
        return parse_v1(data[: end + 2]), end + 2
    total = V2_HEAD_LENGTH + v2_payload_length(data[:V2_HEAD_LENGTH])
    if len(data) < total:
        raise ProxyHeaderError("PROXY v2 header is cut short")
    return parse_v2(data[:total]), total


def build_v2(source: Address, destination: Address, *, local: bool = False) -> bytes:
    """A version 2 header for a TCP connection (tests and tools; HAProxy builds its own)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be the same IP version")
    block, family = (_V4_BLOCK, 0x11) if src.version == 4 else (_V6_BLOCK, 0x21)
    payload = block.pack(src.packed, dst.packed, source[1], destination[1])
    return (
        V2_SIGNATURE
        + bytes([0x20 if local else 0x21, family])
        + struct.pack("!H", len(payload))
        + payload
    )


__all__ = [
    "PREFIX_LENGTH",
    "V1_MAX_LENGTH",
    "V2_HEAD_LENGTH",
    "Command",
    "HeaderKind",
    "ProxyHeader",
    "ProxyHeaderError",
    "build_v2",
    "header_kind",
    "parse",
    "parse_v1",
    "parse_v2",
    "v2_payload_length",
]
