"""Red-team findings against a real `jectguard run`: each test is one bypass shape.

An HTTP/2 request carries its target in ``:path``. RFC 9113 8.3.1 makes it origin-form,
but servers differ on an absolute one (Go's net/http parses it with
``url.ParseRequestURI`` and keeps its host in ``Request.URL``): a front that routes on
it reaches a host the proxy never checked. The proxy refuses what it cannot read as
origin-form, as it does for HTTP/1 (where mitmproxy reads the absolute-form's host).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from .conftest import ByteCounter, Proxy, client_ssl, make_cert

IO_TIMEOUT = 5.0


class H2Origin:
    """A TLS origin on 127.0.0.1 that speaks only HTTP/2 and records each stream's headers."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.seen: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="h2origin", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(Exception), conn:
            conn.settimeout(IO_TIMEOUT)
            tls = self.ctx.wrap_socket(conn, server_side=True)
            self._speak(tls)
            tls.close()

    def _speak(self, tls: ssl.SSLSocket) -> None:
        with contextlib.suppress(Exception):
            config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
            h2c = h2.connection.H2Connection(config)
            h2c.initiate_connection()
            tls.sendall(h2c.data_to_send())
            while data := tls.recv(65536):
                for ev in h2c.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        self.seen.append({str(k): str(v) for k, v in ev.headers})
                        h2c.send_headers(
                            ev.stream_id, [(":status", "200"), ("content-length", "2")]
                        )
                        h2c.send_data(ev.stream_id, b"ok", end_stream=True)
                tls.sendall(h2c.data_to_send())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def h2_origin(tmp_path: Path) -> Iterator[H2Origin]:
    cert, key = make_cert(tmp_path)
    o = H2Origin(cert, key)
    try:
        yield o
    finally:
        o.close()


def h2_request(proxy: Proxy, connect: str, headers: list[tuple[str, str]]) -> str:
    """CONNECT, TLS (ALPN h2) with the proxy's CA, one HTTP/2 request: its :status or the end."""
    ctx = client_ssl(proxy.ca)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT) as s:
        s.sendall(f"CONNECT {connect} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        with ctx.wrap_socket(s, server_hostname=connect.rsplit(":", 1)[0]) as tls:
            assert tls.selected_alpn_protocol() == "h2"
            config = h2.config.H2Configuration(
                client_side=True, header_encoding="utf-8", validate_outbound_headers=False
            )
            h2c = h2.connection.H2Connection(config)
            h2c.initiate_connection()
            h2c.send_headers(h2c.get_next_available_stream_id(), headers, end_stream=True)
            tls.sendall(h2c.data_to_send())
            with contextlib.suppress(TimeoutError, ssl.SSLError, OSError):
                while data := tls.recv(65536):
                    for ev in h2c.receive_data(data):
                        if isinstance(ev, h2.events.ResponseReceived):
                            return dict(ev.headers)[":status"]
                        if isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                            return "closed"
                    tls.sendall(h2c.data_to_send())
    return "closed"


@pytest.mark.parametrize(
    "path",
    [
        "https://evil.test/x",
        "https://EVIL.test.:443/x",
        "http://evil.test/x",
        "evil.test/x",
        "https://good.test/bad/x.js",
    ],
)
def test_h2_path_that_is_not_origin_form_is_refused(
    proxy: Proxy, h2_origin: H2Origin, path: str
) -> None:
    connect = f"good.test:{h2_origin.port}"
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", connect), (":path", path)]
    status = h2_request(proxy, connect, headers)
    time.sleep(0.1)  # the origin records in a thread: give a leak the chance to show
    assert h2_origin.seen == [], h2_origin.seen
    assert status in ("400", "403", "closed")


def test_h2_origin_form_request_still_reaches_the_origin(proxy: Proxy, h2_origin: H2Origin) -> None:
    connect = f"good.test:{h2_origin.port}"
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", connect), (":path", "/x")]
    assert h2_request(proxy, connect, headers) == "200"
    assert [s[":path"] for s in h2_origin.seen] == ["/x"]


# -- a ClientHello relayed undecrypted (--no-intercept) ----------------------------------


def client_hello(server_names: list[list[bytes]]) -> bytes:
    """A real ClientHello (Python's ssl) with one server_name extension per item, as given."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    with contextlib.suppress(ssl.SSLWantReadError):
        ctx.wrap_bio(incoming, outgoing, server_hostname="sni.invalid").do_handshake()
    record = outgoing.read()
    body = record[9:]  # after the record header (5) and the handshake header (4)
    at = 2 + 32  # version, random
    at += 1 + body[at]  # session id
    at += 2 + int.from_bytes(body[at : at + 2])  # cipher suites
    at += 1 + body[at]  # compression methods
    end = at + 2 + int.from_bytes(body[at : at + 2])
    exts, at = [], at + 2
    while at < end:
        kind, size = int.from_bytes(body[at : at + 2]), int.from_bytes(body[at + 2 : at + 4])
        exts.append((kind, body[at + 4 : at + 4 + size]))
        at += 4 + size
    names = []
    for group in server_names:
        items = b"".join(b"\x00" + len(n).to_bytes(2) + n for n in group)
        names.append((0, len(items).to_bytes(2) + items))
    kept = names + [(k, d) for k, d in exts if k != 0]
    ext_bytes = b"".join(k.to_bytes(2) + len(d).to_bytes(2) + d for k, d in kept)
    start = end - sum(4 + len(d) for _, d in exts) - 2  # where the extensions' length is
    new_body = body[:start] + len(ext_bytes).to_bytes(2) + ext_bytes
    handshake = b"\x01" + len(new_body).to_bytes(3) + new_body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2) + handshake


@pytest.mark.parametrize(
    "names",
    [
        [[b"good.test"], [b"evil.test"]],  # two extensions: a front may route on the last
        [[b"evil.test"], [b"good.test"]],
        [[b"good.test", b"evil.test"]],  # two names in one extension
    ],
)
def test_passthrough_hello_with_more_than_one_server_name_is_refused(
    proxy_passthrough: Proxy, listener: ByteCounter, names: list[list[bytes]]
) -> None:
    with socket.create_connection(("127.0.0.1", proxy_passthrough.port), timeout=IO_TIMEOUT) as s:
        s.sendall(f"CONNECT cdn.test:{listener.port} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(client_hello(names))
        with contextlib.suppress(TimeoutError, OSError):
            while s.recv(65536):
                pass
    time.sleep(0.3)  # the listener records in a thread: give a leak the chance to show
    assert listener.received == b""


def test_passthrough_hello_with_one_allowed_name_is_relayed(
    proxy_passthrough: Proxy, listener: ByteCounter
) -> None:
    hello = client_hello([[b"good.test"]])
    with socket.create_connection(("127.0.0.1", proxy_passthrough.port), timeout=IO_TIMEOUT) as s:
        s.sendall(f"CONNECT cdn.test:{listener.port} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(hello)
        deadline = time.monotonic() + IO_TIMEOUT
        while len(listener.received) < len(hello) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert listener.received == hello
