"""Hostile clients against the listeners of a real ``jectguard run``.

- Open proxy through a listen spec: every address mitmproxy will bind is checked
  (``mode=...@host:port``, several modes, ``listen_host``, IPv6, names, config.yaml)
  and shown in the banner; ``--allow-clients`` closes every mode's listener.
- Slow and many clients: header and idle timeouts, a per-client connection cap,
  bounded logging when file descriptors run out.
- PROXY protocol from a trusted load balancer (HAProxy), refused from anyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy_addons.core import proxyproto

from .conftest import (
    HOSTS,
    LAUNCHER,
    ROOT,
    Origin,
    free_port,
    non_loopback_ip,
    start_proxy,
    status_of,
)

REFUSE_TIMEOUT = 60.0


def run_refused(tmp: Path, lists_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``jectguard run`` with these options, expected to refuse to start."""
    env = {
        **os.environ,
        "JG_TEST_HOSTS": ",".join(f"{k}={v}" for k, v in HOSTS.items())
        + ",public.test=192.0.2.44,both.test=127.0.0.1",
    }
    return subprocess.run(
        [
            sys.executable,
            str(LAUNCHER),
            "run",
            "--listen-port",
            str(free_port()),
            "--admin-port",
            "0",
            "--blocklist",
            str(lists_dir / "domains.txt"),
            "--confdir",
            str(tmp / "confdir"),
            "--cache-dir",
            str(tmp / "cache"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=REFUSE_TIMEOUT,
        cwd=ROOT,
        env=env,
    )


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(what)


# -- open proxy through a listen spec ---------------------------------------------

OPEN_SPECS = {
    "regular-any-v4": ["--set", "mode=regular@0.0.0.0:{port}"],
    "regular-any-v6": ["--set", "mode=regular@:::{port}"],
    "regular-empty-host": ["--set", "mode=regular@:{port}"],
    "socks5": ["--set", "mode=socks5@0.0.0.0:{port}"],
    "upstream": ["--set", "mode=upstream:http://127.0.0.1:9@0.0.0.0:{port}"],
    "reverse": ["--set", "mode=reverse:http://127.0.0.1:9@0.0.0.0:{port}"],
    "reverse-proxyauth": [
        "--set",
        "mode=reverse:tcp://127.0.0.1:9@0.0.0.0:{port}",
        "--set",
        "proxyauth=u:p",
    ],
    "transparent-proxyauth": ["--set", "mode=transparent@0.0.0.0:{port}", "--set", "proxyauth=u:p"],
    "wireguard": ["--set", "mode=wireguard@0.0.0.0:{port}"],
    "second-mode-public": ["--set", "mode=regular", "--set", "mode=socks5@0.0.0.0:{port}"],
    "listen-host-set": ["--set", "listen_host=0.0.0.0"],
    "listen-host-empty": ["--listen-host", ""],
    "public-name": ["--set", "mode=regular@public.test:{port}"],
    "unresolvable-name": ["--set", "mode=regular@nowhere.test:{port}"],
}


@pytest.mark.parametrize("name", sorted(OPEN_SPECS))
def test_every_listen_address_is_checked(tmp_path: Path, lists_dir: Path, name: str) -> None:
    port = str(free_port())
    args = [a.replace("{port}", port) for a in OPEN_SPECS[name]]
    r = run_refused(tmp_path, lists_dir, *args)
    assert r.returncode == 2, r.stderr
    assert "refusing to listen" in r.stderr and "--allow-clients" in r.stderr
    assert "Traceback" not in r.stderr


def test_listen_spec_in_config_yaml_is_checked(tmp_path: Path, lists_dir: Path) -> None:
    """config.yaml is read after the command line: the final options are checked too."""
    (tmp_path / "confdir").mkdir()
    (tmp_path / "confdir" / "config.yaml").write_text(
        f"mode:\n  - regular\n  - socks5@0.0.0.0:{free_port()}\n"
    )
    r = run_refused(tmp_path, lists_dir)
    assert r.returncode == 2, r.stderr
    assert "refusing to listen" in r.stderr and "SOCKS v5 proxy on 0.0.0.0" in r.stderr


def test_banner_shows_every_listener(tmp_path: Path, lists_dir: Path) -> None:
    socks = free_port()
    p = start_proxy(
        tmp_path,
        "--blocklist",
        str(lists_dir / "domains.txt"),
        "--set",
        "mode=regular",
        "--set",
        f"mode=socks5@127.0.0.1:{socks}",
        "--set",
        f"mode=regular@localhost:{free_port()}",
    )
    try:
        wait_until(lambda: "lists:" in p.output(), 10, "no banner")
        out = p.output()
        assert f"proxy on 127.0.0.1:{p.port} (" in out
        assert f"also on 127.0.0.1:{socks} as SOCKS v5 proxy" in out
        assert "also on localhost:" in out
        assert "reachable from the network" not in out
    finally:
        p.stop()


@pytest.mark.parametrize(
    "mode",
    ["regular", "socks5", "reverse:http://127.0.0.1:9", "upstream:http://127.0.0.1:9"],
)
def test_allow_clients_closes_every_mode(tmp_path: Path, lists_dir: Path, mode: str) -> None:
    """A non-loopback listener with --allow-clients: other clients are closed whatever the mode."""
    ip = non_loopback_ip()
    if ip is None:
        pytest.skip("needs a non-loopback address")
    p = start_proxy(
        tmp_path,
        "--blocklist",
        str(lists_dir / "domains.txt"),
        "--allow-clients",
        "10.123.0.0/16",
        "--set",
        f"mode={mode}",
        listen_host="0.0.0.0",
    )
    port = p.port
    try:
        wait_until(lambda: "reachable from the network" in p.output(), 10, "no banner")
        assert f"0.0.0.0:{port}" in p.output()
        with socket.create_connection((ip, port), timeout=5, source_address=(ip, 0)) as s:
            s.settimeout(5)
            try:
                s.sendall(
                    b"\x05\x01\x00"
                    if mode == "socks5"
                    else b"GET http://good.test/ HTTP/1.1\r\nHost: good.test\r\n\r\n"
                )
                assert s.recv(100) == b""  # closed without an answer
            except ConnectionResetError:
                pass
        wait_until(lambda: "not in jg_allow_clients" in p.output(), 5, "no log line")
    finally:
        p.stop()


# -- slow and many clients ------------------------------------------------------------

SLOW_CLIENTS = 200
HEADER_TIMEOUT = 2
CLOSE_BOUND = 20.0  # header timeout plus a loaded machine's slack


def closed_by_peer(s: socket.socket) -> bool:
    """Whether the proxy closed this connection (EOF or reset) without answering."""
    try:
        return s.recv(4096) == b""
    except ConnectionResetError:
        return True
    except (BlockingIOError, TimeoutError):
        return False


def served(port: int, url: str, source: str = "127.0.0.1") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(
            f"GET {url} HTTP/1.1\r\nHost: {url.split('/')[2]}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return status_of(data)


def test_slow_request_heads_are_closed_others_served(
    tmp_path: Path,
    lists_dir: Path,
    origin: Origin,
) -> None:
    p = start_proxy(
        tmp_path,
        "--blocklist",
        str(lists_dir / "domains.txt"),
        "--set",
        f"jg_header_timeout={HEADER_TIMEOUT}",
        "--set",
        "jg_max_client_connections=0",
    )
    slow: list[socket.socket] = []
    try:
        good = f"http://good.test:{origin.port}/ok"
        for i in range(SLOW_CLIENTS):
            s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
            # half a request head, as a slowloris sends it; some send nothing at all
            s.sendall(b"" if i % 4 == 0 else b"GET http://good.test/ HTTP/1.1\r\nHost: go")
            s.setblocking(False)
            slow.append(s)
        start = time.monotonic()
        while True:
            assert served(p.port, good) == 200  # others are served throughout
            open_ = [s for s in slow if not closed_by_peer(s)]
            for s in set(slow) - set(open_):
                s.close()
            slow = open_
            if not open_:
                break
            assert time.monotonic() - start < CLOSE_BOUND, f"{len(open_)} slow clients still open"
            time.sleep(0.2)
        assert time.monotonic() - start >= HEADER_TIMEOUT - 1.0
        assert "no complete request head" in p.output()
        assert p.alive()
    finally:
        for s in slow:
            s.close()
        p.stop()


def test_idle_keep_alive_is_closed(tmp_path: Path, lists_dir: Path, origin: Origin) -> None:
    p = start_proxy(
        tmp_path, "--blocklist", str(lists_dir / "domains.txt"), "--set", "jg_idle_timeout=1"
    )
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=CLOSE_BOUND) as s:
            s.sendall(
                f"GET http://good.test:{origin.port}/a HTTP/1.1\r\n"
                f"Host: good.test:{origin.port}\r\n\r\n".encode()
            )
            first = s.recv(65536)
            assert status_of(first) == 200
            start = time.monotonic()
            rest = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    rest += chunk
            assert time.monotonic() - start < CLOSE_BOUND
            assert b"HTTP/1.1" not in rest  # closed, not answered again
    finally:
        p.stop()


def test_client_over_its_cap_is_refused_others_served(
    tmp_path: Path,
    lists_dir: Path,
    origin: Origin,
) -> None:
    cap = 20
    p = start_proxy(
        tmp_path,
        "--blocklist",
        str(lists_dir / "domains.txt"),
        "--set",
        f"jg_max_client_connections={cap}",
    )
    held: list[socket.socket] = []
    try:
        for _ in range(cap):
            held.append(socket.create_connection(("127.0.0.1", p.port), timeout=10))
        extra = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        held.append(extra)
        extra.settimeout(CLOSE_BOUND)
        assert closed_by_peer(extra), "a connection over the cap was kept"
        # another client address (still loopback) is served meanwhile
        assert served(p.port, f"http://good.test:{origin.port}/x", source="127.0.0.2") == 200
        # the held connections still work
        s = held[0]
        s.sendall(
            f"GET http://good.test:{origin.port}/y HTTP/1.1\r\n"
            f"Host: good.test:{origin.port}\r\nConnection: close\r\n\r\n".encode()
        )
        s.settimeout(10)
        assert status_of(s.recv(65536)) == 200
        wait_until(lambda: "jg_max_client_connections" in p.output(), 5, "no log line")
    finally:
        for s in held:
            s.close()
        p.stop()


def test_descriptor_shortage_logs_a_bounded_number_of_lines(
    tmp_path: Path,
    lists_dir: Path,
    origin: Origin,
) -> None:
    """At the open-file limit the proxy logs a few lines (not a traceback a second), keeps
    its listeners, and serves again once connections close."""
    p = start_proxy(
        tmp_path,
        "--blocklist",
        str(lists_dir / "domains.txt"),
        "--set",
        "jg_max_client_connections=0",
        "--admin-port",
        "0",
    )
    held: list[socket.socket] = []
    try:
        pid = p.proc.pid
        # Start-up goes on after the port listens (workers, admin server): a shortage
        # then is a start-up error, which mitmproxy ends the process for. Wait until the
        # proxy's descriptors stop changing before taking them away.
        in_use, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now_in_use = len(os.listdir(f"/proc/{pid}/fd"))
            if now_in_use != in_use:
                in_use, stable_since = now_in_use, time.monotonic()
            elif time.monotonic() - stable_since >= 1.5:
                break
            time.sleep(0.05)
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 30, hard))
        for _ in range(80):  # well past the limit: the last ones wait in the backlog
            held.append(socket.create_connection(("127.0.0.1", p.port), timeout=10))
        time.sleep(4.0)  # the shortage lasts: old code logged a traceback per second
        out = p.output()
        assert out.count("Traceback") == 0, out[-3000:]
        lines = out.count("out of file descriptors")
        assert 1 <= lines <= 2, out[-3000:]
        for s in held:
            s.close()
        held.clear()
        wait_until(lambda: _served_ok(p.port, origin.port), CLOSE_BOUND, "not serving again")
        assert p.alive()
    finally:
        for s in held:
            s.close()
        p.stop()


def _served_ok(port: int, origin_port: int) -> bool:
    try:
        return served(port, f"http://good.test:{origin_port}/z") == 200
    except OSError:
        return False


# -- PROXY protocol behind HAProxy ------------------------------------------------------

HAPROXY = shutil.which("haproxy")


@contextlib.contextmanager
def haproxy_in_front(tmp: Path, backend_port: int, binds: list[str], send: str) -> Iterator[None]:
    """Debian's HAProxy in TCP mode, sending ``send`` (send-proxy or send-proxy-v2)."""
    assert HAPROXY is not None
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n"
        "    timeout server 30s\n\nfrontend fe\n"
        + "".join(f"    bind {b}\n" for b in binds)
        + f"    default_backend be\n\nbackend be\n    server jg 127.0.0.1:{backend_port} {send}\n"
    )
    log = tmp / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        host, _, port = binds[0].rpartition(":")
        wait_until(
            lambda: _connectable(host, int(port)) or proc.poll() is not None,
            10,
            "haproxy did not listen",
        )
        assert proc.poll() is None, log.read_text()
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def _connectable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def exchange(host: str, port: int, data: bytes, source: str, timeout: float = 10.0) -> bytes | None:
    """Send and read a response head; None when the proxy closed (or kept) quiet."""
    with socket.create_connection((host, port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(data)
        got = b""
        try:
            while (chunk := s.recv(65536)) and b"\r\n\r\n" not in (got := got + chunk):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    return got or None


def events(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


BLOCKED = b"GET http://evil.test/x HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n"


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (Debian package haproxy)")
@pytest.mark.parametrize("send", ["send-proxy-v2", "send-proxy"])
def test_real_client_address_from_haproxy(tmp_path: Path, lists_dir: Path, send: str) -> None:
    events_file = tmp_path / "events.jsonl"
    p = start_proxy(
        tmp_path / "proxy",
        "--blocklist",
        str(lists_dir / "domains.txt"),
        "--trusted-proxies",
        "127.0.0.1/32",
        "--allow-clients",
        "10.123.0.0/16",
        "--events-file",
        str(events_file),
    )
    front = free_port()
    ip = non_loopback_ip()
    binds = [f"127.0.0.1:{front}"] + ([f"{ip}:{front}"] if ip else [])
    try:
        assert "PROXY protocol required from: 127.0.0.1/32" in p.output()
        with haproxy_in_front(tmp_path, p.port, binds, send):
            # a client on 127.0.0.5, through HAProxy: blocked, and named as itself
            resp = exchange("127.0.0.1", front, BLOCKED, source="127.0.0.5")
            assert resp is not None and status_of(resp) == 403, resp
            wait_until(
                lambda: any(e.get("client") == "127.0.0.5" for e in events(events_file)),
                5,
                f"no event names 127.0.0.5: {events(events_file)}",
            )
            assert not any(e.get("client") == "127.0.0.1" for e in events(events_file))
            if ip:
                # a client outside --allow-clients is refused, though HAProxy is loopback
                assert exchange(ip, front, BLOCKED, source=ip) is None
                wait_until(
                    lambda: f"client {ip} is not in jg_allow_clients" in p.output(),
                    5,
                    "the allow-list did not name the real client",
                )
        # the trusted balancer's address without a header: refused, never read as a client
        assert exchange("127.0.0.1", p.port, BLOCKED, source="127.0.0.1") is None
        assert "no valid PROXY protocol header" in p.output()
        # a header from anyone else is never read: it names nobody
        forged = b"PROXY TCP4 10.123.0.9 127.0.0.1 5555 80\r\n" + BLOCKED
        resp = exchange("127.0.0.1", p.port, forged, source="127.0.0.2")
        assert resp is None or status_of(resp) == 400
        v2 = proxyproto.build_v2(("10.123.0.9", 5555), ("127.0.0.1", 80))
        # (mitmproxy reads the v2 signature's CRLFs as a request head that never ends)
        resp = exchange("127.0.0.1", p.port, v2 + BLOCKED, source="127.0.0.2", timeout=2)
        assert resp is None or status_of(resp) == 400
        time.sleep(0.3)
        assert not any(e.get("client") == "10.123.0.9" for e in events(events_file))
        assert p.alive()
    finally:
        p.stop()


# -- tunnels and the deadlines ----------------------------------------------------------


def _tls_request(tls: ssl.SSLSocket, host: str) -> int:
    tls.sendall(f"GET /t HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return status_of(tls.recv(65536))


def _tls_closed(tls: ssl.SSLSocket) -> bool:
    try:
        return tls.recv(4096) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


def test_passthrough_tunnel_outlives_the_head_deadline_until_tcp_timeout(
    tmp_path: Path,
    lists_dir: Path,
    origin: Origin,
) -> None:
    """A raw tunnel has no request heads to wait for: only mitmproxy's tcp_timeout ends it."""
    assert origin.cert is not None
    p = start_proxy(
        tmp_path,
        "--blocklist",
        str(lists_dir / "domains.txt"),
        "--no-intercept",
        "--set",
        "jg_header_timeout=1",
        "--set",
        "jg_idle_timeout=1",
        "--set",
        "tcp_timeout=4",
    )
    ctx = ssl.create_default_context(cafile=str(origin.cert))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=CLOSE_BOUND) as s:
            s.sendall(f"CONNECT good.test:{origin.tls_port} HTTP/1.1\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            with ctx.wrap_socket(s, server_hostname="good.test") as tls:
                assert _tls_request(tls, "good.test") == 200
                time.sleep(2.0)  # past both jectguard deadlines, inside tcp_timeout
                assert _tls_request(tls, "good.test") == 200
                start = time.monotonic()
                assert _tls_closed(tls)  # then idle: closed by tcp_timeout
                assert 2.0 <= time.monotonic() - start < CLOSE_BOUND
    finally:
        p.stop()


def test_slow_request_inside_an_intercepted_tunnel_is_closed(
    tmp_path: Path,
    lists_dir: Path,
    origin: Origin,
) -> None:
    p = start_proxy(
        tmp_path,
        "--blocklist",
        str(lists_dir / "domains.txt"),
        "--set",
        "ssl_insecure=true",
        "--set",
        "jg_header_timeout=2",
    )
    ctx = ssl.create_default_context(cafile=str(p.ca))
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=CLOSE_BOUND) as s:
            s.sendall(f"CONNECT good.test:{origin.tls_port} HTTP/1.1\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            with ctx.wrap_socket(s, server_hostname="good.test") as tls:
                assert _tls_request(tls, "good.test") == 200  # a prompt client is served
        with socket.create_connection(("127.0.0.1", p.port), timeout=CLOSE_BOUND) as s:
            s.sendall(f"CONNECT good.test:{origin.tls_port} HTTP/1.1\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            with ctx.wrap_socket(s, server_hostname="good.test") as tls:
                tls.sendall(b"GET /t HTTP/1.1\r\nHost: go")  # and never the rest
                start = time.monotonic()
                assert _tls_closed(tls)
                assert 1.0 <= time.monotonic() - start < CLOSE_BOUND
    finally:
        p.stop()
