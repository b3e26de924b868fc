"""Hostile clients against the listeners of a real ``jectguard run``.

- Open proxy through a listen spec: every address mitmproxy will bind is checked
  (``mode=...@host:port``, several modes, ``listen_host``, IPv6, names, config.yaml)
  and shown in the banner; ``--allow-clients`` closes every mode's listener.
- Slow and many clients: header and idle timeouts, a per-client connection cap,
  bounded logging when file descriptors run out.
- PROXY protocol from a trusted load balancer (HAProxy), refused from anyone else.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import (
    HOSTS,
    LAUNCHER,
    ROOT,
    free_port,
    non_loopback_ip,
    raw_exchange,
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


_ = (raw_exchange, status_of, resource)
