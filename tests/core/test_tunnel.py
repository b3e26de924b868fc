"""The tunnel classifier: every prefix of a ClientHello or request line waits, the rest is refused."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_addons.core.tunnel import MAX_CLIENT_HELLO, MAX_REQUEST_LINE, Content, classify


def client_hello(server_name: str = "example.test") -> bytes:
    """The first flight of a real TLS client (Python's ssl), as it would enter a tunnel."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def refragment(hello: bytes, size: int) -> bytes:
    """The same handshake bytes in records of at most ``size`` bytes (legal TLS)."""
    header, body = hello[:5], hello[5:]
    out = b""
    for i in range(0, len(body), size):
        chunk = body[i : i + size]
        out += header[:3] + len(chunk).to_bytes(2, "big") + chunk
    return out


HELLO = client_hello()
REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n",
    b"GET http://example.test/x HTTP/1.1\r\n",
    b"POST /submit?q=1 HTTP/1.0\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"get /lower HTTP/1.1\r\n",  # a token is a token: the HTTP layer judges it
    b"GET / HTTP/1.1\n",  # bare LF
    b"\r\nGET / HTTP/1.1\r\n",  # RFC 9112 2.2: a leading empty line
    b"GET /\xff\xfe HTTP/1.1\r\n",  # obs-text in the target
]


def test_complete_client_hello_is_tls() -> None:
    assert classify(HELLO).content is Content.TLS
    assert classify(HELLO + b"more records").content is Content.TLS


@pytest.mark.parametrize("size", [1, 7, 100])
def test_client_hello_in_many_records_is_tls(size: int) -> None:
    data = refragment(HELLO, size)
    assert classify(data).content is Content.TLS
    for cut in range(len(data)):
        assert classify(data[:cut]).content is Content.MORE, cut


def test_every_prefix_of_a_client_hello_waits() -> None:
    # mitmproxy itself reads 1-2 bytes as "not TLS" and relays the connection raw
    for cut in range(len(HELLO)):
        assert classify(HELLO[:cut]).content is Content.MORE, cut


@pytest.mark.parametrize("request_line", REQUESTS)
def test_request_line_and_every_prefix(request_line: bytes) -> None:
    line_end = request_line.index(b"\n", 2 if request_line.startswith(b"\r\n") else 0) + 1
    assert classify(request_line[:line_end]).content is Content.HTTP
    assert classify(request_line).content is Content.HTTP
    for cut in range(line_end):
        assert classify(request_line[:cut]).content is Content.MORE, request_line[:cut]


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x16\x04\x00",  # no such TLS record version
        b"\x16\x02",
        b"\x17\x03\x03\x00\x10",  # application data first
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello
        b"\x80\x2e\x01\x00\x02",  # SSLv2-style hello
        b"\x16\x03\x01\x40\x01",  # a record longer than TLS allows
        b"GET /\r\n",  # HTTP/0.9: no version, no headers, no Host to check
        b"GET\t/ HTTP/1.1\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET / HTTP/1.1 \r\n",
        b"GET / HTTPS/1.1\r\n",
        b"GET / HTTP/x.1\r\n",
        b"GET / HTTP/1.1\r\r",
        b"G\x00T / HTTP/1.1\r\n",
        b"\x00\x00\x00\x00",
        b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n",  # empty lines beyond the limit
        b"A" * 40 + b" / HTTP/1.1\r\n",
        b"\x05\x01\x00",  # SOCKS5 greeting inside a tunnel
        b"{json}",
    ],
)
def test_neither_tls_nor_http_is_unknown(data: bytes) -> None:
    c = classify(data)
    assert c.content is Content.UNKNOWN and c.reason
    assert c.decided


def test_client_hello_over_the_limit_is_unknown() -> None:
    big = (MAX_CLIENT_HELLO + 1 - 4).to_bytes(3, "big")
    data = b"\x16\x03\x01\x40\x00\x01" + big
    assert classify(data).content is Content.UNKNOWN
    assert classify(HELLO, max_client_hello=len(HELLO) - 6).content is Content.UNKNOWN


def test_request_line_over_the_limit_is_unknown() -> None:
    long_target = b"GET /" + b"a" * MAX_REQUEST_LINE
    assert classify(long_target).content is Content.UNKNOWN
    assert classify(b"GET /" + b"a" * 100, max_request_line=50).content is Content.UNKNOWN


def test_nothing_yet_waits() -> None:
    assert classify(b"").content is Content.MORE
    assert not classify(b"").decided


# -- properties: how the bytes are split never changes the answer ------------------------

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STARTS = [HELLO, refragment(HELLO, 50), *REQUESTS, b"SSH-2.0-x\r\n", b"\x16\x03\x01\x00"]


@FAST
@given(
    data=st.one_of(st.binary(max_size=300), st.sampled_from(STARTS)), tail=st.binary(max_size=50)
)
def test_once_decided_more_bytes_never_change_the_answer(data: bytes, tail: bytes) -> None:
    """Classification is monotonic: every prefix waits or already has the final answer, so a
    client cannot get a different layer by choosing where to cut its first bytes."""
    final = classify(data + tail)
    for cut in range(len(data) + len(tail) + 1):
        c = classify((data + tail)[:cut])
        assert c.content is Content.MORE or c.content is final.content, (cut, c, final)
