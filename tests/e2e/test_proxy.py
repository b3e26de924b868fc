"""End to end: a real `jectguard run`, real origins, real clients (aiohttp, curl, raw sockets)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import aiohttp
import pytest

from .conftest import (
    ATTACKER_IP,
    ROOT,
    ByteCounter,
    Origin,
    Proxy,
    client_ssl,
    free_port,
    header_of,
    non_loopback_ip,
    raw_exchange,
    start_proxy,
    status_of,
)

NAV = {"Sec-Fetch-Dest": "document", "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
CURL = shutil.which("curl")


def get(proxy: Proxy, url: str, headers: dict[str, str] | None = None) -> bytes:
    """An absolute-form request line sent as-is: nothing canonicalizes it on the way."""
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    host = url.split("/")[2].rsplit("@", 1)[-1]
    data = f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{head}Connection: close\r\n\r\n"
    return raw_exchange(proxy.port, data.encode("utf-8"))


# -- start-up and lifecycle ------------------------------------------------------


def test_startup_message_and_sigterm(tmp_path: Path, lists_dir: Path) -> None:
    script = ROOT / ".venv" / "bin" / "jectguard"
    entry = [str(script)] if script.exists() else None
    p = start_proxy(tmp_path, "--blocklist", str(lists_dir / "domains.txt"), entry=entry)
    try:
        time.sleep(0.3)
        out = p.output()
        assert f"proxy on 127.0.0.1:{p.port}" in out
        assert "interception ON" in out and "http://mitm.it" in out
        assert str(p.ca) in out and p.ca.exists()
        assert "domains.txt" in out and "2 rules" in out
    finally:
        code = p.stop(signal.SIGTERM)
    assert code == 0, p.output()


def test_sigint_shuts_down_cleanly(tmp_path: Path, lists_dir: Path) -> None:
    p = start_proxy(tmp_path, "--blocklist", str(lists_dir / "domains.txt"))
    assert p.stop(signal.SIGINT) == 0, p.output()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.2"])
def test_refuses_open_proxy_on_non_loopback(tmp_path: Path, lists_dir: Path, host: str) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy_addons.cli",
            "run",
            "--listen-host",
            host,
            "--blocklist",
            str(lists_dir / "domains.txt"),
            "--confdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert "refusing to listen" in r.stderr and "proxyauth" in r.stderr
    assert "--allow-clients" in r.stderr


def test_bad_option_is_a_clear_error(tmp_path: Path, lists_dir: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy_addons.cli",
            "run",
            "--listen-port",
            str(free_port()),
            "--blocklist",
            str(lists_dir / "domains.txt"),
            "--confdir",
            str(tmp_path),
            "--set",
            "jg_report_url=ftp://x",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "jg_report_url" in r.stderr


@pytest.mark.skipif(non_loopback_ip() is None, reason="needs a non-loopback address")
def test_client_allow_list_closes_other_clients(tmp_path: Path, lists_dir: Path) -> None:
    ip = non_loopback_ip()
    assert ip
    p = start_proxy(
        tmp_path,
        "--blocklist",
        str(lists_dir / "domains.txt"),
        "--allow-clients",
        "10.123.0.0/16",
        listen_host="0.0.0.0",
    )
    try:
        assert "clients allowed from: 10.123.0.0/16" in p.output()
        with socket.create_connection((ip, p.port), timeout=5, source_address=(ip, 0)) as s:
            try:
                s.sendall(b"GET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n")
                assert s.recv(100) == b""  # closed without an answer
            except ConnectionResetError:
                pass  # closed without an answer
        # loopback is always allowed
        assert status_of(get(p, "http://evil.test/")) == 403
        assert "not in jg_allow_clients" in p.output()
    finally:
        p.stop()


# -- plain HTTP --------------------------------------------------------------------


async def test_allowed_request_reaches_origin(proxy: Proxy, origin: Origin) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"http://good.test:{origin.port}/fine?x=1", proxy=proxy.url)
        assert r.status == 200
        assert await r.text() == f"origin ok good.test:{origin.port} /fine?x=1"


BODY_KINDS = [
    ("navigation", NAV, "text/html", "suspected malicious"),
    ("script", {"Sec-Fetch-Dest": "script", "Accept": "*/*"}, "text/plain", ""),
    ("image", {"Sec-Fetch-Dest": "image", "Accept": "image/*"}, "text/plain", ""),
    ("fetch", {"Sec-Fetch-Dest": "empty", "Accept": "*/*"}, "text/plain", ""),
    ("api", {"Accept": "application/json"}, "application/json", '"reason": "suspected malicious"'),
    ("other", {"Accept": "*/*"}, "text/plain", "Blocked by jectguard"),
]


@pytest.mark.parametrize(
    ("name", "headers", "ctype", "snippet"), BODY_KINDS, ids=[b[0] for b in BODY_KINDS]
)
async def test_block_bodies(
    proxy: Proxy, name: str, headers: dict[str, str], ctype: str, snippet: str
) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.get("http://evil.test/x.js", proxy=proxy.url, headers=headers)
        body = await r.text()
        assert r.status == 403
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Content-Type"].startswith(ctype)
        assert "list=e2e-domains" in r.headers["X-Jectguard-Block"]
        if snippet:
            assert snippet in body
        else:
            assert body == ""


def test_html_page_content(proxy: Proxy) -> None:
    resp = get(proxy, 'http://evil.test/a?"><script>alert(1)</script>', NAV)
    page = resp.partition(b"\r\n\r\n")[2].decode()
    assert status_of(resp) == 403
    for needle in (
        "e2e-domains",
        "evil.test",
        "malware",
        "it@example.org",
        "suspected malicious",
        'name="viewport"',
    ):
        assert needle in page
    assert "<script" not in page and "&lt;script&gt;" in page and "src=" not in page
    assert "default-src 'none'" in (header_of(resp, "Content-Security-Policy") or "")


async def test_json_has_same_fields(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.get(
            "http://good.test/bad/dl.exe", proxy=proxy.url, headers={"Accept": "application/json"}
        )
        doc = json.loads(await r.text())
    assert doc["list"] == "e2e-urls" and doc["rule"] == "http://good.test/bad/"
    assert doc["category"] == "malware" and len(doc["request_id"]) == 12
    assert doc["admin_contact"] == "it@example.org" and doc["time"].endswith("UTC")


# Each evasion as a client could put it on the wire. `line` is what the proxy answers when
# the URL is the request line: 403 (our block) or 400 where mitmproxy itself refuses the
# request line (never forwarded). A redirect Location carries any string, so every
# evasion is also tested there, where only the engine's canonical form can catch it.
EVASIONS = [
    ("plain", "http://evil.test/", 403),
    ("case", "http://EvIl.TeSt/", 403),
    ("trailing-dot", "http://evil.test./", 403),
    ("subdomain", "http://www.evil.test/", 403),
    ("decimal-ipv4", "http://3325256711/", 403),
    ("hex-ipv4", "http://0xC6336407/", 403),
    ("octal-ipv4", "http://0306.063.0144.07/", 403),
    ("dotted-hex-ipv4", "http://0xc6.0x33.0x64.0x07/", 403),
    ("idn-unicode", "http://bücher.test/", 400),
    ("idn-unicode-uppercase", "http://BÜCHER.test/", 400),
    ("idn-punycode", "http://xn--bcher-kva.test/", 403),
    ("userinfo", "http://user:pass@evil.test/", 400),
    ("userinfo-at-trick", "http://good.test@evil.test/", 400),
    ("percent-host", "http://%65vil.test/", 400),
    ("percent-path", "http://good.test/%62ad/x.js", 403),
    ("double-percent-path", "http://good.test/%2562ad/x.js", 403),
    ("dot-segments", "http://good.test/fine/../bad/x.js", 403),
    ("double-slash", "http://good.test//bad//x.js", 403),
    ("cidr", "http://203.0.113.77:8080/", 403),
    ("long-url", "http://evil.test/" + "a" * 70_000, 403),
]


@pytest.mark.parametrize(("name", "url", "line"), EVASIONS, ids=[e[0] for e in EVASIONS])
def test_evasions_in_request_line(proxy: Proxy, name: str, url: str, line: int) -> None:
    resp = get(proxy, url)
    assert status_of(resp) == line, resp[:300]
    if line == 403:
        assert header_of(resp, "X-Jectguard-Block"), resp[:300]


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (b"/%ff/x.js", 403),
        (b"/%FF/x.js", 403),
        (b"/%25FF/x.js", 403),
        (b"/\xff/x.js", 400),
    ],  # a raw byte: mitmproxy refuses the line
)
def test_percent_forms_of_a_byte_match_its_rule(proxy: Proxy, raw: bytes, line: int) -> None:
    """The rule http://good.test/%FF/ catches every way a client can write that byte."""
    data = (
        b"GET http://good.test" + raw + b" HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n"
    )
    resp = raw_exchange(proxy.port, data)
    assert status_of(resp) == line, resp[:300]


@pytest.mark.parametrize(("name", "url", "line"), EVASIONS[:-1], ids=[e[0] for e in EVASIONS[:-1]])
def test_evasions_in_redirect_location(
    proxy: Proxy, origin: Origin, name: str, url: str, line: int
) -> None:
    target = urllib.parse.quote(url, safe="")
    resp = get(proxy, f"http://good.test:{origin.port}/redirect?raw=1&to={target}", NAV)
    assert status_of(resp) == 403, resp[:300]
    assert "stage=redirect" in (header_of(resp, "X-Jectguard-Block") or "")


HOST_EVASIONS = [
    ("case", "EVIL.TEST"),
    ("trailing-dot", "evil.test."),
    ("decimal-ipv4", "3325256711"),
    ("hex-ipv4", "0xC6336407"),
    ("octal-ipv4", "0306.063.0144.07"),
    ("idn-punycode", "XN--BCHER-KVA.test"),
]


@pytest.mark.parametrize(("name", "host"), HOST_EVASIONS, ids=[h[0] for h in HOST_EVASIONS])
def test_evasions_in_connect_target(proxy_passthrough: Proxy, name: str, host: str) -> None:
    resp = raw_exchange(proxy_passthrough.port, f"CONNECT {host}:443 HTTP/1.1\r\n\r\n".encode())
    assert status_of(resp) == 403, resp[:300]


def test_host_header_mismatch_blocked(proxy: Proxy, origin: Origin) -> None:
    data = (
        f"GET http://good.test:{origin.port}/ HTTP/1.1\r\nHost: EVIL.test.\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    resp = raw_exchange(proxy.port, data)
    assert status_of(resp) == 403 and "stage=host-header" in (
        header_of(resp, "X-Jectguard-Block") or ""
    )


def test_allowlist_wins(proxy: Proxy, origin: Origin) -> None:
    resp = get(proxy, f"http://ok.evil.test:{origin.port}/")
    assert status_of(resp) == 200


def test_per_list_monitor_mode_passes(proxy: Proxy, origin: Origin) -> None:
    resp = get(proxy, f"http://watch.test:{origin.port}/")
    assert status_of(resp) == 200
    assert "monitor: would block http://watch.test" in proxy.output()


WS_HEADERS = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def test_websocket_handshake_blocked(proxy: Proxy, origin: Origin) -> None:
    data = (
        f"GET http://evil.test:{origin.port}/ws HTTP/1.1\r\nHost: evil.test\r\n{WS_HEADERS}\r\n"
    ).encode()
    resp = raw_exchange(proxy.port, data)
    assert status_of(resp) == 403


def test_websocket_allowed_and_blocked_inside_tunnel(proxy: Proxy, origin: Origin) -> None:
    """Browsers tunnel WebSockets through CONNECT; the handshake inside is checked."""
    ctx = client_ssl(proxy.ca)
    for host, expected in (("good.test", 101), ("evil.test", 403)):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(f"CONNECT {host}:{origin.tls_port} HTTP/1.1\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            with ctx.wrap_socket(s, server_hostname=host) as tls:
                tls.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}\r\n{WS_HEADERS}\r\n".encode())
                assert status_of(tls.recv(65536)) == expected, host


async def test_redirect_to_blocked_url_becomes_block_page(proxy: Proxy, origin: Origin) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.get(
            f"http://good.test:{origin.port}/redirect?to=http://evil.test/landing",
            proxy=proxy.url,
            headers=NAV,
            allow_redirects=False,
        )
        page = await r.text()
    assert r.status == 403 and "stage=redirect" in r.headers["X-Jectguard-Block"]
    assert "http://evil.test/landing" in page and "a redirect target" in page


# -- HTTPS with interception ------------------------------------------------------


async def test_https_intercepted_allowed_and_blocked(proxy: Proxy, origin: Origin) -> None:
    ctx = client_ssl(proxy.ca)
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://good.test:{origin.tls_port}/secure", proxy=proxy.url, ssl=ctx)
        assert r.status == 200 and (await r.text()).endswith("/secure")
        # the full URL is visible inside the tunnel
        r = await s.get(
            f"https://good.test:{origin.tls_port}/bad/x", proxy=proxy.url, ssl=ctx, headers=NAV
        )
        assert r.status == 403 and "suspected malicious" in await r.text()
        # a blocked CONNECT target still gets the full page, served by the proxy itself
        r = await s.get("https://evil.test/", proxy=proxy.url, ssl=ctx, headers=NAV)
        assert r.status == 403 and "e2e-domains" in await r.text()


def test_blocked_connect_with_interception_never_reaches_origin(
    proxy: Proxy, listener: ByteCounter
) -> None:
    # evil.test is blocked; even a TLS ClientHello for it must go nowhere.
    ctx = client_ssl(proxy.ca)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(f"CONNECT evil.test:{listener.port} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        with ctx.wrap_socket(s, server_hostname="evil.test") as tls:
            tls.sendall(b"GET /secret HTTP/1.1\r\nHost: evil.test\r\nAccept: */*\r\n\r\n")
            resp = tls.recv(65536)
    assert status_of(resp) == 403
    time.sleep(0.2)
    assert listener.connections == 0 and listener.received == b""


def _block_events_after(proxy: Proxy, mark: int, host: str, *, wait: float = 5.0) -> list[dict]:
    """Block events for ``host`` the proxy wrote after output offset ``mark`` (waits for one)."""
    deadline = time.monotonic() + wait
    while True:
        events = []
        for line in proxy.output()[mark:].splitlines():
            if line.startswith("{"):
                ev = json.loads(line)
                if ev.get("event") == "block" and ev.get("host") == host:
                    events.append(ev)
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


async def test_blocked_https_visit_is_one_event_with_the_pages_request_id(proxy: Proxy) -> None:
    mark = len(proxy.output())
    ctx = client_ssl(proxy.ca)
    async with (
        aiohttp.ClientSession() as s,
        s.get("https://evil.test/one-visit", proxy=proxy.url, ssl=ctx, headers=NAV) as r,
    ):
        assert r.status == 403
        rid = r.headers["X-Jectguard-Block"].rsplit("id=", 1)[1]
        assert rid in await r.text()
    await asyncio.sleep(0.5)  # the tunnel is closed: anything held back is out by now
    (ev,) = _block_events_after(proxy, mark, "evil.test")
    assert ev["request_id"] == rid and ev["url"] == "https://evil.test/one-visit"


def test_blocked_connect_without_a_request_is_still_one_event(proxy: Proxy) -> None:
    # A client that does not trust the CA never sends the request inside.
    mark = len(proxy.output())
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    (ev,) = _block_events_after(proxy, mark, "evil.test")
    assert ev["stage"] == "connect" and ev["method"] == "CONNECT"


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_curl_http2_intercepted(proxy: Proxy, origin: Origin) -> None:
    r = subprocess.run(
        [
            CURL,
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--http2",
            "-x",
            proxy.url,
            "--cacert",
            str(proxy.ca),
            "https://evil.test/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout == "403 2"
    r = subprocess.run(
        [
            CURL,
            "-s",
            "--http2",
            "-x",
            proxy.url,
            "--cacert",
            str(proxy.ca),
            f"https://good.test:{origin.tls_port}/h2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout.endswith("/h2")


def test_sni_fronting_blocked(proxy: Proxy, listener: ByteCounter) -> None:
    """CONNECT to an innocent host, SNI naming a blocked one: treated as the blocked host."""
    ctx = client_ssl(proxy.ca)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(f"CONNECT cdn.test:{listener.port} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        with ctx.wrap_socket(s, server_hostname="www.evil.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: cdn.test\r\nAccept: */*\r\n\r\n")
            resp = tls.recv(65536)
    assert status_of(resp) == 403
    time.sleep(0.2)
    assert listener.received == b""


# -- HTTPS without interception ----------------------------------------------------


def test_passthrough_connect_blocked_with_403(proxy_passthrough: Proxy) -> None:
    resp = raw_exchange(proxy_passthrough.port, b"CONNECT EVIL.test.:443 HTTP/1.1\r\n\r\n")
    assert status_of(resp) == 403
    assert "list=e2e-domains" in (header_of(resp, "X-Jectguard-Block") or "")
    assert b"Blocked by jectguard" in resp


def test_passthrough_tunnels_tls_untouched(proxy_passthrough: Proxy, origin: Origin) -> None:
    assert origin.cert is not None
    ctx = ssl.create_default_context(cafile=str(origin.cert))  # the origin's own certificate
    with socket.create_connection(("127.0.0.1", proxy_passthrough.port), timeout=5) as s:
        s.sendall(f"CONNECT good.test:{origin.tls_port} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        with ctx.wrap_socket(s, server_hostname="good.test") as tls:
            tls.sendall(b"GET /tunnel HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert status_of(data) == 200 and data.endswith(b"/tunnel")


def test_passthrough_sni_blocked_sends_nothing(
    proxy_passthrough: Proxy, listener: ByteCounter
) -> None:
    ctx = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", proxy_passthrough.port), timeout=5) as s:
        s.sendall(f"CONNECT cdn.test:{listener.port} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(s, server_hostname="evil.test")
    time.sleep(0.3)
    assert listener.received == b""  # the ClientHello naming evil.test went nowhere


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_curl_passthrough(proxy_passthrough: Proxy, origin: Origin) -> None:
    r = subprocess.run(
        [
            CURL,
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            proxy_passthrough.url,
            "https://evil.test/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout in ("403", "000")  # curl reports the CONNECT refusal
    assert r.returncode != 0
    assert origin.cert is not None
    r = subprocess.run(
        [
            CURL,
            "-s",
            "-x",
            proxy_passthrough.url,
            "--cacert",
            str(origin.cert),
            f"https://good.test:{origin.tls_port}/pt",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout.endswith("/pt")


# -- the resolved address: zero bytes to a listed IP ------------------------------


@pytest.mark.parametrize("scheme", ["http", "connect"])
def test_resolved_address_gets_zero_bytes(
    proxy: Proxy, proxy_passthrough: Proxy, attacker: ByteCounter, scheme: str
) -> None:
    """attacker.test resolves to an address on the IP list (this machine's own): the
    block page names the address (not mitmproxy's 502), and the address gets nothing."""
    if scheme == "http":
        resp = get(proxy, f"http://attacker.test:{attacker.port}/payload.js", NAV)
        assert status_of(resp) == 403
        assert "list=e2e-ips" in (header_of(resp, "X-Jectguard-Block") or "")
        assert str(ATTACKER_IP).encode() in resp and b"IP address" in resp
    else:
        ctx = client_ssl(proxy.ca)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(f"CONNECT attacker.test:{attacker.port} HTTP/1.1\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 200")  # kept local for the page
            with ctx.wrap_socket(s, server_hostname="attacker.test") as tls:
                tls.sendall(b"GET /x HTTP/1.1\r\nHost: attacker.test\r\nAccept: */*\r\n\r\n")
                page = tls.recv(65536)
        assert status_of(page) == 403 and str(ATTACKER_IP).encode() in page
        resp = raw_exchange(
            proxy_passthrough.port,
            f"CONNECT attacker.test:{attacker.port} HTTP/1.1\r\n\r\n".encode(),
        )
        assert status_of(resp) == 403, resp
        assert "list=e2e-ips" in (header_of(resp, "X-Jectguard-Block") or "")
    time.sleep(0.3)
    assert attacker.connections == 0
    assert attacker.received == b""


def test_direct_ip_of_attacker_blocked_at_request(proxy: Proxy, attacker: ByteCounter) -> None:
    resp = get(proxy, f"http://{ATTACKER_IP}:{attacker.port}/")
    assert status_of(resp) == 403
    assert attacker.connections == 0


# -- monitor mode -------------------------------------------------------------------


def test_global_monitor_mode_lets_requests_pass(proxy_monitor: Proxy, origin: Origin) -> None:
    resp = get(proxy_monitor, f"http://evil.test:{origin.port}/watched", NAV)
    assert status_of(resp) == 200 and resp.endswith(b"/watched")
    assert "monitor: would block http://evil.test" in proxy_monitor.output()
    assert "MONITOR ONLY" in proxy_monitor.output()


# -- hostile input ------------------------------------------------------------------

GARBAGE = [
    ("binary", b"\x00\xff\xfe\x16\x03\x01garbage\r\n\r\n"),
    ("bad-request-line", b"GET\r\n\r\n"),
    ("bad-url", b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("huge-header", b"GET http://good.test/ HTTP/1.1\r\nX: " + b"a" * 600_000 + b"\r\n\r\n"),
    ("many-headers", b"GET http://good.test/ HTTP/1.1\r\n" + b"X: y\r\n" * 20_000 + b"\r\n"),
    ("bad-content-length", b"POST http://evil.test/ HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
    ("bad-connect", b"CONNECT :::: HTTP/1.1\r\n\r\n"),
    ("tls-to-plain-port", b"\x16\x03\x01\x00\x05hello"),
]


@pytest.mark.parametrize(("name", "data"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_then_next_client_served(
    proxy: Proxy, origin: Origin, name: str, data: bytes
) -> None:
    try:
        resp = raw_exchange(proxy.port, data, timeout=5)
    except (BrokenPipeError, ConnectionResetError):
        resp = b""
    assert resp == b"" or status_of(resp) >= 400 or resp.startswith(b"HTTP/1.1 200"), resp[:200]
    assert proxy.alive()
    ok = get(proxy, f"http://good.test:{origin.port}/after-{name}")
    assert status_of(ok) == 200
    assert status_of(get(proxy, "http://evil.test/")) == 403


# -- curl -x --------------------------------------------------------------------------


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_curl_x(proxy: Proxy, origin: Origin) -> None:
    r = subprocess.run(
        [CURL, "-s", "-i", "-x", proxy.url, "http://evil.test/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout.startswith("HTTP/1.1 403") and "Blocked by jectguard" in r.stdout
    r = subprocess.run(
        [CURL, "-s", "-x", proxy.url, f"http://good.test:{origin.port}/curl"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout == f"origin ok good.test:{origin.port} /curl"


def test_origin_never_saw_a_blocked_host(proxy: Proxy, origin: Origin) -> None:
    """Run last in this module: across all tests, blocked names never reached the origin
    through the enforcing proxies (the monitor proxy is allowed to let evil.test pass)."""
    leaked = [
        (h, p)
        for h, p in origin.requests
        if h.split(":")[0].lower().rstrip(".") in ("evil.test", "www.evil.test") and p != "/watched"
    ]
    assert leaked == []
