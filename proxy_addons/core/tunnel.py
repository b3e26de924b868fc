"""What a tunnel carries, from its first bytes: a TLS ClientHello, an HTTP/1 request, or neither.

A tunnel (the bytes after ``CONNECT``, or a transparent connection) may only be
handed to a layer that checks it: TLS (the SNI, then the decrypted requests) or
HTTP (every request on the connection). mitmproxy's own detection guesses from
whatever arrived first, so ``\\x16`` alone or ``GE`` alone looks like "not TLS,
not HTTP" and the connection becomes a raw relay. :func:`classify` answers
``MORE`` for every prefix of a valid ClientHello or request line, so the caller
waits (with a deadline) instead of guessing, and ``UNKNOWN`` only for bytes that
can never become either.

Pure: bytes in, a value out; no mitmproxy, no sockets.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from .canon import canonical_host

# A ClientHello is a few hundred bytes; post-quantum key shares make it ~2 KiB. Four
# full TLS records is far beyond any real one, and bounds what a tunnel may buffer.
MAX_CLIENT_HELLO: Final = 4 * 16384
# The TLS record layer's own limit on one record's payload (RFC 8446 5.1).
MAX_TLS_RECORD: Final = 16384
# Longest request line accepted while classifying: jectguard checks URLs up to 64 KiB
# (canon.MAX_URL_LENGTH); a longer line is refused, never relayed.
MAX_REQUEST_LINE: Final = 64 * 1024 + 64
# Longest method token (the longest registered method is 17 characters).
MAX_METHOD_LENGTH: Final = 32
# RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line.
MAX_LEADING_EMPTY_LINES: Final = 4

_TLS_HANDSHAKE: Final = 0x16
_CLIENT_HELLO: Final = 0x01
# RFC 9110 5.6.2 tchar
_TCHAR: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# request-target: any visible byte (and obs-text); never a space or a control
_TARGET_BYTE: Final = frozenset(range(0x21, 0x7F)) | frozenset(range(0x80, 0x100))
_VERSION_PREFIX: Final = b"HTTP/"


class Content(enum.StrEnum):
    TLS = "tls"  # a complete TLS ClientHello
    HTTP = "http"  # a complete HTTP/1 request line
    MORE = "more"  # a proper prefix of either: wait for more bytes
    UNKNOWN = "unknown"  # can never become either: refuse


@dataclass(frozen=True, slots=True)
class Classification:
    content: Content
    reason: str = ""  # why UNKNOWN (for the log line), or what was recognized

    @property
    def decided(self) -> bool:
        return self.content is not Content.MORE


_MORE: Final = Classification(Content.MORE)


def classify(
    data: bytes,
    *,
    max_client_hello: int = MAX_CLIENT_HELLO,
    max_request_line: int = MAX_REQUEST_LINE,
) -> Classification:
    """Classify a tunnel's first bytes (everything the client sent so far)."""
    if not data:
        return _MORE
    if data[0] == _TLS_HANDSHAKE:
        return _classify_tls(data, max_client_hello)
    return _classify_http(data, max_request_line)


def _classify_tls(data: bytes, limit: int) -> Classification:
    """Walk TLS records until the first handshake message (a ClientHello) is whole."""
    hello = bytearray()
    pos = 0
    need: int | None = None  # the ClientHello's length, once its header is in
    while True:
        header = data[pos : pos + 5]
        # Each record: type 0x16, version 3.x (x <= 3, as mitmproxy's TLS detection), length.
        if len(header) >= 1 and header[0] != _TLS_HANDSHAKE:
            return Classification(Content.UNKNOWN, "TLS record that is not a handshake")
        if len(header) >= 2 and header[1] != 0x03:
            return Classification(Content.UNKNOWN, "not a TLS record version")
        if len(header) >= 3 and header[2] > 0x03:
            return Classification(Content.UNKNOWN, "not a TLS record version")
        if len(header) < 5:
            return _MORE
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > MAX_TLS_RECORD:
            return Classification(Content.UNKNOWN, f"TLS record of {length} bytes")
        body = data[pos + 5 : pos + 5 + length]
        hello += body
        if need is None and len(hello) >= 1 and hello[0] != _CLIENT_HELLO:
            return Classification(Content.UNKNOWN, "TLS handshake that is not a ClientHello")
        if need is None and len(hello) >= 4:
            need = 4 + int.from_bytes(hello[1:4], "big")
            if need > limit:
                return Classification(Content.UNKNOWN, f"ClientHello of {need} bytes")
        if need is not None and len(hello) >= need:
            return Classification(Content.TLS, "ClientHello")
        if len(body) < length:
            return _MORE  # this record is not all here yet
        pos += 5 + length


def _classify_http(data: bytes, limit: int) -> Classification:
    """A request line ``METHOD SP target SP HTTP/d.d CRLF``, or a prefix of one."""
    n = len(data)
    i = 0
    for _ in range(MAX_LEADING_EMPTY_LINES):
        if data.startswith(b"\r\n", i):
            i += 2
        elif data.startswith(b"\n", i):
            i += 1
        else:
            break
    if i == n or data[i:] == b"\r":
        return _MORE
    start = i
    while i < n and data[i] in _TCHAR:
        i += 1
    if i - start > MAX_METHOD_LENGTH:
        return Classification(Content.UNKNOWN, "method token too long")
    if i == n:
        return _MORE
    if i == start or data[i] != 0x20:
        return Classification(Content.UNKNOWN, "neither TLS nor an HTTP request line")
    i += 1
    target = i
    while i < n and data[i] in _TARGET_BYTE:
        i += 1
    if i > limit:
        return Classification(Content.UNKNOWN, f"request line longer than {limit} bytes")
    if i == n:
        return _MORE
    if i == target or data[i] != 0x20:
        return Classification(Content.UNKNOWN, "not an HTTP request line")
    i += 1
    # "HTTP/" DIGIT "." DIGIT, then CRLF (or a bare LF, which HTTP/1 parsers accept)
    expected = _VERSION_PREFIX + b"0.0\r\n"
    for k, b in enumerate(data[i : i + len(expected)]):
        want = expected[k]
        if want == 0x30:  # a digit
            ok = 0x30 <= b <= 0x39
        elif want == 0x0D:
            if b == 0x0A:
                return Classification(Content.HTTP, "request line")
            ok = b == 0x0D
        else:
            ok = b == want
        if not ok:
            return Classification(Content.UNKNOWN, "not an HTTP version")
    if n - i >= len(expected):
        return Classification(Content.HTTP, "request line")
    return _MORE


def parse_destination(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) as (canonical host, port); raises ``ValueError``."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: {text[:100]!r}")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text[:100]!r}")
    return canonical_host(host), int(port)


__all__ = [
    "MAX_CLIENT_HELLO",
    "MAX_REQUEST_LINE",
    "Classification",
    "Content",
    "classify",
    "parse_destination",
]
