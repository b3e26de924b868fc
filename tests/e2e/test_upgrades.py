"""A server's 101 Switching Protocols never turns a connection into an unchecked relay.

After a 101 that is not a WebSocket mitmproxy reads, it relays raw bytes: every
request that follows on that connection (HTTP/1 after ``Upgrade: foo``, HTTP/2 after
``h2c``, or a WebSocket version mitmproxy does not speak) would reach the server with
no check. The proxy refuses such a 101 (502, connection closed), in every mode, and
a WebSocket it reads still works.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import threading
from collections.abc import Iterator

import pytest

from .conftest import Proxy, status_of

IO_TIMEOUT = 5.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What a client sends once the connection is "switched": a request for a listed host
# and one for a listed URL. None of it may reach the server.
SMUGGLED = (
    b"GET /payload.exe HTTP/1.1\r\nHost: evil.test\r\n\r\n"
    b"GET /bad/x.exe HTTP/1.1\r\nHost: good.test\r\n\r\n"
)


class UpgradingOrigin:
    """Answers 101 to any request with an Upgrade header, then records every byte after it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.after_switch = b""
        self.switched = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="upgrader", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(IO_TIMEOUT)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
            }
            upgrade = headers.get(b"upgrade")
            if upgrade is None:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                return
            answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            answer += b"Upgrade: " + upgrade.split(b",")[0].strip() + b"\r\n"
            key = headers.get(b"sec-websocket-key")
            if key is not None:
                accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
                answer += b"Sec-WebSocket-Accept: " + accept + b"\r\n"
            self.switched += 1  # before the answer: a client that has it may look at once
            conn.sendall(answer + b"\r\n")
            received = rest
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    received += chunk
            self.after_switch += received

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def upgrader() -> Iterator[UpgradingOrigin]:
    o = UpgradingOrigin()
    try:
        yield o
    finally:
        o.close()


def _exchange(sock: socket.socket, first: bytes) -> tuple[bytes, bytes]:
    """Send the upgrade request, read the answer, then send SMUGGLED; (answer, the rest)."""
    sock.sendall(first)
    answer = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    rest = b""
    with contextlib.suppress(OSError):
        sock.sendall(SMUGGLED)
        while chunk := sock.recv(65536):
            rest += chunk
    return answer, rest


def _upgrade_request(
    port: int, upgrade: str, *, absolute: bool = True, ws_version: str = ""
) -> bytes:
    target = f"http://good.test:{port}/" if absolute else "/"
    extra = ""
    if ws_version:
        extra = f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {ws_version}\r\n"
    return (
        f"GET {target} HTTP/1.1\r\nHost: good.test:{port}\r\nConnection: Upgrade\r\n"
        f"Upgrade: {upgrade}\r\n{extra}\r\n"
    ).encode()


# Each shape a server may switch to that mitmproxy would relay raw.
NOT_READ = [
    pytest.param("foo", "", id="unknown-protocol"),
    pytest.param("h2c, foo", "", id="h2c-in-a-list"),
    pytest.param("foo, h2c", "", id="h2c-second"),
    pytest.param("websocket", "8", id="websocket-version-8"),
    pytest.param("WebSocket/2", "13", id="websocket-lookalike"),
]


@pytest.mark.parametrize(("upgrade", "ws_version"), NOT_READ)
def test_a_101_that_is_not_a_websocket_is_refused(
    proxy: Proxy, upgrader: UpgradingOrigin, upgrade: str, ws_version: str
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT) as s:
        answer, rest = _exchange(s, _upgrade_request(upgrader.port, upgrade, ws_version=ws_version))
    assert status_of(answer) == 502, answer[:300]
    assert b"evil.test" not in upgrader.after_switch
    assert b"/bad/x.exe" not in upgrader.after_switch
    assert b"upgrade" in proxy.log.read_bytes().lower()
    assert status_of(rest) in (0, 400), rest[:200]  # nothing relayed back either


def test_a_101_inside_a_tunnel_without_interception_is_refused(
    proxy_passthrough: Proxy, upgrader: UpgradingOrigin
) -> None:
    """Plain HTTP inside CONNECT is read in every mode, so its upgrades are too."""
    with socket.create_connection(("127.0.0.1", proxy_passthrough.port), timeout=IO_TIMEOUT) as s:
        s.sendall(
            f"CONNECT good.test:{upgrader.port} HTTP/1.1\r\nHost: good.test:{upgrader.port}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert status_of(head) == 200, head
        answer, _ = _exchange(s, _upgrade_request(upgrader.port, "foo", absolute=False))
    assert status_of(answer) == 502, answer[:300]
    assert b"evil.test" not in upgrader.after_switch


def test_monitor_mode_refuses_it_too(proxy_monitor: Proxy, upgrader: UpgradingOrigin) -> None:
    """Not a list verdict to watch: an unchecked relay is a hole in every mode."""
    with socket.create_connection(("127.0.0.1", proxy_monitor.port), timeout=IO_TIMEOUT) as s:
        answer, _ = _exchange(s, _upgrade_request(upgrader.port, "h2c, foo"))
    assert status_of(answer) == 502, answer[:300]
    assert b"evil.test" not in upgrader.after_switch


def test_a_websocket_the_proxy_reads_still_switches(
    proxy: Proxy, upgrader: UpgradingOrigin
) -> None:
    """The control: RFC 6455 version 13 gets its 101, and its frames are relayed as frames."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT) as s:
        s.sendall(_upgrade_request(upgrader.port, "websocket", ws_version="13"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(4096)
        assert status_of(answer) == 101, answer[:300]
        # One masked text frame "hi" (client frames are masked, RFC 6455 5.3).
        mask = b"\x01\x02\x03\x04"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi"))
        s.sendall(b"\x81\x82" + mask + payload)
        s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while s.recv(4096):
                pass
    assert upgrader.switched == 1
