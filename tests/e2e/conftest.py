"""Real processes for end-to-end tests: the proxy, loopback origins, byte-counting listeners.

- ``start_proxy`` runs ``jectguard run`` (through ``launch_proxy.py``, which only adds a
  test host table) on a free loopback port with its own temporary confdir and CA,
  waits for the port, and always kills the process.
- ``origin`` is an aiohttp server on 127.0.0.1 (HTTP and HTTPS with a self-signed
  certificate) that records every request it gets.
- ``serve_app`` serves any aiohttp app that way (the origin, the browser tests' sites).
- ``ByteCounter`` is a raw TCP listener that records connections and bytes: the
  "attacker" whose silence proves nothing was sent to it.
- ``browser`` is headless Debian Chromium through playwright; missing, it skips the
  test, or fails it where it is required (``CI``, ``JG_REQUIRE_BROWSER``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("launch_proxy.py")
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def non_loopback_ip() -> str | None:
    """This machine's own non-loopback IPv4 address, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
            ip = str(s.getsockname()[0])
    except OSError:
        return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


# The "attacker" origin listens on this machine's own non-loopback address, which is put
# on an IP list: the poison guard (rightly) refuses rules for loopback addresses.
ATTACKER_IP = non_loopback_ip()

HOSTS = {
    "good.test": "127.0.0.1",
    "evil.test": "127.0.0.1",  # resolvable, so a leak would reach the origin and show
    "www.evil.test": "127.0.0.1",
    "ok.evil.test": "127.0.0.1",
    "watch.test": "127.0.0.1",
    "cdn.test": "127.0.0.1",
    "xn--bcher-kva.test": "127.0.0.1",
}
if ATTACKER_IP:
    HOSTS["attacker.test"] = ATTACKER_IP

LISTS = {
    "domains.txt": "evil.test\nxn--bcher-kva.test\n",
    "urls.txt": "http://good.test/bad/\nhttp://good.test/%FF/\n",
    "cidrs.txt": "198.51.100.7\n203.0.113.0/24\n" + (f"{ATTACKER_IP}\n" if ATTACKER_IP else ""),
    "watch.txt": "watch.test\n",
    "allow.txt": "ok.evil.test\n",
}

SOURCES = """
[[source]]
name = "e2e-domains"
path = "domains.txt"
format = "domains"
category = "malware"

[[source]]
name = "e2e-urls"
path = "urls.txt"
format = "urls"
category = "malware"

[[source]]
name = "e2e-ips"
path = "cidrs.txt"
format = "cidr"
category = "botnet"

[[source]]
name = "e2e-watch"
path = "watch.txt"
format = "domains"
mode = "monitor"

[[source]]
name = "e2e-allow"
path = "allow.txt"
kind = "allow"
"""


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"proxy did not listen on {port} within {timeout}s:\n{log.read_text()}")


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    port: int
    confdir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode


def proxy_command(entry: list[str] | None = None) -> list[str]:
    return entry or [sys.executable, str(LAUNCHER)]


# The test origins listen on this machine (loopback and its own address) on random
# ports: open them, as an operator would for a local service. Tests of the default
# destination policy pass open_local=False.
LOCAL_DESTINATIONS = [
    "--allow-destination",
    "127.0.0.0/8",
    "--connect-ports",
    "1-65535",
    *(["--allow-destination", f"{ATTACKER_IP}/32"] if ATTACKER_IP else []),
]


def start_proxy(
    tmp: Path,
    *args: str,
    entry: list[str] | None = None,
    listen_host: str = "127.0.0.1",
    open_local: bool = True,
) -> Proxy:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    confdir = tmp / "confdir"
    log = tmp / "proxy.log"
    cmd = [
        *proxy_command(entry),
        "run",
        "--listen-host",
        listen_host,
        "--listen-port",
        str(port),
        "--confdir",
        str(confdir),
        "--admin-port",
        str(free_port()),
        "--cache-dir",
        str(tmp / "cache"),
        *(LOCAL_DESTINATIONS if open_local else []),
        *args,
    ]
    env = {**os.environ, "JG_TEST_HOSTS": ",".join(f"{k}={v}" for k, v in HOSTS.items())}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    proxy = Proxy(proc, port, confdir, log)
    try:
        wait_for_port(port, proc, log, STARTUP_TIMEOUT)
    except BaseException:
        proxy.stop(signal.SIGKILL)
        raise
    return proxy


@pytest.fixture(scope="session")
def lists_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lists")
    for name, text in LISTS.items():
        (d / name).write_text(text)
    (d / "sources.toml").write_text(SOURCES)
    return d


def _session_proxy(
    tmp_path_factory: pytest.TempPathFactory, lists_dir: Path, name: str, *args: str
) -> Iterator[Proxy]:
    p = start_proxy(
        tmp_path_factory.mktemp(name),
        "--sources",
        str(lists_dir / "sources.toml"),
        "--set",
        "ssl_insecure=true",  # tests only: the origin's certificate is self-signed
        "--admin-contact",
        "it@example.org",
        *args,
    )
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    """Interception on, enforce: the default `jectguard run`."""
    yield from _session_proxy(tmp_path_factory, lists_dir, "intercept")


@pytest.fixture(scope="session")
def proxy_nostrip(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    """The control of the browser tests: the same proxy with stripping off (blocking on)."""
    yield from _session_proxy(tmp_path_factory, lists_dir, "nostrip", "--set", "jg_strip=false")


@pytest.fixture(scope="session")
def proxy_passthrough(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    """`--no-intercept`: TLS is never decrypted."""
    yield from _session_proxy(tmp_path_factory, lists_dir, "passthrough", "--no-intercept")


@pytest.fixture(scope="session")
def proxy_monitor(tmp_path_factory: pytest.TempPathFactory, lists_dir: Path) -> Iterator[Proxy]:
    yield from _session_proxy(tmp_path_factory, lists_dir, "monitor", "--mode", "monitor")


# -- origins ------------------------------------------------------------------


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the test origin names and 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "good.test")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName(h) for h in HOSTS] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "origin.pem", directory / "origin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Origin:
    """An aiohttp origin on 127.0.0.1 (HTTP and HTTPS) that records requests."""

    port: int = 0
    tls_port: int = 0
    cert: Path | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)  # (Host header, path)

    def hosts_seen(self) -> set[str]:
        return {h.rsplit(":", 1)[0].lower().rstrip(".") for h, _ in self.requests}


def _origin_app(origin: Origin) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        origin.requests.append((request.headers.get("Host", ""), request.path_qs))
        if request.path == "/redirect":
            # The Location goes out exactly as given (no URL normalization on the way).
            location = request.query.get("to", "/")
            return web.Response(status=302, headers={"Location": location})
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str("echo:" + msg.data)
            return ws
        return web.Response(text=f"origin ok {request.host} {request.path_qs}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@dataclass
class Served:
    port: int
    tls_port: int
    cert: Path


@contextlib.contextmanager
def serve_app(app: web.Application, cert_dir: Path, name: str) -> Iterator[Served]:
    """Serve ``app`` on 127.0.0.1 over HTTP and HTTPS (self-signed) from a thread of its own."""
    cert, key = make_cert(cert_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(app, access_log=None)
    ports: list[int] = []

    async def start() -> None:
        await runner.setup()
        plain = web.TCPSite(runner, "127.0.0.1", 0)
        secure = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await plain.start()
        await secure.start()
        for site in (plain, secure):
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    assert ready.wait(10), f"{name} did not start"
    try:
        yield Served(ports[0], ports[1], cert)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


@pytest.fixture(scope="session")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    o = Origin()
    with serve_app(_origin_app(o), tmp_path_factory.mktemp("origin"), "origin") as served:
        o.port, o.tls_port, o.cert = served.port, served.tls_port, served.cert
        yield o


class ByteCounter:
    """A raw TCP listener that records every connection and every byte it receives."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bytecounter", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with conn:
                conn.settimeout(0.5)
                try:
                    while data := conn.recv(65536):
                        self.received += data
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def attacker() -> Iterator[ByteCounter]:
    if ATTACKER_IP is None:
        pytest.skip("needs a non-loopback IPv4 address for the listed 'attacker' origin")
    c = ByteCounter(ATTACKER_IP)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def listener() -> Iterator[ByteCounter]:
    """A byte counter on 127.0.0.1 (an innocent-looking CONNECT target, "cdn.test")."""
    c = ByteCounter("127.0.0.1")
    try:
        yield c
    finally:
        c.close()


# -- raw clients ----------------------------------------------------------------


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes to the proxy and read until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _complete(resp: bytes) -> bool:
    head, _, body = resp.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(resp: bytes) -> int:
    parts = resp.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def header_of(resp: bytes, name: str) -> str | None:
    head = resp.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name.lower().encode():
            return v.strip().decode("latin-1")
    return None


def client_ssl(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    return ctx


# -- a real browser -----------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
NAV_TIMEOUT_MS = 15_000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    # Chromium sends loopback requests around the proxy unless told otherwise.
    "--proxy-bypass-list=<-loopback>",
]


def require(reason: str) -> None:
    """Skip for a missing tool, or fail where it must be there (CI, JG_REQUIRE_BROWSER)."""
    if os.environ.get("CI") or os.environ.get("JG_REQUIRE_BROWSER"):
        pytest.fail(f"{reason} (required in CI: scripts/bootstrap.sh installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        require("Debian's chromium is not installed (/usr/bin/chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("the playwright package is not installed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield b
        finally:
            b.close()
