"""Destinations a name resolves to, through a real `jectguard run` WITHOUT --allow-destination.

The destination policy (loopback, link-local, metadata, the proxy's own addresses) is
applied where the proxy resolves names (``addons/addresses.py``), so it holds for every
way a client names a server: SOCKS5 targets (by name and by address), CONNECT targets
and plain HTTP requests whose name resolves to loopback. The test host table makes
``good.test`` resolve to 127.0.0.1, where a byte-counting listener shows any leak.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ByteCounter, Proxy, start_proxy, status_of

IO_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def listener() -> Iterator[ByteCounter]:
    c = ByteCounter("127.0.0.1")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def socks_proxy(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    p = start_proxy(
        tmp_path_factory.mktemp("socks-closed"),
        "--sources",
        str(lists_dir / "sources.toml"),
        "--set",
        "mode=socks5",
        open_local=False,
    )
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def closed_proxy(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    p = start_proxy(
        tmp_path_factory.mktemp("regular-closed"),
        "--sources",
        str(lists_dir / "sources.toml"),
        "--connect-ports",
        "1-65535",  # ports open, destinations not
        open_local=False,
    )
    try:
        yield p
    finally:
        p.stop()


def read_response(s: socket.socket) -> bytes:
    """One HTTP/1 response with a Content-Length (or until close)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
        head, sep, body = out.partition(b"\r\n\r\n")
        length = next(
            (
                int(v)
                for n, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                if n.strip().lower() == b"content-length"
            ),
            None,
        )
        if sep and length is not None and len(body) >= length:
            break
    return out


def socks5_connect(proxy: Proxy, target: bytes, port: int) -> tuple[socket.socket, int]:
    """A SOCKS5 CONNECT (no auth); the socket and the reply code (0: connected)."""
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00" + target + struct.pack("!H", port))
    reply = s.recv(262)
    return s, (reply[1] if len(reply) > 1 else -1)


@pytest.mark.parametrize(
    "target",
    [
        b"\x03" + bytes([len(b"good.test")]) + b"good.test",  # a name that resolves to 127.0.0.1
        b"\x03" + bytes([len(b"localhost")]) + b"localhost",
        b"\x01" + socket.inet_aton("127.0.0.1"),
        b"\x01" + socket.inet_aton("127.0.0.2"),
    ],
    ids=["name", "localhost", "ipv4", "ipv4-other"],
)
def test_socks5_target_meets_the_destination_policy(
    socks_proxy: Proxy, listener: ByteCounter, target: bytes
) -> None:
    """Old code: SOCKS5 targets never met the policy; the loopback listener was reached."""
    before = listener.connections
    s, code = socks5_connect(socks_proxy, target, listener.port)
    with s:
        if code == 0:  # a lazy answer: whatever is sent must still go nowhere
            s.sendall(b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n")
            s.recv(4096)
    assert code != 0 or listener.connections == before
    assert listener.connections == before and b"GET /" not in listener.received
    assert "loopback" in socks_proxy.output() or "proxy host itself" in socks_proxy.output()


def test_connect_to_a_name_on_loopback_is_refused(
    closed_proxy: Proxy, listener: ByteCounter
) -> None:
    before = listener.connections
    with socket.create_connection(("127.0.0.1", closed_proxy.port), timeout=IO_TIMEOUT) as s:
        target = f"good.test:{listener.port}"
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = read_response(s)
    assert status_of(head) == 403, head[:300]
    assert b"stage=destination" in head and b"127.0.0.1 is" in head  # the reason is named
    assert listener.connections == before


def test_plain_request_to_a_name_on_loopback_is_refused(
    closed_proxy: Proxy, listener: ByteCounter
) -> None:
    before = listener.connections
    with socket.create_connection(("127.0.0.1", closed_proxy.port), timeout=IO_TIMEOUT) as s:
        url = f"http://good.test:{listener.port}/x"
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: good.test\r\nAccept: */*\r\n\r\n".encode())
        head = read_response(s)
    assert status_of(head) == 403, head[:300]
    assert b"stage=destination" in head and b"127.0.0.1 is" in head
    assert listener.connections == before
