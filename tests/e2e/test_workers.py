"""``jectguard run --workers 2``: two real proxy processes on one port, one admin API.

Which worker took a connection is read from the kernel (the process that holds
the accepted socket), so the test needs nothing from the proxy but its traffic.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .conftest import Proxy, free_port, start_proxy, status_of

TOKEN = "w" * 40
WAIT = 30.0  # seconds for a worker to (re)start: two processes start on two busy cores


def _wait(cond, what: str, timeout: float = WAIT):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _listeners(proxy: Proxy) -> dict[int, int]:
    """pid -> worker processes listening on the proxy port (children of the supervisor)."""
    out: dict[int, int] = {}
    for child in psutil.Process(proxy.proc.pid).children():
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == proxy.port for c in conns):
            out[child.pid] = 1
    return out


def _owner(proxy: Proxy, client: socket.socket) -> int | None:
    """The worker pid holding the server side of ``client``'s connection."""
    local = client.getsockname()[1]
    for child in psutil.Process(proxy.proc.pid).children():
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.Error:
            continue
        for c in conns:
            if c.laddr and c.raddr and c.laddr.port == proxy.port and c.raddr.port == local:
                return child.pid
    return None


def _request(sock: socket.socket, url: str) -> bytes:
    host = url.split("/")[2]
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return data


def _metrics(admin_port: int) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:  # worker 0 (the admin) restarting
        return ""


@pytest.fixture(scope="module")
def workers(
    tmp_path_factory: pytest.TempPathFactory, lists_dir: Path
) -> Iterator[tuple[Proxy, int]]:
    tmp = tmp_path_factory.mktemp("workers")
    token = tmp / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    admin_port = free_port()
    proxy = start_proxy(
        tmp,
        "--sources",
        str(lists_dir / "sources.toml"),
        "--admin-port",
        str(admin_port),
        "--admin-token-file",
        str(token),
        "--workers",
        "2",
    )
    try:
        _wait(lambda: len(_listeners(proxy)) == 2, "two workers listening")
        yield proxy, admin_port
    finally:
        proxy.stop()


def test_two_workers_share_the_port(workers: tuple[Proxy, int]) -> None:
    proxy, _ = workers
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{proxy.port}"], capture_output=True, text=True, timeout=10
    ).stdout
    pids = {int(p) for p in re.findall(r"pid=(\d+)", out)}
    assert pids == set(_listeners(proxy)), out
    assert proxy.proc.pid not in pids  # the supervisor itself serves nothing


def test_each_worker_accepts_and_blocks(workers: tuple[Proxy, int]) -> None:
    proxy, admin_port = workers
    seen: dict[int, bytes] = {}
    # The kernel spreads connections by a hash of the 4-tuple: a few dozen connections
    # reach both workers unless the spread is broken (chance: 2**-40).
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            pid = _wait(lambda s=s: _owner(proxy, s), "the accepting worker", 5)
            blocked = _request(s, "http://evil.test/x")
            seen[pid] = blocked
        if len(seen) == 2:
            break
    assert len(seen) == 2, f"connections reached only {list(seen)}"
    for pid, resp in seen.items():
        assert status_of(resp) == 403, (pid, resp[:300])

    text = _wait(
        lambda: (m := _metrics(admin_port)) and all(f'pid="{pid}"' in m for pid in seen) and m,
        "admin reporting both",
    )
    for pid in seen:
        line = next(
            x
            for x in text.splitlines()
            if x.startswith("jectguard_worker_requests_checked_total") and f'pid="{pid}"' in x
        )
        assert float(line.rsplit(" ", 1)[1]) >= 1, line
        assert any(
            x.startswith("jectguard_worker_up{") and f'pid="{pid}"' in x and x.endswith(" 1.0")
            for x in text.splitlines()
        ), text
    # The counters are every worker's, summed.
    blocked = next(
        x
        for x in text.splitlines()
        if x.startswith('jectguard_requests_checked_total{verdict="block"}')
    )
    assert float(blocked.rsplit(" ", 1)[1]) >= len(seen)
    # Each verdict was timed by the worker that reached it (not injected by a test).
    timed = next(x for x in text.splitlines() if x.startswith("jectguard_verdict_seconds_count"))
    assert float(timed.rsplit(" ", 1)[1]) >= len(seen), timed


def test_a_killed_worker_is_restarted(workers: tuple[Proxy, int]) -> None:
    proxy, admin_port = workers
    before = set(_listeners(proxy))
    victim = min(before)
    psutil.Process(victim).send_signal(signal.SIGKILL)
    after = _wait(
        lambda: (now := set(_listeners(proxy))) and len(now) == 2 and victim not in now and now,
        "the killed worker restarted",
    )
    assert len(after & before) == 1
    assert proxy.alive()
    _wait(
        lambda: any(
            x.startswith("jectguard_worker_restarts_total") and x.endswith(" 1.0")
            for x in _metrics(admin_port).splitlines()
        ),
        "the restart reported",
    )


def test_sigterm_stops_every_worker(tmp_path: Path, lists_dir: Path) -> None:
    proxy = start_proxy(
        tmp_path,
        "--sources",
        str(lists_dir / "sources.toml"),
        "--workers",
        "2",
    )
    try:
        _wait(lambda: len(_listeners(proxy)) == 2, "two workers listening")
        children = psutil.Process(proxy.proc.pid).children()
        assert proxy.stop(signal.SIGTERM) == 0, proxy.output()
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive
    finally:
        proxy.stop(signal.SIGKILL)


def test_a_worker_refusing_its_options_stops_the_group(tmp_path: Path, lists_dir: Path) -> None:
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("launch_proxy.py")),
            "run",
            "--listen-port",
            str(port),
            "--admin-port",
            "0",
            "--confdir",
            str(tmp_path / "c"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--sources",
            str(lists_dir / "sources.toml"),
            "--workers",
            "2",
            "--set",
            "no_such_option=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "refused its options" in proc.stderr
