"""Hostile clients against a real `jectguard run`, with an origin that routes like nginx.

The origin answers for whichever name nginx's ``$host`` would pick: the host of an
absolute-form request line first, else the Host header's name (up to the first
``:``, one trailing dot dropped, lowercased). It records every name it served, so a
request that a listed name reached shows here even when the proxy's response looks
fine. Both an intercepting and a ``--no-intercept`` proxy are driven with raw
sockets, so nothing canonicalizes the bytes on the way.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_addons.core.engine import Action, Engine
from proxy_addons.core.model import ListSpec, Mode, ParsedList, Rule, RuleKind

from .conftest import (
    ByteCounter,
    Proxy,
    client_ssl,
    header_of,
    make_cert,
    raw_exchange,
    start_proxy,
    status_of,
)

LISTED = "evil.test"
IO_TIMEOUT = 5.0


def nginx_host(target: bytes, host_header: str) -> str:
    """nginx's ``$host``: the request line's host, else the Host header's name part."""
    t = target.decode("latin-1")
    if "://" in t:
        authority = t.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        name = authority
    else:
        name = host_header
    name = name.strip().lower()
    if name.startswith("["):
        return name[: name.find("]") + 1]
    return name.partition(":")[0].removesuffix(".")


@dataclass
class RoutingOrigin:
    """A raw HTTP/1.1 origin (plain and TLS) that routes and records like nginx."""

    port: int = 0
    tls_port: int = 0
    routed: list[tuple[str, str]] = field(default_factory=list)  # ($host, target)

    def names(self) -> set[str]:
        return {h for h, _ in self.routed}

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            target = head[0].split(b" ")[1] if len(head[0].split(b" ")) > 1 else b"/"
            host = ""
            for line in head[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"host":
                    host = v.strip().decode("latin-1")
            routed = nginx_host(target, host)
            self.routed.append((routed, target.decode("latin-1")[:200]))
            path = target.decode("latin-1")
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            extra = ""
            if path.startswith("/redirect"):
                status, extra = "302 Found", f"Location: {query['to'][0]}\r\n"
            elif path.startswith("/refresh"):
                status, extra = "200 OK", f"Refresh: {query['to'][0]}\r\n"
            else:
                status = "200 OK"
            body = f"served {routed}".encode()
            conn.sendall(
                f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )

    def _serve(
        self, sock: socket.socket, ctx: ssl.SSLContext | None, stop: threading.Event
    ) -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                if ctx is not None:
                    conn.settimeout(IO_TIMEOUT)
                    conn = ctx.wrap_socket(conn, server_side=True)
                threading.Thread(target=self._close_after, args=(conn,), daemon=True).start()
            except (OSError, ssl.SSLError):
                conn.close()

    def _close_after(self, conn: socket.socket) -> None:
        with conn:
            self.handle(conn)


@pytest.fixture
def nginx_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutingOrigin]:
    cert, key = make_cert(tmp_path_factory.mktemp("nginx-origin"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    origin = RoutingOrigin()
    stop = threading.Event()
    socks, threads = [], []
    for tls in (None, ctx):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
        t = threading.Thread(target=origin._serve, args=(s, tls, stop), daemon=True)
        t.start()
        threads.append(t)
    origin.port, origin.tls_port = socks[0].getsockname()[1], socks[1].getsockname()[1]
    try:
        yield origin
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for s in socks:
            s.close()


def plain(proxy: Proxy, target: str, host: str, extra: str = "") -> bytes:
    data = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    return raw_exchange(proxy.port, data.encode("latin-1"))


def in_tunnel(proxy: Proxy, connect: str, request: bytes) -> bytes:
    """CONNECT, TLS with the proxy's CA, then one raw request inside the tunnel."""
    ctx = client_ssl(proxy.ca)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT) as s:
        s.sendall(f"CONNECT {connect} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        with ctx.wrap_socket(s, server_hostname=connect.rsplit(":", 1)[0]) as tls:
            tls.sendall(request)
            out = b""
            with contextlib.suppress(TimeoutError, ssl.SSLError, OSError):
                while chunk := tls.recv(65536):
                    out += chunk
                    if (
                        b"\r\n\r\n" in out
                        and header_of(out, "content-length") is not None
                        and len(out.partition(b"\r\n\r\n")[2])
                        >= int(header_of(out, "content-length") or 0)
                    ):
                        break
            return out


def assert_refused(resp: bytes, origin: RoutingOrigin, status: int = 403) -> None:
    assert status_of(resp) == status, resp[:300]
    time.sleep(0.1)  # the origin records in a thread: give a leak the chance to show
    assert LISTED not in origin.names(), origin.routed


# -- item 3: the request-target inside an intercepted tunnel ---------------------------


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("https://evil.test/x", 403),
        ("https://EVIL.test.:443/x", 403),
        ("https://good.test/bad/x.js", 403),  # URL rules hold for the request line too
        ("https://u@evil.test/x", 400),  # mitmproxy itself refuses userinfo here
    ],
)
def test_absolute_form_target_inside_a_tunnel(
    proxy: Proxy, nginx_origin: RoutingOrigin, target: str, status: int
) -> None:
    connect = f"cdn.test:{nginx_origin.tls_port}"
    req = f"GET {target} HTTP/1.1\r\nHost: cdn.test\r\nConnection: close\r\n\r\n".encode()
    resp = in_tunnel(proxy, connect, req)
    assert_refused(resp, nginx_origin, status)
    assert not any("/bad/" in t for _, t in nginx_origin.routed)


def test_allowed_request_in_a_tunnel_still_reaches_the_origin(
    proxy: Proxy, nginx_origin: RoutingOrigin
) -> None:
    connect = f"good.test:{nginx_origin.tls_port}"
    req = b"GET /fine HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n"
    resp = in_tunnel(proxy, connect, req)
    assert status_of(resp) == 200 and b"served good.test" in resp


# -- item 4: Host headers the URL parser refuses ---------------------------------------

ROUTED = ["evil.test:abc", "evil.test:-1", "evil.test:80:80", "evil.test:", "EVIL.TEST.:8o"]


@pytest.mark.parametrize("host", ROUTED)
def test_unreadable_host_routed_to_listed_name_plain(
    proxy: Proxy, proxy_passthrough: Proxy, nginx_origin: RoutingOrigin, host: str
) -> None:
    for p in (proxy, proxy_passthrough):
        resp = plain(p, f"http://good.test:{nginx_origin.port}/x", host)
        assert status_of(resp) in (400, 403), resp[:300]
        time.sleep(0.1)
        assert LISTED not in nginx_origin.names(), nginx_origin.routed


@pytest.mark.parametrize("host", ROUTED)
def test_unreadable_host_routed_to_listed_name_in_tunnel(
    proxy: Proxy, nginx_origin: RoutingOrigin, host: str
) -> None:
    connect = f"good.test:{nginx_origin.tls_port}"
    req = f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    resp = in_tunnel(proxy, connect, req)
    assert status_of(resp) in (400, 403), resp[:300]
    time.sleep(0.1)
    assert LISTED not in nginx_origin.names()


def test_unreadable_host_fails_closed_with_400(proxy: Proxy, nginx_origin: RoutingOrigin) -> None:
    before = len(nginx_origin.routed)
    resp = plain(
        proxy, f"http://good.test:{nginx_origin.port}/x", "good.test:abc", "Accept: text/plain\r\n"
    )
    assert status_of(resp) == 400 and b"Host header cannot be read" in resp
    time.sleep(0.1)
    assert len(nginx_origin.routed) == before
    deadline = time.monotonic() + IO_TIMEOUT  # the refusal is an event, not only a log line
    while not any(
        '"event":"error"' in line and "good.test:abc" in line
        for line in proxy.output().splitlines()
    ):
        assert time.monotonic() < deadline, proxy.output()[-2000:]
        time.sleep(0.05)


# -- item 5: long URLs ------------------------------------------------------------------


def test_url_over_the_limit_is_refused(proxy: Proxy, nginx_origin: RoutingOrigin) -> None:
    before = len(nginx_origin.routed)
    target = f"http://good.test:{nginx_origin.port}/bad/" + "a" * 70_000
    resp = plain(proxy, target, f"good.test:{nginx_origin.port}")
    assert status_of(resp) == 414, resp[:300]  # never forwarded unchecked
    time.sleep(0.1)
    assert len(nginx_origin.routed) == before


# -- item 9: redirects a browser follows -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "to"),
    [
        ("redirect", "\\\\evil.test/x"),
        ("redirect", "/\\evil.test/x"),
        ("refresh", "0; url=http://evil.test/"),
        ("refresh", "0;URL='//evil.test/x'"),
    ],
)
def test_redirect_and_refresh_targets(
    proxy: Proxy, nginx_origin: RoutingOrigin, path: str, to: str
) -> None:
    q = urllib.parse.urlencode({"to": to})
    resp = plain(
        proxy, f"http://good.test:{nginx_origin.port}/{path}?{q}", f"good.test:{nginx_origin.port}"
    )
    assert status_of(resp) == 403 and "stage=redirect" in (
        header_of(resp, "x-jectguard-block") or ""
    )


# -- item 10: the proxy host's own services -------------------------------------------------


@pytest.fixture(scope="module")
def strict_proxy(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    """The default destination policy: loopback and the host itself closed, CONNECT to 443."""
    p = start_proxy(
        tmp_path_factory.mktemp("strict"),
        "--sources",
        str(lists_dir / "sources.toml"),
        "--no-intercept",
        open_local=False,
    )
    try:
        yield p
    finally:
        p.stop()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",
        "127.1",
        "0x7f.1",
        "[::ffff:127.0.0.1]",
        "localhost",
        "a.localhost",
    ],
)
def test_loopback_in_every_form_refused(
    strict_proxy: Proxy, listener: ByteCounter, host: str
) -> None:
    resp = plain(
        strict_proxy, f"http://{host}:{listener.port}/admin", "x", "Accept: text/plain\r\n"
    )
    assert status_of(resp) == 403 and b"Refused by jectguard" in resp, resp[:300]
    time.sleep(0.1)
    assert listener.connections == 0


@pytest.mark.parametrize(
    "target", ["127.0.0.1:{port}", "[::1]:{port}", "localhost:{port}", "169.254.169.254:443"]
)
def test_connect_to_internal_destination_refused(
    strict_proxy: Proxy, listener: ByteCounter, target: str
) -> None:
    target = target.format(port=listener.port)
    resp = raw_exchange(strict_proxy.port, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    assert status_of(resp) == 403, resp[:300]
    time.sleep(0.1)
    assert listener.connections == 0


def test_connect_port_outside_the_list_refused(strict_proxy: Proxy) -> None:
    resp = raw_exchange(strict_proxy.port, b"CONNECT good.test:22 HTTP/1.1\r\n\r\n")
    assert status_of(resp) == 403 and b"port 22" in resp


# -- the property, through the real proxy ---------------------------------------------


def _e2e_engine() -> Engine:
    """The e2e lists (conftest.LISTS) as an in-memory engine: the oracle."""

    def rules(*items: tuple[RuleKind, str]) -> ParsedList:
        return ParsedList("t", [Rule(k, key, key, i + 1) for i, (k, key) in enumerate(items)])

    engine, _, _ = Engine.from_lists(
        [
            (
                ListSpec(name="d"),
                rules((RuleKind.DOMAIN, "evil.test"), (RuleKind.DOMAIN, "xn--bcher-kva.test")),
            ),
            (ListSpec(name="u"), rules((RuleKind.URL, "good.test/bad/"))),
            (ListSpec(name="w", mode=Mode.MONITOR), rules((RuleKind.DOMAIN, "watch.test"))),
            (ListSpec(name="a", allow=True), rules((RuleKind.DOMAIN, "ok.evil.test"))),
        ]
    )
    return engine


ORACLE = _e2e_engine()
NAMES = [
    "good.test",
    "GOOD.test.",
    "evil.test",
    "EVIL.TEST.",
    "www.evil.test",
    "ok.evil.test",
    "watch.test",
    "bücher.test",
    "xn--bcher-kva.test",
]
SUFFIXES = ["", ":{port}", ":abc", ":-1", ":80:80", ":", ":99999"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    url_host=st.sampled_from(["good.test", "GOOD.test.", "ok.evil.test", "watch.test"]),
    host=st.tuples(st.sampled_from(NAMES), st.sampled_from(SUFFIXES)),
    path=st.sampled_from(["/", "/bad/x.js", "/fine", "/%62ad/y"]),
    intercept=st.booleans(),
)
def test_real_proxy_decides_as_the_engine_on_every_name(
    proxy: Proxy,
    proxy_passthrough: Proxy,
    nginx_origin: RoutingOrigin,
    url_host: str,
    host: tuple[str, str],
    path: str,
    intercept: bool,
) -> None:
    port = nginx_origin.port
    hh = host[0] + host[1].format(port=port)
    target = f"http://{url_host}:{port}{path}"
    verdicts = [ORACLE.check_url(target).action, ORACLE.check_url(f"http://{hh}{path}").action]
    before = len(nginx_origin.routed)
    resp = plain(proxy if intercept else proxy_passthrough, target, hh, "Accept: text/plain\r\n")
    if Action.BLOCK in verdicts or Action.ERROR in verdicts:
        assert status_of(resp) in (400, 403), (verdicts, hh, resp[:200])
        time.sleep(0.05)
        assert len(nginx_origin.routed) == before, nginx_origin.routed[before:]
    else:
        assert status_of(resp) == 200, (verdicts, hh, resp[:200])
    assert LISTED not in nginx_origin.names()
