"""Hostile tunnels through a real `jectguard run`: split first bytes, plain HTTP, raw protocols,
servers that speak first, and a resolver that answers differently each time.

Each test names what an attacker would gain on the old code (the bytes that reach the
destination unchecked) and proves the proxy now refuses or checks them, with
interception on and with ``--no-intercept``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    ATTACKER_IP,
    ByteCounter,
    Origin,
    Proxy,
    start_proxy,
    status_of,
)

CURL = shutil.which("curl")
LAUNCH_REBINDING = Path(__file__).with_name("launch_rebinding.py")
# Short, so the deadline tests finish quickly; real deployments keep the 10 s default.
CLASSIFY_SECONDS = 1
# Long enough for the proxy to read one piece before the next is sent (the attack itself
# is the pause: a waitable condition does not exist on the client's side).
PIECE_PAUSE = 0.15
IO_TIMEOUT = 10.0


def _start(tmp: Path, lists_dir: Path, *args: str, entry: list[str] | None = None) -> Proxy:
    return start_proxy(
        tmp,
        "--sources",
        str(lists_dir / "sources.toml"),
        "--set",
        "ssl_insecure=true",  # tests only: the origin's certificate is self-signed
        "--set",
        f"jg_tunnel_classify_seconds={CLASSIFY_SECONDS}",
        *args,
        entry=entry,
    )


@pytest.fixture(scope="module", params=["intercept", "no-intercept"])
def any_proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, lists_dir: Path
) -> Iterator[Proxy]:
    extra = ("--no-intercept",) if request.param == "no-intercept" else ()
    p = _start(tmp_path_factory.mktemp(f"hostile-{request.param}"), lists_dir, *extra)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module", params=["intercept", "no-intercept"])
def rebinding_proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, lists_dir: Path
) -> Iterator[Proxy]:
    if ATTACKER_IP is None:
        pytest.skip("needs a non-loopback IPv4 address for the listed 'attacker' origin")
    import os

    os.environ["JG_TEST_REBIND"] = f"rebind.test=127.0.0.1|{ATTACKER_IP}"
    try:
        p = _start(
            tmp_path_factory.mktemp(f"rebinding-{request.param}"),
            lists_dir,
            *(("--no-intercept",) if request.param == "no-intercept" else ()),
            entry=[sys.executable, str(LAUNCH_REBINDING)],
        )
    finally:
        del os.environ["JG_TEST_REBIND"]
    try:
        yield p
    finally:
        p.stop()


# -- raw clients --------------------------------------------------------------------


def open_tunnel(proxy: Proxy, target: str) -> tuple[socket.socket, bytes]:
    """A socket through which ``CONNECT target`` succeeded, and any bytes that followed
    the proxy's answer in the same read (a server that speaks first); the caller closes it."""
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, f"proxy closed during CONNECT {target}"
        head += chunk
    assert status_of(head) == 200, head
    return s, head.partition(b"\r\n\r\n")[2]


def connect(proxy: Proxy, target: str) -> socket.socket:
    """``open_tunnel`` where nothing may come back before the client speaks."""
    s, rest = open_tunnel(proxy, target)
    if rest:
        s.close()
        raise AssertionError(f"bytes relayed before the client spoke: {rest[:100]!r}")
    return s


def send_in_pieces(s: socket.socket, data: bytes, *cuts: int) -> None:
    """Send ``data`` as separate TCP segments, cut at the given offsets."""
    last = 0
    for cut in (*cuts, len(data)):
        s.sendall(data[last:cut])
        last = cut
        if cut != len(data):
            time.sleep(PIECE_PAUSE)


def read_all(s: socket.socket) -> bytes:
    """Everything until the peer closes (or goes quiet for IO_TIMEOUT)."""
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def read_head(s: socket.socket) -> bytes:
    """A response head (a CONNECT answer has no body to wait for)."""
    out = b""
    while b"\r\n\r\n" not in out and (chunk := s.recv(4096)):
        out += chunk
    return out


def read_response(s: socket.socket) -> bytes:
    """One HTTP/1 response with a Content-Length (or until close)."""
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and len(body) >= int(value):
                        return out
    return out


class TLSOverSocket:
    """A TLS client driven by hand, so the ClientHello can be cut into pieces."""

    def __init__(self, s: socket.socket, ctx: ssl.SSLContext, server_name: str) -> None:
        self.sock = s
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)

    def handshake(self, *cuts: int) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.do_handshake()
        send_in_pieces(self.sock, self.outgoing.read(), *cuts)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the TLS handshake") from None
                self.incoming.write(data)
        self._flush()

    def _flush(self) -> None:
        if pending := self.outgoing.read():
            self.sock.sendall(pending)

    def request(self, data: bytes) -> bytes:
        self.obj.write(data)
        self._flush()
        out = b""
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                raw = self.sock.recv(65536)
                if not raw:
                    return out
                self.incoming.write(raw)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return out
            if not chunk:
                return out
            out += chunk
            if b"\r\n\r\n" in out and status_of(out) and _has_body(out):
                return out


def _has_body(resp: bytes) -> bool:
    head, _, body = resp.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def trusting(proxy: Proxy, origin: Origin) -> ssl.SSLContext:
    """A client that trusts both the proxy's CA and the origin's own certificate, so a
    handshake that skipped interception would succeed too (and show the bypass)."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    assert origin.cert is not None
    ctx.load_verify_locations(cafile=str(origin.cert))
    return ctx


class Greeter(ByteCounter):
    """A server that speaks first (SMTP, SSH, MySQL): a banner on accept, then it listens."""

    BANNER = b"220 greeter ESMTP ready\r\n"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with conn:
                conn.settimeout(IO_TIMEOUT)
                try:
                    conn.sendall(self.BANNER)
                    while data := conn.recv(65536):
                        self.received += data
                except OSError:
                    pass


@pytest.fixture
def greeter() -> Iterator[Greeter]:
    g = Greeter("127.0.0.1")
    try:
        yield g
    finally:
        g.close()


# -- 1. split first bytes never make a raw tunnel -----------------------------------


@pytest.mark.parametrize("cut", [1, 2, 3, 6])
def test_split_client_hello_with_blocked_sni_sends_nothing(
    any_proxy: Proxy, listener: ByteCounter, cut: int
) -> None:
    """CONNECT an innocent host, then a ClientHello naming a blocked host, cut after ``cut``
    bytes. Old code: the first piece looked like neither TLS nor HTTP, the tunnel became
    raw TCP and the whole ClientHello (and everything after it) reached the destination."""
    with connect(any_proxy, f"cdn.test:{listener.port}") as s:
        tls = TLSOverSocket(s, ssl.create_default_context(), "www.evil.test")
        with pytest.raises((ssl.SSLError, OSError, ConnectionError)):
            tls.handshake(cut)
            tls.request(b"GET / HTTP/1.1\r\nHost: www.evil.test\r\n\r\n")
    listener.close()
    assert listener.received == b""


@pytest.mark.parametrize("cut", [1, 2])
def test_split_client_hello_is_still_intercepted(
    tmp_path: Path, lists_dir: Path, origin: Origin, cut: int
) -> None:
    """With interception on, a split ClientHello is still decrypted and its URL checked.
    Old code: the raw tunnel reached the origin's own TLS, and /bad/ came back 200."""
    proxy = _start(tmp_path, lists_dir)
    try:
        with connect(proxy, f"good.test:{origin.tls_port}") as s:
            tls = TLSOverSocket(s, trusting(proxy, origin), "good.test")
            tls.handshake(cut)
            cert = tls.obj.getpeercert()
            resp = tls.request(b"GET /bad/x HTTP/1.1\r\nHost: good.test\r\nAccept: */*\r\n\r\n")
        issuer = dict(x[0] for x in cert["issuer"]) if cert else {}
        assert "mitmproxy" in str(issuer.get("organizationName", "")), issuer
        assert status_of(resp) == 403, resp[:200]
    finally:
        proxy.stop()


@pytest.mark.parametrize("cuts", [(2,), (1, 3), (5,), (14,)])
def test_split_request_line_in_tunnel_is_checked(
    any_proxy: Proxy, origin: Origin, cuts: tuple[int, ...]
) -> None:
    """``GE`` then ``T /bad/ ...``: old code relayed it raw; now the URL rule answers."""
    before = len(origin.requests)
    with connect(any_proxy, f"good.test:{origin.port}") as s:
        send_in_pieces(
            s, b"GET /bad/split HTTP/1.1\r\nHost: good.test\r\nAccept: */*\r\n\r\n", *cuts
        )
        resp = read_response(s)
    assert status_of(resp) == 403, resp[:200]
    assert ("good.test", "/bad/split") not in [
        (h.rsplit(":", 1)[0], p) for h, p in origin.requests[before:]
    ]


# -- 2. plain HTTP through CONNECT: every request on the connection is checked ------------


def test_plain_http_in_tunnel_url_and_host_checked(any_proxy: Proxy, origin: Origin) -> None:
    """`curl -p` style: one tunnel, keep-alive, an allowed request then blocked ones.
    Old code with --no-intercept: ignore_hosts relayed the tunnel raw, nothing checked."""
    with connect(any_proxy, f"good.test:{origin.port}") as s:
        s.sendall(b"GET /fine HTTP/1.1\r\nHost: good.test\r\nAccept: */*\r\n\r\n")
        first = read_response(s)
        s.sendall(b"GET /bad/second HTTP/1.1\r\nHost: good.test\r\nAccept: */*\r\n\r\n")
        second = read_response(s)
    assert status_of(first) == 200 and first.endswith(b"/fine")
    assert status_of(second) == 403
    with connect(any_proxy, f"good.test:{origin.port}") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: evil.test\r\nAccept: */*\r\n\r\n")
        fronted = read_response(s)
    assert status_of(fronted) == 403


def test_pipelined_requests_in_tunnel_each_checked(any_proxy: Proxy, origin: Origin) -> None:
    before = len(origin.requests)
    with connect(any_proxy, f"good.test:{origin.port}") as s:
        s.sendall(
            b"GET /one HTTP/1.1\r\nHost: good.test\r\n\r\n"
            b"GET /bad/two HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n"
        )
        both = read_all(s)
    assert both.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 403" in both
    assert "/bad/two" not in [p for _, p in origin.requests[before:]]


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_curl_proxytunnel_plain_http(any_proxy: Proxy, origin: Origin) -> None:
    def curl(path: str) -> str:
        r = subprocess.run(
            [
                CURL,
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-p",
                "-x",
                any_proxy.url,
                f"http://good.test:{origin.port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return r.stdout

    assert curl("/through-tunnel") == "200"
    assert curl("/bad/through-tunnel") == "403"


# -- content that is neither TLS nor HTTP is refused ---------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"SSH-2.0-OpenSSH_9.6\r\n", b"\x16\x04\x00\x00\x10" + b"x" * 16, b"GET /\r\n\r\n"],
    ids=["ssh", "bad-tls-version", "http-0.9"],
)
def test_unclassifiable_content_is_refused(
    any_proxy: Proxy, listener: ByteCounter, payload: bytes
) -> None:
    with connect(any_proxy, f"cdn.test:{listener.port}") as s:
        s.sendall(payload)
        answer = read_all(s)
    # closed, or (HTTP/0.9 looks enough like HTTP for mitmproxy's own HTTP layer) a 400
    assert answer == b"" or status_of(answer) == 400, answer[:100]
    listener.close()
    assert listener.received == b""


def test_incomplete_first_bytes_are_refused_at_the_deadline(
    any_proxy: Proxy, listener: ByteCounter
) -> None:
    with connect(any_proxy, f"cdn.test:{listener.port}") as s:
        s.sendall(b"\x16\x03")  # a ClientHello that never completes
        started = time.monotonic()
        assert read_all(s) == b""
        waited = time.monotonic() - started
    assert waited < IO_TIMEOUT - 1, "the proxy did not close the tunnel at its deadline"
    listener.close()
    assert listener.received == b""
    assert "no TLS ClientHello or HTTP request line" in any_proxy.output()


def test_server_that_speaks_first_gets_refused(any_proxy: Proxy, greeter: Greeter) -> None:
    """Old code relayed the server's banner and then everything both ways, unchecked."""
    with connect(any_proxy, f"cdn.test:{greeter.port}") as s:
        assert read_all(s) == b""  # the banner never reaches the client; closed at the deadline


def test_raw_tunnels_option_relays_listed_destinations_only(
    tmp_path: Path, lists_dir: Path, greeter: Greeter
) -> None:
    """ssh or SMTP on a known host is possible, by destination only (never by SNI/Host)."""
    proxy = _start(tmp_path, lists_dir, "--set", f"jg_raw_tunnels=cdn.test:{greeter.port}")
    try:
        s, rest = open_tunnel(proxy, f"cdn.test:{greeter.port}")
        with s:
            assert (rest or s.recv(4096)) == Greeter.BANNER  # relayed: the server speaks first
            s.sendall(b"EHLO client\r\n")
            s.shutdown(socket.SHUT_WR)
            read_all(s)
        with connect(proxy, f"good.test:{greeter.port}") as s:  # same server, another name
            assert read_all(s) == b""
    finally:
        proxy.stop()
    greeter.close()
    assert greeter.received == b"EHLO client\r\n"


# -- 7. DNS rebinding: the connection goes to the address that was checked ------------------


def _same_port_servers() -> tuple[ByteCounter, socket.socket]:
    """The listed attacker on ATTACKER_IP:P and a benign HTTP server on 127.0.0.1:P."""
    assert ATTACKER_IP is not None
    for _ in range(20):
        attacker = ByteCounter(ATTACKER_IP)
        benign = socket.socket()
        try:
            benign.bind(("127.0.0.1", attacker.port))
        except OSError:
            benign.close()
            attacker.close()
            continue
        benign.listen(8)
        return attacker, benign
    raise RuntimeError("no port free on both addresses")


def _serve_ok(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except (TimeoutError, OSError):
            continue
        with conn:
            conn.settimeout(2)
            with contextlib.suppress(OSError):
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nbenign"
                )


def test_rebinding_name_reaches_only_the_checked_address(rebinding_proxy: Proxy) -> None:
    """rebind.test answers 127.0.0.1, then the listed ATTACKER_IP, then 127.0.0.1, ...
    Old code: the check resolved once (127.0.0.1, fine) and mitmproxy's connect resolved
    again (ATTACKER_IP): the request reached the listed address."""
    attacker, benign = _same_port_servers()
    stop = threading.Event()
    t = threading.Thread(target=_serve_ok, args=(benign, stop), daemon=True)
    t.start()
    port = attacker.port
    try:
        statuses = []
        for i in range(4):
            with socket.create_connection(("127.0.0.1", rebinding_proxy.port), timeout=10) as s:
                s.sendall(
                    f"GET http://rebind.test:{port}/r{i} HTTP/1.1\r\nHost: rebind.test:{port}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                statuses.append(status_of(read_all(s)))
            with connect(rebinding_proxy, f"rebind.test:{port}") as s:
                s.sendall(f"GET /t{i} HTTP/1.1\r\nHost: rebind.test\r\n\r\n".encode())
                statuses.append(status_of(read_response(s)))
        assert set(statuses) <= {200, 403}, statuses
    finally:
        stop.set()
        t.join(5)
        benign.close()
        attacker.close()
    assert attacker.connections == 0 and attacker.received == b""


class SNIRecorder:
    """A TLS origin on 127.0.0.1 that records the SNI, Host header and TCP connections."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.names: list[str | None] = []
        self.hosts: list[str] = []
        self.connections = 0
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.sni_callback = lambda _obj, name, _ctx: self.names.append(name)  # type: ignore[assignment,misc,return-value]
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError), raw:
            raw.settimeout(5)
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                buf = b""
                while chunk := conn.recv(65536):
                    buf += chunk
                    while b"\r\n\r\n" in buf:
                        head, _, buf = buf.partition(b"\r\n\r\n")
                        for line in head.split(b"\r\n")[1:]:
                            if line.lower().startswith(b"host:"):
                                self.hosts.append(line[5:].strip().decode())
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_pinned_connection_keeps_sni_host_and_reuse(any_proxy: Proxy, tmp_path: Path) -> None:
    """The connect goes to the checked IP, yet the origin sees the name as SNI and Host,
    and two requests share one upstream connection (the name is restored after connect)."""
    from .conftest import make_cert

    cert, key = make_cert(tmp_path)
    origin = SNIRecorder(cert, key)
    try:
        with connect(any_proxy, f"good.test:{origin.port}") as s:
            ctx = ssl.create_default_context(cafile=str(any_proxy.ca))
            ctx.load_verify_locations(cafile=str(cert))
            tls = TLSOverSocket(s, ctx, "good.test")
            tls.handshake()
            first = tls.request(b"GET /1 HTTP/1.1\r\nHost: good.test\r\n\r\n")
            second = tls.request(b"GET /2 HTTP/1.1\r\nHost: good.test\r\n\r\n")
        assert status_of(first) == 200 and status_of(second) == 200
        assert origin.names and set(origin.names) == {"good.test"}
        assert origin.connections == 1
        if origin.hosts:  # intercepted: the proxy sent the requests (passthrough: the client)
            assert set(origin.hosts) == {"good.test"}
    finally:
        origin.close()


# -- 6. IPv6 addresses that carry a listed IPv4 -----------------------------------------

CARRIERS = [
    "2002:c633:6407::1",  # 6to4
    "::198.51.100.7",  # IPv4-compatible
    "64:ff9b::c633:6407",  # well-known NAT64
    "64:ff9b:1:c633:64:700::",  # local-use NAT64, /48 layout
    "2001:0:4136:e378:8000:63bf:39cc:9bf8",  # Teredo, client 198.51.100.7 (obfuscated)
]


@pytest.mark.parametrize("ip", CARRIERS)
def test_ipv6_carrying_a_listed_ipv4_is_blocked(any_proxy: Proxy, ip: str) -> None:
    """198.51.100.7 is on the e2e IP list; each of these addresses reaches it."""
    with socket.create_connection(("127.0.0.1", any_proxy.port), timeout=IO_TIMEOUT) as s:
        s.sendall(f"GET http://[{ip}]:8080/x HTTP/1.1\r\nHost: [{ip}]:8080\r\n\r\n".encode())
        resp = read_response(s)
    assert status_of(resp) == 403, resp[:300]
    with socket.create_connection(("127.0.0.1", any_proxy.port), timeout=IO_TIMEOUT) as s:
        s.sendall(f"CONNECT [{ip}]:443 HTTP/1.1\r\n\r\n".encode())
        resp = read_head(s)
    # refused at once without interception; kept local for the block page with it
    assert status_of(resp) in (200, 403), resp[:300]
    assert "e2e-ips" in any_proxy.output()


# -- split bytes inside decrypted TLS; legitimate split traffic still passes --------------


def test_split_request_line_inside_intercepted_tls_is_checked(
    tmp_path: Path, lists_dir: Path, origin: Origin
) -> None:
    """No ALPN, so mitmproxy guesses the decrypted content from its first bytes: ``GE``
    made it a raw relay to the origin over TLS, URL unchecked (old code: 200)."""
    proxy = _start(tmp_path, lists_dir)
    try:
        with connect(proxy, f"good.test:{origin.tls_port}") as s:
            tls = TLSOverSocket(s, trusting(proxy, origin), "good.test")
            tls.handshake()
            tls.obj.write(b"GE")
            tls._flush()
            time.sleep(PIECE_PAUSE)
            resp = tls.request(b"T /bad/inside HTTP/1.1\r\nHost: good.test\r\nAccept: */*\r\n\r\n")
        assert status_of(resp) == 403, resp[:200]
    finally:
        proxy.stop()


@pytest.mark.parametrize("cut", [1, 2])
def test_split_client_hello_for_an_allowed_host_still_passes(
    any_proxy: Proxy, origin: Origin, cut: int
) -> None:
    with connect(any_proxy, f"good.test:{origin.tls_port}") as s:
        tls = TLSOverSocket(s, trusting(any_proxy, origin), "good.test")
        tls.handshake(cut)
        resp = tls.request(b"GET /split-ok HTTP/1.1\r\nHost: good.test\r\nAccept: */*\r\n\r\n")
    assert status_of(resp) == 200 and resp.endswith(b"/split-ok")


# -- the request line names the host: absolute-form inside a plain-HTTP tunnel -----------


@pytest.mark.parametrize(
    "target",
    ["http://evil.test/{path}", "http://EVIL.test.:80/{path}", "http://good.test/bad/{path}"],
)
@pytest.mark.parametrize("host", ["good.test", "cdn.test", "evil.test", None])
def test_absolute_form_inside_a_plain_tunnel(
    any_proxy: Proxy, origin: Origin, target: str, host: str | None
) -> None:
    """``GET http://evil.test/ ...`` through ``CONNECT good.test``, whatever the Host header:
    servers route by the request line (RFC 9112 3.2.2), so it is checked in every mode."""
    path = f"abs-{time.monotonic_ns()}"
    head = f"GET {target.format(path=path)} HTTP/1.1\r\n"
    head += f"Host: {host}\r\n" if host is not None else ""
    with connect(any_proxy, f"good.test:{origin.port}") as s:
        s.sendall(f"{head}Accept: */*\r\nConnection: close\r\n\r\n".encode())
        resp = read_response(s)
    assert status_of(resp) in (400, 403), resp[:300]
    assert not any(path in p for _, p in origin.requests)


# -- monitor mode: what cannot be checked is refused, like every error -------------------


@pytest.fixture(scope="module")
def monitor_proxy(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    p = _start(tmp_path_factory.mktemp("monitor"), lists_dir, "--mode", "monitor", "--no-intercept")
    try:
        yield p
    finally:
        p.stop()


def _client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    "payload",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",  # content that is neither TLS nor HTTP
        _client_hello("999.1.1.1.1"),  # an SNI the engine cannot read
        _client_hello("exa%mple.test"),  # an SNI mitmproxy cannot read (its sni is None)
    ],
    ids=["ssh", "sni-engine-error", "sni-unparsed"],
)
def test_monitor_mode_refuses_what_it_cannot_check(monitor_proxy: Proxy, payload: bytes) -> None:
    """Old code (monitor mode) logged these and relayed them unchecked."""
    target = ByteCounter("127.0.0.1")
    try:
        with connect(monitor_proxy, f"cdn.test:{target.port}") as s:
            s.sendall(payload)
            assert read_all(s) == b""
    finally:
        target.close()
    assert target.received == b""
    marker = {
        b"S": f":{target.port}",
        b"\x16": "999.1.1.1.1" if b"999.1.1.1.1" in payload else "extension cannot be read",
    }[payload[:1]]
    deadline = time.monotonic() + IO_TIMEOUT  # the refusal is an event, not only a log line
    while not any(
        '"event":"error"' in line and marker in line for line in monitor_proxy.output().splitlines()
    ):
        assert time.monotonic() < deadline, monitor_proxy.output()[-2000:]
        time.sleep(0.05)


def test_monitor_mode_still_relays_a_listed_sni(monitor_proxy: Proxy) -> None:
    """A list's verdict in monitor mode is logged and let through (the control case)."""
    target = ByteCounter("127.0.0.1")
    try:
        with connect(monitor_proxy, f"cdn.test:{target.port}") as s:
            s.sendall(_client_hello("www.evil.test"))
            deadline = time.monotonic() + IO_TIMEOUT
            while not target.received and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        target.close()
    assert target.received.startswith(b"\x16\x03")
